"""The prunability report (``graphc inspect --groups``) and the dependency graph (networkx, DOT).

``format_groups(analysis)`` lists every group with its size, status (prunable / inexact / blocked
and why), savings per removed channel, and member layers by role; then every weighted layer with
the groups it produces and, when none is prunable, the reasons; then the most common block reasons.

``dependency_graph(analysis)`` is a networkx MultiGraph over slots (``tensor[axis]``) whose edges are
the links the op rules declared (attribute ``op``: the node, ``kind``: identity / concat / split /
slice / merge / heads / head-dims / depthwise / grouped / group-norm / gather); ``to_dot`` writes it
(optionally one group) for Graphviz.
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import networkx as nx


_ROLE_TITLES = (("producer", "producers"), ("consumer", "consumers"), ("norm", "norms"),
                ("bias", "biases"), ("param", "per-channel constants"))


def format_groups(analysis, *, limit_members: int = 6) -> str:
    groups = analysis.groups
    counts = Counter(g.status for g in groups)
    where = f"{analysis.path}: " if analysis.path else ""
    lines = [f"{where}channel groups: {len(groups)} ({counts['prunable']} prunable, {counts['inexact']} inexact, "
             f"{counts['blocked']} blocked); attention pruned by {analysis.attention}"]
    for g in groups:
        macs = "?" if g.macs_per_channel is None else _si(g.macs_per_channel)
        lines.append(f"group {g.id}: {g.size} channels, {g.status}; per channel {_si(g.params_per_channel)} "
                     f"params, {macs} MACs")
        for role, title in _ROLE_TITLES:
            members = _unique_labels(g.role(role))
            if members:
                lines.append(f"    {title}: {_clip(members, limit_members)}")
        fixes = _unique_labels([m for m in g.members if m.role not in dict(_ROLE_TITLES)], kind=True)
        if fixes:
            lines.append(f"    rewritten: {_clip(fixes, limit_members)}")
        for reason in g.blocked:
            lines.append(f"    blocked: {reason}")
        for reason in g.inexact:
            lines.append(f"    inexact: {reason}")
    lines.append("layers:")
    for row in analysis.layer_status():
        gids = ", ".join(str(i) for i in row["groups"]) or "none"
        reasons = "; ".join(row["reasons"][:2] or ["no group"])
        state = "prunable" if row["prunable"] else reasons if reasons.startswith("inexact") else f"blocked: {reasons}"
        lines.append(f"    {analysis.label(row['node'])}: output group {gids}, {state}")
    reasons = Counter(r for g in groups for r in g.blocked[:1])
    if reasons:
        lines.append("most common block reasons:")
        for reason, n in reasons.most_common(8):
            lines.append(f"    {n} x {reason}")
    return "\n".join(lines) + "\n"


_FIXUP_WHAT = {"conv-group": "group", "group-norm": "num_groups", "reshape": "target shape",
               "resize": "sizes", "expand": "shape", "split": "split sizes", "slice": "bounds",
               "gather": "indices"}


def _unique_labels(members, kind: bool = False) -> list[str]:
    seen = []
    for m in members:
        label = f"{m.label} ({_FIXUP_WHAT.get(m.role, m.role)})" if kind else m.label
        if label not in seen:
            seen.append(label)
    return seen


def _clip(labels: list[str], limit: int) -> str:
    more = f", ... (+{len(labels) - limit})" if len(labels) > limit else ""
    return ", ".join(labels[:limit]) + more


def _si(n: int) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f}{unit}"
    return str(n)


def slot_label(key) -> str:
    return f"{key[0]}[{key[1]}]"


def dependency_graph(analysis) -> nx.MultiGraph:
    graph = nx.MultiGraph()
    for key, size in analysis.slot_size.items():
        gids = analysis.slot_groups.get(key, [])
        statuses = {analysis.groups[g].status for g in gids}
        status = "blocked" if "blocked" in statuses else "inexact" if "inexact" in statuses else "prunable"
        graph.add_node(slot_label(key), tensor=key[0], axis=key[1], size=size, groups=list(gids),
                       status=status, blocked=list(analysis.slot_blocks.get(key, [])))
    for link in analysis.links:
        graph.add_edge(slot_label(link.a), slot_label(link.b), kind=link.kind,
                       op=analysis.label(link.node) if link.node is not None else "")
    return graph


_COLORS = {"prunable": "#c8e6c9", "inexact": "#ffe0b2", "blocked": "#ffcdd2"}


def to_dot(analysis, path, group: int | None = None) -> Path:
    """Write the dependency graph (or one group's part of it) as Graphviz DOT."""
    graph = dependency_graph(analysis)
    if group is not None:
        keep = [n for n, d in graph.nodes(data=True) if group in d["groups"]]
        graph = graph.subgraph(keep)
    lines = ["graph channels {", '  node [shape=box, style=filled, fontsize=10];', "  edge [fontsize=8];"]
    for name, data in graph.nodes(data=True):
        gids = ",".join(str(g) for g in data["groups"])
        label = f"{name}\\n{data['size']} ch, group {gids}"
        lines.append(f'  "{_esc(name)}" [label="{_esc(label)}", fillcolor="{_COLORS[data["status"]]}"];')
    seen = set()
    for a, b, data in graph.edges(data=True):
        key = (a, b, data["op"], data["kind"])
        if key in seen:
            continue
        seen.add(key)
        label = data["op"] if data["kind"] == "identity" else f"{data['op']} ({data['kind']})"
        lines.append(f'  "{_esc(a)}" -- "{_esc(b)}" [label="{_esc(label)}"];')
    lines.append("}")
    out = Path(path)
    out.write_text("\n".join(lines) + "\n")
    return out


def _esc(text: str) -> str:
    return text.replace('"', '\\"')
