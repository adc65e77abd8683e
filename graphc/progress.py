"""Progress bars for long steps (calibration, sensitivity, verification, benchmarks), with tqdm.

One switch for the whole process: bars go to stderr, only when stderr is a terminal, and never
after ``set_progress(False)`` (the CLI's ``-q``). Code that loops over samples or rounds wraps
the loop and stays silent in pipes, CI logs and tests::

    from graphc.progress import progress
    for feed in progress(source, total=len(source), desc="verifying", unit="sample"):
        ...

``progress_bar(total, desc)`` is the same for loops that advance by hand (``bar.update(n)``).
"""
from __future__ import annotations

import sys
from typing import Any, Iterable, Iterator, TypeVar

T = TypeVar("T")

_enabled: bool | None = None  # None: on when stderr is a terminal


def set_progress(enabled: bool | None) -> None:
    """True: always show bars; False: never (``-q``); None: only on a terminal (the default)."""
    global _enabled
    _enabled = enabled


def progress_enabled() -> bool:
    if _enabled is not None:
        return _enabled
    return bool(getattr(sys.stderr, "isatty", lambda: False)())


def progress(iterable: Iterable[T], *, total: int | None = None, desc: str = "",
             unit: str = "it") -> Iterable[T]:
    """``iterable`` itself when bars are off, else the same items under a tqdm bar on stderr."""
    if not progress_enabled():
        return iterable
    if total is None:
        total = _length(iterable)
    # lazy: tqdm loads only when a bar is shown
    from tqdm import tqdm

    return tqdm(iterable, total=total, desc=desc, unit=unit, file=sys.stderr, leave=False,
                dynamic_ncols=True)


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self) -> "_NoBar":
        return self

    def __exit__(self, *exc: Any) -> None:
        pass


def progress_bar(total: int | None, desc: str = "", unit: str = "it") -> Any:
    """A bar advanced by hand (``update(n)``, ``close()``, or use ``with``); a no-op when off."""
    if not progress_enabled():
        return _NoBar()
    # lazy: tqdm loads only when a bar is shown
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, leave=False, dynamic_ncols=True)


def _length(iterable: Iterable[Any]) -> int | None:
    try:
        return len(iterable)  # type: ignore[arg-type]
    except TypeError:
        return None


def steps(n: int, desc: str, unit: str = "it") -> Iterator[int]:
    """``range(n)`` under a bar: for timed rounds and other counted loops."""
    return iter(progress(range(n), total=n, desc=desc, unit=unit))
