"""fp16: compute mode (what converts, what stays float32, the border Casts), the measured
exclusions (overflow, min-sqnr), storage mode (fp16 and bf16 weights that onnxruntime folds),
idempotence, the full checker and onnxruntime on every result."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

import graphc
from graphc.errors import GraphcError
from graphc.ir import infer_shapes, model_bytes
from graphc.passes.fp16 import HALF_TYPES
from graphc.passes.fp16.convert import emulate_rounding
from graphc.passmanager import Context, PassManager
from graphc.passmanager.pipeline import parse_pipeline
from graphc.runtime import create_session
from support import assert_valid, make_model, op_count, run, sqnr_over

#: float16 rounds each op's result to 11 significant bits (about 66 dB per rounding); a few
#: chained ops on O(1) values stay far above this floor.
MIN_SQNR_DB = 50.0


def build(text: str, inits: dict[str, np.ndarray] | None = None, opset: int = 17) -> onnx.ModelProto:
    graph = onnx.parser.parse_graph(text)
    for name, value in (inits or {}).items():
        graph.initializer.append(numpy_helper.from_array(np.asarray(value), name))
    return make_model(graph, opset=opset)


def conv_weights(seed: int, *shapes) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {f"w{i}": (rng.standard_normal(s) / np.sqrt(np.prod(s[1:]))).astype(np.float32)
            for i, s in enumerate(shapes)}


def convert(proto: onnx.ModelProto, text: str = "fp16", data=None):
    model = graphc.load(proto)
    report = PassManager(text, data=data, prepare=False).run(model)
    return model, report.records[-1]


def dtype_of(model, name: str):
    tensor = model.graph.tensors()[name]
    if isinstance(tensor, graphc.ir.usedef.gs.Constant):
        return tensor.values.dtype
    return tensor.dtype if tensor.dtype is not None else infer_shapes(model)[name].dtype


def emulated(proto: onnx.ModelProto, text: str = "fp16"):
    """``proto`` rounded as ``text``'s plan would compute on half-precision hardware (without data)."""
    model = graphc.load(proto)
    instance = parse_pipeline(text).steps[0].instantiate()
    plan = instance.plan(model.graph, Context(model), HALF_TYPES["fp16"], {})
    emulate_rounding(model.graph, plan, HALF_TYPES["fp16"])
    model.graph.toposort()
    return model


def run_as_written(model, feed):
    """onnxruntime without graph optimizations (rounding Cast pairs stay)."""
    session = create_session(model, optimize=False)
    return session.run(None, feed)


def feeds(shape, seed=0, scale=1.0):
    return [{"x": (np.random.default_rng([seed, i]).standard_normal(shape) * scale).astype(np.float32)}
            for i in range(3)]


CONV_CHAIN = """
agraph (float[1, 3, 8, 8] x) => (float[1, 4, 8, 8] y) {
    a = Conv <pads = [1, 1, 1, 1]> (x, w0)
    b = Relu (a)
    y = Conv <pads = [1, 1, 1, 1]> (b, w1)
}"""


def test_conv_chain_converts_with_one_cast_each_way(tmp_path):
    proto = build(CONV_CHAIN, conv_weights(0, (4, 3, 3, 3), (4, 4, 3, 3)))
    model, record = convert(proto)
    assert record.modified and record.stats["converted_nodes"] == 3
    assert op_count(model, "Cast") == 2  # x -> float16 at the entry, y -> float32 at the exit
    assert record.stats["casts_to_half"] == 1 and record.stats["casts_to_float"] == 1
    assert dtype_of(model, "w0") == np.float16 and dtype_of(model, "a") == np.float16
    assert [o.name for o in model.graph.outputs] == ["y"] and dtype_of(model, "y") == np.float32
    assert_valid(model, tmp_path)
    assert sqnr_over(proto, model, feeds((1, 3, 8, 8))) >= MIN_SQNR_DB
    weights = [t for t in model.graph.tensors().values() if isinstance(t, graphc.ir.usedef.gs.Constant)]
    assert sum(t.values.nbytes for t in weights) == (4 * 27 + 4 * 36) * 2


