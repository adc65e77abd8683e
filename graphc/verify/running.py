"""Metrics of one tensor accumulated over samples, without holding the samples.

Per sample, :class:`RunningMetrics` adds to running sums (sum ref^2, sum (ref-got)^2, sum ref*got,
sum got^2), keeps the running maxima of the absolute and relative errors, counts elements outside
rtol/atol and top-1 agreements. At the end SQNR and cosine are computed from the sums, so they
equal the metrics of all samples concatenated (see :mod:`graphc.metrics`).

Non-finite values: sums and maxima use the positions where both tensors are finite; positions
where they are not and differ (NaN vs number, +inf vs -inf) are counted as ``nonfinite`` and fail
the comparison in either mode. A NaN in both at the same position is a match. Tensors that are not
numbers (strings) are compared for equality and every difference counts as ``nonfinite``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from graphc.metrics import (
    cosine_from_sums,
    max_abs_error,
    max_rel_error,
    sqnr_from_sums,
    top1_agreement,
)
from graphc.verify.tolerances import Tolerances


@dataclass
class TensorMetrics:
    """How a candidate tensor compares with the reference one, over all samples."""

    name: str
    candidate_name: str
    dtype: str
    shape: tuple[int, ...] | None  # of the last sample compared
    samples: int
    elements: int
    max_abs: float
    max_rel: float
    cosine: float
    sqnr_db: float
    top1: float | None             # None when the tensor has no class axis
    mismatched: int                # elements outside rtol/atol
    nonfinite: int                 # positions where non-finite or non-numeric values differ
    passed: bool = True
    failures: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        data = {k: json_number(v) if isinstance(v, float) else v for k, v in self.__dict__.items()}
        data["shape"] = list(self.shape) if self.shape is not None else None
        data["failures"] = list(self.failures)
        return data


def json_number(value: float | None) -> float | str | None:
    """Floats for strict JSON: inf / -inf / nan become the strings "inf" / "-inf" / "nan"."""
    if value is None or math.isfinite(value):
        return value
    return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")


def _numeric(array: np.ndarray) -> bool:
    return array.dtype.kind in "biuf"


def has_top1(dtype: np.dtype, shape: tuple[int, ...]) -> bool:
    """Outputs that look like class scores: float, [N, C] or per-step [N, T, C], C >= 2. Rank 4 and
    up are feature maps (a detector's [N, 1, H, W] probability map): argmax over W means nothing."""
    return np.issubdtype(dtype, np.floating) and len(shape) in (2, 3) and shape[-1] >= 2


class RunningMetrics:
    """Accumulates :class:`TensorMetrics` for one tensor; call :meth:`update` per sample."""

    def __init__(self, name: str, candidate_name: str | None = None,
                 tolerances: Tolerances = Tolerances()):
        self.name = name
        self.candidate_name = candidate_name or name
        self.tolerances = tolerances
        self.samples = self.elements = self.mismatched = self.nonfinite = 0
        self.signal = self.noise = self.dot = self.got_sq = 0.0
        self.max_abs = self.max_rel = 0.0
        self.top1_hits = self.top1_positions = 0
        self.dtype = ""
        self.shape: tuple[int, ...] | None = None
        self.shape_error: str | None = None

    def update(self, ref: np.ndarray, got: np.ndarray) -> None:
        ref, got = np.asarray(ref), np.asarray(got)
        self.samples += 1
        self.dtype, self.shape = str(ref.dtype), tuple(ref.shape)
        if ref.shape != got.shape:
            self.shape_error = self.shape_error or \
                f"shape {tuple(got.shape)} differs from the reference's {tuple(ref.shape)}"
            return
        if not (_numeric(ref) and _numeric(got)):
            self.elements += ref.size
            self.mismatched += int(np.count_nonzero(ref != got))
            self.nonfinite += int(np.count_nonzero(ref != got))
            return
        r64, g64 = ref.astype(np.float64, copy=False), got.astype(np.float64, copy=False)
        self.elements += r64.size
        close = np.isclose(g64, r64, rtol=self.tolerances.rtol, atol=self.tolerances.atol, equal_nan=True)
        self.mismatched += int(close.size - np.count_nonzero(close))
        finite = np.isfinite(r64) & np.isfinite(g64)
        if not finite.all():
            same = (r64 == g64) | (np.isnan(r64) & np.isnan(g64))
            self.nonfinite += int(np.count_nonzero(~finite & ~same))
            r64, g64 = r64[finite], g64[finite]
        self._add_sums(r64, g64)
        if has_top1(ref.dtype, ref.shape):
            positions = int(np.prod(ref.shape[:-1]))
            self.top1_hits += int(round(top1_agreement(ref, got) * positions))
            self.top1_positions += positions

    def _add_sums(self, r64: np.ndarray, g64: np.ndarray) -> None:
        r, g = r64.ravel(), g64.ravel()
        diff = r - g
        # einsum, not np.dot: BLAS threads fight onnxruntime's spinning threads for the cores.
        self.signal += float(np.einsum("i,i->", r, r))
        self.noise += float(np.einsum("i,i->", diff, diff))
        self.dot += float(np.einsum("i,i->", r, g))
        self.got_sq += float(np.einsum("i,i->", g, g))
        if r.size:
            self.max_abs = max(self.max_abs, max_abs_error(r, g))
            self.max_rel = max(self.max_rel, max_rel_error(r, g))

    def result(self) -> TensorMetrics:
        """The metrics so far, judged against the tolerances."""
        broken = self.shape_error is not None
        nan = float("nan")
        metrics = TensorMetrics(
            name=self.name, candidate_name=self.candidate_name, dtype=self.dtype, shape=self.shape,
            samples=self.samples, elements=self.elements,
            max_abs=nan if broken else self.max_abs, max_rel=nan if broken else self.max_rel,
            cosine=nan if broken else cosine_from_sums(self.dot, self.signal, self.got_sq),
            sqnr_db=nan if broken else sqnr_from_sums(self.signal, self.noise),
            top1=self.top1_hits / self.top1_positions if self.top1_positions and not broken else None,
            mismatched=self.mismatched, nonfinite=self.nonfinite,
        )
        metrics.failures = judge(metrics, self.tolerances, self.shape_error)
        metrics.passed = not metrics.failures
        return metrics


def judge(m: TensorMetrics, tol: Tolerances, shape_error: str | None = None) -> list[str]:
    """Reasons the tensor fails ``tol`` (empty when it passes); see :mod:`tolerances`."""
    if shape_error is not None:
        return [shape_error]
    if m.samples == 0:
        return ["no samples compared"]
    failures = []
    if m.nonfinite:
        failures.append(f"{m.nonfinite} non-finite or non-numeric values differ from the reference")
    if tol.elementwise and m.mismatched:
        failures.append(f"{m.mismatched} of {m.elements} elements outside rtol={tol.rtol:g} "
                        f"atol={tol.atol:g} (max abs error {m.max_abs:.3g})")
    if tol.min_sqnr is not None and not m.sqnr_db >= tol.min_sqnr:
        failures.append(f"SQNR {m.sqnr_db:.2f} dB < {tol.min_sqnr:g} dB")
    if tol.min_cosine is not None and not m.cosine >= tol.min_cosine:
        failures.append(f"cosine {m.cosine:.6f} < {tol.min_cosine:g}")
    if tol.min_top1 is not None and m.top1 is not None and not m.top1 >= tol.min_top1:
        failures.append(f"top-1 agreement {m.top1:.4f} < {tol.min_top1:g}")
    return failures
