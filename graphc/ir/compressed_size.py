"""Compressed size of a model: what it costs to ship, beyond its file bytes.

Four figures (:func:`compressed_size`):

- **file bytes**: the serialized model (protobuf, weights inline).
- **zlib bytes**: ``zlib.compress(file, 6)``, the deflate level zip and gzip use by default.
- **lzma bytes**: ``lzma.compress(file, preset=1)`` (xz; a fast preset: zstd is not a dependency
  of graphc, and stdlib lzma is the strong general-purpose coder at hand). Both general coders
  are skipped (None) above :data:`GENERAL_CODER_LIMIT` bytes, so ``inspect`` stays fast; the
  file bytes of a larger model are counted, not serialized (a model past protobuf's 2 GiB limit
  has them too, and its weights are never copied).
- **entropy-coded bytes**, the Deep Compression metric (Han et al. 2016): the graph without its
  weights as serialized (``file bytes - raw weight bytes``), plus every weight tensor coded by
  the cheapest of these encodings (:func:`tensor_code`):

  * ``dense``: its raw bytes, ``n * itemsize``;
  * ``codebook`` (at most :data:`MAX_SYMBOLS` distinct values: quantization codes, cluster
    indices, a clustered float weight): the Huffman-coded symbols, ``H(values)`` bits, plus the
    table, one entry per distinct value of ``itemsize + 1`` bytes (the value and its code length:
    a canonical Huffman code is rebuilt from the lengths alone);
  * ``sparse`` (some zeros): the positions of the nonzeros as Huffman-coded gaps
    ``g_i = p_i - p_{i-1} - 1`` (``p_0 = -1``) plus a gap table of ``4 + 1`` bytes per distinct
    gap, and the nonzero values themselves coded ``dense`` or ``codebook``, whichever is smaller.

  A stream of ``b`` bits costs ``ceil(b / 8)`` bytes. Cluster indices packed two to a byte
  (:mod:`graphc.ir.codebook`) are coded as the stream of their 4-bit symbols (at most their
  packed bytes), so packing shrinks the file but not the entropy-coded size.

Huffman size: for symbol counts ``f_s``, the optimal prefix code spends ``sum_s f_s * len_s``
bits, which equals the sum of the weights of the internal nodes of the Huffman tree (every
merge of two subtrees adds one bit to each occurrence beneath it): :func:`huffman_bits` sums
the merges. One distinct symbol still costs one bit per occurrence (a code needs a bit).
Example: counts ``(1, 1, 2)`` merge ``1 + 1 = 2`` then ``2 + 2 = 4``: 6 bits (lengths 2, 2, 1).
"""
from __future__ import annotations

import heapq
import lzma
import zlib
from dataclasses import dataclass, field, replace
from math import ceil
from typing import Iterable

import numpy as np
import onnx_graphsurgeon as gs

from graphc.ir.codebook import packed_nibbles
from graphc.ir.model import Model, inline_file_size, model_bytes
from graphc.ir.subgraphs import walk_graphs

#: most distinct values a tensor may have to be coded by a codebook (uint8 indices).
MAX_SYMBOLS = 256
#: leading values checked for more than MAX_SYMBOLS distinct ones before the whole tensor is sorted
PREFIX = 4096
#: bytes of one gap table entry: an int32 gap and its code length.
GAP_ENTRY_BYTES = 5
#: numpy dtypes ONNX stores two to a byte.
PACKED_4BIT = frozenset({"int4", "uint4", "float4_e2m1fn"})
#: the general-purpose coders run only on files up to this size (bytes).
GENERAL_CODER_LIMIT = 64 * 2 ** 20


def huffman_bits(counts: Iterable[int]) -> int:
    """Bits of the optimal prefix code of a stream with these symbol counts (zeros ignored)."""
    heap = [int(c) for c in counts if c > 0]
    if not heap:
        return 0
    if len(heap) == 1:
        return heap[0]
    heapq.heapify(heap)
    total = 0
    while len(heap) > 1:
        merged = heapq.heappop(heap) + heapq.heappop(heap)
        total += merged
        heapq.heappush(heap, merged)
    return total


def _bytes(bits: int) -> int:
    return ceil(bits / 8)


@dataclass(frozen=True)
class TensorCode:
    """How one tensor is coded and what that costs."""

    encoding: str   # "dense", "codebook", "sparse" or "sparse+codebook"
    bytes: int
    raw_bytes: int


