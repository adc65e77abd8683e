"""Embedding tables stored as int8 rows, for ``quant{activations=dynamic}``: a ``Gather`` (axis 0)
of a large constant float32 table ``T [V, D]`` becomes, in standard ONNX ops::

    rows  = Gather(Tq, ids)                  # int8 [..., D]: only the looked-up rows
    s     = Gather(sT, ids)                  # float32 [..., 1]
    y     = Cast(rows, float) * s

with symmetric per-row scales ``sT_v = max_d |T_vd| / 127`` (1 for an all-zero row) and codes
``Tq = clip(round(T / sT), -127, 127)``: ``|T_vd - Tq_vd sT_v| <= sT_v / 2``. The file keeps
the int8 table (a quarter of the float bytes) plus the ``V`` scales, stored the cheapest way
that keeps them within a factor ``1 + SCALE_GROWTH`` of exact (the codes are always computed
with the stored scales, which are rounded *up*, so no code leaves [-127, 127]):

- a **scale codebook** when the scales span a small enough range: ``CODEBOOK`` levels on a
  geometric grid ``c_j = lo rho^j``, ``rho = (hi / lo)^(1 / (CODEBOOK - 1))`` from the smallest
  to the largest row scale, each row storing the uint8 index of the smallest level ``>= sT_v``:
  one byte per row plus the codebook, the step at most ``rho`` times the exact one (used when
  ``rho - 1 <= SCALE_GROWTH``). At run time the gathered codes are cast to int32 and index the
  codebook (``s = Gather(codebook, Cast(Gather(codes, ids)))``, three ops on ``[..., 1]``).
  On all-MiniLM-L6-v2's 30522-row word table ``rho = 1.0125`` and the table's SQNR is 42.69 dB
  against 42.75 dB with exact scales; the file is 30 KB smaller than with float16 scales, which
  puts it below onnxruntime's per-channel ``quantize_dynamic``;
- else float16 (rounded up: the step grows by at most ``2^-10``; a Cast after their Gather) when
  every scale is a normal float16 number, else float32.

Why gather first, then rescale: ``DequantizeLinear(Tq) -> Gather`` would be a constant
subgraph that onnxruntime folds back into a float table when the session loads (the memory
saving lost); here every node after the int8 table reads the run-time ids, so nothing folds and
the session holds the int8 table (tests check the optimized graph). DequantizeLinear itself is
not used because its scale is per tensor or per axis, while the gathered rows each have their own
scale with the shape of ``ids``.

Only tables with at least ``MIN_TABLE_ELEMENTS`` elements are rewritten (smaller ones save too
little to be worth the three nodes), and only rows of ``D >= 2`` values (a one-value row saves
nothing next to its float scale; this also leaves the ``[V, 1]`` scale tables of a rewritten
model alone); nodes matching ``exclude`` stay float.
"""
from __future__ import annotations

import fnmatch
import logging
from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from graphc.ir import NameFactory, is_standard_op, node_label
from graphc.passmanager import PassResult

log = logging.getLogger(__name__)

FLOAT = np.float32
#: tables smaller than this (elements; 256 KB of float32) stay float.
MIN_TABLE_ELEMENTS = 1 << 16
#: Cast's ``to`` for float32 (TensorProto.FLOAT).
CAST_TO_FLOAT = 1
#: the normal float16 range: row scales inside it are stored as float16 (half the bytes of V scales)
HALF_MIN, HALF_MAX = float(np.finfo(np.float16).tiny), float(np.finfo(np.float16).max)
#: levels of the row-scale codebook (uint8 codes)
CODEBOOK = 256
#: a stored row scale is at most this fraction larger than the exact one (codebook; module doc)
SCALE_GROWTH = 2.0 ** -6
#: Cast's ``to`` for int32 (TensorProto.INT32): the codebook index
CAST_TO_INT32 = 6


@dataclass(frozen=True)
class RowScales:
    """A table's per-row scales as stored: ``codebook[codes]`` (``codes`` uint8 ``[V, 1]``,
    ``codebook`` float32 ``[CODEBOOK]``) or ``table`` (float16/float32 ``[V, 1]``)."""

    table: np.ndarray | None = None
    codes: np.ndarray | None = None
    codebook: np.ndarray | None = None

    def values(self) -> np.ndarray:
        """The scales as float64 ``[V, 1]``."""
        if self.table is not None:
            return self.table.astype(np.float64)
        return self.codebook.astype(np.float64)[self.codes.astype(np.int64)]


def coded_scales(scale: np.ndarray) -> RowScales | None:
    """``scale`` (float64 ``[V, 1]``, positive) rounded up onto a ``CODEBOOK``-level geometric
    grid, or None when its range is too wide for a step growth of at most ``SCALE_GROWTH``."""
    lo, hi = float(scale.min()), float(scale.max())
    rho = (hi / lo) ** (1.0 / (CODEBOOK - 1))
    if rho - 1.0 > SCALE_GROWTH:
        return None
    codebook = (lo * rho ** np.arange(CODEBOOK)).astype(FLOAT)
    codebook[-1] = max(codebook[-1], np.float32(hi))  # float32 rounding must not cut the top
    # the smallest stored (float32) level >= the scale: never rounded down
    codes = np.minimum(np.searchsorted(codebook.astype(np.float64), scale[:, 0], side="left"), CODEBOOK - 1)
    return RowScales(codes=codes.astype(np.uint8)[:, None], codebook=codebook)


def _stored_scales(scale: np.ndarray) -> RowScales:
    coded = coded_scales(scale)
    if coded is not None:
        return coded
    if np.all((scale >= HALF_MIN) & (scale <= HALF_MAX / 2)):
        half = scale.astype(np.float16)
        # rounded up, so that no code leaves [-127, 127]: the step grows by at most 2^-10
        return RowScales(table=np.where(half.astype(np.float64) < scale, np.nextafter(half, np.float16(np.inf)), half))
    return RowScales(table=scale.astype(FLOAT))


