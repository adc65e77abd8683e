"""Dynamic int8 quantization for ``quant{activations=dynamic}``: int8 weights, activation ranges
computed at run time, so no calibration data is needed.

A MatMul ``y = x W`` (or Gemm ``y = alpha x W + beta C``, ``W`` read as ``[K, N]``) with a
constant 2-D float32 weight becomes, in standard ONNX ops (opset 11)::

    xq, sx, zx = DynamicQuantizeLinear(x)              # u8, per tensor, range [min(x,0), max(x,0)]
    acc = MatMulInteger(xq, Wq, zx)                    # int32, exact integer sums
    y   = Cast(acc, float) * (sx * sW)  [+ beta C]     # sW: one scale per output column n

Weights are symmetric int8 per output column (``per-channel=false``: one scale):
``sW_n = alpha max_k |W_kn| / 127``, ``Wq = clip(round(alpha W / sW), -127, 127)``, zero point 0
(so MatMulInteger's ``b_zero_point`` is left out; a per-column 1-D ``b_zero_point`` is accepted
by onnxruntime too and fuses the same way). The result is ``sx sW_n sum_k (xq_k - zx) Wq_kn``:
the errors are the weight rounding ``|W - Wq sW| <= sW / 2`` and the activation rounding
``|x - (xq - zx) sx| <= sx / 2`` per element, ``sx = (max(x,0) - min(x,0)) / 255`` of the tensor
at hand. One DynamicQuantizeLinear serves every quantized reader of a tensor.

Why this form (onnxruntime 1.32 CPU, 2 threads, AVX-512 without VNNI; A/B alternated medians,
scratch measurement): at ``ORT_ENABLE_ALL`` onnxruntime fuses DynamicQuantizeLinear +
MatMulInteger + Cast + Mul (+ the bias Add) into its ``com.microsoft.DynamicQuantizeMatMul``
kernel (a shared DynamicQuantizeLinear into ``MatMulIntegerToFloat``), so the standard form runs
the same kernel as writing the contrib ops directly, while staying valid standard ONNX (checker,
other runtimes). Measured speedups over float MatMul+Add (M x K x N): 128x384x1536 3.0x,
1x1024x8210 2.9x, 128x384x384 2.9x, 256x64x64 1.35x, 16x256x256 1.5x, 1x384x1536 1.5x; but
16x64x64 0.98x, 1x128x128 0.93x, 16x64x128 1.03x: the quantize-and-rescale overhead needs
about ``MIN_MACS`` = 2^17 multiply-adds to pay. So ``placement=auto`` quantizes a MatMul/Gemm
whose MACs at the cost shapes (``ctx.cost_shapes()``: ``--input-shape``, else batch 1) reach
``MIN_MACS`` (MACs unknown: ``K N``, i.e. one row), and ``placement=all`` every eligible one.

One weight scale where it costs little (``tensor-scale-sqnr``). onnxruntime's
DynamicQuantizeMatMul runs a weight with one scale faster than one with a scale per column on
short inputs, but one scale for a weight whose columns differ in range costs accuracy. So a
weight gets one scale only when its int8 codes keep at least ``tensor-scale-sqnr`` dB with it
(``weight_sqnr``): its rounding is then well below the run-time activation rounding (an 8-bit
per-tensor range over activations whose outlier channels are 15-28x the median keeps about
20-25 dB). On by default (``NO_DATA_TENSOR_SCALE_SQNR``) only when ``-p quant`` falls back to
this mode without --data; with --data the mode is chosen for accuracy and the rule is off unless
set. The rule judges merged siblings (below) by their merged weight. Measurements:
``benchmarks/design_notes.md``.

Siblings merged first (``merge-siblings``, default true): MatMuls that read one activation with
constant weights and are each quantized (attention's Q/K/V) become one MatMul over the
concatenated weight and a Split (:mod:`graphc.rewrite.sibling_matmuls`): one integer kernel
instead of three, the same per-column scales, so the same integer sums. The merged MatMul is
quantized because its siblings each were (it runs their multiply-adds together).

Left float, with a reason: MatMuls of two activations (attention), non-2-D or non-float32
weights, Gemm with ``transA``, Gemm whose ``C`` is computed at run time and scaled by ``beta``.
Embedding tables (Gather of a constant float table) are stored as int8 rows
(:mod:`graphc.passes.quant.embedding`); LSTMs become onnxruntime's DynamicQuantizeLSTM
(:mod:`graphc.passes.quant.recurrent`; GRU/RNN stay float: no integer kernel). Conv
(ConvInteger) is not rewritten in this mode: a scratch measurement on an oversubscribed machine
(load 14 on 2 CPUs) gave implausible ratios (12-14x on 3x3 Convs, 1.25x on a 1x1), so it is not
claimed to pay until measured on a quiet one; static QDQ is the mode for Conv networks.
"""
from __future__ import annotations

