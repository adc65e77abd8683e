"""The weight of a linear layer as a matrix ``W`` (outputs x reduction), for passes that rewrite
weights in place (sparsify, cluster): read it, change it, write it back in the node's layout.

``y = W x`` per output position, ``x`` the layer's input features along its reduction axis:

- ``MatMul(x, B)``, B constant 2-D (in x out): ``W = B^T``;
- ``Gemm(x, B)`` (no transA): ``W = B^T``, or ``B`` with ``transB=1`` (alpha scales every
  output alike and does not matter to a weight mask);
- ``Conv``, weight ``(Cout, Cin/g, k1, ..., kd)``: the rows are the output channels, the columns
  the receptive field ordered ``(k1, ..., kd, c)`` - input channels innermost, so consecutive
  columns are consecutive input channels, the reduction axis N:M sparsity groups along (NVIDIA's
  2:4 for convolutions groups input channels at a fixed kernel position);
- ``ConvTranspose``, weight ``(Cin, Cout/g, k1, ..., kd)``: rows ``(Cout/g, k1, ..., kd)``,
  columns the input channels (its reduction axis).

``moment_layout`` says how :mod:`graphc.calib.moments` reads the input samples ``x`` so that
``E[x x^T]`` matches the columns: MatMul/Gemm read features on the last axis; a Conv with
``group = 1`` reads im2col receptive fields, ordered ``(c, k1, ..., kd)`` by the moments module and
permuted here by ``moment_order`` to the column order. Grouped Convs and ConvTranspose have no
layout (no data-aware treatment: magnitude only).
"""
from __future__ import annotations

import fnmatch
import logging
from collections.abc import Callable
from dataclasses import dataclass
from math import prod

import numpy as np
import onnx_graphsurgeon as gs

from graphc.calib.moments import Layout
from graphc.ir import constant_value, is_standard_op, node_label
from graphc.ir.op_kinds import FLOAT_DTYPES
from graphc.ir.padding import explicit_pads
from graphc.passmanager import PassResult

log = logging.getLogger(__name__)

#: the ops whose constant weight this module reads as a matrix
LINEAR_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


@dataclass
class LinearWeight:
    """One layer's constant weight, seen as ``W`` (rows = outputs, columns = reduction)."""

    node: gs.Node
    tensor: gs.Constant
    kind: str                          # "matmul", "gemm", "gemm_t" (transB), "conv", "convtranspose"
    layout: Layout | None = None       # how the input's samples are read for E[x x^T]; None: no data use
    moment_order: np.ndarray | None = None  # column j of W is feature moment_order[j] of the moment

    @property
    def label(self) -> str:
        return self.node.name or self.node.outputs[0].name

    @property
    def input_name(self) -> str:
        return self.node.inputs[0].name

    @property
    def columns(self) -> int:
        """The number of columns of ``W`` (the reduction length), without building it."""
        shape = self.tensor.values.shape
        if self.kind in ("matmul", "gemm"):
            return int(shape[0])
        if self.kind == "gemm_t":
            return int(shape[1])
        return int(prod(shape[1:])) if self.kind == "conv" else int(shape[0])

    def matrix(self) -> np.ndarray:
        """``W`` in float64."""
        w = np.asarray(self.tensor.values, dtype=np.float64)
        if self.kind in ("matmul", "gemm"):
            return w.T
        if self.kind == "gemm_t":
            return w
        nd = w.ndim - 2
        if self.kind == "conv":  # (Cout, C, k...) -> (Cout, k..., C)
            return w.transpose(0, *range(2, 2 + nd), 1).reshape(w.shape[0], -1)
        # convtranspose: (Cin, Cout/g, k...) -> (Cout/g, k..., Cin)
        return w.transpose(1, *range(2, 2 + nd), 0).reshape(-1, w.shape[0])

    def to_weight(self, matrix: np.ndarray) -> np.ndarray:
        """The node's weight (its own shape and dtype) holding ``matrix``."""
        shape, dtype = self.tensor.values.shape, self.tensor.values.dtype
        if self.kind in ("matmul", "gemm"):
            return np.ascontiguousarray(matrix.T).astype(dtype)
        if self.kind == "gemm_t":
            return np.ascontiguousarray(matrix).astype(dtype)
        nd = len(shape) - 2
        if self.kind == "conv":
            inner = matrix.reshape((shape[0], *shape[2:], shape[1]))
            return np.ascontiguousarray(np.moveaxis(inner, -1, 1)).astype(dtype)
        inner = matrix.reshape((shape[1], *shape[2:], shape[0]))
        return np.ascontiguousarray(inner.transpose(nd + 1, 0, *range(1, nd + 1))).astype(dtype)

    def write(self, matrix: np.ndarray) -> bool:
        """Store ``matrix`` as the weight; True if any value changed."""
        new = self.to_weight(matrix)
        if np.array_equal(new, self.tensor.values):
            return False
        self.tensor.values = new
        return True

    def moment_in_columns(self, moment: np.ndarray) -> np.ndarray:
        """``E[x x^T]`` as read by ``layout``, with rows and columns in the order of W's columns."""
        if self.moment_order is None:
            return moment
        return moment[np.ix_(self.moment_order, self.moment_order)]


