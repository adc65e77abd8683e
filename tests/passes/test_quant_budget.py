"""quant{min-sqnr=...}: the error budget is met on the calibration data with strictly fewer float
layers than the sensitive ones, each kept layer has a reason, and the sensitivity cache is
re-used by a second run with another budget."""
import json

import numpy as np
import onnx_graphsurgeon as gs
import pytest
from onnx import TensorProto, helper, numpy_helper

import graphc
from graphc.calib.data import open_data
from graphc.passes.quant import error_budget as QB
from graphc.passmanager import Context
from graphc.passmanager.pipeline import parse_pipeline
from graphc.runtime import create_session, run_session
from support import assert_valid, make_model, run, sqnr_over

C = 16


def _chain(seed=0, opset=13):
    """x(1x16x10x10) -> 6 x (Conv 3x3 + Relu) -> y. Convs 1, 3 and 4 have one huge weight, so a
    per-tensor weight scale crushes their other weights (sensitive layers)."""
    rng = np.random.default_rng(seed)
    nodes, inits, x = [], [], "x"
    for i in range(6):
        w = rng.standard_normal((C, C, 3, 3)) * np.sqrt(2 / (9 * C))
        if i in (1, 3, 4):
            w[0, 0, 1, 1] = 40.0 * (1 + i / 10)
        inits += [numpy_helper.from_array(w.astype(np.float32), f"w{i}"),
                  numpy_helper.from_array((rng.standard_normal(C) * 0.1).astype(np.float32), f"b{i}")]
        nodes += [helper.make_node("Conv", [x, f"w{i}", f"b{i}"], [f"c{i}"], name=f"conv{i}", pads=[1] * 4),
                  helper.make_node("Relu", [f"c{i}"], [f"r{i}"], name=f"relu{i}")]
        x = f"r{i}"
    nodes.append(helper.make_node("Identity", [x], ["y"], name="out"))
    graph = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, C, 10, 10])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, C, 10, 10])], inits)
    return graphc.load(make_model(graph, opset=opset))


def _feeds(n=6):
    rng = np.random.default_rng(1)
    return [{"x": rng.standard_normal((1, C, 10, 10)).astype(np.float32)} for _ in range(n)]


def _quantize(text, feeds):
    model = _chain()
    reference = model.copy()
    record = graphc.PassManager(text, data=open_data(feeds, model)).run(model).records[-1]
    return reference, model, record


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("GRAPHC_CACHE_DIR", str(tmp_path / "cache"))


def test_budget_is_met_with_fewer_float_layers_than_sensitive(tmp_path):
    feeds = _feeds()
    base = "quant{placement=all per-channel=false calib=minmax"
    reference, plain, _ = _quantize(base + "}", feeds)
    assert sqnr_over(reference, plain, feeds) < 30
    reference, model, record = _quantize(base + " min-sqnr=30}", feeds)
    stats = record.stats
    assert sqnr_over(reference, model, feeds) >= 30
    assert stats["budget_sqnr"] >= 30
    assert 0 < stats["budget_float_layers"] < stats["budget_sensitive_layers"]
    kept = [d for d in record.details if d.get("precision") == "float"]
    assert len(kept) == stats["budget_float_layers"]
    assert all(d["reason"].startswith("min-sqnr=30") for d in kept)
    float_convs = {n.name for n in model.graph.nodes if n.op == "Conv"
                   and not any(getattr(t.inputs[0], "op", None) == "DequantizeLinear"
                               for t in n.inputs[1:2] if t.inputs)}
    assert float_convs == {d["node"] for d in kept}
    assert_valid(model, tmp_path)


def test_sensitivity_is_cached_across_budgets():
    feeds = _feeds()
    base = "quant{placement=all per-channel=false calib=minmax"
    first = _quantize(base + " min-sqnr=30}", feeds)[2].stats
    assert first["budget_evaluations_run"] >= first["budget_layers"]
    second = _quantize(base + " min-sqnr=25}", feeds)[2].stats
    # the sensitivity sweep and the all-quantized model come from the cache
    assert second["budget_evaluations_cached"] >= second["budget_layers"] + 1
    assert second["budget_evaluations_run"] < first["budget_evaluations_run"]


def test_met_budget_keeps_everything_quantized():
    feeds = _feeds()
    _, _, record = _quantize("quant{placement=all calib=minmax min-sqnr=5}", feeds)
    assert record.stats["budget_float_layers"] == 0
    assert record.stats["quantized_Conv"] == 6


