"""Graph edits of the prune pass around channel removal: refitted weights and bias changes.

Weights are written in place before removal (the analysis knows constants by name, so removal
then slices the refitted weight's zero columns and, with nothing to fold, adds nothing). Bias
changes are added after removal, restricted to the output rows the consumer kept: a bias the
consumer does not have yet is created then, at its final size.
"""
from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from graphc.passes.prune.importance import ConsumerInput
from graphc.passes.prune.reconstruct import layer_weight
from graphc.ir import NameFactory


def write_weight(consumer: ConsumerInput, matrix: np.ndarray) -> None:
    """A refitted (outputs x features) matrix as the consumer's weight, in place (same constant,
    same name, same shape: removal slices it by name)."""
    consumer.weight.values = np.ascontiguousarray(layer_weight(consumer, matrix))


def add_bias(graph: gs.Graph, consumer: ConsumerInput, delta: np.ndarray, names: NameFactory) -> None:
    """``output += delta`` (per output channel) on the consumer: its Conv bias, Gemm C (divided by
    beta), or the Add after a MatMul (a new Add when there is no exclusive per-column one)."""
    if not np.any(delta):
        return
    c = consumer
    node = c.node
    dtype = c.weight.values.dtype
    if c.kind == "conv":
        _add_to_input(node, 2, delta, dtype, names, f"{node.name or 'conv'}.bias")
    elif c.kind == "gemm":
        beta = float(node.attrs.get("beta", 1.0))
        if len(node.inputs) > 2 and node.inputs[2].name:
            _add_to_input(node, 2, delta / beta, dtype, names, f"{node.name or 'gemm'}.C")
        else:
            node.attrs["beta"] = 1.0
            _add_to_input(node, 2, delta, dtype, names, f"{node.name or 'gemm'}.C")
    else:
        _add_after(graph, node, delta, dtype, names)


def bias_supported(refit_consumer) -> str | None:
    """Why the consumer's bias cannot take a per-output change, or None."""
    node = refit_consumer.node
    if refit_consumer.kind == "gemm" and len(node.inputs) > 2 and node.inputs[2].name:
        c = node.inputs[2]
        if not isinstance(c, gs.Constant):
            return "Gemm C is not constant"
        out = refit_consumer.weight_matrix().shape[0]
        if c.values.size not in (1, out) or (c.values.ndim == 2 and c.values.shape[0] != 1):
            return "Gemm C is not a per-column bias"
        if float(node.attrs.get("beta", 1.0)) == 0.0:
            return "Gemm beta is 0"
    if refit_consumer.kind == "conv" and len(node.inputs) > 2 and node.inputs[2].name and \
            not isinstance(node.inputs[2], gs.Constant):
        return "Conv bias is not constant"
    return None


def _add_to_input(node: gs.Node, slot: int, delta: np.ndarray, dtype, names: NameFactory, base: str) -> None:
    if len(node.inputs) > slot and node.inputs[slot].name:
        bias = node.inputs[slot]
        old = np.asarray(bias.values, dtype=np.float64)
        values = (np.broadcast_to(old.reshape(-1), delta.shape) + delta).reshape(
            old.shape if old.size == delta.size else delta.shape).astype(bias.values.dtype)
        if len(bias.outputs) == 1:
            bias.values = values
        else:
            node.inputs[slot] = gs.Constant(names(f"{bias.name}.pruned"), values)
        return
    while len(node.inputs) < slot:
        node.inputs.append(gs.Variable.empty())
    node.inputs.append(gs.Constant(names(base), delta.astype(dtype)))


def _add_after(graph: gs.Graph, node: gs.Node, delta: np.ndarray, dtype, names: NameFactory) -> None:
    y = node.outputs[0]
    users = list(y.outputs)
    if len(users) == 1 and users[0].op == "Add" and len(users[0].inputs) == 2 and \
            not any(t is y for t in graph.outputs):
        add = users[0]
        c = add.inputs[1] if add.inputs[0] is y else add.inputs[0]
        if isinstance(c, gs.Constant) and len(c.outputs) == 1 and c.values.size == delta.size \
                and c.values.shape[-1:] == delta.shape:
            c.values = (np.asarray(c.values, np.float64) + delta.reshape(c.values.shape)).astype(c.values.dtype)
            return
    raw = gs.Variable(names(f"{y.name}.unbiased"), dtype=y.dtype or dtype)
    node.outputs[0] = raw
    const = gs.Constant(names(f"{node.name or y.name}.compensation"), delta.astype(dtype))
    graph.nodes.append(gs.Node("Add", name=names(f"{node.name or y.name}.compensate"),
                               inputs=[raw, const], outputs=[y]))
