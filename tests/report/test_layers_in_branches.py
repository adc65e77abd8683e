"""The report's per-layer table for layers inside If branches (graphc/verify/layers.py,
graphc/report/layers.py): rows named by path (``if_a/then_branch/then_a.mm``) carry the error of
the layer over the samples that take its branch - checked by hand on a two-If model where each
branch weight is scaled by a known factor (SQNR = -20 log10 |factor - 1|), the two branches of one
If writing the If's output under one tensor name, and a branch taken under both branches of the
other If pooled over both groups of samples; a branch no sample takes has no error; and the
HTML/Markdown reports of `graphc opt -p quant` show the branch rows with their error."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import graphc
from graphc.cli import main
from graphc.ir import walk_graphs
from graphc.report.layers import layer_table
from graphc.verify.layers import branch_layer_errors, layer_errors

N, K = 4, 8
#: weight -> factor of the candidate: each layer's SQNR is -20 log10 |factor - 1|
FACTORS = {"W0": 1.0001, "Wta": 1.01, "Wea": 1.001, "Wtb": 1.003, "Web": 1.03}


def _branch(name: str, weight: str, x: str, out: str):
    return helper.make_graph([helper.make_node("MatMul", [x, weight], [out], name=f"{name}.mm")], name, [],
                             [helper.make_tensor_value_info(out, TensorProto.FLOAT, [N, K])])


def two_if_model(path):
    """x -> If(a: x Wta | x Wea) -> h -> MatMul W0 -> z -> If(b: z Wtb | z Web) -> y. Each branch's
    MatMul writes its branch output; the If writes it under its own name."""
    rng = np.random.default_rng(5)
    weights = {name: (rng.standard_normal((K, K)) / np.sqrt(K)).astype(np.float32) for name in FACTORS}
    nodes = [helper.make_node("If", ["a"], ["h"], name="if_a", then_branch=_branch("then_a", "Wta", "x", "ta"),
                              else_branch=_branch("else_a", "Wea", "x", "ea")),
             helper.make_node("MatMul", ["h", "W0"], ["z"], name="mid.mm"),
             helper.make_node("If", ["b"], ["y"], name="if_b", then_branch=_branch("then_b", "Wtb", "z", "tb"),
                              else_branch=_branch("else_b", "Web", "z", "eb"))]
    graph = helper.make_graph(
        nodes, "two_ifs",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [N, K]),
         helper.make_tensor_value_info("a", TensorProto.BOOL, []),
         helper.make_tensor_value_info("b", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [N, K])],
        [numpy_helper.from_array(w, name) for name, w in weights.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    (path).write_bytes(model.SerializeToString())
    return path


def scaled(path, factors=FACTORS):
    model = graphc.load(path)
    for _, scope in walk_graphs(model.graph):
        for tensor in scope.tensors().values():
            if tensor.name in factors and hasattr(tensor, "values"):
                tensor.values = (tensor.values.astype(np.float64) * factors[tensor.name]).astype(np.float32)
    return model


def feeds(ways):
    """One sample per (a, b) in ``ways``, two of each."""
    rng = np.random.default_rng(9)
    return [{"x": rng.standard_normal((N, K)).astype(np.float32), "a": np.array(a), "b": np.array(b)}
            for a, b in ways for _ in range(2)]


def expected_db(weight: str) -> float:
    return -20 * math.log10(abs(FACTORS[weight] - 1))


ALL_WAYS = [(True, True), (True, False), (False, True), (False, False)]
LAYERS = {"if_a/then_branch/then_a.mm": "Wta", "if_a/else_branch/else_a.mm": "Wea", "mid.mm": "W0",
          "if_b/then_branch/then_b.mm": "Wtb", "if_b/else_branch/else_b.mm": "Web"}


def test_branch_layers_get_their_own_error_over_the_samples_that_take_them(tmp_path):
    path = two_if_model(tmp_path / "ifs.onnx")
    reference, candidate = graphc.load(path), scaled(path)
    errors = layer_errors(reference, candidate, feeds(ALL_WAYS))
    assert set(errors) == set(LAYERS)
    for layer, weight in LAYERS.items():
        # the first If's layers read x itself: output f times the reference's, SQNR -20 log10 |f - 1|
        # (downstream layers add their input's error: test_downstream_branch_layers_by_hand)
        if layer.startswith("if_a/"):
            assert errors[layer].sqnr_db == pytest.approx(expected_db(weight), abs=0.05), layer
        # every branch layer runs on the 4 of 8 samples taking its branch, the top layer on all 8
        assert errors[layer].samples == (8 if layer == "mid.mm" else 4), layer


def test_downstream_branch_layers_by_hand(tmp_path):
    """Only the second If's weights scaled: its branch layers' error is their own factor's."""
    path = two_if_model(tmp_path / "ifs.onnx")
    reference = graphc.load(path)
    candidate = scaled(path, {"Wtb": FACTORS["Wtb"], "Web": FACTORS["Web"]})
    errors = branch_layer_errors(reference, candidate, feeds(ALL_WAYS))
    assert errors["if_b/then_branch/then_b.mm"].sqnr_db == pytest.approx(expected_db("Wtb"), abs=0.05)
    assert errors["if_b/else_branch/else_b.mm"].sqnr_db == pytest.approx(expected_db("Web"), abs=0.05)
    assert errors["if_a/then_branch/then_a.mm"].sqnr_db == math.inf  # unchanged


