"""Which weights sparsify zeroes: magnitude masks, unstructured or N:M, and the global allocation.

A mask is a boolean array the shape of ``W`` (rows = outputs, columns = reduction, see
:mod:`graphc.rewrite.linear_weights`), True where the weight is zeroed.

- unstructured, rate ``s``: the ``round(s * n)`` weights of smallest ``|w|`` in the layer (ties by
  position, so the mask is deterministic);
- N:M (``2:4``, ``4:8``): in every row, each run of M consecutive columns (consecutive input
  channels) keeps its N largest ``|w|`` and zeroes the other ``M - N``; the reduction length must
  be a multiple of M;
- global allocation: one threshold ``t`` over every candidate layer's ``|w|`` together, the
  ``round(s * total)``-th smallest; a layer's rate is the share of its weights at or below ``t``
  (Han et al.'s magnitude pruning: layers with many small weights give more).
A layer already holding at least its target of zeros (or every N:M group already holding ``M - N``
zeros) is left alone, which makes the pass idempotent.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Pattern:
    """``unstructured`` (n = m = 0) or N:M: N kept of every M."""

    n: int = 0
    m: int = 0

    @classmethod
    def parse(cls, text: str) -> "Pattern":
        if text == "unstructured":
            return cls()
        n, m = (int(part) for part in text.split(":"))
        return cls(n, m)

    @property
    def structured(self) -> bool:
        return self.m > 0

    @property
    def rate(self) -> float:
        return 1.0 - self.n / self.m

    def __str__(self) -> str:
        return f"{self.n}:{self.m}" if self.structured else "unstructured"


def target_zeros(size: int, rate: float) -> int:
    return int(round(rate * size))


def magnitude_mask(w: np.ndarray, rate: float) -> np.ndarray:
    """True at the ``round(rate * n)`` smallest ``|w|`` (stable order)."""
    k = target_zeros(w.size, rate)
    mask = np.zeros(w.size, dtype=bool)
    mask[np.argsort(np.abs(w).reshape(-1), kind="stable")[:k]] = True
    return mask.reshape(w.shape)


def n_m_mask(scores: np.ndarray, pattern: Pattern) -> np.ndarray:
    """True at the ``M - N`` lowest scores of every run of M consecutive columns of each row."""
    rows, cols = scores.shape
    groups = scores.reshape(rows, cols // pattern.m, pattern.m)
    order = np.argsort(groups, axis=-1, kind="stable")[..., : pattern.m - pattern.n]
    mask = np.zeros_like(groups, dtype=bool)
    np.put_along_axis(mask, order, True, axis=-1)
    return mask.reshape(rows, cols)


def meets_pattern(w: np.ndarray, pattern: Pattern, rate: float) -> bool:
    """True if ``w`` already has the zeros the pattern (or rate) asks for."""
    if pattern.structured:
        zeros = (w.reshape(w.shape[0], -1, pattern.m) == 0).sum(axis=-1)
        return bool(np.all(zeros >= pattern.m - pattern.n))
    return int(np.count_nonzero(w == 0)) >= target_zeros(w.size, rate)


def global_rates(weights: list[np.ndarray], rate: float) -> list[float]:
    """Per-layer rates from one magnitude threshold over all layers (module docstring)."""
    if not weights:
        return []
    magnitudes = np.concatenate([np.abs(w).reshape(-1) for w in weights])
    k = target_zeros(magnitudes.size, rate)
    if k == 0:
        return [0.0] * len(weights)
    threshold = np.partition(magnitudes, k - 1)[k - 1]
    return [float(np.count_nonzero(np.abs(w) <= threshold)) / w.size for w in weights]


def structured_problem(cols: int, pattern: Pattern) -> str | None:
    """Why the pattern cannot apply to a reduction of ``cols`` columns, or None."""
    if pattern.structured and cols % pattern.m:
        return f"reduction length not a multiple of {pattern.m} ({pattern} needs whole groups)"
    return None