def _classifier(batch=8, seed=0, classes=10):
    """The chain with a class-score head: Flatten -> MatMul (random weights) -> logits [batch, 10]."""
    model = _chain(seed)
    g = model.graph
    y = g.outputs[0]
    rng = np.random.default_rng(seed + 7)
    flat = gs.Variable("flat", dtype=np.float32, shape=[batch, C * 100])
    logits = gs.Variable("logits", dtype=np.float32, shape=[batch, classes])
    w = gs.Constant("head_w", (rng.standard_normal((C * 100, classes)) / 40).astype(np.float32))
    g.nodes += [gs.Node("Flatten", name="flatten", attrs={"axis": 1}, inputs=[y], outputs=[flat]),
                gs.Node("MatMul", name="head", inputs=[flat, w], outputs=[logits])]
    g.inputs[0].shape = [batch, C, 10, 10]
    y.shape = [batch, C, 10, 10]
    g.outputs = [logits]
    g.cleanup().toposort()
    return model


def _class_feeds(n=6, batch=8):
    rng = np.random.default_rng(2)
    return [{"x": rng.standard_normal((batch, C, 10, 10)).astype(np.float32)} for _ in range(n)]


def _disagreement(reference, candidate, feeds):
    """Measured as the budget measures it: onnxruntime with its graph optimizations (fused
    integer kernels), which round differently from the unfused Q/DQ reference semantics."""
    ref, cand = (create_session(m, spin=False) for m in (reference, candidate))
    wrong = total = 0
    for feed in feeds:
        r, c = run_session(ref, feed)[0], run_session(cand, feed)[0]
        wrong += int(np.count_nonzero(r.argmax(-1) != c.argmax(-1)))
        total += r.shape[0]
    return wrong / total


def _quantize_classifier(text, feeds):
    model = _classifier()
    reference = model.copy()
    record = graphc.PassManager(text, data=open_data(feeds, model)).run(model).records[-1]
    return reference, model, record


def test_top1_budget_is_met_on_the_calibration_data(tmp_path):
    feeds = _class_feeds()
    base = "quant{placement=all per-channel=false calib=minmax"
    reference, plain, _ = _quantize_classifier(base + "}", feeds)
    plain_drop = _disagreement(reference, plain, feeds)
    assert plain_drop > 0.05  # the crushed layers flip predictions
    reference, model, record = _quantize_classifier(base + " max-top1-drop=0.02}", feeds)
    stats = record.stats
    measured = _disagreement(reference, model, feeds)
    assert measured <= 0.02
    assert stats["budget_top1_disagreement"] == pytest.approx(measured, abs=1e-5)
    assert stats["budget_top1_disagreement_all_quantized"] == pytest.approx(plain_drop, abs=1e-5)
    assert 0 < stats["budget_float_layers"] < stats["budget_layers"]
    kept = [d for d in record.details if d.get("precision") == "float" and "solo_sqnr" in d]
    assert len(kept) == stats["budget_float_layers"]
    assert all(d["reason"].startswith("max-top1-drop=0.02") and "top-1 disagreement" in d["reason"]
               for d in kept)
    assert all(d["macs"] > 0 for d in kept)
    assert_valid(model, tmp_path)


def test_both_bounds_must_hold():
    feeds = _class_feeds()
    base = "quant{placement=all per-channel=false calib=minmax"
    _, _, loose = _quantize_classifier(base + " max-top1-drop=0.5}", feeds)
    reference, model, both = _quantize_classifier(base + " max-top1-drop=0.5 min-sqnr=30}", feeds)
    assert both.stats["budget_sqnr"] >= 30 and both.stats["budget_top1_disagreement"] <= 0.5
    assert both.stats["budget_float_layers"] > loose.stats["budget_float_layers"]
    assert both.stats["budget"] == "min-sqnr=30 max-top1-drop=0.5"
    # the top-1 budget re-used the evaluations the first run measured
    assert both.stats["budget_evaluations_cached"] >= both.stats["budget_layers"] + 1


def test_top1_budget_needs_a_class_output():
    feeds = _feeds()
    with pytest.raises(graphc.errors.DataError, match="max-top1-drop needs a model output with class scores"):
        _quantize("quant{placement=all per-channel=false calib=minmax max-top1-drop=0.01}", feeds)


def test_budget_options_do_not_combine_with_weights_only():
    with pytest.raises(graphc.errors.OptionError, match="max-top1-drop"):
        graphc.PassManager("quant{weights-only=true bits=8 max-top1-drop=0.01}")


def test_old_cache_files_are_ignored(tmp_path):
    feeds = _feeds()
    base = "quant{placement=all per-channel=false calib=minmax min-sqnr=30}"
    first = _quantize(base, feeds)[2].stats
    files = list((tmp_path / "cache" / "quant-budget").glob("*.json"))
    assert len(files) == 1
    stored = json.loads(files[0].read_text())
    assert stored["version"] == QB.CACHE_VERSION
    # a cache written by the older format ({set: float}) is not trusted: everything is re-measured
    files[0].write_text(json.dumps({"evaluations": {k: v["sqnr"] for k, v in stored["evaluations"].items()}}))
    again = _quantize(base, feeds)[2].stats
    assert again["budget_evaluations_run"] == first["budget_evaluations_run"]
    assert again["budget_float_layers"] == first["budget_float_layers"]


