"""Channel-dependency analysis: which channels of an ONNX graph must be pruned together.

Model
-----
A *slot* is one axis of one tensor that carries channels, keyed ``(tensor name, axis)``; weights
have slots too (a Conv weight has one on axis 0, out-channels, and one on axis 1, in-channels).
Every position of a slot is an element of a union-find. The op rules (:mod:`channel_rules`)
declare which positions hold the same channel:

- identity: element-wise ops with broadcasting, BatchNorm, pooling, Resize, Pad, Transpose...
- offset (Concat: input k's channel i is output channel ``offset_k + i``), range (Split, Slice),
- stride (Flatten/Reshape merging channels with spatial dims: position p is channel ``p // inner``),
- head (Reshape splitting channels into ``heads x head_dim``: channel c is head ``c // head_dim``,
  or head-dim ``c % head_dim``, by option),
- group structure (depthwise Conv: in-channel c is out-channels ``c*m .. c*m+m-1``; grouped Conv:
  channel j of every group together, so each group keeps the same count; GroupNorm: whole groups).

A *class* is a connected set of positions; its members are kept or dropped together. A *group*
(:class:`ChannelGroup`) is the set of classes that touch the same slots with the same number of
positions each: group channel ``j`` is one class, and ``group.positions[slot][j]`` lists where it
sits in that slot. Dropping group channel j removes those positions from every slot: weights are
sliced, shapes follow, a few attributes and shape constants are rewritten (see :mod:`removal`).

Conservative by construction: a slot that reaches an op without a rule, an unknown domain, a graph
input or output, a reduction over the channel axis, or a shape the analysis cannot rewrite gets a
*block reason*; every group that touches the slot is blocked with that reason. Groups whose removal
is valid but not function-preserving (LayerNorm over channels: its statistics change) are
*inexact*. A group whose channels, when its producers are zeroed, do not reach its consumers as
per-channel constants (see :mod:`masked_values`) is inexact too, since removal could not fold them.

Cost: one visit per (node, slot); identity links are a slot-level union-find, other maps are
vectorized element unions; groups come from a hash of the slots each class touches.

Size: the analysis proper (slots, unions, groups, blocking reasons); the per-op rules are in
``rules_*.py`` and the reports in ``group_report.py``.
"""
from __future__ import annotations

import logging
from collections import defaultdict, deque
from dataclasses import dataclass, field

import numpy as np
import onnx_graphsurgeon as gs

from graphc.analysis.masked_values import MaskedValues, compute_masked_values
from graphc.analysis.shape_completion import complete_shapes
from graphc.ir import consumers, node_label, producer
from graphc.ir.shapes import TensorInfo
from graphc.ir.stats import node_macs
from graphc.ir.structure import find_cycle_free_order
from graphc.ir.subgraphs import walk_graphs

log = logging.getLogger(__name__)

SlotKey = tuple[str, int]
ATTENTION_MODES = ("heads", "head-dims")
#: roles whose slot is a weight; used for importance and savings.
WEIGHT_ROLES = ("producer", "consumer", "norm", "bias", "param")


@dataclass(frozen=True, eq=False)
class Member:
    """A node that changes when the group shrinks, and through which slot."""

    node: gs.Node
    role: str        # producer | consumer | norm | bias | param | reshape | split | slice | ...
    slot: SlotKey
    path: str = ""   # the body the node sits in ("" top graph)

    @property
    def label(self) -> str:
        return node_label(self.node, self.path)


