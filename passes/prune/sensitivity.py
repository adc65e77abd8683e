"""Pruning sensitivity: the model's output error when one channel group alone is pruned.

For every prunable group and every ratio ``r``, the ``round(r * size)`` least important channels
(by ``criterion``, :mod:`graphc.passes.prune.importance`) are masked - their producers' output
weights and biases zeroed, which is what removal computes exactly (:mod:`removal`) - and the model
is run on the calibration feeds. The error is the SQNR of all outputs together against the
unpruned model, ``10 log10(sum ref^2 / sum (ref - got)^2)``; the budget solver's
``allocation=sensitivity`` reads it as a noise curve ``10^(-SQNR/10)`` per group (zero at r = 0).

Cost: one onnxruntime session per (group, ratio) over ``samples`` feeds held in memory with their
reference outputs. Cases run on the executor in force (:mod:`graphc.executor`): locally on
``workers`` threads (onnxruntime releases the GIL while it runs), one intra-op thread each, so two
cores work in parallel; on Ray as tasks sharing one copy of the model, feeds and references. A
case is plain data (the tensors and positions it zeroes), results come back in case order, and a
progress bar counts cases. The models
run through :mod:`graphc.verify.scores` (reference outputs once, then one score per case): no
session is created here.
"""
from __future__ import annotations

import logging
import math
import os
import threading
from dataclasses import dataclass, field
from typing import Any, Iterable

import numpy as np

from graphc.analysis.channels import ChannelAnalysis, ChannelGroup, analyze_channels
from graphc.analysis.removal import apply_mask, mask_spec
from graphc.calib.moments import channel_moments
from graphc.errors import DataError, OptionError
from graphc.executor import LocalExecutor, current as current_executor
from graphc.ir import load, model_bytes
from graphc.ir.model import Model
from graphc.ir.shapes import infer_shapes
from graphc.passes.prune.allocation import group_keys, short_label
from graphc.passes.prune.importance import (CRITERIA, DATA_CRITERIA, activation_requests, bn_gammas,
                                           group_importance, removal_order)

log = logging.getLogger(__name__)

DEFAULT_RATIOS = (0.25, 0.5, 0.75)
#: SQNR reported when the outputs did not change at all.
EXACT_DB = math.inf


@dataclass
class GroupSensitivity:
    """One group's row: its SQNR (dB) per ratio, and how many channels each ratio removed."""

    gid: int
    key: str
    size: int
    layers: list[str]
    sqnr_db: dict[float, float] = field(default_factory=dict)
    removed: dict[float, int] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return short_label(self.key)

    def noise(self, ratios: Iterable[float]) -> np.ndarray:
        """Noise-to-signal power at ``ratios`` (``10^(-SQNR/10)``)."""
        return np.array([0.0 if math.isinf(self.sqnr_db[r]) else 10 ** (-self.sqnr_db[r] / 10) for r in ratios])


@dataclass
class SensitivityReport:
    ratios: tuple[float, ...]
    criterion: str
    samples: int
    groups: list[GroupSensitivity]
    blocked: int = 0

    def curves(self) -> dict[int, tuple[np.ndarray, np.ndarray]]:
        """``{group id: (fractions removed, noise)}``, starting at (0, 0): what the solver reads."""
        out = {}
        for g in self.groups:
            ratios = sorted(g.removed, key=lambda r: g.removed[r])
            fractions = np.array([0.0] + [g.removed[r] / g.size for r in ratios])
            out[g.gid] = (fractions, np.concatenate([[0.0], g.noise(ratios)]))
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"ratios": list(self.ratios), "criterion": self.criterion, "samples": self.samples,
                "groups": [{"group": g.gid, "key": g.key, "size": g.size, "layers": g.layers,
                            "removed": {str(r): g.removed[r] for r in self.ratios if r in g.removed},
                            "sqnr_db": {str(r): _json(g.sqnr_db[r]) for r in self.ratios if r in g.sqnr_db}}
                           for g in self.groups]}


def _json(value: float) -> float | str:
    return value if math.isfinite(value) else ("inf" if value > 0 else "-inf")


