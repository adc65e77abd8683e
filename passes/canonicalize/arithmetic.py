"""Canonicalize rules: element-wise arithmetic by constants, no-op nodes, layout pairs.

- identity        nodes that return their input: Identity, inference Dropout, Cast to the same
                  type, identity Transpose, Reshape/Expand to the input's own static shape,
                  single-input Concat/Sum/Max/Min/Mean, zero Pad, ``x*1``, ``x/1``, ``x+0``,
                  ``x-0``, ``x^1`` (only when the constant does not broadcast the input up).
- div_to_mul      ``x / c`` -> ``x * (1/c)`` for a float constant without zeros; the reciprocal is
                  computed in float64 and rounded once, so results differ by at most ~1 ulp.
- sub_to_add      ``x - c`` -> ``x + (-c)`` (exact).
- affine_chain    a chain of Mul/Add by constants, each intermediate read only by the next,
                  becomes one ``Mul(S)`` then one ``Add(B)``: folding ``x -> x*c`` and
                  ``x -> x + c`` into (S, B) gives ``S = prod c_mul`` and ``B = ((b1*s2) + b2)...``
                  (computed in float64). A factor of ones or a shift of zeros is dropped when it
                  does not change the output's shape. This is the form later passes expect: a
                  remaining affine is exactly one Mul followed by one Add.
- transpose_pair  ``Transpose(p2)(Transpose(p1)(x))`` = ``Transpose(p1[p2])(x)``; removed if that
                  is the identity.
- transpose_to_reshape  a Transpose that only moves size-1 axes keeps the memory order: it is a
                  Reshape to the output's static shape (which can then merge with neighbours).
- reshape_chain   Reshape of the output of a Reshape/Flatten/Squeeze/Unsqueeze reads the original
                  tensor instead (a reshape depends only on the element order, which those keep);
                  ``0`` entries of the target are first resolved from the static intermediate shape.
All are exact in the sense of the pass: bit-identical, except div_to_mul and affine_chain, whose
rounding differs by a few ulp.
"""
from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs
from onnx.helper import tensor_dtype_to_np_dtype

from graphc.ir import constant_value, consumers, is_standard_op
from graphc.ir.op_kinds import FLOAT_DTYPES
from graphc.passes.canonicalize.match import (
    Fired,
    Outcome,
    Rewriter,
    Skip,
    const_operand,
)

#: ops that neither move nor change elements, only the shape
SHAPE_ONLY = ("Reshape", "Flatten", "Squeeze", "Unsqueeze")
#: identity values of Mul/Div/Pow (1) and Add/Sub (0), with the constant's position allowed
_NEUTRAL = {"Mul": (1.0, (0, 1)), "Div": (1.0, (1,)), "Pow": (1.0, (1,)), "Add": (0.0, (0, 1)), "Sub": (0.0, (1,))}


# -- identity ---------------------------------------------------------------------------------------


def identity(rw: Rewriter, node: gs.Node) -> Outcome:
    keep = _noop_input(rw, node)
    if keep is None:
        return None
    if node.op == "Dropout":
        del node.outputs[1:]
    if rw.bypass(node, keep):
        return Fired("identity")
    return Skip(f"no-op {node.op} writes a graph output that its input cannot take over")


def _noop_input(rw: Rewriter, node: gs.Node) -> gs.Tensor | None:
    """The input ``node`` returns unchanged, if it is a no-op."""
    if not node.inputs or len(node.outputs) < 1:
        return None
    x, op = node.inputs[0], node.op
    if op == "Identity":
        return x
    if op == "Dropout":
        return x if _dropout_is_noop(node) else None
    if op in ("Concat", "Sum", "Max", "Min", "Mean"):
        return x if len(node.inputs) == 1 else None
    if op in _NEUTRAL:
        return _neutral_operand(rw, node)
    if op == "Cast":
        to = node.attrs.get("to")
        dtype = rw.dtype(x)
        same = to is not None and dtype is not None and np.dtype(tensor_dtype_to_np_dtype(to)) == dtype
        return x if same else None
    if op == "Transpose":
        perm = node.attrs.get("perm")
        return x if perm is not None and list(perm) == list(range(len(perm))) else None
    if op in ("Reshape", "Expand"):
        return x if _same_static_shape(rw, x, node.outputs[0], node) else None
    if op == "Pad":
        return _zero_pad(rw, node)
    return None


def _neutral_operand(rw: Rewriter, node: gs.Node) -> gs.Tensor | None:
    found = const_operand(node)
    if found is None:
        return None
    x, value, index = found
    neutral, positions = _NEUTRAL[node.op]
    if index not in positions or value.size == 0 or not np.all(value == neutral):
        return None
    if rw.dtype(x) != value.dtype or not rw.broadcast_keeps_shape(x, value):
        return None
    return x


def _dropout_is_noop(node: gs.Node) -> bool:
    if len(node.outputs) > 1 and consumers(node.outputs[1]):
        return False
    if len(node.inputs) > 2 and node.inputs[2].name:
        training = constant_value(node.inputs[2])
        return training is not None and not bool(training)
    return True


