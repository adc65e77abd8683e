"""Searches on Ray: the PP-OCRv4 rec error budget (``quant{min-sqnr=...}``) with local processes
against Ray with 2 and 4 workers on this machine, and a paper estimate for a cluster.

Each run quantizes PP-OCRv4 rec (``fold-bn,canonicalize,cleanup,quant{placement=all min-sqnr=..
samples=..}``) on rendered text lines, with an empty evaluation cache (nothing re-used), on one
executor: ``local`` (two spawned processes, the default), ``ray x2`` and ``ray x4`` (a local Ray
runtime started with ``num_cpus`` 2 or 4 before the run; its start is timed apart). Runs are
alternated local / ray x2 / ray x4 for ``ROUNDS`` rounds; the table gives medians. Every run must
give the same model bytes (checked). The machine has 2 cores shared with other work: 4 Ray
workers on 2 cores measure the cost of over-subscription, not a gain.

Each task is timed inside its worker (a wrapper around the search's task function), so the
table also gives the per-task time ``t_task``, the time spent outside the executor (float
reference outputs, calibration, plans: the sequential part ``t_seq``), and the object-store
cost of one job: ``ray.put`` of the shared value (``t_put``, measured) and its size ``S``.

Paper estimate, a 100-layer model on a 16-node cluster (``W`` = 16 x 8 workers): the sweep runs
one evaluation per layer, the search a few rounds of evaluations one after another, so::

    T(W) = t_seq' + ceil(E_sweep / W) * t_task' + R_search * t_task' + t_put + N * S / B

with ``t_task' = t_task * 100 / L`` and ``t_seq' = t_seq * 100 / L`` (work grows with the layer
count ``L`` of rec), ``E_sweep = 100``, ``R_search`` the sequential search evaluations measured
here (evaluations run minus sweep), ``N = 16`` nodes each pulling the shared value once over a
``B = 1.25 GB/s`` (10 Gbit/s) network (an assumption: one machine cannot measure it).
"""
from __future__ import annotations

import logging
import math
import os
import pickle
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import bench_quant  # noqa: E402
import ppocr_data  # noqa: E402

TITLE = "executor: the PP-OCRv4 rec error budget on local processes and on Ray (2 and 4 workers)"
log = logging.getLogger(__name__)

PIPELINE = "fold-bn,canonicalize,cleanup,quant{placement=all min-sqnr=%s samples=%d}"
MIN_SQNR = float(os.environ.get("GRAPHC_BENCH_EXECUTOR_SQNR", "30"))
SAMPLES = int(os.environ.get("GRAPHC_BENCH_EXECUTOR_SAMPLES", "8"))
ROUNDS = int(os.environ.get("GRAPHC_BENCH_EXECUTOR_ROUNDS", "1"))
CLUSTER_NODES, WORKERS_PER_NODE, LAYERS = 16, 8, 100
NETWORK_BYTES_PER_S = 1.25e9


class _Timed:
    """A task function that also returns its own run time in the worker."""

    def __init__(self, fn):
        self.fn = fn

    def __call__(self, shared: Any, item: Any) -> tuple[float, Any]:
        start = time.perf_counter()
        result = self.fn(shared, item)
        return time.perf_counter() - start, result


@dataclass
class TimedExecutor:
    """Runs on ``inner``; records each task's time, each map's wall time, and (on Ray) the put."""

    inner: Any
    name: str = "timed"
    tasks: list[float] = field(default_factory=list)
    maps: list[float] = field(default_factory=list)
    puts: list[tuple[float, int]] = field(default_factory=list)

    def map(self, fn, shared, items, **kw):
        if getattr(self.inner, "name", "") == "ray":
            import ray  # lazy: optional

            start = time.perf_counter()
            ray.put(shared)
            self.puts.append((time.perf_counter() - start, len(pickle.dumps(shared, protocol=5))))
        start = time.perf_counter()
        out = self.inner.map(_Timed(fn), shared, items, **kw)
        self.maps.append(time.perf_counter() - start)
        self.tasks += [t for t, _ in out]
        return [r for _, r in out]


def _run(executor, calib) -> tuple[float, bytes, dict, TimedExecutor]:
    import graphc
    from graphc.calib.data import open_data
    from graphc.executor import using

    model = graphc.load(bench_quant.ppocr_model("rec"))
    timed = TimedExecutor(executor)
    with tempfile.TemporaryDirectory() as cache:
        os.environ["GRAPHC_CACHE_DIR"] = cache
        start = time.perf_counter()
        with using(timed):
            report = graphc.PassManager(PIPELINE % (MIN_SQNR, SAMPLES), data=open_data(calib, model)).run(model)
        wall = time.perf_counter() - start
    from graphc.ir import model_bytes

    return wall, model_bytes(model), report.records[-1].stats, timed


def _ray_run(ray, workers: int, calib) -> tuple[float, float, bytes, dict, TimedExecutor]:
    from graphc.executor import RayExecutor

    start = time.perf_counter()
    ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False)
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # _Timed: workers lack benchmarks/
    started = time.perf_counter() - start
    try:
        return (started, *_run(RayExecutor(), calib))
    finally:
        ray.shutdown()


