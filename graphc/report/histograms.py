"""Activation histograms for the report, with the calibrated range marked.

A pass that calibrates activations records, per tensor, a details entry
``{"tensor": name, "range": [lo, hi], ...}`` (the quant pass does). To show what calibration saw,
:class:`CalibrationSnapshots` (a pass-manager instrument) keeps a copy of the model just before
each pass that reads calibration data; afterwards :func:`activation_histograms` runs that copy
over the same data (:func:`graphc.calib.collect.collect_stats`, the collector calibration uses)
for a few tensors and returns their histograms (signed, or of |x|, as the collector keeps them)
with the range: what the user sees is the distribution the range was chosen from.

Tensors: the ones the user names (``--histogram``), else the ``limit`` calibrated tensors whose
range clips the most (largest observed |x| over the range's |x| bound).
"""
from __future__ import annotations

import logging
from typing import Any

import numpy as np

from graphc.calib.collect import collect_stats
from graphc.ir.model import Model
from graphc.passmanager import Instrument

log = logging.getLogger(__name__)

#: bins kept in the report (the collector's 2048 are summed down to this many).
REPORT_BINS = 128


class CalibrationSnapshots(Instrument):
    """Copies of the model before each pass that needs calibration data, by pass index."""

    def __init__(self) -> None:
        self.models: dict[int, Model] = {}
        self._index = 0

    def before_pass(self, step, ctx) -> None:
        if step.needs_data:
            self.models[self._index] = ctx.model.copy()

    def after_pass(self, step, ctx, record) -> None:
        self._index += 1


def calibrated_tensors(record: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """``{tensor: details entry}`` of a pass record's calibrated tensors."""
    return {d["tensor"]: d for d in record.get("details") or []
            if isinstance(d, dict) and isinstance(d.get("tensor"), str) and d.get("range")}


def choose_tensors(entries: dict[str, dict[str, Any]], chosen: tuple[str, ...], limit: int) -> list[str]:
    """The user's tensors that this pass calibrated, or the ``limit`` most clipped ones."""
    if chosen:
        return [t for t in chosen if t in entries]
    return sorted(entries, key=lambda t: -_clipping(entries[t]))[:limit]


def _clipping(entry: dict[str, Any]) -> float:
    lo, hi = entry["range"]
    observed = entry.get("observed") or entry["range"]
    bound = max(abs(lo), abs(hi))
    seen = max(abs(observed[0]), abs(observed[1]))
    return seen / bound if bound > 0 else 0.0


def activation_histograms(snapshots: CalibrationSnapshots, passes: list[dict[str, Any]], data: Any, *,
                          chosen: tuple[str, ...] = (), limit: int = 3) -> list[dict[str, Any]]:
    """Histograms of chosen calibrated tensors for each snapshotted pass (see the module docstring)."""
    out = []
    for index, model in sorted(snapshots.models.items()):
        record = passes[index]
        entries = calibrated_tensors(record)
        names = choose_tensors(entries, chosen, limit)
        if not names:
            continue
        log.info("report: histograms of %s before pass '%s'", ", ".join(names), record["name"])
        stats = collect_stats(model, data, names, histograms=True)
        for name in names:
            hist = stats[name].histogram
            if hist is not None:
                out.append(_entry(record["name"], entries[name], stats[name], hist))
    return out


def _entry(pass_name: str, detail: dict[str, Any], stats: Any, hist: Any) -> dict[str, Any]:
    counts, width = np.asarray(hist.counts, dtype=np.int64), float(hist.width)
    signed = hasattr(hist, "half")  # a signed histogram, or one of |x|
    start = -(len(counts) // 2) * width if signed else 0.0
    counts, start, width = trim_histogram(counts, start, width, REPORT_BINS)
    return {"tensor": stats.name, "pass": pass_name, "signed": signed, "start": start, "bin_width": width,
            "counts": counts,
            "range": list(detail["range"]), "observed": [stats.min, stats.max], "values": stats.count}


def trim_histogram(counts: np.ndarray, start: float, width: float,
                   bins: int) -> tuple[list[int], float, float]:
    """Keep the bins from the first to the last non-empty one, then sum neighbours down to at most
    ``bins`` bins; returns (counts, left edge of the first bin, bin width)."""
    nonzero = np.flatnonzero(counts)
    first, last = (int(nonzero[0]), int(nonzero[-1]) + 1) if nonzero.size else (0, 1)
    used = counts[first:last]
    factor = max(1, -(-len(used) // bins))
    padded = np.zeros(-(-len(used) // factor) * factor, dtype=np.int64)
    padded[:len(used)] = used
    return padded.reshape(-1, factor).sum(axis=1).tolist(), start + first * width, width * factor
