"""The per-layer mix of the error budget (``quant{min-sqnr=...}``, ``min-cosine``,
``max-top1-drop`` with ``activations=auto`` on a model where the dynamic mode applies,
:mod:`graphc.passes.quant.mode`): each layer is **static** int8 (QDQ, calibrated), **dynamic**
int8 (activation quantized at run time, :mod:`graphc.passes.quant.dynamic`) or **float**, chosen
by measured error so that the model meets the budget on the calibration data.

Layers. The static budget's candidates (:func:`graphc.passes.quant.error_budget.candidate_units`:
each integer Conv/Gemm/MatMul of the speed model's placement with the element-wise ops it feeds)
can be static or float; each MatMul/Gemm the dynamic rewrite takes (a constant 2-D weight, at
least ``MIN_MACS`` at the cost shapes with ``placement=auto``) can be dynamic too. A layer written
dynamic leaves the static placement with its element-wise ops (they run float). The two forms
compose in one graph: the dynamic MatMul reads a float tensor, and a static neighbour's
DequantizeLinear output is float (checked by onnxruntime and the checker in the tests).

Each layer's *ladder* is its states, fastest first: dynamic (where the layer can be; the speed
model has no dynamic class, but the dynamic kernel was measured faster than float above
``MIN_MACS``, and on transformer shapes faster than static QDQ: all-MiniLM-L6-v2 2.46x against
2.0x), then static where it measured more accurate than dynamic for that layer alone, then float.

Procedure, with ``L`` layers (``Q <= 2L`` quantized states in all), every evaluation scored
against the float model's outputs computed once, ranges calibrated once, cached and run on the
executor in force (:mod:`graphc.passes.quant.evaluations`):

1. Sensitivity: each layer alone in each of its quantized states, every other layer float
   (``Q`` evaluations; the static ones are the static budget's sweep, shared through the cache).
2. The start: every layer on the top of its ladder (1 evaluation); met: that is the result.
3. Demotion steps (a layer one rung down its ladder), the most damaging first (lowest solo SQNR
   of the state being left; a layer's steps stay in ladder order since its rungs are ordered by
   accuracy): the shortest prefix of the steps that meets the budget, by bisection
   (``ceil(log2(S))`` evaluations for ``S <= Q`` steps; every step taken is the float model,
   which meets any budget).
4. Greedy re-promotion: each demoted layer, the most expensive (MACs) first, tries the rungs
   above its own, fastest first, and keeps the first that still meets the budget (at most ``Q``
   evaluations). Every state a layer can take alone is tried against the rest's choice, so the
   result is never all float when one layer alone in any quantized state meets the budget.
5. Speed trim (1 evaluation): static ops the speed model now finds slower than float (islands
   between float or dynamic layers) go float when the budget still holds. So neither part is
   slower than float: the static part by the speed model's cut, each dynamic MatMul by the
   measured break-even.

The embedding tables (every Gather of a constant table) are one more layer, with the ladder
int8 rows (:mod:`graphc.passes.quant.embedding`, as the dynamic mode writes them: the file
shrinks with the table), then float.

At most ``2Q + ceil(log2 Q) + 2 <= 4L + log2(2L) + 2`` evaluations (the tables counted in ``L``).
"""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass

import onnx_graphsurgeon as gs

from graphc.errors import DataError, PassError
from graphc.ir import is_standard_op
from graphc.passes.quant.dynamic import dynamic_targets
from graphc.passes.quant.embedding import quantize_embeddings
from graphc.passes.quant.error_budget import (Target, candidate_units, describe, layer_costs,
                                              promote_greedily, shortest_prefix)
from graphc.passes.quant.evaluations import Budget, Mix, Score, write_dynamic
from graphc.passes.quant.quantizer import Quantizer
from graphc.passmanager import Context, PassResult

log = logging.getLogger(__name__)

DYNAMIC, STATIC, FLOAT, ROWS = "dynamic", "static", "float", "int8 rows"
PRECISION = {DYNAMIC: "int8 dynamic", STATIC: "int8 static", FLOAT: "float", ROWS: "int8 rows"}
#: the embedding tables (every Gather of a constant table), one layer of the search
TABLES = "(embedding tables)"


def dynamic_options(options):
    """The dynamic rewrite's options for the mix: no budget, every named layer taken (the mix
    chose them with the options' own placement)."""
    plain = Quantizer(options).without_budget().options
    return dataclasses.replace(plain, activations="dynamic", placement="all", exclude=())


def dynamic_layers(graph, options, shapes) -> tuple[str, ...]:
    """Names of the MatMul/Gemm the dynamic mode with ``options`` would rewrite."""
    plain = dataclasses.replace(Quantizer(options).without_budget().options, activations="dynamic")
    return tuple(t.node.name for t in dynamic_targets(graph, plain, shapes, PassResult(modified=False))
                 if t.node.name)


