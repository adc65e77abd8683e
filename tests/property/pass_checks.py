"""What the property tests check of one pass on one random graph, and the oracles they use.

For every pass (``check_pass_on``):

- the result passes ``onnx.checker`` with ``full_check=True`` and loads and runs in onnxruntime;
- the model's interface (input and output names, dtypes, shapes) is unchanged;
- an exact pass keeps every output within rtol 1e-5 / atol 1e-6 (``numpy.testing.assert_allclose``);
- a lossy pass keeps every output above its floors (``LOSSY_FLOORS``: SQNR in dB and cosine against
  onnxruntime on the original, computed here in float64 numpy, not by graphc's metrics);
- pass-specific oracles, independent of the pass's code:
  ``quant``: every Conv/Gemm/MatMul weight read through a DequantizeLinear dequantizes to within
  half a quantization step of the original float weight;
  ``fp16``: every float16 initializer of the result is the float32 one of the same name (or of
  the name before its ``.float16`` suffix) rounded to float16, exactly;
  ``prune``: the pruned model computes what the original computes with the removed channels'
  producers zeroed (``mask_channels`` on the original, channels named by the pass's records), at
  rtol 1e-4 / atol 1e-5 - exact, since the property test prunes with ``exact-borders=true``;
- the pass is idempotent: a second run reports ``modified=False`` and leaves the bytes as they were.

``check_pass_on`` returns whether the pass rewrote the graph, so the tests can assert the share of
graphs a pass applied to (``MIN_REWRITTEN``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import onnx
from onnx import numpy_helper

import graphc
from graphc.analysis import analyze_channels, mask_channels
from graphc.passes.prune.allocation import group_keys
from graphc.calib.data import RandomSource, input_specs
from graphc.ir.codebook import unpack_nibbles
from graphc.ir import infer_shapes, to_proto
from graphc.passmanager import PassManager
from support import run

#: passes whose rewrite must not change the outputs (beyond float rounding).
EXACT_PASSES = frozenset({"cleanup", "fold-constants", "fold-bn", "canonicalize", "equalize", "smooth",
                          "merge-matmuls"})
#: passes expected to move the outputs (checked against LOSSY_FLOORS and their own oracles).
LOSSY_PASSES = frozenset({"quant", "factorize", "prune", "fp16", "sparsify", "cluster"})
#: pipeline text used for a pass when its defaults do not suit tiny random graphs.
PASS_TEXT: dict[str, str] = {
    "quant": "quant{placement=all}",           # the speed model keeps tiny graphs float
    "prune": "prune{exact-borders=true}",      # so the masked original is an exact oracle
    "sparsify": "sparsify{repair=false}",      # magnitude: kept weights are the originals (its oracle);
                                               # repair is tested in tests/passes/test_sparsify.py
}
#: exact passes left out of the chained pipeline test (test_exact_pipeline_on_random_graphs says why).
CHAIN_EXCLUDED = frozenset({"equalize"})
#: passes that are not idempotent by design, with the reason.
NOT_IDEMPOTENT: dict[str, str] = {}
#: known bugs: pass -> (predicate on the input model that triggers it, reason). Such graphs are
#: skipped for that pass here; tests/robustness/test_known_bugs.py holds a minimal failing case
#: (strict xfail). Delete the entry when the bug is fixed.
KNOWN_BUGS: dict[str, tuple[Callable[[onnx.ModelProto], bool], str]] = {}


RTOL, ATOL = 1e-5, 1e-6
#: cluster's default 16-value codebooks on the drawn graphs (test_pass_properties.py's docstring)
CLUSTER_FLOOR_DB = 12.0
PRUNE_RTOL, PRUNE_ATOL = 1e-4, 1e-5


@dataclass(frozen=True)
class Floor:
    """Lowest SQNR (dB) and cosine a lossy pass may leave on any output of a random graph."""

    sqnr_db: float
    cosine: float


#: measured on the drawn graphs (tests/property/test_pass_properties.py's docstring has the minima)
#: and set just under them. prune has no floor: removing a quarter of random channels may cost any
#: amount; its oracle is the masked original instead.
LOSSY_FLOORS: dict[str, Floor] = {
    "quant": Floor(sqnr_db=15.0, cosine=0.98),
    "factorize": Floor(sqnr_db=45.0, cosine=0.99999),
    "fp16": Floor(sqnr_db=45.0, cosine=0.99999),
    "cluster": Floor(sqnr_db=CLUSTER_FLOOR_DB, cosine=0.97),
}

#: the share of drawn graphs each pass must rewrite (its menu in random_graphs.MENUS draws graphs
#: it applies to); measured shares are in test_pass_properties.py's docstring.
MIN_REWRITTEN: dict[str, float] = {
    "cleanup": 0.8, "fold-constants": 0.8, "fold-bn": 0.9, "canonicalize": 0.8, "equalize": 0.8,
    "smooth": 0.8, "quant": 0.9, "factorize": 0.9, "prune": 0.7, "fp16": 0.8, "sparsify": 0.8, "cluster": 0.9,
    "merge-matmuls": 0.8,
}


def is_exact(cls) -> bool:
    if cls.name in EXACT_PASSES:
        return True
    if cls.name in LOSSY_PASSES:
        return False
    return bool(cls.exact)


def _interface(proto: onnx.ModelProto) -> list[tuple]:
    def describe(vi):
        t = vi.type.tensor_type
        return vi.name, t.elem_type, tuple(d.dim_value or d.dim_param for d in t.shape.dim)

    inits = {i.name for i in proto.graph.initializer}
    return ([describe(v) for v in proto.graph.input if v.name not in inits],
            [describe(v) for v in proto.graph.output])


def pass_manager(cls, model) -> PassManager:
    data = RandomSource(input_specs(model), n=4, seed=1) if cls.needs_data else None
    return PassManager(PASS_TEXT.get(cls.name, cls.name), data=data)


def prepared(cls, proto: onnx.ModelProto) -> onnx.ModelProto:
    """``proto`` after the preparation the pass declares (quant: fold-bn,canonicalize), which the
    pass manager runs before it: the weights the pass itself quantizes are the prepared ones."""
    steps = PassManager(PASS_TEXT.get(cls.name, cls.name)).pipeline.steps[-1].instantiate().preparation()
    if not steps:
        return proto
    model = graphc.load(proto)
    PassManager(",".join(steps), prepare=False).run(model)
    return to_proto(model)


def sqnr_db(ref: np.ndarray, got: np.ndarray) -> float:
    ref, got = np.asarray(ref, np.float64), np.asarray(got, np.float64)
    signal, noise = float(np.sum(ref ** 2)), float(np.sum((ref - got) ** 2))
    if noise == 0.0:
        return float("inf")
    return 10 * np.log10(signal / noise) if signal > 0 else float("-inf")


def cosine(ref: np.ndarray, got: np.ndarray) -> float:
    a, b = np.asarray(ref, np.float64).ravel(), np.asarray(got, np.float64).ravel()
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    if na == 0 and nb == 0:
        return 1.0
    return float(a @ b / (na * nb)) if na > 0 and nb > 0 else 0.0


def check_pass_on(cls, proto: onnx.ModelProto, feeds: dict[str, np.ndarray], reference) -> bool:
    """All the properties of one pass on one model (raises AssertionError naming the property);
    returns whether the pass rewrote the model."""
    model = graphc.load(proto)
    report = pass_manager(cls, model).run(model)
    result = to_proto(model)
    assert _interface(result) == _interface(proto), f"{cls.name} changed the model's inputs/outputs"
    onnx.checker.check_model(result, full_check=True)
    got = run(result, feeds)  # loads in onnxruntime
    for ref, out, vi in zip(reference, got, proto.graph.output):
        assert out.shape == ref.shape, f"{cls.name}: output '{vi.name}' shape {out.shape} != {ref.shape}"
    if is_exact(cls):
        for ref, out, vi in zip(reference, got, proto.graph.output):
            np.testing.assert_allclose(out, ref, rtol=RTOL, atol=ATOL, err_msg=f"{cls.name} changed output '{vi.name}'")
    elif cls.name in LOSSY_FLOORS:
        _check_floor(cls.name, reference, got, proto, feeds)
    if cls.name == "quant":
        check_quantized_weights(prepared(cls, proto), result)
    if cls.name == "fp16":
        check_half_weights(prepared(cls, proto), result)
    if cls.name == "prune":
        check_prune_is_masking(proto, report.records[-1].details, feeds, got)
    if cls.name == "sparsify":
        check_sparsified_weights(proto, result)
    if cls.name == "cluster":
        check_clustered_weights(proto, result)
    if cls.name not in NOT_IDEMPOTENT:
        again = pass_manager(cls, model).run(model)
        assert not again.modified, f"{cls.name} is not idempotent: second run {again.records[-1].stats}"
        assert to_proto(model).SerializeToString() == result.SerializeToString(), \
            f"{cls.name}: second run reported no change but changed the model"
    return report.records[-1].modified  # the pass itself runs last, after any preparation it declares


def _check_floor(name: str, reference, got, proto, feeds) -> None:
    floor = LOSSY_FLOORS[name]
    for ref, out, vi in zip(reference, got, proto.graph.output):
        if not np.any(ref):
            continue  # an all-zero output (Relu of negatives) has no signal to compare
        db, cos = sqnr_db(ref, out), cosine(ref, out)
        if name == "fp16" and (db < floor.sqnr_db or cos < floor.cosine) and _half_bound_holds(ref, out, proto, feeds):
            continue
        assert db >= floor.sqnr_db, f"{name}: output '{vi.name}' SQNR {db:.1f} dB < floor {floor.sqnr_db} dB"
        assert cos >= floor.cosine, f"{name}: output '{vi.name}' cosine {cos:.6f} < floor {floor.cosine}"


#: fp16's relative floors assume an output about as large as the values computed on the way to it.
#: When it is much smaller (``x * s + b`` of a BatchNormalization cancelling to ~0.02 from inputs
#: ~2, then a Relu: 35.9 dB, graph 19 of the robustness benchmark's draw), float16 arithmetic
#: cannot deliver the floor: each rounding costs up to the unit roundoff 2^-11 of the values it
#: rounds, up to ``M``, the largest activation of the original graph on the same feeds. Such an
#: output is held to the forward-error bound ``max |out - ref| <= HALF_ULPS_PER_NODE * nodes *
#: 2^-11 * M`` instead (a dropped op or a wrong scale still costs about ``M``).
HALF_ULPS_PER_NODE = 2.0
SMALL_OUTPUT = 2.0 ** -4  # outputs below this share of M are "much smaller"


def _half_bound_holds(ref: np.ndarray, out: np.ndarray, proto: onnx.ModelProto, feeds) -> bool:
    largest = _largest_activation(proto, feeds)
    if float(np.max(np.abs(ref))) >= SMALL_OUTPUT * largest:
        return False  # the relative floors apply
    bound = HALF_ULPS_PER_NODE * len(proto.graph.node) * 2.0 ** -11 * largest
    err = float(np.max(np.abs(np.asarray(out, np.float64) - np.asarray(ref, np.float64))))
    assert err <= bound, (f"fp16: output max error {err:.3g} > forward-error bound {bound:.3g} "
                          f"(largest activation {largest:.3g})")
    return True


def _largest_activation(proto: onnx.ModelProto, feeds) -> float:
    """max |x| over the inputs and every node output of ``proto`` on ``feeds`` (onnxruntime)."""
    probe = onnx.ModelProto()
    probe.CopyFrom(proto)
    named = {o.name for o in probe.graph.output}
    for node in probe.graph.node:
        probe.graph.output.extend(onnx.ValueInfoProto(name=o) for o in node.output if o and o not in named)
    values = list(feeds.values()) + run(probe, feeds)
    return max(float(np.max(np.abs(v))) for v in values
               if np.asarray(v).dtype.kind == "f" and np.asarray(v).size)


# -- quant: weights round-trip ------------------------------------------------------------------

def _dequantize(codes: np.ndarray, scale: np.ndarray, zero: np.ndarray | None, axis: int) -> tuple:
    """(DequantizeLinear's output, the step per element) in float64, per the ONNX definition."""
    shape = [1] * codes.ndim
    if scale.ndim == 1 and scale.size > 1:
        shape[axis] = scale.size
    step = np.broadcast_to(scale.astype(np.float64).reshape(shape), codes.shape)
    zp = 0.0 if zero is None else zero.astype(np.float64).reshape(shape)
    return (codes.astype(np.float64) - zp) * step, step


def check_quantized_weights(original: onnx.ModelProto, result: onnx.ModelProto) -> None:
    """Every weighted node of the original that reads its weight through a DequantizeLinear of
    constants in the result: the dequantized weight is within half a step of the original one."""
    inits = {t.name: numpy_helper.to_array(t) for t in original.graph.initializer}
    new_inits = {t.name: numpy_helper.to_array(t) for t in result.graph.initializer}
    producers = {o: n for n in result.graph.node for o in n.output}
    by_name = {n.name: n for n in result.graph.node}
    for node in original.graph.node:
        if node.op_type not in ("Conv", "Gemm", "MatMul") or node.input[1] not in inits:
            continue
        new = by_name.get(node.name)
        dq = producers.get(new.input[1]) if new is not None else None
        if dq is None or dq.op_type != "DequantizeLinear" or dq.input[0] not in new_inits:
            continue
        axis = next((a.i for a in dq.attribute if a.name == "axis"), 1)
        zero = new_inits.get(dq.input[2]) if len(dq.input) > 2 and dq.input[2] else None
        weight, step = _dequantize(new_inits[dq.input[0]], new_inits[dq.input[1]], zero, axis)
        want = inits[node.input[1]].astype(np.float64)
        if weight.shape != want.shape and weight.shape == want.T.shape:
            weight, step = weight.T, step.T
        assert weight.shape == want.shape, f"quant: weight of '{node.name}' has shape {weight.shape} != {want.shape}"
        error = np.abs(weight - want) - step / 2
        assert error.max() <= 1e-6 * np.abs(want).max() + 1e-12, \
            f"quant: weight of '{node.name}' dequantizes {error.max():.3g} beyond half a step from the original"


# -- fp16: weights rounded, nothing else ------------------------------------------------------

def check_half_weights(original: onnx.ModelProto, result: onnx.ModelProto) -> None:
    inits = {t.name: numpy_helper.to_array(t) for t in original.graph.initializer}
    halves = [t for t in result.graph.initializer if t.data_type == onnx.TensorProto.FLOAT16]
    for t in halves:
        name = t.name.removesuffix(".float16")
        assert name in inits, f"fp16: float16 initializer '{t.name}' has no float32 original"
        np.testing.assert_array_equal(numpy_helper.to_array(t), inits[name].astype(np.float16),
                                      err_msg=f"fp16: '{t.name}' is not the original rounded to float16")


# -- prune: the masked original ----------------------------------------------------------------

def check_prune_is_masking(original: onnx.ModelProto, details: list[dict], feeds, got) -> None:
    masked = graphc.load(original)
    analysis = analyze_channels(masked.graph, infer_shapes(masked), masked.opset)
    groups = {key: g for g in analysis.groups for gid, key in group_keys(analysis.groups).items() if gid == g.id}
    for record in details:
        if "removed" not in record:
            continue
        assert record["group"] in groups, f"prune: recorded group {record['group']!r} is not a group of the original"
        mask_channels(masked.graph, groups[record["group"]], record["removed"])
    for want, out in zip(run(to_proto(masked), feeds), got):
        np.testing.assert_allclose(out, want, rtol=PRUNE_RTOL, atol=PRUNE_ATOL,
                                   err_msg="prune: the result is not the original with the removed channels zeroed")


# -- sparsify and cluster: the weights against the original ones -----------------------------

def _layer_weights(original: onnx.ModelProto) -> dict[str, np.ndarray]:
    """{node name: constant weight} of the original's Conv/ConvTranspose/Gemm/MatMul nodes."""
    inits = {t.name: numpy_helper.to_array(t) for t in original.graph.initializer}
    return {n.name: inits[n.input[1]] for n in original.graph.node
            if n.op_type in ("Conv", "ConvTranspose", "Gemm", "MatMul") and len(n.input) > 1 and n.input[1] in inits
            and np.issubdtype(inits[n.input[1]].dtype, np.floating)}


def check_sparsified_weights(original: onnx.ModelProto, result: onnx.ModelProto) -> None:
    """Magnitude sparsity (sparsify{repair=false}): every weight is its original or 0, at least half
    of each sparsified layer is 0, and no zeroed weight was larger than a kept one."""
    new_inits = {t.name: numpy_helper.to_array(t) for t in result.graph.initializer}
    by_name = {n.name: n for n in result.graph.node}
    for name, want in _layer_weights(original).items():
        got = new_inits[by_name[name].input[1]]
        assert got.shape == want.shape, f"sparsify: weight of '{name}' changed shape"
        moved = (got != want) & (got != 0)
        assert not moved.any(), f"sparsify: {int(moved.sum())} kept weight(s) of '{name}' differ from the original"
        if np.array_equal(got, want):
            continue
        assert np.count_nonzero(got == 0) >= round(0.5 * got.size), f"sparsify: '{name}' is less than half zeros"
        zeroed, kept = np.abs(want[(got == 0) & (want != 0)]), np.abs(want[got != 0])
        if zeroed.size and kept.size:
            assert zeroed.max() <= kept.min(), f"sparsify: '{name}' zeroed a weight larger than one it kept"


def _cluster_indices(name: str, inits: dict, producers: dict, shape: tuple) -> np.ndarray:
    """The indices Cast reads: a uint8 initializer, or unpacked from two per byte (the Mod of the
    packed initializer sits at the top of the Reshape/Slice/Concat chain: graphc/ir/codebook.py)."""
    if name in inits:
        return inits[name].astype(np.int64)
    node = producers[name]
    while node.op_type in ("Reshape", "Slice"):
        node = producers[node.input[0]]
    assert node.op_type == "Concat", f"cluster: indices '{name}' are neither stored nor unpacked"
    return unpack_nibbles(inits[producers[node.input[0]].input[0]], shape).astype(np.int64)


def check_clustered_weights(original: onnx.ModelProto, result: onnx.ModelProto, bits: int = 4) -> None:
    """Every layer reading Gather(codebook, Cast(indices)) has at most 2^bits values, its zeros
    exact, and each nonzero weight decoded to the codebook value (among those nonzeros use)
    nearest to it."""
    inits = {t.name: numpy_helper.to_array(t) for t in result.graph.initializer}
    producers = {o: n for n in result.graph.node for o in n.output}
    by_name = {n.name: n for n in result.graph.node}
    for name, want in _layer_weights(original).items():
        gather = producers.get(by_name[name].input[1])
        if gather is None or gather.op_type != "Gather":
            continue  # left as it was (a shared weight; an idle pass fails the rewritten share)
        cast = producers[gather.input[1]]
        decoded = inits[gather.input[0]][_cluster_indices(cast.input[0], inits, producers, want.shape)]
        assert decoded.shape == want.shape, f"cluster: weight of '{name}' changed shape"
        assert len(np.unique(decoded)) <= 2 ** bits, f"cluster: '{name}' has more than {2 ** bits} values"
        assert np.all(decoded[want == 0] == 0), f"cluster: zeros of '{name}' were not kept exact"
        nonzero = want != 0
        centres = np.unique(decoded[nonzero]).astype(np.float64)
        if centres.size:
            w = want[nonzero].astype(np.float64)
            best = np.min(np.abs(w[:, None] - centres[None, :]), axis=1)
            excess = np.abs(w - decoded[nonzero]) - best
            assert excess.max() <= 1e-6 * max(float(np.abs(w).max()), 1e-12), \
                f"cluster: a weight of '{name}' is not decoded to its nearest codebook value"
