"""A number the report data holds as null (a zlib size not computed above 64 MB, the file size of a
result that was not written) shows as one marker, MISSING, in the before and the after column of
every table of every writer, and docs/report-schema.md says what it means."""
from __future__ import annotations

import copy
import re

import pytest

from graphc.report.html import render_html
from graphc.report.markdown import render_markdown
from graphc.report.text import opt_text
from graphc.report.units import MISSING
from support import ROOT


def _without_zlib(report: dict) -> dict:
    """The report of a model too large for zlib: null sizes on both sides, as graphc writes them."""
    big = copy.deepcopy(report)
    for side in ("before", "after"):
        big[side]["zlib_bytes"] = None
    big["summary"]["zlib_bytes"] = {"before": None, "after": None, "ratio": None}
    return big


def _rows(text: str, label: str, fmt: str) -> list[list[str]]:
    """The cells of every table row labelled ``label`` in a text, Markdown or HTML report."""
    if fmt == "text":
        return [re.split(r" {2,}", line) for line in text.splitlines() if line.startswith(label + "  ")]
    if fmt == "markdown":
        return [[c.strip() for c in line.strip("|").split("|")] for line in text.splitlines()
                if line.startswith(f"| {label} |")]
    return [re.findall(r"<td[^>]*>(.*?)</td>", line) for line in text.splitlines()
            if line.startswith(f"<tr><td>{label}</td>")]


RENDERERS = {"text": opt_text, "markdown": lambda r: render_markdown(r, [], None),
             "html": lambda r: render_html(r, [])}


@pytest.mark.parametrize("fmt", RENDERERS)
def test_a_zlib_size_not_computed_is_the_marker_before_and_after(html_build, fmt):
    text = RENDERERS[fmt](_without_zlib(html_build[1].report))
    labels = ["zipped (zlib)"]
    rows = [row for label in labels for row in _rows(text, label, fmt)]
    assert len(rows) == {"text": 1, "markdown": 2, "html": 2}[fmt]  # Summary (and Model) tables
    for row in rows:
        assert row[1:3] == [MISSING, MISSING], row
    computed = _rows(RENDERERS[fmt](html_build[1].report), labels[0], fmt)[0]
    assert MISSING not in computed[1:3] and computed[1].endswith("B")


@pytest.mark.parametrize("fmt", RENDERERS)
def test_the_file_size_of_a_result_not_written_is_the_same_marker(html_build, fmt):
    report = copy.deepcopy(html_build[1].report)
    report["after"]["file_bytes"] = None
    report["summary"]["file_bytes"]["after"] = None
    rows = _rows(RENDERERS[fmt](report), "file size", fmt)
    assert rows and all(row[2] == MISSING and row[1].endswith("B") for row in rows)


def test_the_schema_doc_says_what_the_marker_means():
    doc = (ROOT / "docs" / "report-schema.md").read_text()
    assert f"show a null number as `{MISSING}`" in doc and "graphc.report.units.MISSING" in doc
