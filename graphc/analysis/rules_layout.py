"""Channel rules for spatial and layout ops: pooling, Resize/Upsample, Pad (non-channel axes),
Transpose, Concat (offsets), Split and Slice (ranges; sizes and bounds rewritten), Gather
(indices rewritten), Tile, Expand."""
from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from graphc.analysis.channel_rules import attr, block_at, data_entry, optional_input
from graphc.analysis.shape_sources import ConstElement, DimElement, as_int_list, shape_elements, slice_params
from graphc.ir import constant_value, node_label


def pool(b, node: gs.Node, entry) -> None:
    x, y = node.inputs[0], node.outputs[0]
    if len(node.outputs) > 1 and node.outputs[1].name and node.outputs[1].outputs:
        b.block_node(node, entry, f"{node_label(node)}: its Indices output encodes channel positions")
        return
    if not data_entry(b, node, entry, x, y):
        return
    if entry[1] >= 2:
        block_at(b, node, entry, "pools over the channel axis")
        return
    b.link(node, entry, b.slot(y if entry[0] == x.name else x, entry[1]))


def resize(b, node: gs.Node, entry) -> None:
    x, y = node.inputs[0], node.outputs[0]
    if not data_entry(b, node, entry, x, y):
        return
    axis, rank = entry[1], b.rank(x)
    other = b.slot(y if entry[0] == x.name else x, axis)
    axes = [a % rank for a in attr(node, "axes", range(rank))]
    if axis not in axes:
        b.link(node, entry, other)
        return
    pos = axes.index(axis)
    scales, sizes = _resize_params(node)
    if scales is not None:
        value = constant_value(scales)
        if value is not None and value.size:
            if float(value.reshape(-1)[pos]) != 1.0:
                block_at(b, node, entry, "rescales the channel axis")
                return
            b.link(node, entry, other)
            return
        if value is None or sizes is None:
            block_at(b, node, entry, "has computed scales")
            return
    if sizes is None:
        block_at(b, node, entry, "has neither scales nor sizes")
        return
    elems = shape_elements(sizes, node, b.rank)
    elem = elems[pos] if elems is not None and pos < len(elems) else None
    if b.link(node, entry, other):
        _size_element(b, node, entry, elem, other, "resize")


def _resize_params(node: gs.Node):
    if node.op == "Upsample":
        return (optional_input(node, 1), None)
    if len(node.inputs) <= 2 and node.op == "Resize":
        return (optional_input(node, 1), None)
    return (optional_input(node, 2), optional_input(node, 3))


def _size_element(b, node, entry, elem, out_slot, kind) -> None:
    """The shape element that states an output's channel count: follow, rewrite or block."""
    if isinstance(elem, DimElement):
        b.link(node, out_slot, b.slot(elem.tensor, elem.axis))
    elif isinstance(elem, ConstElement):
        if not elem.exclusive:
            block_at(b, node, entry, "shares its shape tensor with other nodes")
            return
        b.fixup(node, kind, (out_slot,), element=elem)
    else:
        block_at(b, node, entry, "computes the channel count of its output at run time")


def pad(b, node: gs.Node, entry) -> None:
    x, y = node.inputs[0], node.outputs[0]
    if not data_entry(b, node, entry, x, y):
        return
    rank = b.rank(x)
    if "pads" in node.attrs:
        pads, axes = list(node.attrs["pads"]), list(range(rank))
    else:
        pads = as_int_list(constant_value(node.inputs[1]))
        axes_t = optional_input(node, 3)
        axes = as_int_list(constant_value(axes_t)) if axes_t is not None else list(range(rank))
        if pads is None or axes is None:
            block_at(b, node, entry, "has computed pads")
            return
    axes = [a % rank for a in axes]
    if entry[1] in axes:
        i = axes.index(entry[1])
        if pads[i] != 0 or pads[i + len(axes)] != 0:
            block_at(b, node, entry, "pads the channel axis")
            return
    b.link(node, entry, b.slot(y if entry[0] == x.name else x, entry[1]))


def transpose(b, node: gs.Node, entry) -> None:
    x, y = node.inputs[0], node.outputs[0]
    if entry is None:
        return
    rank = b.rank(x)
    perm = list(attr(node, "perm", list(range(rank))[::-1]))
    if entry[0] == x.name:
        b.link(node, entry, b.slot(y, perm.index(entry[1])))
    else:
        b.link(node, entry, b.slot(x, perm[entry[1]]))


