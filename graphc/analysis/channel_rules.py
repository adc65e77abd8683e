"""Per-op channel rules: which channel positions of an op's inputs and outputs are the same.

A rule is called with the node and the *entry* slot it was reached from (None for seeds: Conv,
ConvTranspose, Gemm and MatMul with a constant operand are visited once up front). It links the
slots of the node's other tensors (:meth:`Builder.link`, :meth:`Builder.link_map`), records
members (roles) and fixups, or blocks the entry with a reason. Every rule handles an entry on any
of the node's tensors, so coupling propagates forward and backward alike.

Ops without a rule, and ops of other domains, block every slot they touch: nothing is passed
through on trust.
"""
from __future__ import annotations

from math import prod

import numpy as np
import onnx_graphsurgeon as gs

from graphc.analysis.shape_sources import (ConstElement, DimElement, as_int_list, shape_elements,
                                           slice_params)
from graphc.ir import constant_value, is_standard_op, node_label

# ---------------------------------------------------------------------------------------------
# dispatch

WEIGHTED = ("Conv", "ConvTranspose", "Gemm")


def is_seed(b, node: gs.Node) -> bool:
    if not is_standard_op(node):
        return False
    if node.op in WEIGHTED:
        return True
    return node.op == "MatMul" and len(node.inputs) == 2 and any(
        isinstance(t, gs.Constant) for t in node.inputs)


def apply(b, node: gs.Node, entry, decide: bool = False) -> None:
    if not is_standard_op(node):
        b.block_node(node, entry, f"unknown op '{node.op}' (domain {node.domain}) at {node_label(node)}")
        return
    rule = RULES.get(node.op)
    if rule is None:
        b.block_node(node, entry, f"{node_label(node)}: no channel rule for op '{node.op}'")
        return
    if entry is not None and b.rank(b.tensor(entry[0])) is None and node.op not in WEIGHTED:
        b.block(entry, f"{node_label(node)}: the shape of '{entry[0]}' is unknown")
        return
    if rule is _reshape:
        rule(b, node, entry, decide)
    else:
        rule(b, node, entry)


def _attr(node: gs.Node, name: str, default=None):
    return node.attrs.get(name, default)


def _present(node: gs.Node, i: int) -> gs.Tensor | None:
    return node.inputs[i] if len(node.inputs) > i and node.inputs[i].name else None


def _is(entry, tensor: gs.Tensor | None) -> bool:
    return entry is not None and tensor is not None and entry[0] == tensor.name


def _entry_axis(b, entry, tensor) -> int:
    return entry[1]


def _block(b, node, entry, what: str) -> None:
    b.block(entry, f"{node_label(node)} {what}")


# ---------------------------------------------------------------------------------------------
# element-wise ops (numpy broadcasting)

UNARY = (
    "Relu", "LeakyRelu", "Elu", "Selu", "Celu", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh",
    "Softplus", "Softsign", "Gelu", "Erf", "Exp", "Log", "Sqrt", "Reciprocal", "Neg", "Abs", "Sin",
    "Cos", "Tan", "Asin", "Acos", "Atan", "Sinh", "Cosh", "Asinh", "Acosh", "Atanh", "Floor", "Ceil",
    "Round", "Sign", "Clip", "Cast", "CastLike", "Identity", "Dropout", "Mish", "ThresholdedRelu",
    "Shrink", "IsNaN", "IsInf", "Not", "Swish",
)
BINARY = (
    "Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Mean", "Sum", "Where", "PRelu", "Mod",
    "Equal", "Less", "LessOrEqual", "Greater", "GreaterOrEqual", "And", "Or", "Xor", "BitShift",
)


def _elementwise(b, node: gs.Node, entry) -> None:
    """Inputs and outputs broadcast against each other, aligned from the right."""
    if entry is None:
        return
    et = b.tensor(entry[0])
    size = b.size(entry)
    offset = entry[1] - b.rank(et)          # negative: position from the right
    outputs = [t for t in node.outputs if t.name]
    if node.op == "Clip" or node.op == "CastLike":
        inputs = [node.inputs[0]]
    elif node.op == "Dropout":
        inputs, outputs = [node.inputs[0]], outputs[:2]
    else:
        inputs = [t for t in node.inputs if t.name]
    if node.op in ("Clip", "CastLike", "Dropout") and entry[0] not in {t.name for t in inputs + outputs}:
        _block(b, node, entry, f"reads '{entry[0]}' as a parameter")
        return
    for t in inputs + outputs:
        if t.name == entry[0]:
            continue
        rank = b.rank(t)
        if rank is None:
            _block(b, node, entry, f"has '{t.name}' of unknown rank")
            return
        axis = rank + offset
        if axis < 0:
            continue
        d = b.dim(t, axis)
        if d == size:
            b.link(node, entry, b.slot(t, axis))
        elif d == 1 or size == 1:
            continue                        # t broadcasts along the channel axis (or the entry does)
        elif d is None and any(t is o for o in outputs):
            b.link(node, entry, _forced_slot(b, t, axis, size))
        else:
            _block(b, node, entry, f"broadcasts '{t.name}' (dim {d}) against {size} channels")
            return
    for t in inputs:
        if isinstance(t, gs.Constant) and (t.name, (b.rank(t) + offset)) in b.a.slot_size:
            role = "param"
            b.role(node, role, (t.name, b.rank(t) + offset))


def _forced_slot(b, tensor, axis, size):
    """A slot on an output whose dim inference left unknown but broadcasting fixes to ``size``."""
    return b.slot(tensor, axis, size=size)


# ---------------------------------------------------------------------------------------------
# weighted layers