def _same_static_shape(rw: Rewriter, x: gs.Tensor, y: gs.Tensor, node: gs.Node) -> bool:
    src = rw.static_shape(x)
    if src is None:
        return False
    if node.op == "Reshape":
        target = _resolved_target(node, src)
        return target is not None and tuple(target) == src
    shape = constant_value(node.inputs[1]) if len(node.inputs) > 1 else None
    if shape is None:
        return False
    try:
        return tuple(np.broadcast_shapes(src, tuple(int(d) for d in shape.reshape(-1)))) == src
    except ValueError:
        return False


def _resolved_target(node: gs.Node, src_shape: tuple[int, ...]) -> list[int] | None:
    """A Reshape's target with 0 (copy) and -1 (infer) resolved against the input's shape."""
    target = constant_value(node.inputs[1]) if len(node.inputs) > 1 else None
    if target is None:
        return None
    dims = [int(d) for d in target.reshape(-1)]
    if not int(node.attrs.get("allowzero", 0)):
        for i, d in enumerate(dims):
            if d == 0:
                if i >= len(src_shape):
                    return None
                dims[i] = src_shape[i]
    if dims.count(-1) == 1:
        known = int(np.prod([d for d in dims if d != -1]))
        total = int(np.prod(src_shape))
        if known and total % known == 0:
            dims[dims.index(-1)] = total // known
    return dims


def _zero_pad(rw: Rewriter, node: gs.Node) -> gs.Tensor | None:
    if "pads" in node.attrs:
        pads = node.attrs["pads"]
    elif len(node.inputs) > 1:
        pads = constant_value(node.inputs[1])
    else:
        return None
    if pads is None or np.any(np.asarray(pads) != 0):
        return None
    return node.inputs[0]


# -- Div / Sub by constants ---------------------------------------------------------------------


def div_to_mul(rw: Rewriter, node: gs.Node) -> Outcome:
    found = const_operand(node)
    if found is None or found[2] != 1 or not _float_operands(rw, found):
        return None
    x, value, _ = found
    if np.any(value == 0) or not np.all(np.isfinite(value)):
        return Skip("Div by a constant with zeros or non-finite values is kept")
    reciprocal = (1.0 / value.astype(np.float64)).astype(value.dtype)
    node.op = "Mul"
    node.inputs[1] = rw.constant(f"{node.name or 'div'}.reciprocal", reciprocal)
    return Fired("div_to_mul")


def sub_to_add(rw: Rewriter, node: gs.Node) -> Outcome:
    found = const_operand(node)
    if found is None or found[2] != 1 or not _float_operands(rw, found):
        return None
    node.op = "Add"
    node.inputs[1] = rw.constant(f"{node.name or 'sub'}.negated", -found[1])
    return Fired("sub_to_add")


def _float_operands(rw: Rewriter, found) -> bool:
    x, value, _ = found
    return value.dtype in FLOAT_DTYPES and rw.dtype(x) == value.dtype


# -- Mul/Add chains -------------------------------------------------------------------------------


def affine_step(rw: Rewriter, node: gs.Node, x: gs.Tensor | None = None):
    """``node`` as one step ``y = x*c`` / ``y = x + c`` with a float constant c of x's dtype:
    returns (x, op, c) or None."""
    if not is_standard_op(node, "Mul", "Add"):
        return None
    found = const_operand(node)
    if found is None or (x is not None and found[0] is not x) or not _float_operands(rw, found):
        return None
    return found[0], node.op, found[1]


def affine_chain_from(rw: Rewriter, node: gs.Node) -> list[tuple[gs.Node, str, np.ndarray]] | None:
    """The maximal Mul/Add-by-constant chain starting at ``node`` (None if ``node`` continues a
    chain that starts earlier)."""
    step = affine_step(rw, node)
    if step is None:
        return None
    before = rw.produced_by(step[0], "Mul", "Add")
    if before is not None and affine_step(rw, before) is not None and rw.sole_reader(step[0]) is node:
        return None
    chain = [(node, step[1], step[2])]
    while True:
        nxt = rw.sole_reader(chain[-1][0].outputs[0], "Mul", "Add")
        if nxt is not None and id(nxt) in rw.protected:
            return chain
        step = affine_step(rw, nxt, chain[-1][0].outputs[0]) if nxt is not None else None
        if step is None:
            return chain
        chain.append((nxt, step[1], step[2]))


def merged_affine(chain) -> tuple[np.ndarray, np.ndarray]:
    """(S, B) in float64 with ``chain(x) = x * S + B``."""
    scale, shift = np.ones(()), np.zeros(())
    for _, op, c in chain:
        c = c.astype(np.float64)
        if op == "Mul":
            scale, shift = scale * c, shift * c
        else:
            shift = shift + c
    return scale, shift


