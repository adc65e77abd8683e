"""Plain-text renderings of report data, as the CLI prints them to stdout.

Each function takes the data the API returns (report dicts, ``VerifyReport.to_dict()``, model
summaries, ``LatencyComparison.to_dict()``, the pass catalog) and returns a string; nothing here
computes anything the data does not already hold.
"""
from __future__ import annotations

from typing import Any

from graphc.report.passes import option_range
from graphc.report.tables import GATE_HEADER, SUMMARY_HEADER, gate_rows, summary_rows, verdict
from graphc.report.units import human_bytes, human_count, metric


def _table(rows: list[list[str]], indent: str = "") -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return [indent + "  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]


def _stats_text(stats: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in stats.items())


def passes_table(passes: list[dict[str, Any]]) -> list[str]:
    rows = [["pass", "time", "nodes", "changes"]]
    notes: dict[int, list[str]] = {}
    for i, p in enumerate(passes):
        changes = _stats_text(p["stats"]) if p["modified"] else "unchanged"
        rows.append([p["text"], f"{p['wall_s']:.3f} s", f"{p['nodes_before']} -> {p['nodes_after']}", changes])
        notes[i] = [f"skipped: {reason} (x{n})" for reason, n in p["skipped"].items()]
        if p.get("verify"):
            notes[i].append("verify: " + verify_line(p["verify"]))
    lines = _table(rows)
    out = [lines[0]]
    for i, line in enumerate(lines[1:]):
        out.append(line)
        out.extend(f"    {note}" for note in notes[i])
    return out


def macs_text(summary: dict[str, Any]) -> str:
    """``1.23M``, ``1.23M + unknown`` or ``unknown`` (when dynamic shapes hide some nodes)."""
    if not summary.get("macs_unknown"):
        return human_count(summary["macs"])
    return f"{human_count(summary['macs'])} + unknown" if summary["macs"] else "unknown"


def model_notes(summary: dict[str, Any]) -> list[str]:
    notes = []
    if summary.get("macs_batch_1"):
        notes.append("MACs are per sample (batch 1; the batch dim is dynamic)")
    elif summary.get("macs_shape"):
        notes.append(f"MACs at nominal shape {summary['macs_shape']} (dims are dynamic; --input-shape to choose)")
    unknown = summary.get("macs_unknown") or []
    if unknown:
        notes.append(f"MACs unknown for {len(unknown)} of {summary['mac_nodes']} node(s): shapes are dynamic; "
                     "pass --input-shape NAME:1x3x224x224 to count them")
    for domain, count in (summary.get("custom_domains") or {}).items():
        notes.append(f"{count} node(s) of domain '{domain}': graphc passes leave them as they are")
    return notes


def verify_line(verify: dict[str, Any]) -> str:
    """One line: PASS/FAIL, the first failure, samples and where it diverged."""
    verdict = "PASS" if verify["passed"] else "FAIL"
    first = f": {verify['failures'][0]}" if verify["failures"] else ""
    more = f" (+{len(verify['failures']) - 1} more)" if len(verify["failures"]) > 1 else ""
    loc = verify.get("localization")
    where = f"; first divergence at '{loc['tensor']}' ({loc['candidate_node']})" if loc and loc["tensor"] else ""
    return f"{verdict}{first}{more} [{verify['samples']} sample(s)]{where}"


def verify_rows(verify: dict[str, Any]) -> list[list[str]]:
    """Header and one row per output of a verification."""
    rows = [["output", "max abs", "max rel", "SQNR", "cosine", "top-1", "outside tol", "ok"]]
    for o in verify["outputs"]:
        rows.append([o["name"], metric(o["max_abs"]), metric(o["max_rel"]), metric(o["sqnr_db"], ".1f", " dB"),
                     metric(o["cosine"], ".6f"), metric(o["top1"], ".2%"), f"{o['mismatched']}/{o['elements']}",
                     "yes" if o["passed"] else "NO"])
    return rows


def verify_text(verify: dict[str, Any]) -> str:
    tol = verify["tolerances"]
    lines = [f"verify: {verify_line(verify)}",
             f"  data: {verify['data']}; mode: {tol['mode']}; outputs matched by {verify['matched_by']}"]
    lines += _table(verify_rows(verify), "  ")
    lines += [f"  {failure}" for failure in verify["failures"]]
    lines += [f"  note: {note}" for note in verify.get("notes", [])]
    lines += localization_lines(verify.get("localization"))
    if verify.get("accuracy") is not None:
        lines.append("  " + accuracy_line(verify["accuracy"]))
    return "\n".join(lines)


def accuracy_line(task: dict[str, Any]) -> str:
    return (f"accuracy on {task['samples']} labelled sample(s) (output '{task['output']}'): reference "
            f"{task['reference']:.2%}, candidate {task['candidate']:.2%} (drop {task['drop'] * 100:+.2f} pt)")


def localization_lines(loc: dict[str, Any] | None) -> list[str]:
    if not loc:
        return []
    if not loc["tensor"]:
        return [f"  localize: not found ({loc['note']}); "
                f"{loc['compared']} of {loc['shared']} shared tensors compared"]
    reason = loc["metrics"]["failures"][0] if loc["metrics"] and loc["metrics"]["failures"] else ""
    return [f"  localize: first divergence at tensor '{loc['tensor']}'",
            f"    candidate node: {loc['candidate_node']}",
            f"    reference node: {loc['reference_node']}",
            f"    {reason} ({loc['compared']} of {loc['shared']} shared tensors compared)"] + \
        ([f"    {loc['note']}"] if loc.get("note") else [])


def opt_text(report: dict[str, Any]) -> str:
    lines = [f"graphc opt: {report['input']} -> {report['output']}", f"pipeline: {report['pipeline']}"]
    lines += [f"  {note}" for note in report.get("notes") or []] + [""]
    lines += passes_table(report["passes"])
    lines += [""] + _table([SUMMARY_HEADER] + summary_rows(report))
    lines += model_notes(report["after"] or report["before"])
    lines += _layers_line(report.get("layers") or [])
    if report["verification"] is not None:
        lines += [""] + verify_text(report["verification"]).splitlines()
    if report.get("accuracy") is not None:
        lines.append(accuracy_line(report["accuracy"]))
    if report.get("gates"):
        lines += [""] + _table([GATE_HEADER] + gate_rows(report))
    result = verdict(report)
    lines.append(f"result: {result}" + (" (no --verify and no gate: nothing was checked)" if result == "UNCHECKED" else ""))
    if report["output_written"]:
        lines.append(f"wrote {report['output']}")
    else:
        lines.append(f"not written: {report['output']} (verification or a gate failed; --keep-failed keeps it)")
    return "\n".join(lines)


def _layers_line(layers: list[dict[str, Any]]) -> list[str]:
    measured = [r for r in layers if isinstance(r.get("sqnr_db"), (int, float))]
    if not measured:
        return []
    worst = min(measured, key=lambda r: r["sqnr_db"])
    return [f"per-layer error: {len(measured)} of {len(layers)} layers measured; worst {worst['op']} "
            f"'{worst['node']}' {worst['sqnr_db']:.1f} dB"]


def _signature(t: dict[str, Any]) -> str:
    shape = "?" if t["shape"] is None else ", ".join("?" if d is None else str(d) for d in t["shape"])
    return f"{t['name']}: {t['dtype'] or '?'}[{shape}]"


def _maybe_bytes(value: int | None) -> str:
    return human_bytes(value) if value is not None else "not computed (large file)"


def inspect_text(summary: dict[str, Any]) -> str:
    opsets = ", ".join(f"{d} {v}" for d, v in summary["opsets"].items())
    lines = [f"{summary['path'] or 'model'}",
             f"  IR version {summary['ir_version']}, opsets: {opsets}, producer: {summary['producer'] or '?'}"]
    lines += [f"  input  {_signature(t)}" for t in summary["inputs"]]
    lines += [f"  output {_signature(t)}" for t in summary["outputs"]]
    if summary["input_shapes"]:
        lines.append("  input shapes given: " + ", ".join(
            f"{k}={'x'.join(map(str, v))}" for k, v in summary["input_shapes"].items()))
    size = human_bytes(summary["file_bytes"]) if summary["file_bytes"] is not None else "?"
    lines.append(f"  nodes {summary['nodes']}, params {human_count(summary['params'])} "
                 f"({human_bytes(summary['weight_bytes'])}), file {size}, MACs {macs_text(summary)}")
    if summary.get("entropy_coded_bytes") is not None:
        lines.append(f"  compressed: zlib {_maybe_bytes(summary.get('zlib_bytes'))}, xz {_maybe_bytes(summary.get('lzma_bytes'))}, "
                     f"entropy-coded {human_bytes(summary['entropy_coded_bytes'])} (Huffman-coded weights: "
                     + ", ".join(f"{n} {kind}" for kind, n in summary.get("weight_encodings", {}).items()) + ")")
    lines.append("  ops: " + ", ".join(f"{op} {n}" for op, n in summary["op_histogram"].items()))
    if summary["top_macs"]:
        lines.append("  top MAC nodes:")
        rows = [[n["op"], n["name"], human_count(n["macs"]), f"{n['share']:.1%}"] for n in summary["top_macs"]]
        lines += _table(rows, "    ")
    lines += [f"  {note}" for note in model_notes(summary)]
    return "\n".join(lines)


def bench_text(result: dict[str, Any], names: tuple[str, ...]) -> str:
    """``result`` is LatencyComparison.to_dict() (two names) or LatencyStats.to_dict() (one)."""
    if "a" not in result:
        return (f"{names[0]}: median {result['median_ms']:.3f} ms (p10 {result['p10_ms']:.3f}, "
                f"p90 {result['p90_ms']:.3f}) over {result['runs']} runs")
    rows = [["model", "median", "p10", "p90"]]
    for key, name in zip(("a", "b"), names):
        r = result[key]
        rows.append([f"{key.upper()} {name}", f"{r['median_ms']:.3f} ms", f"{r['p10_ms']:.3f} ms",
                     f"{r['p90_ms']:.3f} ms"])
    lines = _table(rows)
    lines.append(f"ratio A/B {metric(result['ratio'], '.3f')} (> 1: B is faster); {result['runs']} alternated "
                 f"runs each, {result['threads']} thread(s), {result['warmup']} warm-up")
    return "\n".join(lines)


def passes_text(catalog: list[dict[str, Any]]) -> str:
    lines = []
    for p in catalog:
        kind = ("exact" if p["exact"] else "lossy") + (", needs --data" if p["needs_data"] else "")
        kind += f", runs {','.join(p['prepares'])} first" if p.get("prepares") else ""
        lines.append(f"{p['name']}  ({kind})")
        lines.append(f"    {p['summary']}")
        for o in p["options"]:
            rng = option_range(o)
            lines.append(f"    {o['key']}: {o['type']} = {o['default']}{f'  [{rng}]' if rng else ''}  {o['doc']}")
    return "\n".join(lines)
