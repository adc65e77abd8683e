"""What a group's channels carry once their producers are zeroed, and where they leave the group.

*Masking* group channel j zeroes, in every producer of the group, the weights of output j and its
bias (the layer's bias input, or a per-channel bias ``Add`` right after it). Those outputs are then
exactly 0; downstream, norms and activations turn 0 into per-channel constants (BatchNorm gives
``beta - mean * gamma / sqrt(var + eps)``, then ``relu`` of that, an SE gate gives
``hardsigmoid(0) = 0.5``...). *Removal* drops the channels instead; to compute the same function
it must add, at each consumer (a Conv/Gemm/MatMul reading the channels through its weights), what
those constants contributed. That is possible when the value reaching the consumer is one
constant per channel.

This module runs the group's nodes on one float per channel position (NaN: "not a per-channel
constant") in topological order and lists the *sinks* (consumers) with the values they receive.
A NaN reaching a sink makes removal inexact; the reason names the node that produced it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import onnx_graphsurgeon as gs

from graphc.ir import node_label

#: ops whose output position p is exactly input position map(p) (values move, never change).
POSITIONAL = frozenset({
    "Identity", "Dropout", "Transpose", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Concat",
    "Split", "Slice", "Gather", "Tile", "Expand", "MaxPool", "GlobalAveragePool", "GlobalMaxPool",
    "Resize", "Upsample", "ReduceMean", "ReduceMax", "ReduceMin",
})
#: ops that keep an exact 0 but change any other constant in a way we do not model.
ZERO_PRESERVING = frozenset({"ReduceSum", "ReduceL1", "ReduceL2", "ReduceSumSquare", "ReduceProd",
                             "LpPool", "GlobalLpPool", "MatMul"})


@dataclass
class Sink:
    node: gs.Node
    slot: tuple[str, int]           # the data slot the consumer reads the channels from
    kind: str                       # conv | conv-transpose | gemm | matmul | contraction


@dataclass
class MaskedValues:
    values: dict[tuple[str, int], np.ndarray]
    sinks: list[Sink] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def compute_masked_values(a, group) -> MaskedValues:
    keys = set(group.positions)
    nodes = _group_nodes(a, keys)
    producers = {id(m.node) for m in group.producers}
    result = MaskedValues({})
    why: dict = {}
    for node in nodes:
        outs = {t.name for t in node.outputs}
        for key in [k for k in keys if k[0] in outs]:
            if id(node) in producers:
                result.values[key] = np.zeros(a.slot_size[key])
                continue
            value, cause = _evaluate(a, node, key, keys, result.values, why)
            result.values[key] = value
            why[key] = cause
    _find_sinks(a, group, keys, result, why)
    return result


def _group_nodes(a, keys) -> list[gs.Node]:
    found: dict[int, gs.Node] = {}
    by_slot = a.links_by_slot()
    for key in keys:
        for link in by_slot.get(key, ()):
            if link.node is not None:
                found.setdefault(id(link.node), link.node)
    return sorted(found.values(), key=lambda n: a.order.get(id(n), 0))


def value_of(a, key, keys, values) -> np.ndarray:
    """Per-position value of a slot: computed, or read from a constant (biases count as 0)."""
    if key in values:
        return values[key]
    tensor = a.tensor(key[0])
    size = a.slot_size[key]
    if isinstance(tensor, gs.Constant):
        if key[0] in a.bias_constants:
            return np.zeros(size)
        arr = np.moveaxis(np.asarray(tensor.values, dtype=np.float64), key[1], 0).reshape(size, -1)
        if arr.shape[1] and (arr == arr[:, :1]).all():
            return arr[:, 0].copy()
    return np.full(size, np.nan)


def _evaluate(a, node, key, keys, values, why):
    """(values of output slot ``key``, name of the node that made NaN) for one node."""
    op = node.op
    links = [l for l in a.node_links.get(id(node), ()) if key in (l.a, l.b)]
    inputs = [(l.b, l.b_idx, l.a_idx) if l.a == key else (l.a, l.a_idx, l.b_idx) for l in links]
    inputs = [(k, src, dst) for k, src, dst in inputs if k[0] in {t.name for t in node.inputs}]
    size = a.slot_size[key]
    cause = next((why.get(k) for k, _, _ in inputs if why.get(k)), None)
    if op in POSITIONAL or op in ZERO_PRESERVING or op in ("AveragePool", "Pad"):
        out = np.full(size, np.nan)
        for k, src, dst in inputs:
            v = value_of(a, k, keys, values)
            if src is None:
                out[:] = v
            else:
                _scatter_agreeing(out, dst, v[src])
        if op in ZERO_PRESERVING or (op == "AveragePool" and _pads(node) and
                                     node.attrs.get("count_include_pad", 0)):
            out[out != 0] = np.nan
        elif op == "Pad" and node.attrs.get("mode", "constant") == "constant":
            out[out != _pad_value(node)] = np.nan
        if op == "MatMul":
            zero = np.zeros(size, dtype=bool)
            for k, src, dst in inputs:
                v = value_of(a, k, keys, values)
                zero |= (v == 0) if src is None else np.isin(np.arange(size), dst[v[src] == 0])
            out = np.where(zero, 0.0, np.nan)
        return out, _cause(out, cause, node)
    try:
        out = _pointwise(a, node, key, keys, values)
    except _Unsupported:
        out = np.full(size, np.nan)
    return out, _cause(out, cause, node)


def _scatter_agreeing(out: np.ndarray, dst: np.ndarray, vals: np.ndarray) -> None:
    """out[dst] = vals where every value sent to a position agrees; NaN where they differ.

    Several channels land on one position when a Reshape splits channels into heads x head_dim
    and the slot follows the heads: the position stands for all the head's channels."""
    lo = np.full(out.size, np.inf)
    hi = np.full(out.size, -np.inf)
    with np.errstate(invalid="ignore"):
        np.minimum.at(lo, dst, vals)
        np.maximum.at(hi, dst, vals)
    hit = np.zeros(out.size, dtype=bool)
    hit[dst] = True
    out[hit] = np.where(lo[hit] == hi[hit], lo[hit], np.nan)