@dataclass(eq=False)
class ChannelGroup:
    """Channels that must be kept or dropped together (see the module docstring)."""

    id: int
    size: int
    positions: dict[SlotKey, np.ndarray]          # slot -> (size, k) positions of each channel
    members: list[Member] = field(default_factory=list)
    passthrough: list[gs.Node] = field(default_factory=list)
    blocked: list[str] = field(default_factory=list)
    inexact: list[str] = field(default_factory=list)
    params_per_channel: int = 0
    macs_per_channel: int | None = 0
    analysis: "ChannelAnalysis | None" = field(default=None, repr=False)

    @property
    def status(self) -> str:
        return "blocked" if self.blocked else "inexact" if self.inexact else "prunable"

    @property
    def prunable(self) -> bool:
        return not self.blocked and not self.inexact

    def role(self, *roles: str) -> list[Member]:
        return [m for m in self.members if m.role in roles]

    @property
    def producers(self) -> list[Member]:
        return self.role("producer")

    @property
    def consumers(self) -> list[Member]:
        return self.role("consumer")

    def layers(self) -> list[gs.Node]:
        """Distinct nodes whose weights, attributes or shape constants change."""
        seen: dict[int, gs.Node] = {}
        for m in self.members:
            seen.setdefault(id(m.node), m.node)
        return list(seen.values())

    def weights(self, roles: tuple[str, ...] = WEIGHT_ROLES) -> list[tuple[Member, np.ndarray]]:
        """Importance inputs: for each weight member, an ``(size, -1)`` array whose row j holds
        every weight that disappears with group channel j."""
        out = []
        for m in self.role(*roles):
            tensor = self.analysis.tensor(m.slot[0]) if self.analysis else None
            if not isinstance(tensor, gs.Constant):
                continue
            values = np.moveaxis(np.asarray(tensor.values), m.slot[1], 0)
            pos = self.positions[m.slot]
            out.append((m, values[pos.reshape(-1)].reshape(self.size, -1)))
        return out

    def __repr__(self) -> str:
        return f"ChannelGroup({self.id}, size={self.size}, {self.status}, {len(self.members)} members)"


@dataclass
class Fixup:
    """An attribute or shape constant that follows the channel count of some slots."""

    node: gs.Node
    kind: str                 # conv-group | group-norm | reshape | split | slice | gather | resize | expand
    slots: tuple[SlotKey, ...]
    data: dict = field(default_factory=dict)


@dataclass
class Link:
    """Positions ``a_idx`` of slot ``a`` are the same channels as ``b_idx`` of ``b`` (None: all)."""

    node: gs.Node | None
    a: SlotKey
    b: SlotKey
    a_idx: np.ndarray | None = None
    b_idx: np.ndarray | None = None
    kind: str = "identity"


