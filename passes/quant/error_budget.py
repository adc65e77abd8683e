"""Error budget for ``quant{min-sqnr=...}``, ``quant{max-top1-drop=...}`` and
``quant{max-metric-drop=...}`` (the user's ``--metric``): which layers stay in
float so that the quantized model meets the budget on the calibration data, chosen from measured
per-layer sensitivity.

Metrics (each *evaluation* quantizes the model with a given set of layers kept in float and runs
it on the calibration feeds, against the float model's outputs computed once):

- SQNR of all model outputs, ``10 log10(sum r^2 / sum (r - q)^2)`` summed over outputs and feeds;
- top-1 disagreement: the fraction of positions whose argmax over the class axis differs from the
  float model's, pooled over the outputs that hold class scores (float ``[N, C]`` or per-step
  ``[N, T, C]``, :func:`graphc.verify.running.has_top1`): for a CTC recognizer every time step
  is a position.

- cosine: the mean over output rows (axis 0) of the cosine with the float model's row
  (:func:`graphc.verify.scores.score_outputs`), for ``min-cosine`` (embeddings, regressions).
- the user's metric (``--metric``, :mod:`graphc.verify.user_metric`): its score of the float
  model's outputs against themselves minus its score of the candidate's (sign flipped when lower
  is better), the float outputs as the truth (labels are not used). Measured on a sample, this
  drop is an estimate: a budget decided on 32 lines where 0.3 points of CER is a handful of
  characters passes models that lose more on other lines. So it is measured on the evaluation
  data when given (``--eval-data``: apart from calibration, up to 1000 samples) and, for metrics
  that expose their per-sample counts (``ctc_cer``, ``box_f1``, ``det_box_f1``), the budget holds
  the drop's upper ``metric-confidence`` bound (default 0.95: Clopper-Pearson over the pooled
  characters/boxes, a bootstrap over samples and Clopper-Pearson on the clustering's effective
  trials, the largest; with labels for the evaluation data
  (the truth then), a paired bootstrap of the change; :mod:`graphc.verify.metric_bound`),
  not its point estimate. With 0 errors in ``T`` characters that bound is about ``3 / T``, so a
  CER budget of 0.003 needs over 1000 evaluation characters to be met at all.

A budget is met when every given bound holds (``SQNR >= min_sqnr``, ``disagreement <=
max_top1_drop``, ``cosine >= min_cosine``, ``metric drop <= max_metric_drop``).

Procedure:

1. Candidates (:func:`candidate_units`): each Conv/Gemm/MatMul the plain pass puts on integers,
   together with the integer element-wise ops it feeds (they go float with it), and integer ops
   no such layer feeds. The placement the speed model chose for the whole model is held fixed:
   an evaluation quantizes exactly that placement minus its float set, and so does the final
   result - what was measured is what is written.
   The activations are calibrated once, on the float model (ranges do not depend on which layers
   are float), and every evaluation re-uses them.
2. Sensitivity: each candidate quantized alone (every other candidate float). These evaluations
   are independent and run on the executor in force (:mod:`graphc.executor`: local spawned
   processes by default, or Ray; each worker is given the model, feeds, reference outputs and
   ranges once), under a progress bar. A layer's
   sensitivity is its solo SQNR (continuous, so it orders layers even where the top-1
   disagreement of one layer alone is 0).
3. Everything quantized; if the budget is met, nothing stays float.
4. Keep: the shortest run of the most sensitive candidates (lowest solo SQNR first) whose being
   float meets the budget, found by bisection over the run's length (a handful of evaluations
   where adding one layer at a time would take one per layer).
5. Greedy leave-out: try quantizing each float layer again, the most expensive (MACs) first, and
   keep it quantized when the budget still holds - interactions (two layers whose errors cancel
   or add) are accounted for by measuring, not by summing; the cheap layers are the ones left
   float.
6. Speed trim: with those layers float, the speed model cuts the rest of the placement again;
   integer ops it now finds slower than float (islands between float layers, which pay a
   conversion on each side) go float too, when the budget still holds measured that way - so
   the budget never buys accuracy with a model slower than the float one by the speed model.

A layer is *sensitive* when quantizing it alone already spends a quarter of the noise budget
(solo SQNR below ``min_sqnr + 6 dB``) or alone breaks more than a quarter of the top-1 budget;
the result keeps in float only the layers step 5 leaves, usually strictly fewer.

The evaluations, their cache and worker processes are :mod:`graphc.passes.quant.evaluations`.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass

from graphc.errors import DataError, PassError
from graphc.ir.op_kinds import LINEAR_OPS
from graphc.ir.stats import node_macs
from graphc.passes.quant.evaluations import CACHE_VERSION, Budget, Score  # noqa: F401 (re-exported)
from graphc.passes.quant.quantizer import Quantizer
from graphc.passmanager import Context, PassResult

log = logging.getLogger(__name__)

#: solo SQNR below min_sqnr + this many dB: the layer alone spends a quarter of the noise budget.
SENSITIVE_MARGIN_DB = 6.0


@dataclass(frozen=True)
class Target:
    min_sqnr: float | None
    max_top1_drop: float | None
    min_cosine: float | None = None
    max_metric_drop: float | None = None  # the user's metric (--metric), its float score as the truth

    def met(self, score: Score) -> bool:
        if self.min_sqnr is not None and not score.sqnr >= self.min_sqnr:
            return False
        if self.min_cosine is not None and not score.cosine >= self.min_cosine:
            return False
        if self.max_top1_drop is not None and not (score.disagreement or 0.0) <= self.max_top1_drop:
            return False
        if self.max_metric_drop is not None and not (metric_drop(score) is not None
                                                     and metric_drop(score) <= self.max_metric_drop):
            return False
        return True

    def sensitive(self, solo: Score) -> bool:
        if self.min_sqnr is not None and solo.sqnr < self.min_sqnr + SENSITIVE_MARGIN_DB:
            return True
        if self.min_cosine is not None and 1.0 - solo.cosine > (1.0 - self.min_cosine) / 4:
            return True
        if self.max_metric_drop is not None and (solo.metric_drop or 0.0) > self.max_metric_drop / 4:
            return True
        return self.max_top1_drop is not None and (solo.disagreement or 0.0) > self.max_top1_drop / 4

    def text(self) -> str:
        parts = [f"min-sqnr={self.min_sqnr:g}"] if self.min_sqnr is not None else []
        if self.max_top1_drop is not None:
            parts.append(f"max-top1-drop={self.max_top1_drop:g}")
        if self.min_cosine is not None:
            parts.append(f"min-cosine={self.min_cosine:g}")
        if self.max_metric_drop is not None:
            parts.append(f"max-metric-drop={self.max_metric_drop:g}")
        return " ".join(parts)


def metric_drop(score: Score) -> float | None:
    """The metric drop a budget holds to: its upper confidence bound when measured, else the
    point estimate."""
    return score.metric_bound if score.metric_bound is not None else score.metric_drop


def describe(score: Score) -> str:
    text = f"{score.sqnr:.1f} dB, cosine {score.cosine:.5f}"
    text += f", metric drop {score.metric_drop:.4g}" if score.metric_drop is not None else ""
    text += f" (upper bound {score.metric_bound:.4g})" if score.metric_bound is not None else ""
    return text + (f", top-1 disagreement {score.disagreement:.2%}" if score.disagreement is not None else "")


def note_sampling_margin(all_quantized: Score, limit: float, samples: int, result: PassResult) -> None:
    """Record how much of the bound is sampling margin (bound minus point estimate, all quantized),
    and warn when it exceeds the budget itself: which side of the limit a model falls on is then
    mostly the luck of the evaluation sample (PP-OCRv4 rec: a 0.49 pt margin on 300 lines for a
    0.3 pt budget). The margin shrinks as ``1 / sqrt(samples)``: about ``samples * (2 margin /
    limit)^2`` samples bring it to half the limit."""
    if all_quantized.metric_bound is None or all_quantized.metric_drop is None:
        return
    margin = max(all_quantized.metric_bound - all_quantized.metric_drop, 0.0)
    result.stats["budget_metric_margin_all_quantized"] = round(margin, 6) + 0.0
    if margin > limit:
        needed = math.ceil(samples * (2.0 * margin / limit) ** 2)
        log.warning("quant budget: on %d evaluation samples the metric drop's confidence margin is %.4g, more "
                    "than max-metric-drop=%g: the verdict is mostly sampling noise; about %d samples "
                    "(--eval-data) would bring the margin to half the budget", samples, margin, limit, needed)


def candidate_units(quant, graph, ctx: Context) -> dict[str, tuple[str, ...]]:
    """The candidates: each integer Conv/ConvTranspose/Gemm/MatMul (an *anchor*) with the integer
    ops it feeds on their first path (its activation, HardSigmoid/Mul of a HardSwish, the residual
    Add it starts), which go float with it; an integer op that no anchor feeds is a unit alone.
    Element-wise ops quantized without their anchors cost more accuracy than quantizing
    everything (BENCHMARKS.md, design notes), so they are never split off."""
    plan = Quantizer(quant.options).plan(graph, ctx, PassResult(modified=False))
    unit_of: dict[int, str] = {}
    units: dict[str, list[str]] = {}
    for node in plan.quantized:  # topological order
        if not node.name:
            continue
        owner = node.name
        if node.op not in LINEAR_OPS:
            for tensor in node.inputs:
                producer = tensor.inputs[0] if tensor.inputs else None
                if producer is not None and id(producer) in unit_of:
                    owner = unit_of[id(producer)]
                    break
        unit_of[id(node)] = owner
        units.setdefault(owner, []).append(node.name)
    # ops of the speed model's placement the plan folds into their anchor (a MatMul's bias Add):
    # with the anchor float they would be quantized alone, so they go float with it
    placed = {name for ops in units.values() for name in ops}
    for i in sorted(Quantizer(quant.options).speed_positions(graph, ctx) or ()):
        node = graph.nodes[i]
        producers = [t.inputs[0] for t in node.inputs if t.inputs]
        owner = next((unit_of[id(p)] for p in producers if id(p) in unit_of), None)
        if node.name and node.name not in placed and owner is not None:
            unit_of[id(node)] = owner
            units[owner].append(node.name)
    return {name: tuple(ops) for name, ops in units.items()}


def layer_costs(graph, ctx: Context, layers: list[str]) -> dict[str, int]:
    """MACs of each layer at the cost shapes (0 where unknown)."""
    shapes = ctx.cost_shapes()
    wanted = set(layers)
    return {n.name: node_macs(n, shapes) or 0 for n in graph.nodes if n.name in wanted}


def choose_float_layers(quantizer: Quantizer, graph, ctx: Context,
                        result: PassResult) -> tuple[list[dict], Budget]:
    """The layers to keep float, each as a details record with its reason, and the budget run."""
    opts = quantizer.options
    target = Target(opts.min_sqnr, opts.max_top1_drop, opts.min_cosine, opts.max_metric_drop)
    if target.max_metric_drop is not None and ctx.metric is None:
        raise DataError("quant: max-metric-drop needs the user's metric (--metric MODULE:FUNCTION)")
    budget = Budget(quantizer, ctx)
    budget.units = candidate_units(quantizer, graph, ctx)
    layers = list(budget.units)
    solo = dict(zip(layers, budget.score([tuple(x for x in layers if x != name) for name in layers],
                                         desc="quant sensitivity")))
    current = all_quantized = budget.score([()])[0]
    if target.max_top1_drop is not None and current.disagreement is None:
        raise DataError("quant: max-top1-drop needs a model output with class scores ([N, C] or "
                        "[N, T, C] floats); this model has none - use min-sqnr")
    kept: list[str] = []
    if not target.met(current):
        # the shortest prefix of the most-sensitive-first order that meets the budget, by
        # bisection (all layers float is the float model itself, which meets any budget)
        order = sorted(layers, key=lambda n: solo[n].sqnr)
        hi, current = shortest_prefix(len(order), lambda k: budget.score([tuple(order[:k])])[0], target,
                                      "quant budget: %d most sensitive float: %s")
        kept = order[:hi]
    costs = layer_costs(graph, ctx, kept)
    dearest_first = sorted(kept, key=lambda n: (-costs.get(n, 0), -solo[n].sqnr))
    # leave-out: each float layer, dearest first, quantized again where the budget still holds
    float_set, current = promote_greedily(tuple(kept), current, [(n, ("quantized",)) for n in dearest_first],
                                          lambda floats, name, _: tuple(x for x in floats if x != name),
                                          lambda floats: budget.score([floats])[0], target,
                                          "quant budget: %s %s again: %s")
    kept = list(float_set)
    trimmed: list[str] = budget.speed_trim(kept) if kept else []
    if trimmed:
        value = budget.score([tuple(kept) + tuple(trimmed)])[0]
        log.info("quant budget: %d ops the speed model moves to float too: %s", len(trimmed), describe(value))
        if not target.met(value):
            trimmed = []
        else:
            current = value
    sensitive = [n for n in layers if target.sensitive(solo[n])]
    result.stats.update({"budget": target.text(), "budget_sqnr_all_quantized": round(all_quantized.sqnr, 2),
                         "budget_sqnr": round(current.sqnr, 2), "budget_layers": len(layers),
                         "budget_sensitive_layers": len(sensitive), "budget_float_layers": len(kept),
                         "budget_speed_trimmed": len(trimmed),
                         "budget_evaluations_run": budget.runs, "budget_evaluations_cached": budget.cache.hits})
    if opts.min_sqnr is not None:
        result.stats["budget_min_sqnr"] = opts.min_sqnr
    if opts.min_cosine is not None:
        result.stats.update({"budget_min_cosine": opts.min_cosine, "budget_cosine": round(current.cosine, 6),
                             "budget_cosine_all_quantized": round(all_quantized.cosine, 6)})
    if current.disagreement is not None:
        result.stats["budget_top1_disagreement_all_quantized"] = round(all_quantized.disagreement, 5)
        result.stats["budget_top1_disagreement"] = round(current.disagreement, 5)
    if opts.max_top1_drop is not None:
        result.stats["budget_max_top1_drop"] = opts.max_top1_drop
    if current.metric_drop is not None:
        result.stats.update({"budget_max_metric_drop": opts.max_metric_drop,
                             "budget_metric_drop_all_quantized": round(all_quantized.metric_drop, 6) + 0.0,
                             "budget_metric_drop": round(current.metric_drop, 6) + 0.0,  # no -0.0
                             "budget_metric_samples": len(budget.feeds),
                             "budget_metric_data": "evaluation" if budget.feeds is not budget.calibration_feeds
                             else "calibration"})
        if current.metric_bound is not None:
            result.stats.update({"budget_metric_confidence": opts.metric_confidence,
                                 "budget_metric_drop_bound": round(current.metric_bound, 6) + 0.0})
            note_sampling_margin(all_quantized, opts.max_metric_drop, len(budget.feeds), result)
        elif opts.metric_confidence > 0:
            log.warning("quant budget: metric %s has no per-sample counts; the budget holds to the point "
                        "estimate of its drop, with no confidence margin", ctx.metric.spec)
    if not target.met(current):
        hint = ""
        if current.metric_bound is not None:
            hint = (f"; the metric drop is held to its {opts.metric_confidence:g} upper bound on "
                    f"{len(budget.feeds)} samples: more --eval-data tightens it")
        result.skip(f"{target.text()}: not met even with {len(kept)} layers float ({describe(current)}){hint}")
    return [{"node": name, "precision": "float",
             "reason": f"{target.text()}: quantized alone {describe(solo[name])}; all quantized "
                       f"{describe(all_quantized)}, with it float {describe(current)}",
             "solo_sqnr": round(solo[name].sqnr, 2),
             **({"solo_top1_disagreement": round(solo[name].disagreement, 5)}
                if solo[name].disagreement is not None else {}),
             "macs": costs.get(name, 0), "ops": list(budget.units[name])} for name in kept] + [
        {"node": name, "precision": "float", "reason": f"{target.text()}: its neighbours are float, so the "
         f"speed model finds it slower on integers; measured with it float {describe(current)}"}
        for name in trimmed], budget


def shortest_prefix(count: int, score_of, target: Target, step_log: str) -> tuple[int, Score]:
    """The smallest ``k`` in ``1..count`` whose ``score_of(k)`` meets ``target``, by bisection, and
    that score; ``score_of(count)`` is taken to meet it (everything float is the float model) and
    is evaluated only when no shorter prefix does. ``step_log``: a log format with ``%d``, ``%s``."""
    lo, hi, best = 0, count, None
    while hi - lo > 1:
        mid = (lo + hi) // 2
        score = score_of(mid)
        log.info(step_log, mid, describe(score))
        if target.met(score):
            hi, best = mid, score
        else:
            lo = mid
    return hi, best if best is not None else score_of(hi)


def promote_greedily(state, current: Score, moves, trial_of, score_of, target: Target, step_log: str):
    """The greedy re-promotion after the bisection: each ``(name, rungs)`` of ``moves``, in order,
    tries its rungs in order, each as ``trial_of(state, name, rung)`` against the state so far, and
    keeps the first whose ``score_of`` meets ``target`` (its later rungs are not tried). Returns
    the state and its score (``state, current`` when nothing was kept). ``step_log``: a log format
    with ``%s`` for the name, the rung and the score."""
    for name, rungs in moves:
        for rung in rungs:
            trial = trial_of(state, name, rung)
            value = score_of(trial)
            log.info(step_log, name, rung, describe(value))
            if target.met(value):
                state, current = trial, value
                break
    return state, current


def run_with_budget(quantizer: Quantizer, graph, ctx: Context) -> PassResult:
    """The quant pass with a budget: choose the float layers, then quantize the rest with the
    placement every evaluation used."""
    plain = quantizer.without_budget()
    if plain.unsupported_opset(ctx) or not plain.plan(graph, ctx, PassResult(modified=False)).quantized:
        return plain.quantize(graph, ctx, PassResult(modified=False))  # skips, says why
    # the search runs on a copy at opset 13 (node positions stay put from here on); the model
    # itself is upgraded only if the budget leaves something to quantize
    work = Context(ctx.model.copy(), data=ctx.data, input_shapes=ctx.input_shapes, seed=ctx.seed, metric=ctx.metric,
                   evaluation=ctx.evaluation, evaluation_labels=ctx.evaluation_labels)
    work.original = ctx.original
    work.require_opset(13)
    scratch = PassResult(modified=False)
    records, budget = choose_float_layers(quantizer, work.graph, work, scratch)
    job = budget.job()
    kept = budget.expand(r["node"] for r in records)
    final = quantizer.keeping_float(kept)
    positions = job.allowed(work.graph, kept)
    if final.plan(work.graph, work, PassResult(modified=False), positions).quantized:
        upgraded = ctx.require_opset(13)
        if [n.op for n in ctx.graph.nodes] != [n.op for n in work.graph.nodes]:
            raise PassError("quant budget: upgrading the opset gave a different graph than on the copy")
        result = final.quantize(ctx.graph, ctx, PassResult(modified=False), known_ranges=job.ranges,
                                positions=positions)
        if upgraded:
            result.count("opset_upgraded_to", 13)
    else:  # every layer float: the model is left as it was (no opset upgrade either)
        result = PassResult(modified=False)
        result.skip(f"{scratch.stats['budget']}: every layer stays float")
    result.stats.update(scratch.stats)
    for reason, n in scratch.skipped.items():
        result.skipped[reason] = result.skipped.get(reason, 0) + n
    # the budget's own record (with the measured sensitivity) replaces the generic
    # "excluded by pattern" one the inner run wrote for the same layer
    budget_nodes = set(kept)
    result.details[:] = [d for d in result.details
                         if not (d.get("precision") == "float" and d.get("node") in budget_nodes)]
    result.details.extend(records)
    return result
