"""Weights-only quantization for ``quant{weights-only=true bits=8|4}``: MatMul/Gemm weights are
stored as integers, activations stay float (no calibration of ranges; no Q on activations).

- ``bits=8``: each constant weight ``W`` becomes ``DequantizeLinear(q, s, 0)`` per output channel
  (``axis`` = the N axis: 1 for MatMul ``[K, N]`` and Gemm with ``transB=0``, 0 for Gemm with
  ``transB=1``), symmetric: ``s_n = max|W_:n| / 127``, ``q = clip(round(W / s_n), -127, 127)``
  (the arithmetic of :func:`graphc.passes._qdq_rewrite.weight_params`). The consumer computes
  ``x @ (q s)``: the only error is the weight rounding, ``|W - q s| <= s / 2``.
- ``bits=4``: MatMul (and Gemm with ``transA=0``) becomes onnxruntime's contrib op
  ``com.microsoft.MatMulNBits(A, B, scales)`` with attributes ``K``, ``N``, ``bits=4``,
  ``block_size``. Each output column ``n`` is cut along K into blocks of ``block_size`` (K padded
  with zeros to a multiple); a block has one scale ``s = max|w| / 7`` and codes
  ``u = clip(round(w / s), -7, 7) + 8`` in [1, 15] (no zero-point input: the op's default zero
  point is 8). ``B`` is uint8 ``[N, k_blocks, block_size / 2]``: element ``2j`` of a block in the
  low nibble of byte ``j``, element ``2j + 1`` in the high nibble; ``scales`` is float
  ``[N * k_blocks]``, ordered n-major. A Gemm's ``alpha`` is folded into the weight and its
  ``C`` (times ``beta``) becomes a following Add. Block-wise DequantizeLinear (opset 21) is not
  used: onnxruntime 1.32 runs MatMulNBits as one fused kernel.

Only 2-D constant weights whose consumer reads them as the second MatMul/Gemm input are
rewritten; MatMuls of two activations (attention scores) stay float, with a reason. The pass
records the serialized model size before and after, and the latency of the float and the
rewritten model on the first calibration feed (onnxruntime, alternating runs, medians).
"""
from __future__ import annotations

import logging

import numpy as np
import onnx_graphsurgeon as gs

from graphc.ir import NameFactory, is_standard_op, model_bytes, node_label
from graphc.passmanager import Context, PassResult

log = logging.getLogger(__name__)

FLOAT = np.float32
MS_DOMAIN = "com.microsoft"
LATENCY_ROUNDS = 20


def weight_of(node: gs.Node) -> tuple[gs.Constant | None, str]:
    """The node's constant 2-D weight, or None and the reason it is left float."""
    if len(node.inputs) < 2 or not isinstance(node.inputs[1], gs.Constant):
        return None, "weights-only: second input is not a constant"
    w = node.inputs[1]
    if np.asarray(w.values).ndim != 2 or np.asarray(w.values).dtype != np.float32:
        return None, "weights-only: weight is not a 2-D float32 constant"
    if is_standard_op(node, "Gemm") and node.attrs.get("transA", 0):
        return None, "weights-only: Gemm with transA"
    return w, ""