def measure_sensitivity(model: Model, data, *, ratios: Iterable[float] = DEFAULT_RATIOS,
                        criterion: str = "l1", samples: int | None = 16, workers: int | None = None,
                        analysis: ChannelAnalysis | None = None,
                        groups: list[ChannelGroup] | None = None,
                        gammas: dict[str, np.ndarray] | None = None) -> SensitivityReport:
    """The SQNR of ``model``'s outputs with each group pruned alone at each ratio (module docstring).

    ``data``: calibration feeds (at most ``samples`` are used). ``analysis``/``groups``: the
    channel analysis of ``model`` and the groups to measure (default: every prunable group)."""
    ratios = tuple(sorted({float(r) for r in ratios}))
    if not ratios or ratios[0] <= 0 or ratios[-1] >= 1:
        raise OptionError(f"sensitivity ratios must be in (0, 1), got {list(ratios)}")
    if criterion not in CRITERIA:
        raise OptionError(f"unknown criterion '{criterion}'; one of {', '.join(CRITERIA)}")
    if data is None:
        raise DataError("sensitivity runs the model on calibration data; give --data")
    if analysis is None:
        analysis = analyze_channels(model.graph, infer_shapes(model), model.opset)
    if groups is None:
        groups = analysis.prunable
    feeds = _take(data, samples)
    if not feeds:
        raise DataError("no calibration samples: the data source is empty")
    moments = None
    if criterion in DATA_CRITERIA:
        moments = channel_moments(model, feeds, activation_requests(groups))
    if criterion == "bn-scale" and gammas is None:
        gammas = bn_gammas(model.graph)
    keys = group_keys(analysis.groups)
    rows, cases = [], []
    for g in groups:
        scores, _ = group_importance(g, criterion, moments=moments, gammas=gammas)
        order = removal_order(scores)
        row = GroupSensitivity(g.id, keys[g.id], g.size, [m.node.name for m in g.producers])
        for r in ratios:
            n = min(max(int(round(r * g.size)), 1), g.size - 1)
            if n < 1:
                continue
            row.removed[r] = n
            cases.append((row, r, g, order[:n]))
        rows.append(row)
    _run_cases(model, feeds, cases, workers)
    return SensitivityReport(ratios, criterion, len(feeds), rows,
                             blocked=len(analysis.groups) - len(analysis.prunable))


def _take(data, samples: int | None) -> list[dict[str, np.ndarray]]:
    feeds = []
    for feed in data:
        feeds.append({k: np.asarray(v) for k, v in feed.items()})
        if samples is not None and len(feeds) >= samples:
            break
    return feeds


class _CaseJob:
    """What every case shares: the model (as bytes; loaded once per process), feeds, references."""

    def __init__(self, model: bytes, feeds, references):
        self.model_bytes, self.feeds, self.references = model, feeds, references
        self._model: Model | None = None
        self._lock = threading.Lock()

    def model(self) -> Model:
        with self._lock:
            if self._model is None:
                self._model = load(self.model_bytes)
            return self._model

    def __getstate__(self) -> dict:
        return {"model_bytes": self.model_bytes, "feeds": self.feeds, "references": self.references}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["model_bytes"], state["feeds"], state["references"])


def _score_case(job: _CaseJob, spec) -> float:
    """The SQNR of the model with ``spec`` (:func:`mask_spec`) zeroed: +inf when exact
    (EXACT_DB), -inf without signal."""
    from graphc.verify.scores import score_outputs  # lazy: loads onnxruntime

    masked = job.model().copy()
    apply_mask(masked.graph, spec)
    return score_outputs(masked, job.feeds, job.references, label="masked model", threads=1).sqnr


def _run_cases(model: Model, feeds, cases, workers: int | None) -> None:
    from graphc.verify.scores import reference_outputs  # lazy: loads onnxruntime

    job = _CaseJob(model_bytes(model), feeds, reference_outputs(model, feeds, label="model"))
    executor = current_executor()
    if isinstance(executor, LocalExecutor):
        executor = LocalExecutor(workers or min(2, os.cpu_count() or 1))
    specs = [mask_spec(group, indices) for _, _, group, indices in cases]
    sqnrs = executor.map(_score_case, job, specs, desc="sensitivity", unit="case", in_threads=True)
    for (row, ratio, _, _), sqnr in zip(cases, sqnrs):
        row.sqnr_db[ratio] = sqnr


def format_sensitivity(report: SensitivityReport, *, top: int | None = None) -> str:
    """A table: one line per group, SQNR (dB) per ratio, most sensitive group first."""
    ratios = report.ratios
    head = f"sensitivity: {len(report.groups)} prunable group(s), {report.blocked} blocked; " \
           f"criterion {report.criterion}; {report.samples} feed(s); SQNR of the outputs in dB " \
           "(higher is safer)"
    rows = sorted(report.groups, key=lambda g: min(g.sqnr_db.values(), default=math.inf))
    if top is not None:
        rows = rows[:top]
    width = max([len("group")] + [len(g.label) for g in rows])
    cols = "".join(f"{f'r={r:g}':>10}" for r in ratios)
    lines = [head, f"{'group':<{width}}  {'size':>5}{cols}"]
    for g in rows:
        cells = "".join(f"{_cell(g.sqnr_db.get(r)):>10}" for r in ratios)
        lines.append(f"{g.label:<{width}}  {g.size:>5}{cells}")
    return "\n".join(lines)


def _cell(value: float | None) -> str:
    if value is None:
        return "-"
    if math.isinf(value):
        return "exact" if value > 0 else "-inf"
    return f"{value:.1f}"
