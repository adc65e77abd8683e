"""Loading and saving models: the only place where ONNX protobuf becomes IR and back.

A :class:`Model` is an onnx-graphsurgeon ``Graph`` plus the model-level fields that graphsurgeon
does not carry (IR version, metadata, producer, opset imports of other domains).

Guarantees:
- ``load`` never modifies the input; ``Constant`` nodes become graph constants, so passes see every
  weight the same way whatever the exporter did (Paddle2ONNX stores all weights as Constant nodes).
- What can be checked at load is checked at load (:mod:`graphc.ir.validate`; a graph with no
  outputs is refused), and shape declarations onnxruntime ignores but the checker enforces are
  repaired, one warning per kind (:mod:`graphc.ir.declarations`).
- Graph inputs that have an initializer (IR >= 4: a default the caller may override) stay graph
  inputs, and their defaults are written back with them.
- Model-local functions are inlined (:mod:`graphc.ir.functions`), as onnxruntime does, so
  passes reach the nodes inside them; inputs and outputs are kept.
- External data is resolved relative to the model's folder and refused when its ``location`` is
  absolute or escapes the folder (``..``).
- ``save`` writes to a temporary file in the destination folder, checks it with
  ``onnx.checker.check_model(full_check=True)``, then renames it into place: a failed save leaves
  no file behind, and the destination is either the old file or the complete new one.
- ``save`` never writes over or removes the file a model was loaded from or its external data
  (seen through symlinks and hard links), and removes only the leftover temporary folders it
  can prove it created (:mod:`graphc.ir.output_safety`).

Memory: large top-level weights move between the file and numpy arrays without protobuf copies
(:mod:`graphc.ir.weight_io`), so a loaded model costs about its weights once, and saving adds no
copy of them. The saved file is checked through a twin: the written file's own bytes, re-read at
wire level, with the large weights' data referenced in place as external data (the checker
validates structure, types and shapes; it never needed the weights' values, and parsing them
again would hold a second copy of the model).
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Union

import ml_dtypes
import numpy as np
import onnx
import onnx.numpy_helper
import onnx_graphsurgeon as gs
from onnx_graphsurgeon.exporters.onnx_exporter import OnnxExporter
from onnx_graphsurgeon.ir.tensor import LazyValues
from google.protobuf.message import DecodeError

from graphc.errors import InputError, ModelError, OutputError, UnsafeModelError
from graphc.ir import declarations, external, weight_io
from graphc.ir.collector import collector_paused
from graphc.ir.functions import inline_functions
from graphc.ir.output_safety import (OutputPlan, ProtectedFiles, TempFolder, check_writable,
                                      remove_abandoned_temp)
from graphc.ir.structure import check_structure, find_cycle_free_order
from graphc.ir.subgraphs import walk_graphs
from graphc.ir.usedef import drop_detached
from graphc.ir.validate import validate_proto

log = logging.getLogger(__name__)

#: protobuf cannot serialize a message over 2 GiB; above this, weights go to external data.
PROTOBUF_LIMIT = 2**31 - 1
#: margin so that graph structure plus weights stays below the protobuf limit.
EXTERNAL_DATA_THRESHOLD = 1_800_000_000

ModelSource = Union[str, os.PathLike, bytes, onnx.ModelProto]


@dataclass
class Model:
    """A loaded model: the graph passes work on, and what the file says about itself."""

    graph: gs.Graph
    ir_version: int
    opset_imports: dict[str, int]
    producer_name: str = ""
    producer_version: str = ""
    domain: str = ""
    model_version: int = 0
    doc_string: str = ""
    metadata: dict[str, str] = field(default_factory=dict)
    source: Path | None = None
    #: external data files the model was loaded from (never overwritten or removed by save).
    external_files: frozenset[Path] = frozenset()
    #: graph inputs that have an initializer default (IR >= 4), by name: they stay inputs, and
    #: the default is written back with them (callers may feed them or leave them out).
    input_defaults: dict[str, np.ndarray] = field(default_factory=dict)
    #: why the input (after load's repairs) fails onnx.checker, if it does: no valid result can be
    #: saved from it (see :func:`require_savable`).
    checker_error: str | None = None

    @property
    def opset(self) -> int:
        """Version of the default ONNX domain."""
        return int(self.graph.opset)

    def copy(self) -> "Model":
        """A deep-enough copy: a new graph (tensors shared by value), same model fields."""
        copied = from_proto(to_proto(self), source=self.source, infer=False)
        copied.external_files = self.external_files
        copied.checker_error = self.checker_error
        return copied


# ---------------------------------------------------------------------------------------------
# loading


@collector_paused()
def load(src: ModelSource, *, check: bool = True) -> Model:
    """Load a model from a path, bytes or ModelProto. Raises :class:`InputError` / :class:`ModelError`."""
    if isinstance(src, onnx.ModelProto):
        return from_proto(src, check=check)
    if isinstance(src, (bytes, bytearray)):
        return from_proto(_parse_bytes(bytes(src), "<bytes>"), check=check)
    path = Path(src)
    if not path.exists():
        raise InputError(f"{path}: no such file")
    if not path.is_file():
        raise InputError(f"{path}: not a file")
    try:
        proto, weights = _read_model(path)
    except OSError as exc:
        raise InputError(f"{path}: cannot read ({exc.strerror})") from None
    mapped, files = external.load_external(proto, path.parent)
    model = from_proto(proto, source=path, check=check, weights={**weights, **mapped})
    model.external_files = frozenset(files)
    return model


def _read_model(path: Path) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """The model at ``path``: a proto, and the values of large top-level initializers read
    straight from the file into arrays (left out of the proto). Files that do not split at wire
    level are parsed whole by protobuf, which reports what is wrong with them."""
    try:
        light, raw = weight_io.split_model_file(path)
        proto = _parse_bytes(light, str(path))
    except weight_io.CorruptTensorError as exc:
        raise InputError(f"{path}: {exc}") from None
    except (weight_io.WireError, InputError):
        return _parse_bytes(path.read_bytes(), str(path)), {}
    outside = _weights_kept_outside(proto, raw)
    weights = {}
    with open(path, "rb") as fh:
        for tensor in raw:
            values = weight_io.read_raw(fh, tensor)
            if tensor.name in outside:
                weights[tensor.name] = values
            else:
                proto.graph.initializer.append(weight_io.raw_tensor_proto(tensor, values))
    return proto, weights


def _weights_kept_outside(proto: onnx.ModelProto, raw: list) -> set[str]:
    """Names of split-off initializers that may stay out of the proto: not graph inputs, not
    duplicated, and no subgraphs that could read them from an inner scope. The others go back
    into the proto, so validation and graphsurgeon see them exactly as in the file."""
    names = [t.name for t in raw]
    inline = {t.name for t in proto.graph.initializer}
    subgraphs = any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
                    for n in proto.graph.node for a in n.attribute)
    if subgraphs or len(set(names)) != len(names) or inline.intersection(names):
        return set()
    return set(names) - {i.name for i in proto.graph.input}


def _parse_bytes(data: bytes, what: str) -> onnx.ModelProto:
    if not data:
        raise InputError(f"{what}: empty file, not an ONNX model")
    proto = onnx.ModelProto()
    try:
        proto.ParseFromString(data)
    except (DecodeError, RuntimeError, ValueError) as exc:
        raise InputError(f"{what}: not an ONNX model (protobuf does not parse: {exc})") from None
    if not proto.HasField("graph") or not proto.opset_import:
        raise InputError(f"{what}: not an ONNX model (no graph or no opset_import)")
    return proto


def from_proto(proto: onnx.ModelProto, *, source: Path | None = None, check: bool = True,
               weights: dict[str, np.ndarray] | None = None, infer: bool = True) -> Model:
    """Build the IR from a ModelProto (external data already loaded). ``weights`` are values of
    top-level initializers that ``proto`` leaves out (see ``load``). With ``check``, the proto is
    validated and (``infer``) its shape declarations repaired (:mod:`graphc.ir.declarations`)."""
    if len(proto.graph.node) == 0:
        raise ModelError("the graph has no nodes (empty graph)")
    if len(proto.graph.output) == 0:
        raise ModelError("the graph has no outputs (nothing it computes could be used)")
    if check:
        validate_proto(proto, {name: values.shape for name, values in (weights or {}).items()})
    proto, inlined = inline_functions(proto)
    inlined.log()
    try:
        graph = gs.import_onnx(proto)
    except Exception as exc:  # graphsurgeon raises bare exceptions on malformed protos
        raise ModelError(f"cannot import graph: {type(exc).__name__}: {exc}") from None
    if weights:
        _attach_weights(graph, weights)
    checker_error = None
    if check:
        check_structure(graph)
        if infer:  # graphsurgeon keeps the file's node order: positions map back to the proto
            position = {id(n): i for i, n in enumerate(graph.nodes)}
            order = [position[id(n)] for n in find_cycle_free_order(graph)]
            repairs = declarations.repair_declarations(proto, weights or {}, order)
            _apply_repairs(graph, repairs)
            checker_error = repairs.checker_error
    defaults = _inputs_with_defaults(proto, graph)
    opsets = {imp.domain or "": int(imp.version) for imp in proto.opset_import}
    if "" not in opsets and "ai.onnx" in opsets:
        opsets[""] = opsets.pop("ai.onnx")
    model = Model(
        graph=graph,
        ir_version=int(proto.ir_version),
        opset_imports=opsets,
        producer_name=proto.producer_name,
        producer_version=proto.producer_version,
        domain=proto.domain,
        model_version=int(proto.model_version),
        doc_string=proto.doc_string,
        metadata={p.key: p.value for p in proto.metadata_props},
        source=source,
        input_defaults=defaults,
        checker_error=checker_error,
    )
    for _, scope in walk_graphs(graph):
        constant_nodes_to_constants(scope)
    return model


def require_savable(model: Model) -> None:
    """Refuse, before any work, a model whose results could never pass the final check."""
    if model.checker_error:
        where = f"{model.source}: " if model.source else ""
        raise ModelError(f"{where}the input fails onnx.checker (full_check) even after graphc's repairs, "
                         f"so no valid result can be written: {model.checker_error}")


def _inputs_with_defaults(proto: onnx.ModelProto, graph: gs.Graph) -> dict[str, np.ndarray]:
    """Graph inputs that also have an initializer (IR >= 4: the initializer is a default the
    caller may override). graphsurgeon imports them as constants; they become graph inputs
    again, in the file's order, and the defaults are kept on the Model for export. In IR < 4
    every initializer had to be listed as an input: those stay constants."""
    if proto.ir_version < 4:
        return {}
    inits = {t.name for t in proto.graph.initializer}
    names = [i.name for i in proto.graph.input if i.name in inits]
    if not names:
        return {}
    tensors = graph.tensors()
    defaults: dict[str, np.ndarray] = {}
    for name in names:
        tensor = tensors.get(name)
        if not isinstance(tensor, gs.Constant):
            continue
        defaults[name] = np.asarray(tensor.values)
        tensor.to_variable(dtype=defaults[name].dtype, shape=list(defaults[name].shape))
        tensor.type = "tensor_type"  # what Variable() sets and to_variable() does not
    by_name = {**{t.name: t for t in graph.inputs}, **{n: tensors[n] for n in defaults}}
    graph.inputs = [by_name[i.name] for i in proto.graph.input if i.name in by_name]
    return defaults


def _apply_repairs(graph: gs.Graph, repairs: declarations.Repairs) -> None:
    repairs.log()
    tensors = graph.tensors()
    for name, shape in repairs.shapes.items():
        tensor = tensors.get(name)
        if isinstance(tensor, gs.Variable):
            tensor.shape = shape


def _attach_weights(graph: gs.Graph, weights: dict[str, np.ndarray]) -> None:
    """graphsurgeon imported the nodes reading each weight with a producer-less Variable of its
    name; that Variable becomes the Constant. Weights nothing reads are dropped, as graphsurgeon
    drops unused initializers."""
    tensors = graph.tensors()
    for name, values in weights.items():
        tensor = tensors.get(name)
        if isinstance(tensor, gs.Variable) and not tensor.inputs:
            tensor.to_constant(values)


def constant_nodes_to_constants(graph: gs.Graph) -> int:
    """Replace ``Constant`` nodes by graph constants; returns how many were replaced.

    A Constant whose output is a graph output stays a node (an output must be a Variable).
    """
    outputs = {id(t) for t in graph.outputs}
    replaced = 0
    for node in list(graph.nodes):
        if node.op != "Constant" or node.domain not in (None, "", "ai.onnx") or len(node.outputs) != 1:
            continue
        out = node.outputs[0]
        if id(out) in outputs:
            continue
        values = _constant_node_value(node)
        if values is None:
            continue
        node.outputs.clear()
        out.to_constant(values)
        replaced += 1
    if replaced:  # one filter for all of them: list.remove per node is quadratic
        drop_detached(graph)
    return replaced


def _constant_node_value(node: gs.Node) -> np.ndarray | None:
    attrs = node.attrs
    if "value" in attrs and isinstance(attrs["value"], gs.Constant):
        return attrs["value"].values
    scalar_kinds = {
        "value_float": np.float32,
        "value_int": np.int64,
        "value_floats": np.float32,
        "value_ints": np.int64,
    }
    for key, dtype in scalar_kinds.items():
        if key in attrs:
            return np.asarray(attrs[key], dtype=dtype)
    return None  # sparse_value / strings: leave the node alone


# ---------------------------------------------------------------------------------------------
# saving


#: numpy dtypes ONNX packs two per byte; onnx-graphsurgeon 0.6 would export them one per byte.
_PACKED_DTYPES = frozenset(np.dtype(t) for t in (ml_dtypes.int4, ml_dtypes.uint4, ml_dtypes.float4_e2m1fn))


def _pack_subbyte_constants(graph: gs.Graph) -> None:
    """Hand 4-bit constants to the exporter as packed ONNX tensors (numpy_helper packs them)."""
    for tensor in graph.tensors().values():
        if isinstance(tensor, gs.Constant) and not isinstance(tensor._values, LazyValues) \
                and np.dtype(tensor.dtype) in _PACKED_DTYPES:
            tensor.values = LazyValues(onnx.numpy_helper.from_array(np.asarray(tensor.values), tensor.name))


def constant_proto(tensor: gs.Constant) -> onnx.TensorProto:
    """One constant as the export writes it (4-bit types packed two per byte; values read from a
    file are passed on as they were read, without a numpy round trip)."""
    if not isinstance(tensor._values, LazyValues) and np.dtype(tensor.dtype) in _PACKED_DTYPES:
        return onnx.numpy_helper.from_array(np.asarray(tensor.values), tensor.name)
    return OnnxExporter.export_tensor_proto(tensor)


@collector_paused()
def to_proto(model: Model) -> onnx.ModelProto:
    """Export the IR to a ModelProto with the model-level fields restored."""
    graph = model.graph
    _pack_subbyte_constants(graph)
    try:
        proto = gs.export_onnx(graph, do_type_check=False)
    except Exception as exc:
        raise ModelError(f"cannot export graph: {type(exc).__name__}: {exc}") from None
    _export_defaults(model, proto)
    # Intermediate shapes recorded by exporters go stale when passes change channel counts;
    # onnxruntime re-infers them, so the output carries only inputs' and outputs' declarations.
    del proto.graph.value_info[:]
    set_model_fields(model, proto)
    return proto


def set_model_fields(model: Model, proto: onnx.ModelProto) -> None:
    """Write what the model says about itself into ``proto``: opset imports (the graph's opset,
    and every domain a node uses), IR version, producer, doc string and metadata."""
    graph = model.graph
    opsets = dict(model.opset_imports)
    opsets[""] = int(graph.opset)
    for node in graph.nodes:
        if node.domain and node.domain not in ("ai.onnx",) and node.domain not in opsets:
            opsets[node.domain] = 1
    del proto.opset_import[:]
    for domain, version in sorted(opsets.items()):
        proto.opset_import.append(onnx.helper.make_opsetid(domain, version))
    # graphsurgeon does not list initializers among the graph inputs, which IR < 4 requires.
    proto.ir_version = max(model.ir_version, _min_ir_version(opsets[""]), 4)
    proto.producer_name = model.producer_name
    proto.producer_version = model.producer_version
    proto.domain = model.domain
    proto.model_version = model.model_version
    proto.doc_string = model.doc_string
    del proto.metadata_props[:]
    for key, value in sorted(model.metadata.items()):
        proto.metadata_props.append(onnx.StringStringEntryProto(key=key, value=value))


def _export_defaults(model: Model, proto: onnx.ModelProto) -> None:
    """The defaults of graph inputs that are still inputs, as initializers of the same name."""
    inputs = {i.name for i in proto.graph.input}
    for name, values in model.input_defaults.items():
        if name in inputs:
            proto.graph.initializer.append(onnx.numpy_helper.from_array(values, name))


def _min_ir_version(opset: int) -> int:
    table = [(21, 10), (19, 9), (15, 8), (13, 7), (11, 6), (10, 5), (9, 4), (8, 3)]
    for min_opset, ir in table:
        if opset >= min_opset:
            return ir
    return 3


@collector_paused()
def save(
    model: Model,
    path: str | os.PathLike,
    *,
    external_data: bool | None = None,
    check: bool = True,
) -> Path:
    """Write ``model`` to ``path`` atomically; returns the path written.

    ``external_data=None`` picks external data only when the model would not fit in protobuf.
    """
    out = Path(path)
    protected = ProtectedFiles.of_model(model.source, model.external_files)
    _check_destination(out, protected)
    proto, weights = _to_proto_and_weights(model)
    nbytes = _weights_nbytes(proto) + sum(values.nbytes for _, values in weights)
    if external_data is None:
        external_data = nbytes > EXTERNAL_DATA_THRESHOLD
    elif not external_data and proto.ByteSize() + sum(v.nbytes for _, v in weights) > PROTOBUF_LIMIT:
        raise OutputError("model is larger than 2 GiB; save it with external data instead")
    remove_abandoned_temp(out, protected)
    data_name = external.data_file_name(out.name, proto, weights) if external_data else None
    with TempFolder.create(out) as tmp:
        tmp_model = tmp / out.name
        _write_proto(proto, weights, tmp_model, data_name)
        del proto
        if check:
            _full_check(tmp_model, model.checker_error)
        if data_name is not None and (tmp / data_name).exists():
            os.replace(tmp / data_name, out.parent / data_name)
        os.replace(tmp_model, out)  # the atomic switch: old model+data, or new model+data
    external.remove_stale_data(out.parent, out.name, data_name,
                               lambda p: protected.find(p) is not None)
    return out


def _check_destination(out: Path, protected: ProtectedFiles) -> None:
    """Refuse, before any work, a destination that cannot be written or that would overwrite or
    remove what the model was loaded from (the output-safety rule)."""
    OutputPlan(protected).add_model(check_writable(out))


def _weights_nbytes(proto: onnx.ModelProto) -> int:
    return sum(len(t.raw_data) for t in onnx.external_data_helper._get_all_tensors(proto))


def _to_proto_and_weights(model: Model) -> tuple[onnx.ModelProto, list[tuple[str, np.ndarray]]]:
    """``to_proto`` without the large top-level weights, and those weights' arrays.

    They are exported as 1-element stand-ins that are then dropped, so no TensorProto copy of
    them is ever made; ``weight_io`` writes them from the arrays."""
    graph = model.graph
    io = {id(t) for t in graph.inputs + graph.outputs}
    large = [t for t in graph.tensors().values()
             if isinstance(t, gs.Constant) and id(t) not in io and isinstance(t._values, np.ndarray)
             and t.data_location in (None, onnx.TensorProto.DEFAULT)
             and getattr(t, "_export_dtype", None) in (None, t.dtype)
             and weight_io.streamable(t._values)]
    saved = [(t, t._values) for t in large]
    try:
        for t in large:
            t.values = np.zeros((1,), dtype=t.dtype)
        proto = to_proto(model)
    finally:
        for t, values in saved:
            t.values = values
    names = {t.name for t in large}
    kept = [init for init in proto.graph.initializer if init.name not in names]
    del proto.graph.initializer[:]
    proto.graph.initializer.extend(kept)
    return proto, [(t.name, values) for t, values in saved]


def _write_proto(proto: onnx.ModelProto, weights: list[tuple[str, np.ndarray]], path: Path,
                 data_name: str | None) -> None:
    """Write the model file (and the external data file): weights straight from their arrays."""
    try:
        if data_name is None:
            weight_io.write_model_file(proto, weights, path)
            return
        data_path = path.with_name(data_name)
        weight_io.write_external_data(proto, weights, data_path)
        # initializers protobuf still holds (small or unusual ones) go to the same file
        for tensor in onnx.external_data_helper._get_initializer_tensors(proto):
            if tensor.HasField("raw_data"):
                onnx.external_data_helper.set_external_data(tensor, data_name)
        onnx.external_data_helper.write_external_data_tensors(proto, str(path.parent))
        with open(path, "wb") as fh:
            fh.write(proto.SerializeToString())
            fh.flush()
            os.fsync(fh.fileno())
    except ValueError as exc:  # protobuf refuses > 2 GiB
        raise OutputError(f"cannot serialize model: {exc}") from None
    except OSError as exc:
        raise OutputError(f"{path.parent}: cannot write ({exc.strerror})") from None


def _full_check(path: Path, input_error: str | None = None) -> None:
    """``onnx.checker.check_model(full_check=True)`` on the written file, through its twin.

    The twin is the file's bytes re-read at wire level (which also proves the hand-written
    framing parses) with each large weight replaced by an external-data reference to where its
    bytes lie in the file: the checker sees the written structure, types and shapes without
    parsing the weights a second time."""
    target = path
    try:
        light, raw = weight_io.split_model_file(path)
    except weight_io.WireError as exc:
        raise ModelError(f"result does not read back: {exc}") from None
    if raw:
        twin = onnx.ModelProto.FromString(light)
        twin.graph.initializer.extend(weight_io.external_stub(t, path.name) for t in raw)
        target = path.with_name(f"{path.name}.twin")
        target.write_bytes(twin.SerializeToString())
    try:
        onnx.checker.check_model(str(target), full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        blame = " (the input fails it too)" if input_error == first else ""
        raise ModelError(f"result fails onnx.checker (full_check): {first}{blame}") from None
    finally:
        if target != path:
            target.unlink()


def model_bytes(model: Model) -> bytes:
    """Serialized model for in-memory use (onnxruntime sessions); refuses > 2 GiB."""
    proto = to_proto(model)
    if proto.ByteSize() > PROTOBUF_LIMIT:
        raise OutputError("model is larger than 2 GiB; save it with external data instead")
    return proto.SerializeToString()


def inline_file_size(model: Model) -> int:
    """Bytes of ``model`` saved as one file with its weights inline (what :func:`model_bytes`
    would return, any size), counted without serializing or copying the weights."""
    proto, weights = _to_proto_and_weights(model)
    return weight_io.model_file_size(proto, weights)


def file_size(path: str | os.PathLike) -> int:
    """Size on disk of a model including its external data files."""
    path = Path(path)
    total = path.stat().st_size
    try:  # only the structure is parsed: inline weights are skipped, not read
        proto = onnx.ModelProto.FromString(weight_io.split_model_file(path)[0])
    except (weight_io.WireError, DecodeError):
        proto = onnx.load(str(path), load_external_data=False)
    seen = set()
    for tensor in external.external_tensors(proto):
        loc = {e.key: e.value for e in tensor.external_data}.get("location")
        if loc and loc not in seen and (path.parent / loc).is_file():
            seen.add(loc)
            total += (path.parent / loc).stat().st_size
    return total