def test_second_run_changes_nothing():
    proto = build(CONV_CHAIN, conv_weights(0, (4, 3, 3, 3), (4, 4, 3, 3)))
    model, _ = convert(proto)
    before = model_bytes(model)
    _, again = convert(onnx.load_from_string(before))
    assert not again.modified
    model2 = graphc.load(onnx.load_from_string(before))
    assert not PassManager("fp16", prepare=False).run(model2).modified
    assert model_bytes(model2) == before


def test_one_cast_per_tensor_shared_by_its_readers(tmp_path):
    # x feeds two converted Convs (one Cast to half); h feeds Softmax and Exp, both kept float32
    # (one Cast to float)
    text = """
    agraph (float[1, 3, 8, 8] x) => (float[1, 4, 8, 8] s, float[1, 4, 8, 8] e) {
        a = Conv <pads = [1, 1, 1, 1]> (x, w0)
        b = Conv <pads = [1, 1, 1, 1]> (x, w1)
        h = Add (a, b)
        s = Softmax <axis = 1> (h)
        e = Exp (h)
    }"""
    proto = build(text, conv_weights(1, (4, 3, 3, 3), (4, 3, 3, 3)))
    model, record = convert(proto)
    assert record.stats["converted_nodes"] == 3
    assert record.stats["casts_to_half"] == 1 and record.stats["casts_to_float"] == 1
    assert dtype_of(model, "s") == np.float32 and dtype_of(model, "e") == np.float32
    assert record.skipped == {"Softmax is in keep-ops (range-sensitive)": 1, "Exp is in keep-ops (range-sensitive)": 1}
    assert_valid(model, tmp_path)
    assert sqnr_over(proto, model, feeds((1, 3, 8, 8))) >= MIN_SQNR_DB


def test_existing_casts_read_half_tensors_and_cast_pairs_cancel(tmp_path):
    # x16 -> Cast(float) -> Conv: the Conv reads x16 (half(float(x16)) = x16); the Conv's output is
    # read by Cast(to=int64) directly (no Cast to float in between)
    text = """
    agraph (float16[1, 3, 8, 8] x16) => (float[1, 4, 8, 8] y, int64[1, 4, 8, 8] n) {
        x = Cast <to = 1> (x16)
        a = Conv <pads = [1, 1, 1, 1]> (x, w0)
        y = Relu (a)
        n = Cast <to = 7> (a)
    }"""
    proto = build(text, conv_weights(2, (4, 3, 3, 3)))
    model, record = convert(proto)
    assert record.stats["cancelled_cast_pairs"] == 1
    assert "casts_to_half" not in record.stats and record.stats["casts_to_float"] == 1  # y only
    conv = next(n for n in model.graph.nodes if n.op == "Conv")
    assert conv.inputs[0].name == "x16"
    assert_valid(model, tmp_path)
    feed = {"x16": np.random.default_rng(0).standard_normal((1, 3, 8, 8)).astype(np.float16)}
    want, got = run(proto, feed), run(model, feed)
    np.testing.assert_allclose(got[0], want[0], rtol=1e-2, atol=1e-2)
    assert np.abs(got[1] - want[1]).max() <= 1  # truncation of values rounded to float16


def test_resize_converts_its_data_but_not_its_scales(tmp_path):
    text = """
    agraph (float[1, 3, 8, 8] x) => (float[1, 4, 16, 16] y) {
        a = Conv <pads = [1, 1, 1, 1]> (x, w0)
        r = Resize <mode = "linear"> (a, roi, scales)
        y = Conv <pads = [1, 1, 1, 1]> (r, w1)
    }"""
    inits = {**conv_weights(3, (4, 3, 3, 3), (4, 4, 3, 3)), "roi": np.zeros(0, np.float32),
             "scales": np.array([1, 1, 2, 2], np.float32)}
    proto = build(text, inits)
    model, record = convert(proto)
    assert record.stats["converted_nodes"] == 3
    assert dtype_of(model, "r") == np.float16
    assert dtype_of(model, "scales") == np.float32 and dtype_of(model, "roi") == np.float32
    assert_valid(model, tmp_path)
    assert sqnr_over(proto, model, feeds((1, 3, 8, 8))) >= MIN_SQNR_DB


