"""Report data as rows of display strings, shared by the text, Markdown and HTML writers so that
the three show the same numbers the same way.

The before/after numbers of a model (:data:`MEASURES`) are one table model: the Summary table's
size rows and the Model table are both built by :func:`before_after_row` from it; the writers
only lay the rows out."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from graphc.report.units import MISSING, change, human_bytes, human_count, metric

SUMMARY_HEADER = ["", "before", "after", "change"]
GATE_HEADER = ["gate", "threshold", "measured", "result"]
LAYER_HEADER = ["layer", "op", "status", "out channels", "rank", "weights / inputs", "SQNR", "notes"]


@dataclass(frozen=True)
class Measure:
    """A number of a model shown before and after: its key in model summaries (and in the
    report's ``summary``), its labels and how it is written."""

    key: str
    label: str  # the row label in the Summary and Model tables of every writer
    fmt: Callable[[Any], str]


MEASURES = (
    Measure("nodes", "nodes", str),
    Measure("params", "parameters", human_count),
    Measure("file_bytes", "file size", human_bytes),
    Measure("zlib_bytes", "zipped (zlib)", human_bytes),
    Measure("entropy_coded_bytes", "entropy-coded", human_bytes),
    Measure("macs", "MACs", human_count),
)
#: the measures with a plain before/after row in the Summary table (its MACs row says "unknown").
SUMMARY_MEASURES = tuple(m for m in MEASURES if m.key in ("params", "file_bytes", "zlib_bytes",
                                                          "entropy_coded_bytes"))


def before_after_row(label: str, fmt: Callable[[Any], str], before: Any, after: Any) -> list[str]:
    """label, before, after and the relative change; a null value is :data:`MISSING` on either side."""
    return [label, fmt(before) if before is not None else MISSING, fmt(after) if after is not None else MISSING,
            change(before, after)]


def model_rows(before: dict[str, Any], after: dict[str, Any] | None) -> list[list[str]]:
    """The Model table: every measure of the input's and the result's model summaries, labelled
    as in the Summary table (the same labels in every writer)."""
    after = after or {}
    return [before_after_row(m.label, m.fmt, before.get(m.key), after.get(m.key)) for m in MEASURES]


def summary_rows(report: dict[str, Any]) -> list[list[str]]:
    """The five numbers: parameters, file size, MACs, error / task metric, latency."""
    s = report["summary"]
    rows = []
    for m in SUMMARY_MEASURES:
        pair = s.get(m.key)
        if pair is not None:
            rows.append(before_after_row(m.label, m.fmt, pair["before"], pair["after"]))
    macs = s["macs"]
    partial = bool(macs.get("partial"))
    rows.append(["MACs", _macs(macs["before"], partial), _macs(macs["after"], partial),
                 "" if partial else change(macs["before"], macs["after"])])
    error = s.get("error")
    if error is not None:
        rows.append(["SQNR (worst output)", "reference", metric(error["sqnr_db"], ".1f", " dB"), ""])
        rows.append(["cosine (worst output)", "reference", metric(error["cosine"], ".6f"), ""])
        if error["top1"] is not None:
            rows.append(["top-1 agreement", "reference", metric(error["top1"], ".2%"), ""])
    task = s.get("task")
    if task is not None:
        rows.append([f"accuracy ({task['samples']} labelled)", f"{task['reference']:.2%}",
                     f"{task['candidate']:.2%}", f"{0.0 - task['drop'] * 100 + 0.0:+.2f} pt"])
    rows += _metric_rows(report.get("metric"))
    latency = s.get("latency")
    if latency is not None:
        rows.append([f"latency (median, {latency['threads']} threads)", f"{latency['before_ms']:.3f} ms",
                     f"{latency['after_ms']:.3f} ms", f"{metric(latency['speedup'], '.2f')}x speed"])
    return rows


def _metric_rows(result: dict[str, Any] | None) -> list[list[str]]:
    """The user's task metric: both scores and the drop (positive is worse)."""
    if result is None:
        return []
    way = "higher" if result["higher_is_better"] else "lower"
    return [[f"{result['metric']} ({way} is better)", f"{result['reference']:.6g}", f"{result['candidate']:.6g}",
             f"drop {result['drop']:+.6g}"]]


def _macs(value: Any, partial: bool) -> str:
    """MACs, saying so when dynamic shapes hid some nodes (``--input-shape`` counts them)."""
    if value is None:
        return MISSING
    if not partial:
        return human_count(value)
    return f"{human_count(value)} + unknown" if value else "unknown"


def gate_rows(report: dict[str, Any]) -> list[list[str]]:
    return [[g["label"], _gate_number(g, g["threshold"]), _gate_number(g, g["value"]),
             "PASS" if g["passed"] else "FAIL"] for g in report.get("gates") or []]


def _gate_number(gate: dict[str, Any], value: Any) -> str:
    if value is None:
        return "not measured"
    fmt = {"dB": (".2f", " dB"), "x": (".3f", "x"), "fraction": (".4f", ""), "cosine": (".6f", "")}.get(
        gate.get("unit"), (".4g", ""))
    return metric(value, *fmt)


def layer_rows(report: dict[str, Any]) -> list[list[str]]:
    rows = []
    for r in report.get("layers") or []:
        channels = "?" if r["channels"] is None else str(r["channels"])
        if r["channels_after"] is not None and r["channels_after"] != r["channels"]:
            channels += f" -> {r['channels_after']}"
        rank = ""
        if r.get("rank"):
            rank = ",".join(map(str, r["rank"]["ranks"])) + (
                f" of {','.join(map(str, r['rank']['full']))}" if r["rank"].get("full") else "")
        precision = "-" if r["precision"] is None else f"{r['precision']} / {r['activations']}"
        if r.get("codebook"):
            precision += f", {r['codebook']} values"
        if r.get("sparsity"):
            precision += f", {r['sparsity']:.0%} zeros"
        notes = list(r.get("notes") or [])
        if r.get("reason") and r.get("precision", "") and str(r["precision"]).startswith("float"):
            notes.insert(0, f"float: {r['reason']}")
        rows.append([r["node"], r["op"], r["status"], channels, rank, precision,
                     metric(r.get("sqnr_db"), ".1f", " dB"), "; ".join(notes)])
    return rows


def verdict(report: dict[str, Any]) -> str:
    """PASS, FAIL or UNCHECKED (nothing was verified and no gate was set)."""
    if report.get("passed") is None:
        return "UNCHECKED"
    return "PASS" if report["passed"] else "FAIL"
