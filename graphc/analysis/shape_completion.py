"""Fill in tensor shapes that ONNX shape inference left unknown, for the channel analysis.

Exporters build Reshape targets at run time (Paddle2ONNX: ``Concat(Cast(Slice(Shape(x))),
Cast(Constant))``); ONNX inference then stops, and every tensor after the Reshape has no shape.
The analysis only needs ranks and the dims around channel axes, so this pass derives them with
simple rules: Reshape from its traced target (:mod:`shape_sources`), broadcasting for element-wise
ops, MatMul/Gemm/Transpose/Flatten/Squeeze/Unsqueeze/Concat/reductions/pooling/Conv from their
definitions. A dim nobody can state gets a fresh symbol (``?tensor[axis]``) that only equals
itself, so that dims copied from it downstream (through Shape, broadcasting, MatMul...) are still
known to be equal; nothing is guessed.
"""
from __future__ import annotations

from math import prod

import onnx_graphsurgeon as gs

from graphc.analysis.shape_sources import (ConstElement, DimElement, as_int_list, shape_elements,
                                           slice_params)
from graphc.ir import constant_value, is_standard_op
from graphc.ir.shapes import TensorInfo

_SAME_AS_INPUT = frozenset({
    "Relu", "LeakyRelu", "Elu", "Selu", "Celu", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh",
    "Softplus", "Softsign", "Gelu", "Erf", "Exp", "Log", "Sqrt", "Reciprocal", "Neg", "Abs", "Floor",
    "Ceil", "Round", "Sign", "Clip", "Cast", "Identity", "Dropout", "Softmax", "LogSoftmax",
    "Hardmax", "BatchNormalization", "InstanceNormalization", "LayerNormalization",
    "GroupNormalization", "Mish", "LRN", "CumSum", "QuantizeLinear", "DequantizeLinear", "Not",
})
_BROADCAST = frozenset({"Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Mean", "Sum", "Where",
                        "PRelu", "Equal", "Less", "Greater", "And", "Or", "Mod"})
_REDUCE = frozenset({"ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1",
                     "ReduceL2", "ReduceSumSquare", "ReduceLogSum", "ReduceLogSumExp"})


def complete_shapes(graph: gs.Graph, shapes: dict[str, TensorInfo], order: list[gs.Node]) -> dict:
    """A copy of ``shapes`` with missing output shapes derived where the rules allow."""
    out = dict(shapes)

    def dims(t: gs.Tensor):
        if isinstance(t, gs.Constant):
            return tuple(int(d) for d in t.values.shape)
        info = out.get(t.name)
        return tuple(info.shape) if info is not None and info.shape is not None else None

    for name, info in list(out.items()):
        if info.shape is not None and None in info.shape:
            out[name] = TensorInfo(info.dtype, _fresh(name, info.shape))
    for node in order:
        if not is_standard_op(node) or not node.outputs:
            continue
        pending = [y for y in node.outputs if y.name and not _static(dims(y))]
        if not pending:
            continue
        try:
            shapes_out = _split_rule(node, dims) if node.op == "Split" else [_rule(node, dims)]
        except (ValueError, IndexError, TypeError, ZeroDivisionError, KeyError):
            continue
        for y, shape in zip(node.outputs, shapes_out):
            if shape is None or not y.name or _static(dims(y)):
                continue
            known = dims(y)
            if known is not None:
                if len(known) != len(shape):
                    continue
                shape = [k if isinstance(k, int) or not isinstance(d, int) else d for k, d in zip(known, shape)]
            info = out.get(y.name)
            out[y.name] = TensorInfo(info.dtype if info is not None else None, _fresh(y.name, shape))
    return out


def _static(d) -> bool:
    return d is not None and all(isinstance(v, int) for v in d)


