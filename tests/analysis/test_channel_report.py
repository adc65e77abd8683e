"""format_groups (graphc inspect --groups), the dependency graph and DOT, and the analysis in a Context."""
from __future__ import annotations

import networkx as nx
import numpy as np

from graphc.analysis import (ChannelGroups, ChannelGroupsByHeadDim, dependency_graph, format_groups,
                             to_dot)
from graphc.passmanager import Context
from nets import Net, image
from channel_check import analyse


def small_model():
    n = Net(1)
    x = image(n)
    h = n.relu(n.bn(n.conv(x, 3, 8, name="c1"), 8, name="bn1"))
    h = n.node("Softmax", [n.conv(h, 8, 6, name="c2")], axis=1, name="sm")
    return n.model(n.conv(h, 6, 4, name="c3"))


def test_format_groups_lists_groups_members_reasons_and_layers():
    text = format_groups(analyse(small_model()))
    lines = text.splitlines()
    assert lines[0] == "channel groups: 5 (1 prunable, 0 inexact, 4 blocked); attention pruned by heads"
    assert "group 0: 8 channels, prunable; per channel 86 params, 5.2k MACs" in lines
    assert "    producers: Conv 'c1'" in lines and "    norms: BatchNormalization 'bn1'" in lines
    assert "    blocked: Softmax 'sm' normalizes over the channel axis" in lines
    assert "    Conv 'c1': output group 0, prunable" in lines
    assert "    Conv 'c2': output group 2, blocked: Softmax 'sm' normalizes over the channel axis" in lines
    # the Softmax blocks both sides: c2's outputs and c3's inputs
    assert lines[lines.index("most common block reasons:") + 1] == "    2 x Softmax 'sm' normalizes over the channel axis"


def test_dependency_graph_connects_the_slots_of_each_group():
    a = analyse(small_model())
    graph = dependency_graph(a)
    assert isinstance(graph, nx.MultiGraph)
    assert graph.nodes["c1[1]"]["size"] == 8 and graph.nodes["c1[1]"]["status"] == "prunable"
    for g in a.groups:
        slots = [f"{k[0]}[{k[1]}]" for k in g.positions]
        assert nx.is_connected(graph.subgraph(slots)), g
    kinds = {d["kind"] for _, _, d in graph.edges(data=True)}
    assert kinds == {"identity"}


def test_to_dot_writes_graphviz_text(tmp_path):
    a = analyse(small_model())
    path = to_dot(a, tmp_path / "groups.dot")
    text = path.read_text()
    assert text.startswith("graph channels {") and text.rstrip().endswith("}")
    assert '"c1[1]" [label="c1[1]\\n8 ch, group 0", fillcolor="#c8e6c9"];' in text
    assert "-- " in text and "Softmax" not in text.split("fillcolor")[0]
    one = to_dot(a, tmp_path / "g0.dot", group=0).read_text()
    assert '"c1[1]"' in one and '"c2[1]"' not in one


def test_analysis_is_cached_in_the_context_and_dropped_on_invalidate():
    m = small_model()
    ctx = Context(m, input_shapes={"x": (2, 3, 8, 8)})
    first = ctx.analysis(ChannelGroups)
    assert ctx.analysis(ChannelGroups) is first and ctx.cached("channel-groups")
    other = ctx.analysis(ChannelGroupsByHeadDim)
    assert other is not first and other.attention == "head-dims"
    assert first.groups[0].macs_per_channel == 2 * analyse(m).groups[0].macs_per_channel   # batch 2 for costs
    ctx.invalidate()
    assert ctx.analysis(ChannelGroups) is not first


def test_groups_are_deterministic():
    a, b = analyse(small_model()), analyse(small_model())
    assert [(g.size, g.status, sorted(g.positions)) for g in a.groups] == \
           [(g.size, g.status, sorted(g.positions)) for g in b.groups]
    for ga, gb in zip(a.groups, b.groups):
        for key in ga.positions:
            assert np.array_equal(ga.positions[key], gb.positions[key])
