"""calib.shards: calibration statistics computed shard by shard (on spawned workers) and merged are
the statistics of one pass in this process, bit for bit - histogram counts and widths, min, max,
counts, the ranges every method solves from them, and channel maxima. Shards have a fixed size
whatever the executor; small data, one worker or a 2-core machine stay in process."""
import dataclasses

import numpy as np
import pytest

import graphc.calib.shards as shards_module
from graphc.calib.calibrate import solve_range
from graphc.calib.channel_max import channel_absmax
from graphc.calib.collect import RangeCollector, collect_stats, merge_collectors
from graphc.calib.moments import Layout, channel_moments, second_moments
from graphc.calib.shards import SHARD_SIZE, shards_of
from graphc.errors import OutputError
from graphc.executor import LocalExecutor, using
from test_collect import _model

METHODS = ("minmax", "kl", "percentile", "mse")
TENSORS = ["x", "r", "y", "n"]


def _feeds(count, seed=0):
    """Feeds whose scale jumps between shards: each shard starts at its own histogram width."""
    rng = np.random.default_rng(seed)
    feeds = []
    for i in range(count):
        scale = [0.01, 3.0, 0.2, 900.0][(i // SHARD_SIZE) % 4] * (1 + i % 7)
        x = (rng.standard_normal((1, 2, 6, 6)) * scale).astype(np.float32)
        if i % 11 == 0:
            x[0, 0] = 0.0
        feeds.append({"x": x})
    return feeds


def _chunks(seed):
    rng = np.random.default_rng(seed)
    chunks = []
    for i in range(24):
        scale = float(rng.choice([0.01, 0.5, 3.0, 40.0, 1e4])) * (i + 1)
        x = (rng.standard_normal(rng.integers(1, 3000)) * scale).astype(np.float32)
        if i % 6 == 0:
            x[:] = 0.0  # a shard that starts with only zeros (width 0)
        chunks.append(x)
    return chunks


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("histogram", [True, False])
def test_merged_collectors_equal_one_collector(seed, histogram):
    chunks = _chunks(seed)
    whole = RangeCollector(bins=256, histogram=histogram)
    for x in chunks:
        whole.update(x)
    parts = []
    for start in range(0, len(chunks), 5):
        part = RangeCollector(bins=256, histogram=histogram)
        for x in chunks[start:start + 5]:
            part.update(x)
        parts.append({"t": part})
    merged = merge_collectors(parts)["t"]
    assert (merged.min, merged.max, merged.count) == (whole.min, whole.max, whole.count)
    assert merged.width == whole.width
    np.testing.assert_array_equal(merged.counts, whole.counts)


def test_merge_with_an_empty_or_all_zero_collector():
    zeros, values, empty = RangeCollector(bins=16), RangeCollector(bins=16), RangeCollector(bins=16)
    zeros.update(np.zeros(7, np.float32))
    values.update(np.array([-3.0, 0.5, 2.0], np.float32))
    whole = RangeCollector(bins=16)
    whole.update(np.zeros(7, np.float32))
    whole.update(np.array([-3.0, 0.5, 2.0], np.float32))
    for order in ([zeros, values, empty], [empty, values, zeros]):
        merged = merge_collectors([{"t": _copy(c)} for c in order])["t"]
        assert merged.width == whole.width and merged.count == 10
        np.testing.assert_array_equal(merged.counts, whole.counts)


def _copy(c):
    twin = RangeCollector(c.bins, c.histogram)
    twin.__dict__.update({k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in c.__dict__.items()})
    return twin


def test_width_is_the_smallest_power_of_two_above_the_range():
    for amax in (1.0, 2.0 ** 10, 3.0, 2.0 ** -30 * 1.5, np.nextafter(2.0, 0.0)):
        c = RangeCollector(bins=16)
        c.update(np.array([amax], np.float64))
        assert c.width * 16 > amax >= c.width * 8


def test_shards_have_a_fixed_size_whatever_the_workers(monkeypatch):
    monkeypatch.setattr(shards_module, "usable_cores", lambda: 8)
    feeds = _feeds(2 * SHARD_SIZE + 5)
    splits = []
    for executor in (LocalExecutor(2), LocalExecutor(4)):
        with using(executor):
            splits.append([len(s) for s in shards_of(feeds)])
    assert splits[0] == splits[1] == [SHARD_SIZE, SHARD_SIZE, 5]
    with using(LocalExecutor(2)):
        assert [len(s) for s in shards_of(feeds, max_samples=2 * SHARD_SIZE)] == [SHARD_SIZE] * 2


def test_small_data_one_worker_unknown_length_and_two_cores_stay_in_process(monkeypatch):
    monkeypatch.setattr(shards_module, "usable_cores", lambda: 8)
    feeds = _feeds(2 * SHARD_SIZE)
    with using(LocalExecutor(2)):
        assert shards_of(feeds[:-1]) is None  # fewer than two shards
        assert shards_of(iter(feeds)) is None  # length unknown
        assert shards_of(feeds, max_samples=SHARD_SIZE) is None
        assert shards_of(feeds) is not None
    with using(LocalExecutor(1)):
        assert shards_of(feeds) is None
    monkeypatch.setattr(shards_module, "usable_cores", lambda: 2)
    with using(LocalExecutor(2)):
        assert shards_of(feeds) is None


def _assert_same_stats(a, b):
    assert list(a) == list(b)
    for name in a:
        assert (a[name].min, a[name].max, a[name].count) == (b[name].min, b[name].max, b[name].count)
        if a[name].histogram is None:
            assert b[name].histogram is None
            continue
        assert a[name].histogram.width == b[name].histogram.width
        np.testing.assert_array_equal(a[name].histogram.counts, b[name].histogram.counts)


def test_sharded_ranges_equal_one_process_bit_for_bit(shard_calls):
    feeds = _feeds(3 * SHARD_SIZE + 7)
    with using(LocalExecutor(1)):
        one = collect_stats(_model(), feeds, TENSORS, progress=False)
    with using(LocalExecutor(2)):
        sharded = collect_stats(_model(), feeds, TENSORS, progress=False)
    assert shard_calls == [3]  # the first shard here, three on the spawned workers
    _assert_same_stats(sharded, one)
    widths = {s.histogram.width for s in one.values()}
    assert len(widths) > 1  # the tensors' ranges (and shards' widths) differ
    for method in METHODS:
        for name in TENSORS:
            for symmetric in (False, True):
                assert solve_range(sharded[name], method, symmetric=symmetric) == \
                    solve_range(one[name], method, symmetric=symmetric)


def test_shards_run_here_when_the_executor_does_not_pay(shard_calls, monkeypatch):
    monkeypatch.setattr(shards_module, "MIN_PARALLEL_SECONDS", 1e9)
    feeds = _feeds(2 * SHARD_SIZE + 3)
    with using(LocalExecutor(2)):
        here = collect_stats(_model(), feeds, TENSORS, histograms=False, progress=False)
    with using(LocalExecutor(1)):
        one = collect_stats(_model(), feeds, TENSORS, histograms=False, progress=False)
    assert shard_calls == []
    _assert_same_stats(here, one)


def test_sharded_channel_maxima_equal_one_process(shard_calls):
    feeds = _feeds(2 * SHARD_SIZE + 9, seed=3)
    tensors = {"x": 1, "y": 1, "n": -1}
    with using(LocalExecutor(1)):
        one = channel_absmax(_model(), feeds, tensors)
    with using(LocalExecutor(2)):
        sharded = channel_absmax(_model(), feeds, tensors)
    assert shard_calls == [2]
    assert list(sharded) == list(one)
    for name in one:
        assert sharded[name].dtype == one[name].dtype
        np.testing.assert_array_equal(sharded[name], one[name])


def _moment_model():
    """x (1, 3, 6, 6) -> Relu -> r (the same graph shape as test_collect's, three channels)."""
    from onnx import TensorProto, helper

    import graphc
    from support import make_model

    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["r"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 6, 6])],
        [helper.make_tensor_value_info("r", TensorProto.FLOAT, [1, 3, 6, 6])])
    return graphc.load(make_model(graph))


