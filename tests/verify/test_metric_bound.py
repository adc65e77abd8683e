"""The upper confidence bound of a pooled error rate (graphc.verify.metric_bound): Clopper-Pearson
against the binomial CDF computed independently, the bootstrap's clustering, and the drop bound
of a user metric with counts."""
from __future__ import annotations

import math

import numpy as np
import pytest

from graphc.task_metrics import ctc_cer
from graphc.verify.metric_bound import (binomial_upper, bootstrap_upper, clustered_binomial_upper, pooled_rate,
                                        rate_upper)
from graphc.verify.user_metric import UserMetric


def binomial_cdf(k: int, n: int, p: float) -> float:
    return sum(math.comb(n, i) * p ** i * (1 - p) ** (n - i) for i in range(k + 1))


@pytest.mark.parametrize("k, n", [(1, 10), (3, 50), (10, 400), (0, 1000)])
def test_clopper_pearson_upper_leaves_alpha_below(k, n):
    p = binomial_upper(k, n, 0.95)
    assert binomial_cdf(k, n, p) == pytest.approx(0.05, abs=1e-6)
    assert p > k / n


def test_no_errors_seen_is_not_a_zero_bound():
    # the rule of three: 0 errors in 1000 characters is still up to ~0.3% at 95%
    assert binomial_upper(0, 1000, 0.95) == pytest.approx(1 - 0.05 ** (1 / 1000))
    assert 0.0029 < binomial_upper(0, 1000, 0.95) < 0.0031
    assert binomial_upper(0, 100, 0.95) > 0.029          # a budget of 0.003 cannot hold on 100 chars
    assert binomial_upper(5, 5, 0.95) == 1.0 and binomial_upper(0, 0, 0.95) == 1.0


def test_bootstrap_sees_errors_that_cluster_in_few_samples():
    # 40 errors in 4000 opportunities, all in 2 of 100 lines: the binomial bound thinks they are
    # independent (about 1.3%); resampling lines finds rates up to twice that
    errors = np.zeros(100); errors[:2] = 20
    totals = np.full(100, 40.0)
    binomial = binomial_upper(40, 4000, 0.95)
    boot = bootstrap_upper(errors, totals, 0.95)
    assert binomial < 0.014 < boot
    clustered = clustered_binomial_upper(errors, totals, 0.95)
    assert binomial < clustered
    assert rate_upper(errors, totals, 0.95) == max(boot, clustered)
    assert bootstrap_upper(errors, totals, 0.95) == boot           # seeded: the same every time
    # spread-out errors: the binomial bound is the larger one
    spread = np.zeros(100); spread[:40] = 1
    assert rate_upper(spread, totals, 0.95) == binomial_upper(40, 4000, 0.95)


def test_pooled_rate_and_the_drop_bound_of_a_metric_with_counts():
    assert pooled_rate((np.array([1, 2]), np.array([10, 10]))) == pytest.approx(0.15)
    assert pooled_rate((np.array([0]), np.array([0]))) == 0.0
    line = np.zeros((1, 4, 3), np.float32)
    line[0, [0, 1, 2, 3], [1, 0, 2, 0]] = 1          # "12"
    other = np.zeros((1, 4, 3), np.float32)
    other[0, [0, 1, 2, 3], [1, 0, 1, 0]] = 1         # "11": one substitution
    ref = [{"y": line}] * 50                         # 100 characters
    cand = [{"y": other}] + [{"y": line}] * 49
    metric = UserMetric("graphc.task_metrics:ctc_cer", ctc_cer)
    assert metric.has_counts
    assert metric.score(ref, cand) == pytest.approx(0.01)
    bound = metric.drop_upper_bound(ref, cand, 0.95)
    errors, totals = np.array([1] + [0] * 49), np.full(50, 2)
    assert bound == pytest.approx(max(binomial_upper(1, 100, 0.95), bootstrap_upper(errors, totals, 0.95),
                                      clustered_binomial_upper(errors, totals, 0.95)))
    assert bound > 0.04
    plain = UserMetric("x:y", lambda r, c, labels=None: 0.0)
    assert not plain.has_counts and plain.drop_upper_bound(ref, cand, 0.95) is None


