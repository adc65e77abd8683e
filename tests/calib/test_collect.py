"""calib.collect: the streaming histogram equals a one-shot histogram of all the data, memory is
flat in the number of samples, tensors are chunked when asked, shapes may vary."""
import numpy as np
import pytest
from onnx import TensorProto, helper

import graphc
from graphc.calib import calibrate
from graphc.calib.collect import RangeCollector, collect_stats
from graphc.errors import DataError
from support import make_model

RNG = np.random.default_rng(0)


def _one_shot(chunks, collector):
    width = collector.width
    allx = np.concatenate([np.ravel(c) for c in chunks])
    counts, _ = np.histogram(allx, bins=2 * collector.bins,
                             range=(-collector.bins * width, collector.bins * width))
    return counts


@pytest.mark.parametrize("seed", range(5))
def test_streaming_histogram_equals_one_shot(seed):
    rng = np.random.default_rng(seed)
    chunks = []
    collector = RangeCollector()
    for i in range(12):
        scale = float(rng.choice([0.01, 0.5, 3.0, 40.0, 1e4])) * (i + 1)
        x = (rng.standard_normal(rng.integers(1, 5000)) * scale).astype(np.float32)
        if i % 4 == 0:
            x[: len(x) // 3] = 0.0  # exact zeros, and values on bin edges below
        if i % 5 == 1:
            x[:3] = np.float32(collector.width * 7) if collector.width else 1.0
        chunks.append(x)
        collector.update(x)
    assert collector.counts.sum() == sum(c.size for c in chunks)
    np.testing.assert_array_equal(collector.counts, _one_shot(chunks, collector))
    assert collector.min == min(c.min() for c in chunks)
    assert collector.max == max(c.max() for c in chunks)
    assert collector.width > 0 and np.log2(collector.width).is_integer()
    assert collector.bins * collector.width > max(abs(collector.min), collector.max)


def test_histogram_of_zeros_then_values():
    c = RangeCollector(bins=16)
    c.update(np.zeros(10, np.float32))
    c.update(np.array([-3.0, 0.5, 2.0], np.float32))
    assert c.counts.sum() == 13
    np.testing.assert_array_equal(c.counts, _one_shot([np.zeros(10), np.array([-3.0, 0.5, 2.0])], c))


def test_value_equal_to_range_is_counted():
    c = RangeCollector(bins=8)
    c.update(np.array([1.0], np.float32))       # width 0.25, range [-2, 2)
    c.update(np.array([2.0, -2.0], np.float32))  # reaches the range: grows
    assert c.counts.sum() == 3
    assert c.bins * c.width > 2.0


def test_non_finite_values_are_ignored():
    c = RangeCollector(bins=16)
    c.update(np.array([1.0, np.inf, -np.nan, -2.0], np.float32))
    assert c.count == 2 and c.counts.sum() == 2 and c.max == 1.0 and c.min == -2.0


def test_memory_is_flat_in_samples():
    c = RangeCollector()
    c.update(RNG.standard_normal(1000).astype(np.float32))
    size = c.nbytes()
    for _ in range(50):
        c.update(RNG.standard_normal(1000).astype(np.float32))
    assert c.nbytes() == size


def _model():
    """x (1, 2, H, W) dynamic -> Relu -> r -> Mul 2 -> y; Neg branch -> n."""
    nodes = [helper.make_node("Relu", ["x"], ["r"]),
             helper.make_node("Mul", ["r", "two"], ["y"]),
             helper.make_node("Neg", ["x"], ["n"])]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, "h", "w"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, "h", "w"]),
         helper.make_tensor_value_info("n", TensorProto.FLOAT, [1, 2, "h", "w"])],
        [helper.make_tensor("two", TensorProto.FLOAT, [], [2.0])])
    return graphc.load(make_model(graph))


def _feeds(shapes):
    return [{"x": RNG.standard_normal(s).astype(np.float32)} for s in shapes]


def test_collect_stats_with_varying_shapes():
    feeds = _feeds([(1, 2, 5, 7), (1, 2, 9, 3), (1, 2, 4, 40)])
    stats = collect_stats(_model(), feeds, ["x", "r", "y", "n"], progress=False)
    allx = np.concatenate([f["x"].ravel() for f in feeds])
    assert stats["x"].min == allx.min() and stats["x"].max == allx.max()
    assert stats["r"].min == 0.0 and stats["y"].max == pytest.approx(2 * allx.max())
    assert stats["n"].min == pytest.approx(-allx.max())
    assert stats["y"].count == allx.size
    assert stats["y"].histogram.counts.sum() == allx.size


def test_chunked_collection_equals_single_session():
    feeds = _feeds([(1, 2, 6, 6)] * 4)
    one = collect_stats(_model(), feeds, ["r", "y", "n"], progress=False)
    chunked = collect_stats(_model(), feeds, ["r", "y", "n"], memory_limit=1, progress=False)
    for name in one:
        np.testing.assert_array_equal(one[name].histogram.counts, chunked[name].histogram.counts)
        assert one[name].min == chunked[name].min and one[name].max == chunked[name].max


def test_max_samples_and_empty_data():
    feeds = _feeds([(1, 2, 3, 3)] * 5)
    stats = collect_stats(_model(), feeds, ["y"], max_samples=2, progress=False)
    assert stats["y"].count == 2 * 18
    with pytest.raises(DataError, match="empty"):
        collect_stats(_model(), [], ["y"], progress=False)


def test_calibrate_returns_ranges_inside_observed():
    feeds = _feeds([(1, 2, 8, 8)] * 6)
    for method in ("kl", "minmax", "percentile", "mse"):
        ranges = calibrate(_model(), feeds, ["r", "n"], method, progress=False)
        for name, rng in ranges.items():
            lo, hi = rng
            assert rng.observed_min <= lo <= 0.0 <= hi <= rng.observed_max or (lo, hi) == (0.0, 0.0)
        if method == "minmax":
            assert ranges["r"].hi == ranges["r"].observed_max
    sym = calibrate(_model(), feeds, ["n"], "minmax", symmetric=True, progress=False)["n"]
    assert sym.lo == -sym.hi


def test_calibrate_rejects_unknown_method():
    with pytest.raises(ValueError, match="unknown calibration method"):
        calibrate(_model(), _feeds([(1, 2, 2, 2)]), ["r"], "entropy")