def test_a_branch_no_sample_takes_has_no_error(tmp_path):
    path = two_if_model(tmp_path / "ifs.onnx")
    reference, candidate = graphc.load(path), scaled(path)
    errors = layer_errors(reference, candidate, feeds([(True, True), (True, False)]))
    assert "if_a/else_branch/else_a.mm" not in errors
    assert errors["if_a/then_branch/then_a.mm"].samples == 4     # pooled over both ways of if_b
    assert errors["if_b/then_branch/then_b.mm"].samples == 2
    rows = {row["node"]: row for row in layer_table(reference, candidate, [], {
        name: metrics.to_dict() for name, metrics in errors.items()})}
    assert set(rows) == set(LAYERS)
    assert rows["if_a/else_branch/else_a.mm"]["sqnr_db"] is None
    assert rows["if_a/then_branch/then_a.mm"]["sqnr_db"] == pytest.approx(expected_db("Wta"), abs=0.05)


def test_a_model_without_if_is_not_run_again(tmp_path, monkeypatch):
    import graphc.verify.layers as layers

    monkeypatch.setattr(layers, "taken_branch_views", lambda *a: pytest.fail("views of a model without If"))
    path = two_if_model(tmp_path / "ifs.onnx")
    model = graphc.load(path)
    model.graph.nodes = [n for n in model.graph.nodes if n.op != "If"]
    assert branch_layer_errors(model, model, feeds(ALL_WAYS)) == {}


@pytest.mark.parametrize("suffix", ["json", "md", "html"])
def test_opt_report_shows_branch_layers_with_their_error(tmp_path, suffix):
    path = two_if_model(tmp_path / "ifs.onnx")
    data = tmp_path / "data.npz"
    samples = feeds(ALL_WAYS)
    np.savez(data, **{k: np.stack([s[k] for s in samples]) for k in ("x", "a", "b")})
    report = tmp_path / f"report.{suffix}"
    assert main(["opt", str(path), "-p", "quant{placement=all}", "--data", str(data), "-o",
                 str(tmp_path / "out.onnx"), "--report", str(report), "-q"]) == 0
    text = report.read_text()
    if suffix == "json":
        rows = {row["node"]: row for row in json.loads(text)["layers"]}
        assert set(rows) == set(LAYERS)
        for name, row in rows.items():
            assert row["precision"] == "int8" and 20 < row["sqnr_db"] < 80, (name, row["sqnr_db"])
    else:
        for name in LAYERS:
            assert name in text


def test_if_conditions_that_are_graph_inputs_are_read_from_the_samples(tmp_path):
    """A mode flag fed as an input is no tensor any node computes: the branch views read it from
    the samples, so localization too finds a divergence inside such a branch by its path."""
    from graphc.verify import compare_models

    path = two_if_model(tmp_path / "ifs.onnx")
    bad = graphc.save(scaled(path, {"Web": 1.05}), tmp_path / "bad.onnx")
    data = tmp_path / "data.npz"
    samples = feeds(ALL_WAYS)
    np.savez(data, **{k: np.stack([s[k] for s in samples]) for k in ("x", "a", "b")})
    found = compare_models(path, bad, data=data, samples=None, localize=True).localization
    assert found.candidate_node == "MatMul 'if_b/else_branch/else_b.mm'"
