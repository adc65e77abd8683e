"""``quant{activations=auto}`` (the default): static or dynamic activation quantization, chosen
for the model at hand.

- Without ``--data`` there is nothing to calibrate: dynamic (:meth:`Quantize.without_data`,
  which says so in one line).
- With ``--data``, when the MatMul/Gemm the dynamic mode would put on integers (a constant 2-D
  weight, at least ``MIN_MACS`` multiply-adds at the cost shapes with ``placement=auto``:
  :func:`graphc.passes.quant.dynamic.dynamic_targets`) hold at least ``DYNAMIC_SHARE`` of the
  multiply-adds of the model's Conv/ConvTranspose/MatMul/Gemm at the cost shapes (a transformer:
  98% on all-MiniLM-L6-v2), both modes are measured: a copy is quantized static and another
  dynamic (outlier channels measured on the data, :mod:`graphc.passes.quant.outliers`), each is
  scored against the float model on the first ``MAX_FEEDS`` calibration feeds, and the higher
  output SQNR wins (a mode that quantizes nothing is out: it is the float model) - unless both
  reach ``ENOUGH_SQNR`` (40 dB: an output error of 1% of the signal's RMS, which top-1 and
  embedding metrics do not see): then the one whose Conv/MatMul/Gemm run fewer multiply-adds in
  float wins (:func:`float_macs`). Comparing SQNR alone favours the candidate that quantized
  less: the static placement keeps layers float by the speed model's measured table, whose
  int8/float boundary cost varied 2.5x between measurements; on a tf2onnx classifier a low
  boundary cost let static put 4 of 17 MatMuls on integers (70.6 dB, 1.20x) and beat dynamic's
  all-integer 59.5 dB (1.44x) on SQNR. Each keeps its own guard against being slower than float
  (static: the speed model's placement; dynamic: only MatMuls of at least ``MIN_MACS``, the
  measured break-even).
- Otherwise **static** QDQ, without measuring the other mode (convolutional networks, where
  dynamic would quantize next to nothing - PP-OCR det/rec/cls have no MatMul with a constant
  weight).
- Options that only static quantization has (bias correction, ``bits`` < 8, u8 weights,
  symmetric activations, a budget on the user's metric) make it static.
- An error budget (``min-sqnr``, ``min-cosine``, ``max-top1-drop``) on a model where dynamic
  applies (the share above): the dynamic mode is measured first on the same feeds (outputs
  against the float model's); when it meets the budget it is the result, since it is the fast
  mode there and keeps its own guard against being slower than float (only MatMuls of at least
  ``MIN_MACS``), with its int8 embedding tables. Otherwise (``"mix"``) each layer is chosen among
  static int8, dynamic int8 and float by measured error (:mod:`graphc.passes.quant.mix`: never
  slower than float, never all float when one layer alone meets the budget). A budget on the
  user's metric (``max-metric-drop``), or with another static-only option, is the static budget
  search (:mod:`graphc.passes.quant.error_budget`: the fewest layers float).

Why not static on transformers (measured, all-MiniLM-L6-v2, 256 held-out sentences, mean
embedding cosine vs fp32): static QDQ with the speed model's placement 0.864, ``placement=all``
0.865 - per-tensor ranges fixed at calibration time cannot follow the activations' outlier
channels and the per-sentence range changes; dynamic 0.9937, dynamic with the outlier channels
in float 0.9989.
"""
from __future__ import annotations

import dataclasses
import logging

import onnx_graphsurgeon as gs

from graphc.ir import is_standard_op, node_macs
from graphc.passes.quant.dynamic import dynamic_targets
from graphc.passes.quant.error_budget import Score, Target, describe
from graphc.passmanager import Context, PassResult

log = logging.getLogger(__name__)

#: constant-weight MatMul/Gemm share of the linear ops' MACs from which dynamic is chosen
DYNAMIC_SHARE = 0.5
#: calibration feeds the two candidates are scored on
MAX_FEEDS = 32
#: output SQNR (dB) from which a candidate counts as accurate: when both are, the one with the
#: fewer float multiply-adds wins (module doc)
ENOUGH_SQNR = 40.0


def without_budget(options, activations: str):
    """``options`` with ``activations`` and no error budget (the dynamic mode takes none)."""
    return dataclasses.replace(options, activations=activations, min_sqnr=None, max_top1_drop=None,
                               min_cosine=None, max_metric_drop=None)


def static_only(options) -> str | None:
    """The option that needs static quantization, or None (an error budget: see
    :func:`choose_activations`)."""
    if options.has_budget:
        return "an error budget"
    if options.bias_correction:
        return "bias-correction"
    if options.bits != 8 or options.weights != "s8":
        return "bits/weights other than 8-bit s8"
    if options.symmetric_activations:
        return "symmetric-activations"
    return None


def dynamic_share(options, graph: gs.Graph, shapes: dict) -> tuple[float, int]:
    """(MACs of the MatMul/Gemm the dynamic mode would rewrite / MACs of every Conv, ConvTranspose,
    MatMul and Gemm, total MACs) at ``shapes``; unknown MACs count 0."""
    # with the dynamic mode's own placement: MatMuls too small to pay do not count
    dynamic = dataclasses.replace(without_budget(options, "dynamic"), placement="auto")
    chosen = {id(t.node) for t in dynamic_targets(graph, dynamic, shapes, PassResult(modified=False))}
    share = total = 0
    for node in graph.nodes:
        if not is_standard_op(node, "Conv", "ConvTranspose", "MatMul", "Gemm"):
            continue
        macs = node_macs(node, shapes) or 0
        total += macs
        share += macs if id(node) in chosen else 0
    return (share / total if total else 0.0), total