def test_shape_arithmetic_and_range_stay_float32(tmp_path):
    # sizes = int64(float(shape(x)) * 2.0): the Mul computes a shape value; Range of floats too
    text = """
    agraph (float[1, 3, 8, 8] x) => (float[1, 3, 16, 16] y, float[8] r) {
        s = Shape (x)
        f = Cast <to = 1> (s)
        g = Mul (f, two)
        sizes = Cast <to = 7> (g)
        a = Relu (x)
        y = Resize <mode = "nearest"> (a, , , sizes)
        n = ReduceMax <keepdims = 0> (f)
        r = Range (zero, n, one)
    }"""
    inits = {"two": np.array([1, 1, 2, 2], np.float32), "zero": np.array(0, np.float32),
             "one": np.array(1, np.float32)}
    proto = build(text, inits, opset=17)
    model, record = convert(proto)
    assert dtype_of(model, "g") == np.float32 and dtype_of(model, "n") == np.float32
    assert record.skipped.get("computes a shape value from integers") == 2  # Mul, ReduceMax
    assert dtype_of(model, "r") == np.float32
    assert_valid(model, tmp_path)
    feed = {"x": np.random.default_rng(0).standard_normal((1, 3, 8, 8)).astype(np.float32)}
    for want, got in zip(run(proto, feed), run(model, feed)):
        np.testing.assert_array_equal(got, want)  # Relu, Resize (nearest) and Range are exact in float16 here


EXP_CHAIN = """
agraph (float[1, 16] x) => (float[1, 16] y) {
    a = Mul (x, k)
    e = Exp (a)
    y = Mul (e, c)
}"""


def test_exp_is_kept_by_default_and_overflow_is_measured_with_data(tmp_path):
    proto = build(EXP_CHAIN, {"k": np.full(16, 4.0, np.float32), "c": np.full(16, 1e-3, np.float32)})
    data = [{"x": np.linspace(0, 3.5, 16, dtype=np.float32)[None]}] * 2   # exp(14) = 1.2e6 > 65504
    feed = {"x": np.linspace(0, 3.4, 16, dtype=np.float32)[None]}
    want = run(proto, feed)[0]
    # default keep-list: Exp stays float32, finite result
    model, record = convert(proto)
    assert record.skipped["Exp is in keep-ops (range-sensitive)"] == 1
    assert np.isfinite(run(model, feed)[0]).all()
    # without Exp in the keep-list and without data, Exp converts and overflows in float16 (seen
    # under emulated rounding: onnxruntime's CPU provider runs float16 Exp in float32)
    blind, _ = convert(proto, "fp16{keep-ops=Cast}")
    assert dtype_of(blind, "e") == np.float16
    assert not np.isfinite(run_as_written(emulated(proto, "fp16{keep-ops=Cast}"), feed)[0]).all()
    # ... with data, the measured overflow keeps Exp (and the Mul after it) float32
    measured, record = convert(proto, "fp16{keep-ops=Cast}", data=data)
    assert record.skipped["overflow: |x| reaches max-abs on the data"] == 2
    assert dtype_of(measured, "e") == np.float32
    assert any("|x| reaches" in d["reason"] for d in record.details if d["node"].startswith("Exp"))
    got = run(measured, feed)[0]
    assert np.isfinite(got).all()
    assert_valid(measured, tmp_path)
    np.testing.assert_allclose(got, want, rtol=2e-3)


CANCELLING = """
agraph (float[1, 64] x) => (float[1, 64] y) {
    a = Add (x, big)
    b = Sub (a, big)
    y = Mul (b, w)
}"""


