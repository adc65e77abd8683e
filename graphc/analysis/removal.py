"""Physically remove channels of one or more groups, keeping the function of the masked model.

``remove_channels(graph, group, indices)`` (or ``remove_channels(graph, {group: indices, ...})``)
drops group channels ``indices`` from every slot of the group:

1. every constant slot is sliced (``np.delete`` along its axis): producers' output rows and
   biases, consumers' input columns, norm and per-channel constants;
2. attributes and shape constants that state a channel count follow (Conv ``group`` of depthwise
   layers, GroupNorm ``num_groups``, Reshape/Expand/Resize target shapes, Split sizes, Slice
   bounds, Gather indices); shape constants are rewritten copy-on-write;
3. what the removed channels contributed is folded into the consumers (see :mod:`masked_values`):
   with its producers masked, a removed channel carries a per-channel constant ``v_c`` (BN shift,
   ``relu(bias)``...). A consumer ``y = W * x + b`` loses ``sum_c W[:, c] * v_c``; it is added back:
   - into the bias when the consumer sees the constant everywhere (Gemm, MatMul, Conv without
     padding): ``b' = b + sum_c v_c * sum_k W[:, c, k]``;
   - as an exact border correction when it does not (padded Conv, ConvTranspose): the sum over
     taps depends on how many fall inside the image, so the consumer's op is applied once more to
     a plane of ones with the weight ``sum_c v_c * W[:, c]`` (one input channel) and added.
     ``exact_borders=False`` folds the interior value into the bias instead (approximate at borders).

The result equals the masked model (producers' output weights and biases of those channels set to
zero, :func:`mask_channels`) up to float rounding. Several groups removed in one call are handled
together (a Concat consumer may lose slices from two groups; a layer may lose inputs and outputs).
The analysis is stale afterwards: recompute it (the pass manager drops it after a modifying pass).

Size: one rewrite per member kind (producer rows, consumer columns, norms, shape constants,
Concat slices) and the folding of masked constants, which must agree with each other.
"""
from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
import onnx_graphsurgeon as gs

from graphc.analysis.channels import ChannelGroup, Fixup
from graphc.analysis.shape_sources import ConstElement
from graphc.errors import PassError
from graphc.ir import NameFactory, node_label

log = logging.getLogger(__name__)


@dataclass
class RemovalResult:
    channels: int = 0                       # group channels removed, over all groups
    params: int = 0                         # weight elements removed
    folded_biases: int = 0                  # consumers whose bias absorbed removed constants
    border_corrections: int = 0             # correction branches added (padded consumers)
    groups: list[int] = field(default_factory=list)


def remove_channels(graph: gs.Graph, plan, indices=None, *, exact_borders: bool = True,
                    allow_inexact: bool = False) -> RemovalResult:
    """Remove ``indices`` of ``plan`` (a ChannelGroup), or each ``{group: indices}`` of a plan."""
    items = _normalize(plan, indices)
    result = RemovalResult()
    if not items:
        return result
    analysis = items[0][0].analysis
    if analysis is None or analysis.graph is not graph:
        raise PassError("remove_channels: the groups were computed on another graph; recompute them")
    for group, idx in items:
        _check(group, idx, allow_inexact)
        result.channels += len(idx)
        result.groups.append(group.id)
    deleted = _deletions(items)
    folds = [f for group, idx in items for f in _folds(analysis, group, idx, allow_inexact)]
    names = NameFactory(graph)
    pending = _fixups(analysis, deleted, names)
    result.params = _slice(graph, analysis, deleted)
    for apply in pending:
        apply()
    ones_cache: dict[str, gs.Tensor] = {}
    for fold in folds:
        fold.apply(graph, deleted, names, ones_cache, exact_borders, result)
    graph.cleanup()
    graph.toposort()
    return result


def _normalize(plan, indices):
    if isinstance(plan, ChannelGroup):
        plan = {plan: indices}
    elif indices is not None:
        raise TypeError("pass indices only with a single group")
    items = []
    for group, idx in (plan.items() if isinstance(plan, dict) else plan):
        idx = np.unique(np.asarray(list(idx), dtype=np.int64))
        if idx.size:
            items.append((group, idx))
    return items


def _check(group: ChannelGroup, idx: np.ndarray, allow_inexact: bool) -> None:
    if group.blocked:
        raise PassError(f"group {group.id} is blocked: {group.blocked[0]}")
    if group.inexact and not allow_inexact:
        raise PassError(f"group {group.id} is inexact: {group.inexact[0]}")
    if idx.min() < 0 or idx.max() >= group.size:
        raise PassError(f"group {group.id} has {group.size} channels; cannot remove {idx.tolist()}")
    if idx.size >= group.size:
        raise PassError(f"group {group.id}: removing all {group.size} channels would leave empty tensors")


