"""The before/after numbers of a model carry one label each, the same in the Summary and the
Model table of the text, Markdown and HTML reports (the HTML Model table once used short ones:
"params", "size", "zipped"), and docs/report-schema.md names exactly those labels."""
from __future__ import annotations

import re

from graphc.report.html import render_html
from graphc.report.markdown import render_markdown
from graphc.report.tables import MEASURES
from graphc.report.text import opt_text
from support import ROOT

LABELS = [m.label for m in MEASURES]


def _markdown_table(text: str, heading: str) -> list[str]:
    """The first-column labels of the Markdown table under ``## heading``."""
    section = text.split(f"## {heading}\n", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| ")]
    return [line.strip("|").split("|")[0].strip() for line in rows[1:]]  # rows[0]: the header


def _html_table(text: str, heading: str) -> list[str]:
    """The first-column labels of the HTML table in the section headed ``heading``."""
    section = text.split(f">{heading}</h2>", 1)[1].split("<h2", 1)[0]
    return re.findall(r"<tr><td>(.*?)</td>", section)


def _text_summary(text: str) -> list[str]:
    """The first-column labels of the printed report's Summary table (it has no Model table)."""
    header = next(i for i, line in enumerate(text.splitlines()) if re.match(r"^\s+before\s+after\s+change", line))
    rows = []
    for line in text.splitlines()[header + 1:]:
        if not line.strip() or not re.search(r" {2,}", line.strip()):
            break
        rows.append(re.split(r" {2,}", line.strip())[0])
    return rows


def test_the_model_table_has_the_long_labels_in_markdown_and_html(html_build):
    report = html_build[1].report
    markdown = _markdown_table(render_markdown(report, [], None), "Model")
    html = _html_table(render_html(report, []), "Model")
    assert markdown == html == LABELS


def test_the_summary_table_labels_agree_in_text_markdown_and_html(html_build):
    report = html_build[1].report
    text = _text_summary(opt_text(report))
    markdown = _markdown_table(render_markdown(report, [], None), "Summary")
    html = _html_table(render_html(report, []), "Summary")
    assert text == markdown == html
    sizes = [label for label in text if label in LABELS]
    assert sizes == ["parameters", "file size", "zipped (zlib)", "entropy-coded", "MACs"]


def test_the_schema_doc_names_the_labels_the_writers_use():
    doc = (ROOT / "docs" / "report-schema.md").read_text()
    sentence = re.search(r"every table \(Summary and\s+Model\) and every format: (.*?) \(`graphc", doc, re.S)
    assert sentence and re.findall(r"`([^`]+)`", sentence.group(1)) == LABELS
