"""What each element of a 1-D shape tensor is made of.

Reshape, Expand and Resize take a target shape as a tensor. Exporters build it from constants and
from ``Shape`` of other tensors (Paddle2ONNX: ``Concat(Cast(Slice(Shape(x))), Cast(Constant))``).
The channel analysis needs, for the element that carries a channel count, one of:

- :class:`ConstElement`: a constant it can rewrite when channels go (copy-on-write: the node that
  reads the constant gets a new constant, so other readers are untouched). ``exclusive`` is False
  when an intermediate shape tensor on the way has other readers: rewriting would change them too.
- :class:`DimElement`: a dimension of another tensor, read at run time; it follows that tensor.
- ``None``: anything else (arithmetic on shapes, data-dependent values).

Supported plumbing: constants, ``Shape`` (with start/end), ``Cast``, ``Identity``, ``Concat`` (axis 0),
``Slice``/``Gather`` with constant indices on axis 0, ``Squeeze``/``Unsqueeze`` of 0-D/1-D tensors.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from graphc.ir import constant_value, consumers, is_standard_op, producer

#: ops that move shape elements around without computing on them.
PLUMBING = frozenset({"Cast", "Identity", "Concat", "Slice", "Gather", "Squeeze", "Unsqueeze"})
_MAX_DEPTH = 24


@dataclass(frozen=True)
class ConstElement:
    value: int
    constant: gs.Constant
    index: int               # flat index of the element inside ``constant``
    reader: gs.Node          # the node that reads ``constant`` (rewritten copy-on-write)
    slot: int                # which input of ``reader`` it is
    exclusive: bool          # every shape tensor between reader and the final consumer has one reader


@dataclass(frozen=True)
class DimElement:
    tensor: gs.Tensor
    axis: int


def shape_elements(tensor: gs.Tensor, reader: gs.Node, rank_of) -> list | None:
    """Per-element sources of the 1-D (or 0-D) int tensor ``tensor``; None if its length is unknown.

    ``reader`` is the node that consumes ``tensor`` (needed to rewrite a constant read directly);
    ``rank_of(tensor)`` gives a tensor's rank or None (for ``Shape`` without ``end``).
    """
    slot = next((i for i, t in enumerate(reader.inputs) if t is tensor), 0)
    return _elements(tensor, reader, slot, True, 0, rank_of)


def _elements(tensor: gs.Tensor, reader: gs.Node | None, slot: int, exclusive: bool, depth: int,
              rank_of) -> list | None:
    if depth > _MAX_DEPTH:
        return None
    value = constant_value(tensor)
    if value is not None:
        if value.dtype.kind not in "iu" or value.ndim > 1:
            return None
        flat = value.reshape(-1)
        return [ConstElement(int(v), tensor, i, reader, slot, exclusive) for i, v in enumerate(flat)]
    node = producer(tensor)
    if node is None or not is_standard_op(node):
        return None
    exclusive = exclusive and len(consumers(tensor)) == 1
    op = node.op
    if op == "Shape":
        return _shape_op(node, rank_of)
    if op not in PLUMBING:
        return _unknown_elements(tensor)
    if op in ("Cast", "Identity", "Squeeze", "Unsqueeze"):
        if op == "Cast" and not _int_cast(node):
            return _unknown_elements(tensor)
        return _elements(node.inputs[0], node, 0, exclusive, depth + 1, rank_of)
    if op == "Concat":
        out: list = []
        for i, inp in enumerate(node.inputs):
            part = _elements(inp, node, i, exclusive, depth + 1, rank_of)
            if part is None:
                return None
            out.extend(part)
        return out
    inner = _elements(node.inputs[0], node, 0, exclusive, depth + 1, rank_of)
    if inner is None:
        return None
    picked = selected_indices(node, len(inner))
    if picked is None:
        return _unknown_elements(tensor)
    return [inner[i] for i in picked]


def _shape_op(node: gs.Node, rank_of) -> list | None:
    src = node.inputs[0]
    rank = rank_of(src)
    if rank is None:
        return None
    start = int(node.attrs.get("start", 0))
    end = node.attrs.get("end", None)
    axes = range(rank)[slice(start, None if end is None else int(end))]
    return [DimElement(src, a) for a in axes]


def _int_cast(node: gs.Node) -> bool:
    # onnx TensorProto: 6 int32, 7 int64, 12 uint32, 13 uint64
    return int(node.attrs.get("to", 0)) in (6, 7, 12, 13)


def selected_indices(node: gs.Node, length: int) -> list[int] | None:
    """Indices picked by a Slice/Gather on axis 0 with constant parameters."""
    if node.op == "Gather":
        if int(node.attrs.get("axis", 0)) != 0:
            return None
        idx = constant_value(node.inputs[1])
        if idx is None:
            return None
        return [int(i) % length for i in idx.reshape(-1)]
    params = _slice_params(node)
    if params is None:
        return None
    starts, ends, axes, steps = params
    if list(axes) != [0]:
        return None
    return list(range(length))[slice(int(starts[0]), int(ends[0]), int(steps[0]))]


def _slice_params(node: gs.Node):
    if "starts" in node.attrs:  # opset < 10
        starts = list(node.attrs["starts"])
        return starts, list(node.attrs["ends"]), list(node.attrs.get("axes", range(len(starts)))), \
            [1] * len(starts)
    given = [t if t.name else None for t in node.inputs[1:5]]
    values = [None if t is None else constant_value(t) for t in given]
    if len(values) < 2 or any(t is not None and v is None for t, v in zip(given, values)):
        return None
    starts, ends = as_int_list(values[0]), as_int_list(values[1])
    axes = as_int_list(values[2]) if len(values) > 2 and values[2] is not None else list(range(len(starts)))
    steps = as_int_list(values[3]) if len(values) > 3 and values[3] is not None else [1] * len(starts)
    return starts, ends, axes, steps


def _unknown_elements(tensor: gs.Tensor) -> list | None:
    shape = tensor.shape
    if shape is not None and len(shape) == 1 and isinstance(shape[0], int):
        return [None] * shape[0]
    return None


def slice_params(node: gs.Node):
    """(starts, ends, axes, steps) of a Slice when all are constant (attrs or inputs), else None."""
    return _slice_params(node)


def as_int_list(value: np.ndarray | None) -> list[int] | None:
    return None if value is None else [int(v) for v in np.asarray(value).reshape(-1)]
