"""calib.ranges: the vectorized KL search against a plain loop (TensorRT's search bin by bin) and
against the definition computed independently on small histograms, and the other solvers."""
import numpy as np
import pytest

from graphc.calib.ranges import (
    KL_EPS,
    MIN_KL_VALUES,
    AbsHistogram,
    SignedHistogram,
    kl_divergences,
    kl_threshold,
    mse_errors,
    percentile_threshold,
    side_levels,
    solve_range,
    solve_threshold,
)

RNG = np.random.default_rng(0)


def reference_kl(counts, levels, start):
    """TensorRT's search written out bin by bin, as the module doc defines it."""
    h = np.asarray(counts, dtype=np.float64)
    n = len(h)
    out = []
    for i in range(start, n + 1):
        p = h[:i].copy()
        p[-1] += h[i:].sum()
        q = np.zeros(i)
        for g in range(levels):
            lo, hi = -(-g * i // levels), -(-(g + 1) * i // levels)
            nonzero = [j for j in range(lo, hi) if p[j] > 0]
            total = h[lo:hi].sum()
            for j in nonzero:
                q[j] = total / len(nonzero)
        p /= p.sum()
        if q.sum() > 0:
            q /= q.sum()
        kl = 0.0
        for j in range(i):
            if p[j] > 0:
                kl += p[j] * np.log(p[j] / (q[j] if q[j] > 0 else KL_EPS))
        out.append(kl)
    return np.array(out)


def _hist(values, bins, top=None):
    top = np.abs(values).max() if top is None else top
    counts, _ = np.histogram(np.abs(values), bins=bins, range=(0, top))
    return counts


@pytest.mark.parametrize("name,values", [
    ("normal", RNG.standard_normal(50_000)),
    ("cauchy", RNG.standard_cauchy(50_000)),        # heavy tail: outliers beyond the range
    ("laplace", RNG.laplace(size=3_000)),           # sparse: many empty bins
    ("relu", np.maximum(RNG.standard_normal(20_000), 0)),
])
@pytest.mark.parametrize("levels", [128, 256, 37])
def test_kl_vectorized_equals_reference_loop(name, values, levels):
    top = np.percentile(np.abs(values), 99.5)  # leaves outliers beyond the last bin
    counts = _hist(values, 384, top)
    counts[-1] += 0
    start = max(levels, 40)
    cands, kl = kl_divergences(counts, levels, start=start)
    ref = reference_kl(counts, levels, start)
    assert list(cands) == list(range(start, 385))
    np.testing.assert_allclose(kl, ref, rtol=1e-9, atol=1e-12)
    assert int(np.argmin(kl)) == int(np.argmin(ref))


def test_kl_empty_last_group_is_smoothed_not_infinite():
    counts = np.zeros(300)
    counts[:100] = 5
    counts[299] = 40  # all mass past candidate 200 is clipped into an empty last group
    _, kl = kl_divergences(counts, 128, start=128)
    assert np.all(np.isfinite(kl))


def test_kl_threshold_normal_is_near_three_sigma_and_below_max():
    values = RNG.standard_normal(400_000)
    hist = AbsHistogram(_hist(values, 2048, 8.0), 8.0 / 2048)
    t = kl_threshold(hist, 128)
    assert 2.0 < t < 5.0


def test_kl_sparse_histogram_keeps_the_range():
    values = RNG.standard_normal(MIN_KL_VALUES - 1)
    hist = AbsHistogram(_hist(values, 2048, 4.0), 4.0 / 2048)
    assert kl_threshold(hist, 128) == hist.range


def test_kl_zero_spike_does_not_clip_relu_tail():
    x = np.maximum(RNG.standard_normal(300_000), 0)  # half exact zeros
    hist = AbsHistogram(_hist(x, 2048, 8.0), 8.0 / 2048)
    assert kl_threshold(hist, 256) > 3.0


def test_kl_never_below_the_999_percentile():
    # one point mass per "channel": KL alone would clip a lot to avoid covering them
    x = np.concatenate([RNG.standard_normal(200_000), np.full(20_000, 3.2), np.full(20_000, -2.1)])
    hist = AbsHistogram(_hist(x, 2048, 8.0), 8.0 / 2048)
    t = solve_threshold("kl", hist, float(np.abs(x).max()), levels=128)
    assert t >= percentile_threshold(hist, 99.9) - 1e-12


def test_percentile_matches_numpy_within_one_bin():
    x = np.abs(RNG.standard_normal(100_000))
    width = 8.0 / 2048
    hist = AbsHistogram(_hist(x, 2048, 8.0), width)
    for p in (50.0, 99.0, 99.99):
        assert abs(percentile_threshold(hist, p) - np.percentile(x, p)) <= width


def test_mse_errors_match_brute_force():
    counts = RNG.integers(0, 50, size=256).astype(float)
    width = 0.1
    t, err = mse_errors(counts, width, levels=16, start=16)
    centres = (np.arange(256) + 0.5) * width
    for k in (0, 50, 200, len(t) - 1):
        thr = t[k]
        step = thr / 15
        clip = np.sum(counts * np.where(centres > thr, (centres - thr) ** 2, 0.0))
        inside = np.sum(counts[centres <= thr]) * step ** 2 / 12
        assert err[k] == pytest.approx(clip + inside, rel=1e-9)


def test_solvers_never_exceed_the_observed_extreme():
    x = np.abs(RNG.standard_normal(50_000))
    hist = AbsHistogram(_hist(x, 2048, 8.0), 8.0 / 2048)
    for method in ("kl", "percentile", "mse", "minmax"):
        assert solve_threshold(method, hist, 1.5, levels=128) <= 1.5


def test_signed_histogram_sides():
    counts = np.arange(8)
    h = SignedHistogram(counts, 0.5)
    assert list(h.positive().counts) == [4, 5, 6, 7]
    assert list(h.negative().counts) == [3, 2, 1, 0]
    assert list(h.magnitude().counts) == [7, 7, 7, 7]


def test_asymmetric_range_is_solved_per_side():
    # HardSwish-like: a small negative lobe piled at -0.375, a long positive tail
    pos = np.abs(RNG.standard_normal(200_000)) * 2
    neg = -np.minimum(np.abs(RNG.normal(0.37, 0.01, 50_000)), 0.375)
    x = np.concatenate([pos, neg])
    width = 2.0 ** -8
    counts, _ = np.histogram(x, bins=4096, range=(-2048 * width, 2048 * width))
    lo, hi = solve_range("kl", SignedHistogram(counts, width), float(x.min()), float(x.max()),
                         symmetric=False)
    assert lo == pytest.approx(x.min())       # the small side keeps its extreme
    assert 3.0 < hi <= x.max()
    slo, shi = solve_range("kl", SignedHistogram(counts, width), float(x.min()), float(x.max()),
                           symmetric=True)
    assert slo == -shi


def test_side_levels():
    assert side_levels(6.0, 0.0, 6.0) == 256
    assert side_levels(1.0, -1.0, 1.0) == 128
    assert side_levels(0.375, -0.375, 6.0) == 15


def direct_kl(counts: np.ndarray, levels: int, i: int) -> float:
    """KL(P || Q) for the threshold at bin ``i`` (a multiple of ``levels``), from the definition,
    written independently of the module (no loops over groups, no KL_EPS: every bin is non-empty):
    P = the first i bins with the mass beyond added to bin i-1; Q = the first i bins (outliers
    excluded) summed per level, each level's sum spread evenly over its i/levels bins."""
    h = np.asarray(counts, np.float64)
    p = h[:i].copy()
    p[-1] += h[i:].sum()
    width = i // levels
    q = np.repeat(h[:i].reshape(levels, width).sum(axis=1) / width, width)
    p, q = p / p.sum(), q / q.sum()
    return float(np.sum(p * np.log(p / q)))


@pytest.mark.parametrize("seed", range(5))
def test_kl_matches_the_definition_on_small_histograms(seed):
    rng = np.random.default_rng(seed)
    levels, n = 4, 48
    counts = rng.integers(1, 30, n).astype(np.float64)  # every bin non-empty
    counts[-5:] += rng.integers(50, 200, 5)             # a heavy tail, clipped by small thresholds
    cands, kl = kl_divergences(counts, levels, start=levels)
    at = {int(c): float(k) for c, k in zip(cands, kl)}
    multiples = list(range(levels, n + 1, levels))
    want = [direct_kl(counts, levels, i) for i in multiples]
    np.testing.assert_allclose([at[i] for i in multiples], want, rtol=1e-9, atol=1e-12)
    assert min(want) < want[0]  # the search has something to find: the curve is not monotone at 4 bins
