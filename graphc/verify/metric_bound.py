"""How far a metric measured on a sample can be trusted: a one-sided upper confidence bound of an
error rate, for error budgets that must hold on data they did not see.

A metric whose score is a pooled error rate exposes its counts: ``function.counts(reference,
candidate, labels, **args)`` returns two arrays with one entry per sample (text line, image), the
errors ``e_i`` and the opportunities ``t_i``, and the score is the rate ``r = sum e / sum t``
(``1 - r`` when higher is better). ``ctc_cer`` (edit operations / truth characters) and ``box_f1``
(``FP + FN`` / ``2 TP + FP + FN``, since ``1 - F1`` is that ratio) do.

The upper bound of ``r`` at confidence ``c`` is the larger of two estimates, because each alone
misses a case:

- Clopper-Pearson (exact binomial), treating the ``T = sum t`` opportunities as independent
  trials with ``E = min(sum e, T)`` failures: the ``p`` with ``P(X <= E | T, p) = 1 - c``. It is
  not zero when no error was seen (``E = 0``: ``1 - (1 - c)^(1/T)``, about ``3 / T`` at 95%), which
  is exactly the case where a budget decided on a few lines is fooled;
- a bootstrap over samples (1000 resamples of the ``n`` samples with replacement, seeded, the
  ``c`` quantile of the pooled rate): errors cluster within a line or an image, and resampling
  whole samples keeps that clustering, which the binomial bound ignores.

The drop bound is ``bound(r_candidate) - r_reference`` (the reference's rate as measured: with the
float model's outputs as the truth it is 0). Metrics without ``counts`` get no bound (None): the
budget falls back to the point estimate and says so.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

BOOTSTRAP_ROUNDS = 1000


def binomial_upper(errors: int, trials: int, confidence: float) -> float:
    """Clopper-Pearson upper bound of a binomial rate: ``errors`` failures in ``trials``."""
    if trials <= 0:
        return 1.0
    errors = min(max(int(errors), 0), int(trials))
    if errors >= trials:
        return 1.0
    alpha = 1.0 - confidence
    if errors == 0:
        return 1.0 - alpha ** (1.0 / trials)
    lo, hi = errors / trials, 1.0
    for _ in range(60):  # bisection: the binomial CDF falls as p grows
        mid = (lo + hi) / 2
        if _binomial_cdf(errors, trials, mid) > alpha:
            lo = mid
        else:
            hi = mid
    return hi


def _binomial_cdf(k: int, n: int, p: float) -> float:
    i = np.arange(k + 1, dtype=np.float64)
    log_terms = (math.lgamma(n + 1) - np.array([math.lgamma(x + 1) + math.lgamma(n - x + 1) for x in i])
                 + i * math.log(p) + (n - i) * math.log1p(-p))
    return float(np.exp(log_terms).sum())


def bootstrap_upper(errors: np.ndarray, totals: np.ndarray, confidence: float,
                    rounds: int = BOOTSTRAP_ROUNDS, seed: int = 0) -> float:
    """The ``confidence`` quantile of the pooled rate over resamples of whole samples."""
    errors, totals = np.asarray(errors, np.float64), np.asarray(totals, np.float64)
    if len(errors) == 0:
        return 1.0
    picks = np.random.default_rng(seed).integers(len(errors), size=(rounds, len(errors)))
    e, t = errors[picks].sum(axis=1), totals[picks].sum(axis=1)
    rates = np.divide(e, t, out=np.where(e > 0, 1.0, 0.0), where=t > 0)
    return float(np.quantile(np.minimum(rates, 1.0), confidence, method="higher"))


def rate_upper(errors: np.ndarray, totals: np.ndarray, confidence: float) -> float:
    """Upper bound of the pooled rate ``sum errors / sum totals``: the larger of the binomial
    and the bootstrap bound (see the module docstring)."""
    e, t = float(np.sum(errors)), float(np.sum(totals))
    return max(binomial_upper(int(round(e)), int(round(t)), confidence),
               bootstrap_upper(errors, totals, confidence))


def pooled_rate(counts: tuple[Any, Any]) -> float:
    e, t = float(np.sum(counts[0])), float(np.sum(counts[1]))
    return (0.0 if e == 0 else 1.0) if t == 0 else min(e / t, 1.0)
