"""Evaluate a single node on constant inputs with ONNX's numpy reference implementation.

Used by constant folding; lives in ir/ because it builds a one-node ModelProto.
"""
from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx.reference import ReferenceEvaluator

#: ops whose result is not a function of their inputs, or that need a runtime.
NOT_FOLDABLE = frozenset({
    "RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Multinomial",
    "Bernoulli", "If", "Loop", "Scan", "SequenceConstruct", "Optional",
})


def runtime_refuses(node: gs.Node, inputs: list[np.ndarray | None]) -> str | None:
    """Why onnxruntime would refuse to compute ``node`` on these values, if it would: then the
    node must not be folded (numpy's reference gives an integer division by zero a value, 0,
    where onnxruntime raises "Integer divide by zero")."""
    if node.op in ("Div", "Mod") and len(inputs) > 1:
        divisor = inputs[1]
        if divisor is not None and np.issubdtype(divisor.dtype, np.integer) and not np.all(divisor):
            return f"{node.op}: integer division by zero (onnxruntime refuses it; not folded)"
    return None


def evaluate_node(node: gs.Node, inputs: list[np.ndarray | None], opset: int) -> list[np.ndarray]:
    """Outputs of ``node`` for the given input values (None for an omitted optional input).
    Callers bound the work first (:func:`graphc.ir.evaluation_cost.evaluation_cost`)."""
    model = one_node_model(node, inputs, opset)
    feeds = {f"in{i}": v for i, v in enumerate(inputs) if v is not None}
    results = ReferenceEvaluator(model).run(None, feeds)
    return [np.asarray(r) for r in results]


def one_node_model(node: gs.Node, inputs: list[np.ndarray | None], opset: int, *,
                   values_up_to: int = -1) -> onnx.ModelProto:
    """A model of ``node`` alone, reading graph inputs ``in0``, ``in1``, ... (typed and shaped
    like ``inputs``). Inputs of at most ``values_up_to`` elements are initializers instead, so
    shape inference sees their values (a Reshape's target, a Tile's repeats)."""
    names = [f"in{i}" if v is not None else "" for i, v in enumerate(inputs)]
    out_names = [f"out{i}" for i in range(len(node.outputs))]
    attrs = {k: _attr_value(v) for k, v in node.attrs.items()}
    proto_node = onnx.helper.make_node(node.op, names, out_names, domain=node.domain or "", **attrs)
    graph_inputs, initializers = [], []
    for name, value in zip(names, inputs):
        if value is None:
            continue
        if value.size <= values_up_to:
            initializers.append(onnx.numpy_helper.from_array(value, name))
        else:
            elem = onnx.helper.np_dtype_to_tensor_dtype(value.dtype)
            graph_inputs.append(onnx.helper.make_tensor_value_info(name, elem, value.shape))
    graph_outputs = [onnx.helper.make_empty_tensor_value_info(n) for n in out_names]
    graph = onnx.helper.make_graph([proto_node], "fold", graph_inputs, graph_outputs, initializer=initializers)
    return onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", opset)])


def _attr_value(value):
    if isinstance(value, gs.Constant):
        return onnx.numpy_helper.from_array(np.asarray(value.values))
    if isinstance(value, gs.Tensor):
        raise ValueError("tensor-valued attribute without a value")
    return value
