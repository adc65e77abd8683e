"""Graph rewrites of the factorize pass: one node becomes two or three, by object.

The original node is detached first; the new chain reads its input and writes its very output
tensor (so graph output names survive), and the bias stays with the last node. Names carry the
markers the pass recognizes (``.svd.v``, ``.tucker.core``, ``.dw.pointwise``...), so a factored
node is never factored again. Weights are cast back to the original weight dtype.
"""
from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from graphc.ir import NameFactory, remove_nodes


def _detach(graph: gs.Graph, node: gs.Node) -> tuple[list[gs.Tensor], gs.Tensor, str]:
    inputs, out = list(node.inputs), node.outputs[0]
    base = node.name or out.name
    remove_nodes(graph, [node])
    return inputs, out, base


def _constant(names: NameFactory, name: str, values: np.ndarray, dtype) -> gs.Constant:
    return gs.Constant(names(name), np.ascontiguousarray(values.astype(dtype)))


def _append(graph, names, op, name, inputs, out=None, dtype=None, **attrs) -> gs.Tensor:
    if out is None:
        out = gs.Variable(names(f"{name}.out"), dtype=dtype)
    graph.nodes.append(gs.Node(op=op, name=names(name), inputs=inputs, outputs=[out], attrs=attrs))
    return out


def rewrite_linear(graph: gs.Graph, node: gs.Node, g: np.ndarray, f: np.ndarray, dtype,
                   names: NameFactory) -> None:
    """Gemm/MatMul ``y = A x`` -> ``MatMul(x, F^T)`` -> ``MatMul(., G^T)`` (or ``Gemm(., G^T, C)``
    keeping beta when a Gemm had a bias); Gemm's alpha is already inside G and F."""
    bias = node.inputs[2] if node.op == "Gemm" and len(node.inputs) > 2 and node.inputs[2].name else None
    beta = float(node.attrs.get("beta", 1.0))
    inputs, out, base = _detach(graph, node)
    wname = inputs[1].name
    v = _constant(names, f"{wname}.svd.v", f.T, dtype)
    u = _constant(names, f"{wname}.svd.u", g.T, dtype)
    h = _append(graph, names, "MatMul", f"{base}.svd.v", [inputs[0], v], dtype=dtype)
    if bias is not None:
        _append(graph, names, "Gemm", f"{base}.svd.u", [h, u, bias], out, beta=beta)
    else:
        _append(graph, names, "MatMul", f"{base}.svd.u", [h, u], out)


def _spatial_attrs(node: gs.Node, kernel, group: int) -> dict:
    attrs = {k: v for k, v in node.attrs.items() if k in ("strides", "pads", "dilations", "auto_pad")}
    return {**attrs, "kernel_shape": list(kernel), "group": group}


def rewrite_tucker(graph: gs.Graph, node: gs.Node, first: np.ndarray, core: np.ndarray,
                   last: np.ndarray, dtype, kernel: tuple[int, ...], names: NameFactory) -> None:
    """Conv -> 1x1 (first: r1 x Cin), KxK core (r2 x r1 x kf; the original geometry), 1x1
    (last: Cout x r2, with the bias)."""
    ones = (1,) * len(kernel)
    r2, r1 = core.shape[:2]
    attrs = _spatial_attrs(node, kernel, 1)
    inputs, out, base = _detach(graph, node)
    wname = inputs[1].name
    w_in = _constant(names, f"{wname}.tucker.in", first.reshape((r1, -1) + ones), dtype)
    w_core = _constant(names, f"{wname}.tucker.core", core.reshape((r2, r1) + kernel), dtype)
    w_out = _constant(names, f"{wname}.tucker.out", last.reshape((-1, r2) + ones), dtype)
    h1 = _append(graph, names, "Conv", f"{base}.tucker.in", [inputs[0], w_in], dtype=dtype,
                 kernel_shape=list(ones))
    h2 = _append(graph, names, "Conv", f"{base}.tucker.core", [h1, w_core], dtype=dtype, **attrs)
    _append(graph, names, "Conv", f"{base}.tucker.out", [h2, w_out] + inputs[2:3], out,
            kernel_shape=list(ones))


def rewrite_dw(graph: gs.Graph, node: gs.Node, depthwise: np.ndarray, pointwise: np.ndarray,
               dtype, kernel: tuple[int, ...], names: NameFactory) -> None:
    """Conv -> depthwise KxK (Cin*T filters, group Cin, the original geometry) -> 1x1
    (Cout x Cin*T, with the bias)."""
    ones = (1,) * len(kernel)
    cin = node.inputs[1].shape[1]
    attrs = _spatial_attrs(node, kernel, cin)
    inputs, out, base = _detach(graph, node)
    wname = inputs[1].name
    wd = _constant(names, f"{wname}.dw.depthwise", depthwise.reshape((-1, 1) + kernel), dtype)
    wp = _constant(names, f"{wname}.dw.pointwise", pointwise.reshape(pointwise.shape + ones), dtype)
    h = _append(graph, names, "Conv", f"{base}.dw.depthwise", [inputs[0], wd], dtype=dtype, **attrs)
    _append(graph, names, "Conv", f"{base}.dw.pointwise", [h, wp] + inputs[2:3], out,
            kernel_shape=list(ones))