def test_paired_bootstrap_counts_changes_both_ways():
    from graphc.verify.metric_bound import paired_bootstrap_upper

    totals = np.full(200, 20)
    reference = np.zeros(200); reference[::10] = 2          # 40 errors in 4000 characters
    # the candidate mends 10 lines and breaks 12 others by one character: +2 errors in all
    candidate = reference.copy(); candidate[:100:10] -= 1; candidate[1:25:2] += 1
    bound = paired_bootstrap_upper((candidate, totals), (reference, totals), 0.95)
    point = (candidate.sum() - reference.sum()) / totals.sum()
    assert point == pytest.approx(2 / 4000) and point < bound < 0.003
    # the same candidate as the reference: every resample's difference is 0
    assert paired_bootstrap_upper((reference, totals), (reference, totals), 0.95) == 0.0
    # labelled drop through a metric: the paired bound, not the disagreement bound
    with pytest.raises(ValueError, match="samples"):
        paired_bootstrap_upper((candidate[:3], totals[:3]), (reference, totals), 0.95)


def _lines_like_ppocr_rec(rng: np.random.Generator, n: int) -> tuple[np.ndarray, ...]:
    """``n`` lines from a population whose true CER change is known: truth lengths 3-23, the float
    model's errors Poisson(0.7), and the quantized model's per-line change drawn from the
    distribution measured on 6600 rendered PP-OCRv4 lines (mostly 0, tails of -6 and +4)."""
    totals = rng.integers(3, 24, size=n)
    reference = rng.poisson(0.7, size=n)
    change = rng.choice(CHANGES, size=n, p=CHANGE_P)
    return np.maximum(reference + change, 0), totals, reference, totals


CHANGES = np.array([-6, -4, -3, -2, -1, 0, 1, 2, 3, 4])
CHANGE_P = np.array([2, 5, 10, 59, 500, 5258, 675, 78, 11, 2]) / 6600.0


def test_paired_bootstrap_covers_the_true_change_95_times_in_100():
    """Coverage on a population where the truth is known: the bound computed on each of 300 sets
    of 300 lines lies above the population's change in about 95% of them (a bound that is too
    tight - e.g. the unpaired spread, or the median - or far too loose fails)."""
    from graphc.verify.metric_bound import paired_bootstrap_upper

    rng = np.random.default_rng(11)
    population = _lines_like_ppocr_rec(rng, 400_000)
    truth = (population[0].sum() - population[2].sum()) / population[1].sum()
    covered = []
    for k in range(300):
        cand_e, cand_t, ref_e, ref_t = _lines_like_ppocr_rec(rng, 300)
        covered.append(paired_bootstrap_upper((cand_e, cand_t), (ref_e, ref_t), 0.95, rounds=400, seed=k) >= truth)
    assert 0.91 <= np.mean(covered) <= 0.985


def _pages_like_ppocr_det(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Box-F1 counts of ``n`` pages as measured on 720 rendered PP-OCRv4 det pages (all-int8 against
    the float boxes): ~10.7 boxes a page, errors (FP + FN) on 1 page in 10, 1-4 of them."""
    boxes = rng.poisson(10.7, size=n)
    hit = rng.random(n) < 0.098
    errors = np.where(hit, rng.choice([1, 2, 3, 4], size=n, p=np.array([41, 23, 6, 1]) / 71), 0)
    return errors, 2 * boxes + errors


def test_rate_bound_covers_clustered_errors_95_times_in_100():
    """Few errors, clustered on a tenth of the pages: the pooled-rate bound computed on each of 300
    sets of 120 pages covers the population's rate in about 95% of them (Clopper-Pearson and the
    percentile bootstrap alone: about 91%)."""
    rng = np.random.default_rng(0)
    population = _pages_like_ppocr_det(rng, 1_000_000)
    truth = population[0].sum() / population[1].sum()
    covered = [rate_upper(*_pages_like_ppocr_det(rng, 120), 0.95) >= truth for _ in range(300)]
    assert 0.935 <= np.mean(covered) <= 0.99