class ChannelAnalysis:
    """Result of the analysis: groups, slots, and how they were derived."""

    def __init__(self, graph: gs.Graph, shapes: dict[str, TensorInfo], opset: int, attention: str,
                 cost_shapes: dict[str, TensorInfo] | None = None, path: str = "",
                 node_paths: dict[int, str] | None = None):
        self.graph = graph
        #: the body analysed (``If_0/then_branch``; "" the top graph) and where each node sits
        self.path = path
        self.node_paths = node_paths if node_paths is not None else \
            {id(n): p for p, g in walk_graphs(graph, path) for n in g.nodes}
        order = find_cycle_free_order(graph)
        self.order = {id(n): i for i, n in enumerate(order)}
        self.shapes = complete_shapes(graph, shapes, order)
        self.cost_shapes = complete_shapes(graph, cost_shapes, order) if cost_shapes is not None else self.shapes
        self.opset = opset
        self.attention = attention
        self.groups: list[ChannelGroup] = []
        self.slot_size: dict[SlotKey, int] = {}
        self.links: list[Link] = []
        self.fixups: list[Fixup] = []
        self.roles: list[Member] = []
        self.node_links: dict[int, list[Link]] = defaultdict(list)
        self.slot_groups: dict[SlotKey, list[int]] = {}
        self.slot_blocks: dict[SlotKey, list[str]] = {}
        self.slot_inexact: dict[SlotKey, list[str]] = {}
        self.layer_reasons: dict[int, list[str]] = {}   # id(node) -> why its slots are blocked
        #: constant name -> (producer, Add): a per-channel bias added right after a weighted layer
        self.bias_constants: dict[str, tuple[gs.Node, gs.Node]] = {}
        self._tensors = graph.tensors()
        self._values: dict[int, MaskedValues] = {}
        self._by_slot: dict[SlotKey, list[Link]] | None = None

    def tensor(self, name: str) -> gs.Tensor:
        return self._tensors[name]

    def label(self, node: gs.Node) -> str:
        """``node_label`` with the node's body path (``Conv 'If_0/then_branch/conv'``)."""
        return node_label(node, self.node_paths.get(id(node), ""))

    def dims(self, tensor: gs.Tensor) -> tuple | None:
        if isinstance(tensor, gs.Constant):
            return tuple(int(d) for d in tensor.values.shape)
        info = self.shapes.get(tensor.name)
        if info is not None and info.shape is not None:
            return tuple(info.shape)
        return tuple(tensor.shape) if tensor.shape is not None else None

    def rank(self, tensor: gs.Tensor) -> int | None:
        d = self.dims(tensor)
        return None if d is None else len(d)

    def group(self, gid: int) -> ChannelGroup:
        return self.groups[gid]


    @property
    def prunable(self) -> list[ChannelGroup]:
        return [g for g in self.groups if g.prunable]

    def layer_status(self, ops: tuple[str, ...] = ("Conv", "ConvTranspose", "Gemm", "MatMul")) -> list[dict]:
        """For every weighted layer: the groups it produces channels for, and block reasons."""
        produced: dict[int, list[int]] = defaultdict(list)
        for g in self.groups:
            for m in g.producers:
                if g.id not in produced[id(m.node)]:
                    produced[id(m.node)].append(g.id)
        rows = []
        for node in self.graph.nodes:
            if node.op not in ops or (node.op == "MatMul" and id(node) not in produced
                                      and id(node) not in self.layer_reasons):
                continue
            gids = produced.get(id(node), [])
            reasons = list(self.layer_reasons.get(id(node), []))
            for gid in gids:
                reasons.extend(r for r in self.groups[gid].blocked if r not in reasons)
                reasons.extend(f"inexact: {r}" for r in self.groups[gid].inexact if f"inexact: {r}" not in reasons)
            prunable = any(self.groups[g].prunable for g in gids)
            rows.append({"node": node, "groups": gids, "prunable": prunable,
                         "reasons": [] if prunable else reasons})
        return rows

    def links_by_slot(self) -> dict[SlotKey, list[Link]]:
        if self._by_slot is None:
            index: dict[SlotKey, list[Link]] = defaultdict(list)
            for link in self.links:
                index[link.a].append(link)
                if link.b != link.a:
                    index[link.b].append(link)
            self._by_slot = index
        return self._by_slot

    def masked_values(self, group: ChannelGroup) -> MaskedValues:
        """What group channels carry when their producers are zeroed (cached); see masked_values."""
        if group.id not in self._values:
            self._values[group.id] = compute_masked_values(self, group)
        return self._values[group.id]

    def dependency_graph(self):
        """networkx MultiGraph of slots and links (see :mod:`group_report`)."""
        # here, not at the top: these modules import this one
        from graphc.analysis.group_report import dependency_graph

        return dependency_graph(self)


class ChannelGroups:
    """Analysis: channel groups with attention pruned by whole heads (see :func:`analyze_channels`)."""

    name = "channel-groups"
    attention = "heads"

    @classmethod
    def compute(cls, ctx) -> ChannelAnalysis:
        cost = ctx.cost_shapes() if getattr(ctx, "input_shapes", None) else None
        return analyze_channels(ctx.graph, ctx.shapes(), ctx.opset, attention=cls.attention, cost_shapes=cost)


class ChannelGroupsByHeadDim(ChannelGroups):
    """Analysis: channel groups with attention pruned by head dimension (same dims in every head)."""

    name = "channel-groups{attention=head-dims}"
    attention = "head-dims"


