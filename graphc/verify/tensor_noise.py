"""Noise of named tensors between a reference and a candidate that computes them in another
element type (fp16 regions of a float32 model): both run on the same samples with the tensors
exposed, and per tensor the signal ``S = sum(r^2)`` and noise ``N = sum((c - r)^2)`` accumulate in
float64 over all samples (``SQNR = 10 log10(S / N)``). Unlike :mod:`graphc.verify.localize`, a
tensor whose dtype differs is compared (widened to float64); one whose shape differs is skipped.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np

from graphc.ir.model import Model
from graphc.ir.outputs import with_outputs
from graphc.runtime import create_session, run_session


@dataclass
class Noise:
    """Accumulated signal and noise energy of one tensor (float64 sums); ``finite`` is False once
    the candidate produced NaN or Inf where the reference did not."""

    signal: float = 0.0
    noise: float = 0.0
    finite: bool = True

    @property
    def ratio(self) -> float:
        """noise / signal (0 when both are 0; inf when the candidate is not finite)."""
        if not self.finite:
            return float("inf")
        if self.noise == 0.0:
            return 0.0
        return self.noise / self.signal if self.signal > 0 else float("inf")

    @property
    def sqnr_db(self) -> float:
        r = self.ratio
        return float("inf") if r == 0.0 else -10.0 * float(np.log10(r)) if np.isfinite(r) else float("-inf")

    def add(self, ref: np.ndarray, got: np.ndarray) -> None:
        r, g = np.asarray(ref, np.float64), np.asarray(got, np.float64)
        bad = ~np.isfinite(g) & np.isfinite(r)
        if bad.any():
            self.finite = False
        ok = np.isfinite(r) & np.isfinite(g)
        self.signal += float(np.sum(r[ok] ** 2))
        self.noise += float(np.sum((g[ok] - r[ok]) ** 2))


def tensor_noise(reference: Model, candidate: Model, data: Iterable[dict[str, np.ndarray]],
                 names: Sequence[str], max_samples: int | None = None,
                 optimize_candidate: bool = True) -> dict[str, Noise]:
    """``{name: Noise}`` of the tensors ``names`` (computed by both models) over ``data``.
    ``optimize_candidate=False`` runs the candidate as written (no graph optimizations: Cast pairs
    that round to a narrower type stay)."""
    names = list(dict.fromkeys(names))
    ref_session = create_session(with_outputs(reference, names), label="reference", spin=False)
    cand_session = create_session(with_outputs(candidate, names), label="candidate", spin=False,
                                  optimize=optimize_candidate)
    noise = {name: Noise() for name in names}
    for index, feed in enumerate(data):
        if max_samples is not None and index >= max_samples:
            break
        want = dict(zip([o.name for o in ref_session.get_outputs()], run_session(ref_session, feed, label="reference")))
        got = dict(zip([o.name for o in cand_session.get_outputs()], run_session(cand_session, feed, label="candidate")))
        for name in names:
            if name in want and name in got and np.shape(want[name]) == np.shape(got[name]):
                noise[name].add(want[name], got[name])
    return noise
