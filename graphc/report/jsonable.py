"""Plain JSON values from report data: what ``json.dumps(..., allow_nan=False)`` accepts.

numpy scalars and arrays become Python numbers and lists, tuples become lists, paths strings,
dataclasses and objects with ``to_dict()`` their dicts; non-finite floats become the strings
"inf", "-inf" and "nan" (strict JSON has no spelling for them).
"""
from __future__ import annotations

import dataclasses
import math
from pathlib import PurePath
from typing import Any

import numpy as np


def jsonable(value: Any) -> Any:
    """A copy of ``value`` made of dict, list, str, int, float, bool and None only."""
    if value is None or isinstance(value, (bool, str, int)):
        return value
    if isinstance(value, float):
        return _float(value)
    if isinstance(value, np.generic):
        return jsonable(value.item())
    if isinstance(value, np.ndarray):
        return [jsonable(v) for v in value.tolist()]
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [jsonable(v) for v in value]
    if isinstance(value, PurePath):
        return str(value)
    if hasattr(value, "to_dict"):
        return jsonable(value.to_dict())
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return jsonable(dataclasses.asdict(value))
    return str(value)


def _float(value: float) -> float | str:
    if math.isfinite(value):
        return value
    return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
