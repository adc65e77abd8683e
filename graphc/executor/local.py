"""The local executor: today's behaviour - ``workers`` spawned processes on this machine, each
given the shared value once (a pool initializer), or threads for work that releases the GIL.

Results are placed by the index of their item, so the order tasks finish in never shows.
A pool that breaks (e.g. a ``__main__`` the spawned workers cannot import) is logged and the
remaining items run in this process: the same function on the same values, the same results.

The shared value reaches the workers through a pickle file in a temporary folder, not as the
pool initializer's argument: with the spawn start method an initializer argument travels inside
the process object that the parent writes into the child's pipe, and a child that dies while
starting (a script without a ``__main__`` guard re-runs itself and fails) never reads it - the
parent, which holds the pipe's read end until the write returns, then blocks forever on a value
larger than the pipe buffer (64 KiB; a model and its evaluation feeds are megabytes). A path is
a few bytes: the write returns, the pool reports the dead worker, and the items run here.
"""
from __future__ import annotations

import logging
import pickle
import tempfile
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from multiprocessing import get_context
from typing import Any, Callable, Sequence

from graphc.progress import progress_bar

log = logging.getLogger(__name__)

_SHARED: Any = None  # a worker process's copy of the job's shared value


def _init_worker(shared_file: str) -> None:
    global _SHARED
    with open(shared_file, "rb") as f:
        _SHARED = pickle.load(f)


def _call_in_worker(fn: Callable[[Any, Any], Any], item: Any) -> Any:
    return fn(_SHARED, item)


@dataclass(frozen=True)
class LocalExecutor:
    """``workers`` processes (spawned) or threads on this machine; 1: everything in this process."""

    workers: int = 2
    name: str = "local"

    def map(self, fn: Callable[[Any, Any], Any], shared: Any, items: Sequence[Any], *,
            desc: str = "", unit: str = "it", in_threads: bool = False) -> list[Any]:
        results: list[Any] = [None] * len(items)
        done = [False] * len(items)
        with progress_bar(len(items), desc=desc, unit=unit) as bar:
            if len(items) > 1 and self.workers > 1:
                try:
                    self._parallel(fn, shared, items, results, done, bar, in_threads)
                except BrokenProcessPool as exc:
                    log.warning("%s: worker processes failed (%s); evaluating in this process",
                                desc or "executor", exc)
            for i, item in enumerate(items):
                if not done[i]:
                    results[i] = fn(shared, item)
                    done[i] = True
                    bar.update(1)
        return results

    def _parallel(self, fn, shared, items, results, done, bar, in_threads: bool) -> None:
        if in_threads:
            self._collect(ThreadPoolExecutor(self.workers), lambda pool, i: pool.submit(fn, shared, items[i]),
                          items, results, done, bar)
            return
        with tempfile.TemporaryDirectory(prefix="graphc-executor-") as folder:
            shared_file = Path(folder) / "shared.pickle"
            with open(shared_file, "wb") as f:
                pickle.dump(shared, f, protocol=pickle.HIGHEST_PROTOCOL)
            pool = ProcessPoolExecutor(self.workers, mp_context=get_context("spawn"),
                                       initializer=_init_worker, initargs=(str(shared_file),))
            self._collect(pool, lambda pool, i: pool.submit(_call_in_worker, fn, items[i]), items, results, done, bar)

    @staticmethod
    def _collect(pool, submit, items, results, done, bar) -> None:
        with pool:
            futures = {submit(pool, i): i for i in range(len(items))}
            for future in as_completed(futures):
                i = futures[future]
                results[i] = future.result()
                done[i] = True
                bar.update(1)
