"""Canonicalize rule: Reshape targets computed from the input's own shape become constants.

Exporters spell ``x.view(x.size(0), x.size(1), -1)`` (torch) or
``tf.reshape(x, concat([shape(x)[:2], [-1]]))`` as a small shape subgraph evaluated on every run::

    target = Concat(Unsqueeze(Gather(Shape(x), i)) | Slice(Shape(x), a, b) | Shape(x) | c, ...)
    y      = Reshape(x, target)

ONNX Reshape says the same with a constant: with ``allowzero = 0`` a target entry ``0`` copies
the input's dimension at the same position. So when every entry of the target that is computed
is dimension ``p`` of ``x`` itself at position ``p``, the target is the constant with ``0`` at
those positions and the constants' own values elsewhere::

    Reshape(x, Concat(Slice(Shape(x), 0, 2), [-1]))   ->   Reshape(x, [0, 0, -1])

Exact for every input shape: an entry that was ``d_p`` becomes ``0``, which copies ``d_p``; when
``d_p`` is itself 0 the original entry ``0`` copied it too (``allowzero = 0``). The Shape, Gather,
Slice, Unsqueeze and Concat nodes then have no reader and are removed (on a 1-sentence BERT
encoder that is 4 of ~190 nodes per attention layer; the per-node cost of tiny ops is what short
sequences pay).

What a computed entry may be built from (read back from the target, at most ``MAX_DEPTH``
nodes deep): ``Shape(x)`` (with ``start``/``end``), ``Slice`` of it by constant starts/ends along
axis 0 with step 1, ``Gather`` of it by constant indices along axis 0, ``Unsqueeze``/``Reshape``
of a scalar into one entry, ``Cast`` to int64, ``Concat`` along axis 0, and 1-D int64 constants.

Not needed when ``x``'s shape is static: fold-constants then evaluates the target to numbers.
Left alone: ``allowzero = 1`` (there ``0`` is an empty dimension, not a copy); an entry that is a
dimension of ``x`` at another position, or of another tensor (``x.view(y.size(0), -1)``: equal
only if the shapes say so, and a ``-1`` in its place is not exact for empty tensors) - counted
with the reason; targets built from anything else (arithmetic on dims, e.g. ``d0 * d1``) are not
matched.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from graphc.ir import constant_value, is_standard_op
from graphc.passes.canonicalize.match import Fired, Outcome, Rewriter, Skip

#: how many nodes back from the Reshape's target the shape subgraph is read
MAX_DEPTH = 6
#: Cast's ``to`` for int64 (TensorProto.INT64)
INT64 = 7


@dataclass(frozen=True)
class Entry:
    """One element of a shape vector: dimension ``dim`` of the tensor ``source`` (``value`` None),
    or the constant ``value``."""

    value: int | None = None
    source: gs.Tensor | None = None
    dim: int | None = None


def _constant_entries(tensor: gs.Tensor) -> list[Entry] | None:
    value = constant_value(tensor)
    if value is None or value.ndim > 1 or value.dtype.kind not in "iu":
        return None
    return [Entry(value=int(v)) for v in value.reshape(-1)]


def _shape_entries(rw: Rewriter, node: gs.Node) -> list[Entry] | None:
    """Entries of ``Shape(x)`` (``start``/``end`` attributes clamped as the operator does)."""
    x = node.inputs[0]
    rank = rw.rank(x)
    if rank is None:
        return None
    dims = list(range(rank))[int(node.attrs.get("start", 0)):node.attrs.get("end", None)]
    return [Entry(source=x, dim=d) for d in dims]


def _axis_zero(node: gs.Node, axes: np.ndarray | None) -> bool:
    return axes is None or (axes.size == 1 and int(axes.reshape(-1)[0]) in (0, -1))


def _slice_entries(entries: list[Entry], node: gs.Node) -> list[Entry] | None:
    ins = node.inputs
    if len(ins) < 3:  # opset < 10: starts/ends are attributes
        starts, ends, axes, steps = (node.attrs.get("starts"), node.attrs.get("ends"), node.attrs.get("axes"), None)
        starts, ends = (np.asarray(v) if v is not None else None for v in (starts, ends))
        axes = np.asarray(axes) if axes is not None else None
    else:
        starts, ends = constant_value(ins[1]), constant_value(ins[2])
        axes = constant_value(ins[3]) if len(ins) > 3 and ins[3].name else None
        steps = constant_value(ins[4]) if len(ins) > 4 and ins[4].name else None
        if (len(ins) > 3 and ins[3].name and axes is None) or (len(ins) > 4 and ins[4].name and steps is None):
            return None
    if starts is None or ends is None or starts.size != 1 or ends.size != 1 or not _axis_zero(node, axes):
        return None
    if steps is not None and (steps.size != 1 or int(steps.reshape(-1)[0]) != 1):
        return None
    # Python's slicing clamps start/end exactly as Slice does for step 1 (negative: + length)
    return entries[int(starts.reshape(-1)[0]):int(ends.reshape(-1)[0])]


def _gather_entries(entries: list[Entry], node: gs.Node) -> list[Entry] | None:
    index = constant_value(node.inputs[1])
    if index is None or index.ndim > 1 or int(node.attrs.get("axis", 0)) not in (0, -1):
        return None
    picked = []
    for i in index.reshape(-1).tolist():
        i = i + len(entries) if i < 0 else i
        if not 0 <= i < len(entries):
            return None
        picked.append(entries[i])
    return picked


def shape_entries(rw: Rewriter, tensor: gs.Tensor, depth: int = 0) -> list[Entry] | None:
    """The elements of the 1-D (or scalar) int64 ``tensor`` as dims and constants, or None when
    it is computed any other way (module doc)."""
    if isinstance(tensor, gs.Constant):
        return _constant_entries(tensor)
    node = rw.produced_by(tensor)
    if node is None or depth >= MAX_DEPTH or len(node.outputs) != 1:
        return None
    if node.op == "Shape":
        return _shape_entries(rw, node)
    if node.op == "Concat" and int(node.attrs.get("axis", 0)) in (0, -1):
        parts = [shape_entries(rw, t, depth + 1) for t in node.inputs]
        return None if any(p is None for p in parts) else [e for p in parts for e in p]
    inner = shape_entries(rw, node.inputs[0], depth + 1) if node.inputs else None
    if inner is None:
        return None
    if node.op == "Slice":
        return _slice_entries(inner, node)
    if node.op == "Gather":
        return _gather_entries(inner, node)
    if node.op in ("Unsqueeze", "Reshape", "Squeeze", "Identity") and len(inner) == 1:
        return inner  # a scalar <-> a one-element vector: the same single entry
    if node.op == "Cast" and int(node.attrs.get("to", 0)) == INT64:
        return inner
    return None


def reshape_own_shape(rw: Rewriter, node: gs.Node) -> Outcome:
    """``Reshape(x, target computed from Shape(x))`` -> ``Reshape(x, constant)`` (module doc)."""
    if not is_standard_op(node, "Reshape") or len(node.inputs) < 2 or isinstance(node.inputs[1], gs.Constant):
        return None
    x = node.inputs[0]
    if rw.static_shape(x) is not None:
        return None  # fold-constants evaluates the whole target to numbers
    entries = shape_entries(rw, node.inputs[1])
    if entries is None or all(e.value is not None for e in entries):
        return None  # not this pattern, or all constant (fold-constants' work)
    if int(node.attrs.get("allowzero", 0)):
        return Skip("Reshape target from the input's shape: allowzero=1 (0 is an empty dimension there)")
    for position, e in enumerate(entries):
        if e.value is None and (e.source is not x or e.dim != position):
            where = "another tensor" if e.source is not x else f"input dimension {e.dim}"
            return Skip(f"Reshape target entry {position} is {where}, not input dimension {position}")
    target = np.asarray([0 if e.value is None else e.value for e in entries], dtype=np.int64)
    node.inputs[1] = rw.constant(f"{node.name or 'reshape'}.shape", target)
    return Fired("reshape_own_shape")
