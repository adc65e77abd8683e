"""quant{min-sqnr=...}: the error budget is met on the calibration data with strictly fewer float
layers than the sensitive ones, each kept layer has a reason, and the sensitivity cache is
re-used by a second run with another budget."""
import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import graphc
from graphc.calib.data import open_data
from support import assert_valid, make_model, run

C = 16


def _chain(seed=0):
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
    return graphc.load(make_model(graph, opset=13))


def _feeds(n=6):
    rng = np.random.default_rng(1)
    return [{"x": rng.standard_normal((1, C, 10, 10)).astype(np.float32)} for _ in range(n)]


def _sqnr(reference, candidate, feeds):
    signal = noise = 0.0
    for feed in feeds:
        for r, c in zip(run(reference, feed), run(candidate, feed)):
            signal += float(np.sum(r.astype(np.float64) ** 2))
            noise += float(np.sum((r.astype(np.float64) - c) ** 2))
    return 10 * np.log10(signal / noise)


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
    assert _sqnr(reference, plain, feeds) < 30
    reference, model, record = _quantize(base + " min-sqnr=30}", feeds)
    stats = record.stats
    assert _sqnr(reference, model, feeds) >= 30
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
