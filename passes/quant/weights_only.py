"""Weights-only quantization for ``quant{weights-only=true bits=8|4}``: MatMul/Gemm weights are
stored as integers, activations stay float (no calibration of ranges; no Q on activations).

- ``bits=8``: each constant weight ``W`` becomes ``DequantizeLinear(q, s, 0)`` per output channel
  (``axis`` = the N axis: 1 for MatMul ``[K, N]`` and Gemm with ``transB=0``, 0 for Gemm with
  ``transB=1``), symmetric: ``s_n = max|W_:n| / 127``, ``q = clip(round(W / s_n), -127, 127)``
  (the arithmetic of :func:`graphc.passes.quant.rewrite.weight_params`). The consumer computes
  ``x @ (q s)``: in ONNX semantics the only error is the weight rounding, ``|W - q s| <= s / 2``.
  Needs opset 13. onnxruntime (1.32, graph optimizations on) fuses a MatMul's int8 DQ into an
  8-bit MatMulNBits with ``accuracy_level=4``, which also rounds the activations to int8: a few dB
  below the ONNX semantics (measured in BENCHMARKS.md, weights-only section).
- ``bits=4``: the ``[K, N]`` weight (a Gemm's transposed to ``[K, N]`` if ``transB=1``, its
  ``alpha`` folded in) is cut along K into blocks of ``block_size`` rows, ``k_blocks =
  ceil(K / block_size)``, the last block shorter when K is not a multiple. Each block ``b`` of
  each column ``n`` has one scale ``s[b, n] = max|w| / 7`` (1 for an all-zero block) and codes
  ``c = clip(round(w / s), -7, 7)`` (symmetric: -8 is never used, zero point 0). The consumer
  computes ``x @ W'`` with ``W'[k, n] = c[k, n] s[k // block_size, n]``, ``|W - W'| <= s / 2``.
  The same codes and scales are written in one of two formats (``int4-format``):

  - ``dq``: standard ``DequantizeLinear-21(c, s)`` with ``axis=0``, ``block_size``, ``c`` an
    INT4 tensor ``[K, N]`` and ``s`` float ``[k_blocks, N]`` (no padding: opset 21 accepts a
    shorter last block), no zero-point input; the MatMul (or Gemm, now ``transB=0, alpha=1``,
    ``beta`` folded into ``C`` when ``C`` is constant) reads the dequantized weight. Raises the
    opset to 21 when the model is older. With graph optimizations on, onnxruntime 1.32 fuses
    DequantizeLinear + MatMul (and + Gemm with ``alpha = beta = 1``) into MatMulNBits with
    ``accuracy_level=4`` (the default of its session option
    ``session.qdq_matmulnbits_accuracy_level``): that kernel also rounds the activations to int8
    per block, so it runs faster on large MatMuls than the ``nbits`` format's float activations,
    slower on small ones, and adds that rounding to the weight error.
  - ``nbits``: onnxruntime's contrib op ``com.microsoft.MatMulNBits(A, B, scales)`` with
    attributes ``K``, ``N``, ``bits=4``, ``block_size`` (``accuracy_level`` 0: float
    activations). ``B`` is uint8 ``[N, k_blocks, block_size / 2]`` of ``u = c + 8`` in [1, 15]
    (the op's default zero point is 8; K padded with ``c = 0``): element ``2j`` of a block in the
    low nibble of byte ``j``, element ``2j + 1`` in the high nibble; ``scales`` is float
    ``[N * k_blocks]``, ordered n-major. A Gemm's ``C`` (times ``beta``) becomes a following Add;
    a Gemm whose ``C`` is not constant stays float.

  ``auto`` is ``dq`` for a model at opset 21 or later, else ``nbits`` (no opset upgrade).

Only 2-D float32 constant weights whose consumer reads them as the second MatMul/Gemm input are
rewritten, in the top graph and inside If/Loop/Scan bodies (the new nodes go into the body that
holds the MatMul/Gemm; an outer-scope weight a body reads becomes a DQ inside that body); MatMuls of two activations (attention scores) stay float, with a reason. Nothing is
upgraded when nothing is rewritten. The pass records the format, the serialized model size before
and after, and the latency of the float and the rewritten model (onnxruntime, one thread,
alternating runs, medians) on the first calibration feed, or without data on a seeded random feed
of the declared input shapes (``--input-shape`` for dynamic dims, else a nominal shape, said in a
log line: :mod:`graphc.calib.shapes`): the latency of these kernels does not depend on the input
values. The size is always recorded.
"""
from __future__ import annotations

