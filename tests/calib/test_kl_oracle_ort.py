"""graphc's KL (entropy) threshold search against an independent implementation: onnxruntime's own
entropy calibrator (``onnxruntime.quantization.calibrate.HistogramCollector.get_entropy_threshold``),
on the same signed histogram onnxruntime builds (``collect_value``: 4096 bins over [-max|x|, max|x|),
i.e. graphc's 2048 bins per side), symmetric int8 (onnxruntime: 256 quantized bins over the signed
window; graphc: 128 levels on |x|).

The two are not the same algorithm, so thresholds agree only within a tolerance:

- window: onnxruntime's candidate windows are ``[-i w, (i + 1) w)`` on the signed histogram (one
  bin more on the positive side), graphc's are ``[0, i w)`` on |x| (both signs added);
- groups: onnxruntime merges ``floor(len / 256)`` bins per group and puts the leftover bins in the
  last group; graphc's groups are ``ceil``-bounded and differ by at most one bin;
- Q: onnxruntime stores the expanded Q in an int64 array (the division truncates: tail bins with a
  few counts spread over several bins become 0) and smooths both P and Q with eps 1e-4 on their
  zero bins; graphc keeps Q in float64 and uses eps only on an empty Q bin where P > 0;
- guards: graphc replaces the count of bin 0 by bin 1's (the spike of exact zeros of a Relu);
  onnxruntime has no such guard.

Measured (these draws, seed 0, 200k values; thresholds graphc / onnxruntime; int8 SQNR of the
data itself, graphc / onnxruntime): normal 4.02 / 3.89 (1.03x; 40.71 / 40.82 dB); |normal| + 1e-3
(no zeros) 3.75 / 4.19 (0.89x; 40.74 / 40.31 dB); relu(normal + 0.3) 4.43 / 3.23 (1.37x;
40.93 / 34.02 dB); laplace with 0.1 % outliers at 15-30: 24.97 / 17.92 (1.39x; 26.02 / 17.68 dB).
On smooth distributions without point masses they agree within 12 % and within 0.25 dB. Where
they disagree, onnxruntime is the one that loses: the zero spike of a Relu (no guard) and its
truncated tail counts make it clip far more, 7-8 dB worse on the data. In a separate run (other
draws of the same distributions) onnxruntime's threshold also moved with the bin count (normal:
4.73 at 1024 signed bins, 3.85 at 4096; the outlier case 29.95 vs 19.5), graphc's by under 8 %
(4.26 / 4.07; 23.3 / 24.9).
"""
from __future__ import annotations

import numpy as np
import pytest

from graphc.calib.ranges import SignedHistogram, kl_threshold

calibrate = pytest.importorskip("onnxruntime.quantization.calibrate")

NUM_BINS = 4096  # signed: 2048 per side, graphc's NUM_BINS
#: relative threshold agreement on smooth distributions (measured 3.5 % and 11 %; see the docstring).
AGREE = 0.12
#: int8 SQNR graphc may lose to onnxruntime there (measured 0.11 dB): KL does not minimise the MSE.
SQNR_SLACK_DB = 0.25


def _distributions() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    laplace = rng.laplace(0, 1, 200_000).astype(np.float32)
    laplace[:200] = rng.uniform(15, 30, 200) * rng.choice([-1, 1], 200)
    return {
        "normal": rng.standard_normal(200_000).astype(np.float32),
        "laplace+outliers": laplace,
        "relu": np.maximum(rng.standard_normal(200_000) + 0.3, 0).astype(np.float32),
        "abs-normal": (np.abs(rng.standard_normal(200_000)) + 1e-3).astype(np.float32),
    }


DISTRIBUTIONS = _distributions()


def _thresholds(x: np.ndarray) -> tuple[float, float]:
    """(graphc's T on |x|, onnxruntime's max(|lo|, hi)), both from onnxruntime's histogram."""
    collector = calibrate.HistogramCollector("entropy", True, NUM_BINS, 256, 99.99, "same")
    collector.collect_value({"t": x})
    histogram = collector.histogram_dict["t"]
    lo, hi = collector.get_entropy_threshold(histogram, 256)
    counts, edges = histogram[0], histogram[1]
    signed = SignedHistogram(counts.astype(np.int64), float(edges[1] - edges[0]))
    return kl_threshold(signed.magnitude(), 128), max(-float(lo), float(hi))


def _int8_sqnr(x: np.ndarray, threshold: float) -> float:
    """SQNR (dB) of symmetric int8 fake quantization of ``x`` clipped to [-T, T]."""
    x = x.astype(np.float64)
    step = threshold / 127
    q = np.clip(np.round(x / step), -127, 127) * step
    return float(10 * np.log10(np.sum(x ** 2) / np.sum((x - q) ** 2)))


@pytest.mark.parametrize("name", ["normal", "abs-normal"])
def test_kl_threshold_agrees_with_onnxruntime_on_smooth_distributions(name):
    x = DISTRIBUTIONS[name]
    ours, ort = _thresholds(x)
    assert abs(ours / ort - 1) <= AGREE, (name, ours, ort)
    assert 0.5 * np.abs(x).max() < ours <= np.abs(x).max()
    assert _int8_sqnr(x, ours) >= _int8_sqnr(x, ort) - SQNR_SLACK_DB, (name, ours, ort)


@pytest.mark.parametrize("name", ["relu", "laplace+outliers"])
def test_where_kl_thresholds_disagree_graphc_loses_less(name):
    """A Relu's zero spike and a few far outliers: onnxruntime clips much more (no zero-bin guard,
    truncated tail counts in Q); by the data's own int8 SQNR graphc's threshold is the better one."""
    x = DISTRIBUTIONS[name]
    ours, ort = _thresholds(x)
    assert ours / ort > 1 + AGREE, (name, ours, ort)  # the documented disagreement is still there
    assert _int8_sqnr(x, ours) >= _int8_sqnr(x, ort) + 3.0, (name, ours, ort)