def collect_linear_weights(graph: gs.Graph, shapes, result: PassResult, *, action: str,
                           ignore: tuple[str, ...] = (), min_params: int = 0,
                           refuse: Callable[[LinearWeight], str | None] | None = None) -> list[LinearWeight]:
    """The weights of the graph's linear layers that a weight-rewriting pass takes, in graph order.

    A layer is refused when :func:`match_linear_weight` finds no weight it reads, its name matches
    an ``ignore`` pattern (fnmatch), it has fewer than ``min_params`` weights (at least 1), or the
    pass's own ``refuse`` gives a reason; each refusal is a ``result.skip`` and an INFO log
    ``<node> not <action>: <reason>``.
    """
    taken = []
    for node in graph.nodes:
        if node.op not in LINEAR_OPS:
            continue
        weight = match_linear_weight(node, shapes)
        reason = weight if isinstance(weight, str) else _refusal(weight, ignore, min_params, refuse)
        if reason is None:
            taken.append(weight)
            continue
        result.skip(reason)
        log.info("%s not %s: %s", node_label(node), action, reason)
    return taken


def _refusal(weight: LinearWeight, ignore: tuple[str, ...], min_params: int,
             refuse: Callable[[LinearWeight], str | None] | None) -> str | None:
    if any(fnmatch.fnmatchcase(weight.node.name or "", pattern) for pattern in ignore):
        return "ignored by pattern"
    if weight.tensor.values.size < max(min_params, 1):
        return "fewer weights than min-params"
    return refuse(weight) if refuse is not None else None


def match_linear_weight(node: gs.Node, shapes) -> LinearWeight | str:
    """The node's weight as a :class:`LinearWeight`, or why it has none this module rewrites."""
    if not is_standard_op(node, "Conv", "ConvTranspose", "Gemm", "MatMul"):
        return "not a Conv, ConvTranspose, Gemm or MatMul"
    if len(node.inputs) < 2 or not node.outputs:
        return "malformed node"
    tensor = node.inputs[1]
    value = constant_value(tensor)
    if value is None or not isinstance(tensor, gs.Constant):
        return "weight is not constant"
    if np.dtype(value.dtype) not in FLOAT_DTYPES:
        return f"weight dtype {value.dtype} is not floating point"
    if constant_value(node.inputs[0]) is not None:
        return "input is constant (fold-constants applies)"
    if len(tensor.outputs) != 1:
        return "weight shared with another node"
    if not np.isfinite(value).all():
        return "weight has non-finite values (NaN or inf)"
    if node.op == "MatMul":
        return LinearWeight(node, tensor, "matmul", Layout()) if value.ndim == 2 else "weight is not 2-D"
    if node.op == "Gemm":
        if node.attrs.get("transA", 0):
            return "Gemm with transA"
        kind = "gemm_t" if node.attrs.get("transB", 0) else "gemm"
        return LinearWeight(node, tensor, kind, Layout()) if value.ndim == 2 else "weight is not 2-D"
    if value.ndim < 3:
        return "weight is not a convolution kernel"
    if node.op == "ConvTranspose":
        return LinearWeight(node, tensor, "convtranspose")
    return _conv_weight(node, tensor, value, shapes)


def _conv_weight(node: gs.Node, tensor: gs.Constant, value: np.ndarray, shapes) -> LinearWeight:
    kernel = tuple(int(k) for k in value.shape[2:])
    weight = LinearWeight(node, tensor, "conv")
    if int(node.attrs.get("group", 1)) != 1:
        return weight  # grouped: the samples of one group's rows are not one moment's features
    info = shapes.get(node.inputs[0].name) if shapes is not None else None
    spatial = info.shape[2:] if info is not None and info.shape is not None else None
    pads = explicit_pads(node, kernel, spatial)
    if isinstance(pads, str):
        return weight
    weight.layout = Layout.conv(kernel, node.attrs.get("strides"), pads, node.attrs.get("dilations"))
    channels, taps = value.shape[1], prod(kernel)
    # the moments order a receptive field (c, k...): feature c * taps + t; W's columns are (k..., c)
    weight.moment_order = (np.arange(channels)[None, :] * taps + np.arange(taps)[:, None]).reshape(-1)
    return weight