import fnmatch
import logging
from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from graphc.ir import NameFactory, is_standard_op, node_label, node_macs
from graphc.passes.quant.embedding import quantize_embeddings
from graphc.passes.quant.outliers import OutlierSplit, measure_outliers
from graphc.passes.quant.recurrent import quantize_lstms
from graphc.passes.quant.weights_only import weight_kn, weight_of
from graphc.passmanager import Context, PassResult
from graphc.rewrite.sibling_matmuls import merge_sibling_matmuls

log = logging.getLogger(__name__)

FLOAT = np.float32
#: multiply-adds below which the dynamic integer kernel does not beat float (measured; module doc).
MIN_MACS = 1 << 17
#: DynamicQuantizeLinear and MatMulInteger appeared in opset 11.
DYNAMIC_OPSET = 11
#: Cast's ``to`` for float32 (TensorProto.FLOAT).
CAST_TO_FLOAT = 1
#: ``tensor-scale-sqnr`` when ``-p quant`` runs without --data (module doc: per-tensor weight scales)
NO_DATA_TENSOR_SCALE_SQNR = 30.0


@dataclass(frozen=True)
class DynamicTarget:
    """A MatMul/Gemm to rewrite and its weight as the ``[K, N]`` matrix it multiplies by."""

    node: gs.Node
    w_kn: np.ndarray


def dynamic_weights(w_kn: np.ndarray, per_channel: bool) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 codes of a ``[K, N]`` weight and its float32 scales (``[N]`` per column,
    or 0-d): ``s = max|W| / 127`` (1 for an all-zero column), ``q = clip(round(W / s), -127, 127)``."""
    w = np.asarray(w_kn, dtype=np.float64)
    absmax = np.abs(w).max(axis=0) if per_channel else np.asarray(np.abs(w).max())
    scale = np.where(absmax > 0, absmax / 127.0, 1.0).astype(FLOAT)
    q = np.clip(np.round(w / scale.astype(np.float64)), -127, 127)
    return q.astype(np.int8), scale


def weight_sqnr(w_kn: np.ndarray, q: np.ndarray, scale: np.ndarray) -> float:
    """SQNR (dB) of the int8 weight ``q * scale`` against ``w_kn`` (inf when exact)."""
    w = np.asarray(w_kn, dtype=np.float64)
    noise = float(np.sum((w - q.astype(np.float64) * scale.astype(np.float64)) ** 2))
    signal = float(np.sum(w ** 2))
    return float("inf") if noise == 0.0 else 10.0 * np.log10(max(signal, 1e-300) / noise)


def chosen_weights(w_kn: np.ndarray, per_channel: bool, tensor_scale_sqnr: float | None) -> tuple[np.ndarray, np.ndarray]:
    """The int8 codes and scales of a weight: per column, or one scale when ``per_channel`` is off
    or the one-scale codes keep at least ``tensor_scale_sqnr`` dB (module doc)."""
    if per_channel and tensor_scale_sqnr is not None:
        q, scale = dynamic_weights(w_kn, per_channel=False)
        if weight_sqnr(w_kn, q, scale) >= tensor_scale_sqnr:
            return q, scale
    return dynamic_weights(w_kn, per_channel)


def _selected(node: gs.Node, opts) -> str | None:
    """Why ``node`` is not a candidate under the options (None: it is)."""
    if node.op not in opts.ops:
        return f"dynamic: {node.op} not in ops"
    if any(fnmatch.fnmatchcase(node.name or "", p) for p in opts.exclude):
        return "excluded by pattern"
    return None


def _check(node: gs.Node, opts, shapes) -> tuple[np.ndarray | None, str]:
    """The node's ``[K, N]`` weight, or None and the reason it stays float."""
    reason = _selected(node, opts)
    if reason is not None:
        return None, reason
    w, reason = weight_of(node)
    if w is None:
        return None, reason.replace("weights-only", "dynamic")
    bias = node.inputs[2] if is_standard_op(node, "Gemm") and len(node.inputs) > 2 else None
    if isinstance(bias, gs.Variable) and bias.name and float(node.attrs.get("beta", 1.0)) != 1.0:
        return None, "dynamic: Gemm with a run-time C scaled by beta"
    w_kn = weight_kn(node, w)
    if opts.placement == "auto":
        macs = node_macs(node, shapes)
        macs = macs if macs is not None else w_kn.size
        if macs < MIN_MACS:
            return None, f"dynamic: too small to pay (< {MIN_MACS} MACs at the cost shapes)"
    return w_kn, ""


