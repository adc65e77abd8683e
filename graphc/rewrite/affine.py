"""Folding a per-channel affine map ``y -> s y + t`` into a neighbouring linear op
(Conv, ConvTranspose, Gemm, MatMul): the machinery of ``fold-bn``, also used by ``canonicalize``.

Maths. In inference mode BatchNormalization is a per-channel affine map on axis 1::

    BN(y)[:, c] = gamma[c] (y[:, c] - mean[c]) / sqrt(var[c] + eps) + beta[c] = s[c] y[:, c] + t[c]
    s = gamma / sqrt(var + eps)          t = beta - mean * s

A constant Mul (``y * m``) or Add (``y + a``) that broadcasts only along the channel axis (or is a
scalar) is the same map with ``(s, t) = (m, 0)`` or ``(1, a)``. Such a map after a linear op L
with weight W and bias b folds into them, since ``s (W x + b) + t = (s W) x + (s b + t)``:

- Conv, W of shape (Cout, Cin/group, k...): ``W'[o] = s[o] W[o]``, ``b' = s b + t``; grouped and
  depthwise Conv are the same, output channels are axis 0 of W whatever the grouping.
- ConvTranspose, W of shape (Cin, Cout/group, k...): output channel ``o = g*(Cout/group) + j``
  comes from ``W[g*Cin/group:(g+1)*Cin/group, j]``, so W is viewed as (group, Cin/group,
  Cout/group, k...) and scaled by ``s`` viewed as (group, 1, Cout/group); ``b' = s b + t``.
- Gemm, ``Y = alpha A op(B) + beta C``: op(B) is scaled along N (rows of B if transB, columns
  otherwise), ``C' = s (beta C) + t`` and ``beta' = 1``.
- MatMul with a constant 2-D weight: ``X @ W`` has its channels on the last axis (W's columns are
  scaled), ``W @ X`` on the second last (W's rows are scaled); MatMul has no bias, so a non-zero
  ``t`` stays as one Add after the MatMul (still one node fewer than BN). BN normalizes axis 1,
  so MatMul + BN folds only when axis 1 is the channel axis: ``X @ W`` with 2-D output,
  ``W @ X`` with 3-D output. Mul folds into ``X @ W`` for any rank; Add does not fold into MatMul.

A BatchNormalization *before* a Conv (BN -> Conv) folds into the Conv's input side: with
``x' = s x + t`` per input channel c (in group g(o) of output channel o),
``Conv(x')[o] = sum_{c,k} W[o,c,k] s[c] x[c, p+k] + sum_{c,k} W[o,c,k] t[c] + b[o]``, i.e.
``W'[o,c] = W[o,c] s[c]`` and ``b'[o] = b[o] + sum_{c,k} W[o,c,k] t[c]``. This is exact only
when every kernel tap reads a real (shifted) value. Zero padding breaks it: the original Conv
reads 0 on the border, but the folded bias counts ``W t`` for border taps too, as if the border
held ``-t / s``. So BN -> Conv folds
when (a) the Conv has no padding (``pads`` all zero and ``auto_pad`` NOTSET/VALID, or
``auto_pad`` SAME with a 1x1 effective kernel, which never pads), or (b) ``t == 0`` on every
channel (then ``BN(0) = 0`` and the zero border is unchanged). Otherwise it is not folded, and
the reason is counted.

Exactness. The folded parameters are computed in float64 from the stored values and rounded
once to the weight's dtype, so the only differences from the unfolded model are the rounding of
``s W`` and the summation order: within rtol 1e-5 / atol 1e-6 in float32. One case goes the
other way: with tiny variances (``s`` in the hundreds) and conv outputs far from zero, the
unfolded model rounds ``y`` to float32 before BN subtracts ``mean``, an error of ``s ulp(y)``
(~1e-5) that the folded model does not make; it is then closer to the exact (float64) result
than the model it replaces (tested).

Size: the maths above and one class (:class:`AffineFolder`: its checks, then its rewrites).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from graphc.ir import (
    NameFactory,
    constant_value,
    consumers,
    is_graph_output,
    is_standard_op,
    producer,
)
from graphc.ir.op_kinds import FLOAT_DTYPES, LINEAR_OPS
from graphc.ir.padding import conv_pads
from graphc.ir.subgraphs import path_name
from graphc.passmanager import Context, PassResult

log = logging.getLogger(__name__)

#: stats key per producer op for BN folded into it.
_BN_KEYS = {"Conv": "conv_bn", "ConvTranspose": "convtranspose_bn", "Gemm": "gemm_bn", "MatMul": "matmul_bn"}


@dataclass
class LinearSite:
    """A linear op whose output channels can absorb a per-channel affine map."""

    node: gs.Node
    weight: np.ndarray
    bias: np.ndarray | None  # Conv/ConvTranspose bias, Gemm C (None if absent)
    rank: int                # rank of the output
    axis: int                # channel axis of the output
    channels: int
    weight_left: bool = False  # MatMul only: W @ X


@dataclass(frozen=True)
class LinearOperands:
    """A linear op's constant float weight (input 1) and constant bias (input 2: Conv/ConvTranspose
    B, Gemm C; None if absent)."""

    weight: np.ndarray
    bias: np.ndarray | None


@dataclass(frozen=True)
class OperandProblem:
    """Why a linear op's operands cannot be rewritten: the part (``weight`` or ``bias``) and what
    is wrong with it (``is not constant``, ``is int8, not float``)."""

    part: str
    problem: str


def linear_operands(node: gs.Node) -> LinearOperands | OperandProblem:
    """The weight and bias of a Conv/ConvTranspose/Gemm to be rewritten in float, or why not: the
    weight must be a float constant, the bias a constant when given. Callers add their own shape
    checks (rank, channels) and word the problem for their rule."""
    weight = constant_value(node.inputs[1]) if len(node.inputs) > 1 else None
    if weight is None:
        return OperandProblem("weight", "is not constant")
    if weight.dtype not in FLOAT_DTYPES:
        return OperandProblem("weight", f"is {weight.dtype}, not float")
    bias = None
    if len(node.inputs) > 2 and node.inputs[2].name:
        bias = constant_value(node.inputs[2])
        if bias is None:
            return OperandProblem("bias", "is not constant")
    return LinearOperands(weight, bias)


class AffineFolder:
    def __init__(self, graph: gs.Graph, ctx: Context, result: PassResult, *, batch_removals: bool = False,
                 names: NameFactory | None = None, path: str = ""):
        self.graph = graph
        self.path = path  # the body ``graph`` is (walk_graphs' path): details name nodes by path
        self.result = result
        self.names = names or NameFactory(graph)
        # batch_removals: removed nodes leave graph.nodes at drop_removed() (one O(N) filter per
        # sweep instead of one per fold); canonicalize uses this class without batching.
        self._batch = batch_removals
        self._removed: dict[int, gs.Node] = {}  # holds the nodes, so their ids stay unique
        # Ranks are read before any rewrite (inference wants a sorted graph); the pass never
        # changes the rank of an existing tensor, so they stay valid through the run.
        wanted = any(is_standard_op(n, "BatchNormalization", "MatMul") for n in graph.nodes)
        self._shapes = ctx.shapes() if wanted else {}

    def remove(self, node: gs.Node) -> None:
        """Disconnect ``node`` and take it out of ``graph.nodes`` (when batching, at the next
        :meth:`drop_removed`)."""
        node.inputs.clear()
        node.outputs.clear()
        if self._batch:
            self._removed[id(node)] = node
        else:
            del self.graph.nodes[next(i for i, n in enumerate(self.graph.nodes) if n is node)]

    def drop_removed(self) -> None:
        if self._removed:
            self.graph.nodes = [n for n in self.graph.nodes if id(n) not in self._removed]
            self._removed.clear()

    # -- rules ---------------------------------------------------------------------------------

    def fold_bn(self, bn: gs.Node, why: list[str]) -> bool:
        reason = _bn_reason(self.graph, bn)
        if reason is not None:
            why.append(reason)
            return False
        scale, shift = _bn_scale_shift(bn)
        x, out = bn.inputs[0], bn.outputs[0]
        src = producer(x)
        if src is not None and is_standard_op(src, *LINEAR_OPS):
            site = self._linear(src, x)
            pattern = f"{src.op}+BatchNormalization"
            if isinstance(site, str):
                why.append(f"{pattern}: {site}")
            elif site.axis != 1:
                why.append(f"{pattern}: {src.op} output channels are not on axis 1, which BN normalizes")
            elif site.channels != scale.size:
                why.append(f"{pattern}: {src.op} has {site.channels} output channels, BN has {scale.size}")
            else:
                self._fold_into_linear(site, bn, scale, shift, out)
                self._record(_BN_KEYS[src.op], bn, src)
                return True
        users = consumers(out)
        if len(users) == 1 and is_standard_op(users[0], "Conv") and not is_graph_output(self.graph, out):
            reason = _conv_input_reason(users[0], out, scale, shift)
            if reason is None:
                self._fold_into_conv_input(users[0], bn, scale, shift)
                self._record("bn_conv", bn, users[0])
                return True
            why.append(f"BatchNormalization+Conv: {reason}")
        if not why:
            why.append("no Conv/ConvTranspose/Gemm/MatMul neighbour to fold into")
        return False

    def fold_affine(self, node: gs.Node, why: list[str]) -> bool:
        """Mul/Add of a linear op's output with a per-channel constant."""
        pair = _variable_and_constant(node)
        if pair is None:
            return False
        y, const = pair
        src = producer(y)
        ops = LINEAR_OPS if node.op == "Mul" else LINEAR_OPS[:3]
        if src is None or not is_standard_op(src, *ops):
            return False
        site = self._linear(src, y)
        if isinstance(site, str):
            why.append(f"{src.op}+{node.op}: {site}")
            return False
        vector = per_channel_factor(const, site, node.op)
        if isinstance(vector, str):
            why.append(f"{src.op}+{node.op}: {vector}")
            return False
        ones, zeros = np.ones(site.channels), np.zeros(site.channels)
        scale, shift = (vector, zeros) if node.op == "Mul" else (ones, vector)
        self._fold_into_linear(site, node, scale, shift, node.outputs[0])
        self._record(f"{src.op.lower()}_{node.op.lower()}", node, src)
        return True

    def standalone_to_mul_add(self, bn: gs.Node) -> None:
        if _bn_reason(self.graph, bn) is not None:
            return
        x, out = bn.inputs[0], bn.outputs[0]
        rank = self._rank(x)
        if rank is None or rank < 2:
            self.result.skip("standalone BatchNormalization with unknown input rank left as is")
            return
        info = self._shapes.get(x.name)
        dtype = _dtype(x) or (info.dtype if info else None) or constant_value(bn.inputs[1]).dtype
        scale, shift = _bn_scale_shift(bn)
        shape = (scale.size,) + (1,) * (rank - 2)
        base = bn.name or out.name
        mid = gs.Variable(self.names(f"{base}.scaled"), dtype=dtype)
        mul = gs.Node("Mul", name=self.names(f"{base}.mul"), outputs=[mid], inputs=[
            x, gs.Constant(self.names(f"{base}.scale"), scale.reshape(shape).astype(dtype))])
        add_inputs = [mid, gs.Constant(self.names(f"{base}.shift"), shift.reshape(shape).astype(dtype))]
        self.remove(bn)
        add = gs.Node("Add", name=self.names(f"{base}.add"), inputs=add_inputs, outputs=[out])
        self.graph.nodes.extend([mul, add])
        self._record("standalone_bn", bn, None)

    # -- checks ----------------------------------------------------------------------------------

    def _linear(self, node: gs.Node, y: gs.Tensor) -> LinearSite | str:
        """Describe ``node``, whose output ``y`` is to absorb an affine map, or say why it cannot."""
        if is_graph_output(self.graph, y):
            return f"{node.op} output is a graph output"
        if len(consumers(y)) != 1:
            return f"{node.op} output has other consumers"
        if len(node.outputs) != 1:
            return f"{node.op} has more than one output"
        if node.op == "MatMul":
            return self._matmul(node)
        operands = linear_operands(node)
        if isinstance(operands, OperandProblem):
            return f"{node.op} {operands.part} {operands.problem}"
        weight, bias = operands.weight, operands.bias
        if node.op == "Gemm":
            if weight.ndim != 2:
                return "Gemm B is not 2-D"
            channels = weight.shape[0] if node.attrs.get("transB", 0) else weight.shape[1]
            return LinearSite(node, weight, bias, 2, 1, channels)
        if weight.ndim < 3:
            return f"{node.op} weight has rank {weight.ndim}"
        group = int(node.attrs.get("group", 1))
        channels = weight.shape[0] if node.op == "Conv" else weight.shape[1] * group
        if node.op == "ConvTranspose" and weight.shape[0] % group:
            return "ConvTranspose input channels are not divisible by group"
        if bias is not None and bias.shape != (channels,):
            return f"{node.op} bias has shape {bias.shape}, expected ({channels},)"
        return LinearSite(node, weight, bias, weight.ndim, 1, channels)

    def _matmul(self, node: gs.Node) -> LinearSite | str:
        left, right = (constant_value(t) for t in node.inputs[:2])
        weight_left = right is None
        weight = left if weight_left else right
        if weight is None or weight.ndim != 2:
            return "MatMul has no constant 2-D weight"
        if weight.dtype not in FLOAT_DTYPES:
            return f"MatMul weight is {weight.dtype}, not float"
        other = node.inputs[1 if weight_left else 0]
        rank = self._rank(other)
        if rank is None:
            return "MatMul input rank is unknown"
        if rank < 2:
            return "MatMul input is 1-D"
        if weight_left:
            return LinearSite(node, weight, None, rank, rank - 2, weight.shape[0], weight_left=True)
        return LinearSite(node, weight, None, rank, rank - 1, weight.shape[1])

    def _rank(self, tensor: gs.Tensor) -> int | None:
        if tensor.shape is not None:
            return len(tensor.shape)
        info = self._shapes.get(tensor.name)
        return len(info.shape) if info is not None and info.shape is not None else None

    # -- rewrites --------------------------------------------------------------------------------

    def _fold_into_linear(self, site: LinearSite, folded: gs.Node, scale: np.ndarray, shift: np.ndarray,
                          out: gs.Tensor) -> None:
        """``site.node`` takes over ``out`` with ``y -> scale * y + shift`` folded in; drops ``folded``."""
        node, dtype = site.node, site.weight.dtype
        base = node.name or out.name
        weight = _scaled_weight(site, scale)
        self._set_constant(node, 0 if site.weight_left else 1, weight, f"{base}.weight_folded")
        self.remove(folded)
        if node.op == "MatMul":
            if not np.any(shift):
                node.outputs[0] = out
                return
            mid = gs.Variable(self.names(f"{base}.out"), dtype=dtype)
            node.outputs[0] = mid
            shape = (site.channels, 1) if site.weight_left else (site.channels,)
            add = gs.Node("Add", name=self.names(f"{base}.shift"), outputs=[out], inputs=[
                mid, gs.Constant(self.names(f"{base}.shift_value"), shift.reshape(shape).astype(dtype))])
            self.graph.nodes.append(add)
            return
        bias = _shifted_bias(site, scale, shift)
        if bias is not None:
            self._set_constant(node, 2, bias.astype(dtype), f"{base}.bias_folded")
            if node.op == "Gemm":
                node.attrs["beta"] = 1.0
        node.outputs[0] = out

    def _fold_into_conv_input(self, conv: gs.Node, bn: gs.Node, scale: np.ndarray, shift: np.ndarray) -> None:
        weight = constant_value(conv.inputs[1])
        bias = constant_value(conv.inputs[2]) if len(conv.inputs) > 2 and conv.inputs[2].name else None
        per_tap_scale, per_tap_shift = input_channel_maps(weight, int(conv.attrs.get("group", 1)), scale, shift)
        spatial = (1,) * (weight.ndim - 2)
        new_weight = _times(weight, per_tap_scale.reshape(per_tap_scale.shape + spatial))
        # sum over taps first (float64 accumulation, no float64 copy of W), then over channels
        tap_sums = weight.reshape(weight.shape[:2] + (-1,)).sum(axis=2, dtype=np.float64)
        delta = (tap_sums * per_tap_shift).sum(axis=1)
        new_bias = delta + (bias.astype(np.float64) if bias is not None else 0.0)
        base = conv.name or conv.outputs[0].name
        x = bn.inputs[0]
        self.remove(bn)
        conv.inputs[0] = x
        self._set_constant(conv, 1, new_weight, f"{base}.weight_folded")
        if bias is not None or np.any(delta):
            self._set_constant(conv, 2, new_bias.astype(weight.dtype), f"{base}.bias_folded")

    def _set_constant(self, node: gs.Node, index: int, values: np.ndarray, name: str) -> None:
        """Make input ``index`` of ``node`` the constant ``values``.

        The constant already there is updated in place when only this input reads it: its old
        array is then freed at once. A replaced Constant would live on until Python's cycle
        collector runs (graphsurgeon tensors and their node lists form reference cycles), which
        on a 700 MB model doubles the peak memory. A shared constant gets a new one instead."""
        old = node.inputs[index] if index < len(node.inputs) else None
        if isinstance(old, gs.Constant) and sum(t is old for t in node.inputs) == 1 \
                and [n is node for n in consumers(old)] == [True] and not is_graph_output(self.graph, old):
            old.values = values
            return
        _set_input(node, index, gs.Constant(self.names(name), values))

    def _record(self, key: str, folded: gs.Node, into: gs.Node | None) -> None:
        self.result.count(key)
        node = path_name(self.path, folded)
        target = path_name(self.path, into) if into is not None else None
        self.result.details.append({"rule": key, "node": node, "into": target})
        log.debug("%s: %s folded into %s", key, node, target or "Mul+Add")


