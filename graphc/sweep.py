"""``graphc sweep``: many models x many recipes as one job on the executor.

Every combination (model, recipe) is one task (:mod:`graphc.executor`): the recipe's build
(:func:`graphc.build.build`; its report measures the error), output model and JSON report written to
``OUT/<model>--<recipe>/`` (``model.onnx``, ``report.json``), and last a ``result.json`` row. The
searches inside a build run in the task's own process (the sweep's parallelism is across
combinations). A combination whose ``result.json`` exists is finished: a re-run skips it, so an
interrupted sweep resumes where it stopped.

The summary (``summary.json``, ``summary.md``, ``summary.html``) has one row per combination:
output size (bytes, and entropy-coded bytes: :mod:`graphc.ir.compressed_size`), speed (the result's
latency in ms and the speed-up, when the recipe or ``--bench`` measures it) and error (the worst
output's SQNR in dB against the input model). A row is on the Pareto front when no other row of
the same model is at least as good in every measured figure (smaller, faster, higher SQNR) and
better in one. ``summary.html`` also plots, per model, the entropy-coded size against the SQNR
(:mod:`graphc.report.scatter`: one point per recipe, the front of those two figures marked; a
result with infinite SQNR - exact - or no measured error is listed under the plot, not drawn).
"""
from __future__ import annotations

import html
import json
import logging
import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from graphc.build import build
from graphc.errors import OutputError
from graphc.executor import Executor, LocalExecutor, current, using
from graphc.recipe import load_recipe
from graphc.report.scatter import ScatterPoint, size_error_svg

log = logging.getLogger(__name__)

RESULT = "result.json"
COLUMNS = ("model", "recipe", "passed", "size_bytes", "entropy_coded_bytes", "latency_ms", "speedup", "sqnr_db",
           "pareto")


@dataclass(frozen=True)
class Combination:
    model: str
    recipe: str

    @property
    def key(self) -> str:
        return f"{Path(self.model).stem}--{Path(self.recipe).stem}"


@dataclass(frozen=True)
class SweepJob:
    """What every combination shares: the output folder and whether to measure latency."""

    out: str
    bench: bool = False


@dataclass
class SweepSummary:
    rows: list[dict[str, Any]]
    ran: int
    skipped: int


def combinations(models: list[str], recipes: list[str]) -> list[Combination]:
    combos = [Combination(str(m), str(r)) for m in models for r in recipes]
    keys = [c.key for c in combos]
    if len(set(keys)) != len(keys):
        raise OutputError("sweep: two models or two recipes share a file name; their outputs would collide")
    return combos


def run_combination(job: SweepJob, combo: Combination) -> dict[str, Any]:
    """Build one combination into its folder; returns (and writes last) its summary row."""
    folder = Path(job.out) / combo.key
    folder.mkdir(parents=True, exist_ok=True)
    changes: dict[str, Any] = {"executor": None, "outputs.keep_failed": True,
                               "outputs.model": str(folder / "model.onnx"),
                               "outputs.report": str(folder / "report.json")}
    if job.bench:
        changes["bench.enabled"] = True
    recipe = load_recipe(combo.recipe).updated(changes)
    with using(LocalExecutor(1)):  # searches in this task's process
        outcome = build(combo.model, recipe)
    row = _row(combo, outcome.report)
    _write_json(folder / RESULT, row)
    return row


def _row(combo: Combination, report: dict[str, Any]) -> dict[str, Any]:
    summary = report.get("summary") or {}
    latency, error = summary.get("latency") or {}, summary.get("error") or {}
    return {"model": combo.model, "recipe": combo.recipe, "passed": report.get("passed"),
            "size_bytes": (summary.get("file_bytes") or {}).get("after"),
            "entropy_coded_bytes": (summary.get("entropy_coded_bytes") or {}).get("after"),
            "latency_ms": latency.get("after_ms"), "speedup": latency.get("speedup"),
            "sqnr_db": error.get("sqnr_db")}


def finished(out: Path, combo: Combination) -> dict[str, Any] | None:
    try:
        return json.loads((out / combo.key / RESULT).read_text())
    except (OSError, ValueError):
        return None


def sweep(models: list[str], recipes: list[str], out: str | os.PathLike, *, bench: bool = False,
          executor: Executor | None = None) -> SweepSummary:
    """Run every combination not finished yet on ``executor`` (default: the one in force) and
    write the summary; see the module docstring."""
    out = Path(out)
    combos = combinations(models, recipes)
    out.mkdir(parents=True, exist_ok=True)
    done = {c: finished(out, c) for c in combos}
    todo = [c for c in combos if done[c] is None]
    rows = (executor or current()).map(run_combination, SweepJob(str(out), bench), todo,
                                       desc="sweep", unit="build")
    done.update(zip(todo, rows))
    summary = SweepSummary(mark_pareto([done[c] for c in combos]), ran=len(todo), skipped=len(combos) - len(todo))
    write_summary(summary, out)
    return summary


