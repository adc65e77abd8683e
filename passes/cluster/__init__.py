"""cluster: weight sharing - each layer's weights replaced by a codebook of at most 2^bits values.

Every Conv, ConvTranspose, Gemm and MatMul with a constant float weight ``W`` gets a per-layer
codebook ``c`` (k = 2^bits centres, 2..256) and an index per weight, found by weighted k-means
(:mod:`.kmeans`: seeded k-means++, so runs are deterministic; Han et al.'s Deep Compression
shares weights this way). Zeros stay exact: when ``W`` has zeros (after sparsify or prune),
centre 0 of the codebook is 0.0, kept for them alone, and the other k - 1 centres cluster the
nonzeros - the sparsity survives and the indices of zeros are all 0.

Data-aware (with ``--data`` and ``weighted=true``): weight ``w`` of input feature ``j`` counts
with importance ``E[x_j^2]`` (mean square of that input channel over the calibration data), so
the codebook minimises ``sum_j E[x_j^2] (w_j - c)^2``, each weight's share of the output error when
inputs are uncorrelated. Without data every weight counts alike.

Stored form that onnxruntime runs: ``uint8`` indices (the shape of W) and the codebook (float,
the weight's dtype), decoded by ``Gather(codebook, Cast(indices, int32))`` into the layer's weight
input. With ``pack=true`` (the default), a codebook of at most 16 values (bits <= 4) and at least
1024 weights (below, the unpacking nodes cost more than they save), the indices are packed two to a byte and unpacked in the graph by Mod/BitShift on uint8
(:mod:`graphc.ir.codebook`; opset >= 11, else uint8): half the index bytes, the same decoded
weight bit for bit. All inputs are constants, so onnxruntime folds the decode at session creation:
inference runs the dense weight at the same speed, the file holds one byte (or half a byte) per
weight instead of four, and the entropy-coded size (:mod:`graphc.ir.compressed_size`) counts the
Huffman-coded indices.
Don't run fold-constants after cluster: it would decode the weights back into dense constants.

A layer whose weight is already decoded from a codebook is no longer constant and is skipped:
the pass is idempotent. Details per layer: node, op, clusters, bits, params, weighted, and the
relative weight error ``||W - W'|| / ||W||`` (importance-weighted when data-aware).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from graphc.calib.moments import channel_moments
from graphc.ir import NameFactory
from graphc.ir.codebook import NIBBLE_SYMBOLS, PACK_MIN_INDICES, PACKING_OPSET, pack_nibbles
from graphc.passes.cluster.kmeans import kmeans_1d
from graphc.passmanager import Context, Pass, PassResult, option, register_pass
from graphc.rewrite.linear_weights import LinearWeight, collect_linear_weights

#: ONNX TensorProto.INT32 (Gather reads int32 or int64 indices, not uint8)
CAST_TO_INT32 = 6


@dataclass
class _Layer:
    weight: LinearWeight
    importance: np.ndarray | None = None  # per weight, in the weight's own layout


@register_pass
class Cluster(Pass):
    name = "cluster"
    summary = "weight sharing: per-layer k-means codebooks (2^bits values), uint8 or packed 4-bit indices + Gather"
    exact = False
    needs_data = True

    @dataclass(frozen=True)
    class Options:
        bits: int = option(4, "codebook of 2^bits values per layer (1..8: 2..256 centres)", min=1, max=8)
        weighted: bool = option(True, "with --data: weigh each weight by its input channel's mean square")
        seed: int = option(0, "k-means++ seed (the result is deterministic for a seed)", min=0)
        min_params: int = option(0, "leave layers with fewer weights than this as they are", min=0)
        ignore: tuple[str, ...] = option((), "node name patterns (fnmatch) left as they are")
        pack: bool = option(True, "codebooks of <= 16 values, layers of >= 1024 weights: two indices per "
                            "byte, unpacked in the graph by Mod/BitShift (opset >= 11)")

    def requires_data(self) -> bool:
        return False  # data only weighs the clustering

    def run(self, graph: gs.Graph, ctx: Context) -> PassResult:
        result = PassResult(modified=False)
        layers = self._candidates(graph, ctx, result)
        if layers and ctx.data is not None and self.options.weighted:
            _attach_importance(ctx, layers)
        names = NameFactory(graph)
        pack = self.options.pack and ctx.opset >= PACKING_OPSET
        if self.options.pack and not pack and layers:
            ctx.note(f"cluster: opset {ctx.opset} < {PACKING_OPSET} has no BitShift; indices stored as uint8")
        unpacking = _Unpacking(graph, names) if pack else None
        for layer in layers:
            record = self._cluster(graph, layer, names, unpacking)
            result.count("clustered")
            result.details.append(record)
        if result.details:
            graph.cleanup()  # drops the replaced float weights, once for all layers
        result.modified = bool(result.details)
        return result

    def _candidates(self, graph: gs.Graph, ctx: Context, result: PassResult) -> list[_Layer]:
        opts = self.options
        weights = collect_linear_weights(graph, ctx.shapes(), result, action="clustered",
                                         ignore=opts.ignore, min_params=opts.min_params)
        return [_Layer(weight) for weight in weights]

    def _cluster(self, graph: gs.Graph, layer: _Layer, names: NameFactory, unpacking: "_Unpacking | None") -> dict:
        w = np.asarray(layer.weight.tensor.values)
        codebook, indices = share_weights(w, 2 ** self.options.bits, layer.importance, self.options.seed)
        decoded = codebook[indices]
        h = np.ones(w.shape) if layer.importance is None else layer.importance
        w64 = w.astype(np.float64)
        signal = float(np.sum(h * w64 ** 2))
        error = float(np.sqrt(np.sum(h * (w64 - decoded) ** 2) / signal)) if signal > 0 else 0.0
        packed = unpacking is not None and codebook.size <= NIBBLE_SYMBOLS and indices.size >= PACK_MIN_INDICES
        _decode_into(graph, layer.weight, codebook.astype(w.dtype), indices, names, unpacking if packed else None)
        return {"node": layer.weight.label, "op": layer.weight.node.op, "clusters": int(codebook.size),
                "bits": self.options.bits, "params": int(w.size), "weighted": layer.importance is not None,
                "packed": packed, "est_error": error}


def share_weights(w: np.ndarray, k: int, importance: np.ndarray | None, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(codebook float64 (<= k,), uint8 indices the shape of w); zeros map to an exact 0.0 at index 0."""
    flat = w.astype(np.float64).reshape(-1)
    h = None if importance is None else importance.reshape(-1)
    zero = flat == 0
    if not zero.any():
        book = kmeans_1d(flat, k, h, seed=seed)
        return book.centres, book.assignment.astype(np.uint8).reshape(w.shape)
    indices = np.zeros(flat.size, dtype=np.uint8)
    if zero.all():
        return np.zeros(1), indices.reshape(w.shape)
    book = kmeans_1d(flat[~zero], k - 1, None if h is None else h[~zero], seed=seed)
    indices[~zero] = (book.assignment + 1).astype(np.uint8)
    return np.concatenate([[0.0], book.centres]), indices.reshape(w.shape)


