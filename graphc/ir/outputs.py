"""Exposing intermediate tensors as graph outputs, so a runtime can report their values.

Used by first-divergence localization (:mod:`graphc.verify.localize`): the model is copied and
the named tensors are appended to the copy's outputs; the original model is never touched.
Only tensors computed by a node can be exposed (graph inputs and constants are known already).
"""
from __future__ import annotations

from typing import Iterable

import onnx_graphsurgeon as gs

from graphc.errors import ModelError
from graphc.ir.model import Model
from graphc.ir.structure import find_cycle_free_order


def computed_tensors(model: Model) -> list[gs.Variable]:
    """Every named tensor a node computes, in topological order of the producing nodes."""
    tensors = []
    seen: set[str] = set()
    for node in find_cycle_free_order(model.graph):
        for out in node.outputs:
            if isinstance(out, gs.Variable) and out.name and out.name not in seen:
                seen.add(out.name)
                tensors.append(out)
    return tensors


def with_outputs(model: Model, names: Iterable[str]) -> Model:
    """A copy of ``model`` whose graph also outputs the tensors ``names`` (after its own outputs).

    Names that already are graph outputs are not repeated. Raises :class:`ModelError` for a name
    that no node of the model computes.
    """
    copy = model.copy()
    graph = copy.graph
    tensors = graph.tensors()
    present = {t.name for t in graph.outputs}
    for name in names:
        tensor = tensors.get(name)
        if tensor is None or not isinstance(tensor, gs.Variable) or not tensor.inputs:
            raise ModelError(f"tensor '{name}' is not computed by any node; cannot expose it as an output")
        if name not in present:
            graph.outputs.append(tensor)
            present.add(name)
    return copy
