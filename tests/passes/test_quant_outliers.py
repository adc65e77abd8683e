"""Outlier input channels kept float in dynamic int8 MatMuls (passes/quant/outliers.py) and the
``activations=auto`` choice between static and dynamic (passes/quant/mode.py).

The graphs: ``x[16, 1024]`` whose channels 5 and 77 carry values 40x larger than the others (the
outliers of a pretrained transformer's activations), read by two narrowing MatMuls (``[1024, 128]``
weights, like an FFN's second MatMul, where the split is used; sharing ``x``); a widening reader
(``[1024, 2048]``) gets the outliers moved into its weights instead. Error bounds: with the split, the rewritten MatMul equals the
numpy evaluation of ``DynamicQuantizeMatMul(x * m) + x_O W_O`` to float rounding; on held-out
feeds the split gains more than 10 dB of output SQNR over plain dynamic (measured 20+ dB).
"""
import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import graphc
from graphc.calib.data import open_data
from graphc.passes.quant import Quantize
from graphc.passes.quant.mode import choose_activations, static_only
from graphc.passes.quant.outliers import MAX_OUTLIERS, outlier_channels
from graphc.passmanager import Context
from support import MODELS, assert_valid, make_model, op_count, run, sqnr_over
from tf2onnx_net import tf2onnx_classifier, tf2onnx_feeds

K, N, M = 1024, 128, 16
OUTLIERS = (5, 77)


def _weights(seed):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((K, N)) / K ** 0.5).astype(np.float32)


def _graph():
    """x -> MatMul wq (q) and MatMul wk (k): both read x."""
    inits = [numpy_helper.from_array(_weights(1), "wq"), numpy_helper.from_array(_weights(2), "wk")]
    nodes = [helper.make_node("MatMul", ["x", "wq"], ["q"], name="q"),
             helper.make_node("MatMul", ["x", "wk"], ["k"], name="k")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [M, K])],
                              [helper.make_tensor_value_info("q", TensorProto.FLOAT, [M, N]),
                               helper.make_tensor_value_info("k", TensorProto.FLOAT, [M, N])], inits)
    return graphc.load(make_model(graph, opset=13))


def _feeds(n, seed, spread=1.0):
    """``spread``: each feed scaled by a factor log-uniform in [1/spread, spread] (inputs whose
    range changes from one sample to the next: what static ranges cannot follow)."""
    rng = np.random.default_rng(seed)
    feeds = []
    for _ in range(n):
        x = rng.standard_normal((M, K)).astype(np.float32)
        x[:, list(OUTLIERS)] *= 40.0
        x *= np.float32(spread ** rng.uniform(-1, 1))
        feeds.append({"x": x})
    return feeds


def _quant(model, pipeline, data=None):
    """``pipeline`` run on a copy; q and k stay two readers of x (``merge-siblings=false``)
    unless the pipeline says otherwise (the merged reader: test_merged_narrowing_readers_keep_the_split)."""
    if "activations=dynamic" in pipeline and "merge-siblings" not in pipeline:
        pipeline = pipeline.replace("activations=dynamic", "activations=dynamic merge-siblings=false")
    model = model.copy()
    report = graphc.PassManager(pipeline, data=open_data(data, model) if data is not None else None,
                                prepare=False).run(model)
    return model, report.records[-1]


def test_merged_narrowing_readers_keep_the_split(tmp_path):
    """quant's default merges q and k into one [1024, 256] reader, still narrowing: the same
    outlier channels stay float in one thin MatMul, and the outputs equal the two readers'."""
    model = _graph()
    merged, record = _quant(model, "quant{activations=dynamic merge-siblings=true}", data=_feeds(8, 0))
    apart, record_apart = _quant(model, "quant{activations=dynamic}", data=_feeds(8, 0))
    assert record.stats["merged_matmuls"] == 2 and op_count(merged, "Split") == 1
    assert op_count(merged, "MatMulInteger") == 1 and op_count(merged, "MatMul") == 1  # the thin float part
    assert record.stats["outlier_channels_float"] == record_apart.stats["outlier_channels_float"] == len(OUTLIERS)
    path = assert_valid(merged, tmp_path)
    for feed in _feeds(2, 9):
        for got, want in zip(run(path, feed), run(apart, feed), strict=True):
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


