"""Load-time repair of what a model declares about its tensors' shapes, and the checks that need shapes.

onnxruntime re-infers every shape and runs models whose declarations are missing or wrong;
``onnx.checker`` (which ``save`` runs on every result) does not. So that the result check only fails
on problems the passes introduced, ``load`` repairs what is safe to repair, on the IR it builds
(the input proto and file are never modified), and says so with one warning line per kind of fix:

- a graph output declared without a shape (what onnx-graphsurgeon and
  ``make_tensor_value_info(name, FLOAT, None)`` write; the checker requires the field) gets the
  shape ONNX shape inference computes for it;
- a declared shape that contradicts inference (a different rank, or a static dim that differs:
  literal 0 dims where the real dim is 576, an output declared [1, seqlen] that is (T, 1, 8210))
  is replaced by the inferred one on graph outputs and dropped on intermediate value-info.

A declaration contradicts inference only where both are definite: symbolic or unknown dims on
either side agree with anything. Graph inputs are the model's interface and are never changed.

Then, with the inferred shapes: every Conv/ConvTranspose ``group`` divides its input's channel
count (onnxruntime refuses the model otherwise; a :class:`ModelError` at load). And the repaired
model goes through ``onnx.checker.check_model(full_check=True)``: a model that still fails it (an
output of a custom op with no shape, which inference cannot give one) can be inspected and
analysed, but no valid result can be written from it, so ``Repairs.checker_error`` says why and
``graphc opt`` refuses it before any pass runs, instead of failing at the final check.

Inference runs on a light copy of the graph: large initializers become typed graph inputs (their
values are never read by shape inference except for small integer shape tensors, which stay), so
a model over 2 GiB is not copied.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Mapping

import numpy as np
import onnx
from onnx import TensorProto

from graphc.errors import ModelError

log = logging.getLogger(__name__)

#: initializers up to this many elements keep their values for inference (shape tensors).
_INFERENCE_VALUE_ELEMENTS = 1 << 16

Dims = list  # int (static), str (symbolic) or None (unknown) per dim


@dataclass
class Repairs:
    """What load changes in the declarations: tensor name -> new shape (None drops it)."""

    shapes: dict[str, Dims | None] = field(default_factory=dict)
    filled: list[str] = field(default_factory=list)
    replaced: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    #: the first line of onnx.checker's complaint about the repaired input, if any.
    checker_error: str | None = None

    def log(self) -> None:
        for names, what in ((self.filled, "graph output(s) declared without a shape; filled from shape "
                                          "inference"),
                            (self.replaced, "graph output shape(s) contradict shape inference; replaced"),
                            (self.dropped, "value-info shape(s) contradict shape inference; dropped")):
            if names:
                log.warning("input: %d %s: %s", len(names), what, _listed(names))
        if self.checker_error:  # INFO: opt refuses such a model with this reason in its one error line
            log.info("input: fails onnx.checker (full_check) even after repairs: %s", self.checker_error)


def _listed(names: list[str], limit: int = 5) -> str:
    shown = ", ".join(f"'{n}'" for n in names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def repair_declarations(proto: onnx.ModelProto, outside: Mapping[str, np.ndarray],
                        order: list[int] | None = None) -> Repairs:
    """Infer shapes on a light copy of ``proto``, decide the repairs, check groups and the
    repaired model. ``outside`` holds top-level weights ``load`` kept out of the proto; ``order``
    is a topological order of the top-level nodes by position (onnxruntime sorts the nodes
    itself; the checker requires them sorted)."""
    light = _light_copy(proto, outside, order)
    declared_outputs = {o.name: _dims(o.type) for o in proto.graph.output}
    declared_info = {v.name: _dims(v.type) for v in proto.graph.value_info}
    for out in light.graph.output:
        out.type.tensor_type.ClearField("shape")
    inferred, strict_error = _infer(light)
    types = {v.name: v.type for v in [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]}
    repairs = _decide(declared_outputs, declared_info, types)
    check_groups(proto.graph, types)
    repairs.checker_error = strict_error or _checker_error(light, list(proto.graph.output), inferred, repairs)
    return repairs


def _infer(light: onnx.ModelProto) -> tuple[onnx.ModelProto, str | None]:
    """Shapes as the full checker infers them (strict, types checked), and its complaint if it has
    one; then again leniently, for the repairs. The outputs carry no declared shapes, so strict
    inference only fails on what the repairs cannot fix, and the full check of the repaired model
    reduces to this plus the plain checker."""
    try:
        return onnx.shape_inference.infer_shapes(light, check_type=True, strict_mode=True), None
    except (onnx.shape_inference.InferenceError, onnx.checker.ValidationError) as exc:
        strict_error = _first_line(exc)
    try:
        return onnx.shape_inference.infer_shapes(light, strict_mode=False), strict_error
    except (onnx.shape_inference.InferenceError, onnx.checker.ValidationError, RuntimeError) as exc:
        raise ModelError(f"shape inference fails on the input: {_first_line(exc)}") from None


def _light_copy(proto: onnx.ModelProto, outside: Mapping[str, np.ndarray],
                order: list[int] | None) -> onnx.ModelProto:
    light = onnx.ModelProto(ir_version=proto.ir_version)
    light.opset_import.extend(proto.opset_import)
    light.functions.extend(proto.functions)
    graph = light.graph
    graph.name = proto.graph.name
    nodes = proto.graph.node
    graph.node.extend(nodes if order is None else (nodes[i] for i in order))
    graph.input.extend(proto.graph.input)
    graph.output.extend(proto.graph.output)
    listed = {i.name for i in proto.graph.input}
    for tensor in proto.graph.initializer:
        if _keeps_values(tensor):
            graph.initializer.append(tensor)
        elif tensor.name not in listed:
            graph.input.append(onnx.helper.make_tensor_value_info(tensor.name, tensor.data_type, list(tensor.dims)))
    for name, values in outside.items():
        if name not in listed:
            graph.input.append(onnx.helper.make_tensor_value_info(
                name, onnx.helper.np_dtype_to_tensor_dtype(values.dtype), list(values.shape)))
    graph.sparse_initializer.extend(proto.graph.sparse_initializer)
    return light


def _keeps_values(tensor: TensorProto) -> bool:
    count = int(np.prod(tensor.dims)) if tensor.dims else 1
    small = tensor.ByteSize() < 1024 if count <= 256 else False
    integer = tensor.data_type in (TensorProto.INT64, TensorProto.INT32)
    return small or (integer and count <= _INFERENCE_VALUE_ELEMENTS)


def _dims(type_proto: onnx.TypeProto) -> Dims | None:
    """A tensor type's dims (None when it has no shape, or is not a tensor)."""
    if type_proto.WhichOneof("value") != "tensor_type" or not type_proto.tensor_type.HasField("shape"):
        return None
    return [d.dim_value if d.HasField("dim_value") else d.dim_param if d.HasField("dim_param") else None
            for d in type_proto.tensor_type.shape.dim]


