"""Channel rules for layers with weights and for normalizations.

Conv/ConvTranspose (plain, grouped: channel j of every group together so groups keep equal
counts; depthwise: in-channel c with out-channels c*m..c*m+m-1), Gemm (transA/transB), MatMul
(contraction, batch, M and N axes; weights on either side), a producer's bias written as a
separate Add, BatchNorm, InstanceNorm, GroupNorm (whole groups), LayerNorm (inexact over the
channel axis), per-axis Quantize/DequantizeLinear.
"""
from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from graphc.analysis.channel_rules import attr, block_at, data_entry, optional_input
from graphc.ir import is_standard_op, node_label


def _conv_channels_apply(b, node: gs.Node, entry) -> bool:
    """Shared start of Conv and ConvTranspose: blocked when weight or bias is computed; an entry
    on a non-channel axis of x or y only couples the batch/spatial axes. True: link channels."""
    x, w, bias, y = node.inputs[0], node.inputs[1], optional_input(node, 2), node.outputs[0]
    if not isinstance(w, gs.Constant) or (bias is not None and not isinstance(bias, gs.Constant)):
        b.block_node(node, entry, f"{node_label(node)} has a non-constant weight or bias")
        return False
    if entry is not None and entry[0] in (x.name, y.name) and entry[1] != 1:
        _conv_batch_axis(b, node, entry, x, y)
        return False
    return True


def conv(b, node: gs.Node, entry) -> None:
    x, w, y = node.inputs[0], node.inputs[1], node.outputs[0]
    if not _conv_channels_apply(b, node, entry):
        return
    g = int(attr(node, "group", 1))
    cout, cin_g = (int(d) for d in w.values.shape[:2])
    cin, cout_g = cin_g * g, cout // g
    ys, w0 = _weight_defined_slot(b, y, cout), b.slot(w, 0)
    xs = _weight_defined_slot(b, x, cin)
    b.link(node, ys, w0)
    b.role(node, "producer", w0)
    _link_channel_params(b, node, ys, node.inputs[2:3], role="bias")
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
        block_at(b, node, entry, "convolves over the channel axis")


def conv_transpose(b, node: gs.Node, entry) -> None:
    x, w, y = node.inputs[0], node.inputs[1], node.outputs[0]
    if not _conv_channels_apply(b, node, entry):
        return
    g = int(attr(node, "group", 1))
    cin, cout_g = (int(d) for d in w.values.shape[:2])
    cin_g, cout = cin // g, cout_g * g
    xs, ys, w0 = _weight_defined_slot(b, x, cin), _weight_defined_slot(b, y, cout), b.slot(w, 0)
    b.link(node, xs, w0)
    _link_channel_params(b, node, ys, node.inputs[2:3], role="bias")
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


def gemm(b, node: gs.Node, entry) -> None:
    a, w, c, y = node.inputs[0], node.inputs[1], optional_input(node, 2), node.outputs[0]
    if not isinstance(w, gs.Constant) or (c is not None and not isinstance(c, gs.Constant)):
        b.block_node(node, entry, f"{node_label(node)} has a non-constant B or C")
        return
    ka = 0 if attr(node, "transA", 0) else 1
    kb, nb = (1, 0) if attr(node, "transB", 0) else (0, 1)
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


def matmul(b, node: gs.Node, entry) -> None:
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
            block_at(b, node, entry, f"broadcasts '{tensors[i].name}' (dim {d}) against {size} channels")


def _bias_add(b, node: gs.Node, y: gs.Tensor, ys) -> None:
    """A producer's bias written as a separate Add of a per-channel constant (exporters do this
    for MatMul, Paddle for Conv): masking zeroes it together with the producer's weights."""
    users = list(y.outputs)
    if len(users) != 1 or ys is None or y.name in b.graph_outputs:
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