def test_classify_split_mild_or_none():
    from graphc.passes.quant.outliers import classify

    values = np.ones(100)
    values[[3, 50]] = [10.0, 5.0]
    found = classify(values, limit=16)
    assert found.channels.tolist() == [3, 50] and not found.mild   # 10 > 6x: split, with 5 > 4x
    values[3] = 5.5
    found = classify(values, limit=16)
    assert found.channels.tolist() == [3, 50] and found.mild       # none above 6x: mild
    # s = max|x_c| / t, t the largest other channel (1.0): the scaled range is t
    assert found.scales()[[3, 50, 0]].tolist() == [5.5, 5.0, 1.0]
    values[[3, 50]] = 3.9
    assert classify(values, limit=16) is None
    assert classify(np.full(100, 2.0), limit=16) is None


def _mild_feeds(n, seed):
    """x whose channels 5 and 77 reach 5x the others' range (mild: between 4x and 6x)."""
    rng = np.random.default_rng(seed)
    feeds = []
    for _ in range(n):
        x = rng.uniform(-1, 1, (M, K)).astype(np.float32)
        x[:, list(OUTLIERS)] *= 5.0
        feeds.append({"x": x})
    return feeds


def test_mild_outliers_moved_into_the_weights(tmp_path):
    """x W = (x / s) (diag(s) W): one Mul on x, no float MatMul; matches numpy."""
    model = _graph()
    out, record = _quant(model, "quant{activations=dynamic}", data=_mild_feeds(8, 0))
    assert record.stats["outlier_channels_scaled"] == len(OUTLIERS) and "outlier_channels_float" not in record.stats
    assert op_count(out, "MatMul") == 0 and op_count(out, "Gather") == 0 and op_count(out, "MatMulInteger") == 2
    assert op_count(out, "DynamicQuantizeLinear") == 1
    assert_valid(out, tmp_path)
    # numpy: s from the calibrated maxima, u8 dynamic range of x / s, int8 per-column diag(s) W
    calib = np.concatenate([f["x"] for f in _mild_feeds(8, 0)])
    absmax = np.abs(calib.astype(np.float64)).max(0)
    s = np.ones(K)
    s[list(OUTLIERS)] = absmax[list(OUTLIERS)] / np.delete(absmax, OUTLIERS).max()
    x = _mild_feeds(1, 5)[0]["x"]
    xs = x * (1.0 / s).astype(np.float32)
    lo, hi = min(xs.min(), 0.0), max(xs.max(), 0.0)
    sx = np.float32((hi - lo) / 255.0)
    zx = np.clip(np.round(-lo / sx), 0, 255)
    xq = np.clip(np.round(xs / sx) + zx, 0, 255)
    w = _weights(1).astype(np.float64) * s[:, None]
    sw = np.abs(w).max(0) / 127.0
    expected = ((xq - zx) @ np.clip(np.round(w / sw), -127, 127)) * (sx * sw)
    got = run(out, {"x": x})[0]
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())
    held = _mild_feeds(4, 9)
    plain, _ = _quant(model, "quant{activations=dynamic outlier-channels=0}", data=_mild_feeds(8, 0))
    assert sqnr_over(model, out, held) > sqnr_over(model, plain, held) + 1.5  # measured +2.3 dB


