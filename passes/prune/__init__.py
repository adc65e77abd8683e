"""prune: structured channel pruning that physically removes channels, with post-training repair.

What is removed: whole channels of the prunable groups of the channel-dependency analysis
(:mod:`graphc.analysis.channels`; blocked and inexact groups are never touched): producers lose
output rows, consumers input columns, norms and shape constants follow
(:func:`graphc.analysis.remove_channels`). Without repair the result equals the original model with
those channels' producers zeroed (``mask_channels``): the constants masked channels still carry
(BN shifts, ``relu(bias)``) are folded into the consumers' biases - exactly, borders included, with
``exact-borders=true`` (a one-channel border branch per padded consumer), else into the bias
(approximate at borders, no extra nodes: the default, since pruning is lossy anyway).

Which channels (``criterion``, :mod:`graphc.passes.prune.importance`): ``l1``, ``l2``, ``fpgm``,
``bn-scale``, or with ``--data`` ``activation``, ``wanda``, ``flap``; scores are aggregated over
the group's members and normalized to shares of the group's importance.

How many (:mod:`graphc.passes.prune.allocation`): ``ratio`` removes that fraction of every group (default
0.25 when no target is given); ``flops`` / ``params`` keep that fraction of the original model's
MACs / parameters, solved across all groups at once by ``allocation``: ``global`` (importance share
per cost saved), ``uniform`` (one ratio, bisected) or ``sensitivity`` (each group's measured output
error when pruned alone, :mod:`graphc.passes.prune.sensitivity`; needs ``--data``). Counts kept are
multiples of ``round-to`` (per slot) and at least ``1 - max-ratio`` of the original; ``round-to=auto``
(the default) is onnxruntime's NCHWc channel block on this CPU (16 with AVX-512, else 8 on x86),
finer for groups narrower than one block (:mod:`graphc.passes.prune.rounding`). MACs are
counted at ``--input-shape``, else at batch 1 when only the batch is dynamic, else at the first
calibration sample's shapes, else a nominal shape (:mod:`graphc.calib.shapes`), said in one line
that the report shows; a ``flops`` target on a model whose MACs are still unknown (e.g. a Loop) is an
error asking for ``--input-shape``.

Repair (``reconstruct``, default on when ``--data`` is given; :mod:`graphc.passes.prune.reconstruct`):
every Conv (groups 1) / Gemm / MatMul reading removed channels is refit by least squares on its
calibration inputs, shrunk toward its kept weights, ``W' = (W C_{:K} + lambda W_K)(C_KK + lambda I)^-1``,
and its bias gets the mean of what was lost, ``b' = b + W mu - W' mu_K`` (``refit=false``: bias
compensation ``b + W_R mu_R`` only).
Then ``rounds`` sweeps refit the repaired layers level by level from the pruned model's own inputs
to the original layers' outputs, so later layers correct what earlier pruning changed. Moments are
accumulated per layer over the data, never storing activations.

Targets are relative to the ORIGINAL model, recorded in the model's metadata, so re-running with
the same target is a no-op (idempotent): ``graphc.prune.channels`` (JSON: group key -> channels
before the first prune; a key is the group's producer layer names), ``graphc.prune.macs_kept`` /
``graphc.prune.params_kept`` (the fraction of the original MACs / params left) and
``graphc.prune.round_to`` (the block ``round-to=auto`` chose, reused by later ``auto`` runs on any
CPU). ``ratio=r`` keeps
``round((1 - r) * original)`` per group, ``flops=f`` means ``f`` of the original MACs; a target met
already changes nothing, and ``ratio=0`` or ``flops=1`` is an exact identity.

Details: the ``round-to`` used and why (also ``round_to`` in the stats), one record per pruned group
(key, channels before/after, removed indices, criterion, the multiple it was rounded to) and
per changed layer (channels, MACs and params before -> after; for refit layers the estimated
relative output error of that layer before and after repair). With data, ``calib_sqnr_db`` in the
stats is the measured SQNR of the outputs against the model before the pass on the calibration data
(in-sample: the repair was fitted on it; ``graphc opt --eval-data`` measures held-out data).
Size: this docstring and the Options table are a third of the module; the steps are in the
sibling modules (allocation, importance, sensitivity, reconstruct, rounding, rewrite).
"""
from __future__ import annotations

