"""Sharded calibration: statistics that merge (ranges, histograms, channel maxima) computed shard by
shard on the executor in force (:mod:`graphc.executor`), then merged in shard order.

The samples are split into shards of :data:`SHARD_SIZE` consecutive feeds - a fixed size,
independent of the executor and of its worker count, so every executor computes the same shards
and merges them in the same order: the same bytes whichever ran them. Each shard is one executor
task (its own onnxruntime session; the model bytes are the job's shared value, sent to each worker
once; the shard's feeds are the task's item).

When sharding is used (it only pays when spawning workers costs less than the work saved):

- the executor is not a :class:`~graphc.executor.LocalExecutor` on a machine of at most
  :data:`CORES_USED_IN_PROCESS` cores, nor one of one worker: the in-process pass already keeps two
  cores busy (onnxruntime computes sample k+1 while a thread folds sample k into the histograms),
  so local workers only help where there are more cores (measured on 2 cores: no gain,
  benchmarks/design_notes.md);
- the data has a known length (capped by ``max_samples``) of at least :data:`MIN_SHARDS` shards;
- the feeds, estimated from the first one, take at most :data:`MAX_SHARDED_BYTES` (sharding holds
  every feed in memory at once, where the in-process pass holds one);
- the first shard, run in this process and timed, says the others would take at least
  :data:`MIN_PARALLEL_SECONDS` here (:func:`pays`); else they run here too.

:class:`ShardedJob` is that flow, written once for every statistic: the first shard here (timed),
the others on the executor or here, the parts merged in shard order.

Otherwise the statistics are collected in this process, as before. For ranges and channel maxima
the two paths give identical results (the merges are exact: see
:meth:`graphc.calib.collect.RangeCollector.merge`), so the choice never shows in the output.
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from itertools import islice
from typing import Any, Callable, Generic, Iterable, TypeVar

import numpy as np

from graphc.errors import OutputError
from graphc.executor import LocalExecutor, current

log = logging.getLogger(__name__)

Feed = dict[str, np.ndarray]
#: what one shard's job returns (collectors, maxima, sums) and what the merged parts are.
Part = TypeVar("Part")

#: feeds per shard (fixed: every executor splits the data the same way).
SHARD_SIZE = 32
#: fewer samples than this many shards are collected in this process (no spawn cost).
MIN_SHARDS = 2
#: estimated seconds the shards after the first would take in this process before sending them to
#: the executor pays: spawning workers (each imports graphc and onnxruntime and builds a session)
#: costs a few seconds on a loaded 2-core machine, and 2 workers at best halve the time.
MIN_PARALLEL_SECONDS = 8.0
#: cores the in-process pass keeps busy (onnxruntime and the folding thread): local workers pay
#: only on a machine with more.
CORES_USED_IN_PROCESS = 2
#: sharding holds all feeds in memory; above this estimate, collect in this process instead.
MAX_SHARDED_BYTES = 1 << 30


def shards_of(data: Iterable[Feed], max_samples: int | None = None) -> list[list[Feed]] | None:
    """The feeds of ``data`` (at most ``max_samples``) in shards of :data:`SHARD_SIZE`, or None
    when sharding would not pay (see the module docstring): then collect in this process."""
    executor = current()
    if isinstance(executor, LocalExecutor) and (executor.workers <= 1
                                                or usable_cores() <= CORES_USED_IN_PROCESS):
        return None
    total = _length(data, max_samples)
    if total is None or total < MIN_SHARDS * SHARD_SIZE:
        return None
    first = next(iter(data), None)
    if first is None:
        return None
    estimate = total * sum(np.asarray(v).nbytes for v in first.values())
    if estimate > MAX_SHARDED_BYTES:
        log.info("calibration feeds (about %.0f MB) are collected in this process, not sharded",
                 estimate / 1e6)
        return None
    feeds = list(islice(iter(data), total))
    return [feeds[start:start + SHARD_SIZE] for start in range(0, len(feeds), SHARD_SIZE)]


def pays(first_shard_seconds: float, remaining_shards: int) -> bool:
    """Whether the remaining shards go to the executor, from the first shard's time in this
    process. Decides only where shards run, never what they compute."""
    estimate = first_shard_seconds * remaining_shards
    if estimate < MIN_PARALLEL_SECONDS:
        log.debug("calibration: %d more shards, about %.1f s here: not sent to the executor",
                  remaining_shards, estimate)
        return False
    return True


def map_shards(fn: Callable[[Any, list[Feed]], Any], shared: Any, shards: list[list[Feed]],
               desc: str) -> list[Any]:
    """``[fn(shared, shard) for shard in shards]`` on the executor in force, in shard order."""
    log.info("%s: %d samples in %d shards on the %s executor", desc, sum(map(len, shards)),
             len(shards), current().name)
    return current().map(fn, shared, shards, desc=desc, unit="shard")


@dataclass(frozen=True)
class ShardedJob(Generic[Part]):
    """Run a per-shard job on the executor in force and merge the results in shard order.

    :meth:`run` computes the first shard here, timed; the others go to the executor when that
    pays (:func:`pays`) and the shared value can be built, else they run here too. Where shards
    ran never changes the result: the parts merge in shard order, the same on every executor."""

    #: what the executor shows and logs ("calibrating", "channel ranges", ...).
    desc: str
    #: the part of some feeds, computed in this process (one session).
    here: Callable[[list[Feed]], Part]
    #: the executor's task, ``task(shared, shard)``: a module-level function (workers import it).
    task: Callable[[Any, list[Feed]], Part]
    #: builds the task's shared value (the model's bytes and settings); called only when the
    #: executor is used. OutputError (a model over 2 GiB cannot be serialized in memory): all here.
    shared: Callable[[], Any]
    #: the parts, in shard order, merged into one.
    merge: Callable[[list[Part]], Part]
    #: the part of the shards before, continued over more feeds here; by default
    #: ``merge([before, here(feeds)])`` (moments fold into the same sums to keep their additions).
    resume: Callable[[Part, list[Feed]], Part] | None = None

    def run(self, shards: list[list[Feed]]) -> Part:
        """The merged part of ``shards`` (at least one; see :func:`shards_of`)."""
        start = time.perf_counter()
        first = self.here(shards[0])
        rest = shards[1:]
        shared = self._shared() if pays(time.perf_counter() - start, len(rest)) else None
        if shared is not None:
            return self.merge([first] + map_shards(self.task, shared, rest, desc=self.desc))
        feeds = [feed for shard in rest for feed in shard]
        if self.resume is not None:
            return self.resume(first, feeds)
        return self.merge([first, self.here(feeds)])

    def _shared(self) -> Any | None:
        try:
            return self.shared()
        except OutputError:
            return None


def usable_cores() -> int:
    """CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _length(data: Iterable[Feed], max_samples: int | None) -> int | None:
    try:
        n = len(data)  # type: ignore[arg-type]
    except TypeError:
        return None
    return min(n, max_samples) if max_samples is not None else n
