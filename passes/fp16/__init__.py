"""fp16: half-precision conversion, in two modes.

``mode=compute`` (the default): float32 nodes compute in float16, except where half precision
overflows or loses accuracy. The plan (:mod:`graphc.passes.fp16.plan`) converts every standard op
whose schema admits float16 for its float type parameter, keeping float32: the range-sensitive ops
of ``keep-ops`` (Exp, Pow, reductions, Softmax, normalizations; Range and Cast are never
converted), shape arithmetic computed from integers, nodes whose constants exceed 65504, nodes
read inside subgraph bodies and nodes matching ``exclude``. With ``--data``
(:mod:`graphc.passes.fp16.measure`) nodes whose tensors reach ``max-abs`` on the data stay
float32, and the nodes that add the most noise are kept float32 until the output SQNR on the
data, under emulated float16 rounding, reaches ``min-sqnr`` (40 dB unless given). A model that
already computes in float16 (a second run) is left alone: its float32 nodes were chosen against
the float32 original. The rewrite (:mod:`graphc.passes.fp16.convert`) puts one Cast
per tensor at the region borders, cancels Cast pairs and lets existing Cast/Shape/Size nodes read
half tensors directly. Graph inputs and outputs keep their names and float32 type.

``mode=storage``: float32 weights are stored in float16 (or bfloat16, ``dtype=bf16``) behind a
``Cast`` to float (:mod:`graphc.passes.fp16.storage`); onnxruntime folds the Cast when it loads
the model, so it computes in float32 as before on weights rounded to the half type. The file
halves; speed and run-time memory stay those of the float model.

Where it pays: float16 compute is for GPUs and ARM CPUs with half-precision arithmetic. On x86
CPUs onnxruntime has few float16 kernels and wraps the others in Casts to float32, so compute
mode gains nothing there over float32 (BENCHMARKS.md, fp16 section: within timing noise);
storage mode is the one for x86 CPU deployment. bfloat16 is storage only: onnxruntime's CPU provider has no bfloat16
kernels for arithmetic (measured with 1.32: Relu, Add, Mul, MatMul, Conv, Sigmoid, Softmax,
ReduceMean, ... NOT_IMPLEMENTED or not admitted by the schema).

The rewrite is lossy (``exact = False``): converted ops round their inputs, weights and results
to the half type (relative error 2^-11 each for float16).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from fnmatch import fnmatch

import ml_dtypes
import numpy as np
import onnx_graphsurgeon as gs

from graphc.ir import Model, node_label
from graphc.passes.fp16.convert import HalfRewriter, emulate_rounding
from graphc.passes.fp16.measure import error_exclusions, overflow_exclusions, region_tensors
from graphc.passes.fp16.plan import DEFAULT_KEEP_OPS, HalfType, Plan, drop_isolated, drop_shape_values, plan_candidates
from graphc.passes.fp16.storage import store_half
from graphc.passmanager import Context, Pass, PassResult, option, register_pass

log = logging.getLogger(__name__)

#: the output SQNR (dB) compute mode holds on the data when --data is given without min-sqnr
DEFAULT_MIN_SQNR = 40.0

HALF_TYPES = {
    "fp16": HalfType("float16", np.dtype(np.float16), "tensor(float16)", float(np.finfo(np.float16).max)),
    "bf16": HalfType("bfloat16", np.dtype(ml_dtypes.bfloat16), "tensor(bfloat16)",
                     float(ml_dtypes.finfo(ml_dtypes.bfloat16).max)),
}


@register_pass
class HalfPrecision(Pass):
    name = "fp16"
    summary = ("float16 compute with a measured keep-list (GPU/ARM), or float16/bfloat16 weight storage "
               "(x86 CPU; docs/fp16.md)")
    exact = False
    needs_data = True
    #: BatchNormalization in half precision computes ``(x - mean) / sqrt(var + eps)`` with ``eps``
    #: (1e-5) below float16's normal range and rounds four parameter vectors; folded into the Conv
    #: first, it costs no half-precision op at all (and cls's file is 0.48x instead of 0.52x)
    prepares = ("fold-bn",)

    @dataclass(frozen=True)
    class Options:
        mode: str = option("compute", "compute: ops run in half precision; storage: weights stored in "
                           "half precision, computed in float32 (x86 CPU)", choices=("compute", "storage"))
        dtype: str = option("fp16", "half type (bf16: storage only; onnxruntime CPU has no bfloat16 "
                            "arithmetic kernels)", choices=("fp16", "bf16"))
        keep_ops: tuple[str, ...] = option(DEFAULT_KEEP_OPS, "op types kept float32 (compute mode)")
        exclude: tuple[str, ...] = option((), "node name patterns kept float32 (fnmatch; compute mode)")
        max_abs: float = option(16384.0, "with --data: nodes whose tensors reach this |x| stay float32",
                                min=1.0, max=65504.0)
        min_sqnr: float | None = option(None, "with --data: keep the noisiest nodes float32 until the output "
                                        "SQNR (dB) on the data, under emulated float16 rounding, is at least "
                                        f"this (none: {DEFAULT_MIN_SQNR:g} with --data)", min=0.0, max=200.0)
        samples: int = option(8, "calibration samples measured (overflow, error)", min=1)
        min_elements: int = option(16, "storage mode: constants with fewer values stay float32", min=1)
        prepare: bool = option(True, "run fold-bn first when the pipeline does not")

        def __post_init__(self):
            if self.dtype == "bf16" and self.mode == "compute":
                raise ValueError("dtype=bf16 needs mode=storage: onnxruntime's CPU provider has no bfloat16 "
                                 "kernels for arithmetic (Add, Mul, MatMul, Conv... are NOT_IMPLEMENTED)")
            if self.min_sqnr is not None and self.mode == "storage":
                raise ValueError("min-sqnr applies to mode=compute (storage rounds weights only)")

    def requires_data(self) -> bool:
        return self.options.min_sqnr is not None

    def preparation(self) -> tuple[str, ...]:
        return self.prepares if self.options.prepare else ()

    def run(self, graph: gs.Graph, ctx: Context) -> PassResult:
        half = HALF_TYPES[self.options.dtype]
        if self.options.mode == "storage":
            return self._store(graph, ctx, half)
        return self._compute(graph, ctx, half)

    def _store(self, graph: gs.Graph, ctx: Context, half: HalfType) -> PassResult:
        stats, skipped, saved = store_half(graph, ctx.opset, half, self.options.min_elements)
        result = PassResult(modified=bool(stats), stats=stats, skipped=skipped)
        if saved:
            result.stats["bytes_saved"] = saved
        return result

    def _compute(self, graph: gs.Graph, ctx: Context, half: HalfType) -> PassResult:
        result = PassResult(modified=False)
        if _computes_in(graph, ctx, half):
            # its float32 nodes were kept by an earlier run (measured on the float32 original,
            # which is gone): measuring them again against this model would undo those choices
            result.skip(f"model already computes in {half.name}")
            return result
        excluded, sqnr = self.measured_exclusions(ctx, half) if ctx.data is not None else ({}, None)
        plan = self.plan(graph, ctx, half, excluded)
        result.modified = bool(plan.half)
        for label, reason in plan.kept.items():
            result.skip(_reason_key(reason))
            result.details.append({"node": label, "reason": f"float32: {reason}"})
        if plan.half:
            rewriter = HalfRewriter(graph, plan, half)
            rewriter.rewrite()
            result.stats.update(rewriter.stats)
            graph.cleanup(remove_unused_graph_inputs=False)
        if sqnr is not None:
            result.stats["measured_output_sqnr_db"] = round(sqnr, 2)
        return result

    def measured_exclusions(self, ctx: Context, half: HalfType) -> tuple[dict[str, str], float]:
        """Nodes kept float32 by measurement on ``ctx.data`` (node label -> reason), and the output
        SQNR reached under emulated rounding (:mod:`graphc.passes.fp16.measure`)."""
        plan = self.plan(ctx.graph, ctx, half, {})
        excluded = overflow_exclusions(ctx.model, plan, ctx.data, self.options.max_abs, self.options.samples)
        target = self.options.min_sqnr if self.options.min_sqnr is not None else DEFAULT_MIN_SQNR
        return error_exclusions(ctx.model.copy(), lambda ex: self._candidate(ctx, half, ex),
                                ctx.data, excluded, target, self.options.samples)

    def plan(self, graph: gs.Graph, ctx: Context, half: HalfType, excluded: dict[str, str]) -> Plan:
        dtypes = {name: info.dtype for name, info in ctx.shapes().items()}
        plan = plan_candidates(graph, dtypes, ctx.opset, half, self.options.keep_ops)
        drop_shape_values(graph, plan, dtypes)
        for node, _ in plan.nodes():
            label = node_label(node)
            if label in excluded:
                plan.keep(node, excluded[label])
            elif any(fnmatch(node.name, p) for p in self.options.exclude):
                plan.keep(node, "excluded by pattern")
        drop_isolated(graph, plan)
        return plan

    def _candidate(self, ctx: Context, half: HalfType, excluded: dict[str, str]) -> tuple[Model, dict]:
        """A float32 copy of the model that rounds like the conversion with ``excluded`` kept
        float32 would on half-precision hardware (:func:`emulate_rounding`); ``ctx.model`` is
        untouched."""
        candidate = ctx.model.copy()
        plan = self.plan(candidate.graph, ctx, half, excluded)
        tensors = region_tensors(plan)
        if plan.half:
            emulate_rounding(candidate.graph, plan, half)
            candidate.graph.toposort()
        return candidate, tensors


def _computes_in(graph: gs.Graph, ctx: Context, half: HalfType) -> bool:
    """True if a node other than Cast writes a tensor of the half type."""
    dtypes = ctx.shapes()
    for node in graph.nodes:
        if node.op in ("Cast", "CastLike"):
            continue
        for t in node.outputs:
            info = dtypes.get(t.name)
            dtype = info.dtype if info is not None and info.dtype is not None else t.dtype
            if dtype is not None and np.dtype(dtype) == half.dtype:
                return True
    return False


def _reason_key(reason: str) -> str:
    """The reason as counted in ``skipped`` (measured reasons carry per-node numbers)."""
    if reason.startswith("|x| reaches"):
        return "overflow: |x| reaches max-abs on the data"
    if reason.startswith("adds noise"):
        return "adds the most noise (min-sqnr not met)"
    return reason


def emulated_model(model: Model, options: "HalfPrecision.Options | None" = None, data=None) -> Model:
    """A float32 copy of ``model`` that rounds as ``fp16`` (compute mode, these options; with
    ``data``, after the same measured exclusions) would on half-precision hardware: benchmarks and
    tests measure the error of the conversion with it where onnxruntime's CPU provider, running
    float16 nodes in float32, hides it. Run it without graph optimizations
    (``create_session(..., optimize=False)``) so its rounding Cast pairs stay. ``model`` is not
    modified."""
    instance = HalfPrecision(options)
    ctx = Context(model, data=data)
    half = HALF_TYPES[instance.options.dtype]
    excluded = instance.measured_exclusions(ctx, half)[0] if data is not None else {}
    return instance._candidate(ctx, half, excluded)[0]