def contradicts(declared: Dims, inferred: Dims) -> bool:
    """True if both shapes are definite somewhere and disagree there (rank, or a static dim)."""
    if len(declared) != len(inferred):
        return True
    return any(isinstance(a, int) and isinstance(b, int) and a != b for a, b in zip(declared, inferred))


def _decide(outputs: dict[str, Dims | None], info: dict[str, Dims | None],
            types: dict[str, onnx.TypeProto]) -> Repairs:
    repairs = Repairs()
    for name, declared in outputs.items():
        inferred = _dims(types[name]) if name in types else None
        if inferred is None:
            continue
        if declared is None:
            repairs.filled.append(name)
        elif contradicts(declared, inferred):
            repairs.replaced.append(name)
        else:
            continue
        repairs.shapes[name] = inferred
    for name, declared in info.items():
        inferred = _dims(types[name]) if name in types else None
        if declared is not None and inferred is not None and contradicts(declared, inferred):
            repairs.dropped.append(name)
            repairs.shapes[name] = None
    return repairs


def check_groups(graph: onnx.GraphProto, types: Mapping[str, onnx.TypeProto]) -> None:
    """Every Conv/ConvTranspose ``group`` divides the channel count of its input (dim 1)."""
    for node in graph.node:
        if node.op_type not in ("Conv", "ConvTranspose") or node.domain not in ("", "ai.onnx"):
            continue
        group = next((a.i for a in node.attribute if a.name == "group"), 1)
        dims = _dims(types[node.input[0]]) if node.input[0] in types else None
        channels = dims[1] if dims and len(dims) > 1 else None
        if isinstance(channels, int) and channels > 0 and group > 0 and channels % group:
            label = f"{node.op_type} '{node.name}'" if node.name else f"{node.op_type} node"
            raise ModelError(f"{label}: group {group} does not divide the {channels} channels of its "
                             f"input '{node.input[0]}'")


def _checker_error(light: onnx.ModelProto, original: list, inferred: onnx.ModelProto,
                   repairs: Repairs) -> str | None:
    """The plain checker on the light copy with the output declarations after repair (strict
    inference already ran in :func:`_infer`)."""
    inferred_outputs = {o.name: o for o in inferred.graph.output}
    outputs = [inferred_outputs[o.name] if o.name in repairs.shapes else o for o in original]
    del light.graph.output[:]
    light.graph.output.extend(outputs)
    try:
        onnx.checker.check_model(light)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        return _first_line(exc)
    return None


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
