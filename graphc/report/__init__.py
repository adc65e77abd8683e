"""Reports: what a graphc run did, as plain data first, then written as JSON or Markdown.

``build_report(...)`` returns a dict (schema ``graphc.report/1``) made only of JSON values, so
every writer - JSON, Markdown, the CLI's text, and later HTML and plots - renders the same data:

    {"schema": "graphc.report/1", "graphc_version", "kind": "opt", "created",
     "input", "output", "output_written", "pipeline", "settings",
     "passes": [{"name", "text", "modified", "wall_s", "peak_rss_bytes", "nodes_before",
                 "nodes_after", "stats", "skipped", "details", "verify"}],
     "wall_s", "before": <model summary>, "after": <model summary>,
     "verification": <VerifyReport.to_dict()> or null, "passed": true/false/null}

A model summary is :func:`graphc.report.model.model_summary`. Non-finite floats are the strings
"inf", "-inf", "nan". ``write_report(report, path)`` picks the format by suffix (``.json``,
``.md``) and writes atomically.
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

SCHEMA = "graphc.report/1"
FORMATS = {".json": "json", ".md": "markdown", ".markdown": "markdown"}


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
                 output_written: bool = True, settings: dict[str, Any] | None = None) -> dict[str, Any]:
    """The report of one ``opt`` run: ``run`` is a :class:`graphc.passmanager.RunReport`,
    ``before``/``after`` are model summaries, ``verification`` a VerifyReport or None."""
    report = {
        "schema": SCHEMA,
        "graphc_version": __version__,
        "kind": "opt",
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "input": str(input_path),
        "output": str(output_path) if output_path is not None else None,
        "output_written": output_written,
        "pipeline": run.pipeline,
        "settings": settings or {},
        "passes": [pass_record(r) for r in run.records],
        "wall_s": run.wall_s,
        "before": before,
        "after": after,
        "verification": verification.to_dict() if verification is not None else None,
        "passed": verification.passed if verification is not None else None,
    }
    return jsonable(report)


def report_format(path: str | os.PathLike) -> str:
    """"json" or "markdown" from the suffix; :class:`OutputError` for anything else."""
    suffix = Path(path).suffix.lower()
    if suffix not in FORMATS:
        raise OutputError(f"{path}: report must end in .json or .md")
    return FORMATS[suffix]


def render(report: dict[str, Any], fmt: str) -> str:
    if fmt == "json":
        return json.dumps(report, indent=2, allow_nan=False, ensure_ascii=False) + "\n"
    from graphc.report.markdown import render_markdown

    return render_markdown(report)


def write_report(report: dict[str, Any], path: str | os.PathLike) -> Path:
    """Write ``report`` as JSON or Markdown (by suffix), atomically; returns the path."""
    out = Path(path)
    text = render(report, report_format(out))
    if not out.parent.is_dir():
        raise OutputError(f"{out}: folder '{out.parent}' does not exist")
    try:
        tmp = tempfile.NamedTemporaryFile("w", encoding="utf-8", dir=out.parent, prefix=f".{out.name}.",
                                          delete=False)
    except OSError as exc:
        raise OutputError(f"{out}: cannot write report ({exc.strerror})") from None
    try:
        with tmp:
            tmp.write(text)
        os.chmod(tmp.name, 0o666 & ~_umask())  # temp files are private; a report is not
        os.replace(tmp.name, out)
    except BaseException as exc:  # no half-written report, whatever stopped us
        Path(tmp.name).unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise OutputError(f"{out}: cannot write report ({exc.strerror})") from None
        raise
    return out


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


__all__ = ["SCHEMA", "build_report", "write_report", "report_format", "render", "pass_record",
           "model_summary", "jsonable"]
