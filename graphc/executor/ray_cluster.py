"""The Ray executor (``pip install graphc[ray]``): tasks on a Ray runtime on this machine
(``--executor ray``) or a cluster (``--executor ray://HOST:PORT``).

One job: the shared value goes to the object store once (``ray.put``); every task gets its
reference (wrapped in a list, so Ray does not resolve it per task) and each worker process
fetches it once, keeping the last job's value (a cache of one). Tasks take one CPU each, so a
runtime with ``num_cpus=N`` runs ``N`` at a time. Results are placed by the index of their item:
the order tasks finish in never shows, and results are the bytes the local executor gives
(the same function on the same values). A graphc error inside a task is raised as itself.

Every node must have graphc (and its dependencies) installed: tasks name their function by
module, they do not ship code.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from graphc.errors import ExecutorError, GraphcError
from graphc.progress import progress_bar

log = logging.getLogger(__name__)

EXTRA_HINT = "Ray is not installed: pip install 'graphc[ray]'"

_worker_cache: dict[str, Any] = {}  # {object id: shared value}, in a Ray worker process
_task = None  # the remote function, made on first use (importing ray is slow)


def import_ray() -> Any:
    """The ``ray`` module, or an :class:`ExecutorError` naming the extra."""
    try:
        import ray  # lazy: an optional extra, and slow to import
    except ImportError as exc:
        raise ExecutorError(f"--executor ray: {EXTRA_HINT}") from exc
    return ray


def _run_task(fn: Callable[[Any, Any], Any], boxed_ref: list, item: Any) -> Any:
    import ray  # lazy: runs in a Ray worker, where ray is always there

    ref = boxed_ref[0]
    key = ref.hex()
    if key not in _worker_cache:
        _worker_cache.clear()
        _worker_cache[key] = ray.get(ref)
    return fn(_worker_cache[key], item)


def _remote(ray: Any) -> Any:
    global _task
    if _task is None:
        _task = ray.remote(num_cpus=1)(_run_task)
    return _task


@dataclass(frozen=True)
class RayExecutor:
    """Tasks on Ray. ``address``: ``ray://HOST:PORT`` of a cluster, None for this machine (an
    existing runtime, else one started here with ``num_cpus`` CPUs)."""

    address: str | None = None
    num_cpus: int | None = None
    name: str = "ray"

    def connect(self) -> Any:
        ray = import_ray()
        if ray.is_initialized():
            return ray
        kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
        if self.address is None and self.num_cpus is not None:
            kwargs["num_cpus"] = self.num_cpus
        try:
            ray.init(address=self.address, **kwargs)
        except Exception as exc:  # ConnectionError, RuntimeError, grpc errors: all mean "not reached"
            where = self.address or "this machine"
            raise ExecutorError(f"--executor ray: cannot start or reach Ray on {where}: "
                                f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from exc
        return ray

    def map(self, fn: Callable[[Any, Any], Any], shared: Any, items: Sequence[Any], *,
            desc: str = "", unit: str = "it", in_threads: bool = False) -> list[Any]:
        if not items:
            return []
        ray = self.connect()
        task = _remote(ray)
        boxed = [ray.put(shared)]  # once per job
        index = {task.remote(fn, boxed, item): i for i, item in enumerate(items)}
        results: list[Any] = [None] * len(items)
        pending = list(index)
        with progress_bar(len(items), desc=desc, unit=unit) as bar:
            while pending:
                ready, pending = ray.wait(pending, num_returns=1)
                for ref in ready:
                    results[index[ref]] = self._get(ray, ref)
                    bar.update(1)
        return results

    @staticmethod
    def _get(ray: Any, ref: Any) -> Any:
        try:
            return ray.get(ref)
        except ray.exceptions.RayTaskError as exc:
            cause = getattr(exc, "cause", None)
            if isinstance(cause, GraphcError):
                raise cause from None
            raise
