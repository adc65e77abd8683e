"""Timing onnxruntime sessions: single-model latency and alternated A/B comparison.

See :mod:`graphc.bench` for the method. Times are wall-clock (``time.perf_counter``) around
``session.run`` only; feeds are prepared once and outputs are discarded.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from graphc.calib.data import Feed
from graphc.errors import DataError
from graphc.progress import steps
from graphc.runtime import SessionSource, create_session, run_session
from graphc.verify.feeds import InputShapes, evaluation_data, open_model

log = logging.getLogger(__name__)

Clock = Callable[[], float]


@dataclass
class LatencyStats:
    """Latency of one model, in milliseconds."""

    median_ms: float
    p10_ms: float
    p90_ms: float
    mean_ms: float
    runs: int
    times_ms: list[float] = field(default_factory=list, repr=False)

    @classmethod
    def from_times(cls, times_ms: list[float]) -> "LatencyStats":
        arr = np.asarray(times_ms, dtype=np.float64)
        p10, median, p90 = np.percentile(arr, [10, 50, 90])
        return cls(float(median), float(p10), float(p90), float(arr.mean()), len(times_ms), list(times_ms))

    def to_dict(self) -> dict[str, Any]:
        return {"median_ms": self.median_ms, "p10_ms": self.p10_ms, "p90_ms": self.p90_ms,
                "mean_ms": self.mean_ms, "runs": self.runs}


@dataclass
class LatencyComparison:
    """A against B, timed alternately. ``ratio`` = median of the per-round ratios A_i / B_i: the speedup of B.

    The paired median (round i timed A then B back to back) cancels drifts that hit both runs of
    a round alike, and always lies inside :meth:`ratio_spread`; median A / median B need not
    (on a loaded machine it was seen outside its own 25th-75th percentiles)."""

    a: LatencyStats
    b: LatencyStats
    threads: int
    warmup: int

    @property
    def median_a_ms(self) -> float:
        return self.a.median_ms

    @property
    def median_b_ms(self) -> float:
        return self.b.median_ms

    @property
    def ratio(self) -> float:
        return float(np.median(self._per_round()))

    @property
    def runs(self) -> int:
        """Timed runs of each model."""
        return self.a.runs

    def ratio_spread(self, low: float = 25, high: float = 75) -> tuple[float, float]:
        """Percentiles of the per-round ratios A_i / B_i (round i timed A then B back to back)."""
        lo, hi = np.percentile(self._per_round(), [low, high])
        return float(lo), float(hi)

    def _per_round(self) -> np.ndarray:
        b = np.asarray(self.b.times_ms, dtype=float)
        with np.errstate(divide="ignore"):
            return np.where(b > 0, np.asarray(self.a.times_ms, dtype=float) / np.where(b > 0, b, 1.0), np.inf)

    def to_dict(self) -> dict[str, Any]:
        return {"a": self.a.to_dict(), "b": self.b.to_dict(), "ratio": self.ratio,
                "threads": self.threads, "warmup": self.warmup, "runs": self.runs}


def alternate(run_a: Callable[[], Any], run_b: Callable[[], Any], *, warmup: int, rounds: int,
              clock: Clock = time.perf_counter) -> tuple[list[float], list[float]]:
    """Warm both up, then time ``rounds`` rounds of A then B; returns their times in ms."""
    times = alternate_all({"a": run_a, "b": run_b}, warmup=warmup, rounds=rounds, clock=clock)
    return times["a"], times["b"]


def alternate_all(runs: dict[str, Callable[[], Any]], *, warmup: int, rounds: int,
                  clock: Clock = time.perf_counter) -> dict[str, list[float]]:
    """Warm every run up, then time ``rounds`` rounds of all of them in order; times in ms."""
    for _ in range(warmup):
        for run in runs.values():
            run()
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in steps(rounds, "benchmark", unit="round"):
        for name, run in runs.items():
            times[name].append(_timed(run, clock))
    return times


def _timed(run: Callable[[], Any], clock: Clock) -> float:
    start = clock()
    run()
    return (clock() - start) * 1000.0


def _runner(model: SessionSource, feeds: Feed, threads: int, label: str) -> Callable[[], Any]:
    session = create_session(model, threads=threads, label=label, spin=False)
    run_session(session, feeds, label=label)  # fail here, with a clear error, not while timing
    names = [i.name for i in session.get_inputs()]
    bound = {n: feeds[n] for n in names}
    return lambda: session.run(None, bound)


def measure_latency(model: SessionSource, feeds: Feed, *, threads: int = 2, warmup: int = 5,
                    repeats: int = 30) -> LatencyStats:
    """Latency of ``model`` on ``feeds`` over ``repeats`` timed runs after ``warmup``."""
    _check_counts(warmup, repeats)
    run = _runner(model, feeds, threads, "model")
    for _ in range(warmup):
        run()
    return LatencyStats.from_times([_timed(run, time.perf_counter)
                                    for _ in steps(repeats, "benchmark", unit="run")])


def compare_latency(a: SessionSource, b: SessionSource, feeds: Feed, *, threads: int = 2,
                    warmup: int = 5, rounds: int = 30) -> LatencyComparison:
    """Time ``a`` and ``b`` alternately (ABAB...) on the same feeds; see :mod:`graphc.bench`."""
    _check_counts(warmup, rounds)
    run_a = _runner(a, feeds, threads, "model A")
    run_b = _runner(b, feeds, threads, "model B")
    times_a, times_b = alternate(run_a, run_b, warmup=warmup, rounds=rounds)
    result = LatencyComparison(LatencyStats.from_times(times_a), LatencyStats.from_times(times_b),
                               threads, warmup)
    log.info("bench: A %.3f ms, B %.3f ms, ratio %.3f", result.median_a_ms, result.median_b_ms, result.ratio)
    return result


def compare_all(models: dict[str, SessionSource], feeds: Feed, *, threads: int = 2, warmup: int = 5,
                rounds: int = 30) -> dict[str, LatencyStats]:
    """Time every model in ``models`` in one alternation (M1, M2, ..., M1, M2, ...) on the same
    feeds; pair any two with :func:`pair` for a ratio whose rounds were timed side by side."""
    _check_counts(warmup, rounds)
    runs = {name: _runner(model, feeds, threads, name) for name, model in models.items()}
    times = alternate_all(runs, warmup=warmup, rounds=rounds)
    return {name: LatencyStats.from_times(t) for name, t in times.items()}


def pair(stats: dict[str, LatencyStats], a: str, b: str, *, threads: int = 2,
         warmup: int = 5) -> LatencyComparison:
    """A against B out of one :func:`compare_all` run."""
    return LatencyComparison(stats[a], stats[b], threads, warmup)


def _check_counts(warmup: int, runs: int) -> None:
    if warmup < 0 or runs < 1:
        raise DataError(f"need warmup >= 0 and at least one timed run (got warmup={warmup}, runs={runs})")


def bench_feeds(model: SessionSource, data: Any = None, *, input_shapes: InputShapes | None = None,
                seed: int = 0) -> Feed:
    """One feed for benchmarking: the first of ``data``, or seeded random data of the declared
    shapes (``input_shapes`` for dynamic dims)."""
    ir, _ = open_model(model)
    for feed in evaluation_data(ir, data, input_shapes=input_shapes, samples=1, seed=seed):
        return feed
    raise DataError("no data to benchmark with")