def test_min_sqnr_keeps_the_nodes_that_lose_accuracy(tmp_path):
    # (x + 1000) - 1000 in float16 keeps x to a step of 0.5: catastrophic cancellation
    rng = np.random.default_rng(4)
    proto = build(CANCELLING, {"big": np.full(64, 1000.0, np.float32),
                               "w": rng.standard_normal(64).astype(np.float32)})
    data = [{"x": rng.standard_normal((1, 64)).astype(np.float32) * 0.1} for _ in range(4)]
    held_out = [{"x": rng.standard_normal((1, 64)).astype(np.float32) * 0.1} for _ in range(4)]
    blind = emulated(proto)
    want = [run(proto, f)[0] for f in held_out]
    got = [run_as_written(blind, f)[0] for f in held_out]
    assert sqnr(want, got) < 20
    model, record = convert(proto, "fp16{min-sqnr=40}", data=data)
    assert record.stats["measured_output_sqnr_db"] >= 40
    # the Sub cancels; the Add's rounding is what it amplifies: both stay float32, the Mul converts
    assert record.skipped["adds the most noise (min-sqnr not met)"] == 2
    assert record.stats["converted_nodes"] == 1
    assert dtype_of(model, "a") == np.float32 and dtype_of(model, "b") == np.float32
    assert_valid(model, tmp_path)
    assert sqnr_over(proto, model, held_out) >= 40
    # the default target with data is 40 dB; a second run leaves the measured choice alone
    _, default = convert(proto, data=data)
    assert default.stats["measured_output_sqnr_db"] >= 40
    again = PassManager("fp16", data=data, prepare=False).run(model).records[-1]
    assert not again.modified and again.skipped == {"model already computes in float16": 1}


def sqnr(want, got) -> float:
    signal = sum(float(np.sum(w.astype(np.float64) ** 2)) for w in want)
    noise = sum(float(np.sum((g.astype(np.float64) - w) ** 2)) for w, g in zip(want, got))
    return 10 * np.log10(signal / noise)


def test_emulated_rounding_matches_float16_arithmetic():
    # Relu and Mul by a power of two are exact in float16 given rounded inputs: emulation and a
    # numpy float16 computation agree bit for bit
    text = """
    agraph (float[1, 64] x) => (float[1, 64] y) {
        a = Relu (x)
        y = Mul (a, k)
    }"""
    proto = build(text, {"k": np.full(64, 0.25, np.float32)})
    x = np.random.default_rng(9).standard_normal((1, 64)).astype(np.float32) * 3
    got = run_as_written(emulated(proto), {"x": x})[0]
    np.testing.assert_array_equal(got, (np.maximum(x.astype(np.float16), 0) * np.float16(0.25)).astype(np.float32))


def test_nodes_read_inside_a_subgraph_stay_float32(tmp_path):
    then = onnx.helper.make_graph([onnx.helper.make_node("Neg", ["a"], ["t"])], "then", [],
                                  [onnx.helper.make_tensor_value_info("t", onnx.TensorProto.FLOAT, [1, 4, 8, 8])])
    other = onnx.helper.make_graph([onnx.helper.make_node("Relu", ["a"], ["o"])], "else", [],
                                   [onnx.helper.make_tensor_value_info("o", onnx.TensorProto.FLOAT, [1, 4, 8, 8])])
    proto = build(CONV_CHAIN, conv_weights(5, (4, 3, 3, 3), (4, 4, 3, 3)))
    proto.graph.input.append(onnx.helper.make_tensor_value_info("c", onnx.TensorProto.BOOL, []))
    proto.graph.node.append(onnx.helper.make_node("If", ["c"], ["z"], then_branch=then, else_branch=other))
    proto.graph.output.append(onnx.helper.make_tensor_value_info("z", onnx.TensorProto.FLOAT, [1, 4, 8, 8]))
    model, record = convert(proto)
    assert record.skipped["an output is read inside a subgraph body"] == 1
    assert dtype_of(model, "a") == np.float32
    assert_valid(model, tmp_path)


def test_storage_mode_halves_the_weights_and_onnxruntime_folds_the_casts(tmp_path):
    proto = build(CONV_CHAIN, conv_weights(6, (16, 3, 3, 3), (4, 16, 3, 3)))
    model, record = convert(proto, "fp16{mode=storage}")
    assert record.stats["stored_constants"] == 2 and op_count(model, "Cast") == 2
    assert dtype_of(model, "a") == np.float32  # compute stays float32
    assert record.stats["bytes_saved"] == (16 * 27 + 4 * 16 * 9) * 2
    assert_valid(model, tmp_path)
    assert sqnr_over(proto, model, feeds((1, 3, 8, 8))) >= 60
    optimized = tmp_path / "optimized.onnx"
    create_session(model, optimized_model_path=optimized)
    assert not [n for n in onnx.load(str(optimized)).graph.node if n.op_type == "Cast"]
    _, again = convert(onnx.load_from_string(model_bytes(model)), "fp16{mode=storage}")
    assert not again.modified


