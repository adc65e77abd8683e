"""Loading and saving models: the only place where ONNX protobuf becomes IR and back.

A :class:`Model` is an onnx-graphsurgeon ``Graph`` plus the model-level fields that graphsurgeon
does not carry (IR version, metadata, producer, opset imports of other domains).

Guarantees:
- ``load`` never modifies the input; ``Constant`` nodes become graph constants, so passes see every
  weight the same way whatever the exporter did (Paddle2ONNX stores all weights as Constant nodes).
- External data is resolved relative to the model's folder and refused when its ``location`` is
  absolute or escapes the folder (``..``).
- ``save`` writes to a temporary file in the destination folder, checks it with
  ``onnx.checker.check_model(full_check=True)``, then renames it into place: a failed save leaves
  no file behind, and the destination is either the old file or the complete new one.
"""
from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Union

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from google.protobuf.message import DecodeError

from graphc.errors import InputError, ModelError, OutputError, UnsafeModelError
from graphc.ir.structure import check_structure

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

    @property
    def opset(self) -> int:
        """Version of the default ONNX domain."""
        return int(self.graph.opset)

    def copy(self) -> "Model":
        """A deep-enough copy: a new graph (tensors shared by value), same model fields."""
        return from_proto(to_proto(self), source=self.source)


# ---------------------------------------------------------------------------------------------
# loading


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
        data = path.read_bytes()
    except OSError as exc:
        raise InputError(f"{path}: cannot read ({exc.strerror})") from None
    proto = _parse_bytes(data, str(path))
    _load_external_data(proto, path.parent)
    return from_proto(proto, source=path, check=check)


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


def _external_tensors(proto: onnx.ModelProto):
    for tensor in onnx.external_data_helper._get_all_tensors(proto):
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            yield tensor


def _load_external_data(proto: onnx.ModelProto, base: Path) -> None:
    base = base.resolve()
    for tensor in _external_tensors(proto):
        info = {e.key: e.value for e in tensor.external_data}
        location = info.get("location", "")
        loc = Path(location)
        if not location or loc.is_absolute() or ".." in loc.parts:
            raise UnsafeModelError(
                f"tensor '{tensor.name}': external data location '{location}' is absolute or leaves "
                "the model's folder; refused"
            )
        target = (base / loc).resolve()
        if base not in target.parents:
            raise UnsafeModelError(
                f"tensor '{tensor.name}': external data location '{location}' resolves outside the "
                "model's folder; refused"
            )
        if not target.is_file():
            raise InputError(f"tensor '{tensor.name}': external data file '{location}' is missing")
        offset = int(info.get("offset", 0))
        length = int(info["length"]) if "length" in info else None
        size = target.stat().st_size
        if offset > size or (length is not None and offset + length > size):
            raise InputError(
                f"tensor '{tensor.name}': external data '{location}' is shorter than offset+length"
            )
    try:
        onnx.load_external_data_for_model(proto, str(base))
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read external data: {exc}") from None


def from_proto(proto: onnx.ModelProto, *, source: Path | None = None, check: bool = True) -> Model:
    """Build the IR from a ModelProto (external data already loaded)."""
    if len(proto.graph.node) == 0:
        raise ModelError("the graph has no nodes (empty graph)")
    try:
        graph = gs.import_onnx(proto)
    except Exception as exc:  # graphsurgeon raises bare exceptions on malformed protos
        raise ModelError(f"cannot import graph: {type(exc).__name__}: {exc}") from None
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
    )
    constant_nodes_to_constants(graph)
    if check:
        check_structure(graph)
    return model


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
        graph.nodes.remove(node)
        replaced += 1
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