def _deletions(items) -> dict[tuple[str, int], np.ndarray]:
    parts: dict = defaultdict(list)
    for group, idx in items:
        for key, pos in group.positions.items():
            parts[key].append(pos[idx].reshape(-1))
    return {k: np.unique(np.concatenate(v)) for k, v in parts.items()}


# ---------------------------------------------------------------------------------------------
# slicing


def _slice(graph: gs.Graph, analysis, deleted) -> int:
    tensors = graph.tensors()
    removed = 0
    for (name, axis), pos in deleted.items():
        tensor = tensors.get(name)
        if isinstance(tensor, gs.Constant):
            before = tensor.values.size
            tensor.values = np.ascontiguousarray(np.delete(np.asarray(tensor.values), pos, axis=axis))
            removed += before - tensor.values.size
        elif tensor is not None and tensor.shape is not None and axis < len(tensor.shape):
            shape = list(tensor.shape)
            if isinstance(shape[axis], int):
                shape[axis] -= len(pos)
                tensor.shape = shape
    return removed


# ---------------------------------------------------------------------------------------------
# fixups: attributes and shape constants


def _fixups(analysis, deleted, names) -> list:
    """Closures that rewrite attributes/shape constants; computed before slicing (sizes known)."""
    seen, out = set(), []
    for fix in analysis.fixups:
        key = (id(fix.node), fix.kind, fix.slots)
        if key in seen:
            continue
        seen.add(key)
        counts = [len(deleted.get(s, ())) for s in fix.slots]
        if not any(counts) and fix.kind != "split":
            continue
        handler = _FIXUPS[fix.kind]
        action = handler(fix, deleted, names)
        if action is not None:
            out.append(action)
    return out


def _fix_conv_group(fix: Fixup, deleted, names):
    n = len(deleted[fix.slots[0]]) // fix.data["per_group"]

    def apply():
        fix.node.attrs["group"] = int(fix.node.attrs.get("group", 1)) - n
    return apply


def _fix_group_norm(fix: Fixup, deleted, names):
    n = len(deleted[fix.slots[0]]) // fix.data["per_group"]

    def apply():
        fix.node.attrs["num_groups"] = int(fix.node.attrs["num_groups"]) - n
    return apply


def _fix_element(fix: Fixup, deleted, names):
    elem: ConstElement = fix.data["element"]
    n = len(deleted[fix.slots[0]])

    def apply():
        current = elem.reader.inputs[elem.slot]
        values = np.array(current.values, copy=True)
        values.reshape(-1)[elem.index] -= n
        elem.reader.inputs[elem.slot] = gs.Constant(names(current.name), values)
    return apply


def _fix_split(fix: Fixup, deleted, names):
    node, axis = fix.node, fix.data["axis"]
    outs = [(t.name, axis) for t in node.outputs]
    sizes = [s - len(deleted.get(k, ())) for s, k in zip(fix.data["sizes"], outs)]
    if sizes == fix.data["sizes"]:
        return None

    def apply():
        if "split" not in node.attrs and (len(node.inputs) > 1 or fix.data["opset"] >= 13):
            node.attrs.pop("num_outputs", None)
            const = gs.Constant(names(f"{node.name or 'split'}.sizes"), np.asarray(sizes, np.int64))
            if len(node.inputs) > 1:
                node.inputs[1] = const
            else:
                node.inputs.append(const)
        else:
            node.attrs["split"] = sizes
    return apply


def _fix_slice(fix: Fixup, deleted, names):
    node, i = fix.node, fix.data["index"]
    removed = deleted[fix.slots[0]]
    start = fix.data["start"] - int(np.sum(removed < fix.data["start"]))
    stop = fix.data["stop"] - int(np.sum(removed < fix.data["stop"]))

    def apply():
        if "starts" in node.attrs:
            starts, ends = list(node.attrs["starts"]), list(node.attrs["ends"])
            starts[i], ends[i] = start, stop
            node.attrs["starts"], node.attrs["ends"] = starts, ends
            return
        for slot, value in ((1, start), (2, stop)):
            values = np.array(node.inputs[slot].values, copy=True)
            values.reshape(-1)[i] = value
            node.inputs[slot] = gs.Constant(names(node.inputs[slot].name), values)
    return apply


