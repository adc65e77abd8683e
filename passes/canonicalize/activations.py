"""Canonicalize rules: activations and normalizations spelled as element-wise chains -> native ops.

Every rule matches the chain an exporter emits, checks its constants (relative tolerance 1e-5:
float32 spellings of 1/6, 1/sqrt(2), sqrt(2/pi) ...) and that each intermediate tensor has a
single reader, and rewrites it to the op the ONNX spec defines by the same formula:

- hardswish   ``x * Clip(x + 3, 0, 6) / 6`` (Div or Mul by 1/6, before or after the product),
              and ``x * HardSigmoid(x, 1/6, 1/2)``; HardSwish from opset 14. Below 14 the chain
              becomes ``x * HardSigmoid(x, alpha=1/6, beta=1/2)`` (opset 6), which onnxruntime
              runs exactly as it runs its own HardSwish (see canonicalize's docstring).
- hardsigmoid ``Clip(x + b, 0, h) / h`` = HardSigmoid(alpha=1/h, beta=b/h) and
              ``Clip(a*x + b, 0, 1)`` = HardSigmoid(alpha=a, beta=b) (opset 6).
- silu        ``x * Sigmoid(x)`` and ``x * Sigmoid(a*x)`` = Swish(alpha=a) (opset 24).
- gelu        ``x/2 * (1 + erf(x / sqrt 2))`` = Gelu and
              ``x/2 * (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))`` = Gelu(approximate=tanh),
              in the usual associations of the products (opset 20).
- mish        ``x * tanh(softplus(x))``, softplus as Softplus or ``log(exp(x) + 1)`` (opset 18).
- relu6       ``Min(Max(x, a), b)``, ``Max(Min(x, b), a)`` (a <= b), ``Min(Relu(x), b)`` (b >= 0),
              ``Clip(Relu(x), lo, hi)`` (lo >= 0) = Clip(x, a, b); identical for every input
              except NaN.
- layernorm   ``(x - mean(x)) / sqrt(mean((x - mean(x))^2) + eps) * gamma + beta`` over trailing
              axes = LayerNormalization(axis, epsilon) (opset 17); gamma/beta optional.

Size: one check and one rewrite per activation listed above, each short; they share the
matching helpers of :mod:`graphc.passes.canonicalize.match`.
"""
from __future__ import annotations

import math

import numpy as np
import onnx_graphsurgeon as gs

from graphc.ir import constant_value, is_standard_op
from graphc.passes.canonicalize.match import (
    Fired,
    NeedsOpset,
    Outcome,
    Rewriter,
    Skip,
    clip_bounds,
    clip_node,
    close,
    const_operand,
    multiplier,
    other_input,
    scalar,
    scalar_operand,
)

SQRT_HALF = 1.0 / math.sqrt(2.0)
SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)


def _native(rw: Rewriter, version: int, op: str, what: str, keep: tuple[gs.Node, ...] = ()) -> Outcome:
    """None if ``op`` is available; otherwise the outcome that reports why not. The ``keep``
    nodes of a chain left alone are protected from the other rules for the round: runtimes fuse
    the exporter's spelling (onnxruntime's LayerNorm and Gelu fusions), not a rearranged one."""
    if rw.opset >= version:
        return None
    rw.protect(keep)
    if rw.can_upgrade_to(version):
        return NeedsOpset(version, f"{op} needs opset {version}")
    return Skip(f"{what}: {op} needs opset {version} (model has {rw.opset}); left as is")


def _times_input(rw: Rewriter, gate: gs.Node, x: gs.Tensor) -> gs.Node | None:
    """The Mul computing ``x * gate(x)`` (SiLU, Mish): sole reader of the gate, float ``x``."""
    mul = rw.sole_reader(gate.outputs[0], "Mul")
    if mul is None or other_input(mul, gate.outputs[0]) is not x or not rw.is_float(x):
        return None
    return mul


def _replace_chain(rw: Rewriter, chain: list[gs.Node], x: gs.Tensor, op: str,
                   attrs: dict | None = None) -> None:
    """One ``op`` node on ``x`` in place of ``chain``, named after its last node (which writes
    the result)."""
    out = chain[-1].outputs[0]
    base = chain[-1].name or out.name
    rw.remove(*chain)
    rw.add_node(op, [x], [out], attrs, base=base)


# -- HardSwish / HardSigmoid -------------------------------------------------------------------------