# -- BatchNormalization -----------------------------------------------------------------------------


def _bn_reason(graph: gs.Graph, bn: gs.Node) -> str | None:
    """Why ``bn`` is not an inference-mode per-channel affine map with constant parameters."""
    if int(bn.attrs.get("training_mode", 0)) == 1:
        return "BatchNormalization is in training mode (training_mode=1)"
    if any(consumers(o) or is_graph_output(graph, o) for o in bn.outputs[1:]):
        return "BatchNormalization is in training mode (its running statistics are read)"
    if int(bn.attrs.get("spatial", 1)) != 1:
        return "BatchNormalization has spatial=0"
    params = [constant_value(t) for t in bn.inputs[1:5]]
    if len(params) != 4 or any(p is None for p in params):
        return "BatchNormalization parameters are not constant"
    if any(p.ndim != 1 or p.shape != params[0].shape or p.dtype not in FLOAT_DTYPES for p in params):
        return "BatchNormalization parameters are not float vectors of one length"
    if np.any(params[3].astype(np.float64) + _epsilon(bn) <= 0):
        return "BatchNormalization has var + epsilon <= 0"
    return None


def _epsilon(bn: gs.Node) -> float:
    return float(bn.attrs.get("epsilon", 1e-5))


def _bn_scale_shift(bn: gs.Node) -> tuple[np.ndarray, np.ndarray]:
    gamma, beta, mean, var = (constant_value(t).astype(np.float64) for t in bn.inputs[1:5])
    scale = gamma / np.sqrt(var + _epsilon(bn))
    return scale, beta - mean * scale


