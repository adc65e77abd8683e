"""Shape and dtype inference as an analysis: a mapping tensor name -> (dtype, shape).

ONNX shape inference runs on a light copy of the model in which large weights are replaced by
graph inputs of the same type and shape (inference needs their dims, not their bytes), so it costs
little memory on big models. ``input_shapes`` overrides the declared input dims (for dynamic
models); the graph itself is never modified. When symbolic dims stop inference, what could be
inferred is returned and the rest is missing (callers treat missing as unknown).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from graphc.ir.model import Model, to_proto
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
        for graph in _proto_scopes(inferred.graph):
            for vi in list(graph.input) + list(graph.value_info) + list(graph.output):
                info.setdefault(vi.name, _value_info(vi))
    tensors: dict[str, gs.Tensor] = {}
    for _, scope in walk_graphs(model.graph):  # names are unique across scopes
        tensors.update(scope.tensors())
    for name, tensor in tensors.items():
        if isinstance(tensor, gs.Constant):
            info[name] = TensorInfo(np.dtype(tensor.dtype), tuple(int(d) for d in tensor.shape))
        elif declared and name not in info and tensor.shape is not None:
            dims = tuple(d if not isinstance(d, int) or d >= 0 else None for d in tensor.shape)
            info[name] = TensorInfo(_np_dtype(tensor.dtype), dims)
    return info


def _proto_scopes(graph: onnx.GraphProto):
    """``graph`` and every body nested in it (the top graph first, so its entries win)."""
    yield graph
    for node in graph.node:
        for attr in node.attribute:
            for sub in ([attr.g] if attr.type == onnx.AttributeProto.GRAPH else attr.graphs):
                yield from _proto_scopes(sub)


def _np_dtype(dtype) -> np.dtype | None:
    try:
        return np.dtype(dtype) if dtype is not None else None
    except TypeError:
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
    """Model proto without big weights: large constants become typed graph inputs."""
    graph = model.graph
    big = [t for t in graph.tensors().values() if isinstance(t, gs.Constant) and t.values.size > _INLINE_LIMIT]
    saved = [(t, t.values) for t in big]
    try:
        for t in big:  # a 1-element stand-in keeps export cheap; dims are re-declared below
            t.values = np.zeros((1,), dtype=t.dtype)
        proto = to_proto(model)
    finally:
        for t, values in saved:
            t.values = values
    names = {t.name: t for t in big}
    kept = [init for init in proto.graph.initializer if init.name not in names]
    del proto.graph.initializer[:]
    proto.graph.initializer.extend(kept)
    for name, t in names.items():
        elem = onnx.helper.np_dtype_to_tensor_dtype(np.dtype(t.dtype))
        proto.graph.input.append(onnx.helper.make_tensor_value_info(name, elem, list(t.shape)))
    for vi in proto.graph.input:
        if vi.name in input_shapes:
            shape = vi.type.tensor_type.shape
            del shape.dim[:]
            for d in input_shapes[vi.name]:
                shape.dim.add().dim_value = int(d)
    if input_shapes:
        _forget_body_declarations(proto.graph)
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