def test_outlier_add_comes_after_the_bias(tmp_path):
    """MatMul -> Add(bias): the bias Add reads the integer part (onnxruntime fuses it into the
    integer kernel), the float outlier part is added after it; same values."""
    b = np.random.default_rng(4).standard_normal(N).astype(np.float32)
    inits = [numpy_helper.from_array(_weights(1), "wq"), numpy_helper.from_array(b, "b")]
    nodes = [helper.make_node("MatMul", ["x", "wq"], ["mm"], name="q"),
             helper.make_node("Add", ["mm", "b"], ["q"], name="bias")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [M, K])],
                              [helper.make_tensor_value_info("q", TensorProto.FLOAT, [M, N])], inits)
    model = graphc.load(make_model(graph, opset=13))
    out, _ = _quant(model, "quant{activations=dynamic}", data=_feeds(8, 0))
    bias = next(n for n in out.graph.nodes if n.name == "bias")
    assert bias.inputs[0].inputs[0].op == "Mul"   # the rescale of the integer sum
    last = out.graph.outputs[0].inputs[0]
    assert last.op == "Add" and bias.outputs[0] in last.inputs
    assert_valid(out, tmp_path)
    x = _feeds(1, 3)[0]["x"]
    split_only, _ = _quant(_graph(), "quant{activations=dynamic}", data=_feeds(8, 0))
    np.testing.assert_allclose(run(out, {"x": x})[0], run(split_only, {"x": x})[0] + b, rtol=1e-5, atol=1e-4)


def test_classify_splits_only_for_narrowing_readers():
    from graphc.passes.quant.outliers import classify

    values = np.ones(100)
    values[[3, 50]] = [10.0, 5.0]
    assert not classify(values, limit=16, narrowing=True).mild
    found = classify(values, limit=16, narrowing=False)     # strong, but a widening reader: mild
    assert found.mild and found.channels.tolist() == [3, 50]


def _widening_graph():
    """x[16, 1024] -> MatMul [1024, 2048] (an FFN's first MatMul: the output is wider than x)."""
    w = (np.random.default_rng(7).standard_normal((K, 2 * K)) / K ** 0.5).astype(np.float32)
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"], name="up")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [M, K])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [M, 2 * K])],
                              [numpy_helper.from_array(w, "w")])
    return graphc.load(make_model(graph, opset=13))


def test_strong_outliers_of_a_widening_reader_move_into_its_weights(tmp_path):
    """The split's float MatMul and Add would write the wide output: the 40x channels are moved
    into the weight (one Mul on x), still far better than plain dynamic."""
    model = _widening_graph()
    out, record = _quant(model, "quant{activations=dynamic}", data=_feeds(8, 0))
    assert record.stats["outlier_channels_scaled"] == len(OUTLIERS) and "outlier_channels_float" not in record.stats
    assert op_count(out, "MatMul") == 0 and op_count(out, "Gather") == 0 and op_count(out, "MatMulInteger") == 1
    assert op_count(out, "Mul") == 3   # x / s, and the integer sum's two rescale Muls
    assert_valid(out, tmp_path)
    held = _feeds(4, 9)
    plain, _ = _quant(model, "quant{activations=dynamic outlier-channels=0}", data=_feeds(8, 0))
    assert sqnr_over(model, out, held) > sqnr_over(model, plain, held) + 5   # measured +7.3 dB


def test_outlier_channels_rule():
    values = np.ones(100)
    values[[3, 50]] = [10.0, 7.0]
    assert outlier_channels(values).tolist() == [3, 50]      # > 6 x the median (1.0)
    values[50] = 5.0
    assert outlier_channels(values).tolist() == [3]          # 5 is not > 6
    assert outlier_channels(np.ones(10)).size == 0
    many = np.ones(100)
    many[:20] = np.arange(20) + 10.0
    assert outlier_channels(many).tolist() == list(range(20 - MAX_OUTLIERS, 20))  # the largest MAX_OUTLIERS
    assert outlier_channels(many, limit=0).size == 0