def hardswish(rw: Rewriter, node: gs.Node) -> Outcome:
    if node.op == "HardSigmoid":
        return _hardswish_from_hardsigmoid(rw, node)
    found = const_operand(node)
    if found is None or not close(scalar_operand(rw, node, "Add", found[0]), 3.0):
        return None
    x = found[0]
    clip = rw.sole_reader(node.outputs[0], "Clip")
    if clip is None or clip_bounds(clip) != (0.0, 6.0) or not rw.is_float(x):
        return None
    c = clip.outputs[0]
    after = rw.sole_reader(c, "Mul", "Div")
    if after is None:
        return None
    if after.op == "Mul" and other_input(after, c) is x:          # (x * clip) / 6
        last = rw.sole_reader(after.outputs[0], "Mul", "Div")
        if last is None or not close(multiplier(rw, last, after.outputs[0]), 1 / 6):
            return None
    elif close(multiplier(rw, after, c), 1 / 6):                   # x * (clip / 6)
        last = rw.sole_reader(after.outputs[0], "Mul")
        if last is None or other_input(last, after.outputs[0]) is not x:
            return None
    else:
        return None
    return _emit_hardswish(rw, [node, clip, after, last], x, last.outputs[0])


def _hardswish_from_hardsigmoid(rw: Rewriter, node: gs.Node) -> Outcome:
    x = node.inputs[0]
    if not (close(node.attrs.get("alpha", 0.2), 1 / 6) and close(node.attrs.get("beta", 0.5), 0.5)):
        return None
    mul = rw.sole_reader(node.outputs[0], "Mul")
    if mul is None or other_input(mul, node.outputs[0]) is not x:
        return None
    if rw.opset < 14 and not rw.can_upgrade_to(14):
        return None  # already the canonical spelling below opset 14
    return _emit_hardswish(rw, [node, mul], x, mul.outputs[0])


def _emit_hardswish(rw: Rewriter, chain: list[gs.Node], x: gs.Tensor, out: gs.Tensor) -> Outcome:
    if rw.opset < 14 and rw.can_upgrade_to(14):
        return NeedsOpset(14, "HardSwish needs opset 14")
    base = chain[-1].name or out.name
    rw.remove(*chain)
    if rw.opset >= 14:
        rw.add_node("HardSwish", [x], [out], base=base)
    else:
        gate = rw.variable(x, f"{base}.gate")
        rw.add_node("HardSigmoid", [x], [gate], {"alpha": 1 / 6, "beta": 0.5}, base=f"{base}.hsig")
        rw.add_node("Mul", [x, gate], [out], base=base)
    return Fired("hardswish")


def hardsigmoid(rw: Rewriter, node: gs.Node) -> Outcome:
    bounds = clip_bounds(node)
    if bounds is None or bounds[0] != 0.0 or bounds[1] is None or bounds[1] <= 0:
        return None
    hi = bounds[1]
    inner = rw.produced_by(node.inputs[0], "Add")
    if inner is None or rw.sole_reader(inner.outputs[0]) is not node:
        return None
    shift = const_operand(inner)
    if shift is None or scalar_operand(rw, inner, "Add", shift[0]) is None:
        return None
    u, beta = shift[0], scalar(shift[1])
    if hi == 1.0:                                     # Clip(a*x + b, 0, 1)
        pre = rw.produced_by(u, "Mul", "Div")
        alpha = multiplier(rw, pre, None) if pre is not None and rw.sole_reader(u) is inner else None
        if alpha is not None:
            x, chain = const_operand(pre)[0], [pre, inner, node]
        else:
            x, alpha, chain = u, 1.0, [inner, node]
        out = node.outputs[0]
    else:                                             # Clip(x + b, 0, h) / h
        post = rw.sole_reader(node.outputs[0], "Mul", "Div")
        if post is None or not close(multiplier(rw, post, node.outputs[0]), 1.0 / hi):
            return None
        x, alpha, beta, chain, out = u, 1.0 / hi, beta / hi, [inner, node, post], post.outputs[0]
    if not rw.is_float(x):
        return None
    base = chain[-1].name or out.name
    rw.remove(*chain)
    rw.add_node("HardSigmoid", [x], [out], {"alpha": float(alpha), "beta": float(beta)}, base=base)
    return Fired("hardsigmoid")


# -- SiLU / GELU / Mish ------------------------------------------------------------------------------


def silu(rw: Rewriter, node: gs.Node) -> Outcome:
    u, chain, alpha = node.inputs[0], [node], 1.0
    pre = rw.produced_by(u, "Mul")
    if pre is not None and rw.sole_reader(u) is node and multiplier(rw, pre) is not None:
        alpha = multiplier(rw, pre)
        x, chain = const_operand(pre)[0], [pre, node]
    else:
        x = u
    mul = _times_input(rw, node, x)
    if mul is None:
        return None
    blocked = _native(rw, 24, "Swish", "x*Sigmoid(x)")
    if blocked is not None:
        return blocked
    _replace_chain(rw, [*chain, mul], x, "Swish", {"alpha": float(alpha)})
    return Fired("silu")


