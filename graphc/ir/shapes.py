"""Shape and dtype inference as an analysis: a mapping tensor name -> (dtype, shape).

ONNX shape inference runs on a light copy of the model in which large weights are replaced by
graph inputs of the same type and shape (inference needs their dims, not their bytes), so it costs
little memory on big models. ``input_shapes`` overrides the declared input dims (for dynamic
models); the graph itself is never modified. When symbolic dims stop inference, what could be
inferred is returned and the rest is missing (callers treat missing as unknown).

Cost: one walk over the nodes builds the light copy (the nodes, the graph's inputs and outputs,
small constants; no value-info, which inference recomputes), and inferred types are decoded once
per distinct type, not once per tensor: linear in the nodes with small constants (a 100k-node
chain is a second or two, not the full export's several).
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx_graphsurgeon.exporters.onnx_exporter import OnnxExporter
from onnx_graphsurgeon.ir.tensor import SparseValues

from graphc.ir.collector import collector_paused
from graphc.ir.model import Model, constant_proto, set_model_fields
from graphc.ir.subgraphs import walk_graphs

log = logging.getLogger(__name__)

#: initializers with more elements than this are replaced by typed inputs for inference.
_INLINE_LIMIT = 4096


@dataclass(frozen=True)
class TensorInfo:
    dtype: np.dtype | None
    shape: tuple | None  # dims are int (known), str (symbolic) or None (unknown)

    @property
    def static(self) -> bool:
        return self.shape is not None and all(isinstance(d, int) and d >= 0 for d in self.shape)


@collector_paused()
def infer_shapes(model: Model, input_shapes: dict[str, tuple[int, ...]] | None = None, *,
                 declared: bool = True) -> dict[str, TensorInfo]:
    """Infer dtypes and shapes of every tensor it can; never raises on inference failure.
    ``declared=False``: what inference alone derives from the inputs, without the shapes the
    model declares for its outputs and intermediate tensors (which otherwise fill the gaps)."""
    proto = _light_proto(model, input_shapes or {})
    if not declared:
        for out in proto.graph.output:
            if out.type.HasField("tensor_type"):
                out.type.tensor_type.ClearField("shape")
    inferred = None
    for kwargs in ({"data_prop": True}, {}):
        try:
            inferred = onnx.shape_inference.infer_shapes(proto, strict_mode=False, **kwargs)
            break
        except Exception as exc:  # inference on odd graphs raises many exception types
            log.info("shape inference failed (%s); retrying with less", exc)
    info: dict[str, TensorInfo] = {}
    if inferred is not None:
        decoded: dict[bytes, TensorInfo] = {}  # a type is decoded once, however many tensors have it
        for graph in _proto_scopes(inferred.graph):
            for vi in [*graph.input, *graph.value_info, *graph.output]:
                if vi.name not in info:
                    key = vi.type.SerializeToString()
                    if key not in decoded:
                        decoded[key] = _value_info(vi)
                    info[vi.name] = decoded[key]
    for name, tensor in _named_tensors(model.graph).items():
        if isinstance(tensor, gs.Constant):
            info[name] = TensorInfo(_np_dtype(tensor.dtype), tuple(int(d) for d in tensor.shape))
        elif declared and name not in info and tensor.shape is not None:
            dims = tuple(d if not isinstance(d, int) or d >= 0 else None for d in tensor.shape)
            info[name] = TensorInfo(_np_dtype(tensor.dtype), dims)
    return info


def _named_tensors(graph: gs.Graph) -> dict[str, gs.Tensor]:
    """Every named tensor of ``graph`` and its bodies, by name (names are unique across scopes;
    what ``Graph.tensors()`` of each scope gives, in one walk without its checks)."""
    tensors: dict[str, gs.Tensor] = {}
    for _, scope in walk_graphs(graph):
        for tensor in scope.inputs:
            tensors[tensor.name] = tensor
        for node in scope.nodes:
            for tensor in node.inputs:
                tensors[tensor.name] = tensor
            for tensor in node.outputs:
                tensors[tensor.name] = tensor
        for tensor in scope.outputs:
            tensors[tensor.name] = tensor
    tensors.pop("", None)  # omitted optional inputs
    return tensors


def _proto_scopes(graph: onnx.GraphProto):
    """``graph`` and every body nested in it (the top graph first, so its entries win)."""
    yield graph
    for node in graph.node:
        for attr in node.attribute:
            for sub in ([attr.g] if attr.type == onnx.AttributeProto.GRAPH else attr.graphs):
                yield from _proto_scopes(sub)


def _np_dtype(dtype) -> np.dtype | None:
    """numpy dtype of a graphsurgeon tensor's dtype; graphsurgeon keeps the ONNX enum (an int) for
    types numpy lacks (float8, int4): those map through onnx's table (ml_dtypes) or to None."""
    try:
        if isinstance(dtype, int) and not isinstance(dtype, bool):
            return onnx.helper.tensor_dtype_to_np_dtype(dtype)
        return np.dtype(dtype) if dtype is not None else None
    except (TypeError, KeyError, ValueError):
        return None