def test_split_with_data_keeps_outliers_float(tmp_path):
    model = _graph()
    out, record = _quant(model, "quant{activations=dynamic}", data=_feeds(8, 0))
    assert record.stats["outlier_channels_float"] == len(OUTLIERS)
    assert op_count(out, "MatMulInteger") == 2
    assert op_count(out, "DynamicQuantizeLinear") == 1          # shared by q and k
    # x_O gathered once; the int8 rows O of each weight gathered (constant: folded at load)
    assert op_count(out, "Gather") == 3 and op_count(out, "MatMul") == 2  # the float x_O W_O of each
    gathers = [n for n in out.graph.nodes if n.op == "Gather"]
    assert all(g.inputs[1].values.tolist() == list(OUTLIERS) for g in gathers)
    assert sum(g.inputs[0].name == "x" for g in gathers) == 1
    # the 0/1 mask: ScatterND(ConstantOfShape(K, 1), O, 0) - constant ops, only O stored
    scatter = next(n for n in out.graph.nodes if n.op == "Mul" and n.inputs[0].name == "x").inputs[1].inputs[0]
    assert scatter.op == "ScatterND" and scatter.inputs[0].inputs[0].op == "ConstantOfShape"
    assert scatter.inputs[1].values[:, 0].tolist() == list(OUTLIERS) and not scatter.inputs[2].values.any()
    assert_valid(out, tmp_path)
    records = [d for d in record.details if "outlier_channels" in d]
    assert sorted(d["node"] for d in records) == ["k", "q"]
    held = _feeds(4, 9)
    plain, _ = _quant(model, "quant{activations=dynamic outlier-channels=0}", data=_feeds(8, 0))
    assert op_count(plain, "Gather") == 0
    split_db, plain_db = sqnr_over(model, out, held), sqnr_over(model, plain, held)
    assert split_db > plain_db + 10, (split_db, plain_db)


def test_split_matches_numpy():
    """q = DynamicQuantizeMatMul(x * m, Wq sW) + x_O (Wq[O] sW): the same arithmetic in numpy (u8
    asymmetric range including 0, int8 symmetric per-column weights)."""
    model = _graph()
    out, _ = _quant(model, "quant{activations=dynamic}", data=_feeds(8, 0))
    x = _feeds(1, 3)[0]["x"]
    w = _weights(1).astype(np.float64)
    keep = np.ones(K)
    keep[list(OUTLIERS)] = 0
    xr = x * keep
    lo, hi = min(xr.min(), 0.0), max(xr.max(), 0.0)
    sx = np.float32((hi - lo) / 255.0)
    zx = np.clip(np.round(-lo / sx), 0, 255)
    xq = np.clip(np.round(xr / sx) + zx, 0, 255)
    sw = np.abs(w).max(0) / 127.0
    wq = np.clip(np.round(w / sw), -127, 127)
    expected = ((xq - zx) @ wq) * (sx * sw) + x[:, list(OUTLIERS)].astype(np.float64) @ (wq[list(OUTLIERS)] * sw)
    got = run(out, {"x": x})[0]
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())


def test_no_split_without_data_or_outliers():
    model = _graph()
    out, record = _quant(model, "quant{activations=dynamic}")            # no data: nothing measured
    assert op_count(out, "Gather") == 0 and "outlier_channels_float" not in record.stats
    calm = [{"x": np.random.default_rng(i).standard_normal((M, K)).astype(np.float32)} for i in range(4)]
    out, record = _quant(model, "quant{activations=dynamic}", data=calm)  # no channel stands out
    assert op_count(out, "Gather") == 0 and "outlier_channels_float" not in record.stats


def test_second_run_changes_nothing():
    out, _ = _quant(_graph(), "quant{activations=dynamic}", data=_feeds(8, 0))
    again, record = _quant(out, "quant{activations=dynamic}", data=_feeds(8, 0))
    assert not record.modified
    assert [n.op for n in again.graph.nodes] == [n.op for n in out.graph.nodes]


# -- activations=auto ------------------------------------------------------------------------


def _sqnr_of(model, options, feeds, held):
    """The quantized model and its SQNR (None: it quantized nothing, so it is not a candidate)."""
    out, record = _quant(model, f"quant{{{options}}}", data=feeds)
    return out, sqnr_over(model, out, held) if record.modified else None


@pytest.mark.parametrize("case", ["outliers", "tf2onnx"])
def test_auto_picks_the_mode_that_measures_better(case):
    """auto with data measures static and dynamic on the calibration data and keeps the better;
    checked here against both modes run explicitly and scored on the same feeds."""
    if case == "outliers":
        model, feeds = _graph(), _feeds(8, 0, spread=30.0)
    else:
        model = tf2onnx_classifier()
        feeds = tf2onnx_feeds(8)
    out, record = _quant(model, "quant", data=feeds)
    static, static_db = _sqnr_of(model, "activations=u8", feeds, feeds)
    dynamic, dynamic_db = _sqnr_of(model, "activations=dynamic merge-siblings=true", feeds, feeds)  # auto's defaults
    winner = dynamic if static_db is None or dynamic_db > static_db else static
    assert [n.op for n in out.graph.nodes] == [n.op for n in winner.graph.nodes]
    why = record.stats["activations_auto"]
    assert why.startswith("dynamic" if winner is dynamic else "static") and "SQNR" in why
    # measured: ranges changing 30x between samples favour dynamic; the tf2onnx classifier, static
    assert (case == "outliers") == (winner is dynamic), (static_db, dynamic_db)