def _fix_gather(fix: Fixup, deleted, names):
    node = fix.node
    removed = deleted.get(fix.slots[0], np.zeros(0, np.int64))
    old = np.asarray(fix.data["indices"], dtype=np.int64)
    kept = old[~np.isin(old, removed)]
    new = kept - np.searchsorted(removed, kept)

    def apply():
        node.inputs[1] = gs.Constant(names(node.inputs[1].name), new.astype(np.int64))
    return apply


_FIXUPS = {"conv-group": _fix_conv_group, "group-norm": _fix_group_norm, "reshape": _fix_element,
           "resize": _fix_element, "expand": _fix_element, "split": _fix_split, "slice": _fix_slice,
           "gather": _fix_gather}


# ---------------------------------------------------------------------------------------------
# folding removed constants into consumers


@dataclass
class _Fold:
    node: gs.Node
    kind: str                   # bias | gemm-bias | conv-border | convT-border | matmul-bias
    delta: np.ndarray           # bias delta over the consumer's outputs, or the border kernel
    out_slot: tuple[str, int]   # the consumer's output slot (its removed rows are dropped)
    out_axis: int               # axis of ``delta`` that follows out_slot

    def apply(self, graph, deleted, names, ones_cache, exact_borders, result) -> None:
        delta = self.delta
        if self.out_slot in deleted:
            delta = np.delete(delta, deleted[self.out_slot], axis=self.out_axis)
        if not np.any(delta):  # the consumer reads the removed channels with zero weights
            return
        if self.kind == "conv-border" and not exact_borders:
            self.kind, delta = "bias", delta.reshape(delta.shape[0], -1).sum(axis=1)
        if self.kind in ("bias", "gemm-bias"):
            _add_to_bias(self.node, delta, names)
            result.folded_biases += 1
        elif self.kind == "matmul-bias":
            _add_after(graph, self.node, delta, names)
            result.folded_biases += 1
        else:
            _border_correction(graph, self.node, delta, names, ones_cache)
            result.border_corrections += 1


def _folds(analysis, group, idx, allow_inexact) -> list[_Fold]:
    values = analysis.masked_values(group)
    folds = []
    for sink in values.sinks:
        pos = group.positions[sink.slot][idx].reshape(-1)
        v = values.values[sink.slot][pos]
        if sink.kind == "contraction" or not np.any(v != 0):
            continue
        if np.isnan(v).any():
            if allow_inexact:
                continue
            raise PassError(f"group {group.id}: removed channels do not reach {node_label(sink.node)} "
                            "as constants; removal would change the result")
        folds.append(_FOLDERS[sink.kind](analysis, sink.node, pos, v))
    return folds


def _conv_fold(analysis, node, pos, v) -> _Fold:
    w = np.asarray(node.inputs[1].values, dtype=np.float64)
    g = int(node.attrs.get("group", 1))
    cout, cin_g = w.shape[:2]
    cout_g = cout // g
    kernel = np.zeros((cout,) + w.shape[2:])
    for p, val in zip(pos, v):
        gi, j = divmod(int(p), cin_g)
        rows = slice(gi * cout_g, (gi + 1) * cout_g)
        kernel[rows] += val * w[rows, j]
    out_slot = (node.outputs[0].name, 1)
    if _padded(node):
        return _Fold(node, "conv-border", kernel[:, None].astype(np.float32), out_slot, 0)
    return _Fold(node, "bias", kernel.reshape(cout, -1).sum(axis=1), out_slot, 0)


def _conv_transpose_fold(analysis, node, pos, v) -> _Fold:
    w = np.asarray(node.inputs[1].values, dtype=np.float64)     # (Cin, Cout/g, k...)
    g = int(node.attrs.get("group", 1))
    cin, cout_g = w.shape[:2]
    cin_g = cin // g
    kernel = np.zeros((cout_g * g,) + w.shape[2:])
    for p, val in zip(pos, v):
        gi = int(p) // cin_g
        kernel[gi * cout_g:(gi + 1) * cout_g] += val * w[int(p)]
    out_slot = (node.outputs[0].name, 1)
    trivial = all(k == 1 for k in w.shape[2:]) and not _padded(node) and \
        all(s == 1 for s in node.attrs.get("strides", [1])) and not any(node.attrs.get("output_padding", []))
    if trivial:
        return _Fold(node, "bias", kernel.reshape(kernel.shape[0], -1).sum(axis=1), out_slot, 0)
    return _Fold(node, "convT-border", kernel[None].astype(np.float32), out_slot, 1)