import fnmatch
import json
import logging
from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from graphc.analysis import ChannelGroups, remove_channels
from graphc.calib.moments import channel_moments
from graphc.passes.prune.allocation import (Candidate, CostModel, bisect_uniform, feasible_counts, group_keys,
                                    group_step, solve_budget, uniform_counts)
from graphc.passes.prune.importance import (CRITERIA, DATA_CRITERIA, activation_requests, bn_gammas,
                                        consumer_inputs, group_importance, removal_order, shares)
from graphc.passes.prune.reconstruct import (DEFAULT_DAMPING, RefineJob, consumer_layout, current_intercept,
                                         refit_consumers, refit_to_original)
from graphc.errors import DataError, PassError
from graphc.ir import NameFactory, node_label
from graphc.passes.prune import rewrite as rw
from graphc.passes.prune.rounding import AUTO, META_ROUND_TO, Rounding, check_round_to, parse_round_to, resolve
from graphc.passes.prune.sensitivity import measure_sensitivity
from graphc.passmanager import Context, Pass, PassResult, option, register_pass
from graphc.passmanager.context import MeasuredCostShapeAnalysis

log = logging.getLogger(__name__)

DEFAULT_RATIO = 0.25
META_CHANNELS = "graphc.prune.channels"
META_KEPT = {"macs": "graphc.prune.macs_kept", "params": "graphc.prune.params_kept"}
ALLOCATIONS = ("global", "uniform", "sensitivity")


@dataclass
class _Fit:
    """A repaired layer: its first fit, kept output rows, input layout, target in the original
    model, current output offset and estimated relative error."""

    refit: object
    rows: np.ndarray
    layout: object
    target: str
    intercept: np.ndarray
    error: float