def gelu(rw: Rewriter, node: gs.Node) -> Outcome:
    found = _gelu_inner_erf(rw, node) if node.op == "Erf" else _gelu_inner_tanh(rw, node)
    if found is None:
        return None
    x, chain = found
    one = rw.sole_reader(node.outputs[0], "Add")
    if one is None or not close(scalar_operand(rw, one, "Add", node.outputs[0]), 1.0):
        return None
    tail = _half_x_times(rw, one.outputs[0], x)
    if tail is None or not rw.is_float(x):
        return None
    blocked = _native(rw, 20, "Gelu", "GELU chain", (*chain, node, one, *tail))
    if blocked is not None:
        return blocked
    approximate = "none" if node.op == "Erf" else "tanh"
    _replace_chain(rw, [*chain, node, one, *tail], x, "Gelu", {"approximate": approximate})
    return Fired("gelu")


def _gelu_inner_erf(rw: Rewriter, erf: gs.Node) -> tuple[gs.Tensor, list[gs.Node]] | None:
    pre = rw.produced_by(erf.inputs[0], "Mul", "Div")
    if pre is None or rw.sole_reader(erf.inputs[0]) is not erf:
        return None
    if not close(multiplier(rw, pre), SQRT_HALF):
        return None
    return const_operand(pre)[0], [pre]


def _gelu_inner_tanh(rw: Rewriter, tanh: gs.Node) -> tuple[gs.Tensor, list[gs.Node]] | None:
    """tanh(sqrt(2/pi) * (x + 0.044715 * x^3))."""
    scale = rw.produced_by(tanh.inputs[0], "Mul")
    if scale is None or rw.sole_reader(tanh.inputs[0]) is not tanh:
        return None
    if not close(multiplier(rw, scale), SQRT_2_OVER_PI):
        return None
    u = const_operand(scale)[0]
    add = rw.produced_by(u, "Add")
    if add is None or rw.sole_reader(u) is not scale or const_operand(add) is not None:
        return None
    for x in add.inputs:
        cubic = _cubic_term(rw, other_input(add, x), x)
        if cubic is not None:
            return x, [*cubic, add, scale]
    return None


def _cubic_term(rw: Rewriter, t: gs.Tensor | None, x: gs.Tensor) -> list[gs.Node] | None:
    """Nodes computing ``0.044715 * x^3`` into ``t`` (Pow(x, 3) or x*x*x)."""
    if t is None:
        return None
    mul = rw.produced_by(t, "Mul")
    if mul is None or rw.sole_reader(t) is None or not close(multiplier(rw, mul), 0.044715, rtol=1e-4):
        return None
    cube = const_operand(mul)[0]
    node = rw.produced_by(cube, "Pow", "Mul")
    if node is None or rw.sole_reader(cube) is not mul:
        return None
    if node.op == "Pow":
        ok = node.inputs[0] is x and close(scalar(constant_value(node.inputs[1])), 3.0)
        return [node, mul] if ok else None
    square_t = other_input(node, x)
    square = rw.produced_by(square_t, "Mul") if square_t is not None else None
    if square is None or rw.sole_reader(square_t) is not node or list(square.inputs) != [x, x]:
        return None
    return [square, node, mul]


def _half_x_times(rw: Rewriter, t: gs.Tensor, x: gs.Tensor) -> list[gs.Node] | None:
    """Nodes computing ``0.5 * x * t`` from ``t`` in any association; the last one writes it."""
    p = rw.sole_reader(t, "Mul")
    if p is None:
        return None
    other = other_input(p, t)
    if other is x:                                      # (x * t) * 0.5
        q = rw.sole_reader(p.outputs[0], "Mul", "Div")
        return [p, q] if q is not None and close(multiplier(rw, q, p.outputs[0]), 0.5) else None
    if close(multiplier(rw, p, t), 0.5):                # x * (t * 0.5)
        q = rw.sole_reader(p.outputs[0], "Mul")
        return [p, q] if q is not None and other_input(q, p.outputs[0]) is x else None
    half = rw.produced_by(other, "Mul", "Div") if other is not None else None
    if half is not None and rw.sole_reader(other) is p and close(multiplier(rw, half, x), 0.5):
        return [half, p]                                # (x * 0.5) * t
    return None


