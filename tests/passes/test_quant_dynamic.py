"""quant{activations=dynamic} (passes/quant/dynamic.py): int8 per-column MatMul/Gemm weights,
activations quantized at run time by DynamicQuantizeLinear, no calibration data; and ``-p quant``
without --data choosing that mode by itself.

Error bounds: the hand-built graphs compare against an independent numpy evaluation of the same
integer arithmetic (exact up to float rounding) and against float (cosine > 0.999). On
transformer_digits (450 held-out digits, placement=all), measured: cosine 0.9999+, top-1
agreement 1.0; asserted cosine > 0.999, agreement >= 0.99.
"""
import logging

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import graphc
from graphc.calib.data import open_data
from graphc.cli import main
from graphc.errors import DataError, OptionError
from graphc.ir import to_proto
from graphc.passes.quant import Quantize
from graphc.passes.quant.dynamic import MIN_MACS
from graphc.passmanager import Context
from graphc.passmanager.pipeline import parse_pipeline
from support import MODELS, assert_valid, make_model, op_count, run

RNG = np.random.default_rng(7)
DYN = "quant{activations=dynamic placement=all}"
MERGE_OFF = "quant{activations=dynamic placement=all merge-siblings=false}"


def _graph(k=64, n=96, m=8, shared=False, trans_b=True, opset=13):
    """x[m,k] -> MatMul W1[k,n] (fc1) -> Relu -> Gemm(W2^T, alpha 0.5, beta 2, b) (head);
    ``shared``: a second MatMul (fc2) also reads x; and a MatMul of two activations (scores)."""
    w1 = (RNG.standard_normal((k, n)) * np.linspace(0.1, 3.0, n) / k ** 0.5).astype(np.float32)
    w2 = (RNG.standard_normal((10, n)) / n ** 0.5).astype(np.float32)
    b2 = (RNG.standard_normal(10) * 0.1).astype(np.float32)
    inits = [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2 if trans_b else w2.T.copy(), "w2"),
             numpy_helper.from_array(b2, "b2")]
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"], name="fc1"),
             helper.make_node("Relu", ["h"], ["r"], name="relu"),
             helper.make_node("Gemm", ["r", "w2", "b2"], ["y"], transB=int(trans_b), alpha=0.5, beta=2.0,
                              name="head"),
             helper.make_node("Transpose", ["x"], ["xt"], name="t"),
             helper.make_node("MatMul", ["x", "xt"], ["scores"], name="scores")]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [m, 10]),
               helper.make_tensor_value_info("scores", TensorProto.FLOAT, [m, m])]
    if shared:
        w3 = (RNG.standard_normal((k, n)) / k ** 0.5).astype(np.float32)
        inits.append(numpy_helper.from_array(w3, "w3"))
        nodes.append(helper.make_node("MatMul", ["x", "w3"], ["z"], name="fc2"))
        outputs.append(helper.make_tensor_value_info("z", TensorProto.FLOAT, [m, n]))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [m, k])],
                              outputs, inits)
    return graphc.load(make_model(graph, opset=opset))


def _quant(model, pipeline=DYN, data=None):
    model = model.copy()
    report = graphc.PassManager(pipeline, data=data).run(model)
    return model, report.records[-1]


def _dynamic_reference(x, w_kn, bias=None):
    """Independent numpy evaluation of what the rewrite computes: u8 DynamicQuantizeLinear of x
    (range widened to 0), symmetric per-column int8 weights, exact integer sums, rescale."""
    lo, hi = min(float(x.min()), 0.0), max(float(x.max()), 0.0)
    sx = np.float32((hi - lo) / 255)
    zx = np.clip(np.rint(-lo / sx), 0, 255)
    xq = np.clip(np.rint(x / sx) + zx, 0, 255)
    sw = np.abs(w_kn).max(axis=0) / 127
    wq = np.clip(np.rint(w_kn / sw), -127, 127)
    y = ((xq - zx).astype(np.int64) @ wq.astype(np.int64)) * (np.float64(sx) * sw)
    return y + (bias if bias is not None else 0)