def _conv(b, node: gs.Node, entry) -> None:
    x, w, bias, y = node.inputs[0], node.inputs[1], _present(node, 2), node.outputs[0]
    if not isinstance(w, gs.Constant) or (bias is not None and not isinstance(bias, gs.Constant)):
        b.block_node(node, entry, f"{node_label(node)} has a non-constant weight or bias")
        return
    if entry is not None and entry[0] in (x.name, y.name) and entry[1] != 1:
        _conv_batch_axis(b, node, entry, x, y)
        return
    g = int(_attr(node, "group", 1))
    cout, cin_g = (int(d) for d in w.values.shape[:2])
    cin, cout_g = cin_g * g, cout // g
    ys, w0 = _weight_defined_slot(b, y, cout), b.slot(w, 0)
    xs = _weight_defined_slot(b, x, cin)
    b.link(node, ys, w0)
    b.role(node, "producer", w0)
    if bias is not None:
        b.link(node, ys, b.slot(bias, 0))
        b.role(node, "bias", (bias.name, 0))
    if g == 1:
        w1 = b.slot(w, 1)
        b.link(node, xs, w1)
        b.role(node, "consumer", w1)
    elif cin_g == 1:                         # depthwise: in-channel c feeds out-channels c*m..c*m+m-1
        b.link_map(node, xs, np.arange(cout) // cout_g, ys, np.arange(cout), "depthwise")
        b.fixup(node, "conv-group", (ys,), per_group=cout_g, attr="group")
    else:                                    # grouped: channel j of every group goes together
        w1 = b.slot(w, 1)
        b.link_map(node, xs, np.arange(cin), w1, np.arange(cin) % cin_g, "grouped")
        b.link_map(node, ys, np.arange(cout), ys, np.arange(cout) % cout_g, "grouped")
        b.role(node, "consumer", w1)
    _bias_add(b, node, y, ys)


def _weight_defined_slot(b, tensor, size):
    """Axis 1 of a Conv input/output: its size is the weight's, even when inference lost it."""
    return b.slot(tensor, 1, size=size)


def _conv_batch_axis(b, node, entry, x, y) -> None:
    if entry[1] == 0:
        b.link(node, entry, b.slot(y if entry[0] == x.name else x, 0))
    else:
        _block(b, node, entry, "convolves over the channel axis")


def _conv_transpose(b, node: gs.Node, entry) -> None:
    x, w, bias, y = node.inputs[0], node.inputs[1], _present(node, 2), node.outputs[0]
    if not isinstance(w, gs.Constant) or (bias is not None and not isinstance(bias, gs.Constant)):
        b.block_node(node, entry, f"{node_label(node)} has a non-constant weight or bias")
        return
    if entry is not None and entry[0] in (x.name, y.name) and entry[1] != 1:
        _conv_batch_axis(b, node, entry, x, y)
        return
    g = int(_attr(node, "group", 1))
    cin, cout_g = (int(d) for d in w.values.shape[:2])
    cin_g, cout = cin // g, cout_g * g
    xs, ys, w0 = _weight_defined_slot(b, x, cin), _weight_defined_slot(b, y, cout), b.slot(w, 0)
    b.link(node, xs, w0)
    if bias is not None:
        b.link(node, ys, b.slot(bias, 0))
        b.role(node, "bias", (bias.name, 0))
    if g == 1:
        w1 = b.slot(w, 1)
        b.link(node, ys, w1)
        b.role(node, "producer", w1)
        b.role(node, "consumer", w0)
    elif cin_g == 1:
        b.link_map(node, xs, np.arange(cout) // cout_g, ys, np.arange(cout), "depthwise")
        b.role(node, "producer", w0)
        b.fixup(node, "conv-group", (ys,), per_group=cout_g, attr="group")
    else:
        w1 = b.slot(w, 1)
        b.link_map(node, xs, np.arange(cin), xs, np.arange(cin) % cin_g, "grouped")
        b.link_map(node, w1, np.arange(cout) % cout_g, ys, np.arange(cout), "grouped")
        b.role(node, "producer", w1)
        b.role(node, "consumer", w0)
    _bias_add(b, node, y, ys)


def _gemm(b, node: gs.Node, entry) -> None:
    a, w, c, y = node.inputs[0], node.inputs[1], _present(node, 2), node.outputs[0]
    if not isinstance(w, gs.Constant) or (c is not None and not isinstance(c, gs.Constant)):
        b.block_node(node, entry, f"{node_label(node)} has a non-constant B or C")
        return
    ka = 0 if _attr(node, "transA", 0) else 1
    kb, nb = (1, 0) if _attr(node, "transB", 0) else (0, 1)
    if entry is not None and entry in ((a.name, 1 - ka), (y.name, 0)):     # the batch (M) axis
        b.link(node, b.slot(a, 1 - ka), b.slot(y, 0))
        if c is not None and b.rank(c) == 2 and b.dim(c, 0) == b.dim(y, 0) and b.dim(c, 0) != 1:
            b.link(node, b.slot(y, 0), b.slot(c, 0))
        return
    ys, wn = b.slot(y, 1), b.slot(w, nb)
    b.link(node, ys, wn)
    b.role(node, "producer", wn)
    if c is not None and b.rank(c) >= 1 and b.dim(c, -1) == b.size(wn) and b.size(wn) != 1:
        cs = b.slot(c, b.rank(c) - 1)
        b.link(node, ys, cs)
        b.role(node, "bias", cs)
    xa, wk = b.slot(a, ka), b.slot(w, kb)
    b.link(node, xa, wk)
    b.role(node, "consumer", wk)
    _bias_add(b, node, y, ys)


def _matmul_axes(b, node):
    """Roles of each axis: {(tensor index 0=A 1=B 2=Y, axis): role}; role 'K', 'M', 'N' or ('batch', j)."""
    a, w, y = node.inputs[0], node.inputs[1], node.outputs[0]
    ra, rb, ry = b.rank(a), b.rank(w), b.rank(y)
    if ra is None or rb is None:
        return None
    if ry is None:
        ry = max(ra, rb) if min(ra, rb) >= 2 else max(ra, rb) - 1
    roles = {(0, ra - 1): "K"}
    if ra >= 2:
        roles[(0, ra - 2)] = "M"
    if rb == 1:
        roles[(1, 0)] = "K"
    else:
        roles[(1, rb - 2)], roles[(1, rb - 1)] = "K", "N"
    if ra >= 2 and rb >= 2:
        roles[(2, ry - 2)], roles[(2, ry - 1)] = "M", "N"
    elif ra >= 2:
        roles[(2, ry - 1)] = "M"
    elif rb >= 2:
        roles[(2, ry - 1)] = "N"
    for idx, rank, lead in ((0, ra, ra - 2), (1, rb, rb - 2), (2, ry, ry - 2)):
        for axis in range(max(lead, 0)):
            roles[(idx, axis)] = ("batch", lead - 1 - axis)
    return roles


def _matmul(b, node: gs.Node, entry) -> None:
    a, w, y = node.inputs[0], node.inputs[1], node.outputs[0]
    roles = _matmul_axes(b, node)
    if roles is None:
        b.block_node(node, entry, f"{node_label(node)}: operand ranks are unknown")
        return
    tensors = (a, w, y)
    axis_of = {}
    for (idx, axis), role in roles.items():
        axis_of.setdefault(role, {})[idx] = axis
    if entry is None:
        wanted = ["K", "N"] if isinstance(w, gs.Constant) else ["K", "M"]
    else:
        wanted = [roles[(i, entry[1])] for i, t in enumerate(tensors)
                  if t.name == entry[0] and (i, entry[1]) in roles]
    for role in wanted:
        places = axis_of.get(role, {})
        if isinstance(role, tuple):
            _matmul_batch(b, node, entry, tensors, places)
            continue
        keys = {i: b.slot(tensors[i], ax) for i, ax in places.items()}
        if any(k is None for k in keys.values()):
            b.block_node(node, entry, f"{node_label(node)}: channel count unknown")
            return
        first, *rest = list(keys.values())
        for k in rest:
            b.link(node, first, k)
        for i, k in keys.items():
            if i < 2 and isinstance(tensors[i], gs.Constant):
                b.role(node, "consumer" if role == "K" else "producer", k)
        if role in ("N", "M") and any(isinstance(t, gs.Constant) for t in (a, w)) and 2 in keys:
            _bias_add(b, node, y, keys[2])


def _matmul_batch(b, node, entry, tensors, places) -> None:
    size = b.size(entry)
    for i, ax in places.items():
        if tensors[i].name == entry[0] and ax == entry[1]:
            continue
        d = b.dim(tensors[i], ax)
        if d == size:
            b.link(node, entry, b.slot(tensors[i], ax))
        elif d != 1:
            _block(b, node, entry, f"broadcasts '{tensors[i].name}' (dim {d}) against {size} channels")


def _bias_add(b, node: gs.Node, y: gs.Tensor, ys) -> None:
    """A producer's bias written as a separate Add of a per-channel constant (exporters do this
    for MatMul, Paddle for Conv): masking zeroes it together with the producer's weights."""
    users = list(y.outputs)
    if len(users) != 1 or ys is None or y.name in b._outputs:
        return
    add = users[0]
    if add.op != "Add" or not is_standard_op(add) or len(add.inputs) != 2:
        return
    other = add.inputs[1] if add.inputs[0] is y else add.inputs[0]
    origin = _constant_origin(other) if other is not y else None
    if origin is not None:
        b.a.bias_constants[origin.name] = (node, add)


def _constant_origin(t: gs.Tensor):
    """The constant a tensor is computed from through shape-only ops, or None."""
    for _ in range(8):
        if isinstance(t, gs.Constant):
            return t
        if len(t.inputs) != 1:
            return None
        src = t.inputs[0]
        if src.op not in ("Reshape", "Unsqueeze", "Squeeze", "Identity", "Cast", "Flatten") or \
                not all(isinstance(i, gs.Constant) or i is src.inputs[0] for i in src.inputs if i.name):
            return None
        t = src.inputs[0]
    return None


# ---------------------------------------------------------------------------------------------
# normalizations


def _batchnorm(b, node: gs.Node, entry) -> None:
    x, y = node.inputs[0], node.outputs[0]
    if any(t.name and t.outputs for t in node.outputs[1:]):
        b.block_node(node, entry, f"{node_label(node)} is in training mode (running stats are used)")
        return
    if not _data_entry(b, node, entry, x, y):
        return
    if entry[1] != 1:
        b.link(node, entry, b.slot(y if entry[0] == x.name else x, entry[1]))
        return
    xs = b.slot(x, 1)
    b.link(node, xs, b.slot(y, 1))
    for p in node.inputs[1:5]:
        if not isinstance(p, gs.Constant):
            _block(b, node, xs, f"has a non-constant parameter '{p.name}'")
            return
        b.link(node, xs, b.slot(p, 0))
        b.role(node, "norm", (p.name, 0))


def _data_entry(b, node, entry, x, y) -> bool:
    if entry is None:
        return False
    if entry[0] not in (x.name, y.name):
        _block(b, node, entry, f"reads '{entry[0]}' as a parameter")
        return False
    return True


def _instance_norm(b, node: gs.Node, entry) -> None:
    x, y = node.inputs[0], node.outputs[0]
    if not _data_entry(b, node, entry, x, y):
        return
    if entry[1] >= 2:
        _block(b, node, entry, "normalizes over the channel axis")
        return
    other = y if entry[0] == x.name else x
    b.link(node, entry, b.slot(other, entry[1]))
    if entry[1] == 1:
        for p in node.inputs[1:3]:
            if not isinstance(p, gs.Constant):
                _block(b, node, entry, f"has a non-constant parameter '{p.name}'")
                return
            b.link(node, entry, b.slot(p, 0))
            b.role(node, "norm", (p.name, 0))


def _group_norm(b, node: gs.Node, entry) -> None:
    x, y = node.inputs[0], node.outputs[0]
    if not _data_entry(b, node, entry, x, y):
        return
    if entry[1] >= 2:
        _block(b, node, entry, "normalizes over the channel axis")
        return
    xs = b.slot(x, entry[1])
    b.link(node, xs, b.slot(y, entry[1]))
    if entry[1] == 0:
        return
    groups = int(_attr(node, "num_groups"))
    c = b.size(xs)
    per = c // groups
    b.link_map(node, xs, np.arange(c), xs, (np.arange(c) // per) * per, "group-norm")
    for p in node.inputs[1:3]:
        if not isinstance(p, gs.Constant):
            _block(b, node, xs, f"has a non-constant parameter '{p.name}'")
            return
        ps = b.slot(p, 0)
        if b.size(ps) == c:
            b.link(node, xs, ps)
        else:                                # opset 18: one scale per group
            b.link_map(node, ps, np.arange(c) // per, xs, np.arange(c), "group-norm")
        b.role(node, "norm", ps)
    b.fixup(node, "group-norm", (xs,), per_group=per)


def _layer_norm(b, node: gs.Node, entry) -> None:
    x, y = node.inputs[0], node.outputs[0]
    if any(t.name and t.outputs for t in node.outputs[1:]):
        b.block_node(node, entry, f"{node_label(node)}: its Mean/InvStdDev outputs are used")
        return
    if not _data_entry(b, node, entry, x, y):
        return
    rank = b.rank(x)
    start = int(_attr(node, "axis", -1)) % rank
    other = y if entry[0] == x.name else x
    b.link(node, entry, b.slot(other, entry[1]))
    if entry[1] < start:
        return
    b.inexact(entry, f"{node_label(node)} normalizes over the channel axis: removing channels "
                     "changes its mean and variance")
    for p in node.inputs[1:3]:
        if not p.name:
            continue
        pr = b.rank(p)
        axis = pr - (rank - entry[1])
        if axis < 0 or b.dim(p, axis) == 1:
            continue
        if not isinstance(p, gs.Constant):
            _block(b, node, entry, f"has a non-constant parameter '{p.name}'")
            return
        b.link(node, entry, b.slot(p, axis))
        b.role(node, "norm", (p.name, axis))


# ---------------------------------------------------------------------------------------------
# spatial ops: channel axis passes through


def _pool(b, node: gs.Node, entry) -> None:
    x, y = node.inputs[0], node.outputs[0]
    if len(node.outputs) > 1 and node.outputs[1].name and node.outputs[1].outputs:
        b.block_node(node, entry, f"{node_label(node)}: its Indices output encodes channel positions")
        return
    if not _data_entry(b, node, entry, x, y):
        return
    if entry[1] >= 2:
        _block(b, node, entry, "pools over the channel axis")
        return
    b.link(node, entry, b.slot(y if entry[0] == x.name else x, entry[1]))


def _resize(b, node: gs.Node, entry) -> None:
    x, y = node.inputs[0], node.outputs[0]
    if not _data_entry(b, node, entry, x, y):
        return
    axis, rank = entry[1], b.rank(x)
    other = b.slot(y if entry[0] == x.name else x, axis)
    axes = [a % rank for a in _attr(node, "axes", range(rank))]
    if axis not in axes:
        b.link(node, entry, other)
        return
    pos = axes.index(axis)
    scales, sizes = _resize_params(node)
    if scales is not None:
        value = constant_value(scales)
        if value is not None and value.size:
            if float(value.reshape(-1)[pos]) != 1.0:
                _block(b, node, entry, "rescales the channel axis")
                return
            b.link(node, entry, other)
            return
        if value is None or sizes is None:
            _block(b, node, entry, "has computed scales")
            return
    if sizes is None:
        _block(b, node, entry, "has neither scales nor sizes")
        return
    elems = shape_elements(sizes, node, b.rank)
    elem = elems[pos] if elems is not None and pos < len(elems) else None
    if b.link(node, entry, other):
        _size_element(b, node, entry, elem, other, "resize")


def _resize_params(node: gs.Node):
    if node.op == "Upsample":
        return (_present(node, 1), None)
    if len(node.inputs) <= 2 and node.op == "Resize":
        return (_present(node, 1), None)
    return (_present(node, 2), _present(node, 3))


def _size_element(b, node, entry, elem, out_slot, kind) -> None:
    """The shape element that states an output's channel count: follow, rewrite or block."""
    if isinstance(elem, DimElement):
        b.link(node, out_slot, b.slot(elem.tensor, elem.axis))
    elif isinstance(elem, ConstElement):
        if not elem.exclusive:
            _block(b, node, entry, "shares its shape tensor with other nodes")
            return
        b.fixup(node, kind, (out_slot,), element=elem)
    else:
        _block(b, node, entry, "computes the channel count of its output at run time")


def _pad(b, node: gs.Node, entry) -> None:
    x, y = node.inputs[0], node.outputs[0]
    if not _data_entry(b, node, entry, x, y):
        return
    rank = b.rank(x)
    if "pads" in node.attrs:
        pads, axes = list(node.attrs["pads"]), list(range(rank))
    else:
        pads = as_int_list(constant_value(node.inputs[1]))
        axes_t = _present(node, 3)
        axes = as_int_list(constant_value(axes_t)) if axes_t is not None else list(range(rank))
        if pads is None or axes is None:
            _block(b, node, entry, "has computed pads")
            return
    axes = [a % rank for a in axes]
    if entry[1] in axes:
        i = axes.index(entry[1])
        if pads[i] != 0 or pads[i + len(axes)] != 0:
            _block(b, node, entry, "pads the channel axis")
            return
    b.link(node, entry, b.slot(y if entry[0] == x.name else x, entry[1]))


# ---------------------------------------------------------------------------------------------
# layout ops


def _transpose(b, node: gs.Node, entry) -> None:
    x, y = node.inputs[0], node.outputs[0]
    if entry is None:
        return
    rank = b.rank(x)
    perm = list(_attr(node, "perm", list(range(rank))[::-1]))
    if entry[0] == x.name:
        b.link(node, entry, b.slot(y, perm.index(entry[1])))
    else:
        b.link(node, entry, b.slot(x, perm[entry[1]]))


def _concat(b, node: gs.Node, entry) -> None:
    y = node.outputs[0]
    rank = b.rank(y)
    if rank is None:
        _block(b, node, entry, "has an output of unknown rank")
        return
    axis = int(_attr(node, "axis")) % rank
    inputs = [t for t in node.inputs if t.name]
    if entry[1] != axis:
        for t in inputs + [y]:
            if t.name != entry[0]:
                b.link(node, entry, b.slot(t, entry[1]))
        return
    ys = b.slot(y, axis)
    offset = 0
    for t in inputs:
        d = b.dim(t, axis)
        if d is None or ys is None:
            _block(b, node, entry, f"concatenates '{t.name}' of unknown size")
            return
        if d:
            b.link_map(node, b.slot(t, axis), np.arange(d), ys, offset + np.arange(d), "concat")
        offset += d


def _split(b, node: gs.Node, entry) -> None:
    x = node.inputs[0]
    rank = b.rank(x)
    axis = int(_attr(node, "axis", 0)) % rank
    outs = [t for t in node.outputs]
    if entry[0] != x.name and entry[0] not in {t.name for t in outs}:
        _block(b, node, entry, f"reads '{entry[0]}' as its split sizes")
        return
    if entry[1] != axis:
        for t in [x] + outs:
            if t.name != entry[0]:
                b.link(node, entry, b.slot(t, entry[1]))
        return
    xs = b.slot(x, axis)
    sizes = [b.dim(t, axis) for t in outs]
    if xs is None or any(s is None for s in sizes):
        _block(b, node, entry, "has outputs of unknown size")
        return
    offset = 0
    for t, d in zip(outs, sizes):
        if d:
            b.link_map(node, xs, offset + np.arange(d), b.slot(t, axis), np.arange(d), "split")
        offset += d
    b.fixup(node, "split", (xs,), sizes=sizes, axis=axis, opset=b.opset)


def _slice(b, node: gs.Node, entry) -> None:
    x, y = node.inputs[0], node.outputs[0]
    if not _data_entry(b, node, entry, x, y):
        return
    rank = b.rank(x)
    params = slice_params(node)
    if params is None:
        _block(b, node, entry, "slices with computed bounds")
        return
    starts, ends, axes, steps = params
    axes = [a % rank for a in axes]
    if entry[1] not in axes:
        b.link(node, entry, b.slot(y if entry[0] == x.name else x, entry[1]))
        return
    i = axes.index(entry[1])
    xs = b.slot(x, entry[1])
    if xs is None:
        _block(b, node, entry, "slices an axis of unknown size")
        return
    picked = np.arange(b.size(xs))[slice(starts[i], ends[i], steps[i])]
    if steps[i] != 1:
        _block(b, node, entry, "slices the channel axis with a step")
        return
    ys = b.slot(y, entry[1])
    if len(picked):
        b.link_map(node, xs, picked, ys, np.arange(len(picked)), "slice")
    b.fixup(node, "slice", (xs,), index=i, start=int(picked[0]) if len(picked) else 0,
            stop=int(picked[-1]) + 1 if len(picked) else 0)


def _gather(b, node: gs.Node, entry) -> None:
    x, idx, y = node.inputs[0], node.inputs[1], node.outputs[0]
    if entry[0] == idx.name:
        _block(b, node, entry, f"uses '{idx.name}' as indices")
        return
    rank = b.rank(x)
    axis = int(_attr(node, "axis", 0)) % rank
    values = constant_value(idx)
    if values is None:
        _block(b, node, entry, "gathers with computed indices")
        return
    extra = values.ndim - 1
    if entry[0] == x.name:
        if entry[1] == axis:
            if values.ndim != 1:
                _block(b, node, entry, "gathers the channel axis with non-1-D indices")
                return
            d = b.size(entry)
            ys = b.slot(y, axis)
            b.link_map(node, entry, values % d, ys, np.arange(values.size), "gather")
            b.fixup(node, "gather", (entry,), indices=(values % d).tolist())
            return
        b.link(node, entry, b.slot(y, entry[1] if entry[1] < axis else entry[1] + extra))
        return
    ax = entry[1]
    if axis <= ax < axis + values.ndim:
        if values.ndim == 1:
            d = b.dim(x, axis)
            xs = b.slot(x, axis)
            if xs is None:
                _block(b, node, entry, "gathers from an axis of unknown size")
                return
            b.link_map(node, xs, values % d, entry, np.arange(values.size), "gather")
            b.fixup(node, "gather", (xs,), indices=(values % d).tolist())
        else:
            _block(b, node, entry, "gathers the channel axis with non-1-D indices")
        return
    b.link(node, entry, b.slot(x, ax if ax < axis else ax - extra))


def _tile(b, node: gs.Node, entry) -> None:
    x, y = node.inputs[0], node.outputs[0]
    if not _data_entry(b, node, entry, x, y):
        return
    reps = as_int_list(constant_value(node.inputs[1]))
    if reps is None or reps[entry[1]] != 1:
        _block(b, node, entry, "repeats the channel axis")
        return
    b.link(node, entry, b.slot(y if entry[0] == x.name else x, entry[1]))


def _expand(b, node: gs.Node, entry) -> None:
    x, y = node.inputs[0], node.outputs[0]
    if not _data_entry(b, node, entry, x, y):
        return
    rx, ry = b.rank(x), b.rank(y)
    ax_y = entry[1] + (ry - rx) if entry[0] == x.name else entry[1]
    ax_x = ax_y - (ry - rx)
    if ax_x < 0 or b.dim(x, ax_x) != b.size(entry):
        _block(b, node, entry, "broadcasts into the channel axis")
        return
    xs, ys = b.slot(x, ax_x), b.slot(y, ax_y)
    if not b.link(node, xs, ys):
        return
    elems = shape_elements(node.inputs[1], node, b.rank)
    pos = ax_y - (ry - len(elems)) if elems is not None else -1
    elem = elems[pos] if elems is not None and 0 <= pos < len(elems) else None
    if isinstance(elem, ConstElement) and elem.value == 1:
        return
    _size_element(b, node, entry, elem, ys, "expand")


# ---------------------------------------------------------------------------------------------
# Reshape, Flatten, Squeeze, Unsqueeze: regrouping of axes


def _reshape(b, node: gs.Node, entry, decide: bool = False) -> None:
    x, shape_t, y = node.inputs[0], node.inputs[1], node.outputs[0]
    if entry is None:
        return
    if entry[0] not in (x.name, y.name):
        _block(b, node, entry, f"uses '{entry[0]}' as its target shape")
        return
    elems = shape_elements(shape_t, node, b.rank)
    in_dims, out_dims = b.dims(x), b.dims(y)
    if out_dims is None and elems is not None:
        out_dims = _dims_from_elements(b, elems, in_dims, out_dims)
    if in_dims is not None and out_dims is not None and elems is not None and len(elems) == len(out_dims):
        out_dims = _evidence(b, node, x, elems, in_dims, out_dims)
    _regroup(b, node, entry, in_dims, out_dims, decide, lambda out_axis, same_axis: _reshape_fix(
        b, node, entry, elems, out_axis, same_axis))


def _evidence(b, node, x, elems, in_dims, out_dims) -> tuple:
    """Output dims the target shape proves equal to input dims (0 copies, Shape of the input)."""
    out = list(out_dims)
    for j, e in enumerate(elems):
        if isinstance(out[j], int):
            continue
        if isinstance(e, ConstElement) and e.value == 0 and not _attr(node, "allowzero", 0) and j < len(in_dims):
            out[j] = in_dims[j]
        elif isinstance(e, DimElement):
            d = in_dims if e.tensor is x else b.dims(e.tensor)
            if d is not None and e.axis < len(d) and d[e.axis] is not None:
                out[j] = d[e.axis]
    return tuple(out)


def _dims_from_elements(b, elems, in_dims, inferred):
    dims = []
    for i, e in enumerate(elems):
        if isinstance(e, ConstElement):
            if e.value == 0 and in_dims is not None and i < len(in_dims):
                dims.append(in_dims[i])
            else:
                dims.append(e.value if e.value > 0 else None)
        elif isinstance(e, DimElement):
            d = b.dims(e.tensor)
            dims.append(d[e.axis] if d is not None and e.axis < len(d) else None)
        else:
            dims.append(inferred[i] if inferred is not None and i < len(inferred) else None)
    if None in dims and in_dims is not None and all(isinstance(d, int) for d in in_dims):
        known = [d for d in dims if d is not None]
        if dims.count(None) == 1 and all(isinstance(d, int) for d in known) and prod(known):
            dims[dims.index(None)] = prod(in_dims) // prod(known)
    return tuple(dims)


def _reshape_fix(b, node, entry, elems, out_axis, same_axis) -> bool:
    """Check that the shape element for ``out_axis`` can follow the channel count; record it.
    ``same_axis``: the output axis is the input's channel axis, unchanged (so 0 copies it)."""
    if elems is None or out_axis >= len(elems):
        _block(b, node, entry, "computes its target shape at run time")
        return False
    elem = elems[out_axis]
    ys = (node.outputs[0].name, out_axis)
    if isinstance(elem, ConstElement):
        allowzero = int(_attr(node, "allowzero", 0))
        if elem.value == -1:
            return True
        if elem.value == 0 and not allowzero:
            if same_axis:
                return True
            _block(b, node, entry, "copies (0) a dim that is not the channel axis into it")
            return False
        if not elem.exclusive:
            _block(b, node, entry, "shares its shape tensor with other nodes")
            return False
        b.fixup(node, "reshape", (ys,), element=elem)
        return True
    if isinstance(elem, DimElement):
        b.link(node, ys, b.slot(elem.tensor, elem.axis))
        return True
    _block(b, node, entry, "computes the channel count of its target shape at run time")
    return False


def _flatten(b, node: gs.Node, entry) -> None:
    x, y = node.inputs[0], node.outputs[0]
    in_dims = b.dims(x)
    if in_dims is None:
        _block(b, node, entry, "has an input of unknown shape")
        return
    axis = int(_attr(node, "axis", 1))
    axis = axis + len(in_dims) if axis < 0 else axis
    out_dims = (_prod(in_dims[:axis]), _prod(in_dims[axis:]))
    _regroup(b, node, entry, in_dims, out_dims, True, None)


def _squeeze(b, node: gs.Node, entry) -> None:
    x, y = node.inputs[0], node.outputs[0]
    if entry[0] not in (x.name, y.name):
        _block(b, node, entry, f"reads '{entry[0]}' as its axes")
        return
    _regroup(b, node, entry, b.dims(x), b.dims(y), True, None)


def _prod(dims):
    return prod(dims) if all(isinstance(d, int) for d in dims) else None


def _same(p, q) -> bool:
    return (isinstance(p, int) and p == q) or (isinstance(p, str) and p != "" and p == q)


def factor_blocks(in_dims, out_dims):
    """Pair groups of input axes with groups of output axes that hold the same elements.

    Unit dims are left out. Returns a list of (input axes, output axes); an unresolvable middle
    (symbolic dims that do not match) becomes one block.
    """
    ins = [(i, d) for i, d in enumerate(in_dims) if d != 1]
    outs = [(j, d) for j, d in enumerate(out_dims) if d != 1]
    head, tail = [], []
    while ins and outs and _same(ins[0][1], outs[0][1]):
        head.append(([ins.pop(0)[0]], [outs.pop(0)[0]]))
    while ins and outs and _same(ins[-1][1], outs[-1][1]):
        tail.insert(0, ([ins.pop()[0]], [outs.pop()[0]]))
    middle = []
    while ins and outs:
        bi, bo = [ins.pop(0)], [outs.pop(0)]
        pi, po = bi[0][1], bo[0][1]
        while isinstance(pi, int) and isinstance(po, int) and pi != po:
            src, blk = (ins, bi) if pi < po else (outs, bo)
            if not src or not isinstance(src[0][1], int):
                pi = po = None
                break
            blk.append(src.pop(0))
            pi, po = _prod([d for _, d in bi]), _prod([d for _, d in bo])
        if not (isinstance(pi, int) and pi == po):
            bi += ins
            bo += outs
            ins, outs = [], []
        middle.append(([i for i, _ in bi], [j for j, _ in bo]))
    if ins or outs:
        middle.append(([i for i, _ in ins], [j for j, _ in outs]))
    return head + middle + tail


def _regroup(b, node, entry, in_dims, out_dims, decide, fix) -> None:
    """Map the entry axis through a reshape-like op (Reshape, Flatten, Squeeze, Unsqueeze)."""
    if entry is None:
        return
    x, y = node.inputs[0], node.outputs[0]
    if in_dims is None or out_dims is None:
        _block(b, node, entry, "has an input or output of unknown shape")
        return
    size = b.size(entry)
    if size == 1:
        return                              # a lone channel: nothing to follow
    on_input = entry[0] == x.name
    block = next((blk for blk in factor_blocks(in_dims, out_dims)
                  if entry[1] in (blk[0] if on_input else blk[1])), None)
    if block is None:
        _block(b, node, entry, "drops the channel axis")
        return
    in_axes, out_axes = block
    if isinstance(x, gs.Constant) and len(in_axes) == 1:
        b.role(node, "param", b.slot(x, in_axes[0]))
    if len(in_axes) == 1 and len(out_axes) == 1:
        xs, ys = b.slot(x, in_axes[0]), b.slot(y, out_axes[0])
        if fix is None or fix(out_axes[0], in_axes[0] == out_axes[0]):
            b.link(node, xs, ys)
        return
    if len(in_axes) > 1 and len(out_axes) > 1:
        _block(b, node, entry, f"regroups the channel axis with others "
                               f"({_dims(in_dims, in_axes)} -> {_dims(out_dims, out_axes)})")
        return
    if len(out_axes) == 1:
        _merge(b, node, entry, in_axes, out_axes[0], in_dims, fix, on_input)
    else:
        _split_axis(b, node, entry, in_axes[0], out_axes, out_dims, decide, fix, on_input)


def _dims(dims, axes) -> str:
    return "x".join(str(dims[a]) for a in axes)


def _merge(b, node, entry, in_axes, out_axis, in_dims, fix, on_input) -> None:
    x, y = node.inputs[0], node.outputs[0]
    if on_input:
        channel = entry[1]
    else:
        have = [a for a in in_axes if b.has_slot(x, a)]
        if len(have) != 1:
            if len(have) > 1:
                _block(b, node, entry, "merges two channel axes")
            return                          # wait until the input's channel axis is known
        channel = have[0]
    dims = [in_dims[a] for a in in_axes]
    if not all(isinstance(d, int) for d in dims):
        _block(b, node, entry, "merges the channel axis with dims of unknown size")
        return
    inner = prod(in_dims[a] for a in in_axes if a > channel)
    total = prod(dims)
    xs, ys = b.slot(x, channel), b.slot(y, out_axis)
    if ys is None:
        ys = _forced_slot(b, y, out_axis, total)
    if fix is not None and not fix(out_axis, False):
        return
    b.link_map(node, xs, (np.arange(total) // inner) % in_dims[channel], ys, np.arange(total), "merge")


def _split_axis(b, node, entry, in_axis, out_axes, out_dims, decide, fix, on_input) -> None:
    x, y = node.inputs[0], node.outputs[0]
    if not all(isinstance(out_dims[a], int) for a in out_axes):
        _block(b, node, entry, "splits the channel axis into dims of unknown size")
        return
    if on_input:
        have = [a for a in out_axes if b.has_slot(y, a)]
        if len(have) == 1:
            sub = have[0]
        elif not have and not decide:
            b.deferred.append((node, entry))
            return
        elif have:
            for a in have:
                _split_link(b, node, in_axis, a, out_axes, out_dims, fix)
            return
        else:
            sub = _pick_sub_axis(b, out_axes, out_dims)
    else:
        sub = entry[1]
    _split_link(b, node, in_axis, sub, out_axes, out_dims, fix)


def _pick_sub_axis(b, out_axes, out_dims) -> int:
    """heads: the axis before the last (heads of heads x head_dim, also of 3 x heads x head_dim);
    head-dims: the last one."""
    if b.attention == "head-dims":
        return out_axes[-1]
    return out_axes[-2]


def _split_link(b, node, in_axis, sub, out_axes, out_dims, fix) -> None:
    x, y = node.inputs[0], node.outputs[0]
    xs, ys = b.slot(x, in_axis), b.slot(y, sub)
    if xs is None or ys is None:
        _block(b, node, xs, "splits the channel axis into dims of unknown size")
        return
    inner = prod(out_dims[a] for a in out_axes if a > sub)
    if fix is not None and not fix(sub, False):
        return
    c = b.size(xs)
    kind = "heads" if sub != out_axes[-1] else "head-dims"
    b.link_map(node, xs, np.arange(c), ys, (np.arange(c) // inner) % out_dims[sub], kind)


# ---------------------------------------------------------------------------------------------
# reductions and ops along one axis


def _along_axis(b, node: gs.Node, entry, axes, keepdims: bool, what: str) -> None:
    """Ops that reduce or mix along ``axes``: block if the channel axis is one of them."""
    x, y = node.inputs[0], node.outputs[0]
    if not _data_entry(b, node, entry, x, y):
        return
    rank = b.rank(x)
    axes = sorted({a % rank for a in axes}) if axes is not None else list(range(rank))
    if entry[0] == x.name:
        if entry[1] in axes:
            _block(b, node, entry, f"{what} the channel axis")
            return
        out_axis = entry[1] if keepdims else entry[1] - sum(a < entry[1] for a in axes)
        for out in node.outputs:
            if out.name:
                b.link(node, entry, b.slot(out, out_axis))
        return
    in_axis = entry[1]
    if not keepdims:
        for a in axes:
            if a <= in_axis:
                in_axis += 1
    if in_axis in axes:
        _block(b, node, entry, f"{what} the channel axis")
        return
    b.link(node, entry, b.slot(x, in_axis))


def _reduce(b, node: gs.Node, entry) -> None:
    axes = _attr(node, "axes", None)
    if axes is None and _present(node, 1) is not None:
        axes = as_int_list(constant_value(node.inputs[1]))
        if axes is None:
            _block(b, node, entry, "reduces over computed axes")
            return
    if axes is not None and len(axes) == 0:
        axes = None if not _attr(node, "noop_with_empty_axes", 0) else []
    _along_axis(b, node, entry, axes, bool(_attr(node, "keepdims", 1)), "reduces")


def _argmax(b, node: gs.Node, entry) -> None:
    _along_axis(b, node, entry, [int(_attr(node, "axis", 0))], bool(_attr(node, "keepdims", 1)), "reduces")


def _softmax(b, node: gs.Node, entry) -> None:
    rank = b.rank(node.inputs[0])
    if b.opset >= 13:
        axes = [int(_attr(node, "axis", -1))]
    else:
        axes = list(range(int(_attr(node, "axis", 1)) % rank, rank))
    _along_axis(b, node, entry, axes, True, "normalizes over")


def _topk(b, node: gs.Node, entry) -> None:
    _along_axis(b, node, entry, [int(_attr(node, "axis", -1))], True, "selects along")


def _cumsum(b, node: gs.Node, entry) -> None:
    axis = as_int_list(constant_value(node.inputs[1]))
    if axis is None:
        _block(b, node, entry, "sums along a computed axis")
        return
    _along_axis(b, node, entry, axis, True, "accumulates along")


def _lp_norm(b, node: gs.Node, entry) -> None:
    _along_axis(b, node, entry, [int(_attr(node, "axis", -1))], True, "normalizes over")


def _mvn(b, node: gs.Node, entry) -> None:
    _along_axis(b, node, entry, list(_attr(node, "axes", [0, 2, 3])), True, "normalizes over")


def _mixes_channels(b, node: gs.Node, entry) -> None:
    if entry is not None and entry[1] == 1:
        _block(b, node, entry, "mixes channels with each other or with space")
        return
    if node.op == "LRN":
        x, y = node.inputs[0], node.outputs[0]
        if _data_entry(b, node, entry, x, y):
            b.link(node, entry, b.slot(y if entry[0] == x.name else x, entry[1]))
        return
    _block(b, node, entry, "moves channels into space")


def _quant(b, node: gs.Node, entry) -> None:
    x, scale, y = node.inputs[0], node.inputs[1], node.outputs[0]
    if not _data_entry(b, node, entry, x, y):
        return
    rank = b.rank(x)
    other = y if entry[0] == x.name else x
    b.link(node, entry, b.slot(other, entry[1]))
    axis = int(_attr(node, "axis", 1)) % rank
    if entry[1] == axis and b.rank(scale) == 1 and b.dim(scale, 0) == b.size(entry) != 1:
        for p in node.inputs[1:3]:
            if p.name:
                if not isinstance(p, gs.Constant):
                    _block(b, node, entry, f"has a non-constant parameter '{p.name}'")
                    return
                b.link(node, entry, b.slot(p, 0))
                b.role(node, "param", (p.name, 0))


def _shape(b, node: gs.Node, entry) -> None:
    """Shape reads the channel count: fine if it only ever becomes the same dim of a reshape."""
    x = node.inputs[0]
    rank = b.rank(x)
    start, end = int(_attr(node, "start", 0)), _attr(node, "end", None)
    taken = list(range(rank))[slice(start, None if end is None else int(end))]
    if entry[1] not in taken:
        return
    _follow_dim(b, node, entry, node.outputs[0], {taken.index(entry[1])}, 0)


def _size(b, node: gs.Node, entry) -> None:
    _block(b, node, entry, "reads the element count")


PLUMBING = ("Cast", "Identity", "Squeeze", "Unsqueeze")


def _follow_dim(b, shape_node, entry, tensor: gs.Tensor, idx: set, depth: int) -> None:
    if depth > 24 or not idx:
        return
    if tensor.name in b._outputs:
        _block(b, shape_node, entry, "reads the channel count into a graph output")
    for user in list(tensor.outputs):
        op = user.op if is_standard_op(user) else None
        out = user.outputs[0] if user.outputs else None
        if op in PLUMBING:
            _follow_dim(b, shape_node, entry, out, idx, depth + 1)
        elif op == "Concat":
            offset = 0
            for inp in user.inputs:
                if inp is tensor:
                    break
                n = b.dim(inp, 0) if b.rank(inp) == 1 else 1
                if n is None:
                    _block(b, shape_node, entry, f"reads the channel count into {node_label(user)}")
                    return
                offset += n
            _follow_dim(b, shape_node, entry, out, {i + offset for i in idx}, depth + 1)
        elif op in ("Slice", "Gather") and user.inputs[0] is tensor:
            from graphc.analysis.shape_sources import _selected_indices
            n = b.dim(tensor, 0) if b.rank(tensor) == 1 else None
            picked = _selected_indices(user, n) if n is not None else None
            if picked is None:
                _block(b, shape_node, entry, f"reads the channel count into {node_label(user)}")
                return
            _follow_dim(b, shape_node, entry, out, {j for j, p in enumerate(picked) if p in idx}, depth + 1)
        elif (op in ("Reshape", "Expand") and user.inputs[1] is tensor) or \
                (op == "Resize" and len(user.inputs) > 3 and user.inputs[3] is tensor):
            shift = b.rank(out) - b.dim(tensor, 0) if op == "Expand" else 0
            for i in idx:
                b.link(shape_node, entry, b.slot(out, i + shift))
        else:
            _block(b, shape_node, entry, f"reads the channel count into {node_label(user)}")
            return


# ---------------------------------------------------------------------------------------------
# table

RULES = {op: _elementwise for op in UNARY + BINARY}
RULES.update({
    "Conv": _conv, "ConvTranspose": _conv_transpose, "Gemm": _gemm, "MatMul": _matmul,
    "BatchNormalization": _batchnorm, "InstanceNormalization": _instance_norm,
    "GroupNormalization": _group_norm, "LayerNormalization": _layer_norm,
    "MaxPool": _pool, "AveragePool": _pool, "LpPool": _pool, "GlobalAveragePool": _pool,
    "GlobalMaxPool": _pool, "GlobalLpPool": _pool,
    "Resize": _resize, "Upsample": _resize, "Pad": _pad,
    "Transpose": _transpose, "Concat": _concat, "Split": _split, "Slice": _slice, "Gather": _gather,
    "Tile": _tile, "Expand": _expand,
    "Reshape": _reshape, "Flatten": _flatten, "Squeeze": _squeeze, "Unsqueeze": _squeeze,
    "ReduceMean": _reduce, "ReduceSum": _reduce, "ReduceMax": _reduce, "ReduceMin": _reduce,
    "ReduceProd": _reduce, "ReduceL1": _reduce, "ReduceL2": _reduce, "ReduceLogSum": _reduce,
    "ReduceLogSumExp": _reduce, "ReduceSumSquare": _reduce,
    "ArgMax": _argmax, "ArgMin": _argmax, "Softmax": _softmax, "LogSoftmax": _softmax,
    "Hardmax": _softmax, "TopK": _topk, "CumSum": _cumsum, "LpNormalization": _lp_norm,
    "MeanVarianceNormalization": _mvn, "LRN": _mixes_channels, "DepthToSpace": _mixes_channels,
    "SpaceToDepth": _mixes_channels,
    "QuantizeLinear": _quant, "DequantizeLinear": _quant,
    "Shape": _shape, "Size": _size,
})
