"""The tensors localization and the per-layer error compare, in the order they are computed,
including those computed inside Loop and Scan bodies.

A body runs once per iteration. Its tensors are exposed by lifting (:mod:`graphc.ir.lift`): each
becomes a new scan output of its Loop/Scan, which onnxruntime stacks over the iterations, so one
run gives the value of every iteration at once, along a leading axis (one more per nested
Loop/Scan). Two measures follow from that stacked value:

- **per-layer error of a body node** (the report's layer table): the metrics of the stacked value,
  i.e. over every element of every iteration of every sample, exactly as if the iterations'
  outputs were concatenated;
- **first divergence** (localization): a body's iterations run in order and each feeds the next
  (the carried state), so a wrong weight late in the body makes every tensor of the *next*
  iteration diverge, even those the body computes before it. Over all iterations at once, an
  earlier node of the body would be blamed. So the stacked value is split along its leading axis
  (the outermost Loop/Scan's iteration) and judged iteration by iteration: the first divergence in
  a body is the first tensor, in body order, that fails in the first iteration in which any of
  that body's tensors fails (:func:`first_failure`). Tensors of a Loop nested inside a Loop's body
  are ordered by the outer iteration only.

The order of all tensors: the top graph's nodes in topological order, and at a Loop/Scan node
first the tensors of its body (recursively, nested Loop/Scan bodies before their node's outputs),
then the node's own outputs. An If inside a body is one node here (its branches are not searched:
a lifted branch tensor comes out empty on iterations that take the other branch, and iterations of
different shapes cannot be stacked). Top-level If branches are handled by
:mod:`graphc.verify.branches` instead.

A body tensor whose shape changes between iterations cannot be a scan output: onnxruntime refuses
the lifted model, and the caller then compares the chunk without the body (the body is reported
as not searched).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import onnx_graphsurgeon as gs

from graphc.ir.model import Model
from graphc.ir.structure import find_cycle_free_order
from graphc.verify.running import TensorMetrics

#: nodes whose bodies run once per iteration and whose tensors come out stacked when lifted.
ITERATING_OPS = ("Loop", "Scan")


@dataclass(frozen=True)
class Computed:
    """A tensor a node computes: ``path`` is the body the node sits in (``""`` top graph,
    ``loop/body``); ``loop`` names the outermost Loop/Scan whose body holds it (None: top graph)."""

    tensor: gs.Variable
    node: gs.Node
    path: str = ""
    loop: str | None = None


def computed_in_order(model: Model) -> list[Computed]:
    """Every named tensor a node computes, top graph and Loop/Scan bodies, in the order of the
    module docstring (a name is listed once)."""
    seen: set[str] = set()
    return [c for c in _walk(model.graph, "", None) if c.tensor.name not in seen and not seen.add(c.tensor.name)]


def _walk(graph: gs.Graph, path: str, loop: str | None) -> Iterator[Computed]:
    for node in find_cycle_free_order(graph):
        if node.op in ITERATING_OPS and node.domain in (None, "", "ai.onnx"):
            body = node.attrs.get("body")
            if isinstance(body, gs.Graph):
                here = f"{node.name or node.op}/body"
                yield from _walk(body, f"{path}/{here}" if path else here, loop or _key(node))
        for out in node.outputs:
            if isinstance(out, gs.Variable) and out.name:
                yield Computed(out, node, path, loop)


def _key(node: gs.Node) -> str:
    return node.name or f"{node.op}:{node.outputs[0].name if node.outputs else '?'}"


def first_failure(order: list[str], loops: dict[str, str | None],
                  overall: dict[str, TensorMetrics | None],
                  per_iteration: dict[str, list[TensorMetrics]]) -> str | None:
    """The name of the first failing tensor of ``order`` (module docstring): a top-graph tensor
    fails by ``overall``; a body tensor by the first iteration in ``per_iteration`` that fails,
    and among the tensors of one body the earliest iteration wins, then body order."""
    position = {name: i for i, name in enumerate(order)}
    first_of_loop: dict[str, int] = {}
    for name in order:
        loop = loops.get(name)
        if loop is not None:
            first_of_loop.setdefault(loop, position[name])
    keys = []
    for name in order:
        loop = loops.get(name)
        if loop is None:
            metrics = overall.get(name)
            if metrics is not None and not metrics.passed:
                keys.append(((position[name], 0, 0), name))
            continue
        failed = [i for i, m in enumerate(per_iteration.get(name, [])) if not m.passed]
        if failed:
            keys.append(((first_of_loop[loop], failed[0], position[name]), name))
    return min(keys)[1] if keys else None
