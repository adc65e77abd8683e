"""Executors: where the independent evaluations of a search run (quant's error budget and
sensitivity sweep, prune's sensitivity, ``graphc sensitivity``), and the shards of calibration
over many samples (:mod:`graphc.calib.shards`).

A search hands an executor one *job*: a top-level function ``fn(shared, item)``, the ``shared``
value every task needs (model bytes, calibration feeds, reference outputs), and the ``items``.
``map`` returns ``[fn(shared, item) for item in items]`` - in the order of ``items``, whatever
order the tasks finished in, so a search's results (and what it writes) are the same bytes on
every executor:

- :class:`LocalExecutor` (the default): ``workers`` spawned processes on this machine, each
  given ``shared`` once (``in_threads=True``: threads, for work that releases the GIL);
- :class:`RayExecutor` (``pip install graphc[ray]``): a Ray runtime on this machine or a cluster
  (``ray://HOST:PORT``); ``shared`` goes to the object store once (one ``ray.put`` per job) and
  each worker process reads it once.

The executor in force is process-wide: :func:`current`, set with :func:`using` (the CLI's
``--executor``, the recipe's ``executor`` key). :func:`executor_from` parses the flag's text.
"""
from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator, Protocol, Sequence

from graphc.errors import ExecutorError
from graphc.executor.local import LocalExecutor
from graphc.executor.ray_cluster import RayExecutor

__all__ = ["Executor", "ExecutorError", "LocalExecutor", "RayExecutor", "current", "executor_from",
           "using", "CHOICES"]

#: what ``--executor`` accepts (besides ``ray://HOST:PORT``).
CHOICES = ("local", "ray")


class Executor(Protocol):
    name: str

    def map(self, fn: Callable[[Any, Any], Any], shared: Any, items: Sequence[Any], *,
            desc: str = "", unit: str = "it", in_threads: bool = False) -> list[Any]:
        """``[fn(shared, item) for item in items]``, in the order of ``items``."""


_current: Executor | None = None


def current() -> Executor:
    """The executor in force (a :class:`LocalExecutor` unless :func:`using` set another)."""
    return _current if _current is not None else LocalExecutor()


@contextlib.contextmanager
def using(executor: Executor | None) -> Iterator[Executor]:
    """Make ``executor`` the one in force inside the block (None: keep the one in force)."""
    global _current
    before = _current
    if executor is not None:
        _current = executor
    try:
        yield current()
    finally:
        _current = before


def executor_from(text: str | None) -> Executor | None:
    """``"local"``, ``"ray"`` or ``"ray://HOST:PORT"`` as an executor (None: not given)."""
    if text is None:
        return None
    if text == "local":
        return LocalExecutor()
    if text == "ray":
        return RayExecutor()
    if text.startswith("ray://") and len(text) > len("ray://"):
        return RayExecutor(address=text)
    raise ExecutorError(f"unknown executor '{text}'; one of local, ray, ray://HOST:PORT")
