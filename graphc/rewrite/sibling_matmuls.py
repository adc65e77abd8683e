"""Sibling MatMuls merged into one: MatMuls that read the same activation with constant weights
(attention's query, key and value projections) become one MatMul over the concatenated weight,
followed by a Split.

With ``x`` of shape ``[..., K]`` and constant weights ``W_i`` of shape ``[K, N_i]``::

    y_i = x W_i (+ b_i),  i = 1..n
      =>  [y_1, ..., y_n] = Split(x [W_1 ... W_n] (+ [b_1 ... b_n]), [N_1, ..., N_n], axis=-1)

Column ``j`` of ``W_i`` becomes column ``N_1 + ... + N_(i-1) + j`` of the merged weight, and its
output column is the same dot product of the same row of ``x``: exact in real arithmetic; in
float32 a BLAS may block the sum over ``K`` differently for a wider ``N``, so results agree to
rounding (rtol 1e-5). The bias ``b_i`` (the one reader of ``y_i`` is an ``Add`` of a constant
``[N_i]`` vector, as an exported Linear writes it) is merged the same way when every sibling has
one; otherwise the Adds stay on the Split's outputs.

Why. Each quantized sibling quantizes the same activation and runs its own integer kernel; the
merged one quantizes once and runs one wider kernel (onnxruntime fuses the dynamic form into
one ``DynamicQuantizeMatMul`` with its bias): fewer kernels, meant for short sequences where
per-kernel overhead dominates. Per-column weight scales are unchanged by the merge (the merged weight's
scale vector is the siblings' concatenated), and so are the outlier channels measured on ``x``;
quant's outlier rule (``passes/quant/outliers.py``) judges the merged MatMul as one reader of
width ``N_1 + ... + N_n``, so strong outliers of narrowing siblings (``K > N_i``) whose merged
width is not narrowing move into the weights instead of being split (attention's Q/K/V,
``N_i = K``, are not narrowing either way).

``quant{activations=dynamic}`` merges the siblings it quantizes before quantizing them
(``merge-siblings``, default true; only siblings that are each quantized, so nothing is merged
that stays float): faster at one sentence, where per-kernel overhead dominates, and about even at
sixteen, with the same embeddings (measurements: ``benchmarks/design_notes.md``).

Left alone: fewer than two siblings; weights that are not constant 2-D float arrays (a weight
computed at run time, e.g. through a Transpose), a weight another node reads too (merging would
store it twice), siblings of another scope (an If/Loop/Scan body reading an outer tensor is
grouped within its own body).
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from graphc.ir import NameFactory, detach, drop_detached, is_graph_output, is_standard_op, walk_graphs
from graphc.passmanager import PassResult

log = logging.getLogger(__name__)

#: Split takes its sizes as an input from opset 13 (an attribute before)
SPLIT_INPUT_OPSET = 13


@dataclass(frozen=True)
class Sibling:
    """One MatMul of a group, its ``[K, N]`` weight and its bias ``Add`` (None: no bias)."""

    node: gs.Node
    weight: np.ndarray
    add: gs.Node | None
    bias: np.ndarray | None

    @property
    def output(self) -> gs.Tensor:
        """What the rest of the graph reads: the bias Add's output, or the MatMul's."""
        return (self.add or self.node).outputs[0]


def weight_reason(node: gs.Node) -> str | None:
    """Why ``node`` cannot join a merge (None: it can)."""
    if len(node.inputs) != 2 or len(node.outputs) != 1:
        return "not a two-input MatMul"
    w = node.inputs[1]
    if not isinstance(w, gs.Constant):
        return "weight is not a constant"
    values = w.values
    if values.ndim != 2 or values.dtype not in (np.float32, np.float16, np.float64):
        return "weight is not a 2-D float matrix"
    if len(w.outputs) != 1:
        return "weight is read by another node too"
    return None


def bias_of(graph: gs.Graph, node: gs.Node) -> tuple[gs.Node | None, np.ndarray | None]:
    """The ``Add`` of a constant ``[N]`` vector that is the one reader of ``node``'s output."""
    y = node.outputs[0]
    readers = list(y.outputs)
    if len(readers) != 1 or is_graph_output(graph, y) or not is_standard_op(readers[0], "Add"):
        return None, None
    add = readers[0]
    others = [t for t in add.inputs if t is not y]
    if len(add.inputs) != 2 or len(others) != 1 or not isinstance(others[0], gs.Constant):
        return None, None
    b = others[0].values
    n = node.inputs[1].values.shape[1]
    if b.shape != (n,) or b.dtype != node.inputs[1].values.dtype:
        return None, None
    return add, b


