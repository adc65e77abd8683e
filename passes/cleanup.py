"""cleanup: remove what does not change the result.

Rewrites (each exact, so the outputs are bit-identical):
- ``Identity`` and inference-mode ``Dropout`` (mask unused) are bypassed;
- ``Reshape`` whose target equals the input's static shape, ``Transpose`` with the identity
  permutation, ``Cast`` to the input's own dtype, are bypassed;
- duplicate constants (same dtype, shape and bytes) are merged into one;
- duplicate nodes (same op, attributes and inputs; common subexpressions) are merged;
- nodes whose outputs nobody reads, unused initializers and (unless ``keep-inputs``) unused
  graph inputs are removed.
A node whose output is a graph output is bypassed only when its input's producer can take over
the output name; otherwise it is kept and counted under ``skipped``.
Nodes carrying subgraphs (If/Loop/Scan) and nodes of unknown domains are never merged.
"""
from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from onnx.helper import tensor_dtype_to_np_dtype

from graphc.ir import (bypass, constant_value, consumers, drop_detached, is_standard_op, node_label,
                       remove_dead_nodes, replace_uses, walk_graphs)
from graphc.ir.evaluate import NOT_FOLDABLE
from graphc.passmanager import Context, Pass, PassResult, option, register_pass

log = logging.getLogger(__name__)


@register_pass
class Cleanup(Pass):
    name = "cleanup"
    summary = "remove dead nodes, no-op Identity/Reshape/Transpose/Cast, duplicate constants and nodes"

    @dataclass(frozen=True)
    class Options:
        keep_inputs: bool = option(False, "keep graph inputs that nothing reads")
        dedupe: bool = option(True, "merge duplicate constants and duplicate nodes")

    def run(self, graph: gs.Graph, ctx: Context) -> PassResult:
        result = PassResult(modified=False)
        scopes = [scope for _, scope in walk_graphs(graph)]  # the graph and its If/Loop/Scan bodies
        for scope in scopes:
            self._bypass_noops(scope, ctx, result)
        if self.options.dedupe:
            # constants of the top graph only: a body's constant must not replace an outer one
            # (it is not visible outside the body); outer constants are visible in every body
            self._merge_constants(graph, result)
            for scope in scopes:
                self._merge_nodes(scope, result)
        nodes_before = len(graph.nodes)
        tensors_before = len(graph.tensors())
        inputs_before = len(graph.inputs)
        # Subgraph (If/Loop/Scan body) inputs are part of the op's signature: never remove them.
        remove_dead_nodes(graph)  # graph.cleanup(), linear on graphs without bodies
        if not self.options.keep_inputs and _has_unused_input(graph):
            graph.cleanup(remove_unused_graph_inputs=True, recurse_subgraphs=False)
        removed_nodes = nodes_before - len(graph.nodes)
        if removed_nodes:
            result.count("dead_nodes", removed_nodes)
        if len(graph.inputs) != inputs_before:
            result.count("unused_inputs", inputs_before - len(graph.inputs))
        tensors_after = len(graph.tensors())
        if tensors_after != tensors_before:
            result.count("removed_tensors", tensors_before - tensors_after)
        result.modified = bool(result.stats)
        # every rewrite here keeps the surviving tensors' shapes (a bypassed no-op's reader reads
        # an equal-shaped input; merged duplicates are equal): no new whole-model shape inference
        result.preserved = frozenset({"shapes"})
        return result

    # -- no-op nodes -----------------------------------------------------------------------

    def _bypass_noops(self, graph: gs.Graph, ctx: Context, result: PassResult) -> None:
        shapes = None
        for node in list(graph.nodes):
            if not is_standard_op(node) or not node.inputs or not node.outputs:
                continue
            reason = None
            if node.op == "Identity":
                reason = "identity"
            elif node.op == "Dropout" and _dropout_is_noop(node):
                reason = "dropout"
            elif node.op in ("Reshape", "Transpose", "Cast"):
                if shapes is None:
                    drop_detached(graph)  # shape inference must see the graph without bypassed nodes
                    shapes = ctx.shapes()
                reason = _noop_reason(node, shapes)
            if reason is None:
                continue
            if node.op == "Dropout":
                while len(node.outputs) > 1:
                    node.outputs.pop()
            if bypass(graph, node, drop=False):
                result.count(f"{reason}_removed")
            else:
                result.skip(f"{node.op} writes a graph output that its input cannot take over")
                log.info("%s kept: it writes a graph output", node_label(node))
        drop_detached(graph)  # once for all bypassed nodes

    # -- duplicates ------------------------------------------------------------------------

    def _merge_constants(self, graph: gs.Graph, result: PassResult) -> None:
        # Bucket by (dtype, shape) first: only constants that share both are ever hashed, so a
        # model of distinct large weights costs no hashing at all.
        outputs = {id(t) for t in graph.outputs}
        buckets: dict[tuple, list[gs.Constant]] = {}
        for tensor in graph.tensors().values():
            if isinstance(tensor, gs.Constant) and id(tensor) not in outputs:
                buckets.setdefault((np.dtype(tensor.dtype), tuple(tensor.shape)), []).append(tensor)
        for bucket in buckets.values():
            if len(bucket) < 2:
                continue
            first: dict[str, gs.Constant] = {}
            for tensor in bucket:
                kept = first.setdefault(_digest(tensor), tensor)
                if kept is not tensor:
                    replace_uses(graph, tensor, kept)
                    result.count("duplicate_constants")

    def _merge_nodes(self, graph: gs.Graph, result: PassResult) -> None:
        seen: dict[tuple, gs.Node] = {}
        for node in list(graph.nodes):
            key = _node_key(node)
            if key is None:
                continue
            kept = seen.setdefault(key, node)
            if kept is node or len(kept.outputs) != len(node.outputs):
                continue
            if any(any(t is o for t in graph.outputs) for o in node.outputs):
                continue
            for old, new in zip(node.outputs, kept.outputs):
                replace_uses(graph, old, new)
            result.count("duplicate_nodes")


