"""Reports: what a graphc run did, as plain data first, then written as JSON, Markdown or HTML.

``build_report(...)`` returns a dict (schema ``graphc.report/2``, documented key by key in
``docs/report-schema.md``) made only of JSON values, so every writer - JSON, Markdown, HTML with
plots, and the CLI's text - renders the same data. Its top-level keys:

    schema, graphc_version, kind ("opt"), created, input, output, output_written, pipeline,
    recipe (the effective settings), summary (the five numbers: params, file_bytes, macs,
    error, task, latency - each before/after), gates, passed, passes, wall_s, peak_rss_bytes, layers,
    histograms, before, after, verification, accuracy, metric, latency

``before``/``after`` are :func:`graphc.report.model.model_summary` (what ``graphc inspect
--json`` prints), ``verification`` is ``VerifyReport.to_dict()`` (``graphc verify --json``),
``latency`` is ``LatencyComparison.to_dict()`` with A the input and B the result (``graphc bench
IN OUT --json``), ``accuracy`` is ``TaskAccuracy.to_dict()``. Non-finite floats are the strings
"inf", "-inf", "nan". ``write_report(report, path)`` picks the format by suffix (``.json``,
``.md``, ``.html``) and writes atomically; plots are PNG (matplotlib), embedded in the HTML and
written next to a Markdown report in ``<name>_plots/``.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from graphc import __version__
from graphc.errors import OutputError
from graphc.report.jsonable import jsonable
from graphc.report.model import model_summary
from graphc.report.summary import summarize

SCHEMA = "graphc.report/2"
FORMATS = {".json": "json", ".md": "markdown", ".markdown": "markdown", ".html": "html", ".htm": "html"}


def pass_record(record: Any) -> dict[str, Any]:
    """A :class:`graphc.passmanager.PassRecord` as report data."""
    return {
        "name": record.name,
        "text": record.text,
        "modified": record.modified,
        "wall_s": record.wall_s,
        "peak_rss_bytes": record.peak_rss_bytes,
        "nodes_before": record.nodes_before,
        "nodes_after": record.nodes_after,
        "stats": jsonable(record.stats),
        "skipped": jsonable(record.skipped),
        "details": jsonable(record.details),
        "verify": record.verify.to_dict() if record.verify is not None else None,
    }


def build_report(*, input_path: str | os.PathLike, output_path: str | os.PathLike | None, run: Any,
                 before: dict[str, Any], after: dict[str, Any], verification: Any = None,
                 output_written: bool = True, recipe: dict[str, Any] | None = None,
                 accuracy: Any = None, latency: Any = None, gates: list[dict[str, Any]] | None = None,
                 metric: Any = None,
                 layers: list[dict[str, Any]] | None = None,
                 histograms: list[dict[str, Any]] | None = None,
                 passed: bool | None | str = "auto") -> dict[str, Any]:
    """The report of one ``opt`` run: ``run`` is a :class:`graphc.passmanager.RunReport`,
    ``before``/``after`` are model summaries, ``verification`` a VerifyReport, ``accuracy`` a
    TaskAccuracy, ``metric`` a user metric's MetricResult, ``latency`` a LatencyComparison (A: input, B: result); each may be None.
    ``passed`` is the verdict ("auto": verification and every gate passed; None when neither
    was checked)."""
    verify = verification.to_dict() if verification is not None else None
    task = accuracy.to_dict() if accuracy is not None else None
    timing = latency.to_dict() if latency is not None else None
    gates = list(gates or [])
    report = {
        "schema": SCHEMA,
        "graphc_version": __version__,
        "kind": "opt",
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "input": str(input_path),
        "output": str(output_path) if output_path is not None else None,
        "output_written": output_written,
        "pipeline": run.pipeline,
        "notes": list(run.notes),
        "recipe": recipe or {},
        "summary": summarize(before, after, verify, task, timing),
        "gates": gates,
        "passed": _passed(verify, gates) if passed == "auto" else passed,
        "passes": [pass_record(r) for r in run.records],
        "wall_s": run.wall_s,
        "peak_rss_bytes": run.peak_rss_bytes,
        "layers": layers or [],
        "histograms": histograms or [],
        "before": before,
        "after": after,
        "verification": verify,
        "accuracy": task,
        "metric": metric.to_dict() if metric is not None else None,
        "latency": timing,
    }
    return jsonable(report)


def _passed(verify: dict[str, Any] | None, gates: list[dict[str, Any]]) -> bool | None:
    if verify is None and not gates:
        return None
    return (verify is None or bool(verify["passed"])) and all(g["passed"] for g in gates)


def report_format(path: str | os.PathLike) -> str:
    """"json" or "markdown" from the suffix; :class:`OutputError` for anything else."""
    suffix = Path(path).suffix.lower()
    if suffix not in FORMATS:
        raise OutputError(f"{path}: report must end in .html, .md or .json")
    return FORMATS[suffix]


def render(report: dict[str, Any], fmt: str, *, plots: list[Any] | None = None,
           plot_folder: str | None = None) -> str:
    """The text of ``report`` as "json", "markdown" or "html"; ``plots`` are
    :class:`graphc.report.plots.Plot` (HTML embeds them, Markdown links ``plot_folder/<name>.png``)."""
    if fmt == "json":
        return json.dumps(report, indent=2, allow_nan=False, ensure_ascii=False) + "\n"
    if fmt == "html":
        # lazy: the writers (and matplotlib) load only for the format asked for
        from graphc.report.html import render_html

        return render_html(report, plots or [])
    # lazy: the writers (and matplotlib) load only for the format asked for
    from graphc.report.markdown import render_markdown

    return render_markdown(report, plots or [], plot_folder)


def write_report(report: dict[str, Any], path: str | os.PathLike) -> Path:
    """Write ``report`` as JSON, Markdown or HTML (by suffix), atomically; returns the path.

    HTML and Markdown reports get plots (:func:`graphc.report.plots.report_plots`): embedded in
    the HTML as PNG data, written as ``<name>_plots/*.png`` beside a Markdown report."""
    out = Path(path)
    fmt = report_format(out)
    if not out.parent.is_dir():
        raise OutputError(f"{out}: folder '{out.parent}' does not exist")
    plots, folder = [], None
    if fmt != "json":
        # lazy: the writers (and matplotlib) load only for the format asked for
        from graphc.report.plots import report_plots

        plots = report_plots(report)
    if fmt == "markdown" and plots:
        folder = plot_folder(out).name
        for plot in plots:
            _write_atomic(out.parent / folder / f"{plot.name}.png", plot.png)
    _write_atomic(out, render(report, fmt, plots=plots, plot_folder=folder).encode("utf-8"))
    return out


def plot_folder(path: str | os.PathLike) -> Path:
    """Where the plots of a Markdown report at ``path`` go."""
    path = Path(path)
    return path.parent / f"{path.stem}_plots"


def _write_atomic(out: Path, payload: bytes) -> None:
    try:
        out.parent.mkdir(exist_ok=True)
        tmp = tempfile.NamedTemporaryFile("wb", dir=out.parent, prefix=f".{out.name}.", delete=False)
    except OSError as exc:
        raise OutputError(f"{out}: cannot write report ({exc.strerror})") from None
    try:
        with tmp:
            tmp.write(payload)
        os.chmod(tmp.name, 0o666 & ~_umask())  # temp files are private; a report is not
        os.replace(tmp.name, out)
    except BaseException as exc:  # no half-written report, whatever stopped us
        Path(tmp.name).unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise OutputError(f"{out}: cannot write report ({exc.strerror})") from None
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


__all__ = ["SCHEMA", "build_report", "write_report", "report_format", "render", "pass_record",
           "model_summary", "jsonable", "summarize", "plot_folder"]
