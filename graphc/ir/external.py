"""External data: safe loading without copies, and file naming that keeps saves atomic.

Loading. Every ``location`` must be relative and stay inside the model's folder (absolute paths,
``..`` and NUL bytes are refused: a model file must not read files elsewhere). Top-level numeric
initializers are memory-mapped copy-on-write (``np.memmap(mode="c")``) instead of being read into
the protobuf and then copied again by graphsurgeon: the weights are held once, the input files
can never be written through the map, and a pass that rewrites a weight pays only for the new
array. Other external tensors (inside subgraphs, graph inputs, exotic dtypes) are read by onnx.

Saving. The data file is named after the output and a digest of what it holds,
``<model>.<digest12>.data``: it is renamed into place first, the model file last (the atomic
switch), and data files of earlier saves of the same output are removed afterwards. An interrupt
at any moment leaves either the old pair or the new one, never the new data with the old model;
the same model saved twice gives byte-identical files.
"""
from __future__ import annotations

import hashlib
import logging
import re
from math import prod
from pathlib import Path
from typing import Callable

import numpy as np
import onnx

from google.protobuf.message import DecodeError

from graphc.errors import InputError, UnsafeModelError
from graphc.ir import weight_io

log = logging.getLogger(__name__)

_NUMERIC = {
    onnx.TensorProto.FLOAT: np.float32, onnx.TensorProto.DOUBLE: np.float64,
    onnx.TensorProto.FLOAT16: np.float16, onnx.TensorProto.INT8: np.int8,
    onnx.TensorProto.UINT8: np.uint8, onnx.TensorProto.INT16: np.int16,
    onnx.TensorProto.UINT16: np.uint16, onnx.TensorProto.INT32: np.int32,
    onnx.TensorProto.UINT32: np.uint32, onnx.TensorProto.INT64: np.int64,
    onnx.TensorProto.UINT64: np.uint64, onnx.TensorProto.BOOL: np.bool_,
}


def external_tensors(proto: onnx.ModelProto):
    for tensor in onnx.external_data_helper._get_all_tensors(proto):
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            yield tensor


def _entry(tensor: onnx.TensorProto, base: Path) -> tuple[Path, int, int | None]:
    """(file, offset, length) of an external tensor, checked to stay inside ``base``."""
    info = {e.key: e.value for e in tensor.external_data}
    location = info.get("location", "")
    where = f"tensor '{tensor.name}'"
    if not location or "\x00" in location or Path(location).is_absolute() or ".." in Path(location).parts:
        raise UnsafeModelError(f"{where}: external data location {location!r} is absolute or leaves "
                               "the model's folder; refused")
    target = (base / location).resolve()
    if base not in target.parents:
        raise UnsafeModelError(f"{where}: external data location {location!r} resolves outside the "
                               "model's folder; refused")
    if not target.is_file():
        raise InputError(f"{where}: external data file {location!r} is missing")
    try:
        offset = int(info.get("offset", 0))
        length = int(info["length"]) if "length" in info else None
    except ValueError:
        raise InputError(f"{where}: external data offset/length is not a number") from None
    size = target.stat().st_size
    if offset < 0 or (length is not None and length < 0) or offset > size or \
            (length is not None and offset + length > size):
        raise InputError(f"{where}: external data {location!r} is shorter than offset+length")
    return target, offset, length


def referenced_files(path: Path) -> list[Path]:
    """The external-data files the model at ``path`` references, read from its structure only
    (inline weights are skipped, not parsed). Locations that are unsafe or missing are left out:
    loading refuses them. A file that does not parse references nothing (loading says why)."""
    try:
        proto = onnx.ModelProto.FromString(weight_io.split_model_file(path)[0])
    except (OSError, weight_io.WireError, DecodeError, RuntimeError, ValueError):
        return []
    files = {}
    for tensor in external_tensors(proto):
        try:
            target = _entry(tensor, path.parent.resolve())[0]
        except (InputError, UnsafeModelError, OSError, ValueError):
            continue
        files.setdefault(target, None)
    return list(files)