def _has_unused_input(graph: gs.Graph) -> bool:
    """A graph input nothing reads (the second, input-removing cleanup is then worth its walk)."""
    outputs = {id(t) for t in graph.outputs}
    return any(not t.outputs and id(t) not in outputs for t in graph.inputs)


def _dropout_is_noop(node: gs.Node) -> bool:
    mask_used = len(node.outputs) > 1 and (consumers(node.outputs[1]))
    training = len(node.inputs) > 2 and node.inputs[2].name
    if training:
        value = constant_value(node.inputs[2])
        if value is None or bool(value):
            return False
    return not mask_used


def _noop_reason(node: gs.Node, shapes) -> str | None:
    src = shapes.get(node.inputs[0].name)
    if node.op == "Transpose":
        perm = node.attrs.get("perm")
        if perm is not None and list(perm) == list(range(len(perm))):
            return "noop_transpose"
        return None
    if node.op == "Cast":
        to = node.attrs.get("to")
        if src is not None and src.dtype is not None and to is not None:
            if np.dtype(tensor_dtype_to_np_dtype(to)) == src.dtype:
                return "noop_cast"
        return None
    target = constant_value(node.inputs[1]) if len(node.inputs) > 1 else None
    if src is None or not src.static or target is None or not np.issubdtype(target.dtype, np.integer):
        return None  # a shape that is not integer (an invalid model) is not a no-op to remove
    target = [int(d) for d in target.reshape(-1)]
    allowzero = int(node.attrs.get("allowzero", 0))
    if len(target) != len(src.shape):
        return None
    resolved = [src.shape[i] if (d == 0 and not allowzero) else d for i, d in enumerate(target)]
    if -1 in resolved and resolved.count(-1) == 1:
        known = int(np.prod([d for d in resolved if d != -1]))
        total = int(np.prod(src.shape))
        if known and total % known == 0:
            resolved[resolved.index(-1)] = total // known
    return "noop_reshape" if tuple(resolved) == tuple(src.shape) else None


def _digest(tensor: gs.Constant) -> str:
    values = np.asarray(tensor.values)
    try:
        data = memoryview(np.ascontiguousarray(values)).cast("B")  # no copy for C-ordered weights
    except (TypeError, ValueError):  # object/string tensors have no buffer
        data = repr(values.tolist()).encode()
    return hashlib.blake2b(data, digest_size=16).hexdigest() + str(values.shape)


def _node_key(node: gs.Node) -> tuple | None:
    if not is_standard_op(node) or node.op == "Constant" or not node.outputs:
        return None
    if node.op in NOT_FOLDABLE:
        return None
    attrs = []
    for k, v in sorted(node.attrs.items()):
        if isinstance(v, (gs.Graph, gs.Tensor)):
            return None
        attrs.append((k, repr(v)))
    return (node.op, node.domain, tuple(attrs), tuple(id(t) for t in node.inputs))
