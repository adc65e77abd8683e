"""How many channels each group keeps: exact costs, rounding, and the global budget solver.

Costs
-----
MACs and parameters are not linear in channel counts: a Conv whose input and output channels
both shrink loses ``1 - (1 - a)(1 - b)`` of its MACs. :class:`CostModel` is exact for the MACs
``graphc.ir.stats`` counts (Conv, ConvTranspose, Gemm, MatMul) and for parameters: every cost
item (a layer's MACs at the cost shapes, a constant's element count) is its base value times one
factor per channel axis it has, ``(n - sum_g removed_g * k_g) / n`` for an axis of ``n`` positions
on which group ``g`` has ``k_g`` positions per channel. A Conv's axes are its weight's out- and
in-channel axes (a depthwise weight's in-axis has one position and no group), a MatMul of two
activations has its A axes and B's last axis. Border-correction branches added by
``exact_borders`` removal are not modelled (about ``1/Cin`` of that consumer).

Rounding
--------
A pruned group keeps a multiple of its *step*: the smallest channel count ``s`` with
``s * k`` a multiple of ``round_to`` on every slot of the group (8 for plain channels, 1 for an
attention head of 64 dims). A group keeps at least one step and at least ``1 - max_ratio`` of its
*base* size (its size in the original model, see :mod:`passes.prune`); a group that cannot move
keeps its size, whatever it is.

Solvers
-------
- :func:`uniform_counts`: every group keeps the feasible count nearest to ``base * (1 - ratio)``.
- :func:`solve_budget`: greedy; each move removes one step from one group (its least important
  channels). ``allocation=global`` takes first the move whose channels score lowest relative to
  their group's mean (a global threshold on normalized importance, as Torch-Pruning's global
  pruning), whatever it saves: weighting by cost saved would pick the widest groups first, and
  without measurement those (residual streams feeding many layers) are the most harmful to cut.
  ``allocation=sensitivity`` (``curves``) takes the move adding the least measured output noise
  (the group pruned alone) per unit of cost saved. Moves are taken until the cost is at most the
  target; the crossing move is the cheapest one landing within 0.5% below the target, else the
  one that overshoots least; then removed steps are given back, most important first, while the
  budget still holds (a coarse last step on a small model would overshoot).
- :func:`bisect_uniform` (``allocation=uniform`` under a budget): one ratio for all groups, then
  steps given back where the budget allows (rounding makes one ratio coarse on small groups).
"""
from __future__ import annotations

import heapq
import logging
import math
from dataclasses import dataclass, field

import numpy as np
import onnx_graphsurgeon as gs

from graphc.analysis.channels import ChannelAnalysis, ChannelGroup, SlotKey
from graphc.analysis.removal import is_border_branch
from graphc.ir.shapes import TensorInfo
from graphc.ir.op_kinds import LINEAR_OPS
from graphc.ir.stats import node_macs

log = logging.getLogger(__name__)

KINDS = ("macs", "params")


@dataclass
class _Item:
    base: float
    factors: list[int]                     # indices of axis factors
    owner: str = ""                        # the layer (MACs) or constant (params) it counts


@dataclass
class _Axis:
    size: int
    groups: list[tuple[int, int]]          # (group id, positions per channel)