def concat(b, node: gs.Node, entry) -> None:
    y = node.outputs[0]
    rank = b.rank(y)
    if rank is None:
        block_at(b, node, entry, "has an output of unknown rank")
        return
    axis = int(attr(node, "axis")) % rank
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
            block_at(b, node, entry, f"concatenates '{t.name}' of unknown size")
            return
        if d:
            b.link_map(node, b.slot(t, axis), np.arange(d), ys, offset + np.arange(d), "concat")
        offset += d


def split_rule(b, node: gs.Node, entry) -> None:
    x = node.inputs[0]
    rank = b.rank(x)
    axis = int(attr(node, "axis", 0)) % rank
    outs = [t for t in node.outputs]
    if entry[0] != x.name and entry[0] not in {t.name for t in outs}:
        block_at(b, node, entry, f"reads '{entry[0]}' as its split sizes")
        return
    if entry[1] != axis:
        for t in [x] + outs:
            if t.name != entry[0]:
                b.link(node, entry, b.slot(t, entry[1]))
        return
    xs = b.slot(x, axis)
    sizes = [b.dim(t, axis) for t in outs]
    if xs is None or any(s is None for s in sizes):
        block_at(b, node, entry, "has outputs of unknown size")
        return
    offset = 0
    for t, d in zip(outs, sizes):
        if d:
            b.link_map(node, xs, offset + np.arange(d), b.slot(t, axis), np.arange(d), "split")
        offset += d
    b.fixup(node, "split", (xs,), sizes=sizes, axis=axis, opset=b.opset)


def slice_rule(b, node: gs.Node, entry) -> None:
    x, y = node.inputs[0], node.outputs[0]
    if not data_entry(b, node, entry, x, y):
        return
    rank = b.rank(x)
    params = slice_params(node)
    if params is None:
        block_at(b, node, entry, "slices with computed bounds")
        return
    starts, ends, axes, steps = params
    axes = [a % rank for a in axes]
    if entry[1] not in axes:
        b.link(node, entry, b.slot(y if entry[0] == x.name else x, entry[1]))
        return
    i = axes.index(entry[1])
    xs = b.slot(x, entry[1])
    if xs is None:
        block_at(b, node, entry, "slices an axis of unknown size")
        return
    picked = np.arange(b.size(xs))[slice(starts[i], ends[i], steps[i])]
    if steps[i] != 1:
        block_at(b, node, entry, "slices the channel axis with a step")
        return
    ys = b.slot(y, entry[1])
    if len(picked):
        b.link_map(node, xs, picked, ys, np.arange(len(picked)), "slice")
    b.fixup(node, "slice", (xs,), index=i, start=int(picked[0]) if len(picked) else 0,
            stop=int(picked[-1]) + 1 if len(picked) else 0)


def gather(b, node: gs.Node, entry) -> None:
    x, idx, y = node.inputs[0], node.inputs[1], node.outputs[0]
    if entry[0] == idx.name:
        block_at(b, node, entry, f"uses '{idx.name}' as indices")
        return
    rank = b.rank(x)
    axis = int(attr(node, "axis", 0)) % rank
    values = constant_value(idx)
    if values is None:
        block_at(b, node, entry, "gathers with computed indices")
        return
    extra = values.ndim - 1
    if entry[0] == x.name:
        if entry[1] == axis:
            if values.ndim != 1:
                block_at(b, node, entry, "gathers the channel axis with non-1-D indices")
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
                block_at(b, node, entry, "gathers from an axis of unknown size")
                return
            b.link_map(node, xs, values % d, entry, np.arange(values.size), "gather")
            b.fixup(node, "gather", (xs,), indices=(values % d).tolist())
        else:
            block_at(b, node, entry, "gathers the channel axis with non-1-D indices")
        return
    b.link(node, entry, b.slot(x, ax if ax < axis else ax - extra))


def tile(b, node: gs.Node, entry) -> None:
    x, y = node.inputs[0], node.outputs[0]
    if not data_entry(b, node, entry, x, y):
        return
    reps = as_int_list(constant_value(node.inputs[1]))
    if reps is None or reps[entry[1]] != 1:
        block_at(b, node, entry, "repeats the channel axis")
        return
    b.link(node, entry, b.slot(y if entry[0] == x.name else x, entry[1]))


def expand(b, node: gs.Node, entry) -> None:
    x, y = node.inputs[0], node.outputs[0]
    if not data_entry(b, node, entry, x, y):
        return
    rx, ry = b.rank(x), b.rank(y)
    ax_y = entry[1] + (ry - rx) if entry[0] == x.name else entry[1]
    ax_x = ax_y - (ry - rx)
    if ax_x < 0 or b.dim(x, ax_x) != b.size(entry):
        block_at(b, node, entry, "broadcasts into the channel axis")
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