def _value_info(vi: onnx.ValueInfoProto) -> TensorInfo:
    ttype = vi.type.tensor_type
    dtype = None
    if ttype.elem_type:
        try:
            dtype = onnx.helper.tensor_dtype_to_np_dtype(ttype.elem_type)
        except (KeyError, ValueError):
            dtype = None
    if not ttype.HasField("shape"):
        return TensorInfo(dtype, None)
    dims = []
    for d in ttype.shape.dim:
        if d.HasField("dim_value") and d.dim_value >= 0:
            dims.append(int(d.dim_value))
        elif d.HasField("dim_param"):
            dims.append(d.dim_param)
        else:
            dims.append(None)
    return TensorInfo(dtype, tuple(dims))


def _light_proto(model: Model, input_shapes: dict[str, tuple[int, ...]]) -> onnx.ModelProto:
    """The model as inference needs it: its nodes, inputs, outputs and local functions, constants
    up to ``_INLINE_LIMIT`` elements as initializers and larger ones as typed graph inputs. Built
    in one walk over the nodes (no value-info, no copy of a large weight)."""
    graph = model.graph
    proto = onnx.ModelProto()
    out = proto.graph
    out.name = graph.name or "graph"
    constants: dict[int, gs.Constant] = {}
    nodes = []
    for node in graph.nodes:
        nodes.append(_node_proto(node))
        for tensor in node.inputs:
            if isinstance(tensor, gs.Constant):
                constants[id(tensor)] = tensor
    constants.update((id(t), t) for t in graph.outputs if isinstance(t, gs.Constant))
    out.node.extend(nodes)
    out.input.extend(OnnxExporter.export_value_info_proto(t, False) for t in graph.inputs)
    out.output.extend(OnnxExporter.export_value_info_proto(t, False) for t in graph.outputs)
    for tensor in constants.values():
        if isinstance(tensor._values, SparseValues):
            out.sparse_initializer.append(OnnxExporter.export_sparse_tensor_proto(tensor))
        elif math.prod(tensor.shape) > _INLINE_LIMIT:
            elem = tensor.dtype if isinstance(tensor.dtype, int) else onnx.helper.np_dtype_to_tensor_dtype(np.dtype(tensor.dtype))
            out.input.append(onnx.helper.make_tensor_value_info(tensor.name, elem, list(tensor.shape)))
        else:
            out.initializer.append(constant_proto(tensor))
    listed = {vi.name for vi in out.input}
    for name, values in model.input_defaults.items():  # what the export writes for them
        if name in listed:
            out.initializer.append(onnx.numpy_helper.from_array(values, name))
    proto.functions.extend(OnnxExporter.export_function(f) for f in graph.functions)
    set_model_fields(model, proto)
    for vi in out.input:
        if vi.name in input_shapes:
            shape = vi.type.tensor_type.shape
            del shape.dim[:]
            for d in input_shapes[vi.name]:
                shape.dim.add().dim_value = int(d)
    if input_shapes:
        _forget_body_declarations(proto.graph)
    return proto


def _node_proto(node: gs.Node) -> onnx.NodeProto:
    """``node`` as the export writes it (attributes, subgraph bodies included, by graphsurgeon's)."""
    proto = onnx.NodeProto(op_type=node.op, name=node.name or "", domain=node.domain or "",
                           input=[t.name for t in node.inputs], output=[t.name for t in node.outputs])
    if node.attrs:
        proto.attribute.extend(OnnxExporter.export_attributes(node.attrs))
    return proto


def _forget_body_declarations(graph: onnx.GraphProto) -> None:
    """Drop the shapes bodies declare for their tensors and outputs (types stay): an exporter's
    ``[N, 1, 512]`` inside an If branch would otherwise shadow the dims inference derives from
    the given input shapes. Inference fills them again; what it cannot infer falls back to the
    declaration (:func:`infer_shapes` reads the IR's declared shape for missing names)."""
    for scope in list(_proto_scopes(graph))[1:]:
        del scope.value_info[:]
        for out in scope.output:
            if out.type.HasField("tensor_type"):
                out.type.tensor_type.ClearField("shape")
