"""Model statistics: parameters, bytes, op histogram, and multiply-accumulates per node.

MACs (batch as given by the shapes; use ``input_shapes`` with batch 1 for per-sample numbers):
- Conv:          N * Cout * prod(out_spatial) * (Cin / group) * prod(kernel)
- ConvTranspose: N * Cin * prod(in_spatial) * (Cout / group) * prod(kernel)
- Gemm:          M * N * K                      (from A's and B's shapes and transA/transB)
- MatMul:        prod(output shape) * K         (K = last dim of A)
Nodes whose shapes are unknown contribute None and are listed as such. Nodes inside If/Loop/Scan
bodies are counted too (every branch: statistics describe the file) and named by their path
(``If_0/then_branch/Conv_2``).
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from math import prod

import numpy as np
import onnx_graphsurgeon as gs

from graphc.ir.model import Model
from graphc.ir.op_kinds import LINEAR_OPS
from graphc.ir.shapes import TensorInfo
from graphc.ir.subgraphs import named_nodes, walk_graphs


@dataclass
class NodeMacs:
    name: str
    op: str
    macs: int | None


@dataclass
class ModelStats:
    params: int
    weight_bytes: int
    op_histogram: dict[str, int]
    macs: int
    per_node: list[NodeMacs] = field(default_factory=list)

    @property
    def unknown_macs(self) -> list[str]:
        return [n.name for n in self.per_node if n.macs is None]


def count_params(graph: gs.Graph) -> tuple[int, int]:
    """(element count, bytes) of all floating-point and integer weights; scalars and shape
    constants (1-D int64) are counted too, they are negligible."""
    params = nbytes = 0
    constants: dict[int, gs.Constant] = {}  # by object: a body lists the outer constants it reads
    for _, scope in walk_graphs(graph):
        constants.update((id(t), t) for t in scope.tensors().values() if isinstance(t, gs.Constant))
    for tensor in constants.values():
        size = int(prod(tensor.shape)) if tensor.shape else 1
        params += size
        nbytes += size * _itemsize(tensor)
    return params, nbytes


def _itemsize(tensor: gs.Constant) -> int:
    """Bytes per element; float8/bfloat16/int4 weights have no numpy dtype of their own."""
    try:
        return np.dtype(tensor.dtype).itemsize
    except TypeError:
        values = tensor.values
        return values.itemsize if hasattr(values, "itemsize") else 1


def node_macs(node: gs.Node, shapes: dict[str, TensorInfo]) -> int | None:
    """MACs of one node from static shapes, or None if they are unknown or the op has none."""
    try:
        return _node_macs(node, shapes)
    except (IndexError, TypeError):  # ranks that do not fit the op (an invalid model)
        return None


def _node_macs(node: gs.Node, shapes: dict[str, TensorInfo]) -> int | None:
    def shape(i: int, outputs: bool = False):
        tensors = node.outputs if outputs else node.inputs
        if i >= len(tensors):
            return None
        info = shapes.get(tensors[i].name)
        return info.shape if info is not None and info.static else None

    if node.op == "Conv":
        out, w = shape(0, outputs=True), shape(1)
        if out is None or w is None:
            return None
        return int(prod(out) * prod(w[1:]))
    if node.op == "ConvTranspose":
        x, w = shape(0), shape(1)
        if x is None or w is None:
            return None
        return int(prod(x) * w[1] * prod(w[2:]))  # w is (Cin, Cout/group, k...)
    if node.op == "Gemm":
        a, b = shape(0), shape(1)
        if a is None or b is None:
            return None
        m = a[1] if node.attrs.get("transA", 0) else a[0]
        k = a[0] if node.attrs.get("transA", 0) else a[1]
        n = b[0] if node.attrs.get("transB", 0) else b[1]
        return int(m * n * k)
    if node.op == "MatMul":
        a, out = shape(0), shape(0, outputs=True)
        if a is None or out is None:
            return None
        return int(prod(out) * a[-1])
    return None


def stats_at(model: Model, shapes: dict[str, TensorInfo]) -> ModelStats:
    """Statistics of ``model`` with MACs counted at ``shapes`` (``None`` where they are unknown).
    :func:`graphc.stats.model_stats` chooses the shapes and measures those inference lost."""
    graph = model.graph
    params, nbytes = count_params(graph)
    nodes = all_nodes(graph)
    histogram = Counter(node.op for node in nodes)
    per_node = [NodeMacs(name, n.op, node_macs(n, shapes)) for name, n in named_nodes(graph) if n.op in LINEAR_OPS]
    total = sum(n.macs for n in per_node if n.macs)
    return ModelStats(params, nbytes, dict(histogram.most_common()), total, per_node)


def unknown_mac_nodes(nodes: list[gs.Node], shapes: dict[str, TensorInfo]) -> list[gs.Node]:
    """The MAC layers among ``nodes`` whose MACs ``shapes`` leave unknown."""
    return [n for n in nodes if n.op in LINEAR_OPS and node_macs(n, shapes) is None]


def all_nodes(graph: gs.Graph) -> list[gs.Node]:
    """The nodes of ``graph`` and of every If/Loop/Scan body in it (every branch counts, though
    one runs: statistics describe the file)."""
    return [node for _, scope in walk_graphs(graph) for node in scope.nodes]