def mish(rw: Rewriter, tanh: gs.Node) -> Outcome:
    sp = tanh.inputs[0]
    if rw.sole_reader(sp) is not tanh:
        return None
    softplus = rw.produced_by(sp, "Softplus")
    if softplus is not None:
        x, chain = softplus.inputs[0], [softplus]
    else:
        found = _log_one_plus_exp(rw, sp)
        if found is None:
            return None
        x, chain = found
    mul = _times_input(rw, tanh, x)
    if mul is None:
        return None
    blocked = _native(rw, 18, "Mish", "x*tanh(softplus(x))")
    if blocked is not None:
        return blocked
    _replace_chain(rw, [*chain, tanh, mul], x, "Mish")
    return Fired("mish")


def _log_one_plus_exp(rw: Rewriter, t: gs.Tensor) -> tuple[gs.Tensor, list[gs.Node]] | None:
    log = rw.produced_by(t, "Log")
    add = rw.produced_by(log.inputs[0], "Add") if log is not None else None
    if add is None or rw.sole_reader(log.inputs[0]) is not log:
        return None
    found = const_operand(add)
    if found is None or not close(scalar_operand(rw, add, "Add", found[0]), 1.0):
        return None
    exp = rw.produced_by(found[0], "Exp")
    if exp is None or rw.sole_reader(found[0]) is not add:
        return None
    return exp.inputs[0], [exp, add, log]


# -- Clip ------------------------------------------------------------------------------------------


def relu6(rw: Rewriter, node: gs.Node) -> Outcome:
    first = _bound(rw, node)
    if first is None:
        return None
    x, kind, value = first
    second = rw.sole_reader(node.outputs[0], "Min", "Max", "Clip")
    if second is None or not rw.is_float(x):
        return None
    if second.op == "Clip":
        bounds = clip_bounds(second)
        if kind != "relu" or bounds is None or (bounds[0] is not None and bounds[0] < 0):
            return None
        lo, hi = (bounds[0] if bounds[0] is not None else 0.0), bounds[1]
    else:
        then = _bound(rw, second, node.outputs[0])
        kinds = {kind, then[1]} if then is not None else set()
        if kinds not in ({"max", "min"}, {"relu", "min"}):
            return None
        lo = value if kind != "min" else then[2]      # Relu / Max(., a) give the lower bound
        hi = then[2] if kind != "min" else value
    if hi is not None and lo > hi:
        return None
    out = second.outputs[0]
    base = second.name or out.name
    rw.remove(node, second)
    clip_node(rw, x, out, lo, hi, base)
    return Fired("relu6")


def _bound(rw: Rewriter, node: gs.Node, x: gs.Tensor | None = None) -> tuple[gs.Tensor, str, float] | None:
    """Relu(x) -> (x, 'relu', 0); Max(x, a) -> (x, 'max', a); Min(x, b) -> (x, 'min', b)."""
    if is_standard_op(node, "Relu"):
        return (node.inputs[0], "relu", 0.0) if x is None or node.inputs[0] is x else None
    if not is_standard_op(node, "Min", "Max"):
        return None
    found = const_operand(node)
    if found is None or (x is not None and found[0] is not x):
        return None
    value = scalar_operand(rw, node, node.op, found[0])
    if value is None:
        return None
    return found[0], node.op.lower(), value


# -- LayerNormalization ---------------------------------------------------------------------------


def layernorm(rw: Rewriter, node: gs.Node) -> Outcome:
    found = _layernorm_chain(rw, node)
    if found is None:
        return None
    x, chain, axis, eps = found
    gamma, beta, tail = _layernorm_affine(rw, chain[-1].outputs[0])
    blocked = _native(rw, 17, "LayerNormalization", "LayerNormalization chain", (*chain, *tail))
    if blocked is not None:
        return blocked
    normalized = _normalized_dims(rw, x, axis, gamma)
    if normalized is None:
        return Skip("LayerNormalization chain: normalized dims are not static")
    dtype = rw.dtype(x)
    try:
        scale = np.broadcast_to(_trailing(gamma, len(normalized)), normalized).astype(dtype)
        bias = np.broadcast_to(_trailing(beta, len(normalized)), normalized).astype(dtype)
    except ValueError:
        return Skip("LayerNormalization chain: gamma/beta do not match the normalized dims")
    last = tail[-1] if tail else chain[-1]
    out, base = last.outputs[0], last.name or last.outputs[0].name
    rw.remove(*chain, *tail)
    inputs = [x, rw.constant(f"{base}.scale", scale), rw.constant(f"{base}.bias", bias)]
    rw.add_node("LayerNormalization", inputs, [out], {"axis": axis, "epsilon": eps}, base=base)
    return Fired("layernorm")


