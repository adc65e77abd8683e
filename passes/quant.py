"""quant: static int8 quantization in QDQ form (QuantizeLinear/DequantizeLinear pairs), calibrated
on data, placed so that onnxruntime fuses it into integer kernels - and only where that is faster.

What it does:

1. Chooses which ops run on integers (``placement=auto``): a speed model measured on
   onnxruntime's CPU kernels, solved exactly as a minimum cut (:mod:`graphc.passes._qdq_cost`).
   Ops whose integer kernels are slower than float (depthwise Convs with few channels, uint8
   Resize/MaxPool between float ops, anything too small to repay its conversions) stay float, so
   the result is never slower than the float model by the model's estimate. ``placement=all``
   quantizes every op with an integer kernel instead.
2. Raises the opset to 13 when needed (DequantizeLinear's per-channel ``axis`` needs opset 13).
3. Plans the placement (:mod:`graphc.passes._qdq_placement`): Conv/Gemm/MatMul get quantized
   weights (symmetric, per output channel) and int32 bias; their activation inputs get a Q/DQ
   pair; a Conv's Q sits after its Relu/Clip; HardSigmoid/HardSwish become saturating QLinearAdd
   (and QLinearMul); constant affine Mul/Add on quantized tensors fold into DQ parameters; ops
   that need equal scales (MaxPool, Resize, Reshape...) share one.
4. Calibrates the planned activations on ``ctx.data`` (:func:`graphc.calib.calibrate`: one
   streaming onnxruntime pass, KL/percentile/MSE/min-max on 2048-bin histograms).
5. Writes the Q/DQ nodes (:mod:`graphc.passes._qdq_rewrite`, which states the maths).

The rewrite is lossy (``exact = False``): the quantized model approximates the float one; the
CLI and :func:`graphc.verify.compare_models` report SQNR, cosine and top-1 agreement. Tensor names
are kept, so ``graphc verify --localize`` can compare the float and the QDQ model. A model that
already holds Q/DQ nodes is left alone.
"""
from __future__ import annotations

import dataclasses
import logging
from collections import Counter
from dataclasses import dataclass

import onnx_graphsurgeon as gs

from graphc.errors import DataError
from graphc.ir import is_standard_op, node_label
from graphc.passes._qdq_cost import CostModel, integer_nodes
from graphc.passes._qdq_placement import (
    ALL_OPS,
    DEFAULT_OPS,
    PlacementConfig,
    candidate_nodes,
    plan_quantization,
)
from graphc.passes._qdq_rewrite import QuantFormat, write_plan
from graphc.passmanager import Context, Pass, PassResult, option, register_pass

log = logging.getLogger(__name__)

QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")
#: versions of QuantizeLinear/DequantizeLinear in the ONNX standard (opset they appeared in).
QDQ_VERSIONS = (10, 13, 19, 21, 23, 24, 25, 28)
#: the newest onnxruntime implements (1.32); a model at a later opset would not load quantized.
MAX_RUNTIME_QDQ_VERSION = 25


