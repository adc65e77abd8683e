"""Channel rules for ops that regroup axes: Reshape, Flatten, Squeeze, Unsqueeze.

Input and output dims are paired into blocks (:func:`factor_blocks`); the channel axis may map
one-to-one, be merged with neighbours (position p of the merged axis is channel (p // inner) % C:
the stride map of Flatten before a Gemm), or be split (heads x head_dim: the slot follows the
heads, or the head dims with ``attention="head-dims"``). A Reshape's target shape must then
state the new count: a constant (rewritten on removal), -1, 0 on the same axis, or a Shape of a
coupled tensor; anything else blocks."""
from __future__ import annotations

from math import prod

import numpy as np
import onnx_graphsurgeon as gs

from graphc.analysis.channel_rules import attr, block_at
from graphc.analysis.shape_sources import ConstElement, DimElement, shape_elements
from graphc.ir import node_label


def reshape(b, node: gs.Node, entry, decide: bool = False) -> None:
    x, shape_t, y = node.inputs[0], node.inputs[1], node.outputs[0]
    if entry is None:
        return
    if entry[0] not in (x.name, y.name):
        block_at(b, node, entry, f"uses '{entry[0]}' as its target shape")
        return
    elems = shape_elements(shape_t, node, b.rank)
    in_dims, out_dims = b.dims(x), b.dims(y)
    if out_dims is None and elems is not None:
        out_dims = _dims_from_elements(b, elems, in_dims, out_dims)
    if in_dims is not None and out_dims is not None and elems is not None and len(elems) == len(out_dims):
        out_dims = _evidence(b, node, x, elems, in_dims, out_dims)
    if in_dims is not None and out_dims is not None:
        in_dims, out_dims = _one_unknown_each(in_dims, out_dims)
    _regroup(b, node, entry, in_dims, out_dims, decide, lambda out_axis, same_axis: _reshape_fix(
        b, node, entry, elems, out_axis, same_axis))


def _evidence(b, node, x, elems, in_dims, out_dims) -> tuple:
    """Output dims the target shape proves equal to input dims (0 copies, Shape of the input)."""
    out = list(out_dims)
    for j, e in enumerate(elems):
        if isinstance(out[j], int):
            continue
        if isinstance(e, ConstElement) and e.value == 0 and not attr(node, "allowzero", 0) and j < len(in_dims):
            out[j] = in_dims[j]
        elif isinstance(e, DimElement):
            d = in_dims if e.tensor is x else b.dims(e.tensor)
            if d is not None and e.axis < len(d) and d[e.axis] is not None:
                out[j] = d[e.axis]
    return tuple(out)


def _one_unknown_each(in_dims, out_dims) -> tuple[tuple, tuple]:
    """With one unknown dim on each side and equal products of the known ones, the two unknown
    dims are equal (same element count): name them alike (``-1`` for the batch, typically)."""
    unknown_in = [i for i, d in enumerate(in_dims) if not isinstance(d, int)]
    unknown_out = [j for j, d in enumerate(out_dims) if not isinstance(d, int)]
    if len(unknown_in) != 1 or len(unknown_out) != 1:
        return in_dims, out_dims
    known_in = prod(d for d in in_dims if isinstance(d, int))
    known_out = prod(d for d in out_dims if isinstance(d, int))
    if known_in != known_out:
        return in_dims, out_dims
    token = in_dims[unknown_in[0]] if isinstance(in_dims[unknown_in[0]], str) else "?same"
    ins, outs = list(in_dims), list(out_dims)
    ins[unknown_in[0]] = outs[unknown_out[0]] = token
    return tuple(ins), tuple(outs)


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
        block_at(b, node, entry, "computes its target shape at run time")
        return False
    elem = elems[out_axis]
    ys = (node.outputs[0].name, out_axis)
    if isinstance(elem, ConstElement):
        allowzero = int(attr(node, "allowzero", 0))
        if elem.value == -1:
            return True
        if elem.value == 0 and not allowzero:
            if same_axis:
                return True
            block_at(b, node, entry, "copies (0) a dim that is not the channel axis into it")
            return False
        if not elem.exclusive:
            block_at(b, node, entry, "shares its shape tensor with other nodes")
            return False
        b.fixup(node, "reshape", (ys,), element=elem)
        return True
    if isinstance(elem, DimElement):
        b.link(node, ys, b.slot(elem.tensor, elem.axis))
        return True
    block_at(b, node, entry, "computes the channel count of its target shape at run time")
    return False


