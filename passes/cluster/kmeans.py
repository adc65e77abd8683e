"""Weighted one-dimensional k-means with k-means++ seeding, for weight sharing.

Minimises ``sum_i h_i (w_i - c_{a(i)})^2`` over the codebook ``c`` (k values) and assignments
``a``, where ``h_i > 0`` is the importance of weight ``i`` (1 without data; with data the mean
square of the input feature it multiplies, so the objective is each weight's contribution to
the output error when inputs are uncorrelated - the diagonal of the OBS/GPTQ Hessian).

- seeding (k-means++, Arthur & Vassilvitskii 2007): the first centre drawn with probability
  proportional to ``h``, each next one proportional to ``h_i * D(w_i)^2`` (squared distance to the
  nearest centre chosen so far), from a seeded generator: the result is deterministic;
- Lloyd iterations: assign each weight to its nearest centre (in one dimension, by the midpoints
  of the sorted centres: the importance does not change which centre is nearest), move each centre
  to the ``h``-weighted mean of its weights; stop when no assignment changes (or ``iterations``).
  The returned assignment is the nearest-centre one for the returned codebook. In one dimension
  a cluster is a run of the sorted values, so the values are sorted once and an iteration only
  places the k - 1 midpoints among them (``searchsorted``, k log n) and sums each run's ``h`` and
  ``h w`` in one sequential pass (``reduceat``), instead of a binary search per value
  (O(n log k)) and two ``bincount`` scatters: a 590k-weight layer at k = 16 took 9.5 s, now 1.9 s,
  with the same assignments (tests/passes/test_cluster.py compares it with the per-value form).
- restarts: Lloyd's iterations stop in local optima (on a 128-weight layer with input mean
  squares spread over e^-6..e^6, single k-means++ starts ended 15-40% apart), so Lloyd runs from
  the h-weighted quantiles and from ``restarts`` k-means++ seedings, and the codebook with the
  lowest objective is kept.
When there are at most k distinct values, the codebook is those values and the coding is exact.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Codebook:
    centres: np.ndarray   # (k,) sorted ascending, float64
    assignment: np.ndarray  # index into centres per value, int64


def nearest(values: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """Index of the nearest of the sorted ``centres`` for each value (ties to the lower)."""
    if len(centres) == 1:
        return np.zeros(values.shape, dtype=np.int64)
    midpoints = (centres[1:] + centres[:-1]) / 2
    return np.searchsorted(midpoints, values, side="left").astype(np.int64)


def _seed(values: np.ndarray, h: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    centres = [values[rng.choice(values.size, p=h / h.sum())]]
    distance = (values - centres[0]) ** 2
    for _ in range(1, k):
        weight = h * distance
        total = weight.sum()
        if total <= 0:
            break
        centres.append(values[rng.choice(values.size, p=weight / total)])
        distance = np.minimum(distance, (values - centres[-1]) ** 2)
    return np.unique(np.asarray(centres, dtype=np.float64))


def kmeans_1d(values: np.ndarray, k: int, importance: np.ndarray | None = None, *, seed: int = 0,
              iterations: int = 50, restarts: int = 4) -> Codebook:
    """The codebook of at most ``k`` centres and the nearest-centre assignment of ``values``."""
    values = np.asarray(values, dtype=np.float64).reshape(-1)
    distinct = np.unique(values)
    if distinct.size <= k:
        return Codebook(distinct, np.searchsorted(distinct, values).astype(np.int64))
    h = np.ones_like(values) if importance is None else np.asarray(importance, np.float64).reshape(-1)
    h = np.maximum(h, 1e-12 * max(float(h.max()), 1e-30))
    rng = np.random.default_rng(seed)
    starts = [_quantiles(values, h, k)] + [_seed(values, h, k, rng) for _ in range(restarts)]
    runs = SortedRuns(values, h)
    books = [Codebook(c, nearest(values, c)) for c in (runs.lloyd(start, iterations) for start in starts)]
    return min(books, key=lambda book: (_objective(values, h, book), len(book.centres)))


def _objective(values: np.ndarray, h: np.ndarray, book: Codebook) -> float:
    return float(np.sum(h * (values - book.centres[book.assignment]) ** 2))


def _quantiles(values: np.ndarray, h: np.ndarray, k: int) -> np.ndarray:
    """Centres at the h-weighted quantiles (i + 1/2) / k: a spread start for skewed weights."""
    order = np.argsort(values, kind="stable")
    mass = np.cumsum(h[order])
    picks = np.searchsorted(mass, (np.arange(k) + 0.5) / k * mass[-1])
    return np.unique(values[order[np.minimum(picks, values.size - 1)]])


class SortedRuns:
    """The values (and their ``h``) sorted once: a cluster is a run of them, its mass and weighted
    sum are segment sums (``np.add.reduceat``) and the runs' edges come from the midpoints."""

    def __init__(self, values: np.ndarray, h: np.ndarray):
        order = np.argsort(values, kind="stable")
        self.sorted = values[order]
        self.h = h[order]
        self.hw = self.h * self.sorted

    def bounds(self, centres: np.ndarray) -> np.ndarray:
        """Start of each centre's run and the end: values ``v`` with ``m_{j-1} < v <= m_j`` (the
        midpoints) go to centre ``j``, as :func:`nearest` assigns them."""
        midpoints = (centres[1:] + centres[:-1]) / 2
        inner = np.searchsorted(self.sorted, midpoints, side="right")
        return np.concatenate([[0], inner, [self.sorted.size]])

    def lloyd(self, centres: np.ndarray, iterations: int) -> np.ndarray:
        edges = self.bounds(centres)
        for _ in range(iterations):
            starts = edges[:-1][edges[1:] > edges[:-1]]  # the runs that hold values
            mass = np.add.reduceat(self.h, starts)
            sums = np.add.reduceat(self.hw, starts)
            used = mass > 0
            centres = np.unique(sums[used] / mass[used])
            new = self.bounds(centres)
            if np.array_equal(new, edges):
                break
            edges = new
        return centres
