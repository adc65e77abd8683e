"""Peak resident memory of the process and of blocks inside it, from /proc (Linux).

The kernel keeps one high-water mark of the resident set per process (VmHWM). Writing "5" to
/proc/self/clear_refs resets it to the current RSS, so the peak read after a block belongs to
that block alone: the pass manager does this around each pass (:class:`PeakRss`).

A reset erases the mark for everyone else, so every reset goes through :func:`reset_peak`, which
first folds the mark it is about to erase into (a) the process-wide peak and (b) every block still
open around it. Hence, exactly and without sampling:

- ``PeakRss().peak`` = max(marks folded while the block was open, VmHWM at its end) - the peak
  during the block, nested blocks included;
- :func:`process_peak_rss` = max(every folded mark, VmHWM now) - the peak since the process
  started, whatever was reset in between.

Where clear_refs cannot be written the mark is never reset and every figure is process-wide
since start; off Linux ``ru_maxrss`` stands in for VmHWM. A fresh process measured from outside
(its whole life: imports, load, every pass, save) is :mod:`graphc.bench.memory`.
"""
from __future__ import annotations

import resource
from pathlib import Path

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")

#: highest VmHWM erased by a reset in this process (bytes)
_folded_peak = 0
#: blocks currently open (outermost first); each keeps the marks erased while it is open
_open_blocks: list["PeakRss"] = []


def _status_kb(field: str) -> int | None:
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def peak_rss() -> int:
    """The kernel's high-water mark in bytes: since start or since the last reset."""
    kb = _status_kb("VmHWM")
    if kb is None:
        kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb * 1024


def process_peak_rss() -> int:
    """Peak RSS in bytes since the process started, resets included."""
    return max(_folded_peak, peak_rss())


def _fold(mark: int) -> None:
    global _folded_peak
    _folded_peak = max(_folded_peak, mark)
    for block in _open_blocks:
        block._folded = max(block._folded, mark)


def reset_peak() -> bool:
    """Reset the kernel's mark to the current RSS, keeping what it held (see the module doc)."""
    _fold(peak_rss())
    try:
        _CLEAR_REFS.write_text("5")
        return True
    except OSError:
        return False


class PeakRss:
    """``with PeakRss() as m: ...`` then ``m.peak`` is the peak RSS in bytes during the block."""

    def __init__(self):
        self.peak: int | None = None
        self._folded = 0

    def __enter__(self) -> "PeakRss":
        reset_peak()  # folds the mark so far into the blocks around this one
        self._folded = 0
        _open_blocks.append(self)
        return self

    def __exit__(self, *exc) -> None:
        if self in _open_blocks:
            _open_blocks.remove(self)
        self.peak = max(self._folded, peak_rss())