def _moment_feeds(count):
    rng = np.random.default_rng(5)
    return [{"x": (rng.standard_normal((1, 3, 6, 6)) * (1 + i % 5) + 0.3).astype(np.float32)}
            for i in range(count)]


REQUESTS = {"conv": ("x", Layout.conv((3, 3), pads=(1, 1, 1, 1))), "rows": ("r", Layout(affine=True)),
            "channels": ("r", Layout.channels())}


def test_sharded_moments_are_the_same_bytes_on_every_executor(shard_calls, monkeypatch):
    feeds = _moment_feeds(2 * SHARD_SIZE + 11)
    results = {}
    for workers in (1, 2):
        with using(LocalExecutor(workers)):
            counts = {}
            results[workers] = (second_moments(_moment_model(), feeds, REQUESTS, counts_out=counts), counts,
                                channel_moments(_moment_model(), feeds, {"x": 1, "r": 1}))
    assert shard_calls == [2, 2]  # both kinds of sums went to the workers with 2 of them
    (one, one_counts, one_ch), (two, two_counts, two_ch) = results[1], results[2]
    assert one_counts == two_counts and one_counts["conv"] == len(feeds) * 36
    for key in REQUESTS:
        assert one[key].tobytes() == two[key].tobytes()
    for name in ("x", "r"):
        for field in ("mean_abs", "mean", "mean_square"):
            assert getattr(one_ch[name], field).tobytes() == getattr(two_ch[name], field).tobytes()
        assert one_ch[name].count == two_ch[name].count