def test_storage_mode_bf16(tmp_path):
    proto = build(CONV_CHAIN, conv_weights(7, (16, 3, 3, 3), (4, 16, 3, 3)))
    model, record = convert(proto, "fp16{mode=storage dtype=bf16}")
    assert record.stats["stored_constants"] == 2
    path = assert_valid(model, tmp_path)
    stored = [t for t in onnx.load(str(path)).graph.initializer if t.data_type == onnx.TensorProto.BFLOAT16]
    assert len(stored) == 2
    db = sqnr_over(proto, model, feeds((1, 3, 8, 8)))
    assert 30 <= db < 60  # bfloat16 keeps 8 significant bits: below float16's rounding


def test_small_constants_and_parameters_are_not_stored_in_half():
    text = """
    agraph (float[1, 3, 8, 8] x) => (float[1, 4, 16, 16] y) {
        a = Conv <pads = [1, 1, 1, 1]> (x, w0, b0)
        y = Resize <mode = "nearest"> (a, roi, scales)
    }"""
    inits = {**conv_weights(8, (4, 3, 3, 3)), "b0": np.ones(4, np.float32), "roi": np.zeros(0, np.float32),
             "scales": np.array([1, 1, 2, 2], np.float32)}
    model, record = convert(build(text, inits), "fp16{mode=storage}")
    assert record.stats["stored_constants"] == 1  # w0; b0 has 4 values, scales is a parameter
    assert dtype_of(model, "scales") == np.float32


def test_bf16_compute_is_refused_with_the_reason():
    with pytest.raises(GraphcError, match="bf16 needs mode=storage"):
        PassManager("fp16{dtype=bf16}")


@pytest.mark.real
@pytest.mark.parametrize("text", ["fp16", "fp16{mode=storage}"])
def test_ppocr_half_file_valid_and_close(ppocr, text, tmp_path):
    """Both modes on the real models: at most 0.52x the float32 file (issue #20's bar), full checker,
    onnxruntime, finite outputs, and close to float32 on rendered pages/lines (on random noise the
    detector finds nothing: its probability map stays below 4e-6, where SQNR means nothing)."""
    import os
    import sys
    from pathlib import Path
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
    import ppocr_data

    kind, path = ppocr
    model = graphc.load(path)
    reference = model.copy()
    PassManager(text).run(model)
    saved = assert_valid(model, tmp_path)
    assert os.path.getsize(saved) <= 0.52 * os.path.getsize(path)
    evaluation = ppocr_data.feeds(kind, 2, seed=7, det_side=320)
    assert all(np.isfinite(out).all() for feed in evaluation for out in run(model, feed))
    assert sqnr_over(reference, model, evaluation) >= 40.0


def test_fp16_composes_after_canonicalize_on_a_trained_model(tmp_path):
    from support import MODELS
    model = graphc.load(MODELS / "resnet_digits.onnx")
    reference = model.copy()
    records = PassManager("fold-bn,canonicalize,cleanup,fp16").run(model).records
    assert [r.name for r in records] == ["fold-bn", "canonicalize", "cleanup", "fp16"] and records[-1].modified
    assert_valid(model, tmp_path)
    images = np.load(MODELS / "digits_test.npz")
    name = model.graph.inputs[0].name
    batch = [{name: images["input"][i:i + 16].astype(np.float32)} for i in range(0, 64, 16)]
    assert sqnr_over(reference, model, batch) >= MIN_SQNR_DB
    for feed in batch:
        assert (run(model, feed)[0].argmax(1) == run(reference, feed)[0].argmax(1)).all()


def test_measurement_with_an_input_that_is_also_an_output(tmp_path):
    # found by tests/robustness/test_corpus.py (output_is_input): the input passed through as an
    # output is not computed by any node and cannot be exposed for measurement
    text = """
    agraph (float[1, 3, 8, 8] x) => (float[1, 4, 8, 8] y, float[1, 3, 8, 8] x) {
        a = Conv <pads = [1, 1, 1, 1]> (x, w0)
        y = Relu (a)
    }"""
    proto = build(text, conv_weights(10, (4, 3, 3, 3)))
    model, record = convert(proto, data=feeds((1, 3, 8, 8)))
    assert record.modified and record.stats["measured_output_sqnr_db"] >= 40
    assert_valid(model, tmp_path)
