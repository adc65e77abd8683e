"""Codebook-decoded weights: how a shared-weight layer's weight is stored and read back.

A clustered weight (the ``cluster`` pass) is ``codebook[indices]``, decoded in the graph by
``Gather(codebook, Cast(indices, int32))``. The indices are stored in one of two forms:

- **uint8**: one index per byte, a constant of the weight's shape;
- **packed 4-bit** (codebooks of at most 16 values, at least :data:`PACK_MIN_INDICES` weights):
  two indices per byte, index ``2i`` in the low
  nibble and ``2i + 1`` in the high nibble of byte ``i`` (an odd count pads one zero nibble), a
  ``(ceil(n / 2), 1)`` uint8 constant ``P``. The graph unpacks it with ops onnxruntime's CPU kernels
  run on uint8 (opset >= 11): ``Concat(Mod(P, 16), BitShift(P, 4, RIGHT), axis=1)`` is the
  ``(ceil(n/2), 2)`` pairs (low, high), whose row-major flattening is the index sequence; a
  ``Reshape`` to ``(2 ceil(n/2),)``, a ``Slice`` to ``n`` when ``n`` is odd and a ``Reshape`` to the
  weight's shape give back the uint8 indices exactly. Every input is a constant, so onnxruntime
  folds the decode at session creation: inference runs the same dense weight.

:func:`read_codebook` recognises both forms (the report's layer table, tests);
:func:`packed_nibbles` tells :mod:`graphc.ir.compressed_size` which constants hold packed indices, so
the entropy-coded size counts their 4-bit symbols rather than the bytes that pair them.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
import onnx_graphsurgeon as gs

from graphc.ir.usedef import constant_value, is_standard_op, producer

#: the largest codebook whose indices fit a nibble
NIBBLE_SYMBOLS = 16
#: first opset with BitShift (Mod on integers: opset 10)
PACKING_OPSET = 11
#: fewest indices worth packing: the unpacking nodes and their constants cost about 430 bytes of
#: the file (names, shapes), packing saves half a byte per index
PACK_MIN_INDICES = 1024


def pack_nibbles(indices: np.ndarray) -> np.ndarray:
    """The ``(ceil(n / 2), 1)`` uint8 packing of ``indices`` (all below 16), low nibble first."""
    flat = np.asarray(indices, dtype=np.uint8).reshape(-1)
    if flat.size and int(flat.max()) >= NIBBLE_SYMBOLS:
        raise ValueError("an index does not fit 4 bits")
    padded = np.zeros(2 * ((flat.size + 1) // 2), dtype=np.uint8)
    padded[:flat.size] = flat
    return (padded[0::2] | (padded[1::2] << 4)).reshape(-1, 1)


def unpack_nibbles(packed: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """The uint8 indices of ``shape`` that :func:`pack_nibbles` packed (the graph's decode in numpy)."""
    pairs = np.concatenate([packed % 16, packed >> 4], axis=1).reshape(-1)
    return pairs[:int(np.prod(shape, dtype=np.int64))].reshape(shape)


def packed_nibbles(tensor: gs.Constant) -> np.ndarray | None:
    """The nibbles (low, high per byte) of a constant the graph unpacks as packed indices, else None."""
    values = np.asarray(tensor.values)
    if values.dtype != np.uint8 or values.ndim != 2 or values.shape[1] != 1:
        return None
    if not any(_unpacks(node, tensor) for node in tensor.outputs):
        return None
    return np.concatenate([values % 16, values >> 4], axis=1).reshape(-1)


def _unpacks(node: gs.Node, tensor: gs.Tensor) -> bool:
    if len(node.inputs) != 2 or node.inputs[0] is not tensor:
        return False
    amount = constant_value(node.inputs[1])
    if amount is None or amount.size != 1:
        return False
    if is_standard_op(node, "Mod"):
        return int(amount.reshape(-1)[0]) == NIBBLE_SYMBOLS
    return is_standard_op(node, "BitShift") and node.attrs.get("direction") == "RIGHT" \
        and int(amount.reshape(-1)[0]) == 4


class DecodedWeight(NamedTuple):
    codebook: np.ndarray
    indices: np.ndarray  # uint8, the weight's shape
    packed: bool         # stored two indices per byte


def read_codebook(tensor: gs.Tensor) -> DecodedWeight | None:
    """(codebook, uint8 indices in the weight's shape, packed) when ``tensor`` is decoded from a
    codebook in either stored form (module docstring), else None."""
    gather = producer(tensor)
    if gather is None or not is_standard_op(gather, "Gather") or not isinstance(gather.inputs[0], gs.Constant):
        return None
    cast = producer(gather.inputs[1])
    if cast is None or not is_standard_op(cast, "Cast"):
        return None
    if isinstance(cast.inputs[0], gs.Constant):
        return DecodedWeight(gather.inputs[0].values, cast.inputs[0].values, False)
    indices = _unpacked_indices(cast.inputs[0])
    return None if indices is None else DecodedWeight(gather.inputs[0].values, indices, True)


def _unpacked_indices(tensor: gs.Tensor) -> np.ndarray | None:
    """The indices a Reshape(...(Concat(Mod(P, 16), BitShift(P, 4)))) chain decodes, else None."""
    reshape = producer(tensor)
    if reshape is None or not is_standard_op(reshape, "Reshape"):
        return None
    shape = constant_value(reshape.inputs[1])
    node = producer(reshape.inputs[0])
    while node is not None and is_standard_op(node, "Reshape", "Slice"):
        node = producer(node.inputs[0])
    if shape is None or node is None or not is_standard_op(node, "Concat"):
        return None
    source = producer(node.inputs[0])
    if source is None or not isinstance(source.inputs[0], gs.Constant):
        return None
    if packed_nibbles(source.inputs[0]) is None:
        return None
    return unpack_nibbles(np.asarray(source.inputs[0].values), tuple(int(d) for d in shape))
