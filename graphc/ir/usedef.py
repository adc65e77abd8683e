"""Use-def helpers over onnx-graphsurgeon objects.

graphsurgeon links tensors to their producers (``tensor.inputs``) and consumers
(``tensor.outputs``); these helpers give those links names and add the rewiring operations passes
need, so that passes rewire by object and never by string lookups over the whole graph.
"""
from __future__ import annotations

import itertools
from typing import Iterable

import numpy as np
import onnx_graphsurgeon as gs

from graphc.ir.subgraphs import subgraphs, walk_graphs


STANDARD_DOMAINS = (None, "", "ai.onnx")


def is_standard_op(node: gs.Node, *ops: str) -> bool:
    """True if ``node`` is in the default ONNX domain (and, if given, one of ``ops``)."""
    return node.domain in STANDARD_DOMAINS and (not ops or node.op in ops)


def producer(tensor: gs.Tensor) -> gs.Node | None:
    """The node that computes ``tensor``, or None for inputs and constants."""
    return tensor.inputs[0] if tensor.inputs else None


def consumers(tensor: gs.Tensor) -> list[gs.Node]:
    """Nodes that read ``tensor`` (a node reading it twice appears once)."""
    seen: dict[int, gs.Node] = {}
    for node in tensor.outputs:
        seen.setdefault(id(node), node)
    return list(seen.values())


def is_graph_output(graph: gs.Graph, tensor: gs.Tensor) -> bool:
    return any(t is tensor for t in graph.outputs)


def is_graph_input(graph: gs.Graph, tensor: gs.Tensor) -> bool:
    return any(t is tensor for t in graph.inputs)


def only_consumer(graph: gs.Graph, tensor: gs.Tensor) -> gs.Node | None:
    """The single consumer of ``tensor`` if it has exactly one and is not a graph output."""
    users = consumers(tensor)
    if len(users) != 1 or is_graph_output(graph, tensor):
        return None
    return users[0]


def constant_value(tensor: gs.Tensor) -> np.ndarray | None:
    """The value of a constant tensor, or None if the tensor is computed at run time."""
    if isinstance(tensor, gs.Constant):
        return np.asarray(tensor.values)
    return None


def is_constant(tensor: gs.Tensor) -> bool:
    return isinstance(tensor, gs.Constant)


def scalar_value(tensor: gs.Tensor) -> float | None:
    """A constant holding a single element, as a Python float; otherwise None."""
    value = constant_value(tensor)
    if value is None or value.size != 1:
        return None
    return float(value.reshape(()))


class NameFactory:
    """Unique tensor and node names for one graph and the bodies nested in it (collects existing
    names once). Names must be unique across scopes, so a pass rewriting inside a body makes its
    names with the factory of the top graph."""

    def __init__(self, graph: gs.Graph):
        self._used: set[str] = set()
        for _, scope in walk_graphs(graph):
            self._used.update(scope.tensors().keys())
            self._used.update(n.name for n in scope.nodes if n.name)
        self._counter = itertools.count()

    def __call__(self, base: str) -> str:
        name = base
        while name in self._used or not name:
            name = f"{base}_{next(self._counter)}"
        self._used.add(name)
        return name


def replace_uses(graph: gs.Graph, old: gs.Tensor, new: gs.Tensor) -> None:
    """Every reader of ``old`` reads ``new`` instead. Graph outputs are handled by
    :func:`bypass`, which keeps the output name stable."""
    for node in consumers(old):
        for i, inp in enumerate(node.inputs):
            if inp is old:
                node.inputs[i] = new
    graph.outputs = [new if t is old else t for t in graph.outputs]


