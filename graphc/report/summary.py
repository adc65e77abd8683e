"""The five numbers people judge a compression by, before and after, from the report's sections.

    {"params": {"before", "after", "ratio"}, "file_bytes": {...}, "zlib_bytes": {...},
     "entropy_coded_bytes": {...}, "macs": {..., "partial"},
     "error": {"sqnr_db", "cosine", "top1", "samples"} or None,     # worst output
     "task": {"metric", "reference", "candidate", "drop", ...} or None,
     "latency": {"before_ms", "after_ms", "speedup"} or None}

Nothing is measured here: each number is copied or reduced from ``before``/``after`` (model
summaries), ``verification``, ``accuracy`` and ``latency``, so the summary always agrees with them.
``ratio`` is after / before; ``speedup`` is before / after (> 1: the result is faster). The error
is the worst over outputs: lowest SQNR, lowest cosine, lowest top-1 agreement (NaN counts as
worst).
"""
from __future__ import annotations

import math
from typing import Any


def summarize(before: dict[str, Any], after: dict[str, Any] | None, verification: dict[str, Any] | None,
              accuracy: dict[str, Any] | None, latency: dict[str, Any] | None) -> dict[str, Any]:
    after = after or {}
    macs = _pair(before.get("macs"), after.get("macs"))
    macs["partial"] = bool(before.get("macs_unknown") or after.get("macs_unknown"))
    return {
        "params": _pair(before.get("params"), after.get("params")),
        "file_bytes": _pair(before.get("file_bytes"), after.get("file_bytes")),
        "zlib_bytes": _pair(before.get("zlib_bytes"), after.get("zlib_bytes")),
        "entropy_coded_bytes": _pair(before.get("entropy_coded_bytes"), after.get("entropy_coded_bytes")),
        "macs": macs,
        "error": _error(verification),
        "task": dict(accuracy) if accuracy is not None else None,
        "latency": _latency(latency),
    }


def _pair(before: Any, after: Any) -> dict[str, Any]:
    ratio = after / before if isinstance(before, (int, float)) and isinstance(after, (int, float)) and before \
        else None
    return {"before": before, "after": after, "ratio": ratio}


def number(value: Any) -> float | None:
    """A report metric as a float: the strings "inf", "-inf", "nan" back to floats."""
    if value is None:
        return None
    return float(value)


def _worst(values: list[float]) -> float | None:
    if not values:
        return None
    return min(values, key=lambda v: -math.inf if math.isnan(v) else v)


def _error(verification: dict[str, Any] | None) -> dict[str, Any] | None:
    if verification is None:
        return None
    outputs = verification["outputs"]
    top1 = [number(o["top1"]) for o in outputs if o.get("top1") is not None]
    return {"sqnr_db": _worst([number(o["sqnr_db"]) for o in outputs]),
            "cosine": _worst([number(o["cosine"]) for o in outputs]),
            "top1": _worst(top1), "samples": verification["samples"]}


def _latency(latency: dict[str, Any] | None) -> dict[str, Any] | None:
    if latency is None:
        return None
    return {"before_ms": latency["a"]["median_ms"], "after_ms": latency["b"]["median_ms"],
            "speedup": number(latency["ratio"]), "runs": latency["runs"], "threads": latency["threads"]}