@dataclass
class Search:
    """The layers, their ladders and the evaluations of one mix search."""

    budget: Budget
    target: Target
    ladders: dict[str, tuple[str, ...]]
    solo: dict[tuple[str, str], Score]

    def mix(self, states: dict[str, str]) -> Mix:
        float_units = tuple(sorted(u for u in self.budget.units if states[u] != STATIC))
        return Mix(float_units, tuple(sorted(n for n, s in states.items() if s == DYNAMIC)),
                   states.get(TABLES) == ROWS)

    def score(self, states: dict[str, str]) -> Score:
        return self.budget.score_mix([self.mix(states)])[0]

    def states_at(self, steps: list[tuple[str, int]], k: int) -> dict[str, str]:
        """Each layer's state after the first ``k`` demotion steps."""
        taken = {name: 0 for name in self.ladders}
        for name, _ in steps[:k]:
            taken[name] += 1
        return {name: self.ladders[name][taken[name]] for name in self.ladders}


def sensitivity(budget: Budget, layers: list[str]) -> dict[tuple[str, str], Score]:
    """Each layer alone in each of its quantized states (every other layer float)."""
    everything = tuple(sorted(budget.units))
    cases = [(n, STATIC) for n in layers if n in budget.units] + [(n, DYNAMIC) for n in layers if n in budget.dynamic]
    cases += [(TABLES, ROWS)] if TABLES in layers else []
    mixes = [Mix(tuple(u for u in everything if u != n)) if s == STATIC else
             Mix(everything, (), True) if s == ROWS else Mix(everything, (n,)) for n, s in cases]
    return dict(zip(cases, budget.score_mix(mixes, desc="quant sensitivity (mix)")))


def ladder(name: str, budget: Budget, solo) -> tuple[str, ...]:
    """The layer's states, fastest first, float last (module doc)."""
    if name == TABLES:
        return (ROWS, FLOAT)
    rungs = [DYNAMIC] if name in budget.dynamic else []
    if name in budget.units and (not rungs or solo[(name, STATIC)].sqnr > solo[(name, DYNAMIC)].sqnr):
        rungs.append(STATIC)
    return tuple(rungs) + (FLOAT,)


def search(quantizer: Quantizer, graph, ctx: Context, result: PassResult):
    """The mix: (the search, each layer's state, the result's score, the static ops the speed
    trim moved to float); stats in ``result``."""
    opts = quantizer.options
    target = Target(opts.min_sqnr, opts.max_top1_drop, opts.min_cosine)
    budget = Budget(quantizer, ctx)
    budget.units = candidate_units(quantizer, graph, ctx)
    budget.dynamic = dynamic_layers(graph, opts, ctx.cost_shapes())
    budget.dynamic_options = dynamic_options(opts)
    return run_search(budget, target, graph, ctx, result)


def run_search(budget: Budget, target: Target, graph, ctx: Context, result: PassResult):
    """Steps 1-5 of the module doc on ``budget``'s layers (its static ``units`` and ``dynamic``
    MatMul/Gemm); returns what :func:`search` does."""
    layers = list(dict.fromkeys([*budget.units, *budget.dynamic])) + ([TABLES] if has_tables(graph) else [])
    solo = sensitivity(budget, layers)
    s = Search(budget, target, {n: ladder(n, budget, solo) for n in layers}, solo)
    start = {n: s.ladders[n][0] for n in layers}
    states, current = start, s.score(start)
    if target.max_top1_drop is not None and current.disagreement is None:
        raise DataError("quant: max-top1-drop needs a model output with class scores ([N, C] or "
                        "[N, T, C] floats); this model has none - use min-sqnr or min-cosine")
    all_quantized = current
    if not target.met(current):
        states, current = _bisect(s, current)
        states, current = _promote(s, graph, ctx, states, current)
    states, current, trimmed = _trim(s, states, current)
    _stats(s, states, current, all_quantized, trimmed, result)
    return s, states, current, tuple(trimmed)


def _bisect(s: Search, start_score: Score) -> tuple[dict[str, str], Score]:
    """The shortest prefix of the demotion steps (most damaging first) that meets the budget."""
    steps = [(n, r) for n in s.ladders for r in range(len(s.ladders[n]) - 1)]
    steps.sort(key=lambda step: (s.solo[(step[0], s.ladders[step[0]][step[1]])].sqnr, step[1]))
    hi, score = shortest_prefix(len(steps), lambda k: s.score(s.states_at(steps, k)), s.target,
                                "quant budget (mix): %d most damaging steps down: %s")
    return s.states_at(steps, hi), score


def _promote(s: Search, graph, ctx: Context, states: dict[str, str], current: Score):
    """Each demoted layer, dearest first, back up to the fastest rung that still meets the budget."""
    demoted = [n for n in s.ladders if states[n] != s.ladders[n][0]]
    costs = layer_costs(graph, ctx, demoted)
    # a layer's rungs above its own: only its own state changes before its turn comes
    moves = [(name, s.ladders[name][:s.ladders[name].index(states[name])])
             for name in sorted(demoted, key=lambda n: -costs.get(n, 0))]
    return promote_greedily(states, current, moves, lambda st, name, rung: {**st, name: rung}, s.score,
                            s.target, "quant budget (mix): %s %s again: %s")