def _gemm_fold(analysis, node, pos, v) -> _Fold:
    w = np.asarray(node.inputs[1].values, dtype=np.float64)
    rows = w.T[pos] if node.attrs.get("transB", 0) else w[pos]
    delta = float(node.attrs.get("alpha", 1.0)) * (v @ rows)
    beta = float(node.attrs.get("beta", 1.0))
    if len(node.inputs) > 2 and node.inputs[2].name:
        if beta == 0:
            raise PassError(f"{node_label(node)} has beta=0; cannot fold removed channels into C")
        delta = delta / beta
    return _Fold(node, "gemm-bias", delta, (node.outputs[0].name, 1), 0)


def _matmul_fold(analysis, node, pos, v) -> _Fold:
    w = _matrix_weight(node, 1)
    y = node.outputs[0]
    rank = analysis.rank(y) or 2
    return _Fold(node, "matmul-bias", v @ w[pos], (y.name, rank - 1), 0)


def _matmul_left_fold(analysis, node, pos, v) -> _Fold:
    """W @ X with constant rows of X removed: each output row m gains sum_c W[m, c] v_c."""
    w = _matrix_weight(node, 0)
    y = node.outputs[0]
    rank = analysis.rank(y) or 2
    return _Fold(node, "matmul-bias", (w[:, pos] @ v)[:, None], (y.name, rank - 2), 0)


def _matrix_weight(node, index: int) -> np.ndarray:
    """A MatMul's constant operand ``index`` as a float64 matrix; a batched one cannot take a fold."""
    w = np.asarray(node.inputs[index].values, dtype=np.float64)
    if w.ndim != 2:
        raise PassError(f"{node_label(node)}: folding into a batched weight is not supported")
    return w


_FOLDERS = {"conv": _conv_fold, "conv-transpose": _conv_transpose_fold, "gemm": _gemm_fold,
            "matmul": _matmul_fold, "matmul-left": _matmul_left_fold}


def _padded(node) -> bool:
    auto = node.attrs.get("auto_pad", "NOTSET")
    if isinstance(auto, bytes):
        auto = auto.decode()
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        kernel = node.inputs[1].values.shape[2:]
        return any(k != 1 for k in kernel) or any(s != 1 for s in node.attrs.get("strides", []))
    if auto == "VALID":
        return False
    return any(int(p) for p in node.attrs.get("pads", []))


def _add_to_bias(node, delta, names) -> None:
    """Add ``delta`` to a Conv's bias or a Gemm's C (input 2), creating it (Gemm with beta 1) when
    absent; a bias other nodes read too is copied, not changed."""
    dtype = node.inputs[1].values.dtype
    if len(node.inputs) > 2 and node.inputs[2].name:
        bias = node.inputs[2]
        values = np.asarray(bias.values, dtype=np.float64) + delta
        if len(bias.outputs) == 1:
            bias.values = values.astype(dtype)
        else:
            node.inputs[2] = gs.Constant(names(f"{bias.name}.folded"), values.astype(dtype))
    elif node.op == "Gemm":
        node.attrs["beta"] = 1.0
        node.inputs.append(gs.Constant(names(f"{node.name or 'gemm'}.C"), delta.astype(dtype)))
    else:
        node.inputs.append(gs.Constant(names(f"{node.name or 'conv'}.bias"), delta.astype(dtype)))


def _add_after(graph, node, delta, names) -> None:
    """Add a constant to a node's output: into its bias Add when it has an exclusive 1-D one,
    else a new Add between the node and its readers."""
    dtype = next(np.asarray(t.values).dtype for t in node.inputs if isinstance(t, gs.Constant))
    y = node.outputs[0]
    users = list(y.outputs)
    if delta.ndim == 1 and len(users) == 1 and users[0].op == "Add" and len(users[0].inputs) == 2:
        add = users[0]
        c = add.inputs[1] if add.inputs[0] is y else add.inputs[0]
        if isinstance(c, gs.Constant) and len(c.outputs) == 1 and c.values.shape[-1:] == delta.shape \
                and c.values.size == delta.size:
            c.values = (np.asarray(c.values, np.float64) + delta.reshape(c.values.shape)).astype(c.values.dtype)
            return
    raw = gs.Variable(names(f"{y.name}.unfolded"), dtype=y.dtype or dtype)
    node.outputs[0] = raw
    const = gs.Constant(names(f"{node.name or y.name}.folded"), delta.astype(dtype))
    graph.nodes.append(gs.Node("Add", name=names(f"{node.name or y.name}.fold"), inputs=[raw, const],
                               outputs=[y]))


