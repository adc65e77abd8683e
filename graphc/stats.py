"""Model statistics at concrete shapes, and the one policy for the shapes costs are counted at.

Parameters and MACs come from :mod:`graphc.ir.stats` (the formulas). MACs need static shapes;
shapes static inference cannot see (a Reshape target computed at run time) are *measured* by one
onnxruntime run on zeros of the concrete input shapes. That run is why this module sits above
``ir/`` (next to the runtime) and not in it.

Cost shapes (:func:`cost_shapes`, served to passes as ``ctx.cost_shapes()``), in order: the user's
``--input-shape``; batch 1 when the batch is the only dynamic dim (or none is); the first
calibration sample's shapes; else a nominal shape (batch 1, side 224 / length 128:
:mod:`graphc.calib.shapes`), which callers say in one line (``ctx.note``). With
``measure``, MAC layers whose shapes static inference lost are then measured (prune counts MACs
so; quant's speed model reads static inference only, which keeps its placement as it was - on
PP-OCRv4 rec, measured shapes would put 6 more ops on integers). These shapes are for estimates
(MACs, speed models, budgets) only: a rewrite relies on ``ctx.shapes()``, which holds for every
input.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx_graphsurgeon as gs

from graphc.calib.data import input_specs
from graphc.calib.shapes import concrete_input_shapes
from graphc.ir.model import Model
from graphc.ir.shapes import TensorInfo, infer_shapes
from graphc.ir.stats import ModelStats, all_nodes, stats_at, unknown_mac_nodes

log = logging.getLogger(__name__)

Shapes = dict[str, TensorInfo]


def model_stats(model: Model, input_shapes: dict[str, tuple[int, ...]] | None = None,
                *, measure: bool = True) -> ModelStats:
    """Statistics of ``model``. When static inference leaves MAC nodes unknown and every input
    has a concrete shape (declared or in ``input_shapes``), the missing shapes are measured by
    running the model once on zeros (``measure=False`` disables that)."""
    shapes = infer_shapes(model, input_shapes)
    unknown = unknown_mac_nodes(all_nodes(model.graph), shapes)
    # Measuring runs the model: never for graphs with loops, whose trip count the model decides.
    runs_safely = not any(n.op in ("Loop", "Scan", "If") for n in model.graph.nodes)
    if unknown and measure and runs_safely:
        concrete = _concrete_inputs(model, shapes, input_shapes or {})
        if concrete is not None:
            shapes = measure_missing_shapes(model, shapes, unknown, concrete)
    return stats_at(model, shapes)


@dataclass(frozen=True)
class CostShapes:
    """Shapes to count costs at, and where their input shapes came from (for messages)."""

    shapes: Shapes
    where: str
    #: True when graphc chose the input shapes (a data sample's or a nominal one) rather than the
    #: user (``--input-shape``) or the model (static, or only the batch dynamic): worth saying
    chosen: bool = False


def cost_shapes(model: Model, input_shapes: dict[str, tuple[int, ...]] | None, data: Any, *,
                measure: bool = False) -> CostShapes:
    """The shapes costs are counted at (see the module docstring for the order)."""
    concrete = dict(input_shapes) if input_shapes else batch_one_shapes(model)
    where = "at --input-shape" if input_shapes else "at batch 1"
    if concrete is None and data is not None:
        first = next(iter(data), None)
        if first is not None:
            concrete = {k: tuple(np.shape(v)) for k, v in first.items()}
            where = "at the first calibration sample's shape"
    chosen = concrete is not None and not input_shapes and where != "at batch 1"
    if concrete is None:  # dynamic dims beyond the batch and no data: a nominal shape, said by the caller
        nominal = concrete_input_shapes(input_specs(model))
        concrete, where, chosen = nominal.shapes, f"at {nominal.origin}", True
    shapes = infer_shapes(model, concrete)
    if measure:
        shapes = measure_missing_shapes(model, shapes, unknown_mac_nodes(model.graph.nodes, shapes), concrete)
    return CostShapes(shapes, where, chosen)


def batch_one_shapes(model: Model) -> dict[str, tuple[int, ...]] | None:
    """Every input's declared shape with a dynamic batch dim (dim 0) set to 1; None when another
    dim is dynamic."""
    concrete = {}
    for spec in input_specs(model):
        rest = spec.shape[1:]
        if not spec.shape or any(d is None for d in rest):
            return None
        concrete[spec.name] = (1 if spec.shape[0] is None else spec.shape[0], *rest)
    return concrete


def dynamic_batch(model: Model) -> bool:
    """True if some input's batch dim (dim 0) is dynamic."""
    return any(spec.shape and spec.shape[0] is None for spec in input_specs(model))


def _concrete_inputs(model: Model, shapes: Shapes,
                     input_shapes: dict[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]] | None:
    """Every graph input's shape, given or declared; None if one is dynamic and not given."""
    concrete = {}
    for tensor in model.graph.inputs:
        given = input_shapes.get(tensor.name)
        info = shapes.get(tensor.name)
        if given is None and (info is None or not info.static):
            return None  # a dynamic input without a given shape: nothing to measure with
        concrete[tensor.name] = tuple(given if given is not None else info.shape)
    return concrete


def measure_missing_shapes(model: Model, shapes: Shapes, nodes: list[gs.Node],
                           concrete: dict[str, tuple[int, ...]]) -> Shapes:
    """``shapes`` with the first input and output of ``nodes`` (MAC layers whose shapes inference
    lost) measured by one run on zeros of the ``concrete`` input shapes; unchanged when an input
    has no concrete shape or the model cannot run."""
    names = sorted({t.name for n in nodes for t in list(n.inputs[:1]) + list(n.outputs[:1])
                    if isinstance(t, gs.Variable) and t.inputs})
    if not names or any(t.name not in concrete for t in model.graph.inputs):
        return shapes
    from graphc.runtime import measure_shapes  # lazy: onnxruntime loads only when a shape is missing

    try:
        measured = measure_shapes(model, concrete, names)
    except Exception as exc:  # a model onnxruntime cannot run keeps its unknowns
        log.info("could not measure shapes for MACs: %s", exc)
        return shapes
    merged = dict(shapes)
    for name, shape in measured.items():
        old = shapes.get(name)
        merged[name] = TensorInfo(old.dtype if old else None, shape)
    return merged
