"""Channel rules for ops along one axis (reductions, Softmax, ArgMax, TopK, CumSum, norms over an
axis): they block when that axis is the channel axis. ``Shape`` reading a channel count is
followed to where the count goes: into a Reshape/Expand/Resize target (coupled), or blocks."""
from __future__ import annotations

import onnx_graphsurgeon as gs

from graphc.analysis.channel_rules import attr, block_at, data_entry, optional_input
from graphc.analysis.shape_sources import as_int_list, selected_indices
from graphc.ir import constant_value, is_standard_op, node_label


def _along_axis(b, node: gs.Node, entry, axes, keepdims: bool, what: str) -> None:
    """Ops that reduce or mix along ``axes``: block if the channel axis is one of them."""
    x, y = node.inputs[0], node.outputs[0]
    if not data_entry(b, node, entry, x, y):
        return
    rank = b.rank(x)
    axes = sorted({a % rank for a in axes}) if axes is not None else list(range(rank))
    if entry[0] == x.name:
        if entry[1] in axes:
            block_at(b, node, entry, f"{what} the channel axis")
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
        block_at(b, node, entry, f"{what} the channel axis")
        return
    b.link(node, entry, b.slot(x, in_axis))


def reduce(b, node: gs.Node, entry) -> None:
    axes = attr(node, "axes", None)
    if axes is None and optional_input(node, 1) is not None:
        axes = as_int_list(constant_value(node.inputs[1]))
        if axes is None:
            block_at(b, node, entry, "reduces over computed axes")
            return
    if axes is not None and len(axes) == 0:
        axes = None if not attr(node, "noop_with_empty_axes", 0) else []
    _along_axis(b, node, entry, axes, bool(attr(node, "keepdims", 1)), "reduces")


def argmax(b, node: gs.Node, entry) -> None:
    _along_axis(b, node, entry, [int(attr(node, "axis", 0))], bool(attr(node, "keepdims", 1)), "reduces")


def softmax(b, node: gs.Node, entry) -> None:
    rank = b.rank(node.inputs[0])
    if b.opset >= 13:
        axes = [int(attr(node, "axis", -1))]
    else:
        axes = list(range(int(attr(node, "axis", 1)) % rank, rank))
    _along_axis(b, node, entry, axes, True, "normalizes over")


def topk(b, node: gs.Node, entry) -> None:
    _along_axis(b, node, entry, [int(attr(node, "axis", -1))], True, "selects along")


def cumsum(b, node: gs.Node, entry) -> None:
    axis = as_int_list(constant_value(node.inputs[1]))
    if axis is None:
        block_at(b, node, entry, "sums along a computed axis")
        return
    _along_axis(b, node, entry, axis, True, "accumulates along")


def lp_norm(b, node: gs.Node, entry) -> None:
    _along_axis(b, node, entry, [int(attr(node, "axis", -1))], True, "normalizes over")


def mvn(b, node: gs.Node, entry) -> None:
    _along_axis(b, node, entry, list(attr(node, "axes", [0, 2, 3])), True, "normalizes over")


def mixes_channels(b, node: gs.Node, entry) -> None:
    if entry is not None and entry[1] == 1:
        block_at(b, node, entry, "mixes channels with each other or with space")
        return
    if node.op == "LRN":
        x, y = node.inputs[0], node.outputs[0]
        if data_entry(b, node, entry, x, y):
            b.link(node, entry, b.slot(y if entry[0] == x.name else x, entry[1]))
        return
    block_at(b, node, entry, "moves channels into space")


def shape(b, node: gs.Node, entry) -> None:
    """Shape reads the channel count: fine if it only ever becomes the same dim of a reshape."""
    x = node.inputs[0]
    rank = b.rank(x)
    start, end = int(attr(node, "start", 0)), attr(node, "end", None)
    taken = list(range(rank))[slice(start, None if end is None else int(end))]
    if entry[1] not in taken:
        return
    _follow_dim(b, node, entry, node.outputs[0], {taken.index(entry[1])}, 0)


def size(b, node: gs.Node, entry) -> None:
    block_at(b, node, entry, "reads the element count")


PLUMBING = ("Cast", "Identity", "Squeeze", "Unsqueeze")


def _follow_dim(b, shape_node, entry, tensor: gs.Tensor, idx: set, depth: int) -> None:
    if depth > 24 or not idx:
        return
    if tensor.name in b.graph_outputs:
        block_at(b, shape_node, entry, "reads the channel count into a graph output")
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
                    block_at(b, shape_node, entry, f"reads the channel count into {node_label(user)}")
                    return
                offset += n
            _follow_dim(b, shape_node, entry, out, {i + offset for i in idx}, depth + 1)
        elif op in ("Slice", "Gather") and user.inputs[0] is tensor:
            n = b.dim(tensor, 0) if b.rank(tensor) == 1 else None
            picked = selected_indices(user, n) if n is not None else None
            if picked is None:
                block_at(b, shape_node, entry, f"reads the channel count into {node_label(user)}")
                return
            _follow_dim(b, shape_node, entry, out, {j for j, p in enumerate(picked) if p in idx}, depth + 1)
        elif (op in ("Reshape", "Expand") and user.inputs[1] is tensor) or \
                (op == "Resize" and len(user.inputs) > 3 and user.inputs[3] is tensor):
            shift = b.rank(out) - b.dim(tensor, 0) if op == "Expand" else 0
            for i in idx:
                b.link(shape_node, entry, b.slot(out, i + shift))
        else:
            block_at(b, shape_node, entry, f"reads the channel count into {node_label(user)}")
            return
