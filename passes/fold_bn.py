"""fold-bn: fold BatchNormalization and per-channel Mul/Add into neighbouring Conv, ConvTranspose,
Gemm and MatMul weights, computing the folded weights in float64 and casting them back once.

The maths, and when each fold is exact, are in :mod:`graphc.rewrite.affine` (shared with
``canonicalize``).

Not folded (each counted with its reason): BN in training mode (``training_mode=1`` or any of
its running-statistics outputs read), ``spatial=0``, non-constant BN parameters or weights or
biases, ``var + eps <= 0``, non-float weights, an intermediate tensor that has other readers or
is a graph output, channel counts that do not match, MatMul whose channel axis is not BN's.
A BN with no foldable neighbour becomes ``Mul(x, s) -> Add(., t)`` with constants of shape
(C, 1, ..., 1) in the input's dtype (cheaper than BN at run time), unless ``keep-standalone``.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import onnx_graphsurgeon as gs

from graphc.ir import NameFactory, is_standard_op, node_label, walk_graphs
from graphc.passmanager import Context, Pass, PassResult, option, register_pass
from graphc.rewrite.affine import AffineFolder

log = logging.getLogger(__name__)


@register_pass
class FoldBatchNorm(Pass):
    name = "fold-bn"
    summary = "fold BatchNormalization and per-channel Mul/Add into Conv/ConvTranspose/Gemm/MatMul"
    exact = True

    @dataclass(frozen=True)
    class Options:
        keep_standalone: bool = option(False, "leave a BN with no foldable neighbour as is "
                                              "(default: rewrite it as Mul + Add)")

    def run(self, graph: gs.Graph, ctx: Context) -> PassResult:
        result = PassResult(modified=False)
        names = NameFactory(graph)  # one factory: names stay unique across every scope
        for path, scope in list(walk_graphs(graph)):
            self._fold_scope(scope, path, ctx, result, names)
        result.modified = bool(result.stats)
        return result

    def _fold_scope(self, graph: gs.Graph, path: str, ctx: Context, result: PassResult,
                    names: NameFactory) -> None:
        """Fold to a fixpoint in one graph (the top graph or the If/Loop/Scan body at ``path``)."""
        folder = AffineFolder(graph, ctx, result, batch_removals=True, names=names, path=path)
        reasons: dict[int, tuple[gs.Node, list[str]]] = {}
        changed = True
        while changed:  # a fold can expose another (ConvTranspose -> Add -> BN); run to fixpoint
            changed = False
            reasons.clear()
            for node in list(graph.nodes):
                if not node.outputs or not is_standard_op(node):
                    continue  # removed earlier in this sweep, or another domain
                why: list[str] = []
                folded = False
                if node.op == "BatchNormalization":
                    folded = folder.fold_bn(node, why)
                elif node.op in ("Mul", "Add"):
                    folded = folder.fold_affine(node, why)
                changed |= folded
                if why and not folded:
                    reasons[id(node)] = (node, why)
            folder.drop_removed()
        for node, why in reasons.values():
            for reason in why:
                result.skip(reason)
                log.info("%s not folded: %s", node_label(node, path), reason)
        if not self.options.keep_standalone:
            for node, _ in list(reasons.values()):
                if node.op == "BatchNormalization":
                    folder.standalone_to_mul_add(node)
            folder.drop_removed()
