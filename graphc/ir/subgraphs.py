"""Subgraphs are graphs: one walk over a graph and the bodies its nodes carry (If branches,
Loop and Scan bodies), so every pass reaches the same nodes in the same order.

onnx-graphsurgeon imports a body as a ``gs.Graph`` attribute of its node. A body reads tensors of
the enclosing scopes by name; graphsurgeon resolves those names to the *same* tensor objects as
outside, so producer/consumer links cross scopes: an outer tensor read inside a branch lists the
branch's node among its consumers (a rewrite that needs a tensor's only consumer sees it), and a
constant of the outer graph is a constant inside the body too. Tensor names are unique across
all scopes (ONNX forbids a body from redefining an outer name), so a name-keyed analysis such as
shapes holds for every scope at once.

A body is named by its path: ``If_0/then_branch`` is the ``then_branch`` attribute of node
``If_0`` of the top graph; nested bodies append ``/node/attribute``. The top graph's path is ``""``.
A node inside a body is named by the body's path and its own name (:func:`path_name`:
``If_0/then_branch/Conv_2``) wherever graphc shows it to a user: MAC listings, pass details and
skip logs, the report's layer table, the verifier's localization.
"""
from __future__ import annotations

from typing import Iterator

import onnx_graphsurgeon as gs


def subgraphs(node: gs.Node) -> Iterator[tuple[str, gs.Graph]]:
    """The bodies ``node`` carries, as (attribute name, graph); ``name[i]`` for GRAPHS lists."""
    for attr, value in node.attrs.items():
        if isinstance(value, gs.Graph):
            yield attr, value
        elif isinstance(value, (list, tuple)):
            for i, item in enumerate(value):
                if isinstance(item, gs.Graph):
                    yield f"{attr}[{i}]", item


def walk_graphs(graph: gs.Graph, path: str = "") -> Iterator[tuple[str, gs.Graph]]:
    """``(path, graph)`` for ``graph`` and, depth first in node order, every body nested in it.

    Iterate over a list (``list(walk_graphs(g))``) when the loop rewrites nodes that carry bodies.
    """
    yield path, graph
    for node in graph.nodes:
        for attr, sub in subgraphs(node):
            here = f"{node.name or node.op}/{attr}"
            yield from walk_graphs(sub, f"{path}/{here}" if path else here)



def path_name(path: str, node: gs.Node) -> str:
    """``node``'s name qualified by the body it sits in (``If_0/then_branch/Conv_2``); a node of
    the top graph (``path`` ``""``) keeps its own name."""
    if not path:
        return node.name
    return f"{path}/{node.name or node.op}"


def named_nodes(graph: gs.Graph) -> Iterator[tuple[str, gs.Node]]:
    """``(path name, node)`` for every node of ``graph`` and of its bodies (walk order)."""
    for path, scope in walk_graphs(graph):
        for node in scope.nodes:
            yield path_name(path, node), node
