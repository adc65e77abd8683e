"""LSTM with int8 weights for ``quant{activations=dynamic}``: onnxruntime's contrib kernel
``com.microsoft.DynamicQuantizeLSTM``, which quantizes ``X`` and the hidden state at run time.

An ``LSTM(X, W, R, B, ...)`` with constant float32 ``W [D, 4H, I]`` and ``R [D, 4H, H]``
becomes ``DynamicQuantizeLSTM(X, Wq, Rq, B, sequence_lens, initial_h, initial_c, P, sW, zW,
sR, zR)`` with the LSTM's attributes. Weights are symmetric int8 per gate unit (the ``[D, 4H]``
rows; ``per-channel=false``: one scale per direction): ``s = max_i |W_gi| / 127``, ``q =
clip(round(W / s), -127, 127)``, zero point 0, ``|W - q s| <= s / 2``; the kernel takes the codes
transposed, ``Wq [D, I, 4H]`` and ``Rq [D, H, 4H]`` (the layout onnxruntime's own
``quantize_dynamic`` writes).

Measured (onnxruntime 1.32 CPU, 2 threads, bidirectional, batch 1, alternated medians, scratch
measurement under load): H = I = 512, T = 40: 2.1x; 128: 2.0x; 64: 1.4x; 32: 0.93x; output
cosine against float 0.9998. With ``placement=auto`` the speed model decides: a measured table
(``speed-model=measured``, the default; :mod:`graphc.bench.cost_probe` times a float LSTM against
DynamicQuantizeLSTM on this CPU, 1 thread, per step and direction) rewrites an LSTM where its
integer form measures faster at the LSTM's hidden, input and batch sizes (on an AVX512-VNNI EPYC:
from ``H = I`` ~48); the builtin table, which has no LSTM costs, rewrites one with ``hidden_size
>= MIN_HIDDEN``. ``placement=all`` rewrites every eligible one.

Left float: an LSTM whose ``W`` or ``R`` is not a constant 3-D float32 tensor, or with
``layout=1`` (the contrib op has no layout attribute). GRU and RNN stay float: onnxruntime has
no integer kernel for them. The result runs on onnxruntime only (the op is in its contrib
domain); the standard ONNX checker accepts it as an op of another domain.
"""
from __future__ import annotations

import fnmatch
import logging
from collections.abc import Callable

import numpy as np
import onnx_graphsurgeon as gs

from graphc.ir import NameFactory, is_standard_op, node_label
from graphc.passes.quant.speed_model import SpeedModel, cost_table
from graphc.passmanager import PassResult

log = logging.getLogger(__name__)

FLOAT = np.float32
MS_DOMAIN = "com.microsoft"
#: LSTMs with a smaller hidden size stay float with placement=auto and the builtin table (module doc).
MIN_HIDDEN = 64
#: why placement=auto keeps an LSTM float when the measured speed model says so
MEASURED_SLOWER = "dynamic: LSTM's integer kernel measured slower at its size (speed model)"


def int8_gate_rows(w: np.ndarray, per_channel: bool) -> tuple[np.ndarray, np.ndarray]:
    """Codes of a ``[D, 4H, K]`` weight, transposed to ``[D, K, 4H]``, and float32 scales
    (``[D, 4H]`` per gate unit, or ``[D]``)."""
    w64 = np.asarray(w, dtype=np.float64)
    absmax = np.abs(w64).max(axis=2) if per_channel else np.abs(w64).max(axis=(1, 2))
    scale = np.where(absmax > 0, absmax / 127.0, 1.0).astype(FLOAT)
    expand = scale[..., None] if per_channel else scale[:, None, None]
    q = np.clip(np.round(w64 / expand.astype(np.float64)), -127, 127).astype(np.int8)
    return np.ascontiguousarray(q.transpose(0, 2, 1)), scale


