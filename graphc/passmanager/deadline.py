"""A wall-clock limit on one pass (``PassManager(max_seconds=...)``, ``--max-seconds``).

In the main thread a real-time timer (``signal.setitimer``) interrupts the pass where it stands:
its handler raises :class:`DeadlineReached`, a ``BaseException`` so that a pass's own
``except Exception`` (fold-constants guards every evaluation with one) cannot swallow it; the
manager turns it into a :class:`graphc.errors.PassTimeoutError` naming the pass. The graph is
then half rewritten, so nothing is saved. Off the main thread (signals cannot be used) the limit
is checked when the pass returns. A block inside C code (one long numpy call) is interrupted when
it returns to Python.
"""
from __future__ import annotations

import signal
import threading
import time


class DeadlineReached(BaseException):
    """Raised inside a pass when its time is up."""


class Deadline:
    """``with Deadline(seconds):`` raises :class:`DeadlineReached` once ``seconds`` have passed
    (``None``: no limit). ``elapsed`` is the block's wall time."""

    def __init__(self, seconds: float | None):
        self.seconds = seconds
        self.elapsed = 0.0
        self._start = 0.0
        self._previous = None
        self._armed = False

    def __enter__(self) -> "Deadline":
        self._start = time.perf_counter()
        if self.seconds is not None and threading.current_thread() is threading.main_thread() \
                and hasattr(signal, "setitimer"):
            self._previous = signal.signal(signal.SIGALRM, self._expire)
            signal.setitimer(signal.ITIMER_REAL, self.seconds)
            self._armed = True
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self._armed:
            self._armed = False  # first: a signal arriving from here on is ignored by _expire
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, self._previous)
        self.elapsed = time.perf_counter() - self._start
        if exc_type is None and self.seconds is not None and self.elapsed > self.seconds:
            raise DeadlineReached()

    def _expire(self, signum, frame) -> None:
        if not self._armed:
            return
        self._armed = False
        signal.signal(signal.SIGALRM, self._previous)  # the timer is one-shot: nothing left to undo
        raise DeadlineReached()