def int8_rows(table: np.ndarray) -> tuple[np.ndarray, RowScales]:
    """Symmetric int8 codes of a ``[V, D]`` table and its per-row scales as stored (a codebook,
    else float16, else float32; module doc); the codes are computed with the stored scales."""
    t = np.asarray(table, dtype=np.float64)
    absmax = np.abs(t).max(axis=1, keepdims=True)
    scales = _stored_scales(np.where(absmax > 0, absmax / 127.0, 1.0))
    return np.clip(np.round(t / scales.values()), -127, 127).astype(np.int8), scales


def _table_of(node: gs.Node, exclude) -> tuple[gs.Constant | None, str]:
    """The node's constant table, or None and the reason it is left float."""
    if any(fnmatch.fnmatchcase(node.name or "", p) for p in exclude):
        return None, "excluded by pattern"
    table = node.inputs[0]
    if not isinstance(table, gs.Constant) or np.asarray(table.values).dtype != np.float32:
        return None, ""  # run-time data, or index lookups on shapes: not an embedding
    values = np.asarray(table.values)
    if values.ndim != 2 or values.shape[1] < 2 or node.attrs.get("axis", 0) != 0:
        return None, "embedding: not a [V, D >= 2] table gathered along axis 0"
    if values.size < MIN_TABLE_ELEMENTS:
        return None, f"embedding: table smaller than {MIN_TABLE_ELEMENTS} elements"
    return table, ""


def quantize_embeddings(graph: gs.Graph, exclude, result: PassResult) -> int:
    """Rewrites every eligible Gather of ``graph`` (see the module doc); returns how many.
    A table read by several Gathers is quantized once."""
    names = NameFactory(graph)
    done: dict[str, tuple[gs.Constant, tuple]] = {}
    count = 0
    for node in [n for n in graph.nodes if is_standard_op(n, "Gather")]:
        table, reason = _table_of(node, exclude)
        if table is None:
            if reason:
                result.skip(reason)
                log.info("%s stays float: %s", node_label(node), reason)
            continue
        if table.name not in done:
            q, scales = int8_rows(table.values)
            done[table.name] = (gs.Constant(names(f"{table.name}_quantized"), q), _scale_constants(table.name, scales, names))
        _rewrite(graph, node, *done[table.name], names)
        result.details.append({"node": node.name or node_label(node), "op": "Gather", "precision": "int8 rows"})
        count += 1
    return count


def _scale_constants(name: str, scales: RowScales, names: NameFactory) -> tuple[gs.Constant, gs.Constant | None]:
    """(the per-row constant: codes or scales, the codebook or None)."""
    if scales.codes is not None:
        return (gs.Constant(names(f"{name}_row_scale_code"), scales.codes),
                gs.Constant(names(f"{name}_row_scale_codebook"), scales.codebook))
    return gs.Constant(names(f"{name}_row_scale"), scales.table), None


def _rewrite(graph: gs.Graph, node: gs.Node, q: gs.Constant, scale: tuple, names: NameFactory) -> None:
    base = node.name or node.outputs[0].name
    ids, out = node.inputs[1], node.outputs[0]
    rows = gs.Variable(names(f"{base}_rows_int8"), dtype=np.int8)
    rows_f = gs.Variable(names(f"{base}_rows_float"), dtype=FLOAT)
    row_scale = gs.Variable(names(f"{base}_row_scale"), dtype=FLOAT)
    per_row, codebook = scale
    if codebook is not None:  # uint8 codes gathered, cast to int32, then looked up ([..., 1]: cheap)
        code = gs.Variable(names(f"{base}_row_scale_code"), dtype=np.uint8)
        index = gs.Variable(names(f"{base}_row_scale_index"), dtype=np.int32)
        graph.nodes += [gs.Node("Gather", names(f"{base}_scale_code"), attrs={"axis": 0}, inputs=[per_row, ids], outputs=[code]),
                        gs.Node("Cast", names(f"{base}_scale_code_Cast"), attrs={"to": CAST_TO_INT32}, inputs=[code],
                                outputs=[index]),
                        gs.Node("Gather", names(f"{base}_scale"), attrs={"axis": 0}, inputs=[codebook, index],
                                outputs=[row_scale])]
    elif per_row.values.dtype != FLOAT:  # float16 scales: gathered, then cast ([..., 1]: cheap)
        half = gs.Variable(names(f"{base}_row_scale_half"), dtype=per_row.values.dtype)
        graph.nodes += [gs.Node("Gather", names(f"{base}_scale"), attrs={"axis": 0}, inputs=[per_row, ids], outputs=[half]),
                        gs.Node("Cast", names(f"{base}_scale_Cast"), attrs={"to": CAST_TO_FLOAT}, inputs=[half],
                                outputs=[row_scale])]
    else:
        graph.nodes.append(gs.Node("Gather", names(f"{base}_scale"), attrs={"axis": 0}, inputs=[per_row, ids],
                                   outputs=[row_scale]))
    graph.nodes += [
        gs.Node("Gather", names(f"{base}_int8"), attrs={"axis": 0}, inputs=[q, ids], outputs=[rows]),
        gs.Node("Cast", names(f"{base}_Cast"), attrs={"to": CAST_TO_FLOAT}, inputs=[rows], outputs=[rows_f]),
        gs.Node("Mul", names(f"{base}_rescale"), inputs=[rows_f, row_scale], outputs=[out]),
    ]
    node.inputs, node.outputs = [], []