def sibling_groups(graph: gs.Graph, accept: Callable[[gs.Node], bool] | None = None) -> list[list[Sibling]]:
    """Groups (in graph order, two or more) of the scope's MatMuls that read one activation
    (only MatMuls ``accept`` takes, when given)."""
    by_input: dict[tuple[int, str], list[Sibling]] = {}  # (x, weight dtype) -> its siblings
    for node in graph.nodes:
        if not is_standard_op(node, "MatMul") or weight_reason(node) is not None \
                or isinstance(node.inputs[0], gs.Constant) or (accept is not None and not accept(node)):
            continue
        add, bias = bias_of(graph, node)
        w = node.inputs[1].values
        by_input.setdefault((id(node.inputs[0]), w.dtype.str), []).append(Sibling(node, w, add, bias))
    return [found for found in by_input.values() if len(found) >= 2]


def merge_group(graph: gs.Graph, group: list[Sibling], names: NameFactory, opset: int) -> gs.Node:
    """Replaces ``group`` by one MatMul over the concatenated weight and a Split; returns it."""
    first = group[0].node
    base = first.name or first.outputs[0].name
    x = first.inputs[0]
    dtype = group[0].weight.dtype
    with_bias = all(s.add is not None for s in group)
    merged_w = gs.Constant(names(f"{base}_merged_weight"), np.concatenate([s.weight for s in group], axis=1))
    out = gs.Variable(names(f"{base}_merged"), dtype=dtype)
    matmul = gs.Node("MatMul", names(f"{base}_merged"), inputs=[x, merged_w], outputs=[out])
    graph.nodes.append(matmul)
    if with_bias:
        biased = gs.Variable(names(f"{base}_merged_biased"), dtype=dtype)
        bias = gs.Constant(names(f"{base}_merged_bias"), np.concatenate([s.bias for s in group]))
        graph.nodes.append(gs.Node("Add", names(f"{base}_merged_bias"), inputs=[out, bias], outputs=[biased]))
        out = biased
    sizes = np.asarray([s.weight.shape[1] for s in group], np.int64)
    outputs = [s.output if with_bias else s.node.outputs[0] for s in group]
    for s in group:
        detach(s.node)
        if with_bias:
            detach(s.add)
    if opset >= SPLIT_INPUT_OPSET:
        split = gs.Node("Split", names(f"{base}_split"), attrs={"axis": -1},
                        inputs=[out, gs.Constant(names(f"{base}_split_sizes"), sizes)], outputs=outputs)
    else:
        split = gs.Node("Split", names(f"{base}_split"), attrs={"axis": -1, "split": sizes.tolist()},
                        inputs=[out], outputs=outputs)
    graph.nodes.append(split)
    return matmul


def merge_sibling_matmuls(graph: gs.Graph, opset: int, result: PassResult,
                          accept: Callable[[gs.Node], bool] | None = None) -> list[gs.Node]:
    """Merges every group of sibling MatMuls in ``graph`` and its bodies (module doc), only of
    MatMuls ``accept`` takes when it is given; counts them in ``result`` (``details``: each
    sibling ``into`` its merged MatMul). Returns the merged MatMuls."""
    names = NameFactory(graph)
    merged: list[gs.Node] = []
    for _, scope in list(walk_graphs(graph)):
        groups = sibling_groups(scope, accept)
        for group in groups:
            node = merge_group(scope, group, names, opset)
            merged.append(node)
            result.count("merged_matmuls", len(group))
            for s in group:
                result.details.append({"rule": "sibling_matmuls", "node": s.node.name, "into": node.name})
            log.info("merged %d sibling MatMuls reading %s into %s", len(group), node.inputs[0].name, node.name)
        if groups:
            drop_detached(scope)
    if merged:
        result.count("merged_groups", len(merged))
    return merged
