"""Concrete input shapes for shape-dependent estimates on a model with dynamic inputs.

MAC budgets (``prune{flops=...}``), cost models and random verification inputs need numbers where
a model declares names (``N``, ``H``) or nothing. They take, in order:

1. the user's ``--input-shape``;
2. the first sample of the data (``--data``), when there is data;
3. a nominal shape: batch (the first dim) 1; every other dynamic dim :data:`NOMINAL_SIDE` (224, an
   image side) for inputs of rank 4 or more, :data:`NOMINAL_LENGTH` (128, a sequence length) for
   lower ranks. A dynamic batch alone is just "batch 1".

Which one was used is said in one line (``origin``), logged and shown in the report. MAC ratios
of convolutional models barely depend on the spatial size, so a nominal shape is a good guess for
budgets - but it is a guess: never a basis for rewrites, which must hold at every input shape.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable

import numpy as np

NOMINAL_SIDE = 224
NOMINAL_LENGTH = 128


@dataclass(frozen=True)
class ConcreteShapes:
    """Every input's concrete shape and, when some dims were not declared, where they came from
    (``origin``: one phrase, e.g. "a nominal shape (x:1x3x224x224; --input-shape to choose)")."""

    shapes: dict[str, tuple[int, ...]]
    origin: str | None = None

    def describe(self) -> str:
        return ", ".join(f"{name}:{'x'.join(str(d) for d in shape)}" for name, shape in self.shapes.items())


def nominal_shape(shape: tuple) -> tuple[int, ...]:
    """``shape`` with dynamic dims (None or str) set as the module docstring says."""
    fill = NOMINAL_SIDE if len(shape) >= 4 else NOMINAL_LENGTH
    return tuple(d if isinstance(d, int) and d >= 0 else (1 if i == 0 else fill) for i, d in enumerate(shape))


def _dynamic(shape: tuple) -> bool:
    return any(not (isinstance(d, int) and d >= 0) for d in shape)


def concrete_input_shapes(specs: Iterable[Any], given: dict[str, tuple[int, ...]] | None = None,
                          data: Iterable[dict[str, np.ndarray]] | None = None) -> ConcreteShapes:
    """Concrete shapes for ``specs`` (objects with ``name`` and ``shape``), in the order of the
    module docstring. ``origin`` is None when nothing had to be chosen."""
    specs = list(specs)
    given = dict(given or {})
    shapes = {s.name: tuple(given[s.name]) for s in specs if s.name in given}
    open_specs = [s for s in specs if s.name not in shapes]
    if not any(_dynamic(s.shape) for s in open_specs):
        origin = "--input-shape" if given else None
        return ConcreteShapes({**shapes, **{s.name: tuple(s.shape) for s in open_specs}}, origin)
    first = next(iter(data), None) if data is not None else None
    if first is not None and all(s.name in first for s in open_specs):
        shapes.update({s.name: tuple(np.shape(first[s.name])) for s in open_specs})
        return ConcreteShapes(shapes, "the first data sample's shape")
    shapes.update({s.name: nominal_shape(s.shape) for s in open_specs})
    batch_only = all(not _dynamic(s.shape[1:]) for s in open_specs)
    kind = "batch 1" if batch_only else "a nominal shape"
    return ConcreteShapes(shapes, f"{kind} ({ConcreteShapes(shapes).describe()}; --input-shape to choose)")