def dynamic_targets(graph: gs.Graph, opts, shapes, result: PassResult) -> list[DynamicTarget]:
    """The MatMul/Gemm nodes to rewrite; the others are counted in ``result`` with their reason."""
    targets = []
    for node in [n for n in graph.nodes if is_standard_op(n, "MatMul", "Gemm")]:
        w_kn, reason = _check(node, opts, shapes)
        if w_kn is None:
            result.skip(reason)
            result.details.append({"node": node.name or node_label(node), "op": node.op,
                                   "precision": "float", "reason": reason})
            log.info("%s stays float: %s", node_label(node), reason)
            continue
        targets.append(DynamicTarget(node, w_kn))
    return targets


class DynamicWriter:
    """Writes the dynamic form of each target; one DynamicQuantizeLinear per activation tensor."""

    def __init__(self, graph: gs.Graph, per_channel: bool, tensor_scale_sqnr: float | None = None):
        self.graph = graph
        self.per_channel = per_channel
        self.tensor_scale_sqnr = tensor_scale_sqnr
        self.tensor_scaled = 0  # weights given one scale by tensor_scale_sqnr
        self.names = NameFactory(graph)
        self.quantized: dict[str, tuple[gs.Variable, gs.Variable, gs.Variable]] = {}

    def _new(self, op: str, name: str, inputs: list, outputs: list, **attrs) -> None:
        self.graph.nodes.append(gs.Node(op, self.names(name), attrs=attrs, inputs=inputs, outputs=outputs))

    def _var(self, name: str, dtype) -> gs.Variable:
        return gs.Variable(self.names(name), dtype=dtype)

    def activation(self, x: gs.Tensor) -> tuple[gs.Variable, gs.Variable, gs.Variable]:
        """``(xq, sx, zx)`` of ``x``, written once per tensor."""
        if x.name not in self.quantized:
            outs = (self._var(f"{x.name}_quantized", np.uint8), self._var(f"{x.name}_scale", FLOAT),
                    self._var(f"{x.name}_zero_point", np.uint8))
            self._new("DynamicQuantizeLinear", f"{x.name}_DynamicQuantizeLinear", [x], list(outs))
            self.quantized[x.name] = outs
        return self.quantized[x.name]

    def rewrite(self, target: DynamicTarget) -> tuple[gs.Constant, gs.Constant]:
        """Writes ``target``'s dynamic form; returns its int8 weight and weight scale constants."""
        node = target.node
        base = node.name or node.outputs[0].name
        q, scale = chosen_weights(target.w_kn, self.per_channel, self.tensor_scale_sqnr)
        self.tensor_scaled += int(self.per_channel and scale.ndim == 0)
        xq, sx, zx = self.activation(node.inputs[0])
        acc, accf = self._var(f"{base}_int32", np.int32), self._var(f"{base}_int32_float", FLOAT)
        both = self._var(f"{base}_scale", FLOAT)
        bias = node.inputs[2] if is_standard_op(node, "Gemm") and len(node.inputs) > 2 and node.inputs[2].name \
            else None
        out = node.outputs[0]
        scaled = self._var(f"{base}_scaled", FLOAT) if bias is not None else out
        wq, ws = gs.Constant(self.names(f"{base}_weight_quantized"), q), gs.Constant(self.names(f"{base}_weight_scale"), scale)
        self._new("MatMulInteger", f"{base}_MatMulInteger", [xq, wq, zx], [acc])
        self._new("Cast", f"{base}_Cast", [acc], [accf], to=CAST_TO_FLOAT)
        self._new("Mul", f"{base}_scale_Mul", [sx, ws], [both])
        self._new("Mul", f"{base}_rescale", [accf, both], [scaled])
        if bias is not None:
            self._new("Add", f"{base}_bias", [scaled, self._bias(node, bias)], [out])
        node.inputs, node.outputs = [], []
        return wq, ws

    def _bias(self, node: gs.Node, bias: gs.Tensor) -> gs.Tensor:
        beta = float(node.attrs.get("beta", 1.0))
        if beta == 1.0:
            return bias  # a run-time C with beta != 1 was left float by the check
        return gs.Constant(self.names(f"{bias.name}_beta"), (np.asarray(bias.values) * beta).astype(FLOAT))