def run() -> str:
    try:
        import ray
    except ImportError:
        return "Skipped: Ray is not installed (`pip install 'graphc[ray]'`)."
    from graphc.executor import LocalExecutor

    previous = os.environ.get("GRAPHC_CACHE_DIR")
    calib = ppocr_data.feeds("rec", SAMPLES, seed=1)
    rows: dict[str, list] = {"local (2 processes)": [], "ray x2": [], "ray x4": []}
    starts: dict[str, list[float]] = {"ray x2": [], "ray x4": []}
    try:
        for _ in range(ROUNDS):
            rows["local (2 processes)"].append(_run(LocalExecutor(2), calib))
            for workers in (2, 4):
                started, *result = _ray_run(ray, workers, calib)
                starts[f"ray x{workers}"].append(started)
                rows[f"ray x{workers}"].append(tuple(result))
    finally:
        if previous is None:
            os.environ.pop("GRAPHC_CACHE_DIR", None)
        else:
            os.environ["GRAPHC_CACHE_DIR"] = previous
    return _table(rows, starts)


def _table(rows: dict[str, list], starts: dict[str, list[float]]) -> str:
    outputs = {r[1] for runs in rows.values() for r in runs}
    local = statistics.median(r[0] for r in rows["local (2 processes)"])
    stats = rows["local (2 processes)"][0][2]
    how = ("one run per executor (local, ray x2, ray x4 in turn): no median, no spread" if ROUNDS == 1 else
           f"{ROUNDS} rounds of local, ray x2, ray x4 in turn (alternated), medians")
    lines = [f"PP-OCRv4 rec, `{PIPELINE % (MIN_SQNR, SAMPLES)}`, {SAMPLES} rendered lines, "
             f"{how}; empty cache each run. "
             f"Evaluations per run: {stats.get('budget_evaluations_run')} "
             f"({stats.get('budget_layers')} candidates swept), "
             f"{stats.get('budget_float_layers')} layer(s) kept float. "
             f"Output model bytes identical across all {sum(map(len, rows.values()))} runs: "
             f"**{'yes' if len(outputs) == 1 else 'NO'}**.", "",
             "| executor | wall (s) | speed-up vs local | in the executor (s) | outside it (s) | "
             "per task, median (s) | runtime start (s) |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for name, runs in rows.items():
        wall = statistics.median(r[0] for r in runs)
        inside = statistics.median(sum(r[3].maps) for r in runs)
        task = statistics.median(t for r in runs for t in r[3].tasks)
        start = f"{statistics.median(starts[name]):.1f}" if name in starts else "-"
        lines.append(f"| {name} | {wall:.1f} | {local / wall:.2f}x | {inside:.1f} | {wall - inside:.1f} | "
                     f"{task:.2f} | {start} |")
    lines += ["", _estimate(rows)]
    return "\n".join(lines)


def _estimate(rows: dict[str, list]) -> str:
    import graphc

    ray_runs = rows["ray x2"]
    put, size = statistics.median(p for r in ray_runs for p, _ in r[3].puts), ray_runs[0][3].puts[0][1]
    t_task = statistics.median(t for r in ray_runs for t in r[3].tasks)
    t_seq = statistics.median(r[0] - sum(r[3].maps) for r in ray_runs)
    stats = ray_runs[0][2]
    layers = sum(n.op in ("Conv", "MatMul", "Gemm") for n in graphc.load(bench_quant.ppocr_model("rec")).graph.nodes)
    scale = LAYERS / layers
    rounds = max(stats.get("budget_evaluations_run", 0) - stats.get("budget_layers", 0), 0)
    workers = CLUSTER_NODES * WORKERS_PER_NODE
    transfer = put + CLUSTER_NODES * size / NETWORK_BYTES_PER_S
    parts = {"t_seq'": t_seq * scale, "the sweep": math.ceil(LAYERS / workers) * t_task * scale,
             "R_search sequential evaluations": rounds * t_task * scale, "the transfer": transfer}
    cluster = sum(parts.values())
    one_machine = t_seq * scale + (math.ceil(LAYERS / 2) + rounds) * t_task * scale
    return (f"Paper estimate, {LAYERS}-layer model on {CLUSTER_NODES} nodes x {WORKERS_PER_NODE} workers "
            f"(formula in the module docstring), from the ray x2 runs: rec has L = {layers} Conv/MatMul/Gemm "
            f"layers, t_task = {t_task:.2f} s, t_seq = {t_seq:.1f} s, R_search = {rounds}, "
            f"t_put = {put * 1000:.0f} ms for S = {size / 1e6:.1f} MB. "
            f"T(cluster) = {cluster:.0f} s against {one_machine:.0f} s on 2 local workers "
            f"({one_machine / cluster:.1f}x). " + _bound_note(parts, cluster))


def _bound_note(parts: dict[str, float], total: float) -> str:
    """Which term of the estimate dominates it, from the computed terms."""
    terms = ", ".join(f"{name} {seconds:.1f} s" for name, seconds in parts.items())
    largest = max(parts, key=parts.get)
    return f"Its terms: {terms}; the largest, {largest}, is {parts[largest] / total:.0%} of it."
