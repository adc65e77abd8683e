"""Latency measurement in onnxruntime: medians of many runs, and A/B comparisons as ratios.

    from graphc.bench import compare_latency
    result = compare_latency("model.onnx", "model.opt.onnx", feeds, threads=2, rounds=30)
    result.ratio        # median of per-round A_i / B_i: > 1 means B is faster

Method. Each model gets one session (CPU, ``threads`` intra-op threads, graph optimizations on,
see :func:`graphc.runtime.create_session`) fed the same inputs. After ``warmup`` untimed runs of
each, :func:`compare_latency` times A and B alternately in one process - A, B, A, B, ... - so that
slow drifts of the machine (frequency scaling, other processes) hit both equally, and reports
medians and the 10th / 90th percentiles, which a few outliers do not move; ``ratio_spread()`` gives
percentiles of the per-round ratios. :func:`compare_all` does the same for several models in one
alternation, so every pair's ratio comes from rounds timed side by side. Compare ratios, not
absolute times: absolute times depend on the machine and on what else it is doing.

Memory: :func:`measure_process` runs a command in a fresh process and returns its peak RSS over
its whole life (:mod:`graphc.bench.memory`).
"""
from graphc.bench.latency import (
    LatencyComparison,
    LatencyStats,
    alternate,
    alternate_all,
    compare_all,
    compare_latency,
    measure_latency,
    bench_feeds,
    pair,
)
from graphc.bench.memory import ProcessPeak, measure_process, python_command

__all__ = ["LatencyComparison", "LatencyStats", "alternate", "alternate_all", "compare_all", "compare_latency",
           "measure_latency", "pair",
           "bench_feeds", "ProcessPeak", "measure_process", "python_command"]
