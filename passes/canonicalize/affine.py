"""Canonicalize rules: an affine map ``y = x * S + B`` (S, B constants, scalar or per channel; the
canonical one-Mul-one-Add form) folded into a neighbouring Conv, ConvTranspose, Gemm or MatMul.

fold_into_producer  the affine follows the linear op L directly (L's output read only by it):
    ``S (W x + b) + B = (S W) x + (S b + B)``. This is fold-bn's per-channel Mul/Add rule, and
    canonicalize calls fold-bn's implementation (``passes/fold_bn.py``) rather than repeating it.
    Always exact; MatMul has no bias, so its shift stays as one Add after it.

fold_into_consumer  the affine's output is read only by linear ops (as their data input; Shape
    readers are moved to ``x``, whose shape is the same). Per input channel c of a reader:
    - Conv, ``W'[o, i] = W[o, i] * S[c(o, i)]`` and ``b'[o] = b[o] + sum_{i,k} W[o, i, k] B[c(o, i)]``
      where ``c(o, i) = group(o) * Cin/group + i``; exact only if every kernel tap reads a real
      input value, i.e. the Conv has no padding (1x1 convs and ``pads`` all zero). With zero
      padding the original Conv reads 0 on the border, but ``(0 - B) / S`` would be needed.
    - Gemm (transA = 0), ``A' = A*S + B``: ``op(B)`` rows scaled by S, ``C' = beta C + alpha B op(B)``.
    - MatMul ``X @ W`` (constant 2-D W): rows of W scaled by S; the shift becomes one
      ``Add(B @ W)`` after the MatMul (two element-wise ops become one).
    - ConvTranspose: rows of W (input channels) scaled by S; a shift is not folded, since output
      pixels sum a varying number of input pixels.
    When a reader cannot take the shift (padding, ConvTranspose) but the scale is not all ones
    and has no zeros, only the scale is folded: ``L(x*S + B) = (L∘S)(x + B/S)``, leaving one Add
    with ``B / S`` (computed in float64); a lone shift there is left alone and counted.
Weights are new constants (a shared weight is never modified in place), computed in float64 and
rounded once to the weight's dtype.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from graphc.ir import is_standard_op
from graphc.ir.op_kinds import LINEAR_OPS
from graphc.ir.padding import conv_pads
from graphc.passmanager import PassResult
from graphc.rewrite.affine import (AffineFolder, LinearSite, OperandProblem, input_channel_maps, linear_operands,
                                   per_channel_factor)
from graphc.passes.canonicalize.arithmetic import affine_chain_from, affine_step, merged_affine
from graphc.passes.canonicalize.match import Fired, Outcome, Rewriter, Skip


# -- producer side ------------------------------------------------------------------------------------


def fold_into_producer(rw: Rewriter, node: gs.Node) -> Outcome:
    step = affine_step(rw, node)
    if step is None or rw.produced_by(step[0], *LINEAR_OPS) is None:
        return None
    why: list[str] = []
    if not _fold_bn(rw).fold_affine(node, why):
        return Skip(why[0]) if why else None
    return Fired("fold_into_producer")


def _fold_bn(rw: Rewriter) -> AffineFolder:
    """fold-bn's folder for this round, sharing the rewriter's name factory (no name clashes,
    and no rescan of the graph's names per fold)."""
    folder = rw.memo.get("fold-bn")
    if folder is None:
        folder = AffineFolder(rw.graph, rw.ctx, PassResult(modified=False))
        folder.names = rw.names
        rw.memo["fold-bn"] = folder
    return folder


# -- consumer side ------------------------------------------------------------------------------------


@dataclass
class _Reader:
    """A linear op reading the affine's output ``y`` as its data input."""
    node: gs.Node
    weight: np.ndarray
    bias: np.ndarray | None
    site: LinearSite              # y's layout seen from this reader: rank, channel axis, channels
    shift_reason: str | None   # why a shift cannot fold into it (padding), None if it can


def fold_into_consumer(rw: Rewriter, node: gs.Node) -> Outcome:
    chain = affine_chain_from(rw, node)
    ops = [op for _, op, _ in chain] if chain else []
    if ops not in (["Mul"], ["Add"], ["Mul", "Add"]):
        return None
    x, y = affine_step(rw, node)[0], chain[-1][0].outputs[0]
    users = rw.readers(y)
    linear = [u for u in users if not is_standard_op(u, "Shape")]
    if rw.is_output(y) or not linear:
        return None
    readers = []
    for user in linear:
        reader = _reader(rw, user, y)
        if isinstance(reader, str):
            return Skip(f"affine {reader}") if "Mul" in ops else None
        readers.append(reader)
    if ops == ["Add"] and any(r.node.op == "MatMul" for r in readers):
        return None  # moving a lone shift past a MatMul gains nothing
    scale, shift = merged_affine(chain)
    same_shape = rw.broadcast_keeps_shape(x, scale) and rw.broadcast_keeps_shape(x, shift)
    if len(linear) < len(users) and not same_shape:
        return None  # Shape readers can move to x only if the affine keeps x's shape
    if not all(_x_has_the_channels(rw, x, r, scale, shift) for r in readers):
        return None  # the affine itself broadcasts x up: the reader would see another shape
    vectors = []
    for r in readers:
        dtype = r.weight.dtype
        s, b = per_channel_factor(scale.astype(dtype), r.site, "Mul"), per_channel_factor(shift.astype(dtype), r.site, "Add")
        if isinstance(s, str) or isinstance(b, str):
            reason = (s if isinstance(s, str) else b).replace("per output channel", "per input channel")
            return Skip(f"affine before {r.node.op}: {reason}")
        vectors.append((s, b))
    blocked = [r.shift_reason for r, (_, b) in zip(readers, vectors) if r.shift_reason and np.any(b)]
    if not blocked:
        for r, (s, b) in zip(readers, vectors):
            _fold(rw, r, s, b)
        for user in users:
            _replace_input(user, y, x)
        rw.remove(*(n for n, _, _ in chain))
        return Fired("fold_into_consumer")
    if ops == ["Add"]:
        return Skip(blocked[0])
    if np.any(scale == 0):
        return Skip(f"{blocked[0]}, and the scale has zeros")
    for r, (s, _) in zip(readers, vectors):
        _fold(rw, r, s, np.zeros_like(s))
    _keep_shift_only(rw, chain, x, y, shift / scale)
    return Fired("fold_scale_into_consumer")


def _reader(rw: Rewriter, user: gs.Node, y: gs.Tensor) -> _Reader | str:
    """Describe ``user`` as a reader of ``y`` that can absorb an affine map, or say why not."""
    label = user.op
    if not is_standard_op(user, *LINEAR_OPS):
        return f"feeds a {label}, not a Conv/ConvTranspose/Gemm/MatMul"
    if user.inputs[0] is not y or any(t is y for t in user.inputs[1:]):
        return f"is not only the data input of a {label}"
    operands = linear_operands(user)
    if isinstance(operands, OperandProblem):
        wanted = "a float constant" if operands.part == "weight" else "constant"
        return f"feeds a {label} whose {operands.part} is not {wanted}"
    weight, bias = operands.weight, operands.bias
    if user.op in ("Conv", "ConvTranspose"):
        if weight.ndim < 3:
            return f"feeds a {label} with a rank-{weight.ndim} weight"
        group = int(user.attrs.get("group", 1))
        channels = weight.shape[1] * group if user.op == "Conv" else weight.shape[0]
        site = LinearSite(user, weight, bias, weight.ndim, 1, channels)
        if user.op == "ConvTranspose":
            reason = "a shift before a ConvTranspose is not folded: it spreads unevenly over the output"
        else:
            padded = conv_pads(user, weight)
            reason = "the shift would pass through the zero padding of the Conv it feeds" if padded else None
        return _Reader(user, weight, bias, site, reason)
    if weight.ndim != 2:
        return f"feeds a {label} whose weight is not 2-D"
    if user.op == "Gemm":
        if int(user.attrs.get("transA", 0)):
            return "feeds a Gemm with transA=1"
        channels = weight.shape[1] if int(user.attrs.get("transB", 0)) else weight.shape[0]
        return _Reader(user, weight, bias, LinearSite(user, weight, bias, 2, 1, channels), None)
    rank = rw.rank(y)
    if rank is None or rank < 1:
        return "feeds a MatMul with an input of unknown rank"
    return _Reader(user, weight, None, LinearSite(user, weight, None, rank, rank - 1, weight.shape[0]), None)


def _x_has_the_channels(rw: Rewriter, x: gs.Tensor, r: _Reader, scale: np.ndarray, shift: np.ndarray) -> bool:
    """True if ``x`` already has the reader's rank and channel count, so that the reader can
    read ``x`` in place of ``x*S + B`` (a per-channel constant could broadcast a single channel
    of x up to the reader's channels)."""
    shape = rw.shape(x)
    rank = len(shape) if shape is not None else rw.rank(x)
    if rank != r.site.rank:
        return False
    dim = shape[r.site.axis] if shape is not None else None
    if dim == r.site.channels:
        return True
    return scale.size == 1 and shift.size == 1  # a scalar affine cannot change any dim


def _fold(rw: Rewriter, r: _Reader, s: np.ndarray, b: np.ndarray) -> None:
    """Fold ``x*s + b`` (float64 vectors over r's input channels) into reader ``r``."""
    node, w = r.node, r.weight.astype(np.float64)
    base = node.name or node.outputs[0].name
    delta = None
    if node.op == "Conv":
        per_scale, per_shift = input_channel_maps(r.weight, int(node.attrs.get("group", 1)), s, b)
        spatial = (1,) * (w.ndim - 2)
        new_w = w * per_scale.reshape(per_scale.shape + spatial)
        if np.any(b):
            delta = (w * per_shift.reshape(per_shift.shape + spatial)).reshape(w.shape[0], -1).sum(axis=1)
    elif node.op == "ConvTranspose":
        new_w = w * s.reshape((-1,) + (1,) * (w.ndim - 1))
    elif node.op == "Gemm" and int(node.attrs.get("transB", 0)):
        new_w, delta = w * s[None, :], (w @ b if np.any(b) else None)
    else:  # Gemm (transB=0) and MatMul: W is (K, N)
        new_w, delta = w * s[:, None], (b @ w if np.any(b) else None)
    node.inputs[1] = rw.constant(f"{base}.weight_scaled", new_w.astype(r.weight.dtype))
    if delta is None:
        return
    if node.op == "MatMul":
        _shift_after(rw, node, delta.astype(r.weight.dtype))
        return
    if node.op == "Gemm":
        alpha, beta = float(node.attrs.get("alpha", 1.0)), float(node.attrs.get("beta", 1.0))
        delta = alpha * delta + (beta * r.bias.astype(np.float64) if r.bias is not None else 0.0)
        node.attrs["beta"] = 1.0
    elif r.bias is not None:
        delta = delta + r.bias.astype(np.float64)
    bias = rw.constant(f"{base}.bias_shifted", delta.astype(r.weight.dtype))
    if len(node.inputs) > 2:
        node.inputs[2] = bias
    else:
        node.inputs.append(bias)


def _shift_after(rw: Rewriter, node: gs.Node, delta: np.ndarray) -> None:
    out = node.outputs[0]
    base = node.name or out.name
    mid = rw.variable(out, f"{base}.unshifted", dtype=delta.dtype)
    node.outputs[0] = mid
    rw.add_node("Add", [mid, rw.constant(f"{base}.post_shift", delta)], [out], base=f"{base}.post_shift")


def _keep_shift_only(rw: Rewriter, chain, x: gs.Tensor, y: gs.Tensor, shift: np.ndarray) -> None:
    """Replace the chain by ``Add(x, shift) -> y``."""
    dtype = chain[0][2].dtype
    base = chain[-1][0].name or y.name
    rw.remove(*(n for n, _, _ in chain))
    # y now holds x + shift/scale, not its old value: a new name keeps name-matched comparisons
    # (verify --localize against the original model) from mistaking it for the old tensor.
    y.name = rw.names(f"{y.name}.shift_over_scale")
    rw.add_node("Add", [x, rw.constant(f"{base}.shift_over_scale", shift.astype(dtype))], [y], base=base)


def _replace_input(node: gs.Node, old: gs.Tensor, new: gs.Tensor) -> None:
    for i, t in enumerate(node.inputs):
        if t is old:
            node.inputs[i] = new