@pytest.mark.parametrize("static, dynamic, chosen", [
    ((70.6, 1000), (59.5, 100), "dynamic"),  # both accurate: the fewer float MACs, though less SQNR
    ((70.6, 100), (59.5, 1000), "u8"),
    ((35.0, 1000), (30.0, 100), "u8"),       # not both accurate: the higher SQNR
    ((30.0, 100), (45.0, 1000), "dynamic"),
])
def test_auto_compares_float_macs_when_both_modes_are_accurate(monkeypatch, static, dynamic, chosen):
    import types

    import graphc.passes.quant.mode as mode_module

    measured = {"u8": static, "dynamic": dynamic}
    monkeypatch.setattr(mode_module, "_measured_candidate",
                        lambda quant_pass, mode, ctx: (types.SimpleNamespace(sqnr=measured[mode][0]), measured[mode][1]))
    model = _graph()
    ctx = Context(model, data=open_data(_feeds(2, 0), model))
    mode, why = choose_activations(Quantize(Quantize.Options()), model.graph, ctx)
    assert mode == chosen, why
    assert ("the fewer float multiply-adds" in why) == (min(static[0], dynamic[0]) >= mode_module.ENOUGH_SQNR)


def test_float_macs_counts_only_linear_ops_left_in_float(tmp_path):
    """Static QDQ on q only (k excluded): k's MatMul is float, q's weight comes from a
    DequantizeLinear; the dynamic form's MatMulInteger is not counted either."""
    from graphc.passes.quant.mode import float_macs

    model = _graph()
    shapes = Context(model).cost_shapes()
    per_matmul = M * K * 128
    assert float_macs(model.graph, shapes) == 2 * per_matmul
    feeds = _feeds(4, 0)
    static, _ = _quant(model, "quant{activations=u8 placement=all exclude=k}", data=feeds)
    assert float_macs(static.graph, Context(static).cost_shapes()) == per_matmul
    dynamic, _ = _quant(model, "quant{activations=dynamic placement=all}")  # no data: no float outlier part
    assert float_macs(dynamic.graph, Context(dynamic).cost_shapes()) == 0
    split, record = _quant(model, "quant{activations=dynamic placement=all}", data=feeds)
    assert float_macs(split.graph, Context(split).cost_shapes()) == M * record.stats["outlier_channels_float"] * 2 * N


def test_auto_is_static_without_measuring_on_conv_nets(monkeypatch):
    import graphc.passes.quant.mode as mode_module

    def no_measurement(*args):
        raise AssertionError("a conv net must not be measured both ways")

    monkeypatch.setattr(mode_module, "_measured_candidate", no_measurement)
    model = graphc.load(MODELS / "resnet_digits.onnx")
    ctx = Context(model, data=open_data(MODELS / "digits_calib.npz", model))
    mode, why = choose_activations(Quantize(Quantize.Options()), model.graph, ctx)
    assert mode == "u8" and why.startswith("static: MatMul/Gemm the dynamic mode would rewrite hold 0%")