def _trim(s: Search, states: dict[str, str], current: Score):
    """Static ops the speed model finds slower than float next to the float/dynamic layers go
    float when the budget still holds (or when it was not met anyway)."""
    mix = s.mix(states)
    trimmed = s.budget.speed_trim(mix.float_ops)
    if not trimmed:
        return states, current, []
    value = s.budget.score_mix([Mix(mix.float_ops + tuple(trimmed), mix.dynamic)])[0]
    log.info("quant budget (mix): %d ops the speed model moves to float too: %s", len(trimmed), describe(value))
    if not (s.target.met(value) or not s.target.met(current)):
        return states, current, []
    # a static layer whose every op was trimmed is a float layer (the ops left are partial units)
    gone = set(trimmed)
    states = {n: FLOAT if v == STATIC and set(s.budget.units[n]) <= gone else v for n, v in states.items()}
    now_float = set(s.budget.expand(s.mix(states).float_ops))
    return states, value, [op for op in trimmed if op not in now_float]


def has_tables(graph) -> bool:
    """The graph has a Gather of a constant table (an embedding lookup; None: no graph)."""
    return graph is not None and any(is_standard_op(n, "Gather") and isinstance(n.inputs[0], gs.Constant)
                                     for n in graph.nodes)


def _stats(s: Search, states, current: Score, start: Score, trimmed, result: PassResult) -> None:
    layers = {n: v for n, v in states.items() if n != TABLES}
    counts = {state: sum(1 for v in layers.values() if v == state) for state in (STATIC, DYNAMIC, FLOAT)}
    result.stats.update({"budget": s.target.text(), "budget_mix": True, "budget_layers": len(layers),
                         "budget_static_layers": counts[STATIC], "budget_dynamic_layers": counts[DYNAMIC],
                         "budget_float_layers": counts[FLOAT], "budget_speed_trimmed": len(trimmed),
                         "budget_sqnr_start": round(start.sqnr, 2), "budget_sqnr": round(current.sqnr, 2),
                         "budget_cosine": round(current.cosine, 6),
                         "budget_evaluations_run": s.budget.runs, "budget_evaluations_cached": s.budget.cache.hits})
    if current.disagreement is not None:
        result.stats["budget_top1_disagreement"] = round(current.disagreement, 5)
    if not s.target.met(current):
        result.skip(f"{s.target.text()}: not met even with every layer float ({describe(current)})")


def records(s: Search, states: dict[str, str], current: Score) -> list[dict]:
    """One details record per layer: its state and the one-line reason."""
    rows = []
    for name, state in states.items():
        tried = ", ".join(f"{q} alone {describe(s.solo[(name, q)])}" for q in s.ladders[name][:-1])
        rows.append({"node": name, "precision": PRECISION[state], "budget_state": state,
                     "reason": f"{s.target.text()}: {state} ({tried}); the mix {describe(current)}"})
    return rows


def run_mixed_budget(quantizer: Quantizer, graph, ctx: Context) -> PassResult:
    """The quant pass with a budget and the per-layer mix: search on a copy at opset 13, then
    write exactly the measured mix (static placement minus its float/dynamic layers, then the
    dynamic layers)."""
    plain = quantizer.without_budget()
    if plain.unsupported_opset(ctx):
        return plain.quantize(graph, ctx, PassResult(modified=False))  # skips, says why
    work = Context(ctx.model.copy(), data=ctx.data, input_shapes=ctx.input_shapes, seed=ctx.seed)
    work.original = ctx.original
    work.require_opset(13)
    scratch = PassResult(modified=False)
    s, states, current, trimmed = search(quantizer, work.graph, work, scratch)
    mix = s.mix(states)
    float_ops = s.budget.expand(mix.float_ops) + trimmed
    job = s.budget.job()
    tables = 0
    if all(v == FLOAT for v in states.values()):
        result = PassResult(modified=False)
        result.skip(f"{s.target.text()}: every layer stays float")
    else:
        upgraded = ctx.require_opset(13)
        if [n.op for n in ctx.graph.nodes] != [n.op for n in work.graph.nodes]:
            raise PassError("quant budget: upgrading the opset gave a different graph than on the copy")
        result = quantizer.keeping_float(float_ops).quantize(
            ctx.graph, ctx, PassResult(modified=False), known_ranges=job.ranges,
            positions=job.allowed(ctx.graph, float_ops))
        write_dynamic(ctx.graph, job.dynamic_options, mix.dynamic, job.outliers, result)
        tables = quantize_embeddings(ctx.graph, quantizer.options.exclude, result) if mix.tables else 0
        if tables:
            result.count("quantized_Gather", tables)
        ctx.graph.cleanup().toposort()
        result.modified = True
        if upgraded:
            result.count("opset_upgraded_to", 13)
    result.stats.update(scratch.stats)
    result.stats["activations"] = "mix"
    result.stats["budget_embedding_tables_int8"] = tables
    for reason, n in scratch.skipped.items():
        result.skipped[reason] = result.skipped.get(reason, 0) + n
    named = set(states)
    result.details[:] = [d for d in result.details if d.get("node") not in named]
    result.details.extend(records(s, states, current))
    return result