def merge_targets(graph: gs.Graph, opset: int, targets: list[DynamicTarget], result: PassResult) -> list[DynamicTarget]:
    """``targets`` with each group of sibling MatMuls among them merged into one MatMul
    (:mod:`graphc.rewrite.sibling_matmuls`); a merged MatMul is a target because its siblings each
    were (its MACs are their sum: it pays where each of them did)."""
    chosen = {id(t.node) for t in targets}
    merged = merge_sibling_matmuls(graph, opset, result, accept=lambda node: id(node) in chosen)
    kept = [t for t in targets if t.node.outputs]  # merged siblings are detached
    return kept + [DynamicTarget(node, np.asarray(node.inputs[1].values)) for node in merged]


def run_dynamic(quant_pass, graph: gs.Graph, ctx: Context) -> PassResult:
    """The quant pass with ``activations=dynamic``: int8 MatMul/Gemm weights with activations
    quantized at run time, and int8 embedding tables (:mod:`graphc.passes.quant.embedding`)."""
    opts = quant_pass.options
    result = PassResult(modified=False)
    if dynamic_targets(graph, opts, ctx.cost_shapes(), PassResult(modified=False)) \
            and ctx.require_opset(DYNAMIC_OPSET):
        result.count("opset_upgraded_to", DYNAMIC_OPSET)
        graph = ctx.graph  # new node objects
    targets = dynamic_targets(graph, opts, ctx.cost_shapes(), result)
    if opts.merge_siblings:  # Q/K/V: one quantization and one integer kernel instead of three
        targets = merge_targets(graph, ctx.opset, targets, result)
    writer = DynamicWriter(graph, opts.per_channel, opts.tensor_scale_sqnr)
    # with --data: the few outlier input channels of each MatMul stay float (passes/quant/outliers.py)
    split = OutlierSplit(graph, measure_outliers(ctx, targets, opts.samples, opts.outlier_channels, result))
    for target in targets:
        result.count(f"quantized_{target.node.op}")
        result.details.append({"node": target.node.name or node_label(target.node), "op": target.node.op,
                               "precision": "int8 dynamic"})
        split.apply(target, writer.rewrite)
    tables = quantize_embeddings(graph, opts.exclude, result)
    lstms = quantize_lstms(graph, opts, result)
    if not targets and not tables and not lstms:
        return result
    if lstms:
        result.count("quantized_LSTM", lstms)
    if writer.quantized:
        result.count("dynamic_quantize_linear", len(writer.quantized))
    if writer.tensor_scaled:
        result.count("weights_one_scale", writer.tensor_scaled)
    if tables:
        result.count("quantized_Gather", tables)
    graph.cleanup()
    result.stats["activations"] = "dynamic"
    result.modified = True
    return result


def check_dynamic_options(options) -> None:
    """Parse-time checks of ``activations=dynamic`` (ValueError becomes an OptionError)."""
    if options.activations != "dynamic":
        return
    if options.weights_only:
        raise ValueError("activations=dynamic quantizes activations; it cannot be combined with weights-only=true")
    if options.has_budget or options.bias_correction:
        raise ValueError("activations=dynamic calibrates nothing; it cannot be combined with min-sqnr, "
                         "max-top1-drop, min-cosine, max-metric-drop or bias-correction")
    if options.bits != 8 or options.weights != "s8":
        raise ValueError("activations=dynamic takes bits=8 and weights=s8 (onnxruntime's dynamic kernels)")
