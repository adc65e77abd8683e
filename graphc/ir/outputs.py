"""Exposing intermediate tensors as graph outputs, so a runtime can report their values.

Used by first-divergence localization (:mod:`graphc.verify.localize`): the model is copied and
the named tensors are appended to the copy's outputs; the original model is never touched.
Only tensors computed by a node can be exposed (graph inputs and constants are known already).
A tensor inside an If/Loop/Scan body (computed there, or a body input) is lifted out through the
nodes that hold it (:mod:`graphc.ir.lift`); inside a Loop or Scan its value comes out stacked over
the iterations (one leading axis per enclosing Loop/Scan), and empty on runs that take the other
branch of an If.
"""
from __future__ import annotations

from typing import Iterable

import numpy as np
import onnx_graphsurgeon as gs

from graphc.errors import ModelError
from graphc.ir.lift import BodyIndex, lift_to_outputs
from graphc.ir.model import Model
from graphc.ir.shapes import infer_shapes
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


def with_outputs(model: Model, names: Iterable[str], dtypes: dict | None = None) -> Model:
    """A copy of ``model`` whose graph also outputs the tensors ``names`` (after its own outputs).

    Names that already are graph outputs are not repeated. ``dtypes`` (name -> dtype) gives the
    element type of a body tensor whose declaration has none; without it, shape inference does
    (float32 where it cannot tell). Raises :class:`ModelError` for a name
    that no node of the model computes.
    """
    copy = model.copy()
    graph = copy.graph
    tensors = graph.tensors()
    present = {t.name for t in graph.outputs}
    index: BodyIndex | None = None
    in_bodies = []
    for name in names:
        tensor = tensors.get(name)
        if tensor is None or not isinstance(tensor, gs.Variable) or not tensor.inputs:
            index = index or BodyIndex(graph)
            found = index.body_tensor(name)
            if found is None or not isinstance(found[0], gs.Variable):
                raise ModelError(f"tensor '{name}' is not computed by any node; cannot expose it as an output")
            if name not in present:
                in_bodies.append(found[0])
                present.add(name)
            continue
        if name not in present:
            graph.outputs.append(tensor)
            present.add(name)
    if dtypes is None and any(t.dtype is None for t in in_bodies):
        dtypes = {k: v.dtype for k, v in infer_shapes(model).items()}
    try:
        lift_to_outputs(graph, [(t.name, _dtype(t, dtypes)) for t in in_bodies])
    except ValueError as exc:
        raise ModelError(f"{exc}; cannot expose it as an output") from None
    return copy


def _dtype(tensor: gs.Tensor, dtypes: dict | None) -> np.dtype:
    """The tensor's dtype: declared, else from ``dtypes`` (name -> dtype), else float32."""
    if tensor.dtype is not None:
        try:
            return np.dtype(tensor.dtype)
        except TypeError:
            pass
    found = (dtypes or {}).get(tensor.name)
    return np.dtype(found) if found is not None else np.dtype(np.float32)