@dataclass
class CostModel:
    """Exact MACs and parameters as functions of channels removed per group (module docstring)."""

    axes: list[_Axis] = field(default_factory=list)
    items: dict[str, list[_Item]] = field(default_factory=lambda: {k: [] for k in KINDS})
    fixed: dict[str, float] = field(default_factory=lambda: {k: 0.0 for k in KINDS})
    unknown_macs: list[str] = field(default_factory=list)
    by_group: dict[str, dict[int, list[int]]] = field(default_factory=lambda: {k: {} for k in KINDS})

    @classmethod
    def build(cls, analysis: ChannelAnalysis, cost_shapes: dict[str, TensorInfo] | None) -> "CostModel":
        model = cls()
        index: dict[SlotKey, int] = {}

        def axis_of(key: SlotKey) -> int | None:
            if key not in analysis.slot_size or not analysis.slot_groups.get(key):
                return None
            if key not in index:
                groups = [(g, int(analysis.groups[g].positions[key].shape[1]))
                          for g in analysis.slot_groups[key]]
                index[key] = len(model.axes)
                model.axes.append(_Axis(int(analysis.slot_size[key]), groups))
            return index[key]

        shapes = cost_shapes if cost_shapes is not None else {}
        for node in analysis.graph.nodes:
            if node.op not in LINEAR_OPS:
                continue
            macs = node_macs(node, shapes)
            if macs is None:
                model.unknown_macs.append(node.name or node.outputs[0].name)
                continue
            model._add("macs", macs, [axis_of(k) for k in _mac_axes(analysis, node)],
                       node.name or node.outputs[0].name)
        for tensor in analysis.graph.tensors().values():
            if isinstance(tensor, gs.Constant):
                size = int(np.prod(tensor.shape)) if tensor.shape else 1
                model._add("params", size, [axis_of((tensor.name, a)) for a in range(len(tensor.shape or ()))],
                           tensor.name)
        return model

    def params_only(self) -> "CostModel":
        """This cost model without MACs (some layers' MACs are unknown): parameters only."""
        self.items["macs"], self.fixed["macs"], self.by_group["macs"] = [], 0.0, {}
        return self

    def _add(self, kind: str, base: float, factors: list[int | None], owner: str) -> None:
        factors = sorted({f for f in factors if f is not None})
        if not factors:
            self.fixed[kind] += base
            return
        i = len(self.items[kind])
        self.items[kind].append(_Item(float(base), factors, owner))
        for f in factors:
            for gid, _ in self.axes[f].groups:
                self.by_group[kind].setdefault(gid, [])
                if i not in self.by_group[kind][gid]:
                    self.by_group[kind][gid].append(i)

    def _fraction(self, f: int, removed: dict[int, int], extra: tuple[int, int] | None = None) -> float:
        axis = self.axes[f]
        gone = sum(removed.get(g, 0) * k for g, k in axis.groups)
        if extra is not None:
            gone += sum(extra[1] * k for g, k in axis.groups if g == extra[0])
        return max(axis.size - gone, 0) / axis.size

    def _value(self, item: _Item, removed: dict[int, int], extra=None) -> float:
        return item.base * math.prod(self._fraction(f, removed, extra) for f in item.factors)

    def total(self, kind: str, removed: dict[int, int] | None = None) -> float:
        removed = removed or {}
        return self.fixed[kind] + sum(self._value(it, removed) for it in self.items[kind])

    def by_owner(self, kind: str, removed: dict[int, int] | None = None) -> dict[str, float]:
        """Cost of each item that depends on channel counts, by its owner's name."""
        out: dict[str, float] = {}
        for it in self.items[kind]:
            out[it.owner] = out.get(it.owner, 0.0) + self._value(it, removed or {})
        return out

    def saving(self, kind: str, gid: int, count: int, removed: dict[int, int]) -> float:
        """Cost saved by removing ``count`` more channels of group ``gid`` (others as ``removed``)."""
        total = 0.0
        for i in self.by_group[kind].get(gid, ()):
            item = self.items[kind][i]
            total += self._value(item, removed) - self._value(item, removed, (gid, count))
        return total

    def neighbours(self, kind: str, gid: int) -> set[int]:
        """Groups whose savings change when ``gid`` shrinks (they share a cost item)."""
        out = set()
        for i in self.by_group[kind].get(gid, ()):
            for f in self.items[kind][i].factors:
                out.update(g for g, _ in self.axes[f].groups)
        out.discard(gid)
        return out


def _mac_axes(analysis: ChannelAnalysis, node: gs.Node) -> list[SlotKey]:
    """The channel axes whose counts a layer's MACs are proportional to (module docstring)."""
    ins = node.inputs
    if node.op in ("Conv", "ConvTranspose", "Gemm") and len(ins) > 1 and isinstance(ins[1], gs.Constant):
        return [(ins[1].name, 0), (ins[1].name, 1)]
    if node.op == "MatMul" and len(ins) == 2:
        for t in ins:
            if isinstance(t, gs.Constant) and t.values.ndim >= 2:
                nd = t.values.ndim
                return [(t.name, nd - 2), (t.name, nd - 1)]
        ra, rb = analysis.rank(ins[0]), analysis.rank(ins[1])
        if ra is not None and rb is not None:
            return [(ins[0].name, a) for a in range(ra)] + [(ins[1].name, rb - 1)]
    return []


