"""Embedding tables stored as int8 rows, for ``quant{activations=dynamic}``: a ``Gather`` (axis 0)
of a large constant float32 table ``T [V, D]`` becomes, in standard ONNX ops::

    rows  = Gather(Tq, ids)                  # int8 [..., D]: only the looked-up rows
    s     = Gather(sT, ids)                  # float32 [..., 1]
    y     = Cast(rows, float) * s

with symmetric per-row scales ``sT_v = max_d |T_vd| / 127`` (1 for an all-zero row) and codes
``Tq = clip(round(T / sT), -127, 127)``: ``|T_vd - Tq_vd sT_v| <= sT_v / 2``. The file keeps
the int8 table (a quarter of the float bytes) plus ``V`` scales, stored as float16 (rounded
up, so the step grows by at most a factor ``1 + 2^-10``; the codes are computed with them; a Cast after their Gather) when all of them are normal
float16 numbers, else float32 (on all-MiniLM-L6-v2's 30522-row table: 61 KB saved, which puts
the file below onnxruntime's per-tensor-scale ``quantize_dynamic``).

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


def int8_rows(table: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 codes of a ``[V, D]`` table and its per-row scales ``[V, 1]``: float16 when
    every scale is a normal float16 (rounded up, at most 2^-10 larger; the codes are computed
    with the stored scales), else float32."""
    t = np.asarray(table, dtype=np.float64)
    absmax = np.abs(t).max(axis=1, keepdims=True)
    scale = np.where(absmax > 0, absmax / 127.0, 1.0)
    if np.all((scale >= HALF_MIN) & (scale <= HALF_MAX / 2)):
        half = scale.astype(np.float16)
        # rounded up, so that no code leaves [-127, 127]: the step grows by at most 2^-10
        scale = np.where(half.astype(np.float64) < scale, np.nextafter(half, np.float16(np.inf)), half)
    else:
        scale = scale.astype(FLOAT)
    return np.clip(np.round(t / scale.astype(np.float64)), -127, 127).astype(np.int8), scale


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
    done: dict[str, tuple[gs.Constant, gs.Constant]] = {}
    count = 0
    for node in [n for n in graph.nodes if is_standard_op(n, "Gather")]:
        table, reason = _table_of(node, exclude)
        if table is None:
            if reason:
                result.skip(reason)
                log.info("%s stays float: %s", node_label(node), reason)
            continue
        if table.name not in done:
            q, scale = int8_rows(table.values)
            done[table.name] = (gs.Constant(names(f"{table.name}_quantized"), q),
                                gs.Constant(names(f"{table.name}_row_scale"), scale))
        _rewrite(graph, node, *done[table.name], names)
        result.details.append({"node": node.name or node_label(node), "op": "Gather", "precision": "int8 rows"})
        count += 1
    return count


def _rewrite(graph: gs.Graph, node: gs.Node, q: gs.Constant, scale: gs.Constant, names: NameFactory) -> None:
    base = node.name or node.outputs[0].name
    ids, out = node.inputs[1], node.outputs[0]
    rows = gs.Variable(names(f"{base}_rows_int8"), dtype=np.int8)
    rows_f = gs.Variable(names(f"{base}_rows_float"), dtype=FLOAT)
    row_scale = gs.Variable(names(f"{base}_row_scale"), dtype=FLOAT)
    if scale.values.dtype != FLOAT:  # float16 scales: gathered, then cast ([..., 1]: cheap)
        half = gs.Variable(names(f"{base}_row_scale_half"), dtype=scale.values.dtype)
        graph.nodes += [gs.Node("Gather", names(f"{base}_scale"), attrs={"axis": 0}, inputs=[scale, ids], outputs=[half]),
                        gs.Node("Cast", names(f"{base}_scale_Cast"), attrs={"to": CAST_TO_FLOAT}, inputs=[half],
                                outputs=[row_scale])]
    else:
        graph.nodes.append(gs.Node("Gather", names(f"{base}_scale"), attrs={"axis": 0}, inputs=[scale, ids],
                                   outputs=[row_scale]))
    graph.nodes += [
        gs.Node("Gather", names(f"{base}_int8"), attrs={"axis": 0}, inputs=[q, ids], outputs=[rows]),
        gs.Node("Cast", names(f"{base}_Cast"), attrs={"to": CAST_TO_FLOAT}, inputs=[rows], outputs=[rows_f]),
        gs.Node("Mul", names(f"{base}_rescale"), inputs=[rows_f, row_scale], outputs=[out]),
    ]
    node.inputs, node.outputs = [], []
