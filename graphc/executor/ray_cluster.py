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
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from graphc.errors import ExecutorError, GraphcError
from graphc.progress import progress_bar

log = logging.getLogger(__name__)

EXTRA_HINT = "Ray is not installed: pip install 'graphc[ray]'"

#: how many times a cluster address (``ray://``) is tried before its error is raised
CONNECT_ATTEMPTS = 3

_worker_cache: dict[str, Any] = {}  # {object id: shared value}, in a Ray worker process
_task = None  # the remote function, made on first use (importing ray is slow)


def import_ray() -> Any:
    """The ``ray`` module, or an :class:`ExecutorError` naming the extra."""
    try:
        import ray  # lazy: an optional extra, and slow to import
    except ImportError as exc:
        raise ExecutorError(f"--executor ray: {EXTRA_HINT}") from exc
    return ray


def error_reason(exc: BaseException) -> str:
    """One line saying why: the exception's first line, or - when that only introduces what
    follows (Ray's "Initialization failure from server:" then the server's traceback) - its last
    non-empty line, which names the failure."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    return lines[-1] if lines[0].endswith(":") and len(lines) > 1 else lines[0]


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
        """The initialised ``ray`` module. A cluster address is tried :data:`CONNECT_ATTEMPTS` times
        (waits of 2, 4 s between): a head whose client server is up can still fail a client's first
        start-up while its other processes come up; an error that persists is an ExecutorError
        naming the address and the server's own last line."""
        ray = import_ray()
        if ray.is_initialized():
            return ray
        kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
        if self.address is None and self.num_cpus is not None:
            kwargs["num_cpus"] = self.num_cpus
        attempts = CONNECT_ATTEMPTS if self.address else 1
        for attempt in range(1, attempts + 1):
            try:
                ray.init(address=self.address, **kwargs)
                return ray
            except Exception as exc:  # ConnectionError, RuntimeError, grpc errors: all mean "not reached"
                reason = error_reason(exc)
                if attempt == attempts:
                    where = self.address or "this machine"
                    raise ExecutorError(f"--executor ray: cannot start or reach Ray on {where}"
                                        f"{f' (after {attempts} attempts)' if attempts > 1 else ''}: "
                                        f"{reason}") from exc
                if ray.is_initialized():
                    ray.shutdown()
                log.warning("Ray on %s: %s; trying again (%d of %d)", self.address, reason,
                            attempt + 1, attempts)
                time.sleep(2.0 * attempt)
        raise AssertionError("unreachable")

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