def affine_chain(rw: Rewriter, node: gs.Node) -> Outcome:
    chain = affine_chain_from(rw, node)
    if chain is None:
        return None
    x = const_operand(node)[0]
    ops = [op for _, op, _ in chain]
    scale, shift = merged_affine(chain)
    keep_scale = not (np.all(scale == 1) and _droppable(rw, x, scale, shift))
    keep_shift = not (np.all(shift == 0) and _droppable(rw, x, shift, scale if keep_scale else np.zeros(())))
    wanted = ["Mul"] * keep_scale + ["Add"] * keep_shift
    if ops == wanted:
        return None  # already canonical
    dtype = chain[0][2].dtype
    out = chain[-1][0].outputs[0]
    base = chain[-1][0].name or out.name
    if not wanted:
        if len(chain) == 1:
            return None  # a lone x*1 or x+0: the identity rule's business
        first = chain[0][0]
        rw.remove(*(n for n, _, _ in chain[1:]))
        first.outputs[0] = out
        if not rw.bypass(first, x):  # out is a graph output x cannot take over: keep x * 1
            first.op = "Mul"
            first.inputs[1 - _var_index(first, x)] = rw.constant(f"{base}.one", np.ones((), dtype))
        return Fired("affine_chain")
    rw.remove(*(n for n, _, _ in chain))
    y = x
    if keep_scale:
        y = out if not keep_shift else rw.variable(x, f"{base}.scaled")
        rw.add_node("Mul", [x, rw.constant(f"{base}.scale", scale.astype(dtype))], [y], base=f"{base}.mul")
    if keep_shift:
        rw.add_node("Add", [y, rw.constant(f"{base}.shift", shift.astype(dtype))], [out], base=f"{base}.add")
    return Fired("affine_chain")


def _var_index(node: gs.Node, x: gs.Tensor) -> int:
    return 0 if node.inputs[0] is x else 1


def _droppable(rw: Rewriter, x: gs.Tensor, dropped: np.ndarray, kept: np.ndarray) -> bool:
    """True if leaving out an operand of shape ``dropped.shape`` keeps the output shape, given
    that ``kept`` still broadcasts with ``x``."""
    if dropped.ndim == 0:
        return True
    shape = rw.shape(x)
    rank = max(len(shape) if shape is not None else 0, kept.ndim)
    if dropped.ndim > rank:
        return False
    x_dims = (None,) * (rank - len(shape)) + tuple(shape) if shape is not None else (None,) * rank
    k_dims = (1,) * (rank - kept.ndim) + kept.shape
    d_dims = (1,) * (rank - dropped.ndim) + dropped.shape
    return all(d == 1 or d == xd or d == kd for d, xd, kd in zip(d_dims, x_dims, k_dims))


# -- layout -----------------------------------------------------------------------------------------


def transpose_pair(rw: Rewriter, node: gs.Node) -> Outcome:
    first = rw.produced_by(node.inputs[0], "Transpose")
    if first is None:
        return None
    p1, p2 = _perm(rw, first), _perm(rw, node)
    if p1 is None or p2 is None or len(p1) != len(p2):
        return None
    composed = [p1[i] for i in p2]
    x = first.inputs[0]
    if composed == list(range(len(composed))):
        if not rw.bypass(node, x):
            return Skip("Transpose pair cancels but writes a graph output")
        return Fired("transpose_pair")
    node.inputs[0] = x
    node.attrs["perm"] = composed
    return Fired("transpose_pair")


def _perm(rw: Rewriter, node: gs.Node) -> list[int] | None:
    perm = node.attrs.get("perm")
    if perm is not None:
        return [int(p) for p in perm]
    rank = rw.rank(node.inputs[0])
    return None if rank is None else list(range(rank))[::-1]


def transpose_to_reshape(rw: Rewriter, node: gs.Node) -> Outcome:
    shape = rw.static_shape(node.inputs[0])
    perm = _perm(rw, node)
    if shape is None or perm is None or perm == list(range(len(perm))):
        return None
    moved = [p for p in perm if shape[p] != 1]
    if moved != sorted(moved):
        return None
    target = np.array([shape[p] for p in perm], dtype=np.int64)
    node.op = "Reshape"
    node.attrs.clear()
    node.inputs.append(rw.constant(f"{node.name or 'transpose'}.shape", target))
    return Fired("transpose_to_reshape")


def reshape_chain(rw: Rewriter, node: gs.Node) -> Outcome:
    first = rw.produced_by(node.inputs[0], *SHAPE_ONLY)
    if first is None or len(node.inputs) < 2 or constant_value(node.inputs[1]) is None:
        return None
    target = constant_value(node.inputs[1]).reshape(-1).astype(np.int64)
    if np.any(target == 0) and not int(node.attrs.get("allowzero", 0)):
        mid = rw.static_shape(node.inputs[0])
        if mid is None or len(mid) < len(target):
            return None
        target = np.array([mid[i] if d == 0 else d for i, d in enumerate(target)], dtype=np.int64)
        node.inputs[1] = rw.constant(f"{node.name or 'reshape'}.shape", target)
    node.inputs[0] = first.inputs[0]
    return Fired("reshape_chain")