def _values_bytes(values: np.ndarray) -> tuple[str, int]:
    """The cheaper of dense and codebook coding of a flat array: (encoding, bytes)."""
    dense = values.size * values.itemsize
    if values.size == 0:
        return "dense", 0
    symbols = values.view(_bits_dtype(values))
    if len(np.unique(symbols[:PREFIX])) > MAX_SYMBOLS:
        return "dense", dense  # already too many in a prefix: no need to sort the whole tensor
    uniques, counts = np.unique(symbols, return_counts=True)
    if len(uniques) > MAX_SYMBOLS:
        return "dense", dense
    coded = _bytes(huffman_bits(counts)) + len(uniques) * (values.itemsize + 1)
    return ("codebook", coded) if coded < dense else ("dense", dense)


def _bits_dtype(values: np.ndarray) -> np.dtype:
    """An unsigned integer view of the values: -0.0 and 0.0 (and NaNs) compare by bits."""
    return np.dtype(f"u{values.itemsize}") if values.itemsize in (1, 2, 4, 8) else values.dtype


def tensor_code(values: np.ndarray) -> TensorCode:
    """The cheapest encoding of one weight tensor (module docstring)."""
    flat = np.ascontiguousarray(values).reshape(-1)
    if flat.dtype == object or flat.dtype.kind in "SUV":
        return TensorCode("dense", flat.nbytes, flat.nbytes)
    raw = ceil(flat.size / 2) if flat.dtype.name in PACKED_4BIT else flat.size * flat.itemsize
    best = TensorCode(*_values_bytes(flat), raw)
    nonzero = np.flatnonzero(flat)
    if 0 < flat.size - nonzero.size:
        gaps = np.diff(nonzero, prepend=-1) - 1
        _, gap_counts = np.unique(gaps, return_counts=True)
        where = _bytes(huffman_bits(gap_counts)) + len(gap_counts) * GAP_ENTRY_BYTES
        kind, kept = _values_bytes(flat[nonzero])
        sparse = TensorCode("sparse" if kind == "dense" else "sparse+codebook", where + kept, raw)
        if sparse.bytes < best.bytes:
            best = sparse
    return best


def _constant_code(tensor: gs.Constant) -> TensorCode:
    """A constant's code; packed 4-bit indices (:mod:`graphc.ir.codebook`) are coded as their 4-bit
    symbols, and cost at most their packed bytes."""
    nibbles = packed_nibbles(tensor)
    if nibbles is None:
        return tensor_code(np.asarray(tensor.values))
    raw = int(np.asarray(tensor.values).nbytes)
    code = tensor_code(nibbles)
    return replace(code, raw_bytes=raw) if code.bytes < raw else TensorCode("dense", raw, raw)


@dataclass(frozen=True)
class CompressedSize:
    """The four sizes of the module docstring, and how the weights were coded."""

    file_bytes: int
    zlib_bytes: int | None
    lzma_bytes: int | None
    entropy_coded_bytes: int
    weight_bytes: int           # raw bytes of the weight tensors
    weight_coded_bytes: int     # their entropy-coded bytes
    encodings: dict[str, int] = field(default_factory=dict)  # tensors per chosen encoding

    def as_dict(self) -> dict:
        return {"file_bytes": self.file_bytes, "zlib_bytes": self.zlib_bytes, "lzma_bytes": self.lzma_bytes,
                "entropy_coded_bytes": self.entropy_coded_bytes, "weight_bytes": self.weight_bytes,
                "weight_coded_bytes": self.weight_coded_bytes, "encodings": dict(self.encodings)}


def weight_constants(model: Model) -> list[gs.Constant]:
    """Every constant of the model and its bodies, once."""
    seen: dict[int, gs.Constant] = {}
    for _, scope in walk_graphs(model.graph):
        for tensor in scope.tensors().values():
            if isinstance(tensor, gs.Constant):
                seen.setdefault(id(tensor), tensor)
    return list(seen.values())


def compressed_size(model: Model, *, general: bool = True) -> CompressedSize:
    """Compressed sizes of ``model`` as it would be saved with its weights inline
    (``general=False`` skips zlib and lzma)."""
    file_bytes = inline_file_size(model)
    small = general and file_bytes <= GENERAL_CODER_LIMIT
    data = model_bytes(model) if small else None  # large models are never serialized here
    raw = coded = 0
    encodings: dict[str, int] = {}
    for tensor in weight_constants(model):
        code = _constant_code(tensor)
        raw += code.raw_bytes
        coded += code.bytes
        encodings[code.encoding] = encodings.get(code.encoding, 0) + 1
    structure = max(file_bytes - raw, 0)
    return CompressedSize(
        file_bytes=file_bytes,
        zlib_bytes=len(zlib.compress(data, 6)) if small else None,
        lzma_bytes=len(lzma.compress(data, preset=1)) if small else None,
        entropy_coded_bytes=structure + coded,
        weight_bytes=raw,
        weight_coded_bytes=coded,
        encodings=dict(sorted(encodings.items())),
    )
