"""The HTML report: one self-contained file (styles inline, plots embedded as PNG data), so a CI job
can upload it as a single artifact and anyone can open it in a browser.

Sections, top to bottom: the verdict and what ran; the five numbers (summary); gates; plots;
passes; layers; model details; verification per output; latency. Every string from the data is
escaped; tables come from :mod:`graphc.report.tables`, shared with the Markdown and text writers.
"""
from __future__ import annotations

import base64
from html import escape
from typing import Any

from graphc.report.markdown import latency_line
from graphc.report.tables import (GATE_HEADER, LAYER_HEADER, SUMMARY_HEADER, gate_rows, layer_rows,
                                  model_rows, summary_rows, verdict)
from graphc.report.text import model_notes, verify_rows

STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 72em; color: #222; padding: 0 1em; }
h1 { font-size: 1.5em; } h2 { font-size: 1.15em; margin-top: 2em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: .5em 0; } td, th { padding: .25em .7em; border: 1px solid #ddd; }
th { background: #f4f4f4; text-align: left; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
code { background: #f4f4f4; padding: 0 .25em; } .badge { padding: .1em .6em; border-radius: .3em; color: #fff; }
.PASS { background: #2e7d32; } .FAIL { background: #c62828; } .UNCHECKED { background: #757575; }
figure { margin: 1em 0; } figcaption { color: #555; font-size: .9em; } img { max-width: 100%; }
.layers td { font-size: .9em; }
"""


def _table(header: list[str], rows: list[list[str]], css: str = "") -> list[str]:
    cls = f' class="{css}"' if css else ""
    out = [f"<table{cls}>", "<tr>" + "".join(f"<th>{escape(h)}</th>" for h in header) + "</tr>"]
    for row in rows:
        cells = "".join(f'<td class="num">{escape(c)}</td>' if _numeric(c) else f"<td>{escape(c)}</td>"
                        for c in row)
        out.append(f"<tr>{cells}</tr>")
    out.append("</table>")
    return out


def _numeric(text: str) -> bool:
    return bool(text) and (text[0].isdigit() or text[0] in "+-.") and not text.startswith("-> ")


def _section(title: str, body: list[str]) -> list[str]:
    return [f"<h2>{escape(title)}</h2>"] + body


def _figure(plot: Any) -> list[str]:
    data = base64.b64encode(plot.png).decode("ascii")
    return ["<figure>", f'<img src="data:image/png;base64,{data}" alt="{escape(plot.title)}">',
            f"<figcaption>{escape(plot.title)}</figcaption>", "</figure>"]


def _header(report: dict[str, Any]) -> list[str]:
    result = verdict(report)
    written = "" if report["output_written"] else " (not written)"
    return [f'<h1>graphc opt report <span class="badge {result}">{result}</span></h1>', "<ul>",
            f"<li>input: <code>{escape(report['input'])}</code></li>",
            f"<li>output: <code>{escape(str(report['output']))}</code>{written}</li>",
            f"<li>pipeline: <code>{escape(report['pipeline'])}</code></li>",
            f"<li>graphc {escape(report['graphc_version'])}, {escape(report['created'])}, "
            f"schema <code>{escape(report['schema'])}</code></li>", "</ul>"]


def _passes(report: dict[str, Any]) -> list[str]:
    rows = []
    for p in report["passes"]:
        stats = ", ".join(f"{k}={v}" for k, v in p["stats"].items()) if p["modified"] else "unchanged"
        skipped = "; ".join(f"{r} (x{n})" for r, n in p["skipped"].items())
        rows.append([p["text"], f"{p['wall_s']:.3f} s", f"{p['nodes_before']} -> {p['nodes_after']}", stats,
                     skipped])
    return _table(["pass", "time", "nodes", "changes", "skipped (why)"], rows)


def _verification(verify: dict[str, Any]) -> list[str]:
    header, *rows = verify_rows(verify)
    body = [f"<p><b>{'PASS' if verify['passed'] else 'FAIL'}</b> on {verify['samples']} sample(s) of "
            f"{escape(str(verify['data']))}; {escape(verify['tolerances']['mode'])} mode.</p>"]
    body += _table(header, rows)
    items = [escape(f) for f in verify["failures"]] + [escape(n) for n in verify.get("notes", [])]
    loc = verify.get("localization")
    if loc and loc["tensor"]:
        items.append(f"first divergence at tensor <code>{escape(loc['tensor'])}</code>, computed by "
                     f"{escape(str(loc['candidate_node']))}")
    return body + (["<ul>"] + [f"<li>{i}</li>" for i in items] + ["</ul>"] if items else [])


def render_html(report: dict[str, Any], plots: list[Any]) -> str:
    """The whole HTML document of an ``opt`` report, with ``plots`` embedded."""
    body = _header(report)
    body += _section("Summary", _table(SUMMARY_HEADER, summary_rows(report)))
    if report.get("gates"):
        body += _section("Gates", _table(GATE_HEADER, gate_rows(report)))
    if plots:
        body += _section("Plots", [line for plot in plots for line in _figure(plot)])
    body += _section("Passes", _passes(report))
    if report.get("layers"):
        body += _section("Layers", _table(LAYER_HEADER, layer_rows(report), "layers"))
    rows = model_rows(report["before"], report["after"])
    notes = [f"<p>{escape(n)}</p>" for n in model_notes(report["after"] or report["before"])]
    body += _section("Model", _table(SUMMARY_HEADER, rows) + notes)
    if report["verification"] is not None:
        body += _section("Verification", _verification(report["verification"]))
    if report.get("latency") is not None:
        body += _section("Latency", [f"<p>{escape(latency_line(report['latency']))}</p>"])
    title = f"graphc report: {report['input']}"
    return "\n".join(["<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
                      f"<title>{escape(title)}</title>", f"<style>{STYLE}</style>", "</head>", "<body>",
                      *body, "</body>", "</html>"]) + "\n"