def to_proto(model: Model) -> onnx.ModelProto:
    """Export the IR to a ModelProto with the model-level fields restored."""
    graph = model.graph
    try:
        proto = gs.export_onnx(graph, do_type_check=False)
    except Exception as exc:
        raise ModelError(f"cannot export graph: {type(exc).__name__}: {exc}") from None
    # Intermediate shapes recorded by exporters go stale when passes change channel counts;
    # onnxruntime re-infers them, so the output carries only inputs' and outputs' declarations.
    del proto.graph.value_info[:]
    opsets = dict(model.opset_imports)
    opsets[""] = int(graph.opset)
    for node in graph.nodes:
        if node.domain and node.domain not in ("ai.onnx",) and node.domain not in opsets:
            opsets[node.domain] = 1
    del proto.opset_import[:]
    for domain, version in sorted(opsets.items()):
        proto.opset_import.append(onnx.helper.make_opsetid(domain, version))
    proto.ir_version = max(model.ir_version, _min_ir_version(opsets[""]))
    proto.producer_name = model.producer_name
    proto.producer_version = model.producer_version
    proto.domain = model.domain
    proto.model_version = model.model_version
    proto.doc_string = model.doc_string
    del proto.metadata_props[:]
    for key, value in sorted(model.metadata.items()):
        proto.metadata_props.append(onnx.StringStringEntryProto(key=key, value=value))
    return proto


def _min_ir_version(opset: int) -> int:
    table = [(21, 10), (19, 9), (15, 8), (13, 7), (11, 6), (10, 5), (9, 4), (8, 3)]
    for min_opset, ir in table:
        if opset >= min_opset:
            return ir
    return 3


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
    _check_destination(model, out)
    proto = to_proto(model)
    if external_data is None:
        external_data = _weights_nbytes(proto) > EXTERNAL_DATA_THRESHOLD
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.") as tmp:
        tmp_model = Path(tmp) / out.name
        data_name = f"{out.name}.data"
        _write_proto(proto, tmp_model, data_name if external_data else None)
        if check:
            _full_check(tmp_model)
        if external_data and (Path(tmp) / data_name).exists():
            os.replace(Path(tmp) / data_name, out.parent / data_name)
        os.replace(tmp_model, out)
    return out


def _check_destination(model: Model, out: Path) -> None:
    if not out.parent.is_dir():
        raise OutputError(f"{out}: folder '{out.parent}' does not exist")
    if out.is_dir():
        raise OutputError(f"{out}: is a folder")
    if model.source is not None and out.exists():
        with contextlib.suppress(OSError):
            if out.samefile(model.source):
                raise OutputError(f"{out}: refusing to overwrite the input model")


def _weights_nbytes(proto: onnx.ModelProto) -> int:
    return sum(len(t.raw_data) for t in onnx.external_data_helper._get_all_tensors(proto))


def _write_proto(proto: onnx.ModelProto, path: Path, data_name: str | None) -> None:
    try:
        if data_name is None:
            with open(path, "wb") as fh:
                fh.write(proto.SerializeToString())
                fh.flush()
                os.fsync(fh.fileno())
        else:
            onnx.save_model(
                proto,
                str(path),
                save_as_external_data=True,
                all_tensors_to_one_file=True,
                location=data_name,
                size_threshold=0,
            )
    except ValueError as exc:  # protobuf refuses > 2 GiB
        raise OutputError(f"cannot serialize model: {exc}") from None
    except OSError as exc:
        raise OutputError(f"{path.parent}: cannot write ({exc.strerror})") from None


def _full_check(path: Path) -> None:
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"result fails onnx.checker (full_check): {first}") from None


def model_bytes(model: Model) -> bytes:
    """Serialized model for in-memory use (onnxruntime sessions); refuses > 2 GiB."""
    proto = to_proto(model)
    if proto.ByteSize() > PROTOBUF_LIMIT:
        raise OutputError("model is larger than 2 GiB; save it with external data instead")
    return proto.SerializeToString()


def file_size(path: str | os.PathLike) -> int:
    """Size on disk of a model including its external data files."""
    path = Path(path)
    total = path.stat().st_size
    proto = onnx.load(str(path), load_external_data=False)
    seen = set()
    for tensor in _external_tensors(proto):
        loc = {e.key: e.value for e in tensor.external_data}.get("location")
        if loc and loc not in seen and (path.parent / loc).is_file():
            seen.add(loc)
            total += (path.parent / loc).stat().st_size
    return total


def copy_file(src: Path, dst: Path) -> None:
    """Copy a model file atomically (used when a pipeline changes nothing)."""
    with tempfile.NamedTemporaryFile(dir=dst.parent, prefix=f".{dst.name}.", delete=False) as tmp:
        shutil.copyfile(src, tmp.name)
    os.replace(tmp.name, dst)