def _figures(row: dict[str, Any], measured: tuple[str, ...]) -> tuple[float, ...] | None:
    """Figures to minimise (SQNR negated), or None when one is missing."""
    values = [row.get(k) for k in measured]
    if any(v is None for v in values):
        return None
    values = [float(v) for v in values]  # a JSON report writes an exact SQNR as "inf"
    return tuple(-v if k == "sqnr_db" else v for k, v in zip(measured, values))


def mark_pareto(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each row with ``pareto``: no row of the same model dominates it (module docstring)."""
    measured = tuple(k for k in ("size_bytes", "latency_ms", "sqnr_db") if any(r.get(k) is not None for r in rows))
    out = []
    for row in rows:
        mine = _figures(row, measured)
        rivals = [_figures(r, measured) for r in rows if r is not row and r["model"] == row["model"]]
        dominated = mine is None or any(
            f is not None and all(a <= b for a, b in zip(f, mine)) and f != mine for f in rivals)
        out.append({**row, "pareto": not dominated})
    return out


def write_summary(summary: SweepSummary, out: Path) -> None:
    _write_json(out / "summary.json", {"ran": summary.ran, "skipped": summary.skipped, "rows": summary.rows})
    _write_text(out / "summary.md", summary_markdown(summary.rows))
    _write_text(out / "summary.html", summary_html(summary.rows))


def _cell(key: str, value: Any) -> str:
    if value is None:
        return "-"
    if key == "pareto":
        return "**yes**" if value else ""
    if key in ("model", "recipe"):
        return Path(value).name
    if isinstance(value, float):
        return f"{value:.2f}"
    return str(value)


def summary_markdown(rows: list[dict[str, Any]]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(_cell(k, r.get(k)) for k in COLUMNS) + " |" for r in rows]
    return "# graphc sweep\n\n" + "\n".join(lines) + "\n\nPareto: no other recipe of the same model is " \
           "as small, as fast and as accurate and better in one.\n"


def summary_html(rows: list[dict[str, Any]]) -> str:
    head = "".join(f"<th>{html.escape(k)}</th>" for k in COLUMNS)
    body = "".join(
        f"<tr class=\"{'pareto' if r.get('pareto') else ''}\">"
        + "".join(f"<td>{html.escape(_cell(k, r.get(k)).strip('*'))}</td>" for k in COLUMNS) + "</tr>"
        for r in rows)
    return ("<!doctype html><html><head><meta charset=\"utf-8\"><title>graphc sweep</title><style>"
            "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 6px}"
            "tr.pareto{font-weight:bold;background:#eef8ee}</style></head><body><h1>graphc sweep</h1>"
            f"<table><tr>{head}</tr>{body}</table><p>Bold rows: the Pareto front per model.</p>"
            + "".join(size_error_figure(model, [r for r in rows if r["model"] == model])
                      for model in dict.fromkeys(r["model"] for r in rows))
            + "</body></html>\n")


def size_error_figure(model: str, rows: list[dict[str, Any]]) -> str:
    """The model's entropy-coded size against SQNR plot (module docstring), with the rows not drawn."""
    drawn, left_out = [], []
    for row in rows:
        size, sqnr = row.get("entropy_coded_bytes"), row.get("sqnr_db")
        value = None if sqnr is None else float(sqnr)  # a JSON report writes an exact SQNR as "inf"
        if size is None or value is None or not math.isfinite(value):
            left_out.append(f"{Path(row['recipe']).name} (SQNR {sqnr if sqnr is not None else 'not measured'})")
        else:
            drawn.append(ScatterPoint(Path(row["recipe"]).name, float(size), value))
    name = Path(model).name
    title = f"{name}: entropy-coded size against SQNR"
    svg = size_error_svg(drawn, xlabel="entropy-coded size (bytes)", ylabel="SQNR (dB), worst output",
                         title=title) if drawn else ""
    note = f"<p>Not drawn: {html.escape(', '.join(left_out))}.</p>" if left_out else ""
    return (f"<h2>{html.escape(name)}</h2><figure>{svg}<figcaption>{html.escape(title)}: one point per recipe; "
            "filled: the Pareto front of these two figures.</figcaption></figure>" + note)


def _write_json(path: Path, value: Any) -> None:
    _write_text(path, json.dumps(value, indent=2) + "\n")


def _write_text(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)