@register_pass
class Quantize(Pass):
    name = "quant"
    summary = "int8 QDQ quantization with streaming KL/percentile/MSE/min-max calibration"
    exact = False
    needs_data = True
    #: integer kernels fuse on the canonical form: BatchNorm folded, decomposed activations fused,
    #: affine chains merged into one Mul and one Add (PP-OCRv4 rec: 1.34x without canonicalize,
    #: 3.01x with it)
    prepares = ("fold-bn", "canonicalize")

    @dataclass(frozen=True)
    class Options:
        calib: str = option("kl", "range calibration method", choices=("kl", "minmax", "percentile", "mse"))
        percentile: float = option(99.99, "percentile of |x| kept by calib=percentile", min=50.0, max=100.0)
        bits: int = option(8, "integer bits of weights and activations", min=2, max=8)
        activations: str = option("u8", "activation integer type", choices=("u8", "s8"))
        weights: str = option("s8", "weight integer type", choices=("s8", "u8"))
        per_channel: bool = option(True, "one weight scale per output channel")
        symmetric_activations: bool = option(False, "zero point 0 (s8) / 128 (u8) for activations")
        ops: tuple[str, ...] = option(DEFAULT_OPS, "op types to quantize", choices=ALL_OPS)
        exclude: tuple[str, ...] = option((), "node name patterns left in float (fnmatch)")
        samples: int | None = option(None, "at most this many calibration samples", min=1)
        placement: str = option("auto", "auto: quantize where the speed model says integers pay; "
                                "all: every op with an integer kernel", choices=("auto", "all"))
        min_sqnr: float | None = option(None, "error budget: keep the fewest layers float so that the "
                                        "output SQNR (dB) on the calibration data is at least this",
                                        min=0.0, max=200.0)
        max_top1_drop: float | None = option(None, "error budget: keep the fewest layers float so that the "
                                             "top-1 predictions (argmax over the class axis of [N, C] or "
                                             "[N, T, C] outputs) disagree with the float model's on at most "
                                             "this fraction of the calibration positions", min=0.0, max=1.0)
        bias_correction: bool = option(False, "subtract the mean output shift measured on the calibration "
                                       "data from each quantized Conv/Gemm bias (one topological sweep)")
        weights_only: bool = option(False, "MatMul/Gemm weights only, activations float: int8 "
                                    "DequantizeLinear (bits=8) or com.microsoft MatMulNBits (bits=4)")
        block_size: int = option(32, "weights-only bits=4: weights per scale along K (power of two)",
                                 min=16, max=4096)
        int4_format: str = option("auto", "weights-only bits=4: 'dq' = standard block-wise int4 "
                                  "DequantizeLinear (opset 21), 'nbits' = onnxruntime's MatMulNBits, "
                                  "auto = dq when the model is at opset 21 or later, else nbits",
                                  choices=("auto", "dq", "nbits"))

        prepare: bool = option(True, "run fold-bn,canonicalize first when the pipeline does not "
                               "(the canonical form that integer kernels fuse on)")

        def __post_init__(self):
            from graphc.passes._quant_weights_only import check_options
            check_options(self)

    def preparation(self) -> tuple[str, ...]:
        # weights-only rewrites MatMul/Gemm weights alone: no kernel fusion depends on the form
        return self.prepares if self.options.prepare and not self.options.weights_only else ()

    def requires_data(self) -> bool:
        return not self.options.weights_only  # weights-only calibrates nothing; data only times the result

    def run(self, graph: gs.Graph, ctx: Context) -> PassResult:
        result = PassResult(modified=False)
        if any(is_standard_op(n, *QDQ_OPS) for n in graph.nodes):
            result.skip("model already has QuantizeLinear/DequantizeLinear nodes")
            return result
        if self.options.weights_only:  # no ranges to calibrate; data (if any) only times the result
            from graphc.passes._quant_weights_only import run_weights_only
            return run_weights_only(self, graph, ctx)
        if ctx.data is None:
            raise DataError("pass 'quant' needs calibration data (--data)")
        if self.options.min_sqnr is not None or self.options.max_top1_drop is not None:
            from graphc.passes._quant_budget import run_with_budget
            return run_with_budget(self, graph, ctx)
        return self.quantize(graph, ctx, result)

    def unsupported_opset(self, ctx: Context) -> str | None:
        version = max(v for v in QDQ_VERSIONS if v <= max(ctx.opset, 13))
        if version > MAX_RUNTIME_QDQ_VERSION:
            return f"opset {ctx.opset}: onnxruntime has no QuantizeLinear-{version} kernel"
        return None

    def quantize(self, graph: gs.Graph, ctx: Context, result: PassResult,
                 known_ranges: dict | None = None, positions: frozenset[int] | None = None) -> PassResult:
        """Plan, calibrate and write (no budget). ``known_ranges``: activation ranges already
        calibrated on ``ctx.data`` with these options (the budget's evaluations re-use one
        calibration of the float model); only tensors missing from it are calibrated, and added
        to it.
        ``positions``: indices into ``graph.nodes`` that may run on integers, in place of the
        speed model's choice (the budget fixes the placement; the graph must be at opset 13 or
        later already, so that the indices do not move)."""
        reason = self.unsupported_opset(ctx)
        if reason is not None:
            result.skip(reason)
            return result
        opts = self.options
        if not self._plan(graph, ctx, result, positions).quantized:
            return result
        if ctx.require_opset(13):
            result.count("opset_upgraded_to", 13)
            graph = ctx.graph
        result.skipped.clear()
        plan = self._plan(graph, ctx, result, positions)
        ranges = self._calibrate(ctx, plan, known_ranges)
        fmt = QuantFormat(activations=opts.activations, weights=opts.weights, bits=opts.bits,
                          symmetric_activations=opts.symmetric_activations)
        reference = ctx.model.copy() if opts.bias_correction else None
        writer = write_plan(graph, plan, ranges, fmt)
        if reference is not None:
            from graphc.passes._quant_bias import correct_biases
            correct_biases(graph, ctx, plan, reference, result, opts.samples)
        for op, n in Counter(node.op for node in plan.quantized).items():
            result.count(f"quantized_{op}", n)
        result.count("qdq_pairs", writer.inserted)
        result.count("weights", len(plan.weights))
        result.details.extend(_details(plan, writer, ranges))
        result.modified = True
        return result

    def _config(self) -> PlacementConfig:
        opts = self.options
        return PlacementConfig(ops=frozenset(opts.ops), exclude=tuple(opts.exclude), per_channel=opts.per_channel,
                               absorb_activations=not opts.symmetric_activations, full_range=opts.bits == 8)

    def _plan(self, graph: gs.Graph, ctx: Context, result: PassResult,
              positions: frozenset[int] | None = None):
        config = self._config()
        if positions is not None:
            config = dataclasses.replace(config, allowed=frozenset(
                id(node) for i, node in enumerate(graph.nodes) if i in positions))
        elif self.options.placement == "auto":
            chosen, estimate = self._speed_choice(graph, ctx, config)
            config = dataclasses.replace(config, allowed=frozenset(chosen))
            result.stats["speed_model_float_us"] = round(estimate["estimated_float_us"], 1)
            result.stats["speed_model_chosen_us"] = round(estimate["estimated_cut_us"], 1)
        plan = plan_quantization(graph, config, ctx.shapes())
        for reason, n in plan.skipped.items():
            result.skipped[reason] = result.skipped.get(reason, 0) + n
        return plan

    def speed_positions(self, graph: gs.Graph, ctx: Context) -> frozenset[int] | None:
        """Indices into ``graph.nodes`` the speed model puts on integers (None: placement=all)."""
        if self.options.placement != "auto":
            return None
        chosen, _ = self._speed_choice(graph, ctx, self._config())
        return frozenset(i for i, node in enumerate(graph.nodes) if id(node) in chosen)

    @staticmethod
    def _speed_choice(graph: gs.Graph, ctx: Context, config: PlacementConfig) -> tuple[set[int], dict]:
        """The speed model's minimum cut: ids of the nodes worth running on integers."""
        return integer_nodes(graph, candidate_nodes(graph, config), CostModel(_cost_shapes(ctx)))

    def _calibrate(self, ctx: Context, plan, known: dict | None = None) -> dict:
        return self.calibrate_tensors(ctx, activation_names(plan), known)

    def calibrate_tensors(self, ctx: Context, names: list[str], known: dict | None = None) -> dict:
        """Ranges of ``names`` on ``ctx.data``; those in ``known`` are taken from it, the others
        calibrated and added to it."""
        from graphc.calib import calibrate

        have = {name: known[name] for name in names if name in known} if known else {}
        missing = [name for name in names if name not in have]
        if not missing:
            return have
        log.info("quant: calibrating %d tensors (%s)", len(missing), self.options.calib)
        new = calibrate(ctx.model, ctx.data, missing, self.options.calib, percentile=self.options.percentile,
                        symmetric=self.options.symmetric_activations, bits=self.options.bits,
                        max_samples=self.options.samples)
        if known is not None:
            known.update(new)  # the budget's later evaluations find them
        return have | new