def _decode_into(graph: gs.Graph, weight: LinearWeight, codebook: np.ndarray, indices: np.ndarray,
                 names: NameFactory, unpacking: "_Unpacking | None") -> None:
    """Replace the node's weight input by Gather(codebook, Cast(indices, int32)), the indices a
    uint8 constant or unpacked from two per byte (:mod:`graphc.ir.codebook`)."""
    base = weight.tensor.name
    book = gs.Constant(names(f"{base}.codebook"), np.ascontiguousarray(codebook))
    if unpacking is not None:
        codes = unpacking(base, indices)
    else:
        codes = gs.Constant(names(f"{base}.indices"), np.ascontiguousarray(indices))
    wide = gs.Variable(names(f"{base}.indices_int32"), dtype=np.int32, shape=list(indices.shape))
    decoded = gs.Variable(names(f"{base}.decoded"), dtype=codebook.dtype, shape=list(indices.shape))
    graph.nodes.append(gs.Node(op="Cast", name=names(f"{base}.cast"), inputs=[codes], outputs=[wide],
                               attrs={"to": CAST_TO_INT32}))
    graph.nodes.append(gs.Node(op="Gather", name=names(f"{base}.gather"), inputs=[book, wide],
                               outputs=[decoded], attrs={"axis": 0}))
    weight.node.inputs[1] = decoded