def _cause(out, cause, node):
    if np.isnan(out).any():
        return cause or node_label(node)
    return None


class _Unsupported(Exception):
    pass


def _operand(a, node, tensor, key, keys, values):
    """An input aligned on the output slot: array (per position), scalar, or None (unknown)."""
    out_rank = a.rank(a.tensor(key[0]))
    rank = a.rank(tensor)
    if out_rank is None or rank is None:
        return None
    axis = rank + key[1] - out_rank
    k = (tensor.name, axis)
    if axis >= 0 and k in keys:
        return value_of(a, k, keys, values)
    if isinstance(tensor, gs.Constant):
        v = np.asarray(tensor.values, dtype=np.float64)
        if v.size and (v == v.reshape(-1)[0]).all():
            return float(v.reshape(-1)[0])
    return None


def _pointwise(a, node, key, keys, values) -> np.ndarray:
    op, attrs = node.op, node.attrs
    size = a.slot_size[key]
    args = [_operand(a, node, t, key, keys, values) if t.name else None for t in node.inputs]
    nan = np.full(size, np.nan)
    if op == "Mul":                          # 0 * anything is 0, even an unknown
        x, y = _known(args[0], size), _known(args[1], size)
        return np.where((x == 0) | (y == 0), 0.0, x * y)
    if op == "BatchNormalization":
        if key[1] != 1:
            return _known(args[0], size)
        x = _known(args[0], size)
        scale, bias, mean, var = (np.asarray(t.values, dtype=np.float64) for t in node.inputs[1:5])
        return (x - mean) / np.sqrt(var + attrs.get("epsilon", 1e-5)) * scale + bias
    if op == "InstanceNormalization":
        x = _known(args[0], size)
        if key[1] != 1:
            return nan
        return np.where(np.isnan(x), np.nan, np.asarray(node.inputs[2].values, dtype=np.float64))
    if op == "GroupNormalization":
        return _group_norm(node, _known(args[0], size))
    if op == "LayerNormalization":            # channel axis not normalized (else: inexact anyway)
        return _shift_of_constant(_known(args[0], size), node.inputs[2] if len(node.inputs) > 2 else None)
    if op in ("Softmax", "LogSoftmax"):
        return _softmax_of_constant(a, node, _known(args[0], size))
    x = [_known(v, size) for v in args]
    fn = _FUNCS.get(op)
    if fn is None:
        raise _Unsupported(op)
    with np.errstate(all="ignore"):
        return np.broadcast_to(np.asarray(fn(x, attrs), dtype=np.float64), (size,)).copy()