def _cosine(a, b):
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def test_rewrites_matmul_and_gemm_and_keeps_activation_matmul(tmp_path):
    model = _graph()
    out, record = _quant(model)
    assert record.stats["quantized_MatMul"] == 1 and record.stats["quantized_Gemm"] == 1
    assert op_count(out, "MatMulInteger") == 2 and op_count(out, "DynamicQuantizeLinear") == 2
    assert op_count(out, "Gemm") == 0 and op_count(out, "MatMul") == 1  # scores stays float
    assert op_count(out, "QuantizeLinear") == 0 and op_count(out, "DequantizeLinear") == 0
    assert record.skipped == {"dynamic: second input is not a constant": 1}
    assert [t.name for t in out.graph.outputs] == ["y", "scores"]
    assert_valid(out, tmp_path)


def test_matches_independent_integer_arithmetic_and_float(tmp_path):
    model = _graph(trans_b=True)
    out, _ = _quant(model)
    x = RNG.standard_normal((8, 64)).astype(np.float32)
    y_ref, scores_ref = run(to_proto(model), {"x": x})
    y, scores = run(to_proto(out), {"x": x})
    np.testing.assert_array_equal(scores, scores_ref)
    w1 = numpy_helper.to_array(next(i for i in to_proto(model).graph.initializer if i.name == "w1"))
    w2 = numpy_helper.to_array(next(i for i in to_proto(model).graph.initializer if i.name == "w2"))
    b2 = numpy_helper.to_array(next(i for i in to_proto(model).graph.initializer if i.name == "b2"))
    h = np.maximum(_dynamic_reference(x.astype(np.float64), w1.astype(np.float64)), 0)
    y_np = _dynamic_reference(h.astype(np.float32).astype(np.float64), 0.5 * w2.T.astype(np.float64), 2.0 * b2)
    np.testing.assert_allclose(y, y_np, rtol=1e-4, atol=1e-4)
    assert _cosine(y, y_ref) > 0.999


def test_per_channel_weights_and_scales_from_the_original_weight():
    model = _graph(trans_b=False)
    w1 = np.asarray(next(t for t in model.graph.tensors().values() if t.name == "w1").values, np.float64)
    w2 = np.asarray(next(t for t in model.graph.tensors().values() if t.name == "w2").values, np.float64)
    out, _ = _quant(model)
    mmi = {n.name: n for n in out.graph.nodes if n.op == "MatMulInteger"}
    muls = {n.name: n for n in out.graph.nodes if n.op == "Mul"}
    for base, w in (("fc1", w1), ("head", 0.5 * w2)):
        q = np.asarray(mmi[f"{base}_MatMulInteger"].inputs[1].values)
        scale = np.asarray(muls[f"{base}_scale_Mul"].inputs[1].values)
        assert q.dtype == np.int8 and q.shape == w.shape and scale.shape == (w.shape[1],)
        np.testing.assert_allclose(scale, np.abs(w).max(axis=0) / 127, rtol=1e-6)
        assert np.abs(q).max() == 127 and q.min() >= -127
        assert np.all(np.abs(q * scale.astype(np.float64) - w) <= scale / 2 + 1e-7)


def test_per_tensor_option_gives_one_scale():
    out, _ = _quant(_graph(), "quant{activations=dynamic placement=all per-channel=false}")
    scales = [np.asarray(n.inputs[1].values) for n in out.graph.nodes if n.op == "Mul" and n.name.endswith("_scale_Mul")]
    assert len(scales) == 2 and all(s.shape == () for s in scales)


def _two_readers(k=256, n=256, m=8):
    """x -> MatMul(alike) and MatMul(spread): alike's columns are alike (one scale keeps ~36 dB);
    spread's column 0 is 50x the others (one scale leaves the rest a few codes: ~13 dB)."""
    rng = np.random.default_rng(11)
    alike = (rng.standard_normal((k, n)) / k ** 0.5).astype(np.float32)
    spread = alike[:, ::-1].copy()
    spread[:, 0] *= 50
    inits = [numpy_helper.from_array(alike, "alike"), numpy_helper.from_array(spread, "spread")]
    nodes = [helper.make_node("MatMul", ["x", "alike"], ["a"], name="fa"),
             helper.make_node("MatMul", ["x", "spread"], ["b"], name="fb")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [m, k])],
                              [helper.make_tensor_value_info(t, TensorProto.FLOAT, [m, n]) for t in "ab"], inits)
    return graphc.load(make_model(graph, opset=13)), alike.astype(np.float64), spread.astype(np.float64)