def flatten(b, node: gs.Node, entry) -> None:
    x, y = node.inputs[0], node.outputs[0]
    in_dims = b.dims(x)
    if in_dims is None:
        block_at(b, node, entry, "has an input of unknown shape")
        return
    axis = int(attr(node, "axis", 1))
    axis = axis + len(in_dims) if axis < 0 else axis
    out_dims = (_prod(in_dims[:axis]), _prod(in_dims[axis:]))
    blocks = [(list(range(axis)), [0]), (list(range(axis, len(in_dims))), [1])]   # exactly, whatever the dims
    _regroup(b, node, entry, in_dims, out_dims, True, None,
             blocks=[(ins, outs) for ins, outs in blocks if ins])


def squeeze(b, node: gs.Node, entry) -> None:
    x, y = node.inputs[0], node.outputs[0]
    if entry[0] not in (x.name, y.name):
        block_at(b, node, entry, f"reads '{entry[0]}' as its axes")
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


def _regroup(b, node, entry, in_dims, out_dims, decide, fix, blocks=None) -> None:
    """Map the entry axis through a reshape-like op (Reshape, Flatten, Squeeze, Unsqueeze)."""
    if entry is None:
        return
    x, y = node.inputs[0], node.outputs[0]
    if in_dims is None or out_dims is None:
        block_at(b, node, entry, "has an input or output of unknown shape")
        return
    size = b.size(entry)
    if size == 1:
        return                              # a lone channel: nothing to follow
    on_input = entry[0] == x.name
    block = next((blk for blk in (blocks or factor_blocks(in_dims, out_dims))
                  if entry[1] in (blk[0] if on_input else blk[1])), None)
    if block is None:
        block_at(b, node, entry, "drops the channel axis")
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
        block_at(b, node, entry, f"regroups the channel axis with others "
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
                block_at(b, node, entry, "merges two channel axes")
            else:                           # wait until the input's channel axis is known
                b.unresolved.append((node, entry, f"{node_label(node)} merges axes "
                                     f"{_dims(in_dims, in_axes)} into it, none of which carries channels"))
            return
        channel = have[0]
    dims = [in_dims[a] for a in in_axes]
    if not all(isinstance(d, int) for d in dims):
        block_at(b, node, entry, "merges the channel axis with dims of unknown size")
        return
    inner = prod(in_dims[a] for a in in_axes if a > channel)
    total = prod(dims)
    xs, ys = b.slot(x, channel), b.slot(y, out_axis)
    if ys is None:
        ys = b.slot(y, out_axis, size=total)
    if fix is not None and not fix(out_axis, False):
        return
    b.link_map(node, xs, (np.arange(total) // inner) % in_dims[channel], ys, np.arange(total), "merge")


def _split_axis(b, node, entry, in_axis, out_axes, out_dims, decide, fix, on_input) -> None:
    x, y = node.inputs[0], node.outputs[0]
    if not all(isinstance(out_dims[a], int) for a in out_axes):
        block_at(b, node, entry, "splits the channel axis into dims of unknown size")
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
        block_at(b, node, xs, "splits the channel axis into dims of unknown size")
        return
    inner = prod(out_dims[a] for a in out_axes if a > sub)
    if fix is not None and not fix(sub, False):
        return
    c = b.size(xs)
    kind = "heads" if sub != out_axes[-1] else "head-dims"
    b.link_map(node, xs, np.arange(c), ys, (np.arange(c) // inner) % out_dims[sub], kind)
