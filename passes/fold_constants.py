"""fold-constants: compute at compile time what does not depend on the model's inputs.

A node whose inputs are all constants is evaluated once with ONNX's numpy reference
implementation and replaced by its result. ``Shape``/``Size`` of a tensor whose shape is static
(from shape inference, or partly static for the dims a following ``Gather``/``Slice`` selects)
become constants too, which unlocks the Shape -> Gather -> Concat -> Reshape chains exporters
emit. Folding is exact: the values are the ones the runtime would compute.

Not folded (counted with the reason): random ops, nodes with subgraphs, ops of other domains,
results larger than ``max-elements`` (folding them would bloat the file, e.g. ConstantOfShape),
graph outputs, ops the reference implementation cannot evaluate, and values onnxruntime refuses
to compute (integer division by zero: folding would invent a result). Size and work are estimated
*before* evaluating (``graphc.ir.evaluation_cost``: output shapes by ONNX shape inference, work
by a per-op cost model): a node over ``max-elements`` or ``max-work``, or whose op has no cost
model or whose output size is not known in advance, is never handed to the reference evaluator
(whose Python kernels, e.g. GridSample, take ~0.6 ms per output element).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from graphc.ir import (constant_value, consumers, detach, drop_detached, is_graph_output, is_standard_op,
                       node_label, remove_dead_nodes, walk_graphs)
from graphc.ir.evaluate import NOT_FOLDABLE, evaluate_node, runtime_refuses
from graphc.ir.evaluation_cost import evaluation_cost
from graphc.passmanager import Context, Pass, PassResult, option, register_pass

log = logging.getLogger(__name__)

#: a DequantizeLinear of constant codes is a weight stored compressed on purpose (quant, weights-only).
KEPT_QUANTIZED = frozenset({"DequantizeLinear"})


@register_pass
class FoldConstants(Pass):
    name = "fold-constants"
    summary = "evaluate constant subgraphs and static shape arithmetic at compile time"

    @dataclass(frozen=True)
    class Options:
        max_elements: int = option(1 << 20, "largest folded result, in elements", min=1)
        max_work: int = option(1 << 30, "most evaluation work per node, in about-ns units of "
                                         "the reference evaluator (see graphc.ir.evaluation_cost)", min=1)
        shapes: bool = option(True, "fold Shape/Size of statically shaped tensors")

    def run(self, graph: gs.Graph, ctx: Context) -> PassResult:
        result = PassResult(modified=False)
        # shape inference walks the whole model: only worth it when there is a Shape/Size to fold
        readers = self.options.shapes and any(is_standard_op(n, "Shape", "Size") for n in graph.nodes)
        shapes = ctx.shapes() if readers else {}
        changed = True
        while changed:
            changed = False
            result.skipped.clear()  # the last sweep (nothing left to fold) says what stays, once
            for _, scope in list(walk_graphs(graph)):  # If/Loop/Scan bodies too
                for node in list(scope.nodes):
                    if self._fold_shape_reader(scope, node, shapes, result) or self._fold(scope, node, ctx, result):
                        changed = True
                drop_detached(scope)  # folded nodes, once per sweep
        if result.stats:
            remove_dead_nodes(graph)
        result.modified = bool(result.stats)
        result.preserved = frozenset({"shapes"})  # values, not shapes, changed
        return result

    def _fold(self, graph: gs.Graph, node: gs.Node, ctx: Context, result: PassResult) -> bool:
        if not is_standard_op(node) or node.op in NOT_FOLDABLE or not node.outputs:
            return False
        if node.op in KEPT_QUANTIZED:
            result.skip(f"{node.op} of a constant kept: folding would store the weight in float again")
            return False
        if any(isinstance(v, gs.Graph) for v in node.attrs.values()):
            return False
        values = [constant_value(t) if t.name else None for t in node.inputs]
        if any(v is None for t, v in zip(node.inputs, values) if t.name):
            return False
        if any(is_graph_output(graph, out) for out in node.outputs):
            result.skip("result is a graph output")
            return False
        refused = runtime_refuses(node, values)
        if refused:
            result.skip(refused)
            return False
        if not self._affordable(node, values, ctx, result):
            return False
        try:
            outputs = evaluate_node(node, values, ctx.opset)
        except Exception as exc:  # the reference implementation raises many types
            result.skip(f"{node.op}: reference implementation cannot evaluate it")
            log.info("%s not folded: %s", node_label(node), exc)
            return False
        if any(o.size > self.options.max_elements for o in outputs):
            result.skip("result larger than max-elements")
            return False
        self._replace(graph, node, outputs)
        result.count("folded_nodes")
        return True

    def _affordable(self, node: gs.Node, values: list, ctx: Context, result: PassResult) -> bool:
        """Refuse, before evaluating, a result too large or work too long (or not estimable)."""
        cost = evaluation_cost(node, values, ctx.opset)
        if cost.unknown is not None:
            reason = f"{cost.unknown}; not evaluated"
        elif cost.output_elements > self.options.max_elements:
            reason = "result larger than max-elements"
        elif cost.work > self.options.max_work:
            reason = f"{node.op}: evaluation would exceed max-work"
        else:
            return True
        result.skip(reason)
        log.info("%s not folded: %s (estimated %d elements, work %d)", node_label(node), reason,
                 cost.output_elements, cost.work)
        return False

    def _fold_shape_reader(self, graph, node: gs.Node, shapes, result: PassResult) -> bool:
        """Shape/Size of a static tensor, or Shape -> Gather/Slice picking only static dims."""
        if not is_standard_op(node, "Shape", "Size") or not shapes:
            return False
        info = shapes.get(node.inputs[0].name)
        if info is None or info.shape is None or any(is_graph_output(graph, o) for o in node.outputs):
            return False
        dims = list(info.shape)
        if node.op == "Size":
            if not info.static:
                return False
            self._replace(graph, node, [np.array(int(np.prod(dims)), dtype=np.int64)])
            result.count("folded_shapes")
            return True
        start = node.attrs.get("start", 0)
        end = node.attrs.get("end", len(dims))
        dims = dims[slice(start, end)]
        if all(isinstance(d, int) and d >= 0 for d in dims):
            self._replace(graph, node, [np.array(dims, dtype=np.int64)])
            result.count("folded_shapes")
            return True
        return self._fold_partial_shape(graph, node, dims, result)

    def _fold_partial_shape(self, graph, node: gs.Node, dims: list, result: PassResult) -> bool:
        folded = False
        for user in consumers(node.outputs[0]):
            if not any(n is user for n in graph.nodes):
                continue  # a reader inside a body is rewritten only in its own scope
            picked = _picked_dims(user, dims)
            if picked is None or is_graph_output(graph, user.outputs[0]):
                continue
            self._replace(graph, user, [np.array(picked, dtype=np.int64)])
            result.count("folded_shapes")
            folded = True
        return folded

    @staticmethod
    def _replace(graph: gs.Graph, node: gs.Node, outputs: list[np.ndarray]) -> None:
        for out, value in zip(node.outputs, outputs):
            dtype = np.dtype(out.dtype) if out.dtype is not None else value.dtype
            # np.array keeps 0-d results 0-d (ascontiguousarray would make them 1-d)
            out.to_constant(np.array(value, dtype=dtype, order="C"))
        detach(node)  # run() drops detached nodes once per sweep


def _picked_dims(user: gs.Node, dims: list) -> list[int] | None:
    """Dims selected by a Gather/Slice on a Shape output, if all of them are static."""
    def static(ds):
        return all(isinstance(d, int) and d >= 0 for d in ds)

    if user.op == "Gather" and len(user.inputs) == 2 and user.inputs[0] is not None:
        idx = constant_value(user.inputs[1])
        if idx is None or user.attrs.get("axis", 0) != 0:
            return None
        picked = np.asarray(dims, dtype=object)[idx.astype(np.int64)]
        flat = list(np.asarray(picked).reshape(-1))
        if not static(flat):
            return None
        return np.asarray(flat, dtype=np.int64).reshape(np.shape(idx)).tolist()
    if user.op == "Slice" and len(user.inputs) >= 3:
        bounds = [constant_value(t) for t in user.inputs[1:]]
        if any(b is None for b in bounds):
            return None
        starts, ends = int(bounds[0][0]), int(bounds[1][0])
        axes = bounds[2] if len(bounds) > 2 else np.array([0])
        steps = bounds[3] if len(bounds) > 3 else np.array([1])
        if len(bounds[0]) != 1 or int(axes[0]) != 0:
            return None
        picked = dims[slice(starts, ends, int(steps[0]))]
        return picked if static(picked) else None
    return None