def test_weights_that_keep_the_sqnr_with_one_scale_get_one(tmp_path):
    """At tensor-scale-sqnr=30 the alike weight gets one scale, the spread one keeps one per
    column; the output equals an independent numpy evaluation with those codes."""
    from graphc.passes.quant.dynamic import dynamic_weights, weight_sqnr

    model, alike, spread = _two_readers()
    assert weight_sqnr(spread, *dynamic_weights(spread, False)) < 30 <= weight_sqnr(alike, *dynamic_weights(alike, False))
    out, record = _quant(model, "quant{activations=dynamic placement=all merge-siblings=false tensor-scale-sqnr=30}")
    assert record.stats["weights_one_scale"] == 1
    muls = {n.name: np.asarray(n.inputs[1].values) for n in out.graph.nodes if n.name.endswith("_scale_Mul")}
    assert muls["fa_scale_Mul"].shape == () and muls["fb_scale_Mul"].shape == (256,)
    np.testing.assert_allclose(muls["fa_scale_Mul"], np.abs(alike).max() / 127, rtol=1e-6)
    x = RNG.standard_normal((8, 256)).astype(np.float32)
    a, b = run(assert_valid(out, tmp_path), {"x": x})
    lo, hi = min(float(x.min()), 0.0), max(float(x.max()), 0.0)   # fa with one weight scale, by hand
    sx = np.float32((hi - lo) / 255)
    zx = np.clip(np.rint(-lo / sx), 0, 255)
    xq = np.clip(np.rint(x / sx) + zx, 0, 255)
    sw = np.abs(alike).max() / 127
    a_np = ((xq - zx) @ np.clip(np.rint(alike / sw), -127, 127)) * (np.float64(sx) * sw)
    np.testing.assert_allclose(a, a_np, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(b, _dynamic_reference(x.astype(np.float64), spread), rtol=1e-4, atol=1e-4)


def test_one_scale_rule_is_on_only_for_quant_without_data():
    """(fa and fb kept apart: merged, their one weight has the spread column and keeps per-column scales.)"""
    model, _, _ = _two_readers()
    _, record = _quant(model, "quant{placement=all merge-siblings=false}")  # no data: tensor-scale-sqnr=30
    assert record.stats["activations"] == "dynamic" and record.stats["weights_one_scale"] == 1
    _, record = _quant(model, "quant{placement=all}")
    assert record.stats["merged_matmuls"] == 2 and "weights_one_scale" not in record.stats
    _, record = _quant(model, "quant{activations=dynamic placement=all merge-siblings=false}")
    assert "weights_one_scale" not in record.stats
    _, record = _quant(model, "quant{placement=all merge-siblings=false tensor-scale-sqnr=200}")
    assert "weights_one_scale" not in record.stats
    _, record = _quant(model, "quant{placement=all merge-siblings=false per-channel=false}")
    assert "weights_one_scale" not in record.stats  # every weight has one scale anyway


def test_shared_input_is_quantized_once(tmp_path):
    out, record = _quant(_graph(shared=True), MERGE_OFF)
    assert op_count(out, "MatMulInteger") == 3
    assert op_count(out, "DynamicQuantizeLinear") == 2  # x (fc1, fc2) and relu's output (head)
    assert record.stats["dynamic_quantize_linear"] == 2
    assert_valid(out, tmp_path)


def test_onnxruntime_fuses_the_standard_form_into_its_dynamic_kernels(tmp_path):
    out, _ = _quant(_graph(shared=True))
    path = graphc.save(out, tmp_path / "dyn.onnx")
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    opts.optimized_model_filepath = str(tmp_path / "opt.onnx")
    ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    ops = [n.op_type for n in onnx.load(tmp_path / "opt.onnx").graph.node]
    assert "MatMulInteger" not in ops
    assert ops.count("DynamicQuantizeMatMul") + ops.count("MatMulIntegerToFloat") == 2  # fc1+fc2 merged, head


def test_siblings_of_one_activation_are_merged_before_quantizing(tmp_path):
    """fc1 and fc2 read x with constant weights: one MatMul over [W1 W3], one integer kernel, a
    Split. Per-column scales and x's quantization are the siblings' own, so the outputs equal
    quantizing them apart (float rounding of the rescale only)."""
    model = _graph(shared=True)
    out, record = _quant(model)
    assert record.stats["merged_matmuls"] == 2 and record.stats["merged_groups"] == 1
    assert op_count(out, "MatMulInteger") == 2 and op_count(out, "Split") == 1
    assert record.stats["quantized_MatMul"] == 1 and record.stats["dynamic_quantize_linear"] == 2
    apart, _ = _quant(model, MERGE_OFF)
    assert op_count(apart, "MatMulInteger") == 3 and op_count(apart, "Split") == 0
    x = RNG.standard_normal((8, 64)).astype(np.float32)
    for got, want in zip(run(to_proto(out), {"x": x}), run(to_proto(apart), {"x": x}), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert_valid(out, tmp_path)


def test_siblings_that_stay_float_are_not_merged():
    out, record = _quant(_graph(shared=True), DYN.replace("}", " exclude=fc2}"))
    assert "merged_matmuls" not in record.stats and op_count(out, "Split") == 0
    assert op_count(out, "MatMulInteger") == 2 and op_count(out, "MatMul") == 2  # fc2 and scores float
    out, record = _quant(_graph(k=16, n=16, m=2, shared=True), "quant{activations=dynamic}")
    assert record.modified is False and op_count(out, "Split") == 0 and op_count(out, "MatMul") == 3


def test_merged_siblings_that_each_pay_are_quantized():
    """Each sibling is 128x64x96 multiply-adds (pays); the merged weight alone is 64x192, below
    MIN_MACS, and the cost shapes do not know the merged output: it must still be quantized."""
    assert 128 * 64 * 96 >= MIN_MACS > 64 * 192
    out, record = _quant(_graph(k=64, n=96, m=128, shared=True), "quant{activations=dynamic}")
    assert record.stats["merged_matmuls"] == 2 and record.stats["quantized_MatMul"] == 1
    assert op_count(out, "MatMulInteger") == 1 and op_count(out, "MatMul") == 1  # scores


def test_second_run_changes_nothing():
    out, _ = _quant(_graph(shared=True))
    again = out.copy()
    result = Quantize(parse_pipeline(DYN).steps[0].options).run(again.graph, Context(again))
    assert result.modified is False
    assert len(again.graph.nodes) == len(out.graph.nodes)


def test_small_matmul_stays_float_with_auto_placement():
    model = _graph(k=16, n=16, m=2)  # 2*16*16 MACs, far below MIN_MACS
    assert 2 * 16 * 16 < MIN_MACS
    out, record = _quant(model, "quant{activations=dynamic}")
    assert record.modified is False and op_count(out, "MatMulInteger") == 0
    assert record.skipped[f"dynamic: too small to pay (< {MIN_MACS} MACs at the cost shapes)"] == 2
    big, record = _quant(_graph(k=512, n=512, m=8), "quant{activations=dynamic}")
    assert record.stats["quantized_MatMul"] == 1  # fc1: 8*512*512 MACs; the 10-wide head is small


def test_non_constant_weight_and_excluded_nodes_stay_float():
    out, record = _quant(_graph(), "quant{activations=dynamic placement=all exclude=fc1}")
    assert op_count(out, "MatMulInteger") == 1 and record.skipped["excluded by pattern"] == 1
    out, record = _quant(_graph(), "quant{activations=dynamic placement=all ops=Conv}")
    assert record.modified is False and op_count(out, "MatMulInteger") == 0


def test_old_opset_is_raised_to_11(tmp_path):
    out, record = _quant(_graph(opset=10))
    assert record.stats["opset_upgraded_to"] == 11 and op_count(out, "MatMulInteger") == 2
    assert_valid(out, tmp_path)


@pytest.mark.parametrize("options", ["activations=dynamic weights-only=true", "activations=dynamic min-sqnr=20",
                                     "activations=dynamic bias-correction=true", "activations=dynamic bits=4",
                                     "activations=dynamic weights=u8"])
def test_incompatible_options_are_refused_at_parse_time(options):
    with pytest.raises(OptionError):
        parse_pipeline(f"quant{{{options}}}")


def test_quant_without_data_runs_dynamic_and_says_so(tmp_path, caplog):
    model = _graph(k=512, n=512, m=8)
    with caplog.at_level(logging.WARNING, logger="graphc"):
        out, record = _quant(model, "quant")
    lines = [r.getMessage() for r in caplog.records if "dynamic" in r.getMessage()]
    assert len(lines) == 1 and "no calibration data" in lines[0]
    assert record.stats["activations"] == "dynamic" and op_count(out, "MatMulInteger") == 1
    assert Quantize().requires_data() is True  # with data, quant stays static
    assert Quantize(Quantize.Options(activations="dynamic")).requires_data() is False


def test_quant_with_data_stays_static():
    model = _graph()
    feeds = [{"x": RNG.standard_normal((8, 64)).astype(np.float32)} for _ in range(2)]
    out, record = _quant(model, "quant{placement=all}", data=open_data(feeds, model))
    assert op_count(out, "MatMulInteger") == 0 and op_count(out, "QuantizeLinear") > 0


def test_options_that_need_data_still_refuse_without_it():
    with pytest.raises(DataError, match=r"pass 'quant' needs calibration data \(--data\)"):
        graphc.PassManager("quant{min-sqnr=20}").run(_graph())


def test_cli_quant_without_data(tmp_path, capsys):
    src, dst = tmp_path / "in.onnx", tmp_path / "out.onnx"
    graphc.save(_graph(k=512, n=512, m=8), src)
    assert main(["opt", str(src), "-p", "quant", "-o", str(dst)]) == 0
    err = capsys.readouterr().err
    assert err.count("no calibration data (--data): dynamic int8") == 1
    assert op_count(graphc.load(dst), "MatMulInteger") == 1


def test_transformer_digits_accuracy_and_size(tmp_path):
    model = graphc.load(MODELS / "transformer_digits.onnx")
    out, record = _quant(model)
    # 13 MatMuls with constant weights; each of the 2 layers' Q/K/V are merged into one first
    assert record.stats["merged_matmuls"] == 6 and record.stats["merged_groups"] == 2
    assert record.stats["quantized_MatMul"] == 13 - 6 + 2 and record.stats["quantized_Gemm"] == 1
    path = assert_valid(out, tmp_path)
    assert path.stat().st_size < 0.4 * (MODELS / "transformer_digits.onnx").stat().st_size
    x = np.load(MODELS / "digits_test.npz")["input"][:450].astype(np.float32)
    ref, got = run(to_proto(model), {"input": x})[0], run(path, {"input": x})[0]
    cosines = [_cosine(a, b) for a, b in zip(ref, got)]
    assert np.mean(cosines) > 0.999
    assert np.mean(ref.argmax(1) == got.argmax(1)) >= 0.99


# -- embedding tables ------------------------------------------------------------------------------

def _embedding_model(vocab=4096, dim=32, spread=(0.01, 2.0)):
    """ids[2, 5] -> Gather(table[vocab, dim]) -> emb; a small table (10 x 4) -> pos; and a
    Gather of a shape (int64 data) that is no embedding. Row ``v`` of the table is scaled by
    ``spread`` interpolated (the default: row scales too far apart for the codebook)."""
    table = (RNG.standard_normal((vocab, dim)) * np.linspace(*spread, vocab)[:, None]).astype(np.float32)
    small = RNG.standard_normal((10, 4)).astype(np.float32)
    inits = [numpy_helper.from_array(table, "table"), numpy_helper.from_array(small, "small"),
             numpy_helper.from_array(np.array(1, np.int64), "one")]
    nodes = [helper.make_node("Gather", ["table", "ids"], ["emb"], name="embed"),
             helper.make_node("Gather", ["small", "pos_ids"], ["pos"], name="pos_embed"),
             helper.make_node("Shape", ["ids"], ["shape"], name="shape"),
             helper.make_node("Gather", ["shape", "one"], ["length"], name="length")]
    graph = helper.make_graph(
        nodes, "emb", [helper.make_tensor_value_info("ids", TensorProto.INT64, [2, 5]),
                       helper.make_tensor_value_info("pos_ids", TensorProto.INT64, [5])],
        [helper.make_tensor_value_info("emb", TensorProto.FLOAT, [2, 5, dim]),
         helper.make_tensor_value_info("pos", TensorProto.FLOAT, [5, 4]),
         helper.make_tensor_value_info("length", TensorProto.INT64, [])], inits)
    return graphc.load(make_model(graph, opset=13)), table


def test_embedding_table_is_stored_as_int8_rows(tmp_path):
    model, table = _embedding_model()
    out, record = _quant(model, "quant{activations=dynamic}")
    assert record.stats["quantized_Gather"] == 1 and "quantized_MatMul" not in record.stats
    assert record.skipped == {"embedding: table smaller than 65536 elements": 1}
    # Cast: the int8 rows and their float16 scales
    assert op_count(out, "Gather") == 4 and op_count(out, "Cast") == 2 and op_count(out, "Mul") == 1
    path = assert_valid(out, tmp_path)
    before = graphc.save(model, tmp_path / "float.onnx").stat().st_size
    assert path.stat().st_size < 0.3 * before  # int8 rows + one float scale per row
    ids = RNG.integers(0, 4096, (2, 5)).astype(np.int64)
    feeds = {"ids": ids, "pos_ids": np.arange(5, dtype=np.int64)}
    emb, pos, length = run(path, feeds)
    ref_emb, ref_pos, ref_length = run(to_proto(model), feeds)
    np.testing.assert_array_equal(pos, ref_pos)
    assert length == ref_length
    row_scale = np.abs(table.astype(np.float64)).max(axis=1) / 127  # independent of the pass
    # float16 scales, rounded up: the step is at most 2^-10 larger
    assert np.all(np.abs(emb - ref_emb) <= row_scale[ids][..., None] * (1 + 2 ** -10) / 2 + 1e-6)
    assert _cosine(emb, ref_emb) > 0.9999


def test_embedding_row_scales_as_codes_when_their_range_is_narrow(tmp_path):
    model, table = _embedding_model(spread=(0.5, 2.0))
    out, record = _quant(model, "quant{activations=dynamic}")
    assert record.stats["quantized_Gather"] == 1
    # Gather the uint8 code, Cast it to int32, Gather the codebook; the int8 rows and their Cast
    assert op_count(out, "Gather") == 5 and op_count(out, "Cast") == 2 and op_count(out, "Mul") == 1
    path = assert_valid(out, tmp_path)
    half = graphc.save(_quant(_embedding_model()[0], "quant{activations=dynamic}")[0],
                       tmp_path / "half.onnx").stat().st_size
    # one byte per row less than float16 scales, plus the 256 float32 codebook and two nodes
    assert path.stat().st_size <= half - 4096 + 256 * 4 + 300
    ids = RNG.integers(0, 4096, (2, 5)).astype(np.int64)
    feeds = {"ids": ids, "pos_ids": np.arange(5, dtype=np.int64)}
    emb, ref_emb = run(path, feeds)[0], run(to_proto(model), feeds)[0]
    row_scale = np.abs(table.astype(np.float64)).max(axis=1) / 127  # independent of the pass
    # scales rounded up onto a 256-level geometric grid: the step is at most 2^-6 larger
    assert np.all(np.abs(emb - ref_emb) <= row_scale[ids][..., None] * (1 + 2 ** -6) / 2 + 1e-6)
    assert _cosine(emb, ref_emb) > 0.9999


def test_embedding_stays_int8_in_the_onnxruntime_session(tmp_path):
    """onnxruntime must not fold the table back to float when the session loads."""
    model, _ = _embedding_model()
    out, _ = _quant(model, "quant{activations=dynamic}")
    path = graphc.save(out, tmp_path / "emb.onnx")
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    opts.optimized_model_filepath = str(tmp_path / "opt.onnx")
    ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    inits = {i.name: (i.data_type, tuple(i.dims)) for i in onnx.load(tmp_path / "opt.onnx").graph.initializer}
    assert (TensorProto.INT8, (4096, 32)) in inits.values()
    assert (TensorProto.FLOAT, (4096, 32)) not in inits.values()


def test_embedding_second_run_and_exclude():
    model, _ = _embedding_model(vocab=70000, dim=4)  # its [V, 1] row scales are large enough too
    out, _ = _quant(model, "quant{activations=dynamic}")
    again = out.copy()
    result = Quantize(Quantize.Options(activations="dynamic")).run(again.graph, Context(again))
    assert result.modified is False and len(again.graph.nodes) == len(out.graph.nodes)
    out, record = _quant(model, "quant{activations=dynamic exclude=embed}")
    assert record.modified is False and op_count(out, "Cast") == 0


# -- LSTM -> DynamicQuantizeLSTM -----------------------------------------------------------------

def _lstm_model(hidden=64, inputs=48, gru=False):
    """x[T=6, B=2, inputs] -> bidirectional LSTM (W, R, B constant) -> Y, Y_h; ``gru``: also a GRU."""
    w = (RNG.standard_normal((2, 4 * hidden, inputs)) / inputs ** 0.5).astype(np.float32)
    r = (RNG.standard_normal((2, 4 * hidden, hidden)) / hidden ** 0.5).astype(np.float32)
    b = (RNG.standard_normal((2, 8 * hidden)) * 0.1).astype(np.float32)
    inits = [numpy_helper.from_array(w, "W"), numpy_helper.from_array(r, "R"), numpy_helper.from_array(b, "B")]
    nodes = [helper.make_node("LSTM", ["x", "W", "R", "B"], ["y", "y_h"], hidden_size=hidden,
                              direction="bidirectional", name="lstm")]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [6, 2, 2, hidden]),
               helper.make_tensor_value_info("y_h", TensorProto.FLOAT, [2, 2, hidden])]
    if gru:
        gw = (RNG.standard_normal((1, 3 * hidden, inputs)) / inputs ** 0.5).astype(np.float32)
        gr = (RNG.standard_normal((1, 3 * hidden, hidden)) / hidden ** 0.5).astype(np.float32)
        inits += [numpy_helper.from_array(gw, "GW"), numpy_helper.from_array(gr, "GR")]
        nodes.append(helper.make_node("GRU", ["x", "GW", "GR"], ["g"], hidden_size=hidden, name="gru"))
        outputs.append(helper.make_tensor_value_info("g", TensorProto.FLOAT, [6, 1, 2, hidden]))
    graph = helper.make_graph(nodes, "rnn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [6, 2, inputs])],
                              outputs, inits)
    return graphc.load(make_model(graph, opset=13)), w, r