def test_static_only_options():
    assert static_only(Quantize.Options(min_sqnr=20.0)) == "an error budget"
    assert static_only(Quantize.Options(bias_correction=True)) == "bias-correction"
    assert static_only(Quantize.Options(bits=4)) is not None
    assert static_only(Quantize.Options()) is None
    model = _graph()
    ctx = Context(model, data=open_data(_feeds(2, 0), model))
    # a budget the dynamic mode cannot meet: the per-layer mix (passes/quant/mix.py)
    mode, why = choose_activations(Quantize(Quantize.Options(min_sqnr=150.0)), model.graph, ctx)
    assert mode == "mix" and "misses the error budget min-sqnr=150" in why
    # a budget with another static-only option: the static budget search, without measuring
    mode, why = choose_activations(Quantize(Quantize.Options(min_sqnr=150.0, bias_correction=True)),
                                   model.graph, ctx)
    assert mode == "u8" and why == "static: an error budget needs it"
    # a budget on the user's metric stays static without measuring
    mode, why = choose_activations(Quantize(Quantize.Options(max_metric_drop=0.01)), model.graph, ctx)
    assert mode == "u8" and why == "static: an error budget needs it"


def test_budget_met_by_dynamic_gives_dynamic():
    """A budget on a MatMul model (the dynamic mode's share) that dynamic int8 meets: the result
    is dynamic (integer MatMuls, no Q/DQ), and it meets the budget on the calibration feeds."""
    model, feeds = _graph(), _feeds(8, 0, spread=30.0)
    out, record = _quant(model, "quant{min-cosine=0.999}", data=feeds)
    why = record.stats["activations_auto"]
    assert why.startswith("dynamic: meets the error budget min-cosine=0.999"), why
    assert op_count(out, "MatMulInteger") == 1 and op_count(out, "QuantizeLinear") == 0  # q, k merged
    got = [run(out, f) for f in feeds]
    ref = [run(model, f) for f in feeds]
    cos = np.mean([np.sum(g * r, 1) / (np.linalg.norm(g, axis=1) * np.linalg.norm(r, axis=1))
                   for gs_, rs in zip(got, ref) for g, r in zip(gs_, rs)])
    assert cos >= 0.999, cos
    # the same budget out of reach of dynamic: the per-layer mix (here every layer float)
    out, record = _quant(model, "quant{min-sqnr=150}", data=feeds)
    assert record.stats["activations_auto"].startswith("mix: dynamic int8 misses")
    assert op_count(out, "MatMulInteger") == 0 and op_count(out, "DynamicQuantizeLinear") == 0


# -- embedding row scales (passes/quant/embedding.py) ---------------------------------------


def test_embedding_row_scales_coded_when_their_range_is_narrow():
    from graphc.passes.quant.embedding import CODEBOOK, int8_rows

    table = np.random.default_rng(0).standard_normal((3000, 16)).astype(np.float32)
    q, scales = int8_rows(table)
    assert scales.table is None and scales.codes.dtype == np.uint8 and scales.codes.shape == (3000, 1)
    assert scales.codebook.dtype == np.float32 and scales.codebook.shape == (CODEBOOK,)
    exact = np.abs(table.astype(np.float64)).max(axis=1, keepdims=True) / 127
    stored = scales.values()
    # rounded up onto the grid: never below the exact scale, at most rho = (hi/lo)^(1/255) above
    rho = (exact.max() / exact.min()) ** (1 / (CODEBOOK - 1))
    assert np.all(stored >= exact) and np.all(stored <= exact * rho * (1 + 1e-6))
    assert np.abs(q).max() <= 127
    assert np.all(np.abs(q * stored - table) <= stored / 2 + 1e-7)


def test_embedding_row_scales_half_when_their_range_is_wide():
    from graphc.passes.quant.embedding import int8_rows

    table = np.random.default_rng(0).standard_normal((300, 16)).astype(np.float32)
    table[3] *= 1e3  # the scales span 1e3+: a 256-level grid would step by more than 2^-6
    q, scales = int8_rows(table)
    scale = scales.table
    assert scales.codes is None and scale.dtype == np.float16 and scale.shape == (300, 1)
    exact = np.abs(table.astype(np.float64)).max(axis=1, keepdims=True) / 127
    assert np.all(scale.astype(np.float64) >= exact) and np.all(scale.astype(np.float64) <= exact * (1 + 2 ** -10))
    assert np.abs(q).max() <= 127
    assert np.all(np.abs(q * scale.astype(np.float64) - table) <= scale.astype(np.float64) / 2 + 1e-7)
    table[7] *= 1e-6  # a row whose scale is below float16's normal range
    _, scales = int8_rows(table)
    assert scales.table.dtype == np.float32