def int8_channel(w: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 codes and one scale per index of ``axis``."""
    other = 1 - axis
    absmax = np.abs(w.astype(np.float64)).max(axis=other)
    scale = np.where(absmax > 0, absmax / 127.0, 1.0).astype(FLOAT)
    shape = [1, 1]
    shape[axis] = -1
    q = np.clip(np.round(w.astype(np.float64) / scale.astype(np.float64).reshape(shape)), -127, 127)
    return q.astype(np.int8), scale


def pack_int4_blocks(w_kn: np.ndarray, block_size: int) -> tuple[np.ndarray, np.ndarray]:
    """MatMulNBits ``B`` (uint8 ``[N, k_blocks, block_size/2]``) and ``scales`` (``[N*k_blocks]``)
    of a ``[K, N]`` weight."""
    k, n = w_kn.shape
    blocks = -(-k // block_size)
    padded = np.zeros((blocks * block_size, n), dtype=np.float64)
    padded[:k] = w_kn
    per_block = padded.T.reshape(n, blocks, block_size)
    absmax = np.abs(per_block).max(axis=2)
    scale = np.where(absmax > 0, absmax / 7.0, 1.0)
    codes = (np.clip(np.round(per_block / scale[..., None]), -7, 7) + 8).astype(np.uint8)
    packed = (codes[..., 0::2] | (codes[..., 1::2] << 4)).astype(np.uint8)
    return packed, scale.astype(FLOAT).reshape(-1)


def unpack_int4_blocks(packed: np.ndarray, scales: np.ndarray, k: int) -> np.ndarray:
    """The ``[K, N]`` float weight MatMulNBits computes with (the inverse of the packing)."""
    n, blocks, _ = packed.shape
    codes = np.empty((n, blocks, packed.shape[2] * 2), dtype=np.int16)
    codes[..., 0::2] = packed & 0x0F
    codes[..., 1::2] = packed >> 4
    w = (codes - 8) * scales.reshape(n, blocks, 1).astype(np.float64)
    return w.reshape(n, -1)[:, :k].T


def _rewrite_int8(graph: gs.Graph, node: gs.Node, w: gs.Constant, names: NameFactory) -> None:
    trans_b = is_standard_op(node, "Gemm") and node.attrs.get("transB", 0)
    axis = 0 if trans_b else 1
    q, scale = int8_channel(np.asarray(w.values), axis)
    out = gs.Variable(names(f"{w.name}_dequantized"), dtype=FLOAT, shape=list(q.shape))
    dq = gs.Node("DequantizeLinear", names(f"{w.name}_DequantizeLinear"), attrs={"axis": axis},
                 inputs=[gs.Constant(names(f"{w.name}_quantized"), q), gs.Constant(names(f"{w.name}_scale"), scale),
                         gs.Constant(names(f"{w.name}_zero_point"), np.zeros(scale.shape, np.int8))],
                 outputs=[out])
    node.inputs[1] = out
    graph.nodes.append(dq)


def _rewrite_int4(graph: gs.Graph, node: gs.Node, w: gs.Constant, names: NameFactory, block_size: int) -> None:
    w_kn = np.asarray(w.values, dtype=np.float64)
    bias = None
    if is_standard_op(node, "Gemm"):
        if node.attrs.get("transB", 0):
            w_kn = w_kn.T
        w_kn = w_kn * float(node.attrs.get("alpha", 1.0))
        if len(node.inputs) > 2 and node.inputs[2] is not None and node.inputs[2].name:
            bias = node.inputs[2]
    packed, scales = pack_int4_blocks(w_kn, block_size)
    k, n = w_kn.shape
    base = node.name or w.name
    out = node.outputs[0]
    mm_out = gs.Variable(names(f"{base}_nbits_out"), dtype=FLOAT) if bias is not None else out
    mm = gs.Node("MatMulNBits", names(f"{base}_MatMulNBits"), domain=MS_DOMAIN,
                 attrs={"K": k, "N": n, "bits": 4, "block_size": block_size},
                 inputs=[node.inputs[0], gs.Constant(names(f"{w.name}_int4"), packed),
                         gs.Constant(names(f"{w.name}_int4_scales"), scales)],
                 outputs=[mm_out])
    node.outputs = []
    node.inputs = []
    graph.nodes.append(mm)
    if bias is not None:
        beta = float(node.attrs.get("beta", 1.0))
        if beta != 1.0:
            bias = gs.Constant(names(f"{bias.name}_beta"), (np.asarray(bias.values) * beta).astype(FLOAT))
        graph.nodes.append(gs.Node("Add", names(f"{base}_bias"), inputs=[mm_out, bias], outputs=[out]))


def rewrite_weights(graph: gs.Graph, bits: int, block_size: int, result: PassResult) -> int:
    """Rewrites every eligible MatMul/Gemm of ``graph``; returns how many."""
    names = NameFactory(graph)
    done = 0
    for node in [n for n in graph.nodes if is_standard_op(n, "MatMul", "Gemm")]:
        w, reason = weight_of(node)
        if w is None:
            result.skip(reason)
            result.details.append({"node": node.name or node_label(node), "reason": reason})
            continue
        if bits == 8:
            _rewrite_int8(graph, node, w, names)
        else:
            if is_standard_op(node, "Gemm") and isinstance(node.inputs[2] if len(node.inputs) > 2 else None, gs.Variable):
                result.skip("weights-only: Gemm with a non-constant C")
                continue
            _rewrite_int4(graph, node, w, names, block_size)
        result.count(f"weights_only_{node.op}")
        done += 1
    graph.cleanup()
    return done


def run_weights_only(quant_pass, graph: gs.Graph, ctx: Context) -> PassResult:
    """The quant pass with ``weights_only``: rewrite the weights, then record size and speed."""
    opts = quant_pass.options
    result = PassResult(modified=False)
    if opts.bits == 8 and ctx.require_opset(13):
        result.count("opset_upgraded_to", 13)
        graph = ctx.graph
    reference = ctx.model.copy()
    if not rewrite_weights(graph, opts.bits, opts.block_size, result):
        return result
    graph.toposort()
    before, after = len(model_bytes(reference)), len(model_bytes(ctx.model))
    result.stats.update({"weights_only_bits": opts.bits, "model_bytes_fp32": before, "model_bytes": after,
                         "size_ratio": round(after / before, 4)})
    _record_latency(reference, ctx, result)
    result.modified = True
    return result


def _record_latency(reference, ctx: Context, result: PassResult) -> None:
    from graphc.bench.latency import compare_latency

    feed = next(iter(ctx.data), None) if ctx.data is not None else None
    if feed is None:
        return
    cmp = compare_latency(reference, ctx.model, feed, threads=1, warmup=3, rounds=LATENCY_ROUNDS)
    result.stats.update({"latency_fp32_ms": round(cmp.median_a_ms, 4), "latency_ms": round(cmp.median_b_ms, 4),
                         "speed_vs_fp32": round(cmp.median_a_ms / cmp.median_b_ms, 3)})


def check_options(options) -> None:
    """Parse-time checks of the weights-only options (ValueError becomes an OptionError)."""
    if options.block_size & (options.block_size - 1):
        raise ValueError(f"block-size={options.block_size} is not a power of two")
    if not options.weights_only:
        return
    if options.bits not in (4, 8):
        raise ValueError(f"weights-only=true takes bits=8 (int8 DequantizeLinear) or bits=4 "
                         f"(MatMulNBits), not bits={options.bits}")
    if options.min_sqnr is not None or options.bias_correction:
        raise ValueError("weights-only=true cannot be combined with min-sqnr or bias-correction")