def analyze_channels(graph: gs.Graph, shapes: dict[str, TensorInfo], opset: int | None = None,
                     attention: str = "heads", cost_shapes: dict[str, TensorInfo] | None = None,
                     *, path: str = "", node_paths: dict[int, str] | None = None) -> ChannelAnalysis:
    """Compute the channel groups of ``graph``.

    ``shapes`` must come from the model's declared inputs (``ctx.shapes()``): groups drive
    rewrites, which must hold for every input shape. ``cost_shapes`` (``ctx.cost_shapes()``, the
    user's ``--input-shape``) only feeds the MACs-per-channel estimates. ``graph`` may be a body
    (:mod:`graphc.analysis.body_groups`): ``path`` names it, ``node_paths`` (id(node) -> body
    path, of the whole model) names the nodes of every scope in reasons and members.
    """
    if attention not in ATTENTION_MODES:
        raise ValueError(f"attention must be one of {ATTENTION_MODES}, not {attention!r}")
    analysis = ChannelAnalysis(graph, shapes, int(opset if opset is not None else graph.opset), attention,
                               cost_shapes, path, node_paths)
    builder = Builder(analysis)
    builder.run()
    build_groups(analysis, builder)
    return analysis


# ---------------------------------------------------------------------------------------------
# the builder: slots, links, blocks


