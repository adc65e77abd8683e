"""graphc.bench: alternation order, statistics, and real (untimed-asserted) sessions.

No assertion here depends on how fast anything runs: the machine is shared.
"""
from __future__ import annotations

import itertools
import json

import numpy as np
import pytest

import graphc
from graphc.bench import (LatencyComparison, LatencyStats, alternate, alternate_all, bench_feeds, compare_all,
                          compare_latency, measure_latency, pair)
from graphc.errors import DataError
from tiny_nets import conv_net


def test_alternate_runs_a_and_b_in_turn_after_warmup():
    log: list[str] = []
    times_a, times_b = alternate(lambda: log.append("a"), lambda: log.append("b"), warmup=2, rounds=3)
    assert log == ["a", "b"] * 5
    assert len(times_a) == len(times_b) == 3


def test_alternate_times_with_the_given_clock_in_ms():
    ticks = itertools.count()
    clock = lambda: next(ticks) * 0.001  # noqa: E731 - every call advances 1 ms
    times_a, times_b = alternate(lambda: None, lambda: None, warmup=0, rounds=2, clock=clock)
    assert times_a == pytest.approx([1.0, 1.0]) and times_b == pytest.approx([1.0, 1.0])


def test_alternate_all_runs_every_model_in_turn():
    log: list[str] = []
    times = alternate_all({k: (lambda k=k: log.append(k)) for k in "abc"}, warmup=1, rounds=2)
    assert log == list("abc") * 3
    assert {k: len(v) for k, v in times.items()} == {"a": 2, "b": 2, "c": 2}


def test_ratio_spread_is_of_the_per_round_ratios():
    a = LatencyStats.from_times([2.0, 4.0, 6.0, 8.0, 10.0])
    b = LatencyStats.from_times([1.0, 1.0, 2.0, 2.0, 10.0])  # per round: 2, 4, 3, 4, 1
    low, high = LatencyComparison(a, b, 1, 0).ratio_spread(25, 75)
    assert (low, high) == pytest.approx((2.0, 4.0))
    assert LatencyComparison(a, b, 1, 0).ratio == pytest.approx(3.0)


def test_ratio_is_the_paired_median_inside_its_spread():
    # medians: A 10, B 1 -> 10x; but rounds were 1, 1, 10, 1, 1: B was faster in one round only
    a = LatencyStats.from_times([1.0, 1.0, 10.0, 10.0, 10.0])
    b = LatencyStats.from_times([1.0, 1.0, 1.0, 10.0, 10.0])
    result = LatencyComparison(a, b, 1, 0)
    assert result.ratio == pytest.approx(1.0)
    low, high = result.ratio_spread(25, 75)
    assert low <= result.ratio <= high


def test_compare_all_pairs_models_timed_in_one_alternation():
    proto = conv_net()
    feeds = bench_feeds(proto.SerializeToString())
    cleaned = graphc.load(proto)
    graphc.PassManager("cleanup").run(cleaned)
    stats = compare_all({"orig": proto.SerializeToString(), "clean": cleaned}, feeds, threads=1, warmup=1,
                        rounds=4)
    assert stats["orig"].runs == stats["clean"].runs == 4
    both = pair(stats, "orig", "clean")
    per_round = [a / b for a, b in zip(stats["orig"].times_ms, stats["clean"].times_ms)]
    assert both.ratio == pytest.approx(float(np.median(per_round)))


def test_latency_stats_percentiles():
    stats = LatencyStats.from_times([float(t) for t in range(1, 12)])
    assert stats.median_ms == 6.0 and stats.p10_ms == 2.0 and stats.p90_ms == 10.0
    assert stats.runs == 11 and stats.mean_ms == 6.0


def test_compare_latency_on_real_sessions():
    proto = conv_net()
    feeds = bench_feeds(proto.SerializeToString())
    optimized = graphc.load(proto)
    graphc.PassManager("cleanup").run(optimized)
    result = compare_latency(proto.SerializeToString(), optimized, feeds, threads=1, warmup=1, rounds=5)
    assert result.ratio > 0 and result.median_a_ms > 0 and result.median_b_ms > 0
    assert result.runs == 5 and len(result.a.times_ms) == len(result.b.times_ms) == 5
    assert result.a.p10_ms <= result.a.median_ms <= result.a.p90_ms
    data = json.loads(json.dumps(result.to_dict(), allow_nan=False))
    assert data["ratio"] == pytest.approx(result.ratio)
    low, high = result.ratio_spread(0, 100)
    assert low <= data["ratio"] <= high


def test_measure_latency_counts_repeats(tmp_path):
    path = tmp_path / "net.onnx"
    path.write_bytes(conv_net().SerializeToString())
    stats = measure_latency(path, bench_feeds(path), threads=1, warmup=0, repeats=4)
    assert stats.runs == 4 and stats.median_ms > 0


def test_b_without_an_unused_input_gets_the_inputs_it_declares():
    proto = conv_net(unused_input=True)
    cleaned = graphc.load(proto)
    graphc.PassManager("cleanup").run(cleaned)
    feeds = bench_feeds(proto.SerializeToString())
    assert set(feeds) == {"x", "unused"}
    assert compare_latency(proto.SerializeToString(), cleaned, feeds, threads=1, warmup=0, rounds=2).ratio > 0


def test_bench_feeds_for_dynamic_inputs(tmp_path):
    dynamic = conv_net(batch="N", spatial="S").SerializeToString()
    assert bench_feeds(dynamic)["x"].shape == (1, 3, 224, 224)  # nominal: batch 1, side 224
    feeds = bench_feeds(dynamic, input_shapes={"x": (1, 3, 6, 6)})
    assert feeds["x"].shape == (1, 3, 6, 6) and feeds["x"].dtype == np.float32
    npz = tmp_path / "d.npz"
    np.savez(npz, x=np.ones((2, 1, 3, 4, 4), np.float32))
    assert bench_feeds(dynamic, npz)["x"].shape == (1, 3, 4, 4)


def test_bad_counts_are_rejected():
    proto = conv_net().SerializeToString()
    with pytest.raises(DataError, match="at least one timed run"):
        measure_latency(proto, bench_feeds(proto), repeats=0)
    with pytest.raises(DataError, match="warmup"):
        compare_latency(proto, proto, bench_feeds(proto), warmup=-1)