def _known(v, size) -> np.ndarray:
    if v is None:
        return np.full(size, np.nan)
    return np.broadcast_to(np.asarray(v, dtype=np.float64), (size,))


def _shift_of_constant(x, bias) -> np.ndarray:
    """Normalizing a constant gives 0: the output is the bias (when the bias is one constant)."""
    if bias is None or not bias.name:
        shift = 0.0
    else:
        b = np.asarray(bias.values, dtype=np.float64)
        if not b.size or not (b == b.reshape(-1)[0]).all():
            return np.full(x.size, np.nan)
        shift = float(b.reshape(-1)[0])
    return np.where(np.isnan(x), np.nan, shift)


def _softmax_of_constant(a, node, x) -> np.ndarray:
    """Softmax along an axis of n equal values: 1/n (log: -log n)."""
    dims = a.dims(node.inputs[0])
    axis = int(node.attrs.get("axis", -1 if a.opset >= 13 else 1))
    if dims is None or a.opset < 13:
        return np.full(x.size, np.nan)
    n = dims[axis]
    if not isinstance(n, int):
        return np.full(x.size, np.nan)
    value = -np.log(n) if node.op == "LogSoftmax" else 1.0 / n
    return np.where(np.isnan(x), np.nan, value)


def _group_norm(node, x) -> np.ndarray:
    groups = int(node.attrs["num_groups"])
    per = x.size // groups
    eps = node.attrs.get("epsilon", 1e-5)
    scale, bias = (np.asarray(t.values, dtype=np.float64) for t in node.inputs[1:3])
    if scale.size == groups:
        scale, bias = np.repeat(scale, per), np.repeat(bias, per)
    xg = x.reshape(groups, per)
    mean = xg.mean(axis=1, keepdims=True)
    var = ((xg - mean) ** 2).mean(axis=1, keepdims=True)
    return ((xg - mean) / np.sqrt(var + eps)).reshape(-1) * scale + bias


def _clip(x, attrs):
    lo = x[1] if len(x) > 1 and not np.isnan(x[1]).all() else attrs.get("min", -np.inf)
    hi = x[2] if len(x) > 2 and not np.isnan(x[2]).all() else attrs.get("max", np.inf)
    return np.minimum(np.maximum(x[0], lo), hi)


_erf = np.vectorize(math.erf, otypes=[np.float64])


def _gelu(x, attrs):
    v = x[0]
    if attrs.get("approximate", "none") == "tanh":
        return 0.5 * v * (1 + np.tanh(math.sqrt(2 / math.pi) * (v + 0.044715 * v ** 3)))
    return 0.5 * v * (1 + _erf(v / math.sqrt(2)))


def _softplus(v):
    return np.logaddexp(0.0, v)


