"""Range solvers: from a histogram to the range [lo, hi] a tensor is quantized to.

The collector (:mod:`graphc.calib.collect`) keeps a :class:`SignedHistogram` per tensor. A
solver works on magnitudes (:class:`AbsHistogram`: ``counts[j]`` values with |x| in
``[j w, (j + 1) w)``) and returns a threshold T:

- symmetric quantization solves T once on |x| (both signs added) and uses ``[-T, T]``;
- asymmetric quantization solves each side of zero on its own histogram (the positive values,
  and the magnitudes of the negative ones), each with the number of codes that side gets, and
  uses ``[-T_neg, T_pos]``. One |x| histogram would mix the sides: the negative lobe of a
  HardSwish (a pile-up at -0.375) would then decide the clipping of its positive tail.

Solvers (T is never above the observed extreme):

- **minmax**: ``T = max |x|``.
- **percentile**: the smallest T below which ``p`` percent of the |x| values lie, linearly
  interpolated inside the bin that crosses it.
- **mse**: T minimising the expected squared error of a uniform quantizer with ``levels`` codes on
  [0, T]: values above T cost ``(x - T)^2`` (clipping), values below cost ``s^2 / 12`` with step
  ``s = T / (levels - 1)`` (rounding). Bins are represented by their centres. Candidates are the
  bin edges ``i w`` for ``i >= 128``.
- **kl** (TensorRT's entropy calibration): for every candidate ``i`` (number of bins kept, from
  ``max(128, levels)`` to all of them):

  * ``P``: the first ``i`` bins, with every count beyond them added to bin ``i - 1`` (clipping
    moves outliers onto the threshold);
  * ``Q``: the first ``i`` bins merged into ``levels`` groups (bin ``j`` is in group
    ``floor(j * levels / i)``, so groups differ in size by at most one bin), each group's count
    spread evenly over the group's bins where ``P`` is non-zero (empty bins stay empty: the
    quantizer cannot tell them apart, but the source never produced them);
  * ``KL(P || Q) = sum_j P_j log(P_j / Q_j)`` over the non-zero bins of ``P``, both normalised to 1.

  ``Q`` is non-zero wherever ``P`` is, except when every value of the last group was clipped in
  from beyond the threshold; such an empty ``Q`` bin gets probability ``eps`` (smoothing of empty
  bins; without it the divergence is infinite). The threshold is the upper edge ``i w`` of the
  best candidate.

  Three guards. Bin 0 takes the count of bin 1 before the search, as in NVIDIA's
  pytorch-quantization (a spike of exact zeros - half of a Relu's output - would otherwise make
  every wide candidate look bad). A histogram of fewer than ``8 x bins`` values (a
  squeeze-excite vector seen on a few samples) is too sparse to describe a distribution: KL keeps
  the full range. And the threshold is never below the 99.9th percentile: KL models each group's
  values as spread evenly, so a point mass (a Conv's bias over the zero padding of a text line:
  one value per channel, thousands of times) looks costly to cover and KL would clip several
  percent of the values to avoid it, at a cost in output SQNR (BENCHMARKS.md, design notes).

  Every candidate is evaluated at once: inside a group ``Q`` is constant, so the divergence is
  ``(1/N) [sum_j h_j log h_j - sum_g H_g log(avg_g)] + log(Q_i / N)`` with prefix sums of
  ``h``, ``h log h`` and non-zero counts; the work is ``candidates x levels``, not
  ``candidates x bins``.

**Levels.** KL and MSE need the number of codes the quantizer puts on [0, T]. Symmetric int8 has
128 magnitudes (0..127): 128 (``2^(b-1)``). An asymmetric quantizer of [lo, hi] spends
``2^b |side| / (hi - lo)`` of its codes on a side (:func:`side_levels`): 256 for a non-negative
tensor with zero point 0, about 128 per side for a balanced one. KL needs candidates of at least
``levels`` bins, so it starts at ``max(128, levels)``.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

#: bins of the |x| histograms (TensorRT's choice).
NUM_BINS = 2048
#: smallest candidate threshold, in bins.
MIN_CANDIDATE_BINS = 128
#: probability given to an empty Q bin where P is not empty.
KL_EPS = 1e-4
#: below this many values a histogram is too sparse to estimate a distribution: KL keeps the range.
MIN_KL_VALUES = 8 * NUM_BINS
#: KL never clips more than 0.1 % of a side's values (see the module doc).
KL_MIN_PERCENTILE = 99.9

METHODS = ("kl", "minmax", "percentile", "mse")


@dataclass
class AbsHistogram:
    """Counts of |x| in ``len(counts)`` bins of width ``width`` starting at 0."""

    counts: np.ndarray
    width: float

    @property
    def range(self) -> float:
        return float(len(self.counts) * self.width)

    @property
    def total(self) -> int:
        return int(self.counts.sum())


@dataclass
class SignedHistogram:
    """Counts of x in ``len(counts)`` bins of width ``width`` over ``[-R, R)``, R = len/2 * width."""

    counts: np.ndarray
    width: float

    @property
    def half(self) -> int:
        return len(self.counts) // 2

    def positive(self) -> AbsHistogram:
        """Values >= 0: bin j holds ``[j w, (j + 1) w)``."""
        return AbsHistogram(self.counts[self.half:].copy(), self.width)

    def negative(self) -> AbsHistogram:
        """Values < 0 by magnitude: bin j holds ``-x`` in ``(j w, (j + 1) w]``."""
        return AbsHistogram(self.counts[:self.half][::-1].copy(), self.width)

    def magnitude(self) -> AbsHistogram:
        """|x| (both sides added)."""
        return AbsHistogram(self.counts[self.half:] + self.counts[:self.half][::-1], self.width)

    @property
    def total(self) -> int:
        return int(self.counts.sum())


def side_levels(side: float, lo: float, hi: float, bits: int = 8) -> int:
    """Codes an asymmetric quantizer of [lo, hi] spends on one side of zero (``side`` = |extreme|)."""
    if hi <= lo:
        return 1
    return int(max(1, round((2 ** bits) * side / (hi - lo))))


# ---------------------------------------------------------------------------------------------
# KL


def kl_divergences(counts: np.ndarray, levels: int = 128,
                   start: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(candidates, divergences)``: KL(P || Q) for keeping ``i`` bins, every ``i`` from
    ``start`` (default ``max(128, levels)``) to ``len(counts)``. Vectorized over candidates."""
    h = np.asarray(counts, dtype=np.float64)
    n = len(h)
    start = max(MIN_CANDIDATE_BINS, levels) if start is None else start
    start = min(max(start, levels, 1), n)
    cands = np.arange(start, n + 1)
    total = h.sum()
    if total <= 0:
        return cands, np.zeros(len(cands))
    # prefix sums over bins: counts, h log h, non-zero bins
    c_h = np.concatenate([[0.0], np.cumsum(h)])
    hlogh = np.where(h > 0, h * np.log(np.where(h > 0, h, 1.0)), 0.0)
    c_hlogh = np.concatenate([[0.0], np.cumsum(hlogh)])
    c_nz = np.concatenate([[0], np.cumsum(h > 0)])

    bounds = _group_bounds(start, n, levels)             # (C, levels + 1)
    g_sum = np.diff(c_h[bounds], axis=1)                 # (C, levels) counts per group (no outliers)
    g_nz = np.diff(c_nz[bounds], axis=1).astype(np.float64)

    last = cands - 1                                     # index of the last kept bin
    outliers = total - c_h[cands]
    h_last = h[last]
    p_last = h_last + outliers                           # P's last bin
    # P's non-zero mask differs from h's only at the last bin: it is non-zero there if outliers were added.
    last_extra_nz = ((h_last == 0) & (p_last > 0)).astype(np.float64)
    g_nz[:, -1] += last_extra_nz
    avg = np.divide(g_sum, g_nz, out=np.zeros_like(g_sum), where=g_nz > 0)
    q_total = np.maximum(c_h[cands], 1.0)                # sum of Q before normalisation (counts: >= 1 when > 0)

    # bins 0 .. i-2: P_j = h_j / N, Q_j = avg_g / q_total
    #   sum_j (h_j/N) log(h_j/N) - (h_j/N) log(avg_g/q_total)
    body_h = c_h[last]                                   # sum of h over bins < i - 1
    body_hlogh = c_hlogh[last]
    # per group: sum of h over its bins, excluding the last kept bin (belongs to the last group)
    g_body = g_sum.copy()
    g_body[:, -1] -= h_last
    log_avg = np.log(np.where(avg > 0, avg, 1.0))
    cross = np.sum(g_body * log_avg, axis=1)
    kl = (body_hlogh - body_h * np.log(total) - cross + body_h * np.log(q_total)) / total

    # the last kept bin
    p = p_last / total
    q = np.where(avg[:, -1] > 0, avg[:, -1] / q_total, KL_EPS)
    kl += np.where(p > 0, p * (np.log(np.where(p > 0, p, 1.0)) - np.log(q)), 0.0)
    return cands, kl


