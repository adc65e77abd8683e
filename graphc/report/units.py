"""Human-readable numbers for the text and Markdown renderers (the data keeps raw numbers)."""
from __future__ import annotations

from typing import Any

#: how the text, Markdown and HTML reports show a number the data holds as null: a size that is not
#: computed (zlib and xz above 64 MB), the file size of a result that was not written, a metric
#: that was not measured. The same in every column and table (docs/report-schema.md).
MISSING = "-"


def human_bytes(n: Any) -> str:
    if not isinstance(n, (int, float)):
        return "?"
    value = float(n)
    for unit in ("B", "kB", "MB", "GB"):
        if abs(value) < 1000 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} GB"


def human_count(n: Any) -> str:
    if not isinstance(n, (int, float)):
        return "?"
    value = float(n)
    for unit in ("", "k", "M", "G", "T"):
        if abs(value) < 1000 or unit == "T":
            return f"{int(value)}" if unit == "" else f"{value:.2f}{unit}"
        value /= 1000
    return f"{value:.2f}T"


def change(before: Any, after: Any) -> str:
    """Relative change ``after`` vs ``before`` as a signed percentage."""
    if not isinstance(before, (int, float)) or not isinstance(after, (int, float)) or not before:
        return ""
    return f"{(after - before) / before:+.1%}"


def metric(value: Any, fmt: str = ".3g", suffix: str = "") -> str:
    """A metric that may be a float, a non-finite marker string ("inf") or None."""
    if value is None:
        return MISSING
    if isinstance(value, str):
        return value + suffix
    return f"{value:{fmt}}{suffix}"