def _border_correction(graph, node, kernel, names, ones_cache) -> None:
    """y += op(ones, kernel): the exact contribution of removed constant channels, borders included."""
    x, y = node.inputs[0], node.outputs[0]
    dtype = np.asarray(node.inputs[1].values).dtype
    ones = ones_cache.get(x.name)
    if ones is None:
        rank = np.asarray(node.inputs[1].values).ndim  # the weight's: N, C and one dim per kernel axis
        ones = _ones_plane(graph, x, rank, dtype, names)
        ones_cache[x.name] = ones
    attrs = {k: v for k, v in node.attrs.items() if k != "group"}
    corr = gs.Variable(names(f"{y.name}.border"), dtype=y.dtype or dtype)
    graph.nodes.append(gs.Node(node.op, name=names(f"{node.name or y.name}.border"), attrs=attrs,
                               inputs=[ones, gs.Constant(names(f"{node.name or y.name}.border_w"),
                                                         kernel.astype(dtype))],
                               outputs=[corr]))
    raw = gs.Variable(names(f"{y.name}.unfolded"), dtype=y.dtype or dtype)
    node.outputs[0] = raw
    graph.nodes.append(gs.Node("Add", name=names(f"{node.name or y.name}.fold"), inputs=[raw, corr],
                               outputs=[y]))


def _ones_plane(graph, x, rank: int, dtype, names) -> gs.Tensor:
    """(1, 1, spatial...) of ones, as large as ``x``'s planes at run time (the correction broadcasts
    over the batch): ConstantOfShape of ``[1, 1] + shape(x)[2:]``.

    The plane's shape never reads the channel dim of ``x`` (Shape with ``start=2``, or a Gather of
    the spatial dims below opset 15), so the channel analysis of the result sees ``x``'s group whole
    and a later prune of the same model finds the same groups (a Slice of channel 0 would split it).
    """
    base = x.name
    spatial = gs.Variable(names(f"{base}.plane_dims"), dtype=np.int64)
    if int(graph.opset) >= 15:
        graph.nodes.append(gs.Node("Shape", name=names(f"{base}.plane_dims"), inputs=[x], outputs=[spatial],
                                   attrs={"start": 2}))
    else:
        full = gs.Variable(names(f"{base}.shape"), dtype=np.int64)
        graph.nodes.append(gs.Node("Shape", name=names(f"{base}.shape"), inputs=[x], outputs=[full]))
        graph.nodes.append(gs.Node("Gather", name=names(f"{base}.plane_dims"), attrs={"axis": 0}, inputs=[
            full, gs.Constant(names(f"{base}.spatial_axes"), np.arange(2, rank, dtype=np.int64))],
            outputs=[spatial]))
    shape = gs.Variable(names(f"{base}.plane_shape"), dtype=np.int64)
    graph.nodes.append(gs.Node("Concat", name=names(f"{base}.plane_shape"), attrs={"axis": 0}, inputs=[
        gs.Constant(names(f"{base}.unit_dims"), np.ones(2, np.int64)), spatial], outputs=[shape]))
    ones = gs.Variable(names(f"{base}.ones"), dtype=dtype)
    graph.nodes.append(gs.Node("ConstantOfShape", name=names(f"{base}.ones"), inputs=[shape], outputs=[ones],
                               attrs={"value": gs.Constant(names(f"{base}.one"), np.ones(1, dtype))}))
    return ones


def is_border_branch(node: gs.Node) -> bool:
    """Whether ``node`` is a correction branch :func:`remove_channels` added: a Conv/ConvTranspose
    over a plane of ones (ConstantOfShape). It computes no feature of its own, so it does not
    name a group (a group's key is its layers), though its rows are removed with the group."""
    if node.op not in ("Conv", "ConvTranspose") or not node.inputs:
        return False
    source = node.inputs[0].inputs
    return len(source) == 1 and source[0].op == "ConstantOfShape"


# ---------------------------------------------------------------------------------------------
# masking (the reference removal must match)


def mask_channels(graph: gs.Graph, group: ChannelGroup, indices) -> int:
    """Zero the group's channels ``indices`` in its producers: output weights and biases.

    Works by tensor name, so ``graph`` may be a copy of the analysed graph. Returns the number
    of weights set to zero.
    """
    idx = np.unique(np.asarray(list(indices), dtype=np.int64))
    tensors = graph.tensors()
    zeroed = 0
    for m in group.role("producer", "bias"):
        tensor = tensors.get(m.slot[0])
        if not isinstance(tensor, gs.Constant) or m.slot not in group.positions:
            continue
        pos = group.positions[m.slot][idx].reshape(-1)
        values = np.array(tensor.values, copy=True)
        index = [slice(None)] * values.ndim
        index[m.slot[1]] = pos
        zeroed += int(values[tuple(index)].size)
        values[tuple(index)] = 0
        tensor.values = values
    return zeroed