# -- Mul / Add --------------------------------------------------------------------------------------


def _variable_and_constant(node: gs.Node) -> tuple[gs.Tensor, np.ndarray] | None:
    if len(node.inputs) != 2 or len(node.outputs) != 1:
        return None
    a, b = node.inputs
    if constant_value(b) is not None and constant_value(a) is None:
        return a, constant_value(b)
    if constant_value(a) is not None and constant_value(b) is None:
        return b, constant_value(a)
    return None


def per_channel_factor(const: np.ndarray, site: LinearSite, op: str) -> np.ndarray | str:
    """``const`` as a float64 vector over the channels, if it broadcasts only along them."""
    what = f"{op} constant of shape {const.shape}"
    if const.dtype != site.weight.dtype:
        return f"{op} constant is {const.dtype}, {site.node.op} weight {site.weight.dtype}"
    if const.ndim > site.rank:
        return f"{what} would broadcast {site.node.op} output to a higher rank"
    padded = (1,) * (site.rank - const.ndim) + const.shape
    for axis, dim in enumerate(padded):
        if dim != 1 and not (axis == site.axis and dim == site.channels):
            return f"{what} is not per output channel of {site.node.op}"
    flat = const.astype(np.float64).reshape(-1)
    return np.full(site.channels, flat[0]) if flat.size == 1 else flat