# ---------------------------------------------------------------------------------------------
# rounding


def group_step(group: ChannelGroup, round_to: int) -> int:
    """Smallest channel count whose positions are a multiple of ``round_to`` on every slot."""
    step = 1
    for pos in group.positions.values():
        k = int(pos.shape[1])
        need = round_to // math.gcd(round_to, k)
        step = step * need // math.gcd(step, need)
    return step


def feasible_counts(size: int, base: int, step: int, max_ratio: float) -> list[int]:
    """Counts a group of ``size`` channels (``base`` originally) may keep, largest first."""
    floor = max(step, step * math.ceil((1.0 - max_ratio) * base / step - 1e-9))
    counts = [size]
    kept = (size // step) * step
    if kept == size:
        kept -= step
    while kept >= floor and kept > 0:
        counts.append(kept)
        kept -= step
    return counts


# ---------------------------------------------------------------------------------------------
# solvers


@dataclass
class Candidate:
    """A group the solver may shrink: its removal order, importance shares, feasible counts."""

    group: ChannelGroup
    order: np.ndarray            # channel indices, least important first
    shares: np.ndarray           # importance share per channel (sums to 1)
    counts: list[int]            # feasible kept counts, largest (current size) first
    base: int

    @property
    def gid(self) -> int:
        return self.group.id

    def loss(self, removed_from: int, removed_to: int) -> float:
        return float(self.shares[self.order[removed_from:removed_to]].sum())


def uniform_counts(candidates: list[Candidate], ratio: float) -> dict[int, int]:
    """Kept count per group: the feasible count nearest to ``base * (1 - ratio)`` (ties: larger)."""
    out = {}
    for c in candidates:
        want = c.base * (1.0 - ratio)
        out[c.gid] = min(c.counts, key=lambda n: (abs(n - want), -n))
    return out


def solve_budget(candidates: list[Candidate], cost: CostModel, kind: str, target: float,
                 curves: dict[int, tuple[np.ndarray, np.ndarray]] | None = None) -> dict[int, int]:
    """Kept count per group so that ``cost.total(kind) <= target`` (greedy, module docstring).

    Stops early, with the cost above the target, when every group is at its smallest count."""
    by_id = {c.gid: c for c in candidates}
    step = {c.gid: 0 for c in candidates}                     # index into counts
    removed: dict[int, int] = {c.gid: 0 for c in candidates}
    current = cost.total(kind)
    version = {g: 0 for g in by_id}
    heap: list = []

    def move(gid: int):
        c = by_id[gid]
        i = step[gid]
        if i + 1 >= len(c.counts):
            return None
        n = c.counts[0] - c.counts[i + 1]
        saved = cost.saving(kind, gid, n - removed[gid], removed)
        if saved <= 0:
            return None
        return _priority(c, removed[gid], n, saved, curves), saved, n

    def push(gid: int) -> None:
        version[gid] += 1
        m = move(gid)
        if m is not None:
            heapq.heappush(heap, (m[0], gid, version[gid]))

    for gid in by_id:
        push(gid)
    while current > target and heap:
        _, gid, ver = heapq.heappop(heap)
        if ver != version[gid]:
            continue
        m = move(gid)
        if m is None:
            continue
        if current - m[1] <= target:
            gid, m = _landing(by_id, move, current, target, gid, m)
        removed[gid] = m[2]
        step[gid] += 1
        current -= m[1]
        for g in {gid} | (cost.neighbours(kind, gid) & by_id.keys()):
            push(g)
    counts = {gid: by_id[gid].counts[0] - removed[gid] for gid in by_id}
    if current > target * (1 + 1e-9):
        log.info("budget not reachable: %s %.0f > target %.0f with every group at its limit", kind, current, target)
        return counts
    return _give_back(candidates, cost, kind, target, counts)


def _landing(by_id, move, current: float, target: float, gid: int, best, slack: float = 0.005):
    """The move that crosses the target: the cheapest (by priority) landing within ``slack`` of
    it, else the one with the least overshoot."""
    crossing = [(gid, best)]
    for other in by_id:
        m = move(other)
        if other != gid and m is not None and current - m[1] <= target:
            crossing.append((other, m))
    close = [c for c in crossing if current - c[1][1] >= target * (1.0 - slack)]
    if close:
        return min(close, key=lambda c: c[1][0])
    return min(crossing, key=lambda c: c[1][1])


def _priority(c: Candidate, before: int, after: int, saved: float, curves) -> float:
    """Lower goes first: the move's mean channel score relative to its group's mean
    (``share * size``), or with curves the measured noise it adds per unit of cost saved."""
    if curves is None or c.gid not in curves:
        return c.loss(before, after) * c.counts[0] / (after - before)
    ratios, errors = curves[c.gid]
    size = c.counts[0]
    noise = float(np.interp(after / size, ratios, errors) - np.interp(before / size, ratios, errors))
    return (noise + 1e-12 * c.loss(before, after)) / saved


def bisect_uniform(candidates: list[Candidate], cost: CostModel, kind: str, target: float,
                   iterations: int = 40) -> dict[int, int]:
    """``allocation=uniform`` under a budget: the smallest common ratio whose counts meet it, then
    steps given back (most important groups first) while the budget still holds - rounding to
    steps makes one ratio too coarse on small groups."""
    def removed(counts: dict[int, int]) -> dict[int, int]:
        return {c.gid: c.counts[0] - counts[c.gid] for c in candidates}

    lo, hi = 0.0, 1.0
    best = uniform_counts(candidates, 1.0)
    if cost.total(kind, removed(best)) > target:
        return best
    for _ in range(iterations):
        mid = 0.5 * (lo + hi)
        counts = uniform_counts(candidates, mid)
        if cost.total(kind, removed(counts)) <= target:
            hi, best = mid, counts
        else:
            lo = mid
    return _give_back(candidates, cost, kind, target, best)


def _give_back(candidates: list[Candidate], cost: CostModel, kind: str, target: float,
               counts: dict[int, int]) -> dict[int, int]:
    counts = dict(counts)
    while True:
        options = []
        for c in candidates:
            i = c.counts.index(counts[c.gid])
            if i > 0:
                n = c.counts[0] - c.counts[i - 1]
                gain = c.loss(n, c.counts[0] - counts[c.gid])
                options.append((-gain, c.gid, c.counts[i - 1]))
        for _, gid, kept in sorted(options):
            trial = {**counts, gid: kept}
            if cost.total(kind, {c.gid: c.counts[0] - trial[c.gid] for c in candidates}) <= target:
                counts = trial
                break
        else:
            return counts


# ---------------------------------------------------------------------------------------------
# identity of a group across runs


def group_keys(groups: list[ChannelGroup]) -> dict[int, str]:
    """A stable name per group: its producer layers' names, sorted and joined by ``|``; groups
    with the same producers (a Split of one layer's channels) get ``#0``, ``#1``... by position.
    Border branches an earlier prune added are not layers of their own (``is_border_branch``):
    left out, the key stays what it was before that prune, as its recorded metadata says."""
    raw: dict[int, str] = {}
    for g in groups:
        names = sorted({m.node.name or m.node.outputs[0].name for m in g.producers if not is_border_branch(m.node)})
        raw[g.id] = "|".join(names) if names else f"group{g.id}"
    by_key: dict[str, list[ChannelGroup]] = {}
    for g in groups:
        by_key.setdefault(raw[g.id], []).append(g)
    keys = {}
    for key, members in by_key.items():
        if len(members) == 1:
            keys[members[0].id] = key
            continue
        members.sort(key=lambda g: _first_position(g))
        for i, g in enumerate(members):
            keys[g.id] = f"{key}#{i}"
    return keys


def _first_position(group: ChannelGroup) -> tuple:
    slots = sorted({m.slot for m in group.producers})
    return tuple(int(group.positions[s].min()) for s in slots) or (group.id,)


def short_label(key: str, limit: int = 60) -> str:
    """A key for display: the first producer and how many more."""
    names = key.split("|")
    text = names[0] if len(names) == 1 else f"{names[0]} (+{len(names) - 1})"
    return text if len(text) <= limit else "..." + text[-(limit - 3):]