def batchnorm(b, node: gs.Node, entry) -> None:
    x, y = node.inputs[0], node.outputs[0]
    if any(t.name and t.outputs for t in node.outputs[1:]):
        b.block_node(node, entry, f"{node_label(node)} is in training mode (running stats are used)")
        return
    if not data_entry(b, node, entry, x, y):
        return
    if entry[1] != 1:
        b.link(node, entry, b.slot(y if entry[0] == x.name else x, entry[1]))
        return
    xs = b.slot(x, 1)
    b.link(node, xs, b.slot(y, 1))
    _link_channel_params(b, node, xs, node.inputs[1:5])


def _link_channel_params(b, node: gs.Node, slot, params, role: str = "norm") -> None:
    """1-D per-channel parameters (scale, bias, mean, ...) share ``slot``'s channels; a
    non-constant one blocks it. Omitted optional inputs are skipped."""
    for p in params:
        if not p.name:
            continue
        if not isinstance(p, gs.Constant):
            block_at(b, node, slot, f"has a non-constant parameter '{p.name}'")
            return
        b.link(node, slot, b.slot(p, 0))
        b.role(node, role, (p.name, 0))


def _batch_or_channel_entry(b, node: gs.Node, entry, x: gs.Tensor, y: gs.Tensor) -> bool:
    """InstanceNorm/GroupNorm: True for a data entry on the batch or channel axis; one on a
    spatial axis blocks, as the op normalizes over it."""
    if not data_entry(b, node, entry, x, y):
        return False
    if entry[1] >= 2:
        block_at(b, node, entry, "normalizes over the channel axis")
        return False
    return True


def instance_norm(b, node: gs.Node, entry) -> None:
    x, y = node.inputs[0], node.outputs[0]
    if not _batch_or_channel_entry(b, node, entry, x, y):
        return
    other = y if entry[0] == x.name else x
    b.link(node, entry, b.slot(other, entry[1]))
    if entry[1] == 1:
        _link_channel_params(b, node, entry, node.inputs[1:3])


def group_norm(b, node: gs.Node, entry) -> None:
    x, y = node.inputs[0], node.outputs[0]
    if not _batch_or_channel_entry(b, node, entry, x, y):
        return
    xs = b.slot(x, entry[1])
    b.link(node, xs, b.slot(y, entry[1]))
    if entry[1] == 0:
        return
    groups = int(attr(node, "num_groups"))
    c = b.size(xs)
    per = c // groups
    b.link_map(node, xs, np.arange(c), xs, (np.arange(c) // per) * per, "group-norm")
    for p in node.inputs[1:3]:
        if not isinstance(p, gs.Constant):
            block_at(b, node, xs, f"has a non-constant parameter '{p.name}'")
            return
        ps = b.slot(p, 0)
        if b.size(ps) == c:
            b.link(node, xs, ps)
        else:                                # opset 18: one scale per group
            b.link_map(node, ps, np.arange(c) // per, xs, np.arange(c), "group-norm")
        b.role(node, "norm", ps)
    b.fixup(node, "group-norm", (xs,), per_group=per)


def layer_norm(b, node: gs.Node, entry) -> None:
    x, y = node.inputs[0], node.outputs[0]
    if any(t.name and t.outputs for t in node.outputs[1:]):
        b.block_node(node, entry, f"{node_label(node)}: its Mean/InvStdDev outputs are used")
        return
    if not data_entry(b, node, entry, x, y):
        return
    rank = b.rank(x)
    start = int(attr(node, "axis", -1)) % rank
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
            block_at(b, node, entry, f"has a non-constant parameter '{p.name}'")
            return
        b.link(node, entry, b.slot(p, axis))
        b.role(node, "norm", (p.name, axis))


def quant(b, node: gs.Node, entry) -> None:
    x, scale, y = node.inputs[0], node.inputs[1], node.outputs[0]
    if not data_entry(b, node, entry, x, y):
        return
    rank = b.rank(x)
    other = y if entry[0] == x.name else x
    b.link(node, entry, b.slot(other, entry[1]))
    axis = int(attr(node, "axis", 1)) % rank
    if entry[1] == axis and b.rank(scale) == 1 and b.dim(scale, 0) == b.size(entry) != 1:
        _link_channel_params(b, node, entry, node.inputs[1:3], role="param")