# -- weights ---------------------------------------------------------------------------------------


def _scaled_weight(site: LinearSite, scale: np.ndarray) -> np.ndarray:
    """The weight with each output channel scaled, in the weight's dtype."""
    w = site.weight
    op = site.node.op
    if op == "Conv":
        return _times(w, scale.reshape((-1,) + (1,) * (w.ndim - 1)))
    if op == "ConvTranspose":
        group = int(site.node.attrs.get("group", 1))
        view = w.reshape((group, w.shape[0] // group, w.shape[1]) + w.shape[2:])
        factor = scale.reshape((group, 1, w.shape[1]) + (1,) * (w.ndim - 2))
        return _times(view, factor).reshape(w.shape)
    if op == "Gemm":
        return _times(w, scale[:, None] if site.node.attrs.get("transB", 0) else scale[None, :])
    return _times(w, scale[:, None] if site.weight_left else scale[None, :])


def _times(weight: np.ndarray, factor: np.ndarray) -> np.ndarray:
    """``weight * factor`` computed in float64 and rounded once to the weight's dtype.

    The ufunc casts through small buffers, so no float64 copy of the weight is ever made: on a
    700 MB model, full-size float64 temporaries cost more peak memory than the weights do."""
    out = np.empty(weight.shape, weight.dtype)
    return np.multiply(weight, factor, out=out, dtype=np.float64, casting="unsafe")


def _shifted_bias(site: LinearSite, scale: np.ndarray, shift: np.ndarray) -> np.ndarray | None:
    """The new bias (Gemm: C with beta folded in), or None if the op needs none."""
    if site.node.op == "Gemm":
        if site.bias is None:
            return shift if np.any(shift) else None
        beta = float(site.node.attrs.get("beta", 1.0))
        return scale * (beta * site.bias.astype(np.float64)) + shift
    if site.bias is None:
        return shift if np.any(shift) else None
    return scale * site.bias.astype(np.float64) + shift


def input_channel_maps(weight: np.ndarray, group: int, scale: np.ndarray,
                        shift: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per (output channel, input channel within group) values of ``scale`` and ``shift``."""
    cout, cin_group = weight.shape[:2]
    which_group = np.arange(cout) // (cout // group)
    return (scale.reshape(group, cin_group)[which_group],
            shift.reshape(group, cin_group)[which_group])


def _conv_input_reason(conv: gs.Node, x: gs.Tensor, scale: np.ndarray, shift: np.ndarray) -> str | None:
    """Why BN -> ``conv`` (``x`` is BN's output) cannot fold into the Conv's weights."""
    if conv.inputs[0] is not x or any(t is x for t in conv.inputs[1:]):
        return "BatchNormalization output is not the Conv's data input"
    operands = linear_operands(conv)
    if isinstance(operands, OperandProblem):
        return f"Conv {operands.part} after BatchNormalization {operands.problem}"
    weight = operands.weight
    group = int(conv.attrs.get("group", 1))
    cout = weight.shape[0]
    if weight.ndim < 3 or weight.shape[1] * group != scale.size or cout % group:
        return "Conv input channels do not match BatchNormalization"
    if conv_pads(conv, weight) and np.any(shift):
        return "Conv after BatchNormalization pads with zeros and the BN shift is non-zero"
    return None



# -- graph editing ---------------------------------------------------------------------------------


def _set_input(node: gs.Node, index: int, tensor: gs.Tensor) -> None:
    while len(node.inputs) < index:
        node.inputs.append(gs.Variable.empty())
    if len(node.inputs) > index:
        node.inputs[index] = tensor
    else:
        node.inputs.append(tensor)


def _dtype(tensor: gs.Tensor) -> np.dtype | None:
    try:
        return np.dtype(tensor.dtype) if tensor.dtype is not None else None
    except TypeError:
        return None
