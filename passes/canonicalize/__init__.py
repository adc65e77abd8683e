"""canonicalize: fuse what exporters decompose and fold what is constant, so later passes (and
the runtime) see clean ops. A set of small rewrite rules run to a fixed point; each counts how
often it fired, and patterns that matched but were left alone are counted with the reason.

Rules, in the order each round applies them (maths and exactness conditions in the modules):

- activations (``activations``): relu6, hardswish, hardsigmoid, silu, gelu, mish,
  layernorm - element-wise spellings -> the native op when the opset has it.
- arithmetic (``arithmetic``): identity (x*1, x+0, Identity-like no-ops), div_to_mul,
  sub_to_add, affine_chain (Mul/Add chains by constants -> one Mul then one Add).
- affine folding (``affine``): fold_into_producer (fold-bn's Conv/Gemm/MatMul +
  per-channel Mul/Add), fold_into_consumer (affine before a Conv/Gemm/MatMul, exact only without
  zero padding; otherwise only the scale is folded and one Add is left).
- layout (``arithmetic``, ``shapes``): transpose_pair, transpose_to_reshape, reshape_own_shape
  (a Reshape target computed from ``Shape`` of the Reshape's own input -> a constant whose ``0``
  entries copy the input's dimensions), reshape_chain.
- then fold-constants (constant subgraphs, static Shape arithmetic), and the next round.

After canonicalize, an affine map that could not be folded anywhere is exactly one ``Mul`` (by a
constant) followed by one ``Add`` (by a constant), the form the quant pass looks for.

Exactness: every rule computes new constants in float64 and rounds once. Each rule's test holds
it to rtol 1e-5 / atol 1e-5 in onnxruntime; PP-OCR rec and cls stay within that end to end. The
det probability map is ill-conditioned: folding its 52 scale/shift pairs moves it by up to 2.9e-5
(640x640 text page), the same order as onnxruntime's own exact fusions do (2.1e-5), and the
rounding of the folded float32 weights alone explains it (evaluated in float64 at 96x128, the
rewritten model differs from the original by 3.8e-6). Its test allows twice that noise floor.

Chains whose native op the opset lacks (LayerNormalization below 17, Gelu below 20) are left
exactly as exported - the other rules do not touch them - because onnxruntime fuses that spelling
itself; folding a LayerNorm's gamma/beta into the next MatMul, for one, stops its fusion.

Opset. Native ops need: HardSwish 14, Mish 18, LayerNormalization 17, Gelu 20, Swish 24
(HardSigmoid 6). Below 14, HardSwish is written as ``x * HardSigmoid(x, 1/6, 1/2)``: onnxruntime
expands its own HardSwish into exactly that pair (HardSwish is an ONNX function), and on CPU
fuses a Conv followed by HardSigmoid+Mul into one NCHWc Conv with a HardSwish activation, for
either spelling - the optimized graphs of PP-OCRv4 det are identical node for node (checked with
``optimized_model_filepath``). ``upgrade-opset`` therefore defaults to false: the version
converter is not needed for speed in onnxruntime. LayerNormalization and Gelu chains are fused
by onnxruntime itself at any opset, so they too gain nothing there from an upgrade.

The speedups, with and without ``upgrade-opset``, per rule family, and the version converter's
output differences are measured in BENCHMARKS.md (``python benchmarks/run.py canonicalize``).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import onnx_graphsurgeon as gs

from graphc.errors import ModelError
from graphc.ir import NameFactory, is_standard_op, node_label, remove_dead_nodes, toposort, walk_graphs
from graphc.passes.fold_constants import FoldConstants
from graphc.passmanager import Context, Pass, PassResult, option, register_pass

from graphc.passes.canonicalize import activations as act
from graphc.passes.canonicalize import affine
from graphc.passes.canonicalize import arithmetic as arith
from graphc.passes.canonicalize import shapes
from graphc.passes.canonicalize.match import Fired, NeedsOpset, Rewriter, Rule, Skip

log = logging.getLogger(__name__)

RULES: tuple[Rule, ...] = (
    Rule("relu6", ("Min", "Max", "Relu"), act.relu6, "Min/Max/Relu chains -> Clip"),
    Rule("hardswish", ("Add", "HardSigmoid"), act.hardswish, "x*Clip(x+3,0,6)/6 -> HardSwish"),
    Rule("hardsigmoid", ("Clip",), act.hardsigmoid, "Clip(x+b,0,h)/h, Clip(a*x+b,0,1) -> HardSigmoid"),
    Rule("silu", ("Sigmoid",), act.silu, "x*Sigmoid(a*x) -> Swish"),
    Rule("gelu", ("Erf", "Tanh"), act.gelu, "erf and tanh GELU chains -> Gelu"),
    Rule("mish", ("Tanh",), act.mish, "x*tanh(softplus(x)) -> Mish"),
    Rule("layernorm", ("ReduceMean",), act.layernorm, "mean/variance chains -> LayerNormalization"),
    Rule("identity", ("Identity", "Dropout", "Cast", "Transpose", "Reshape", "Expand", "Concat", "Sum",
                      "Max", "Min", "Mean", "Pad", "Mul", "Div", "Pow", "Add", "Sub"),
         arith.identity, "no-op nodes removed (x*1, x+0, Identity, ...)"),
    Rule("div_to_mul", ("Div",), arith.div_to_mul, "x/c -> x*(1/c)"),
    Rule("sub_to_add", ("Sub",), arith.sub_to_add, "x-c -> x+(-c)"),
    Rule("affine_chain", ("Mul", "Add"), arith.affine_chain, "Mul/Add chains by constants -> one Mul, one Add"),
    Rule("fold_into_producer", ("Mul", "Add"), affine.fold_into_producer,
         "affine after Conv/ConvTranspose/Gemm/MatMul -> their weights"),
    Rule("fold_into_consumer", ("Mul", "Add"), affine.fold_into_consumer,
         "affine before Conv/Gemm/MatMul -> their weights (no zero padding)"),
    Rule("transpose_pair", ("Transpose",), arith.transpose_pair, "Transpose of Transpose -> one or none"),
    Rule("transpose_to_reshape", ("Transpose",), arith.transpose_to_reshape,
         "Transpose moving only size-1 axes -> Reshape"),
    Rule("reshape_own_shape", ("Reshape",), shapes.reshape_own_shape,
         "Reshape target computed from the input's own Shape -> a constant (0 copies a dimension)"),
    Rule("reshape_chain", ("Reshape",), arith.reshape_chain, "Reshape of a reshape -> one Reshape"),
)
RULE_NAMES = tuple(r.name for r in RULES)


@register_pass
class Canonicalize(Pass):
    name = "canonicalize"
    summary = "fuse decomposed activations, merge and fold constant affine maps, simplify layout"
    exact = True

    @dataclass(frozen=True)
    class Options:
        disable: tuple[str, ...] = option((), "rules not to run", choices=RULE_NAMES)
        upgrade_opset: bool = option(False, "raise the opset (onnx version converter) when a native "
                                            "op needs it; below 14 HardSwish is x*HardSigmoid(x)")
        max_opset: int = option(21, "highest opset upgrade-opset may raise the model to", min=1, max=30)
        fold_constants: bool = option(True, "fold constants and static shape arithmetic each round")
        max_iterations: int = option(16, "rounds before giving up on a fixed point", min=1)

    def run(self, graph: gs.Graph, ctx: Context) -> PassResult:
        result = PassResult(modified=False)
        rules = [r for r in RULES if r.name not in self.options.disable]
        upgrade = self.options.upgrade_opset
        for round_ in range(1, self.options.max_iterations + 1):
            # skips of the last round stand: at the fixed point they describe the final graph
            skipped: dict[tuple[str, int], tuple[gs.Node, str]] = {}
            changed, needed = self._round(graph, ctx, rules, result, skipped, round_ > 1, upgrade)
            if needed:
                try:
                    ctx.require_opset(needed)
                    result.stats["opset_upgraded_to"] = needed
                except ModelError as exc:  # the version converter cannot convert this model
                    result.skip(f"opset upgrade to {needed} failed; native ops needing it not used")
                    log.warning("canonicalize: %s", exc)
                    upgrade = False
                changed = True
            if not changed:
                log.debug("canonicalize: fixed point after %d rounds", round_)
                break
        else:
            result.skip(f"no fixed point after {self.options.max_iterations} rounds (max-iterations)")
        paths = {id(n): path for path, scope in walk_graphs(graph) for n in scope.nodes}
        nodes = [n for _, scope in walk_graphs(graph) for n in scope.nodes]
        for node, reason in skipped.values():
            if id(node) in paths:
                result.skip(reason)
                log.info("%s left alone: %s", node_label(node, paths[id(node)]), reason)
        for node in nodes:
            if not is_standard_op(node):
                result.skip("node of another domain left untouched")
        result.modified = bool(result.stats)
        return result

    def _round(self, graph: gs.Graph, ctx: Context, rules: list[Rule], result: PassResult,
               skipped: dict, fresh: bool, upgrade: bool) -> tuple[bool, int]:
        """One sweep of every rule over the graph; returns (changed, opset a rule asked for)."""
        toposort(graph)
        if fresh:
            ctx.invalidate()  # the previous round changed the graph: shapes are re-inferred
        max_opset = self.options.max_opset if upgrade else None
        names = NameFactory(graph)  # one factory: names stay unique across every scope
        changed, needed = False, 0
        for _, scope in list(walk_graphs(graph)):  # the graph and its If/Loop/Scan bodies
            rw = Rewriter(scope, ctx.opset, ctx.shapes(), max_opset=max_opset, ctx=ctx)
            rw.names = names
            scope_changed, needed = self._sweep(rw, rules, result, skipped, needed)
            changed |= scope_changed
            if needed:
                break
        if changed:
            remove_dead_nodes(graph)
        if self.options.fold_constants:
            if changed:
                toposort(graph)
            folded = FoldConstants(FoldConstants.Options()).run(graph, ctx)
            for key, n in folded.stats.items():
                result.count(f"fold_constants.{key}", n)
            changed |= folded.modified
        return changed, needed

    @staticmethod
    def _sweep(rw: Rewriter, rules: list[Rule], result: PassResult, skipped: dict,
               needed: int) -> tuple[bool, int]:
        """Every rule over one scope's nodes; returns (changed, opset a rule asked for)."""
        changed = False
        for rule in rules:
            anchors = frozenset(rule.ops)  # one cheap filter per rule; the full check stays below
            for node in [n for n in rw.graph.nodes if n.op in anchors]:
                if not node.outputs or not is_standard_op(node, *rule.ops) or id(node) in rw.protected:
                    continue  # removed earlier in this sweep, not an anchor, or a chain left alone
                outcome = rule.apply(rw, node)
                if isinstance(outcome, Fired):
                    result.count(outcome.key)
                    changed = True
                elif isinstance(outcome, Skip):
                    skipped[(rule.name, id(node))] = (node, outcome.reason)
                elif isinstance(outcome, NeedsOpset):
                    needed = max(needed, outcome.version)
            rw.flush()
            if needed:
                break  # upgrade first: later rules would rewrite the pattern's pieces
        return changed, needed