_FUNCS = {
    "Add": lambda x, _: x[0] + x[1],
    "Sub": lambda x, _: x[0] - x[1],
    "Div": lambda x, _: x[0] / x[1],
    "Pow": lambda x, _: np.power(x[0], x[1]),
    "Max": lambda x, _: np.maximum.reduce(x),
    "Min": lambda x, _: np.minimum.reduce(x),
    "Sum": lambda x, _: np.add.reduce(x),
    "Mean": lambda x, _: np.add.reduce(x) / len(x),
    "Where": lambda x, _: np.where(np.isnan(x[0]), np.where(x[1] == x[2], x[1], np.nan),
                                   np.where(x[0] != 0, x[1], x[2])),
    "PRelu": lambda x, _: np.where(x[0] < 0, x[0] * x[1], x[0]),
    "Relu": lambda x, _: np.maximum(x[0], 0),
    "LeakyRelu": lambda x, at: np.where(x[0] < 0, x[0] * at.get("alpha", 0.01), x[0]),
    "Elu": lambda x, at: np.where(x[0] < 0, at.get("alpha", 1.0) * np.expm1(x[0]), x[0]),
    "Celu": lambda x, at: np.maximum(0, x[0]) + np.minimum(0, at.get("alpha", 1.0) * np.expm1(
        x[0] / at.get("alpha", 1.0))),
    "Selu": lambda x, at: at.get("gamma", 1.0507009873554805) * np.where(
        x[0] <= 0, at.get("alpha", 1.6732632423543772) * np.expm1(x[0]), x[0]),
    "Sigmoid": lambda x, _: 1 / (1 + np.exp(-x[0])),
    "HardSigmoid": lambda x, at: np.clip(at.get("alpha", 0.2) * x[0] + at.get("beta", 0.5), 0, 1),
    "HardSwish": lambda x, _: x[0] * np.clip(x[0] / 6 + 0.5, 0, 1),
    "Swish": lambda x, at: x[0] / (1 + np.exp(-at.get("alpha", 1.0) * x[0])),
    "Tanh": lambda x, _: np.tanh(x[0]),
    "Softplus": lambda x, _: _softplus(x[0]),
    "Softsign": lambda x, _: x[0] / (1 + np.abs(x[0])),
    "Mish": lambda x, _: x[0] * np.tanh(_softplus(x[0])),
    "Gelu": _gelu,
    "Erf": lambda x, _: _erf(x[0]),
    "Exp": lambda x, _: np.exp(x[0]),
    "Log": lambda x, _: np.log(x[0]),
    "Sqrt": lambda x, _: np.sqrt(x[0]),
    "Reciprocal": lambda x, _: 1 / x[0],
    "Neg": lambda x, _: -x[0],
    "Abs": lambda x, _: np.abs(x[0]),
    "Floor": lambda x, _: np.floor(x[0]),
    "Ceil": lambda x, _: np.ceil(x[0]),
    "Sign": lambda x, _: np.sign(x[0]),
    "Sin": lambda x, _: np.sin(x[0]),
    "Cos": lambda x, _: np.cos(x[0]),
    "Clip": _clip,
    "Identity": lambda x, _: x[0],
    "Dropout": lambda x, _: x[0],
    "Cast": lambda x, at: x[0] if at.get("to") in (1, 10, 11, 16) else np.full_like(x[0], np.nan),
}


def _pads(node) -> bool:
    return any(int(p) for p in node.attrs.get("pads", [])) or \
        node.attrs.get("auto_pad", "NOTSET") in ("SAME_UPPER", "SAME_LOWER")


def _pad_value(node) -> float:
    if "value" in node.attrs:
        return float(node.attrs["value"])
    if len(node.inputs) > 2 and isinstance(node.inputs[2], gs.Constant) and node.inputs[2].values.size:
        return float(np.asarray(node.inputs[2].values).reshape(-1)[0])
    return 0.0


# ---------------------------------------------------------------------------------------------
# sinks


def _find_sinks(a, group, keys, result: MaskedValues, why) -> None:
    for m in group.consumers:
        data = _data_slot(a, m, keys)
        if data is None:
            continue
        kind = {"Conv": "conv", "ConvTranspose": "conv-transpose", "Gemm": "gemm"}.get(m.node.op, "matmul")
        if kind == "matmul" and not isinstance(m.node.inputs[1], gs.Constant):
            kind = "matmul-left"
        result.sinks.append(Sink(m.node, data, kind))
        _check_sink(a, group, result, why, m.node, data, None)
    for node in group.passthrough:
        if node.op != "MatMul" or any(isinstance(t, gs.Constant) for t in node.inputs):
            continue
        ka = (node.inputs[0].name, a.rank(node.inputs[0]) - 1)
        rb = a.rank(node.inputs[1])
        kb = (node.inputs[1].name, rb - 2 if rb > 1 else 0)
        if ka in keys and kb in keys:
            result.sinks.append(Sink(node, ka, "contraction"))
            _check_sink(a, group, result, why, node, ka, kb)


def _data_slot(a, member, keys):
    for link in a.node_links.get(id(member.node), ()):
        for this, other in ((link.a, link.b), (link.b, link.a)):
            if this == member.slot and other in keys and not isinstance(a.tensor(other[0]), gs.Constant):
                return other
    return None


def _check_sink(a, group, result, why, node, slot, other) -> None:
    pos = group.positions[slot].reshape(-1)
    v = value_of(a, slot, set(group.positions), result.values)[pos]
    if other is not None:
        w = value_of(a, other, set(group.positions), result.values)[group.positions[other].reshape(-1)]
        bad = ~((v == 0) | (w == 0))
        if bad.any():
            result.problems.append(f"masked channels reach {node_label(node)} on both operands "
                                   f"with non-zero values (through {why.get(slot) or why.get(other)})")
        return
    if np.isnan(v).any():
        result.problems.append(f"masked channels reach {node_label(node)} with values that are not "
                               f"per-channel constants (through {why.get(slot) or 'an unmodelled op'})")