@register_pass
class Prune(Pass):
    name = "prune"
    summary = "structured channel pruning (ratio or global flops/params budget) with least-squares repair"
    exact = False

    @dataclass(frozen=True)
    class Options:
        ratio: float | None = option(None, f"fraction of each group's original channels removed "
                                     f"({DEFAULT_RATIO} when no target is given)", min=0.0, max=1.0)
        flops: float | None = option(None, "keep this fraction of the original model's MACs (global budget)",
                                     min=0.0, max=1.0)
        params: float | None = option(None, "keep this fraction of the original model's parameters "
                                      "(global budget)", min=0.0, max=1.0)
        criterion: str = option("l1", "channel importance: l1, l2, fpgm, bn-scale; with --data: "
                                "activation, wanda, flap", choices=CRITERIA)
        allocation: str = option("global", "how a flops/params budget is shared: global (importance per "
                                 "cost), uniform (one ratio), sensitivity (measured error; needs --data)",
                                 choices=ALLOCATIONS)
        max_ratio: float = option(0.8, "never remove more than this fraction of a group's original channels",
                                  min=0.0, max=1.0)
        round_to: int | str = option(AUTO, "kept channel counts are multiples of this: an integer 1..4096 (1: any "
                               "count) or auto, onnxruntime's NCHWc block on this CPU (16 with AVX-512, "
                               "else 8 on x86), finer for groups narrower than one block",
                                     parse=parse_round_to)
        reconstruct: bool | None = option(None, "repair consumers on calibration data: least-squares refit "
                                          "and bias compensation (default: on when --data is given)")
        refit: bool = option(True, "with reconstruct: refit consumer weights (false: bias compensation only)")
        damping: float = option(DEFAULT_DAMPING, "ridge of the refit toward the unrepaired weights, relative "
                                "to the mean feature variance (plus features / samples)", min=0.0, max=1.0)
        rounds: int = option(1, "with refit: sweeps refitting the repaired layers, level by level, from the "
                             "pruned model's inputs to the original outputs (0: original inputs only)",
                             min=0, max=10)
        exact_borders: bool = option(False, "fold removed constant channels into padded consumers exactly "
                                     "(an extra one-channel branch each) instead of into their bias")
        samples: int | None = option(None, "calibration samples used (none: all)", min=1)
        ignore: tuple[str, ...] = option((), "node or tensor name patterns (fnmatch): groups touching "
                                         "them are left alone")

        def __post_init__(self):
            check_round_to(self.round_to)
            targets = [k for k in ("ratio", "flops", "params") if getattr(self, k) is not None]
            if len(targets) > 1:
                raise ValueError(f"give one target (ratio=, flops= or params=), not {', '.join(targets)}")
            if self.allocation == "sensitivity" and not {"flops", "params"} & set(targets):
                raise ValueError("allocation=sensitivity shares a flops= or params= budget; give one")

        @property
        def budget(self) -> tuple[str, float] | None:
            if self.flops is not None:
                return "macs", self.flops
            if self.params is not None:
                return "params", self.params
            return None

    def wants_original(self) -> bool:
        return self.options.criterion == "bn-scale"

    def run(self, graph: gs.Graph, ctx: Context) -> PassResult:
        opts = self.options
        data = self._data(ctx)
        result = PassResult(modified=False)
        analysis = ctx.analysis(ChannelGroups)
        keys = group_keys(analysis.groups)
        recorded = _load_json(ctx.model.metadata.get(META_CHANNELS))
        rounding = self._rounding(ctx, result)
        groups = self._candidates(analysis, keys, recorded, rounding, result)
        if not groups:
            return result
        cost = self._cost_model(ctx, analysis, data)
        candidates = self._rank(ctx, groups, keys, recorded, rounding, data, result)
        counts = self._allocate(ctx, analysis, candidates, cost, data, result)
        plan = {c.group: c.order[:c.counts[0] - counts[c.gid]] for c in candidates
                if counts[c.gid] < c.counts[0]}
        if not plan:
            return result
        before = ctx.model.copy() if data is not None else None
        macs_before = cost.by_owner("macs")
        refits = self._reconstruct(ctx, plan, data, result) if self._reconstructing(ctx) else []
        shapes_before = _layer_shapes(plan)
        removal = remove_channels(graph, plan, exact_borders=opts.exact_borders)
        names = NameFactory(graph)
        for fit in refits:
            rw.add_bias(graph, fit.refit.consumer, fit.refit.bias_delta[fit.rows], names)
        if refits and opts.refit and opts.rounds:
            self._refine(ctx, before, data, refits, names, result)
        removed = {g.id: len(idx) for g, idx in plan.items()}
        self._record(ctx, plan, keys, recorded, rounding, cost, removed, removal, result)
        self._layer_details(plan, shapes_before, cost, macs_before, removed, refits, result)
        if before is not None:
            self._measure(before, ctx, data, result)
        result.modified = True
        return result

    # -- inputs -------------------------------------------------------------------------------

    def _data(self, ctx: Context):
        opts = self.options
        needs = []
        if opts.criterion in DATA_CRITERIA:
            needs.append(f"criterion={opts.criterion}")
        if opts.allocation == "sensitivity":
            needs.append("allocation=sensitivity")
        if opts.reconstruct:
            needs.append("reconstruct=true")
        if ctx.data is None:
            if needs:
                raise DataError(f"prune{{{needs[0]}}} reads calibration data; give --data")
            return None
        return ctx.data.take(opts.samples) if opts.samples is not None else ctx.data

    def _reconstructing(self, ctx: Context) -> bool:
        return bool(self.options.reconstruct) if self.options.reconstruct is not None else ctx.data is not None

    def _rounding(self, ctx: Context, result: PassResult) -> Rounding:
        rounding = resolve(self.options.round_to, ctx.model.metadata)
        result.stats["round_to"] = rounding.block
        if rounding.auto:
            result.details.append(rounding.record())
            log.info("round-to=auto: %d (%s)", rounding.block, rounding.why)
        return rounding

    def _candidates(self, analysis, keys, recorded, rounding: Rounding, result: PassResult) -> list:
        out = []
        for g in analysis.groups:
            if not g.prunable:
                continue
            if self.options.ignore and _matches(g, self.options.ignore):
                result.skip("group ignored by pattern")
                result.details.append({"group": keys[g.id], "reason": "ignored by pattern"})
                continue
            base = int(recorded.get(keys[g.id], g.size))
            step = group_step(g, rounding.multiple(base))
            if len(feasible_counts(g.size, base, step, self.options.max_ratio)) < 2:
                result.skip("group at its smallest size (round-to / max-ratio)")
                continue
            out.append(g)
        return out

    def _cost_model(self, ctx: Context, analysis, data) -> CostModel:
        estimate = ctx.analysis(MeasuredCostShapeAnalysis)
        if estimate.chosen:
            ctx.note(f"prune counts MACs {estimate.where}")
        cost = CostModel.build(analysis, estimate.shapes)
        budget = self.options.budget
        if budget is not None and budget[0] == "macs" and cost.unknown_macs:
            raise PassError(f"prune{{flops=...}} needs MACs, but the shapes of {len(cost.unknown_macs)} layer(s) "
                            f"(e.g. '{cost.unknown_macs[0]}') are unknown {estimate.where}: give --input-shape "
                            "(or --data, whose first sample's shape is used)")
        return cost if not cost.unknown_macs else cost.params_only()

    def _rank(self, ctx: Context, groups, keys, recorded, rounding: Rounding, data,
              result: PassResult) -> list[Candidate]:
        opts = self.options
        moments = None
        if opts.criterion in DATA_CRITERIA:
            moments = channel_moments(ctx.model, data, activation_requests(groups))
        gammas = None
        if opts.criterion == "bn-scale":
            source = ctx.original if ctx.original is not None else ctx.model
            gammas = bn_gammas(source.graph)
        out = []
        for g in groups:
            scores, used = group_importance(g, opts.criterion, moments=moments, gammas=gammas)
            if used != opts.criterion:
                result.skip(f"no input for criterion {opts.criterion}; ranked by {used}")
            base = int(recorded.get(keys[g.id], g.size))
            counts = feasible_counts(g.size, base, group_step(g, rounding.multiple(base)), opts.max_ratio)
            out.append(Candidate(g, removal_order(scores), shares(scores), counts, base))
        return out

    # -- how many -----------------------------------------------------------------------------

    def _allocate(self, ctx: Context, analysis, candidates, cost, data, result) -> dict[int, int]:
        opts = self.options
        budget = opts.budget
        if budget is None:
            ratio = opts.ratio if opts.ratio is not None else DEFAULT_RATIO
            return uniform_counts(candidates, ratio)
        kind, fraction = budget
        current = cost.total(kind)
        kept = _kept_fraction(ctx.model.metadata, kind)
        target = fraction * current / kept
        result.stats[f"target_{kind}"] = int(round(target))
        if current <= target * (1 + 1e-9):
            return {c.gid: c.counts[0] for c in candidates}
        curves = None
        if opts.allocation == "sensitivity":
            report = measure_sensitivity(ctx.model, data, criterion=opts.criterion, analysis=analysis,
                                         groups=[c.group for c in candidates], samples=opts.samples or 16)
            curves = report.curves()
        if opts.allocation == "uniform":
            counts = bisect_uniform(candidates, cost, kind, target)
        else:
            counts = solve_budget(candidates, cost, kind, target, curves)
        reached = cost.total(kind, {c.gid: c.counts[0] - counts[c.gid] for c in candidates})
        if reached > target * (1 + 1e-9):
            result.skip(f"{kind} target not reachable: every group at its limit (round-to / max-ratio)")
        return counts

    # -- repair -------------------------------------------------------------------------------

    def _reconstruct(self, ctx: Context, plan, data, result: PassResult) -> list:
        opts = self.options
        shapes = ctx.shapes()
        inputs: dict[int, tuple] = {}
        for group, idx in plan.items():
            for c in consumer_inputs(group):
                entry = inputs.setdefault(id(c.node), (c, []))
                entry[1].append(group.positions[(c.weight.name, c.weight_axis)][idx].reshape(-1))
        jobs = []
        for c, parts in inputs.values():
            reason = _refit_blocker(c) or rw.bias_supported(c)
            layout = consumer_layout(c, shapes) if reason is None else reason
            if isinstance(layout, str):
                result.skip(f"not reconstructed: {layout}")
                log.info("%s not reconstructed: %s", node_label(c.node), layout)
                continue
            jobs.append((c, layout, np.unique(np.concatenate(parts))))
        if not jobs:
            return []
        refits = refit_consumers(ctx.model, data, jobs, refit=opts.refit, damping=opts.damping)
        out = []
        for refit, (_, layout, _) in zip(refits, jobs):
            rw.write_weight(refit.consumer, refit.matrix)
            rows = _kept_rows(plan, refit.consumer)
            intercept = current_intercept(refit.consumer)[rows] + refit.bias_delta[rows]
            out.append(_Fit(refit, rows, layout, refit.consumer.node.outputs[0].name, intercept,
                            refit.error_after))
            result.count("refit" if opts.refit else "bias_compensated")
        return out

    def _refine(self, ctx: Context, original, data, fits: list, names, result: PassResult) -> None:
        """Refinement sweeps (graphc.passes.prune.reconstruct.refit_to_original) on the pruned graph:
        layers level by level, each after every repaired layer upstream of it."""
        ctx.graph.toposort()  # bias Adds appended after MatMuls must precede their readers here
        for _ in range(self.options.rounds):
            for level in _levels(ctx.graph, fits):
                jobs = [RefineJob(f.refit.consumer, f.layout, f.target, f.rows, f.intercept) for f in level]
                solved = refit_to_original(ctx.model, original, data, jobs, damping=self.options.damping)
                for fit, (job, matrix, intercept, error) in zip(level, solved):
                    rw.write_weight(job.consumer, matrix)
                    rw.add_bias(ctx.graph, job.consumer, intercept - fit.intercept, names)
                    fit.intercept, fit.error = intercept, error
        result.count("refine_rounds", self.options.rounds)

    # -- records ------------------------------------------------------------------------------

    def _record(self, ctx, plan, keys, recorded, rounding, cost, removed, removal, result: PassResult) -> None:
        meta = ctx.model.metadata
        for group, idx in plan.items():
            key = keys[group.id]
            recorded.setdefault(key, group.size)
            result.details.append({"group": key, "channels": f"{group.size}->{group.size - len(idx)}",
                                   "criterion": self.options.criterion,
                                   "round_to": rounding.multiple(int(recorded[key])),
                                   "removed": [int(i) for i in np.sort(idx)]})
        meta[META_CHANNELS] = json.dumps(recorded, sort_keys=True)
        if rounding.auto:
            meta[META_ROUND_TO] = str(rounding.block)
        result.count("groups_pruned", len(plan))
        result.count("channels_removed", removal.channels)
        if removal.folded_biases:
            result.count("folded_biases", removal.folded_biases)
        if removal.border_corrections:
            result.count("border_corrections", removal.border_corrections)
        for kind in ("macs", "params"):
            if not cost.items[kind] and not cost.fixed[kind]:
                continue
            before, after = cost.total(kind), cost.total(kind, removed)
            result.stats[f"{kind}_before"] = int(round(before))
            result.stats[f"{kind}_after"] = int(round(after))
            if before > 0:
                kept = _kept_fraction(meta, kind) * after / before
                meta[META_KEPT[kind]] = repr(kept)
                result.stats[f"{kind}_kept"] = round(kept, 6)

    def _layer_details(self, plan, shapes_before, cost, macs_before, removed, refits, result) -> None:
        macs_after = cost.by_owner("macs", removed)
        errors = {id(f.refit.consumer.node): f for f in refits}
        for node, w_before, tensor in shapes_before.values():
            w_after = tuple(tensor.values.shape)
            name = node.name or node.outputs[0].name
            record = {"node": name, "channels": f"{w_before[0]}->{w_after[0]}"}
            if len(w_before) > 1:
                record["inputs"] = f"{w_before[1]}->{w_after[1]}"
            if name in macs_before:
                record["macs"] = f"{int(macs_before[name])}->{int(round(macs_after.get(name, 0)))}"
            record["params"] = f"{int(np.prod(w_before))}->{int(np.prod(w_after))}"
            fit = errors.get(id(node))
            if fit is not None:
                record["est_error"] = f"{fit.refit.error_before:.3g}->{fit.error:.3g}"
            result.details.append(record)

    def _measure(self, before, ctx: Context, data, result: PassResult) -> None:
        from graphc.verify import compare_models  # lazy: loads onnxruntime

        report = compare_models(before, ctx.model, data=data, samples=None)
        values = [o.sqnr_db for o in report.outputs if o.sqnr_db is not None]
        if values:
            result.stats["calib_sqnr_db"] = round(float(min(values)), 2)