def activation_names(plan) -> list[str]:
    """The planned activations that are tensors computed at run time (calibrated)."""
    return [name for name, aq in plan.activations.items() if isinstance(aq.tensor, gs.Variable)]


def calibration_tensors(model, data, options=None) -> list[str]:
    """Names of the activations the pass would calibrate on ``model`` with ``data`` (benchmarks
    and reports use it; nothing is modified)."""
    ctx = Context(model, data=data)
    return activation_names(Quantize(options)._plan(model.graph, ctx, PassResult(modified=False)))


def _cost_shapes(ctx: Context) -> dict:
    """Concrete shapes for the speed model: the user's input shapes, else the first sample's."""
    if ctx.input_shapes:
        return ctx.cost_shapes()
    from graphc.ir import infer_shapes

    first = next(iter(ctx.data), None)
    shapes = {k: tuple(v.shape) for k, v in first.items()} if first is not None else None
    return infer_shapes(ctx.model, shapes)


def _details(plan, writer, ranges) -> list[dict]:
    rows = []
    for name, aq in plan.activations.items():
        params = writer.params.get(name)
        rng = ranges.get(name)
        rows.append({
            "tensor": name,
            "scale": float(params.scale) if params is not None else None,
            "zero_point": int(params.zero_point) if params is not None else None,
            "range": [rng.lo, rng.hi] if rng is not None else None,
            "observed": [rng.observed_min, rng.observed_max] if rng is not None else None,
            "absorbed": node_label(aq.absorbed) if aq.absorbed is not None else None,
        })
    quantized = {node.name for node in plan.quantized}
    for name, (op, reason) in plan.kept_float.items():
        if name not in quantized:
            rows.append({"node": name, "op": op, "precision": "float", "reason": reason})
    return rows
