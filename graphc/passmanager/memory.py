"""Peak resident memory of the process during a block, from /proc (Linux).

Writing "5" to /proc/self/clear_refs resets the kernel's high-water mark (VmHWM), so the peak
read after the block belongs to the block alone. Where that is not possible the process-wide peak
is reported; off Linux, None.
"""
from __future__ import annotations

import resource
from pathlib import Path

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def _status_kb(field: str) -> int | None:
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def peak_rss() -> int:
    """Process-wide peak RSS in bytes (since start or the last reset)."""
    kb = _status_kb("VmHWM")
    if kb is None:
        kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb * 1024


def reset_peak() -> bool:
    try:
        _CLEAR_REFS.write_text("5")
        return True
    except OSError:
        return False


class PeakRss:
    """``with PeakRss() as m: ...`` then ``m.peak`` is the peak RSS in bytes during the block."""

    def __init__(self):
        self.peak: int | None = None

    def __enter__(self) -> "PeakRss":
        reset_peak()
        return self

    def __exit__(self, *exc) -> None:
        self.peak = peak_rss()
