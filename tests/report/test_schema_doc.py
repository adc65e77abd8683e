"""docs/report-schema.md documents exactly the keys graphc writes, at every level."""
from __future__ import annotations

import re

from graphc.report import SCHEMA
from support import ROOT

DOC = ROOT / "docs" / "report-schema.md"


def documented() -> dict[str, list[str]]:
    """``{section heading: [keys of its table]}``."""
    sections: dict[str, list[str]] = {}
    current = None
    for line in DOC.read_text().splitlines():
        if line.startswith("## "):
            current = line[3:].strip().strip("`")
            sections[current] = []
        elif current and (match := re.match(r"^\| `([a-z_0-9]+)` \|", line)):
            sections[current].append(match.group(1))
    return sections


def test_schema_version_is_the_one_documented():
    assert f"# The report: schema `{SCHEMA}`" in DOC.read_text()


def test_every_key_is_documented_and_every_documented_key_is_written(html_build):
    _, outcome = html_build
    report = outcome.report
    doc = documented()
    assert doc["Top level"] == list(report)
    assert doc["summary"] == list(report["summary"])
    assert doc["gates[]"] == list(report["gates"][0])
    assert doc["passes[]"] == list(report["passes"][0])
    assert doc["layers[]"] == list(report["layers"][0])
    assert doc["histograms[]"] == list(report["histograms"][0])