class Builder:
    """Collects slots and links by visiting nodes from slots (a worklist), then unions them."""

    def __init__(self, analysis: ChannelAnalysis):
        # here, not at the top: these modules import this one
        from graphc.analysis import channel_rules

        self.a = analysis
        self.graph = analysis.graph
        self.shapes = analysis.shapes
        self.opset = analysis.opset
        self.attention = analysis.attention
        self.rules = channel_rules
        self.top_level = {id(n) for n in self.graph.nodes}
        self.nested = {id(n) for p, g in walk_graphs(self.graph) if p for n in g.nodes}
        self.parent: dict[SlotKey, SlotKey] = {}
        self.queue: deque[SlotKey] = deque()
        self.visited: set[tuple[int, SlotKey]] = set()
        self.deferred: list[tuple[gs.Node, SlotKey]] = []
        #: (node, slot, reason): a merge waiting for its input's channel axis; blocked if it never comes
        self.unresolved: list[tuple[gs.Node, SlotKey, str]] = []
        self.tensor_blocks: dict[str, list[str]] = defaultdict(list)
        self.element_links: list[Link] = []
        self.graph_inputs = {t.name for t in self.graph.inputs}
        self.graph_outputs = {t.name for t in self.graph.outputs}

    # -- shapes ---------------------------------------------------------------------------------

    def tensor(self, name: str) -> gs.Tensor:
        return self.a.tensor(name)

    def dims(self, tensor: gs.Tensor) -> tuple | None:
        return self.a.dims(tensor)

    def rank(self, tensor: gs.Tensor) -> int | None:
        return self.a.rank(tensor)

    def dim(self, tensor: gs.Tensor, axis: int):
        d = self.dims(tensor)
        if d is None or not -len(d) <= axis < len(d):
            return None
        v = d[axis]
        return v if isinstance(v, int) and v >= 0 else None

    # -- slots ----------------------------------------------------------------------------------

    def slot(self, tensor: gs.Tensor, axis: int, size: int | None = None) -> SlotKey | None:
        """The slot for ``tensor``'s ``axis`` (created on first use); None if its size is unknown.
        ``size``: what the op defines it to be when shape inference lost it (rank may be unknown)."""
        rank = self.rank(tensor)
        if rank is None:
            if size is None or axis < 0:
                return None
            key = (tensor.name, axis)
        elif not -rank <= axis < rank:
            return None
        else:
            key = (tensor.name, axis % rank)
        if key in self.a.slot_size:
            return key
        known = self.dim(tensor, axis) if rank is not None else None
        if known is not None and size is not None and known != size:
            return None
        size = known if known is not None else size
        if size is None:
            return None
        self.a.slot_size[key] = size
        self.parent[key] = key
        self.queue.append(key)
        if tensor.name in self.graph_inputs:
            self.block(key, f"graph input '{tensor.name}'")
        if tensor.name in self.graph_outputs:
            self.block(key, f"graph output '{tensor.name}'")
        return key

    def size(self, key: SlotKey) -> int:
        return self.a.slot_size[key]

    def has_slot(self, tensor: gs.Tensor, axis: int) -> bool:
        rank = self.rank(tensor)
        return rank is not None and (tensor.name, axis % rank) in self.a.slot_size

    def find(self, key: SlotKey) -> SlotKey:
        parent = self.parent
        root = key
        while parent[root] != root:
            root = parent[root]
        while parent[key] != root:
            parent[key], key = root, parent[key]
        return root

    # -- links ----------------------------------------------------------------------------------

    def link(self, node: gs.Node | None, a: SlotKey | None, b: SlotKey | None, kind: str = "identity") -> bool:
        """Same channels, same order. Returns False (and blocks) when sizes differ or are unknown."""
        if a is None or b is None:
            reason = f"{_label(node)}: cannot follow the channel axis (a tensor's shape is unknown)"
            self.block(a, reason)
            self.block(b, reason)
            return False
        if self.size(a) != self.size(b):
            reason = f"{_label(node)}: '{a[0]}' axis {a[1]} has {self.size(a)} channels but " \
                     f"'{b[0]}' axis {b[1]} has {self.size(b)}"
            self.block(a, reason)
            self.block(b, reason)
            return False
        self._record(Link(node, a, b, kind=kind))
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[rb] = ra
        return True

    def link_map(self, node: gs.Node | None, a: SlotKey, a_idx, b: SlotKey, b_idx, kind: str) -> None:
        """Position ``a_idx[i]`` of ``a`` is the same channel as ``b_idx[i]`` of ``b``."""
        link = Link(node, a, b, np.asarray(a_idx, dtype=np.int64), np.asarray(b_idx, dtype=np.int64), kind)
        self._record(link)
        self.element_links.append(link)

    def _record(self, link: Link) -> None:
        self.a.links.append(link)
        if link.node is not None:
            self.a.node_links[id(link.node)].append(link)
            self.visited.add((id(link.node), link.a))
            self.visited.add((id(link.node), link.b))

    # -- blocks, roles, fixups ----------------------------------------------------------------

    def block(self, key: SlotKey | None, reason: str) -> None:
        if key is None:
            return
        reasons = self.a.slot_blocks.setdefault(key, [])
        if reason not in reasons:
            reasons.append(reason)

    def block_tensor(self, tensor: gs.Tensor, reason: str) -> None:
        if reason not in self.tensor_blocks[tensor.name]:
            self.tensor_blocks[tensor.name].append(reason)

    def block_node(self, node: gs.Node, entry: SlotKey | None, reason: str) -> None:
        """Block ``entry`` and every slot on the node's tensors; remember it for layer_status."""
        self.block(entry, reason)
        for t in list(node.inputs) + list(node.outputs):
            if t.name and not isinstance(t, gs.Constant):
                self.block_tensor(t, reason)
        self.a.layer_reasons.setdefault(id(node), []).append(reason)

    def inexact(self, key: SlotKey | None, reason: str) -> None:
        if key is None:
            return
        reasons = self.a.slot_inexact.setdefault(key, [])
        if reason not in reasons:
            reasons.append(reason)

    def role(self, node: gs.Node, role: str, key: SlotKey | None) -> None:
        if key is not None:
            self.a.roles.append(Member(node, role, key, self.a.node_paths.get(id(node), "")))
            self.visited.add((id(node), key))

    def fixup(self, node: gs.Node, kind: str, slots: tuple, **data) -> None:
        self.a.fixups.append(Fixup(node, kind, tuple(s for s in slots if s is not None), data))

    def mark(self, node: gs.Node, key: SlotKey) -> None:
        self.visited.add((id(node), key))

    # -- traversal ------------------------------------------------------------------------------

    def run(self) -> None:
        for node in self.graph.nodes:
            if self.rules.is_seed(self, node):
                self.rules.apply(self, node, None)
        while self.queue or self.deferred:
            while self.queue:
                key = self.queue.popleft()
                tensor = self.tensor(key[0])
                nodes = []
                src = producer(tensor)
                if src is not None:
                    nodes.append(src)
                nodes.extend(consumers(tensor))
                for node in nodes:
                    if (id(node), key) in self.visited:
                        continue
                    self.visited.add((id(node), key))
                    if id(node) not in self.top_level:
                        self.block(key, self._crossing(key, node))
                        continue
                    self.rules.apply(self, node, key)
            deferred, self.deferred = self.deferred, []
            for node, key in deferred:
                self.rules.apply(self, node, key, decide=True)
        for node, key, reason in self.unresolved:
            if not any(key in (link.a, link.b) for link in self.a.node_links.get(id(node), ())):
                self.block(key, reason)
        for key in list(self.a.slot_size):
            for reason in self.tensor_blocks.get(key[0], ()):
                self.block(key, reason)


    def _crossing(self, key: SlotKey, node: gs.Node) -> str:
        """Why a slot whose tensor is also used outside the analysed graph's own nodes is blocked."""
        if id(node) in self.nested:
            return f"'{key[0]}' is read inside a subgraph ({self.a.label(node)})"
        return (f"'{key[0]}' crosses the boundary of {self.a.path or 'the graph'} "
                f"(also used by {self.a.label(node)})")


