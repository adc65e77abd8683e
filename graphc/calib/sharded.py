"""Calibration statistics over many samples on the executor in force (:mod:`graphc.executor`:
local processes by default, or Ray).

The samples are cut into contiguous shards; each executor task collects the min, max, count and
signed histogram of every tensor on its shard (:func:`graphc.calib.collect.collect_collectors`),
and the shards are merged in shard order (:meth:`graphc.calib.collect.RangeCollector.merge`).
Every one of these statistics merges exactly - min and max are order-free, counts are integers,
and histogram bin widths are powers of two, so a narrower histogram is widened by summing runs of
bins without re-binning error - hence the result is bit-identical to one process over all the
samples, whatever the executor and the number of shards. The model and the feeds go to the
executor once (the job's shared value: one pickle file for local workers, one object-store put
for Ray); a task's item is only its range of sample indices.

Not covered: the float64 second moments (:mod:`graphc.calib.moments`) - their sums depend on the
order of additions, so merged shards would differ from one process in the last bits.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from graphc.calib.collect import DEFAULT_MEMORY_LIMIT, RangeCollector, TensorStats, collect_collectors
from graphc.calib.ranges import NUM_BINS
from graphc.errors import DataError
from graphc.executor import current
from graphc.ir import load, model_bytes


@dataclass(frozen=True)
class ShardJob:
    """What every shard's task shares: the model's bytes, all the feeds, what to collect."""

    model_bytes: bytes
    feeds: tuple[dict[str, np.ndarray], ...]
    tensors: tuple[str, ...]
    histograms: bool = True
    bins: int = NUM_BINS
    memory_limit: int = DEFAULT_MEMORY_LIMIT


def shard_bounds(samples: int, shards: int) -> list[tuple[int, int]]:
    """``[start, stop)`` of ``shards`` contiguous runs of ``samples`` (sizes differ by at most 1;
    no empty shard)."""
    shards = max(1, min(int(shards), samples))
    edges = [samples * k // shards for k in range(shards + 1)]
    return list(zip(edges[:-1], edges[1:]))


def collect_shard(job: ShardJob, bounds: tuple[int, int]) -> dict[str, tuple]:
    """One executor task: the collectors' states of the samples ``bounds`` (top level, so spawned
    and Ray workers can import it)."""
    start, stop = bounds
    collectors = collect_collectors(load(job.model_bytes), list(job.feeds[start:stop]), job.tensors,
                                    histograms=job.histograms, bins=job.bins, memory_limit=job.memory_limit,
                                    progress=False)
    return {name: c.state() for name, c in collectors.items()}


def collect_stats_sharded(model, feeds: Sequence[dict[str, np.ndarray]], tensors: Sequence[str], *, shards: int,
                          executor: Any = None, histograms: bool = True, bins: int = NUM_BINS,
                          memory_limit: int = DEFAULT_MEMORY_LIMIT) -> dict[str, TensorStats]:
    """:func:`graphc.calib.collect.collect_stats` of ``feeds`` in ``shards`` executor tasks, merged
    in shard order: the same statistics, bit for bit. ``executor``: None for the one in force."""
    feeds = tuple(feeds)
    if not feeds:
        raise DataError("calibration data is empty")
    job = ShardJob(model_bytes(model), feeds, tuple(dict.fromkeys(tensors)), histograms, bins, memory_limit)
    states = (executor or current()).map(collect_shard, job, shard_bounds(len(feeds), shards),
                                         desc="calibrating", unit="shard")
    merged = {name: RangeCollector(bins, histograms) for name in job.tensors}
    for shard in states:
        for name, state in shard.items():
            merged[name].merge(RangeCollector.from_state(state, bins, histograms))
    return {name: TensorStats(name, c.min, c.max, c.count, c.signed_histogram()) for name, c in merged.items()}
