"""The taken-branch view of two models, so localization can look inside If branches.

onnxruntime reports only a model's top-level tensors, and a branch's tensors are computed inside
the If node. On the samples that take the same branch of an If (a VAD's ``If(sr == 16000)``, a model's mode
flag), the If computes exactly what that branch computes: replacing the node by the branch's
nodes (its outputs written straight into the If's outputs) gives a model with the same outputs on
those samples whose branch tensors are top-level tensors, which first-divergence localization can
expose and compare. The samples are grouped by the branches they take (conditions read from the
reference by one run); each group gets copies of both models with the same choice for both,
repeated inside the branches (a branch may hold an If of its own). The moved nodes are renamed to
their path (``If_0/then_branch/conv``), so a divergence inside a branch is reported by the path of
the node that computes it.

An If whose condition cannot be read is left as it is (localization then stops at the If node).
Loop and Scan bodies run per iteration and are left alone.
"""
from __future__ import annotations

import logging
from typing import Iterable, Iterator

import numpy as np
import onnx_graphsurgeon as gs

from graphc.ir.model import Model
from graphc.ir.outputs import with_outputs
from graphc.ir.structure import toposort
from graphc.ir.subgraphs import path_name
from graphc.ir.usedef import constant_value, drop_detached
from graphc.runtime import create_session, run_session

log = logging.getLogger(__name__)

#: ``If`` node name -> the branch attribute taken.
Choices = dict[str, str]
Feeds = list[dict[str, np.ndarray]]

#: nested Ifs inlined at most this deep (each level is one more reference run).
MAX_DEPTH = 8


def taken_branch_views(reference: Model, candidate: Model, data: Iterable[dict[str, np.ndarray]],
                       _depth: int = 0) -> Iterator[tuple[Model, Model, Feeds | Iterable, int]]:
    """``(reference view, candidate view, samples, If nodes inlined)``: one per way the samples
    take the models' top-level If nodes (the most common way first), with each of those If nodes
    replaced by the branch taken (module docstring), recursively for Ifs the branches hold.
    Without If nodes: the models and data themselves, once. The inputs are never modified."""
    nodes = [n for n in reference.graph.nodes if n.op == "If" and n.name and n.inputs]
    if not nodes or _depth >= MAX_DEPTH:
        yield reference, candidate, data, 0
        return
    feeds = list(data)
    ways = _conditions(reference, nodes, feeds)
    if ways is None:
        yield reference, candidate, feeds, 0
        return
    for key, group in sorted(ways.items(), key=lambda kv: -len(kv[1])):
        choices = {n.name: "then_branch" if flag else "else_branch" for n, flag in zip(nodes, key)}
        ref_view, cand_view = reference.copy(), candidate.copy()
        for model in (ref_view, cand_view):
            _inline_branches(model.graph, choices)
        for ref_inner, cand_inner, samples, inlined in taken_branch_views(ref_view, cand_view, group, _depth + 1):
            yield ref_inner, cand_inner, samples, inlined + len(choices)


def _conditions(model: Model, nodes: list[gs.Node], feeds: Feeds) -> dict[tuple, Feeds] | None:
    """The samples grouped by the value of every If's condition (a tuple of bools, in ``nodes``'
    order); None when the conditions cannot be read. A condition that is a graph input (a mode
    flag) is read from the samples, the others from one run of the model."""
    constant = {id(n): constant_value(n.inputs[0]) for n in nodes}
    conditions = {n.inputs[0].name for n in nodes if constant[id(n)] is None}
    fed = conditions & {t.name for t in model.graph.inputs}
    names = sorted(conditions - fed)
    values: list[dict[str, bool]] = [{} for _ in feeds]
    for row, feed in zip(values, feeds):
        for name in sorted(fed):
            value = feed.get(name, model.input_defaults.get(name))
            if value is None:
                log.info("branch conditions not read: no value for the input '%s'", name)
                return None
            row[name] = _truth(value)
    if names:
        try:
            session = create_session(with_outputs(model, names), optimize=False, label="reference (branches)")
            for row, feed in zip(values, feeds):
                got = run_session(session, feed, names, label="reference (branches)")
                row.update({name: _truth(value) for name, value in zip(names, got)})
        except Exception as exc:  # a model onnxruntime cannot open or run: no view
            log.info("branch conditions not read: %s", exc)
            return None
    groups: dict[tuple, Feeds] = {}
    for row, feed in zip(values, feeds):
        key = tuple(_truth(constant[id(n)]) if constant[id(n)] is not None else row[n.inputs[0].name]
                    for n in nodes)
        groups.setdefault(key, []).append(feed)
    return groups


def _truth(value) -> bool:
    flat = np.asarray(value).reshape(-1)
    return bool(flat[0]) if flat.size else False


def _inline_branches(graph: gs.Graph, choices: Choices) -> None:
    """Replace each If named in ``choices`` by the nodes of the chosen branch."""
    for node in [n for n in graph.nodes if n.op == "If" and n.name in choices]:
        attr = choices[node.name]
        branch = node.attrs.get(attr)
        if not isinstance(branch, gs.Graph) or len(branch.outputs) != len(node.outputs):
            continue
        _splice(graph, node, branch, f"{node.name}/{attr}")
    drop_detached(graph)
    toposort(graph)


def _splice(graph: gs.Graph, node: gs.Node, branch: gs.Graph, path: str) -> None:
    """Move ``branch``'s nodes into ``graph`` in place of the If ``node`` (detached)."""
    outs = list(node.outputs)
    node.inputs.clear()
    node.outputs.clear()
    for inner in branch.nodes:
        inner.name = path_name(path, inner)
    for result, produced in zip(outs, branch.outputs):
        source = produced.inputs[0] if isinstance(produced, gs.Variable) and produced.inputs else None
        if source is None or produced in branch.inputs:  # an outer tensor or a constant: copy it out
            graph.nodes.append(gs.Node("Identity", name=f"{path}/output.{result.name}", inputs=[produced],
                                       outputs=[result]))
            continue
        for reader in list(produced.outputs):
            _swap(reader.inputs, produced, result)
        _swap(source.outputs, produced, result)
    graph.nodes.extend(branch.nodes)


def _swap(tensors, old: gs.Tensor, new: gs.Tensor) -> None:
    """Replace ``old`` by ``new`` in a node's input or output list (item by item: graphsurgeon's
    lists keep the tensors' producer/consumer links in step only that way)."""
    for i, tensor in enumerate(tensors):
        if tensor is old:
            tensors[i] = new
