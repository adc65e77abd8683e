"""calib.sharded: calibration statistics collected in shards on an executor and merged are the
statistics of one process over all the samples, bit for bit (min, max, count, histogram counts and
width), for any number of shards, local threads/processes alike; RangeCollector.merge is exact."""
from __future__ import annotations

import numpy as np
import pytest

from graphc.calib import calibrate
from graphc.calib.collect import RangeCollector, collect_stats
from graphc.calib.sharded import collect_stats_sharded, shard_bounds
from graphc.executor import LocalExecutor
from nets import Net


def _model():
    n = Net(3)
    x = n.input("x", [1, 3, 6, 6])
    a = n.relu(n.conv(x, 3, 4, name="c1"))
    return n.model(n.conv(a, 4, 2, k=1, name="c2"))


def _feeds(count: int = 11) -> list[dict[str, np.ndarray]]:
    """Scales from 1e-3 to 1e3 (so the shards' histogram widths differ) and one all-zero feed."""
    rng = np.random.default_rng(7)
    feeds = [{"x": (rng.standard_normal((1, 3, 6, 6)) * 10.0 ** (k % 7 - 3)).astype(np.float32)}
             for k in range(count)]
    feeds[4]["x"][:] = 0.0
    return feeds


def _tensors(model) -> list[str]:
    return ["x"] + [node.outputs[0].name for node in model.graph.nodes]


def _same(a, b) -> None:
    assert a.keys() == b.keys()
    for name in a:
        x, y = a[name], b[name]
        assert (x.min, x.max, x.count) == (y.min, y.max, y.count), name
        assert (x.histogram is None) == (y.histogram is None)
        if x.histogram is not None:
            assert x.histogram.width == y.histogram.width, name
            assert np.array_equal(x.histogram.counts, y.histogram.counts), name


@pytest.mark.parametrize("shards", [1, 2, 3, 5, 11, 40])
def test_sharded_statistics_are_bit_identical_to_one_process(shards):
    model, feeds = _model(), _feeds()
    one = collect_stats(model, feeds, _tensors(model), progress=False)
    _same(collect_stats_sharded(model, feeds, _tensors(model), shards=shards, executor=LocalExecutor(1)), one)


def test_sharded_statistics_in_spawned_processes_and_threads():
    model, feeds = _model(), _feeds()
    one = collect_stats(model, feeds, _tensors(model), progress=False)
    _same(collect_stats_sharded(model, feeds, _tensors(model), shards=3, executor=LocalExecutor(2)), one)
    without = collect_stats(model, feeds, _tensors(model), histograms=False, progress=False)
    _same(collect_stats_sharded(model, feeds, _tensors(model), shards=4, histograms=False,
                                executor=LocalExecutor(1)), without)


@pytest.mark.parametrize("method", ["kl", "percentile", "minmax"])
def test_calibrate_with_shards_gives_the_same_ranges(method):
    model, feeds = _model(), _feeds()
    tensors = _tensors(model)
    assert calibrate(model, feeds, tensors, method, shards=4) == calibrate(model, feeds, tensors, method,
                                                                           progress=False)


def test_merge_is_exact_and_order_free():
    rng = np.random.default_rng(1)
    parts = [rng.standard_normal(500) * s for s in (0.01, 300.0, 2.0)] + [np.zeros(40), np.array([], np.float32)]
    whole = RangeCollector()
    for p in parts:
        whole.update(p)
    for order in ([0, 1, 2, 3, 4], [3, 4, 1, 0, 2], [2, 3, 0, 4, 1]):
        merged = RangeCollector()
        for i in order:
            single = RangeCollector()
            single.update(parts[i])
            merged.merge(single)
        assert (merged.min, merged.max, merged.count, merged.width) == (whole.min, whole.max, whole.count, whole.width)
        assert np.array_equal(merged.counts, whole.counts)
    with pytest.raises(ValueError, match="bins"):
        RangeCollector(8).merge(RangeCollector(16))


def test_shard_bounds_cover_every_sample_once():
    assert shard_bounds(10, 3) == [(0, 3), (3, 6), (6, 10)]
    assert shard_bounds(2, 5) == [(0, 1), (1, 2)]
    assert shard_bounds(7, 1) == [(0, 7)]