def load_external(proto: onnx.ModelProto, base: Path) -> tuple[dict[str, np.ndarray], set[Path]]:
    """Resolve the external data of ``proto`` (in place). Returns the memory-mapped top-level
    weights (left out of the proto) and the set of files read."""
    base = base.resolve()
    files = {_entry(tensor, base)[0] for tensor in external_tensors(proto)}
    if not files:
        return {}, files
    mapped = _map_top_level(proto, base)
    try:
        onnx.load_external_data_for_model(proto, str(base))
    except (OSError, ValueError, onnx.checker.ValidationError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"cannot read external data: {first}") from None
    return mapped, files


def _map_top_level(proto: onnx.ModelProto, base: Path) -> dict[str, np.ndarray]:
    graph = proto.graph
    has_subgraphs = any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
                        for n in graph.node for a in n.attribute)
    inputs = {i.name for i in graph.input}
    names = [t.name for t in graph.initializer]
    if has_subgraphs or len(set(names)) != len(names):
        return {}
    mapped, kept = {}, []
    for tensor in graph.initializer:
        array = None
        # (protobuf wrappers have no stable identity: entries are recomputed, not looked up)
        if tensor.data_location == onnx.TensorProto.EXTERNAL and tensor.name not in inputs:
            array = _memmap(tensor, *_entry(tensor, base))
        if array is None:
            kept.append(tensor)
        else:
            mapped[tensor.name] = array
    if mapped:
        del graph.initializer[:]
        graph.initializer.extend(kept)
    return mapped


def _memmap(tensor: onnx.TensorProto, path: Path, offset: int, length: int | None) -> np.ndarray | None:
    dtype = _NUMERIC.get(tensor.data_type)
    shape = tuple(int(d) for d in tensor.dims)
    if dtype is None or any(d < 0 for d in shape):
        return None
    dtype = np.dtype(dtype).newbyteorder("<")
    nbytes = prod(shape) * dtype.itemsize
    if nbytes == 0:
        return None
    if length is not None and length != nbytes:
        raise InputError(f"tensor '{tensor.name}': external data length {length} does not match its "
                         f"shape {list(shape)} ({nbytes} bytes)")
    if offset + nbytes > path.stat().st_size:
        raise InputError(f"tensor '{tensor.name}': external data {path.name} is shorter than the tensor")
    return np.memmap(path, dtype=dtype, mode="c", offset=offset, shape=shape)


# ---------------------------------------------------------------------------------------------
# saving


def data_file_name(model_name: str, proto: onnx.ModelProto, weights: list[tuple[str, np.ndarray]]) -> str:
    """``<model>.<digest>.data``: the digest covers every byte that goes into the data file."""
    digest = hashlib.blake2b(digest_size=6)
    for init in proto.graph.initializer:
        digest.update(init.name.encode())
        digest.update(init.raw_data)
    for name, values in weights:
        digest.update(name.encode())
        try:
            digest.update(memoryview(np.ascontiguousarray(values)).cast("B"))
        except (TypeError, ValueError):
            digest.update(np.asarray(values).tobytes())
    return f"{model_name}.{digest.hexdigest()}.data"


def is_data_file_name(name: str, model_name: str) -> bool:
    """True when ``name`` is how a save of ``model_name`` names its external-data file."""
    return re.fullmatch(re.escape(model_name) + r"\.[0-9a-f]{12}\.data", name) is not None


def _stale_data_files(folder: Path, model_name: str, keep: str) -> list[Path]:
    return [p for p in folder.iterdir() if is_data_file_name(p.name, model_name) and p.name != keep]


def remove_stale_data(folder: Path, model_name: str, keep: str | None,
                      protected: Callable[[Path], bool]) -> None:
    """After the model switched: data files of earlier saves of this output are unreferenced.
    Files for which ``protected`` is true (what the model in memory was loaded from, seen through
    symlinks and hard links) are never removed."""
    for path in _stale_data_files(folder, model_name, keep or ""):
        if protected(path):
            continue
        try:
            path.unlink()
        except OSError as exc:
            log.warning("could not remove stale data file %s: %s", path, exc)
