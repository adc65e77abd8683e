"""Lifting a tensor computed inside an If/Loop/Scan body to an output of the top graph, so that a
runtime can report its values (calibration, channel ranges, localization). onnxruntime returns
only the top graph's outputs; a body's tensors are reached by threading each one out through
every enclosing node:

- the body gets ``Identity(t)`` as a new last output (an Identity, so a body input or a tensor
  that already is a body output can be lifted too);
- **If**: the other branch must give an output of the same type: it outputs an empty tensor
  (``Constant`` of shape ``(0,) * rank``, the tensor's dtype); the If node gets a new last output.
  A run that takes the other branch reports an empty array, which range statistics skip;
- **Loop**: the new body output is a *scan output*: onnxruntime stacks its value of every
  iteration along a new leading axis (so the values of all iterations are seen at once; every
  iteration must give the same shape). A Loop that runs no iteration reports an empty array;
- **Scan**: likewise a new scan output, stacked along axis 0 (``scan_output_axes`` /
  ``scan_output_directions``, when the node lists them, get ``0`` appended);

and the new output of the node is a tensor of the enclosing scope, lifted again until it is in
the top graph. A lifted value therefore has one extra leading axis per enclosing Loop or Scan.

This only ever edits a copy of the model (:func:`graphc.ir.outputs.with_outputs` makes it): the
tensor in the body is renamed and the top-graph output takes the tensor's own name, so a caller
fetches the lifted value by the name it asked for.
"""
from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from graphc.ir.subgraphs import subgraphs
from graphc.ir.usedef import NameFactory

#: nodes whose bodies can pass a value out (If branches, Loop and Scan bodies).
LIFTABLE_OPS = ("If", "Loop", "Scan")


class BodyIndex:
    """Where each body of a graph sits: ``scope id -> (owner node, attribute, enclosing scope)``,
    and the scope that defines each tensor (produces it, or has it as a body input)."""

    def __init__(self, graph: gs.Graph):
        self.owner: dict[int, tuple[gs.Node, str, gs.Graph]] = {}
        self.defined: dict[str, tuple[gs.Tensor, gs.Graph]] = {}
        self._visit(graph)

    def _visit(self, graph: gs.Graph) -> None:
        for t in graph.inputs:
            self.defined.setdefault(t.name, (t, graph))
        for node in graph.nodes:
            for out in node.outputs:
                if out.name:
                    self.defined.setdefault(out.name, (out, graph))
            for attr, body in subgraphs(node):
                self.owner[id(body)] = (node, attr, graph)
                self._visit(body)

    def body_tensor(self, name: str) -> tuple[gs.Tensor, gs.Graph] | None:
        """(tensor, scope) when ``name`` is defined inside a body (None for the top graph's)."""
        found = self.defined.get(name)
        if found is None or id(found[1]) not in self.owner:
            return None
        return found


def lift(graph: gs.Graph, index: BodyIndex, tensor: gs.Tensor, scope: gs.Graph,
         names: NameFactory, dtype) -> gs.Variable:
    """Thread ``tensor`` of body ``scope`` out to a new output tensor of the top graph (not yet in
    ``graph.outputs``); raises ValueError when a body on the way is not an If/Loop/Scan body."""
    current, current_scope = tensor, scope
    while id(current_scope) in index.owner:
        node, attr, parent = index.owner[id(current_scope)]
        if node.op not in LIFTABLE_OPS or node.domain not in (None, "", "ai.onnx"):
            raise ValueError(f"tensor '{tensor.name}' is inside a body of {node.op} '{node.name}', "
                             "which cannot pass values out")
        copy = gs.Variable(names(f"{current.name}_lifted"), dtype=dtype)
        current_scope.nodes.append(gs.Node("Identity", names(f"{current.name}_lift"),
                                           inputs=[current], outputs=[copy]))
        current_scope.outputs.append(copy)
        if node.op == "If":
            _empty_branch_output(node, attr, names, dtype, _rank(current))
        elif node.op == "Scan":
            for key in ("scan_output_axes", "scan_output_directions"):
                if key in node.attrs:
                    node.attrs[key] = list(node.attrs[key]) + [0]
        out = gs.Variable(names(f"{current.name}_out"), dtype=dtype)
        node.outputs.append(out)
        current, current_scope = out, parent
    return current


def _empty_branch_output(node: gs.Node, lifted_attr: str, names: NameFactory, dtype, rank: int | None) -> None:
    other = node.attrs["else_branch" if lifted_attr == "then_branch" else "then_branch"]
    empty = gs.Variable(names("lift_empty"), dtype=dtype)
    value = gs.Constant(names("lift_empty_value"), np.zeros((0,) * max(rank or 1, 1), dtype=dtype))
    other.nodes.append(gs.Node("Constant", names("lift_empty_const"), attrs={"value": value}, outputs=[empty]))
    other.outputs.append(empty)


def _rank(tensor: gs.Tensor) -> int | None:
    return len(tensor.shape) if tensor.shape is not None else None


def lift_to_outputs(graph: gs.Graph, wanted: list[tuple[str, np.dtype]]) -> None:
    """Append each body tensor named in ``wanted`` (name, dtype) to ``graph``'s outputs under its
    own name (the body's tensor is renamed). ``graph`` must be a copy: it is edited in place."""
    if not wanted:
        return
    index = BodyIndex(graph)
    names = NameFactory(graph)
    for name, dtype in wanted:
        found = index.body_tensor(name)
        if found is None:
            raise ValueError(f"tensor '{name}' is not defined inside an If/Loop/Scan body")
        tensor, scope = found
        out = lift(graph, index, tensor, scope, names, dtype)
        tensor.name = names(f"{name}_body")
        out.name = name
        graph.outputs.append(out)