def _split_rule(node, dims):
    x = dims(node.inputs[0])
    axis = int(node.attrs.get("axis", 0)) % len(x)
    sizes = node.attrs.get("split")
    if sizes is None and len(node.inputs) > 1 and node.inputs[1].name:
        sizes = as_int_list(constant_value(node.inputs[1]))
    if sizes is None:
        n = len(node.outputs)
        sizes = [x[axis] // n] * n if isinstance(x[axis], int) else [None] * n
    return [tuple(s if i == axis else d for i, d in enumerate(x)) for s in sizes]


def _fresh(name: str, shape) -> tuple:
    return tuple(d if d is not None else f"?{name}[{i}]" for i, d in enumerate(shape))


def _rule(node: gs.Node, dims):
    op = node.op
    ins = [dims(t) if t.name else None for t in node.inputs]
    x = ins[0] if ins else None
    if op in _SAME_AS_INPUT:
        return x
    if op in _BROADCAST:
        return _broadcast([d for d in ins if d is not None]) if all(
            d is not None for t, d in zip(node.inputs, ins) if t.name) else None
    if op == "Reshape":
        return _reshape(node, x, dims)
    if x is None:
        return None
    if op == "Slice":
        params = slice_params(node)
        if params is None:
            return None
        out = list(x)
        for start, end, axis, step in zip(params[0], params[1], params[2], params[3]):
            axis %= len(x)
            out[axis] = len(range(x[axis])[slice(start, end, step)]) if isinstance(x[axis], int) else None
        return tuple(out)
    if op == "Gather":
        idx = ins[1]
        axis = int(node.attrs.get("axis", 0)) % len(x)
        return tuple(x[:axis]) + tuple(idx) + tuple(x[axis + 1:]) if idx is not None else None
    if op == "Shape":
        start, end = int(node.attrs.get("start", 0)), node.attrs.get("end", None)
        return (len(range(len(x))[slice(start, None if end is None else int(end))]),)
    if op == "MatMul":
        return _matmul(x, ins[1])
    if op == "Gemm":
        m = x[1] if node.attrs.get("transA", 0) else x[0]
        n = ins[1][0] if node.attrs.get("transB", 0) else ins[1][1]
        return (m, n)
    if op == "Transpose":
        perm = node.attrs.get("perm", list(range(len(x)))[::-1])
        return tuple(x[p] for p in perm)
    if op == "Flatten":
        axis = int(node.attrs.get("axis", 1)) % (len(x) + 1)
        return (_prod(x[:axis]), _prod(x[axis:]))
    if op in ("Squeeze", "Unsqueeze"):
        return _squeeze(node, x)
    if op == "Concat":
        axis = int(node.attrs["axis"]) % len(x)
        parts = [d for d in ins if d is not None]
        if len(parts) != len([t for t in node.inputs if t.name]):
            return None
        total = [d[axis] for d in parts]
        out = list(x)
        out[axis] = sum(total) if all(isinstance(v, int) for v in total) else None
        return tuple(out)
    if op in _REDUCE:
        axes = node.attrs.get("axes") or (as_int_list(constant_value(node.inputs[1]))
                                          if len(node.inputs) > 1 and node.inputs[1].name else None)
        axes = list(range(len(x))) if not axes else [a % len(x) for a in axes]
        keep = node.attrs.get("keepdims", 1)
        return tuple((1 if i in axes else d) for i, d in enumerate(x) if keep or i not in axes)
    if op in ("GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool"):
        return tuple(x[:2]) + (1,) * (len(x) - 2)
    if op in ("Conv", "ConvTranspose", "MaxPool", "AveragePool", "Resize", "Upsample", "Pad"):
        channels = x[1]
        if op == "Conv":
            channels = ins[1][0]
        elif op == "ConvTranspose":
            channels = ins[1][1] * int(node.attrs.get("group", 1))
        return (x[0], channels) + (None,) * (len(x) - 2)
    return None


def _prod(dims):
    return prod(dims) if all(isinstance(d, int) for d in dims) else None


def _broadcast(shapes):
    rank = max(len(s) for s in shapes)
    out = []
    for i in range(rank):
        ds = [s[i - rank + len(s)] for s in shapes if i - rank + len(s) >= 0]
        big = [d for d in ds if d != 1]
        if not big:
            out.append(1)
        elif all(d == big[0] for d in big) and big[0] is not None:
            out.append(big[0])
        else:
            ints = [d for d in big if isinstance(d, int)]
            out.append(ints[0] if ints else None)
    return tuple(out)


def _matmul(a, b):
    if b is None:
        return None
    if len(a) == 1 and len(b) == 1:
        return ()
    if len(a) == 1:
        return tuple(b[:-2]) + (b[-1],)
    if len(b) == 1:
        return tuple(a[:-1])
    batch = _broadcast([a[:-2], b[:-2]]) if len(a) > 2 or len(b) > 2 else ()
    return tuple(batch) + (a[-2], b[-1])


def _squeeze(node, x):
    axes = node.attrs.get("axes")
    if axes is None and len(node.inputs) > 1 and node.inputs[1].name:
        axes = as_int_list(constant_value(node.inputs[1]))
        if axes is None:
            return None
    if node.op == "Squeeze":
        axes = [a % len(x) for a in axes] if axes else [i for i, d in enumerate(x) if d == 1]
        return tuple(d for i, d in enumerate(x) if i not in axes)
    rank = len(x) + len(axes)
    axes = sorted(a % rank for a in axes)
    it = iter(x)
    return tuple(1 if i in axes else next(it) for i in range(rank))


def _reshape(node, x, dims):
    elems = shape_elements(node.inputs[1], node, lambda t: None if dims(t) is None else len(dims(t)))
    if elems is None:
        return None
    out = []
    for i, e in enumerate(elems):
        if isinstance(e, ConstElement):
            if e.value == 0 and not node.attrs.get("allowzero", 0):
                out.append(x[i] if x is not None and i < len(x) else None)
            else:
                out.append(e.value if e.value >= 0 else -1)
        elif isinstance(e, DimElement):
            d = dims(e.tensor)
            out.append(d[e.axis] if d is not None and e.axis < len(d) else None)
        else:
            out.append(None)
    if -1 in out:
        known = [d for d in out if d != -1]
        if x is not None and all(isinstance(d, int) for d in x) and all(isinstance(d, int) for d in known):
            out[out.index(-1)] = prod(x) // max(prod(known), 1)
        else:
            out[out.index(-1)] = None
    return tuple(out)
