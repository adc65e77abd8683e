"""Opset upgrade for passes that need newer operators (per-channel QDQ needs opset >= 13).

The upgrade goes through ``onnx.version_converter`` and replaces the graph's contents in place,
so that a pass holding the graph object keeps working with it.
"""
from __future__ import annotations

import logging

import onnx
import onnx_graphsurgeon as gs

from graphc.errors import ModelError
from graphc.ir.model import Model, constant_nodes_to_constants, to_proto

log = logging.getLogger(__name__)


def upgrade_opset(model: Model, target: int) -> bool:
    """Raise the default-domain opset to ``target``; returns False if it already was."""
    if model.opset >= target:
        return False
    proto = to_proto(model)
    try:
        converted = onnx.version_converter.convert_version(proto, target)
    except Exception as exc:  # the converter raises RuntimeError/ValueError/its own types
        raise ModelError(f"cannot upgrade opset {model.opset} -> {target}: {exc}") from None
    new = gs.import_onnx(converted)
    constant_nodes_to_constants(new)
    replace_graph_contents(model.graph, new)
    model.graph.opset = target
    model.opset_imports[""] = target
    log.info("upgraded opset to %d", target)
    return True


def replace_graph_contents(graph: gs.Graph, new: gs.Graph) -> None:
    """Make ``graph`` hold ``new``'s nodes, inputs and outputs (same object identity)."""
    graph.nodes = new.nodes
    graph.inputs = new.inputs
    graph.outputs = new.outputs
    graph.opset = new.opset
