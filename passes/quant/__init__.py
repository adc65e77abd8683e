"""quant: static int8 quantization in QDQ form (QuantizeLinear/DequantizeLinear pairs), calibrated
on data, placed so that onnxruntime fuses it into integer kernels - and only where that is faster.

What it does:

1. Chooses which ops run on integers (``placement=auto``): a speed model measured on
   onnxruntime's CPU kernels, solved exactly as a minimum cut (:mod:`graphc.passes.quant.speed_model`).
   Ops whose integer kernels are slower than float (depthwise Convs with few channels, uint8
   Resize/MaxPool between float ops, anything too small to repay its conversions) stay float, so
   the result is never slower than the float model by the model's estimate. ``placement=all``
   quantizes every op with an integer kernel instead.
2. Raises the opset to 13 when needed (DequantizeLinear's per-channel ``axis`` needs opset 13).
3. Plans the placement (:mod:`graphc.passes.quant.placement`): Conv/Gemm/MatMul get quantized
   weights (symmetric, per output channel) and int32 bias; their activation inputs get a Q/DQ
   pair; a Conv's Q sits after its Relu/Clip; HardSigmoid/HardSwish become saturating QLinearAdd
   (and QLinearMul); constant affine Mul/Add on quantized tensors fold into DQ parameters; ops
   that need equal scales (MaxPool, Resize, Reshape...) share one.
4. Calibrates the planned activations on ``ctx.data`` (:func:`graphc.calib.calibrate`: one
   streaming onnxruntime pass, KL/percentile/MSE/min-max on 2048-bin histograms).
5. Writes the Q/DQ nodes (:mod:`graphc.passes.quant.rewrite`, which states the maths).

Steps 1-5 are :class:`graphc.passes.quant.quantizer.Quantizer`, which the error budget
(:mod:`graphc.passes.quant.error_budget`) calls too.

``activations=dynamic`` is the other mode (:mod:`graphc.passes.quant.dynamic`): int8
per-channel MatMul/Gemm weights, activations quantized at run time (DynamicQuantizeLinear +
MatMulInteger, which onnxruntime fuses into its DynamicQuantizeMatMul kernel), no calibration;
with ``--data``, the few outlier input channels of each MatMul stay float
(:mod:`graphc.passes.quant.outliers`). ``-p quant`` without ``--data`` runs it by itself (one log
line says so) unless an option needs data (an error budget, bias correction). The default
``activations=auto`` (:mod:`graphc.passes.quant.mode`) picks static or dynamic with data: dynamic
where MatMul/Gemm with constant weights hold most of the MACs (transformers), static otherwise.
LSTMs have no static integer kernel: with static activations too (no error budget), their
weights become int8 in onnxruntime's DynamicQuantizeLSTM (:mod:`graphc.passes.quant.recurrent`),
which quantizes X and the hidden state at run time.

The rewrite is lossy (``exact = False``): the quantized model approximates the float one; the
CLI and :func:`graphc.verify.compare_models` report SQNR, cosine and top-1 agreement. Tensor names
are kept, so ``graphc verify --localize`` can compare the float and the QDQ model. A model that
already holds Q/DQ nodes (in any body) is left alone.

If/Loop/Scan bodies are quantized too, each planned as a graph of its own and calibrated in the
same run (:mod:`graphc.passes.quant.subgraphs`); weights-only rewrites MatMul/Gemm weights inside
bodies as well.
"""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass

import onnx_graphsurgeon as gs

from graphc.errors import DataError
from graphc.ir import is_standard_op, walk_graphs
from graphc.passes.quant.dynamic import NO_DATA_TENSOR_SCALE_SQNR, check_dynamic_options, run_dynamic
from graphc.passes.quant.error_budget import run_with_budget
from graphc.passes.quant.mix import run_mixed_budget
from graphc.passes.quant.mode import choose_activations, without_budget
from graphc.passes.quant.placement import ALL_OPS, DEFAULT_OPS
from graphc.passes.quant.quantizer import Quantizer, activation_names
from graphc.passes.quant.recurrent import quantize_lstms
from graphc.passes.quant.weights_only import check_options, run_weights_only
from graphc.passmanager import Context, Pass, PassResult, option, register_pass