def _label(node: gs.Node | None) -> str:
    return node_label(node) if node is not None else "graph"


# ---------------------------------------------------------------------------------------------
# classes and groups


def build_groups(a: ChannelAnalysis, b: Builder) -> None:
    """Union positions into classes, classes into groups; attach members, blocks and savings."""
    spaces: dict[SlotKey, list[SlotKey]] = defaultdict(list)   # root slot -> slots sharing positions
    for key in a.slot_size:
        spaces[b.find(key)].append(key)
    roots = list(spaces)
    base, total = {}, 0
    for r in roots:
        base[r] = total
        total += a.slot_size[r]
    labels = _components(total, b.element_links, b, base)

    rng = np.random.default_rng(12345)
    space_hash = rng.integers(1, 2**63 - 1, size=len(roots), dtype=np.int64).astype(np.uint64)
    sig = np.zeros(total, dtype=np.uint64)
    space_of_element = np.repeat(np.arange(len(roots)), [a.slot_size[r] for r in roots])
    np.add.at(sig, labels, space_hash[space_of_element])
    class_ids = np.unique(labels)
    group_sig, group_of_class = np.unique(sig[class_ids], return_inverse=True)
    # classes ordered by their first element; groups by their first class
    first_class = np.full(len(group_sig), np.iinfo(np.int64).max)
    np.minimum.at(first_class, group_of_class, class_ids)
    group_order = np.argsort(first_class, kind="stable")
    rank_of_group = np.empty_like(group_order)
    rank_of_group[group_order] = np.arange(len(group_order))
    gid_of_label = np.full(total, -1, dtype=np.int64)
    gid_of_label[class_ids] = rank_of_group[group_of_class]
    # channel index of each class inside its group: order of class ids
    chan_of_label = np.full(total, -1, dtype=np.int64)
    sorted_classes = class_ids[np.lexsort((class_ids, gid_of_label[class_ids]))]
    gids_sorted = gid_of_label[sorted_classes]
    starts = np.searchsorted(gids_sorted, np.arange(len(group_order)))
    chan_of_label[sorted_classes] = np.arange(len(sorted_classes)) - starts[gids_sorted]
    sizes = np.bincount(gids_sorted, minlength=len(group_order))

    groups = [ChannelGroup(int(g), int(sizes[g]), {}, analysis=a) for g in range(len(group_order))]
    for r in roots:
        lab = labels[base[r]: base[r] + a.slot_size[r]]
        gids = gid_of_label[lab]
        chans = chan_of_label[lab]
        for gid in np.unique(gids):
            sel = np.nonzero(gids == gid)[0]
            order = np.lexsort((sel, chans[sel]))
            pos = sel[order].reshape(int(sizes[gid]), -1)
            for key in spaces[r]:
                groups[gid].positions[key] = pos
                a.slot_groups.setdefault(key, []).append(int(gid))
    a.groups = groups
    _attach(a, b)