def _check(node: gs.Node, opts, speed: "LstmSpeed") -> str:
    """Why the LSTM stays float ('' if it is rewritten)."""
    if any(fnmatch.fnmatchcase(node.name or "", p) for p in opts.exclude):
        return "excluded by pattern"
    for t in node.inputs[1:3]:
        if not isinstance(t, gs.Constant) or np.asarray(t.values).ndim != 3 \
                or np.asarray(t.values).dtype != np.float32:
            return "dynamic: LSTM weights are not constant 3-D float32 tensors"
    if node.attrs.get("layout", 0) != 0:
        return "dynamic: LSTM with layout=1 (DynamicQuantizeLSTM has no layout)"
    return speed.reason(node) if opts.placement == "auto" else ""


class LstmSpeed:
    """placement=auto's verdict on an LSTM: by the measured table's float and DynamicQuantizeLSTM
    costs when it has them, else by ``hidden_size >= MIN_HIDDEN``. The table is read at the first
    LSTM that gets this far (a model without LSTMs never asks for it)."""

    def __init__(self, choice: str, shapes: Callable[[], dict] | None):
        self.choice, self.shapes = choice, shapes
        self._model: SpeedModel | None = None

    def reason(self, node: gs.Node) -> str:
        if self._model is None:
            self._model = SpeedModel(self.shapes() if self.shapes is not None else {}, cost_table(self.choice))
        costs = self._model.lstm_costs(node)
        if costs is None:
            if int(node.attrs.get("hidden_size", 0)) < MIN_HIDDEN:
                return f"dynamic: LSTM hidden_size below {MIN_HIDDEN} (its integer kernel does not pay)"
            return ""
        float_ns, int_ns = costs
        log.info("%s: float %.0f ns, DynamicQuantizeLSTM %.0f ns per step (%s)", node_label(node), float_ns,
                 int_ns, self._model.table.source)
        return MEASURED_SLOWER if int_ns >= float_ns else ""


def quantize_lstms(graph: gs.Graph, opts, result: PassResult, shapes: Callable[[], dict] | None = None) -> int:
    """Rewrites every eligible LSTM of ``graph`` into DynamicQuantizeLSTM; returns how many.
    ``shapes`` (``ctx.cost_shapes``, called when the speed model is asked) give the batch it costs
    an LSTM at (without them: X's declared batch, else 1)."""
    names = NameFactory(graph)
    speed = LstmSpeed(opts.speed_model, shapes)
    count = 0
    for node in list(graph.nodes):
        if is_standard_op(node, "GRU", "RNN"):
            result.skip(f"dynamic: {node.op} stays float (onnxruntime has no integer {node.op} kernel)")
            continue
        if not is_standard_op(node, "LSTM"):
            continue
        reason = _check(node, opts, speed)
        if reason:
            result.skip(reason)
            log.info("%s stays float: %s", node_label(node), reason)
            continue
        _rewrite(graph, node, opts.per_channel, names)
        result.details.append({"node": node.name or node_label(node), "op": "LSTM", "precision": "int8 dynamic"})
        count += 1
    return count


def _rewrite(graph: gs.Graph, node: gs.Node, per_channel: bool, names: NameFactory) -> None:
    base = node.name or node.outputs[0].name
    consts = []
    for label, w in (("W", node.inputs[1]), ("R", node.inputs[2])):
        q, scale = int8_gate_rows(w.values, per_channel)
        consts.append([gs.Constant(names(f"{base}_{label}_quantized"), q),
                       gs.Constant(names(f"{base}_{label}_scale"), scale),
                       gs.Constant(names(f"{base}_{label}_zero_point"), np.zeros(scale.shape, np.int8))])
    optional = list(node.inputs[3:8])  # B, sequence_lens, initial_h, initial_c, P
    optional += [gs.Variable.empty() for _ in range(5 - len(optional))]
    (wq, sw, zw), (rq, sr, zr) = consts
    attrs = {k: v for k, v in node.attrs.items() if k != "layout"}
    graph.nodes.append(gs.Node("DynamicQuantizeLSTM", names(f"{base}_DynamicQuantizeLSTM"), domain=MS_DOMAIN,
                               attrs=attrs, inputs=[node.inputs[0], wq, rq, *optional, sw, zw, sr, zr],
                               outputs=list(node.outputs)))
    node.inputs, node.outputs = [], []