log = logging.getLogger(__name__)

QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")


@register_pass
class Quantize(Pass):
    name = "quant"
    summary = "int8 QDQ quantization with streaming KL/percentile/MSE/min-max calibration"
    exact = False
    needs_data = True
    #: integer kernels fuse on the canonical form: BatchNorm folded, decomposed activations fused,
    #: affine chains merged into one Mul and one Add (measured effect: BENCHMARKS.md, quant section)
    prepares = ("fold-bn", "canonicalize")

    @dataclass(frozen=True)
    class Options:
        calib: str = option("kl", "range calibration method", choices=("kl", "minmax", "percentile", "mse"))
        percentile: float = option(99.99, "percentile of |x| kept by calib=percentile", min=50.0, max=100.0)
        bits: int = option(8, "integer bits of weights and activations", min=2, max=8)
        activations: str = option("auto", "activation integers: u8/s8 static (ranges calibrated on --data); "
                                  "dynamic (u8 ranges computed at run time, MatMul/Gemm only, no data "
                                  "needed); auto: dynamic without --data, and with it when MatMul/Gemm "
                                  "with constant weights hold most MACs (transformers), else u8",
                                  choices=("auto", "u8", "s8", "dynamic"))
        outlier_channels: int = option(16, "activations=dynamic with --data: at most this many input channels "
                                       "per MatMul/Gemm whose calibrated max |x| exceeds 4x the median "
                                       "channel's stay float (a thin float MatMul beside the int8 one; when "
                                       "none exceeds 6x, they are moved into the weights instead); 0: none",
                                       min=0, max=64)
        merge_siblings: bool = option(True, "activations=dynamic: MatMuls that read one activation with constant "
                                      "weights (attention's Q/K/V) are merged into one MatMul and a Split "
                                      "before quantizing (one integer kernel instead of one per sibling; "
                                      "the merge-matmuls pass)")
        weights: str = option("s8", "weight integer type", choices=("s8", "u8"))
        per_channel: bool = option(True, "one weight scale per output channel")
        tensor_scale_sqnr: float | None = option(None, "activations=dynamic: a MatMul/Gemm weight whose int8 codes keep "
                                                 "at least this SQNR (dB) with one scale for the whole matrix gets "
                                                 "one (onnxruntime's dynamic kernel runs those faster on short "
                                                 "inputs); unset: 30 when -p quant runs without --data, else every "
                                                 "weight per output channel", min=0.0, max=200.0)
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
        min_cosine: float | None = option(None, "error budget: keep the fewest layers float so that the "
                                          "mean cosine of the output rows (axis 0: one per sample or "
                                          "embedding) with the float model's, on the calibration data, is "
                                          "at least this", min=0.0, max=1.0)
        max_metric_drop: float | None = option(None, "error budget: keep the fewest layers float so that the "
                                               "user's metric (--metric) loses at most this against the float "
                                               "model on the evaluation data (--eval-data, else the calibration "
                                               "data), the float outputs as the truth",
                                               min=0.0)
        metric_confidence: float = option(0.95, "max-metric-drop: hold the drop's upper bound at this confidence "
                                          "(binomial and bootstrap over samples, for metrics with per-sample "
                                          "counts such as ctc_cer and box F1); 0: the point estimate",
                                          min=0.0, max=0.999)
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
        speed_model: str = option("auto", "placement=auto's cost table: measured (timed once on this CPU and "
                                  "onnxruntime, cached in ~/.cache/graphc/speed-model), builtin (the shipped "
                                  "table), auto: $GRAPHC_SPEED_MODEL if set, else measured",
                                  choices=("auto", "measured", "builtin"))
        prepare: bool = option(True, "run fold-bn,canonicalize first when the pipeline does not "
                               "(the canonical form that integer kernels fuse on)")

        def __post_init__(self):
            check_options(self)
            check_dynamic_options(self)

        @property
        def has_budget(self) -> bool:
            """An error budget is set (min-sqnr, max-top1-drop, min-cosine or max-metric-drop)."""
            return self.min_sqnr is not None or self.max_top1_drop is not None \
                or self.min_cosine is not None or self.max_metric_drop is not None

    def preparation(self) -> tuple[str, ...]:
        # weights-only rewrites MatMul/Gemm weights alone: no kernel fusion depends on the form
        return self.prepares if self.options.prepare and not self.options.weights_only else ()

    def requires_data(self) -> bool:
        # weights-only and dynamic calibrate nothing (weights-only: data only times the result)
        return not self.options.weights_only and self.options.activations != "dynamic"

    def without_data(self) -> "Quantize | None":
        """Without --data, static quantization becomes dynamic (nothing to calibrate) unless an
        option needs the data (an error budget, bias correction)."""
        opts = self.options
        if opts.has_budget or opts.bias_correction:
            return None
        log.warning("quant: no calibration data (--data): dynamic int8 quantization of MatMul/Gemm "
                    "(activation ranges computed at run time; quant{activations=dynamic})")
        sqnr = NO_DATA_TENSOR_SCALE_SQNR if opts.tensor_scale_sqnr is None else opts.tensor_scale_sqnr
        return Quantize(dataclasses.replace(opts, activations="dynamic", tensor_scale_sqnr=sqnr))

    def run(self, graph: gs.Graph, ctx: Context) -> PassResult:
        result = PassResult(modified=False)
        if any(is_standard_op(n, *QDQ_OPS) for _, scope in walk_graphs(graph) for n in scope.nodes):
            result.skip("model already has QuantizeLinear/DequantizeLinear nodes")
            return result
        if self.options.weights_only:  # no ranges to calibrate; data (if any) only times the result
            return run_weights_only(self, graph, ctx)
        if self.options.activations == "dynamic":  # ranges computed at run time; data unused
            return run_dynamic(self, graph, ctx)
        if ctx.data is None:
            raise DataError("pass 'quant' needs calibration data (--data)")
        if self.options.activations == "auto":
            mode, why = choose_activations(self, graph, ctx)
            log.info("quant: activations=auto -> %s", why)
            if mode == "mix":  # the budget's per-layer mix of static, dynamic and float (mix.py)
                result = run_mixed_budget(Quantizer(dataclasses.replace(self.options, activations="u8")), graph, ctx)
                result.stats["activations_auto"] = why
                return result
            # a budget the dynamic mode met is spent (mode.py measured it); dynamic takes none
            chosen = Quantize(without_budget(self.options, mode) if mode == "dynamic"
                              else dataclasses.replace(self.options, activations=mode))
            result = chosen.run(graph, ctx)
            result.stats["activations_auto"] = why
            return result
        if self.options.has_budget:
            return run_with_budget(Quantizer(self.options), graph, ctx)
        result = Quantizer(self.options).quantize(graph, ctx, result)
        # LSTMs have no static integer kernel: their weights go int8 the dynamic way here too
        lstms = quantize_lstms(ctx.graph, self.options, result, ctx.cost_shapes)
        if lstms:
            ctx.graph.cleanup()
            result.count("quantized_LSTM", lstms)
            result.modified = True
        return result


def calibration_tensors(model, data, options=None) -> list[str]:
    """Names of the activations the pass would calibrate on ``model`` with ``data`` (benchmarks
    and reports use it; nothing is modified)."""
    ctx = Context(model, data=data)
    options = options if options is not None else Quantize.Options()
    return activation_names(Quantizer(options).plan(model.graph, ctx, PassResult(modified=False)))