def _components(total: int, links: list[Link], b: Builder, base: dict) -> np.ndarray:
    """Connected components of positions under element links (vectorized hook + jump)."""
    labels = np.arange(total, dtype=np.int64)
    if not links:
        return labels
    us, vs = [], []
    for link in links:
        us.append(base[b.find(link.a)] + link.a_idx)
        vs.append(base[b.find(link.b)] + link.b_idx)
    u, v = np.concatenate(us), np.concatenate(vs)
    while True:
        lu, lv = labels[u], labels[v]
        diff = lu != lv
        if not diff.any():
            return labels
        lu, lv = lu[diff], lv[diff]
        lo, hi = np.minimum(lu, lv), np.maximum(lu, lv)
        np.minimum.at(labels, hi, lo)
        while True:
            jumped = labels[labels]
            if np.array_equal(jumped, labels):
                break
            labels = jumped


def _attach(a: ChannelAnalysis, b: Builder) -> None:
    groups = a.groups
    for key, reasons in a.slot_blocks.items():
        for gid in a.slot_groups.get(key, ()):
            groups[gid].blocked.extend(r for r in reasons if r not in groups[gid].blocked)
    for key, reasons in a.slot_inexact.items():
        for gid in a.slot_groups.get(key, ()):
            groups[gid].inexact.extend(r for r in reasons if r not in groups[gid].inexact)
    seen_members: set = set()
    for member in a.roles:
        if member.slot[0] in a.bias_constants and member.role == "param":
            member = Member(member.node, "bias", member.slot, member.path)
        for gid in a.slot_groups.get(member.slot, ()):
            key = (gid, id(member.node), member.role, member.slot)
            if key not in seen_members:
                seen_members.add(key)
                groups[gid].members.append(member)
    for fix in a.fixups:
        gids = {gid for s in fix.slots for gid in a.slot_groups.get(s, ())}
        for gid in gids:
            groups[gid].members.append(Member(fix.node, fix.kind, fix.slots[0], a.node_paths.get(id(fix.node), "")))
    weighted = {id(m.node) for m in a.roles}
    seen: dict[int, set[int]] = defaultdict(set)
    for link in a.links:
        if link.node is None or id(link.node) in weighted:
            continue
        for gid in a.slot_groups.get(link.a, ()):
            if id(link.node) not in seen[gid]:
                seen[gid].add(id(link.node))
                groups[gid].passthrough.append(link.node)
    for g in groups:
        if not g.producers and not g.blocked:
            g.blocked.append("no weighted layer produces these channels")
        g.passthrough.sort(key=lambda n: a.order.get(id(n), 0))
        g.params_per_channel = _params_per_channel(a, g)
        g.macs_per_channel = _macs_per_channel(a, g)
    for g in groups:
        if g.blocked:
            continue
        values = a.masked_values(g)
        if values.problems:
            g.inexact.extend(p for p in values.problems if p not in g.inexact)


def _params_per_channel(a: ChannelAnalysis, g: ChannelGroup) -> int:
    total = 0
    for key, pos in g.positions.items():
        tensor = a.tensor(key[0])
        if isinstance(tensor, gs.Constant) and tensor.values.size:
            total += tensor.values.size // tensor.values.shape[key[1]] * pos.shape[1]
    return int(total)


def _macs_per_channel(a: ChannelAnalysis, g: ChannelGroup) -> int | None:
    """First-order MAC saving per channel: each weighted/contracting node once, through the slot
    that scales its MACs (its output slot if in the group)."""
    nodes: dict[int, tuple[gs.Node, SlotKey]] = {}
    for m in g.producers + g.consumers:
        if m.role == "producer" or id(m.node) not in nodes:
            nodes[id(m.node)] = (m.node, m.slot)
    for node in g.passthrough:
        if node.op == "MatMul":
            for t in list(node.outputs) + list(node.inputs):
                keys = [k for k in g.positions if k[0] == t.name]
                if keys:
                    nodes.setdefault(id(node), (node, keys[0]))
                    break
    total = 0.0
    for node, key in nodes.values():
        macs = node_macs(node, a.cost_shapes)
        if macs is None:
            return None
        total += macs * g.positions[key].shape[1] / a.slot_size[key]
    return int(round(total))
