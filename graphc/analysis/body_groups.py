"""Channel groups inside If/Loop/Scan bodies (``graphc inspect --groups`` reports them by path).

Each body that holds a weighted layer (Conv, ConvTranspose, Gemm, MatMul) is analysed as a graph
of its own (:func:`graphc.analysis.channels.analyze_channels` on the body), so a Conv chain inside
an If branch gets the same groups as it would at the top level, its nodes named by path
(``Conv 'If_0/then_branch/conv1'``) and the report headed by the body's path.

The body's edges are boundaries, stated as block reasons of the groups that reach them:

- the body's inputs and outputs (``graph input`` / ``graph output``): an If branch's output is
  the If node's output, which the other branch must match in shape; a Loop/Scan body's carried
  state must keep its shape across iterations, and its scan outputs are stacked outside;
- a tensor of an enclosing scope the body reads, or a constant also used elsewhere
  (``'t' crosses the boundary of If_0/then_branch (also used by Conv '...')``): its channels
  couple with nodes outside the body, which this per-body analysis does not rewrite.

So a group inside a body is prunable only when it lies wholly inside it, which is exactly the case
where removing its channels changes nothing the enclosing graph sees. A body nested in a body is
analysed as its own graph too; the enclosing body's analysis blocks what crosses into it.
"""
from __future__ import annotations

import onnx_graphsurgeon as gs

from graphc.analysis.channels import ChannelAnalysis, analyze_channels
from graphc.ir.shapes import TensorInfo
from graphc.ir.subgraphs import walk_graphs

WEIGHTED_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


def body_channel_groups(graph: gs.Graph, shapes: dict[str, TensorInfo], opset: int | None = None,
                        attention: str = "heads", cost_shapes: dict[str, TensorInfo] | None = None
                        ) -> list[ChannelAnalysis]:
    """One analysis per body of ``graph`` (walk order) that holds a weighted layer; each has its
    ``path``. ``shapes`` are the whole model's (names are unique across scopes)."""
    paths = {id(n): p for p, g in walk_graphs(graph) for n in g.nodes}
    return [analyze_channels(body, shapes, opset if opset is not None else graph.opset, attention, cost_shapes,
                             path=path, node_paths=paths)
            for path, body in walk_graphs(graph)
            if path and any(n.op in WEIGHTED_OPS for n in body.nodes)]


class BodyChannelGroups:
    """Analysis: the channel groups of every body (see :func:`body_channel_groups`)."""

    name = "channel-groups-bodies"
    attention = "heads"

    @classmethod
    def compute(cls, ctx) -> list[ChannelAnalysis]:
        cost = ctx.cost_shapes() if getattr(ctx, "input_shapes", None) else None
        return body_channel_groups(ctx.graph, ctx.shapes(), ctx.opset, cls.attention, cost)


class BodyChannelGroupsByHeadDim(BodyChannelGroups):
    name = "channel-groups-bodies{attention=head-dims}"
    attention = "head-dims"