@functools.lru_cache(maxsize=64)
def _group_bounds(start: int, n: int, levels: int) -> np.ndarray:
    """First bin of each group (and the end) for every candidate: ``ceil(k i / levels)``."""
    i = np.arange(start, n + 1)[:, None]
    k = np.arange(levels + 1)[None, :]
    bounds = -((-k * i) // levels)
    bounds.setflags(write=False)
    return bounds


def kl_threshold(hist: AbsHistogram, levels: int = 128) -> float:
    """The KL-optimal threshold (upper edge of the best candidate bin), or the range when the
    histogram holds fewer than :data:`MIN_KL_VALUES` values."""
    if hist.total < MIN_KL_VALUES:
        return hist.range
    counts = hist.counts.astype(np.float64)
    if len(counts) > 1:
        counts[0] = counts[1]  # the spike of exact zeros
    cands, kl = kl_divergences(counts, levels)
    best = int(cands[int(np.argmin(kl))])
    return float(best * hist.width)


# ---------------------------------------------------------------------------------------------
# other solvers


def percentile_threshold(hist: AbsHistogram, percentile: float) -> float:
    total = hist.total
    if total == 0:
        return 0.0
    cum = np.cumsum(hist.counts, dtype=np.float64)
    target = total * min(max(percentile, 0.0), 100.0) / 100.0
    j = int(np.searchsorted(cum, target, side="left"))
    j = min(j, len(cum) - 1)
    before = cum[j - 1] if j > 0 else 0.0
    inside = hist.counts[j]
    frac = (target - before) / inside if inside > 0 else 1.0
    return float((j + min(max(frac, 0.0), 1.0)) * hist.width)


def mse_errors(counts: np.ndarray, width: float, levels: int,
               start: int = MIN_CANDIDATE_BINS) -> tuple[np.ndarray, np.ndarray]:
    """``(thresholds, expected squared error)`` for thresholds at bin edges ``i w``, ``i >= start``."""
    h = np.asarray(counts, dtype=np.float64)
    n = len(h)
    start = min(start, n)
    centres = (np.arange(n) + 0.5) * width
    # suffix sums for the clipping term sum_{c_j > T} h_j (c_j - T)^2
    s0 = np.concatenate([np.cumsum(h[::-1])[::-1], [0.0]])
    s1 = np.concatenate([np.cumsum((h * centres)[::-1])[::-1], [0.0]])
    s2 = np.concatenate([np.cumsum((h * centres ** 2)[::-1])[::-1], [0.0]])
    cands = np.arange(start, n + 1)
    t = cands * width
    clip = s2[cands] - 2 * t * s1[cands] + t ** 2 * s0[cands]
    step = t / max(levels - 1, 1)
    inside = h.sum() - s0[cands]
    return t, clip + inside * step ** 2 / 12.0


def mse_threshold(hist: AbsHistogram, levels: int = 128) -> float:
    if hist.total == 0:
        return 0.0
    t, err = mse_errors(hist.counts, hist.width, levels)
    return float(t[int(np.argmin(err))])


def solve_threshold(method: str, hist: AbsHistogram | None, amax: float, *, levels: int = 128,
                    percentile: float = 99.99) -> float:
    """Threshold T for ``method`` on a histogram of magnitudes; never above the observed ``amax``."""
    if method == "minmax" or hist is None or hist.total == 0 or amax <= 0:
        return float(amax)
    if levels < 2:
        return float(amax)
    if method == "kl":
        t = max(kl_threshold(hist, levels), percentile_threshold(hist, KL_MIN_PERCENTILE))
    elif method == "percentile":
        t = percentile_threshold(hist, percentile)
    elif method == "mse":
        t = mse_threshold(hist, levels)
    else:
        raise ValueError(f"unknown calibration method '{method}'; expected one of {', '.join(METHODS)}")
    return float(min(t, amax)) if t > 0 else float(amax)


def solve_range(method: str, hist: SignedHistogram | None, lo: float, hi: float, *,
                symmetric: bool, bits: int = 8, percentile: float = 99.99) -> tuple[float, float]:
    """The range [lo', hi'] to quantize a tensor observed in [lo, hi] to.

    Symmetric: ``[-T, T]`` with T solved on |x| with ``2^(b-1)`` levels. Asymmetric: each side of
    zero is solved on its own histogram with the codes that side gets (``side_levels``); a side
    with too few codes or values to matter keeps its observed extreme.
    """
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    if symmetric:
        amax = max(-lo, hi)
        mag = hist.magnitude() if hist is not None else None
        t = solve_threshold(method, mag, amax, levels=2 ** (bits - 1), percentile=percentile)
        return -t, t
    pos = hist.positive() if hist is not None else None
    neg = hist.negative() if hist is not None else None
    t_hi = solve_threshold(method, pos, hi, levels=side_levels(hi, lo, hi, bits), percentile=percentile)
    t_lo = solve_threshold(method, neg, -lo, levels=side_levels(-lo, lo, hi, bits), percentile=percentile)
    return -t_lo, t_hi
