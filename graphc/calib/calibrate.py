"""``calibrate``: ranges of activations from calibration data, for the quant pass.

Collection (one streaming pass per chunk of tensors, :mod:`graphc.calib.collect`) then one solver
per tensor (:mod:`graphc.calib.ranges`). Each tensor's range is its observed [min, max] clipped to
the solver's threshold T on |x| (``[-T, T]`` when symmetric); min-max calibration keeps the
observed range.
"""
from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Collection, Iterable, Sequence

import numpy as np

from graphc.calib.collect import DEFAULT_MEMORY_LIMIT, TensorStats, collect_stats
from graphc.calib.ranges import METHODS, NUM_BINS, solve_range as solve_histogram_range

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Range:
    """The range [lo, hi] to quantize a tensor to, and what calibration observed."""

    lo: float
    hi: float
    observed_min: float
    observed_max: float
    threshold: float
    #: values calibration saw (0: the tensor never ran, e.g. in an If branch no sample took;
    #: None: not recorded)
    count: int | None = None

    def __iter__(self):  # unpacks as (lo, hi)
        return iter((self.lo, self.hi))


def calibrate(model, data: Iterable[dict[str, np.ndarray]], tensors: Sequence[str],
              method: str = "kl", *, percentile: float = 99.99, symmetric: bool | Collection[str] = False,
              bits: int = 8, max_samples: int | None = None, bins: int = NUM_BINS,
              memory_limit: int = DEFAULT_MEMORY_LIMIT, progress: bool | None = None,
              threads: int | None = None) -> dict[str, Range]:
    """Calibrated ranges of ``tensors`` of ``model`` (a :class:`graphc.ir.Model`) over ``data``.

    ``symmetric``: True for every tensor, or the names of the tensors quantized symmetrically.
    """
    if method not in METHODS:
        raise ValueError(f"unknown calibration method '{method}'; expected one of {', '.join(METHODS)}")
    stats = collect_stats(model, data, tensors, histograms=method != "minmax", bins=bins,
                          max_samples=max_samples, memory_limit=memory_limit, progress=progress,
                          threads=threads)
    sym = set(tensors) if symmetric is True else set(symmetric or ())

    def solve(item):
        name, s = item
        return name, solve_range(s, method, symmetric=name in sym, bits=bits, percentile=percentile)

    # the solvers are numpy on (candidates x levels) arrays, which releases the GIL: two threads
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="graphc-solve") as pool:
        return dict(pool.map(solve, stats.items()))


def solve_range(stats: TensorStats, method: str, *, symmetric: bool, bits: int = 8,
                percentile: float = 99.99) -> Range:
    lo, hi = (stats.min, stats.max) if stats.count else (0.0, 0.0)
    qlo, qhi = solve_histogram_range(method, stats.histogram, lo, hi, symmetric=symmetric, bits=bits,
                                     percentile=percentile)
    return Range(float(qlo), float(qhi), float(lo), float(hi), float(max(-qlo, qhi)), int(stats.count))
