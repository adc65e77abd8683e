"""The catalog of registered passes and their options, as data (``graphc passes``)."""
from __future__ import annotations

from typing import Any

from graphc.passmanager import all_passes, option_specs
from graphc.passmanager.options import format_value


def pass_catalog() -> list[dict[str, Any]]:
    """Every registered pass: name, summary, exact/lossy, data needs, options with type, default,
    range or choices, and doc. Option defaults are given in pipeline spelling."""
    catalog = []
    for cls in all_passes():
        options = []
        for spec in option_specs(cls.Options):
            options.append({
                "key": spec.key,
                "type": spec.type_name,
                "default": format_value(spec.default),
                "min": spec.min,
                "max": spec.max,
                "choices": [format_value(c) for c in spec.choices] if spec.choices else None,
                "doc": spec.doc,
            })
        catalog.append({"name": cls.name, "summary": cls.summary, "exact": bool(cls.exact),
                        "needs_data": bool(cls.needs_data), "prepares": list(cls.prepares), "options": options})
    return catalog


def option_range(option: dict[str, Any]) -> str:
    """``0.0..1.0``, ``>= 1``, ``one of l1, l2``, or "" for an unconstrained option."""
    if option.get("choices"):
        return "one of " + ", ".join(option["choices"])
    low, high = option.get("min"), option.get("max")
    if low is not None and high is not None:
        return f"{low:g}..{high:g}"
    if low is not None:
        return f">= {low:g}"
    if high is not None:
        return f"<= {high:g}"
    return ""