def _hardswish_block():
    """x -> Conv -> HardSigmoid, Mul (a HardSwish) -> Conv -> Add(residual with the first Conv)
    -> Conv."""
    rng = np.random.default_rng(3)
    inits = [numpy_helper.from_array((rng.standard_normal((C, C, 1, 1)) * 0.3).astype(np.float32), f"w{i}")
             for i in range(3)]
    nodes = [helper.make_node("Conv", ["x", "w0"], ["c0"], name="conv0"),
             helper.make_node("HardSigmoid", ["c0"], ["h0"], name="hsig0", alpha=1 / 6, beta=0.5),
             helper.make_node("Mul", ["c0", "h0"], ["m0"], name="mul0"),
             helper.make_node("Conv", ["m0", "w1"], ["c1"], name="conv1"),
             helper.make_node("Add", ["c1", "c0"], ["a1"], name="add1"),
             helper.make_node("Conv", ["a1", "w2"], ["y"], name="conv2")]
    graph = helper.make_graph(nodes, "hs", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, C, 6, 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, C, 6, 6])], inits)
    return graphc.load(make_model(graph, opset=13))


def test_element_wise_ops_go_float_with_the_layer_that_feeds_them():
    model = _hardswish_block()
    ctx = Context(model, data=open_data(_feeds(2), model))
    quant = graphc.passes.quant.Quantize(parse_pipeline("quant{placement=all}").steps[0].options)
    units = QB.candidate_units(quant, model.graph, ctx)
    quantized = [n for unit in units.values() for n in unit]
    assert len(quantized) == len(set(quantized))  # each op in one unit
    assert set(units) == {"conv0", "conv1", "conv2"}
    assert units["conv1"][0] == "conv1" and "add1" in units["conv1"]
    assert {"hsig0", "mul0"} <= set(units["conv0"])


def test_budget_measures_the_model_it_writes_with_the_speed_model():
    """placement=auto: the budget's SQNR and disagreement are those of the written model, the
    speed trim included (ops the speed model no longer wants on integers once their neighbours
    are float go float too, each with a reason)."""
    feeds = _class_feeds()
    reference, model, record = _quantize_classifier("quant{per-channel=false calib=minmax min-sqnr=25}", feeds)
    stats = record.stats
    assert stats["budget_float_layers"] >= 1 and stats["budget_speed_trimmed"] >= 1
    assert 0 < stats["quantized_Conv"] < 6
    trimmed = [d for d in record.details if "speed model finds it slower" in d.get("reason", "")]
    assert len(trimmed) == stats["budget_speed_trimmed"]
    assert stats["budget_top1_disagreement"] == pytest.approx(_disagreement(reference, model, feeds), abs=1e-5)
    ref, cand = (create_session(m, spin=False) for m in (reference, model))
    signal = noise = 0.0
    for feed in feeds:
        r, c = run_session(ref, feed)[0].astype(np.float64), run_session(cand, feed)[0]
        signal, noise = signal + float(np.sum(r ** 2)), noise + float(np.sum((r - c) ** 2))
    assert stats["budget_sqnr"] >= 25
    assert stats["budget_sqnr"] == pytest.approx(10 * np.log10(signal / noise), abs=0.01)


def test_a_budget_that_keeps_every_layer_float_leaves_the_model_alone():
    """min-sqnr=150 is met only by the float model: nothing is quantized, the opset is not
    raised, and the pass says so."""
    model = _chain(opset=11)
    before = [n.op for n in model.graph.nodes]
    record = graphc.PassManager("quant{placement=all calib=minmax min-sqnr=150}", prepare=False,
                                data=open_data(_feeds(), model)).run(model).records[-1]
    assert record.modified is False and model.opset == 11
    assert [n.op for n in model.graph.nodes] == before
    assert record.stats["budget_float_layers"] == record.stats["budget_layers"] == 6
    assert record.skipped == {"min-sqnr=150: every layer stays float": 1}


def test_min_cosine_budget_is_met_when_measured_independently(tmp_path):
    """``min-cosine``: the written model's mean per-sample output cosine on the calibration
    data (computed here in numpy) is at least the target, with fewer layers float than all."""
    feeds = _feeds()
    reference, model, record = _quantize("quant{placement=all min-cosine=0.999 per-channel=false}", feeds)
    assert record.stats["budget"] == "min-cosine=0.999"
    assert 0 < record.stats["budget_float_layers"] < record.stats["budget_layers"]
    assert record.stats["budget_cosine_all_quantized"] < 0.999 <= record.stats["budget_cosine"]
    cosines = []
    for feed in feeds:
        r, q = run(reference, feed)[0].reshape(-1), run(model, feed)[0].reshape(-1)
        cosines.append(float(r @ q / np.linalg.norm(r) / np.linalg.norm(q)))
    assert np.mean(cosines) >= 0.999
    assert abs(np.mean(cosines) - record.stats["budget_cosine"]) < 1e-5
    assert_valid(model, tmp_path)
