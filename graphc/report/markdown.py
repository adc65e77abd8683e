"""Markdown renderings of report data: the ``--report R.md`` of ``graphc opt`` (plots linked as
PNG files) and the pass catalog (``graphc passes --markdown``, which is ``docs/passes.md``)."""
from __future__ import annotations

from typing import Any

from graphc.report.passes import option_range
from graphc.report.tables import (GATE_HEADER, LAYER_HEADER, SUMMARY_HEADER, gate_rows, layer_rows,
                                  model_rows, summary_rows, verdict)
from graphc.report.text import model_notes
from graphc.report.units import metric


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    def cell(text: str) -> str:
        return str(text).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]
    return lines


def _passes(passes: list[dict[str, Any]]) -> list[str]:
    rows = []
    for p in passes:
        stats = ", ".join(f"{k}={v}" for k, v in p["stats"].items()) if p["modified"] else "unchanged"
        skipped = "; ".join(f"{r} (x{n})" for r, n in p["skipped"].items())
        verify = ("PASS" if p["verify"]["passed"] else "FAIL") if p.get("verify") else ""
        rows.append([f"`{p['text']}`", f"{p['wall_s']:.3f} s", f"{p['nodes_before']} → {p['nodes_after']}",
                     stats, skipped, verify])
    return _table(["pass", "time", "nodes", "changes", "skipped", "verify"], rows)


def _verification(verify: dict[str, Any]) -> list[str]:
    tol = verify["tolerances"]
    labels = {"rtol": "rtol", "atol": "atol", "min_sqnr": "min SQNR (dB)", "min_cosine": "min cosine",
              "min_top1": "min top-1"}
    given = ", ".join(f"{label} {tol[key]}" for key, label in labels.items() if tol.get(key) is not None)
    lines = [f"**{'PASS' if verify['passed'] else 'FAIL'}** on {verify['samples']} sample(s) of {verify['data']}; "
             f"{tol['mode']} mode ({given}).", ""]
    rows = [[f"`{o['name']}`", metric(o["max_abs"]), metric(o["max_rel"]), metric(o["sqnr_db"], ".1f", " dB"),
             metric(o["cosine"], ".6f"), metric(o["top1"], ".2%"), f"{o['mismatched']}/{o['elements']}",
             "yes" if o["passed"] else "**no**"] for o in verify["outputs"]]
    lines += _table(["output", "max abs", "max rel", "SQNR", "cosine", "top-1", "outside tol", "pass"], rows)
    lines += [""] + [f"- {f}" for f in verify["failures"]]
    loc = verify.get("localization")
    if loc and loc["tensor"]:
        lines.append(f"- first divergence at tensor `{loc['tensor']}`, computed by {loc['candidate_node']} "
                     f"(reference: {loc['reference_node']})")
    elif loc:
        lines.append(f"- not localized: {loc['note']}")
    return lines


def render_markdown(report: dict[str, Any], plots: list[Any] | None = None,
                    plot_folder: str | None = None) -> str:
    """The Markdown body of an ``opt`` report; ``plots`` are linked as ``plot_folder/<name>.png``."""
    lines = [f"# graphc opt report: {verdict(report)}", "",
             f"- input: `{report['input']}`",
             f"- output: `{report['output']}`" + ("" if report["output_written"] else " (not written)"),
             f"- pipeline: `{report['pipeline']}`",
             f"- graphc {report['graphc_version']}, {report['created']}, schema `{report['schema']}`", "",
             "## Summary", ""]
    lines += _table(SUMMARY_HEADER, summary_rows(report))
    if report.get("gates"):
        lines += ["", "## Gates", ""] + _table(GATE_HEADER, gate_rows(report))
    if plots and plot_folder:
        images = [f"![{p.title}]({plot_folder}/{p.name}.png)" for p in plots]
        lines += ["", "## Plots", ""] + [line for image in images for line in ("", image)][1:]
    lines += ["", "## Passes", ""] + _passes(report["passes"])
    if report.get("layers"):
        lines += ["", "## Layers", ""] + _table(LAYER_HEADER, layer_rows(report))
    lines += ["", "## Model", ""] + _table(SUMMARY_HEADER, model_rows(report["before"], report["after"]))
    notes = model_notes(report["after"] or report["before"])
    lines += ([""] + [f"- {n}" for n in notes]) if notes else []
    if report["verification"] is not None:
        lines += ["", "## Verification", ""] + _verification(report["verification"])
    if report.get("latency") is not None:
        lines += ["", "## Latency", "", latency_line(report["latency"])]
    return "\n".join(lines).rstrip() + "\n"


def latency_line(latency: dict[str, Any]) -> str:
    a, b = latency["a"], latency["b"]
    return (f"input {a['median_ms']:.3f} ms (p10 {a['p10_ms']:.3f}, p90 {a['p90_ms']:.3f}), result "
            f"{b['median_ms']:.3f} ms (p10 {b['p10_ms']:.3f}, p90 {b['p90_ms']:.3f}): speedup "
            f"{metric(latency['ratio'], '.3f')}x over {latency['runs']} alternated runs each, "
            f"{latency['threads']} thread(s), {latency['warmup']} warm-up")


def passes_markdown(catalog: list[dict[str, Any]]) -> str:
    """The pass reference (``docs/passes.md`` is this text)."""
    lines = ["# graphc passes", "",
             "Every registered pass and its options, as `graphc passes --markdown` prints them (this file is",
             "that output; regenerate it with `graphc passes --markdown > docs/passes.md`). A pipeline is a",
             "comma-separated list of passes with options in braces: `fold-bn,quant{calib=percentile "
             "exclude=head.*}`.", ""]
    for p in catalog:
        kind = ("exact" if p["exact"] else "lossy") + (", needs calibration data" if p["needs_data"] else "")
        if p.get("prepares"):
            kind += f"; runs {','.join(p['prepares'])} first unless the pipeline does earlier"
        lines += [f"## `{p['name']}`", "", f"{p['summary']} ({kind})", ""]
        if p["options"]:
            rows = [[f"`{o['key']}`", o["type"], f"`{o['default']}`" if o["default"] else "(empty)",
                     option_range(o), o["doc"]] for o in p["options"]]
            lines += _table(["option", "type", "default", "range", "doc"], rows) + [""]
    return "\n".join(lines).rstrip() + "\n"


def recipe_keys_markdown(keys: list[dict[str, str]]) -> str:
    """The table of recipe keys in docs/recipes.md (from :func:`graphc.recipe.key_reference`)."""
    rows = [[f"`{k['key']}`", k["type"], f"`{k['default']}`" if k["default"] != "-" else "-", k["doc"]]
            for k in keys]
    return "\n".join(_table(["key", "type", "default", "meaning (flag)"], rows)) + "\n"