def _normalized_dims(rw: Rewriter, x: gs.Tensor, axis: int, gamma: np.ndarray) -> tuple[int, ...] | None:
    """Static dims of x from ``axis`` on; when inference does not know them, gamma's shape if it
    spans them all (a size-1 dim in gamma could be a broadcast, so it does not count)."""
    dims = (rw.shape(x) or ())[axis:]
    if dims and all(isinstance(d, int) and d > 0 for d in dims):
        return tuple(dims)
    k = rw.rank(x) - axis
    try:
        trailing = _trailing(gamma, k)
    except ValueError:
        return None
    if trailing.ndim == k and all(d > 1 for d in trailing.shape):
        return tuple(trailing.shape)
    return None


def _layernorm_chain(rw: Rewriter, mean: gs.Node):
    """ReduceMean -> Sub -> Pow/Mul -> ReduceMean -> Add(eps) -> Sqrt -> Div; returns
    (x, nodes, axis, epsilon)."""
    x = mean.inputs[0]
    axes = _reduce_axes(rw, mean)
    rank = rw.rank(x)
    if axes is None or rank is None or not rw.is_float(x):
        return None
    axes = sorted(a % rank for a in axes)
    if axes != list(range(rank - len(axes), rank)) or not axes:
        return None
    sub = rw.sole_reader(mean.outputs[0], "Sub")
    if sub is None or list(sub.inputs) != [x, mean.outputs[0]] or rw.is_output(sub.outputs[0]):
        return None
    d = sub.outputs[0]
    readers = rw.readers(d)
    square = next((n for n in readers if _is_square(n, d)), None)
    div = next((n for n in readers if is_standard_op(n, "Div") and n.inputs[0] is d), None)
    if len(readers) != 2 or square is None or div is None:
        return None
    var = rw.sole_reader(square.outputs[0], "ReduceMean")
    if var is None or _reduce_axes(rw, var) is None or sorted(a % rank for a in _reduce_axes(rw, var)) != axes:
        return None
    add = rw.sole_reader(var.outputs[0], "Add")
    eps = scalar_operand(rw, add, "Add", var.outputs[0]) if add is not None else None
    sqrt = rw.sole_reader(add.outputs[0], "Sqrt") if eps is not None else None
    if sqrt is None or rw.sole_reader(sqrt.outputs[0]) is not div or div.inputs[1] is not sqrt.outputs[0]:
        return None
    return x, [mean, sub, square, var, add, sqrt, div], axes[0], float(eps)


def _is_square(node: gs.Node, d: gs.Tensor) -> bool:
    if is_standard_op(node, "Mul"):
        return list(node.inputs) == [d, d]
    if is_standard_op(node, "Pow") and node.inputs[0] is d:
        return close(scalar(constant_value(node.inputs[1])), 2.0)
    return False


def _reduce_axes(rw: Rewriter, node: gs.Node) -> list[int] | None:
    if int(node.attrs.get("keepdims", 1)) != 1:
        return None
    if "axes" in node.attrs:
        return [int(a) for a in node.attrs["axes"]]
    if len(node.inputs) > 1 and node.inputs[1].name:
        value = constant_value(node.inputs[1])
        return None if value is None else [int(a) for a in value.reshape(-1)]
    return None  # all axes: not a layer norm over trailing dims we can name


def _layernorm_affine(rw: Rewriter, y: gs.Tensor):
    """Optional ``* gamma + beta`` after the normalization (constants)."""
    gamma, beta, tail = np.ones(()), np.zeros(()), []
    mul = rw.sole_reader(y, "Mul")
    found = const_operand(mul) if mul is not None else None
    if found is not None and found[0] is y and found[1].dtype.kind == "f":
        gamma, tail = found[1], [mul]
        y = mul.outputs[0]
    add = rw.sole_reader(y, "Add")
    found = const_operand(add) if add is not None else None
    if found is not None and found[0] is y and found[1].dtype.kind == "f":
        beta, tail = found[1], [*tail, add]
    return gamma, beta, tail


def _trailing(value: np.ndarray, k: int) -> np.ndarray:
    """``value`` as an array of rank k over the trailing dims; ValueError if it spans more."""
    while value.ndim > k and value.shape[0] == 1:
        value = value.reshape(value.shape[1:])
    if value.ndim > k:
        raise ValueError("parameter spans leading dims")
    return value