class _Unpacking:
    """Builds each packed layer's unpacking (:mod:`graphc.ir.codebook`); the modulus and shift
    scalars are one pair of constants for the whole graph, and an even count of indices is
    reshaped straight from the (rows, 2) pairs, so a layer costs few bytes of graph."""

    def __init__(self, graph: gs.Graph, names: NameFactory):
        self.graph, self.names = graph, names
        self._scalars: tuple[gs.Constant, gs.Constant] | None = None

    def scalars(self) -> tuple[gs.Constant, gs.Constant]:
        if self._scalars is None:
            self._scalars = (gs.Constant(self.names("cluster.nibble_modulus"), np.asarray(np.uint8(NIBBLE_SYMBOLS))),
                             gs.Constant(self.names("cluster.nibble_shift"), np.asarray(np.uint8(4))))
        return self._scalars

    def __call__(self, base: str, indices: np.ndarray) -> gs.Variable:
        """The uint8 indices, unpacked in the graph from their two-per-byte constant."""
        packed = gs.Constant(self.names(f"{base}.indices_packed"), pack_nibbles(indices))
        rows, count = packed.values.shape[0], int(indices.size)
        modulus, shift = self.scalars()
        low = self._node("Mod", base, "lo", [packed, modulus], [rows, 1])
        high = self._node("BitShift", base, "hi", [packed, shift], [rows, 1], direction="RIGHT")
        pairs = self._node("Concat", base, "pairs", [low, high], [rows, 2], axis=1)
        if count != 2 * rows:  # drop the pad nibble of an odd count
            flat = self._node("Reshape", base, "flat", [pairs, self._ints(base, "flat_shape", [2 * rows])], [2 * rows])
            pairs = self._node("Slice", base, "cut", [flat, self._ints(base, "start", [0]),
                                                      self._ints(base, "stop", [count])], [count])
        shape = self._ints(base, "shape", list(indices.shape))
        return self._node("Reshape", base, "idx", [pairs, shape], list(indices.shape))

    def _node(self, op: str, base: str, tag: str, inputs: list, shape: list[int], **attrs) -> gs.Variable:
        out = gs.Variable(self.names(f"{base}.{tag}"), dtype=np.uint8, shape=shape)
        self.graph.nodes.append(gs.Node(op=op, name=self.names(f"{base}.{tag}_op"), inputs=inputs, outputs=[out],
                                        attrs=attrs))
        return out

    def _ints(self, base: str, tag: str, values: list[int]) -> gs.Constant:
        return gs.Constant(self.names(f"{base}.{tag}"), np.array(values, dtype=np.int64))


def _input_channel(weight: LinearWeight) -> tuple[int, np.ndarray]:
    """(channel axis of the input, the input channel each weight element multiplies)."""
    w = weight.tensor.values
    if weight.kind in ("matmul", "gemm"):  # (in, out)
        return -1, np.broadcast_to(np.arange(w.shape[0])[:, None], w.shape)
    if weight.kind == "gemm_t":  # (out, in)
        return -1, np.broadcast_to(np.arange(w.shape[1])[None, :], w.shape)
    extra = (1,) * (w.ndim - 2)
    if weight.kind == "convtranspose":  # (Cin, Cout/g, k...)
        return 1, np.broadcast_to(np.arange(w.shape[0]).reshape(-1, 1, *extra), w.shape)
    groups = int(weight.node.attrs.get("group", 1))
    per_group_out, per_group_in = w.shape[0] // groups, w.shape[1]
    group_of_row = np.arange(w.shape[0]) // per_group_out
    channel = group_of_row[:, None] * per_group_in + np.arange(per_group_in)[None, :]
    return 1, np.broadcast_to(channel.reshape(*channel.shape, *extra), w.shape)


def _attach_importance(ctx: Context, layers: list[_Layer]) -> None:
    """Per weight, the mean square of the input channel it multiplies, in one calibration run."""
    axes = {}
    channels = {}
    for i, layer in enumerate(layers):
        axes[layer.weight.input_name], channels[i] = _input_channel(layer.weight)
    moments = channel_moments(ctx.model, ctx.data, axes)
    for i, layer in enumerate(layers):
        square = moments[layer.weight.input_name].mean_square
        if square.size > int(channels[i].max()):
            layer.importance = square[channels[i]]