import logging

import numpy as np
import onnx_graphsurgeon as gs

from graphc.errors import DataError
from graphc.ir import NameFactory, is_standard_op, model_bytes, node_label, walk_graphs
from graphc.passmanager import Context, PassResult

log = logging.getLogger(__name__)

FLOAT = np.float32
MS_DOMAIN = "com.microsoft"
LATENCY_ROUNDS = 20
#: opset whose DequantizeLinear takes INT4 data and a ``block_size``.
BLOCKED_DQ_OPSET = 21


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


def int4_format(choice: str, opset: int) -> str:
    """``dq`` or ``nbits`` for ``int4-format=choice`` on a model at ``opset``."""
    if choice != "auto":
        return choice
    return "dq" if opset >= BLOCKED_DQ_OPSET else "nbits"


def int8_channel(w: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 codes and one scale per index of ``axis``."""
    other = 1 - axis
    absmax = np.abs(w.astype(np.float64)).max(axis=other)
    scale = np.where(absmax > 0, absmax / 127.0, 1.0).astype(FLOAT)
    shape = [1, 1]
    shape[axis] = -1
    q = np.clip(np.round(w.astype(np.float64) / scale.astype(np.float64).reshape(shape)), -127, 127)
    return q.astype(np.int8), scale


def int4_blocks(w_kn: np.ndarray, block_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric 4-bit codes (int8 ``[K, N]`` in [-7, 7]) and float32 scales
    (``[ceil(K / block_size), N]``) of a ``[K, N]`` weight, blocked along K."""
    k, n = w_kn.shape
    blocks = -(-k // block_size)
    padded = np.zeros((blocks * block_size, n), dtype=np.float64)
    padded[:k] = w_kn
    absmax = np.abs(padded.reshape(blocks, block_size, n)).max(axis=1)
    scale = np.where(absmax > 0, absmax / 7.0, 1.0).astype(FLOAT)
    codes = np.clip(np.round(w_kn / np.repeat(scale.astype(np.float64), block_size, axis=0)[:k]), -7, 7)
    return codes.astype(np.int8), scale


def dequantize_int4_blocks(codes: np.ndarray, scales: np.ndarray, block_size: int) -> np.ndarray:
    """``W'[k, n] = c[k, n] s[k // block_size, n]`` (what DequantizeLinear-21 computes), float64."""
    return codes.astype(np.float64) * np.repeat(scales.astype(np.float64), block_size, axis=0)[:codes.shape[0]]


def pack_int4_blocks(w_kn: np.ndarray, block_size: int) -> tuple[np.ndarray, np.ndarray]:
    """MatMulNBits ``B`` (uint8 ``[N, k_blocks, block_size/2]``) and ``scales`` (``[N*k_blocks]``)
    of a ``[K, N]`` weight: the codes of :func:`int4_blocks` plus 8, K padded with code 0."""
    codes, scale = int4_blocks(w_kn, block_size)
    k, n = codes.shape
    blocks = scale.shape[0]
    padded = np.zeros((blocks * block_size, n), dtype=np.int16)
    padded[:k] = codes
    unsigned = (padded.T.reshape(n, blocks, block_size) + 8).astype(np.uint8)
    packed = (unsigned[..., 0::2] | (unsigned[..., 1::2] << 4)).astype(np.uint8)
    return packed, scale.T.reshape(-1)


def unpack_int4_blocks(packed: np.ndarray, scales: np.ndarray, k: int) -> np.ndarray:
    """The ``[K, N]`` float weight MatMulNBits computes with (the inverse of the packing)."""
    n, blocks, _ = packed.shape
    codes = np.empty((n, blocks, packed.shape[2] * 2), dtype=np.int16)
    codes[..., 0::2] = packed & 0x0F
    codes[..., 1::2] = packed >> 4
    w = (codes - 8) * scales.reshape(n, blocks, 1).astype(np.float64)
    return w.reshape(n, -1)[:, :k].T


def int4_constant(name: str, codes: np.ndarray) -> gs.Constant:
    """An INT4 constant of ``codes`` (values in [-8, 7]); :func:`graphc.ir.to_proto` packs it
    two per byte on export."""
    import ml_dtypes  # lazy: only int4 weights need it (it comes with onnx, not declared by graphc)

    return gs.Constant(name, codes.astype(ml_dtypes.int4))


def weight_kn(node: gs.Node, w: gs.Constant) -> np.ndarray:
    """The weight as the ``[K, N]`` matrix the node multiplies by (a Gemm's ``alpha`` folded in)."""
    w_kn = np.asarray(w.values, dtype=np.float64)
    if is_standard_op(node, "Gemm"):
        if node.attrs.get("transB", 0):
            w_kn = w_kn.T
        w_kn = w_kn * float(node.attrs.get("alpha", 1.0))
    return w_kn


def _gemm_bias(node: gs.Node) -> gs.Tensor | None:
    return node.inputs[2] if len(node.inputs) > 2 and node.inputs[2] is not None and node.inputs[2].name else None


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


def _rewrite_int4_dq(graph: gs.Graph, node: gs.Node, w: gs.Constant, names: NameFactory, block_size: int) -> None:
    codes, scale = int4_blocks(weight_kn(node, w), block_size)
    out = gs.Variable(names(f"{w.name}_dequantized"), dtype=FLOAT, shape=list(codes.shape))
    graph.nodes.append(gs.Node(
        "DequantizeLinear", names(f"{w.name}_DequantizeLinear"), attrs={"axis": 0, "block_size": block_size},
        inputs=[int4_constant(names(f"{w.name}_int4"), codes), gs.Constant(names(f"{w.name}_int4_scale"), scale)],
        outputs=[out]))
    node.inputs[1] = out
    if is_standard_op(node, "Gemm"):  # onnxruntime fuses DQ + Gemm only with transB = 0, alpha = beta = 1
        node.attrs.pop("transB", None)
        node.attrs.pop("alpha", None)
        bias, beta = _gemm_bias(node), float(node.attrs.get("beta", 1.0))
        if isinstance(bias, gs.Constant) and beta != 1.0:
            node.inputs[2] = gs.Constant(names(f"{bias.name}_beta"), (np.asarray(bias.values) * beta).astype(FLOAT))
            node.attrs.pop("beta")


def _rewrite_int4_nbits(graph: gs.Graph, node: gs.Node, w: gs.Constant, names: NameFactory,
                        block_size: int) -> None:
    w_kn = weight_kn(node, w)
    bias = _gemm_bias(node) if is_standard_op(node, "Gemm") else None
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


def eligible_weights(graph: gs.Graph, fmt: str, result: PassResult) -> list[tuple[gs.Node, gs.Constant]]:
    """The MatMul/Gemm nodes to rewrite in format ``fmt`` with their weights; the others are
    counted in ``result`` with their reason."""
    targets = []
    for node in [n for _, scope in walk_graphs(graph) for n in scope.nodes if is_standard_op(n, "MatMul", "Gemm")]:
        w, reason = weight_of(node)
        if w is not None and fmt == "nbits" and isinstance(_gemm_bias(node), gs.Variable):
            w, reason = None, "weights-only: Gemm with a non-constant C"
        if w is None:
            result.skip(reason)
            result.details.append({"node": node.name or node_label(node), "reason": reason})
            continue
        targets.append((node, w))
    return targets


def rewrite_weights(graph: gs.Graph, targets: list[tuple[gs.Node, gs.Constant]], bits: int, fmt: str,
                    block_size: int, result: PassResult) -> None:
    """Rewrites the weights of ``targets`` (from :func:`eligible_weights`) in format ``fmt``."""
    names = NameFactory(graph)  # one factory: names are unique across the graph and its bodies
    scope_of = {id(n): scope for _, scope in walk_graphs(graph) for n in scope.nodes}
    for node, w in targets:
        scope = scope_of[id(node)]  # the new nodes go into the body that holds the MatMul/Gemm
        if bits == 8:
            _rewrite_int8(scope, node, w, names)
        elif fmt == "dq":
            _rewrite_int4_dq(scope, node, w, names, block_size)
        else:
            _rewrite_int4_nbits(scope, node, w, names, block_size)
        result.count(f"weights_only_{node.op}")
    for _, scope in walk_graphs(graph):
        scope.toposort()  # a body's new DequantizeLinear must come before its reader
    graph.cleanup()


def run_weights_only(quant_pass, graph: gs.Graph, ctx: Context) -> PassResult:
    """The quant pass with ``weights_only``: rewrite the weights, then record size and speed."""
    opts = quant_pass.options
    result = PassResult(modified=False)
    fmt = "dq" if opts.bits == 8 else int4_format(opts.int4_format, ctx.opset)
    if not eligible_weights(graph, fmt, result):
        return result
    reference = ctx.model.copy()
    needed = 13 if opts.bits == 8 else BLOCKED_DQ_OPSET if fmt == "dq" else None
    if needed is not None and ctx.require_opset(needed):
        result.count("opset_upgraded_to", needed)
        graph = ctx.graph  # new node objects: find the targets again (reasons already counted)
    targets = eligible_weights(graph, fmt, PassResult(modified=False))
    rewrite_weights(graph, targets, opts.bits, fmt, opts.block_size, result)
    graph.toposort()
    before, after = len(model_bytes(reference)), len(model_bytes(ctx.model))
    result.stats.update({"weights_only_bits": opts.bits, "weights_only_format": fmt,
                         "model_bytes_fp32": before, "model_bytes": after, "size_ratio": round(after / before, 4)})
    if opts.bits == 4:
        result.stats["block_size"] = opts.block_size
    _record_latency(reference, ctx, result)
    result.modified = True
    return result


def _record_latency(reference, ctx: Context, result: PassResult) -> None:
    from graphc.bench.latency import bench_feeds, compare_latency  # lazy: loads onnxruntime

    try:
        feed = bench_feeds(reference, ctx.data, input_shapes=ctx.input_shapes or None, seed=ctx.seed)
    except DataError as exc:
        result.skip("weights-only: latency not measured (no data, and input shapes unknown)")
        log.info("weights-only: latency not measured: %s", exc)
        return
    cmp = compare_latency(reference, ctx.model, feed, threads=1, warmup=3, rounds=LATENCY_ROUNDS)
    result.stats.update({"latency_fp32_ms": round(cmp.median_a_ms, 4), "latency_ms": round(cmp.median_b_ms, 4),
                         "speed_vs_fp32": round(cmp.median_a_ms / cmp.median_b_ms, 3),
                         "latency_feed": "calibration" if ctx.data is not None else "random"})


def check_options(options) -> None:
    """Parse-time checks of the weights-only options (ValueError becomes an OptionError)."""
    if options.block_size & (options.block_size - 1):
        raise ValueError(f"block-size={options.block_size} is not a power of two")
    if not options.weights_only:
        return
    if options.bits not in (4, 8):
        raise ValueError(f"weights-only=true takes bits=8 (int8 DequantizeLinear) or bits=4 "
                         f"(int4 block-wise DequantizeLinear or MatMulNBits), not bits={options.bits}")
    if options.has_budget or options.bias_correction:
        raise ValueError("weights-only=true cannot be combined with min-sqnr, max-top1-drop, min-cosine, "
                         "max-metric-drop or bias-correction")