def choose_activations(quant_pass, graph: gs.Graph, ctx: Context) -> tuple[str, str]:
    """(``"dynamic"``, ``"u8"`` or ``"mix"`` (a budget's per-layer mix), why) for
    ``activations=auto`` with calibration data."""
    options = quant_pass.options
    forced = static_only(options)
    # a budget other than the user's metric, and no other static-only option
    budget = options.has_budget and options.max_metric_drop is None \
        and static_only(without_budget(options, "u8")) is None
    if forced is not None and not budget:
        return "u8", f"static: {forced} needs it"
    share, total = dynamic_share(options, graph, ctx.cost_shapes())
    if not total or share < DYNAMIC_SHARE:
        return "u8", (f"static: {forced} needs it" if forced else
                      f"static: MatMul/Gemm the dynamic mode would rewrite hold {share:.0%} of the MACs")
    if budget:
        return _budget_choice(quant_pass, ctx, share)
    candidates = {mode: _measured_candidate(quant_pass, mode, ctx) for mode in ("u8", "dynamic")}
    text = {m: f"{c[0].sqnr:.1f} dB" if c is not None else "nothing quantized" for m, c in candidates.items()}
    # a candidate that quantized nothing is the float model: most accurate, and no faster
    measured = {m: c for m, c in candidates.items() if c is not None}
    if len(measured) == 2 and all(c[0].sqnr >= ENOUGH_SQNR for c in measured.values()):
        mode = min(measured, key=lambda m: measured[m][1])  # both accurate: the fewer float MACs
        rule = f"both >= {ENOUGH_SQNR:g} dB, the fewer float multiply-adds"
    else:
        mode = max(measured, key=lambda m: measured[m][0].sqnr) if measured else "u8"
        rule = "the higher"
    return mode, (f"{'dynamic' if mode == 'dynamic' else 'static'}: output SQNR on the calibration data "
                  f"static {text['u8']}, dynamic {text['dynamic']} ({rule}; MatMul/Gemm the "
                  f"dynamic mode rewrites hold {share:.0%} of the MACs)")


def _budget_choice(quant_pass, ctx: Context, share: float) -> tuple[str, str]:
    """``("dynamic", why)`` when the dynamic mode meets the error budget on the calibration
    feeds, else ``("mix", why)`` (the per-layer search, :mod:`graphc.passes.quant.mix`)."""
    options = quant_pass.options
    target = Target(options.min_sqnr, options.max_top1_drop, options.min_cosine)
    measured = _measured_score(quant_pass, "dynamic", ctx)
    if measured is None:
        return "u8", f"static: {target.text()}: the dynamic mode quantizes nothing here"  # no layer to mix
    score = Score(measured.sqnr, measured.disagreement, measured.cosine)
    measured = describe(score)
    if target.met(score):
        return "dynamic", (f"dynamic: meets the error budget {target.text()} on the calibration data "
                           f"({measured}; MatMul/Gemm the dynamic mode rewrites hold {share:.0%} of the MACs)")
    return "mix", (f"mix: dynamic int8 misses the error budget {target.text()} on the calibration data "
                   f"({measured}); each layer is chosen among static, dynamic and float by measured error")


def _measured_score(quant_pass, mode: str, ctx: Context):
    """Output SQNR, cosine and top-1 disagreement (:class:`graphc.verify.scores.OutputScore`) on
    the first ``MAX_FEEDS`` calibration feeds of a copy quantized in ``mode`` (no error budget);
    None when that mode quantizes nothing."""
    candidate = _measured_candidate(quant_pass, mode, ctx)
    return candidate[0] if candidate is not None else None


def _measured_candidate(quant_pass, mode: str, ctx: Context):
    """(score as :func:`_measured_score`, the multiply-adds its linear ops still run in float at
    the cost shapes: :func:`float_macs`) of a copy quantized in ``mode``; None when that mode
    quantizes nothing."""
    # lazy: loads onnxruntime, needed only when a mode is measured
    from graphc.verify.scores import reference_outputs, score_outputs

    feeds = [dict(f) for _, f in zip(range(quant_pass.options.samples or MAX_FEEDS), ctx.data)]
    work = Context(ctx.model.copy(), data=ctx.data, input_shapes=ctx.input_shapes, seed=ctx.seed)
    if not type(quant_pass)(without_budget(quant_pass.options, mode)).run(work.graph, work).modified:
        return None
    work.graph.cleanup().toposort()
    work.invalidate()
    references = reference_outputs(ctx.model, feeds, label="float model (activations=auto)")
    score = score_outputs(work.model, feeds, references, label=f"quant {mode} (activations=auto)")
    return score, float_macs(work.graph, work.cost_shapes())


def float_macs(graph: gs.Graph, shapes: dict) -> int:
    """Multiply-adds of the Conv/ConvTranspose/MatMul/Gemm that still run in float: a weight not
    produced by DequantizeLinear (integer ops - MatMulInteger, ConvInteger - are not counted).
    Unknown MACs count as 0 (the same for both candidates: they leave the same ops alone)."""
    total = 0
    for node in graph.nodes:
        if not is_standard_op(node, "Conv", "ConvTranspose", "MatMul", "Gemm") or len(node.inputs) < 2:
            continue
        weight = node.inputs[1]
        if any(is_standard_op(p, "DequantizeLinear") for p in weight.inputs):
            continue
        total += node_macs(node, shapes) or 0
    return total