def bypass(graph: gs.Graph, node: gs.Node, keep: gs.Tensor | None = None, *, drop: bool = True) -> bool:
    """Remove a node whose single output equals ``keep`` (default: its first input).

    When the output is a graph output, the output name is preserved by renaming: the producer
    of ``keep`` writes the graph output directly. Returns False when that is impossible (``keep``
    is itself a graph input/output or a constant), leaving the graph unchanged.

    ``drop=False`` only detaches the node (no inputs, no outputs) and leaves it in
    ``graph.nodes`` for one :func:`drop_detached` after the loop: removing from the node list is
    a scan of the list, so a loop that bypasses node after node must not pay it per node.
    """
    keep = node.inputs[0] if keep is None else keep
    out = node.outputs[0]
    if is_graph_output(graph, out):
        src = producer(keep)
        if src is None or is_graph_output(graph, keep) or len(consumers(keep)) != 1:
            return False
        if not any(n is src for n in graph.nodes):
            return False  # ``keep`` comes from an enclosing scope: it cannot write a body's output
        # keep's producer now writes ``out`` directly; ``node`` is dropped.
        idx = next(i for i, t in enumerate(src.outputs) if t is keep)
        detach(node)
        src.outputs[idx] = out
    else:
        replace_uses(graph, out, keep)
        detach(node)
    if drop:
        drop_detached(graph)
    return True


def detach(node: gs.Node) -> None:
    """Disconnect ``node`` from its tensors; :func:`drop_detached` then drops it from the graph."""
    node.inputs.clear()
    node.outputs.clear()


def drop_detached(graph: gs.Graph) -> int:
    """Drop every node without outputs from ``graph.nodes`` in one pass; returns how many.

    One filter by identity over the list, whatever the number of dropped nodes (``list.remove``
    per node would compare nodes with graphsurgeon's attribute-wise ``__eq__``, quadratically)."""
    before = len(graph.nodes)
    graph.nodes = [n for n in graph.nodes if n.outputs]
    return before - len(graph.nodes)


def remove_nodes(graph: gs.Graph, nodes: Iterable[gs.Node]) -> None:
    """Drop nodes from the graph and disconnect them (their tensors stay with other users)."""
    ids = {id(n) for n in nodes}
    for node in graph.nodes:
        if id(node) in ids:
            node.inputs.clear()
            node.outputs.clear()
    graph.nodes = [n for n in graph.nodes if id(n) not in ids]


def remove_dead_nodes(graph: gs.Graph) -> gs.Graph:
    """``graph.cleanup()`` with its default options: drop every node no graph output depends on
    (and the producers of graph inputs), disconnecting it from its tensors.

    A graph without If/Loop/Scan bodies or local functions is walked once here, back from its
    outputs, by identity: linear in nodes and edges. graphsurgeon's walk does the same work
    through a name-keyed map of every tensor, rebuilt per call, several times slower on long
    chains. Graphs with bodies or functions go to graphsurgeon, which also cleans the bodies."""
    if graph.functions or any(node.attrs and next(subgraphs(node), None) for node in graph.nodes):
        return graph.cleanup()
    for tensor in graph.inputs:
        tensor.inputs.clear()
    members = {id(node) for node in graph.nodes}
    used: set[int] = set()
    seen: set[int] = set()
    stack = list(graph.outputs)
    while stack:
        tensor = stack.pop()
        if id(tensor) in seen:
            continue
        seen.add(id(tensor))
        for node in tensor.inputs:
            if id(node) in members and id(node) not in used:
                used.add(id(node))
                stack.extend(node.inputs)
    detach_all([node for node in graph.nodes if id(node) not in used])
    graph.nodes = [node for node in graph.nodes if id(node) in used]
    return graph


def detach_all(nodes: list[gs.Node]) -> None:
    """:func:`detach` for many nodes at once. Each tensor they touch has its producer and reader
    lists filtered once, by identity; detaching node by node removes each node from those lists
    with ``list.remove``, a scan comparing nodes attribute-wise, quadratic when many of a
    constant's readers go (a shape constant shared by a 100k-node chain)."""
    dead = {id(node) for node in nodes}
    touched: dict[int, gs.Tensor] = {}
    for node in nodes:
        for tensor in [*node.inputs, *node.outputs]:
            touched[id(tensor)] = tensor
    for tensor in touched.values():
        for links in (tensor.inputs, tensor.outputs):
            if any(id(node) in dead for node in links):
                kept = [node for node in links if id(node) not in dead]
                # plain list operations: graphsurgeon's synchronized lists would update the nodes'
                # side element by element, and the nodes' side is cleared below
                list.clear(links)
                list.extend(links, kept)
    for node in nodes:
        list.clear(node.inputs)
        list.clear(node.outputs)