def test_lstm_becomes_dynamic_quantize_lstm(tmp_path):
    model, w, r = _lstm_model(gru=True)
    out, record = _quant(model, "quant{activations=dynamic}")
    assert record.stats["quantized_LSTM"] == 1 and op_count(out, "LSTM") == 0
    assert record.skipped == {"dynamic: GRU stays float (onnxruntime has no integer GRU kernel)": 1}
    node = next(n for n in out.graph.nodes if n.op == "DynamicQuantizeLSTM")
    assert node.domain == "com.microsoft" and node.attrs["hidden_size"] == 64 and len(node.inputs) == 12
    wq, sw, rq, sr = (np.asarray(node.inputs[i].values) for i in (1, 8, 2, 10))
    for q, s, orig in ((wq, sw, w), (rq, sr, r)):  # scales per gate unit, from the original weights
        np.testing.assert_allclose(s, np.abs(orig).max(axis=2) / 127, rtol=1e-6)
        assert q.dtype == np.int8 and q.shape == (2, orig.shape[2], orig.shape[1])
        assert np.all(np.abs(q.transpose(0, 2, 1) * s[..., None].astype(np.float64) - orig) <= s[..., None] / 2 + 1e-7)
    path = assert_valid(out, tmp_path)
    x = RNG.standard_normal((6, 2, 48)).astype(np.float32)
    ref, got = run(to_proto(model), {"x": x}), run(path, {"x": x})
    np.testing.assert_array_equal(got[2], ref[2])  # the GRU is untouched
    assert _cosine(got[0], ref[0]) > 0.999 and _cosine(got[1], ref[1]) > 0.999
    again = out.copy()
    result = Quantize(Quantize.Options(activations="dynamic")).run(again.graph, Context(again))
    assert result.modified is False


def test_small_lstm_stays_float_with_auto_placement():
    model, _, _ = _lstm_model(hidden=16, inputs=16)
    out, record = _quant(model, "quant{activations=dynamic}")
    assert record.modified is False and op_count(out, "LSTM") == 1
    assert record.skipped == {"dynamic: LSTM hidden_size below 64 (its integer kernel does not pay)": 1}
    out, record = _quant(model, "quant{activations=dynamic placement=all}")
    assert op_count(out, "DynamicQuantizeLSTM") == 1
