"""Structural invariants of a graph, checked on load and after every pass.

A graph is well formed when: every tensor is produced at most once; every node input is a graph
input, a constant, the output of a node, or empty (optional input); the node graph is acyclic;
and every graph output is produced. Nested subgraphs (If/Loop/Scan bodies) may read outer tensors,
so names visible in the enclosing scopes count as produced there.
"""
from __future__ import annotations

import heapq

import onnx_graphsurgeon as gs

from graphc.errors import ModelError
from graphc.ir.subgraphs import path_name, subgraphs, walk_graphs


def node_label(node: gs.Node, path: str = "") -> str:
    """How errors and logs name a node: ``Conv 'stem.conv'``; inside the body at ``path`` (see
    :func:`graphc.ir.subgraphs.path_name`): ``Conv 'If_0/then_branch/conv'``."""
    if path:
        return f"{node.op} '{path_name(path, node)}'"
    return f"{node.op} '{node.name}'" if node.name else f"{node.op} (unnamed, output '{_first_output(node)}')"


def _first_output(node: gs.Node) -> str:
    return node.outputs[0].name if node.outputs else "?"


def check_structure(graph: gs.Graph, outer_names: frozenset[str] = frozenset()) -> list[gs.Node]:
    """Raise :class:`ModelError` naming the first violation found; returns the nodes in
    topological order (the cycle check computes it, so a caller that sorts need not again)."""
    produced: dict[str, gs.Node] = {}
    available = set(outer_names)
    for tensor in graph.inputs:
        available.add(tensor.name)
    for node in graph.nodes:
        for out in node.outputs:
            if out.name in produced:
                raise ModelError(
                    f"tensor '{out.name}' is produced twice: by {node_label(produced[out.name])} "
                    f"and {node_label(node)}"
                )
            if out.name in available and out.name not in outer_names:
                raise ModelError(f"tensor '{out.name}' is both a graph input and the output of {node_label(node)}")
            produced[out.name] = node
    available.update(produced)
    for node in graph.nodes:
        for inp in node.inputs:
            if inp.name == "" or isinstance(inp, gs.Constant) or inp.name in available:
                continue
            raise ModelError(f"{node_label(node)} reads '{inp.name}', which nothing produces")
        for _, sub in subgraphs(node):
            check_structure(sub, frozenset(available))
    for out in graph.outputs:
        if not (isinstance(out, gs.Constant) or out.name in available):
            raise ModelError(f"graph output '{out.name}' is not produced by any node")
    return find_cycle_free_order(graph)


def find_cycle_free_order(graph: gs.Graph) -> list[gs.Node]:
    """Topological order of the nodes (Kahn); raises :class:`ModelError` on a cycle."""
    index = {id(n): i for i, n in enumerate(graph.nodes)}
    indegree = [0] * len(graph.nodes)
    users: list[list[int]] = [[] for _ in graph.nodes]
    for i, node in enumerate(graph.nodes):
        deps = set()
        for inp in _reads(node):
            for producer in inp.inputs:
                j = index.get(id(producer))
                if j is not None and j not in deps:
                    deps.add(j)
                    users[j].append(i)
        indegree[i] = len(deps)
    # A heap on the original position keeps an already sorted graph in its order.
    ready = [i for i, d in enumerate(indegree) if d == 0]
    heapq.heapify(ready)
    order = []
    while ready:
        i = heapq.heappop(ready)
        order.append(graph.nodes[i])
        for j in users[i]:
            indegree[j] -= 1
            if indegree[j] == 0:
                heapq.heappush(ready, j)
    if len(order) != len(graph.nodes):
        stuck = next(graph.nodes[i] for i, d in enumerate(indegree) if d > 0)
        raise ModelError(f"the graph has a cycle through {node_label(stuck)}")
    return order


def _reads(node: gs.Node) -> list:
    """Tensors ``node`` depends on: its inputs, and outer tensors its subgraph bodies read
    (an If must come after the producer of a tensor its branches use)."""
    bodies = [sub for _, sub in subgraphs(node)] if node.attrs else ()
    if not bodies:
        return node.inputs
    reads = list(node.inputs)
    for sub in bodies:
        for inner in sub.nodes:
            reads.extend(_reads(inner))
    return reads


def toposort(graph: gs.Graph) -> None:
    """Sort nodes topologically in place, in ``graph`` and every body nested in it (stable for
    already sorted graphs)."""
    for _, scope in list(walk_graphs(graph)):
        scope.nodes = find_cycle_free_order(scope)