# ---------------------------------------------------------------------------------------------
# helpers


def _matches(group, patterns) -> bool:
    names = [n.name for n in group.layers() + group.passthrough if n.name]
    names += [key[0] for key in group.positions]
    return any(fnmatch.fnmatchcase(name, p) for name in names for p in patterns)


def _load_json(text: str | None) -> dict:
    if not text:
        return {}
    try:
        value = json.loads(text)
    except ValueError:
        log.info("ignoring unreadable %s metadata", META_CHANNELS)
        return {}
    return value if isinstance(value, dict) else {}


def _kept_fraction(meta: dict, kind: str) -> float:
    try:
        value = float(meta.get(META_KEPT[kind], 1.0))
    except ValueError:
        return 1.0
    return value if 0.0 < value <= 1.0 else 1.0


def _refit_blocker(c) -> str | None:
    if len(c.weight.outputs) > 1:
        return "the weight is shared with another layer"
    if c.weight.values.dtype not in (np.float16, np.float32, np.float64):
        return "the weight is not floating point"
    return None


def _kept_rows(plan, consumer) -> np.ndarray:
    """Output rows of ``consumer`` that survive the plan (its own outputs may be pruned too)."""
    out = consumer.weight_matrix().shape[0]
    axis_key = (consumer.weight.name, 0 if consumer.kind == "conv" else 1 - consumer.weight_axis)
    gone = [g.positions[axis_key][idx].reshape(-1) for g, idx in plan.items() if axis_key in g.positions]
    if not gone:
        return np.arange(out)
    return np.setdiff1d(np.arange(out), np.concatenate(gone))


def _levels(graph: gs.Graph, fits: list) -> list[list]:
    """Repaired layers grouped by how many repaired layers lie on their longest input path."""
    index = {id(f.refit.consumer.node): f for f in fits}
    depth: dict[int, int] = {}
    levels: dict[int, list] = {}
    for node in graph.nodes:              # topological (removal sorts the graph)
        d = max((depth.get(id(t.inputs[0]), 0) for t in node.inputs if t.inputs), default=0)
        fit = index.get(id(node))
        if fit is not None:
            levels.setdefault(d, []).append(fit)
            d += 1
        depth[id(node)] = d
    return [levels[d] for d in sorted(levels)]


def _layer_shapes(plan) -> dict:
    """Weighted layers the plan changes: ``{id(node): (node, weight shape before, weight)}``."""
    out = {}
    for group in plan:
        for m in group.role("producer", "consumer"):
            w = m.node.inputs[1] if len(m.node.inputs) > 1 else None
            if isinstance(w, gs.Constant) and id(m.node) not in out:
                out[id(m.node)] = (m.node, tuple(w.values.shape), w)
    return out
