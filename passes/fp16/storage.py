"""The storage-mode rewrite: weights stored in the half type, computed in float32.

Each float32 constant ``w`` of at least ``min-elements`` values, read only as data of float ops
(positions bound to the op's float type parameter: a Conv's weight and bias, a MatMul's operand;
never Resize's ``scales``/``roi`` nor shape arithmetic), with ``|w| <= max finite``, becomes

    w16 = round_half(w)            (the stored initializer, half the bytes)
    w'  = Cast(w16, to=float)      (a float32 tensor with w's name)

so every op computes in float32 on ``w' = float(round_half(w))``: the only error is the rounding
of the weights (relative ``2^-11`` for float16, ``2^-8`` for bfloat16). onnxruntime folds the Cast
of an initializer at session creation (constant folding), so the session runs float32 kernels on
float32 weights: the file halves, the speed and memory at run time are those of the float model.
"""
from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from graphc.ir import NameFactory, is_graph_output, is_standard_op, node_label
from graphc.passes.fp16.convert import ONNX_FLOAT
from graphc.passes.fp16.plan import HalfType
from graphc.passes.fp16.signature import float_signature


def storable(c: gs.Constant, graph: gs.Graph, opset: int, half: HalfType, min_elements: int) -> str:
    """Empty when ``c`` can be stored in the half type, else the reason it stays float32."""
    values = np.asarray(c.values)
    if values.dtype != np.float32 or values.size < min_elements:
        return "not float32" if values.dtype != np.float32 else ""
    if is_graph_output(graph, c) or not c.outputs:
        return "not read as a weight"
    for reader in c.outputs:
        if not is_standard_op(reader):
            return f"read by {node_label(reader)} of an unknown domain"
        sig = float_signature(reader.op, opset, "tensor(float)")  # positions bound to the float type
        positions = sig.input_positions(len(reader.inputs)) if sig is not None else []
        if any(t is c and j not in positions for j, t in enumerate(reader.inputs)):
            return f"read by {node_label(reader)} as a parameter, not as data"
    finite = values[np.isfinite(values)]
    if finite.size and float(np.abs(finite).max()) > half.max_finite:
        return f"values beyond the {half.name} range"
    return "ok"


def store_half(graph: gs.Graph, opset: int, half: HalfType, min_elements: int) -> tuple[dict, dict, int]:
    """Rewrite every storable constant of the top graph; returns (stats, skipped, bytes saved)."""
    names = NameFactory(graph)
    stats: dict[str, int] = {}
    skipped: dict[str, int] = {}
    saved = 0
    for c in list(_float_constants(graph)):
        reason = storable(c, graph, opset, half, min_elements)
        if reason in ("", "not float32"):
            continue
        if reason != "ok":
            skipped[reason] = skipped.get(reason, 0) + 1
            continue
        _rewrite_constant(graph, c, names, half)
        stats["stored_constants"] = stats.get("stored_constants", 0) + 1
        saved += np.asarray(c.values).nbytes // 2
    return stats, skipped, saved


def _float_constants(graph: gs.Graph):
    seen: set[int] = set()
    for node in graph.nodes:
        for t in node.inputs:
            if isinstance(t, gs.Constant) and id(t) not in seen:
                seen.add(id(t))
                yield t


def _rewrite_constant(graph: gs.Graph, c: gs.Constant, names: NameFactory, half: HalfType) -> None:
    name = c.name
    stored = gs.Constant(names(f"{name}.{half.name}"), np.asarray(c.values).astype(half.dtype))
    wide = gs.Variable(names(f"{name}.float"), dtype=np.float32, shape=list(np.shape(c.values)))
    for reader in list(c.outputs):
        for j, t in enumerate(reader.inputs):
            if t is c:
                reader.inputs[j] = wide
    c.name = names(f"{name}.replaced")  # the float32 constant is unreachable now; free its name
    wide.name = name                    # readers see the same tensor name as before
    graph.nodes.append(gs.Node("Cast", names(f"{name}.to_float"), attrs={"to": ONNX_FLOAT},
                               inputs=[stored], outputs=[wide]))