def test_moments_by_shards_are_within_the_float64_bound_of_one_running_sum():
    feeds = _moment_feeds(3 * SHARD_SIZE + 5)
    with using(LocalExecutor(1)):
        got = second_moments(_moment_model(), feeds, {"rows": ("x", Layout.channels())})["rows"]
        ch = channel_moments(_moment_model(), feeds, {"x": 1})["x"]
    running, magnitude, rows = None, None, 0
    for feed in feeds:  # the order of additions before sharding: one running sum
        block = np.moveaxis(feed["x"], 1, -1).reshape(-1, 3).astype(np.float64)
        term = block.T @ block
        running = term if running is None else running + term
        magnitude = np.abs(term) if magnitude is None else magnitude + np.abs(term)
        rows += block.shape[0]
    bound = len(feeds) * 2.0 ** -53 * magnitude / rows
    assert np.all(np.abs(got - running / rows) <= 2 * bound)
    np.testing.assert_allclose(got, running / rows, rtol=1e-12, atol=0)
    np.testing.assert_allclose(ch.mean_square, np.diag(got), rtol=1e-12, atol=0)


def _tagged_task(shared, shard):
    return (shared, tuple(shard))


def _tagged_job(shared, built):
    """A ShardedJob whose parts say where they ran; ``built`` counts the shared values built."""
    def make_shared():
        built.append(1)
        return shared()

    return shards_module.ShardedJob(desc="tagged", here=lambda feeds: ("here", tuple(feeds)),
                                    task=_tagged_task, shared=make_shared, merge=list)


SHARDS = [[1, 2], [3], [4, 5]]


def test_sharded_job_runs_the_first_shard_here_and_the_rest_on_the_executor_in_shard_order(shard_calls):
    built = []
    with using(LocalExecutor(1)):  # map in this process, in order
        parts = _tagged_job(lambda: "sent", built).run(SHARDS)
    assert parts == [("here", (1, 2)), ("sent", (3,)), ("sent", (4, 5))]
    assert shard_calls == [2] and built == [1]


def test_sharded_job_runs_the_rest_here_when_it_does_not_pay_or_cannot_be_sent(shard_calls, monkeypatch):
    def too_big():
        raise OutputError("model over 2 GiB")

    built = []
    with using(LocalExecutor(1)):
        unsendable = _tagged_job(too_big, built).run(SHARDS)
        monkeypatch.setattr(shards_module, "MIN_PARALLEL_SECONDS", 1e9)
        slow = _tagged_job(lambda: "sent", built).run(SHARDS)
    assert unsendable == slow == [("here", (1, 2)), ("here", (3, 4, 5))]
    assert shard_calls == [] and built == [1]  # not built when the executor does not pay
    resumed = dataclasses.replace(_tagged_job(lambda: "sent", []), resume=lambda before, feeds: [before, feeds])
    with using(LocalExecutor(1)):
        assert resumed.run(SHARDS) == [("here", (1, 2)), [3, 4, 5]]


@pytest.mark.parametrize("reason", ["slow", "unsendable"])
def test_channel_maxima_and_moments_run_here_give_the_executors_bytes(shard_calls, monkeypatch, reason):
    import graphc.calib.channel_max as channel_max_module
    import graphc.calib.moments as moments_module

    def statistics():
        maxima = channel_absmax(_model(), _feeds(2 * SHARD_SIZE + 9, seed=3), {"x": 1, "y": 1, "n": -1})
        moments = second_moments(_moment_model(), _moment_feeds(2 * SHARD_SIZE + 11), REQUESTS)
        channels = channel_moments(_moment_model(), _moment_feeds(2 * SHARD_SIZE + 11), {"x": 1, "r": 1})
        return ({k: v.tobytes() for k, v in maxima.items()}, {k: v.tobytes() for k, v in moments.items()},
                {k: (v.mean_abs.tobytes(), v.mean.tobytes(), v.mean_square.tobytes(), v.count)
                 for k, v in channels.items()})

    with using(LocalExecutor(1)):
        one = statistics()
    if reason == "slow":
        monkeypatch.setattr(shards_module, "MIN_PARALLEL_SECONDS", 1e9)
    else:
        def too_big(model):
            raise OutputError("model over 2 GiB")

        for module in (channel_max_module, moments_module):
            monkeypatch.setattr(module, "model_bytes", too_big)
    with using(LocalExecutor(2)):
        here = statistics()
    assert shard_calls == []
    assert here == one
