"""Localization and per-layer error inside Loop and Scan bodies (graphc/verify/body_tensors.py):
on hand-built recurrent models, a corrupted body weight is named by its path as the first
divergence, in the first iteration it shows in, even when a node earlier in the body diverges
from the next iteration on; an uncorrupted model blames nothing; the lifted, stacked body values
are those of the recurrence computed by hand, and a body layer's error is the error over all its
iterations concatenated."""
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import graphc
from graphc.ir import walk_graphs
from graphc.ir.outputs import with_outputs
from graphc.metrics import sqnr_db
from graphc.verify import Tolerances, compare_models, localize_divergence, shared_tensors
from graphc.verify.layers import layer_errors
from support import cli, make_model, run

STEPS, HIDDEN = 5, 8
RNG = np.random.default_rng(7)
W1 = (RNG.standard_normal((HIDDEN, HIDDEN)) * 0.4).astype(np.float32)
W2 = (RNG.standard_normal((HIDDEN, HIDDEN)) * 0.4).astype(np.float32)
WX = (RNG.standard_normal((4, HIDDEN)) * 0.5).astype(np.float32)
WH = (RNG.standard_normal((HIDDEN, HIDDEN)) * 0.4).astype(np.float32)


def loop_model() -> onnx.ModelProto:
    """h <- Tanh(MatMul(Tanh(MatMul(h, W1)), W2)), STEPS times; outputs final h and every h."""
    f = TensorProto.FLOAT
    body = helper.make_graph(
        [helper.make_node("MatMul", ["h", "W1"], ["a"], name="step.first"),
         helper.make_node("Tanh", ["a"], ["b"], name="step.tanh"),
         helper.make_node("MatMul", ["b", "W2"], ["c"], name="step.second"),
         helper.make_node("Tanh", ["c"], ["h_next"], name="step.out"),
         helper.make_node("Identity", ["cond"], ["cond_out"], name="step.cond"),
         helper.make_node("Identity", ["h_next"], ["h_scan"], name="step.scan")],
        "loop_body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond", TensorProto.BOOL, []),
         helper.make_tensor_value_info("h", f, [1, HIDDEN])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("h_next", f, [1, HIDDEN]),
         helper.make_tensor_value_info("h_scan", f, [1, HIDDEN])])
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["h0"], name="pre"),
         helper.make_node("Loop", ["steps", "", "h0"], ["h_final", "h_all"], name="loop", body=body),
         helper.make_node("Mul", ["h_final", "h_final"], ["y"], name="post")],
        "loop_model",
        [helper.make_tensor_value_info("x", f, [1, HIDDEN])],
        [helper.make_tensor_value_info("y", f, [1, HIDDEN]),
         helper.make_tensor_value_info("h_all", f, [STEPS, 1, HIDDEN])],
        [numpy_helper.from_array(np.array(STEPS, np.int64), "steps"),
         numpy_helper.from_array(W1, "W1"), numpy_helper.from_array(W2, "W2")])
    return make_model(graph, opset=16)


def scan_model() -> onnx.ModelProto:
    """Scan over x [T, 1, 4] with state h: h <- Tanh(MatMul(x_t, WX) + MatMul(h, WH))."""
    f = TensorProto.FLOAT
    body = helper.make_graph(
        [helper.make_node("MatMul", ["x_t", "WX"], ["u"], name="cell.input"),
         helper.make_node("MatMul", ["h", "WH"], ["r"], name="cell.recurrent"),
         helper.make_node("Add", ["u", "r"], ["s"], name="cell.add"),
         helper.make_node("Tanh", ["s"], ["h_next"], name="cell.tanh"),
         helper.make_node("Identity", ["h_next"], ["y_t"], name="cell.out")],
        "scan_body",
        [helper.make_tensor_value_info("h", f, [1, HIDDEN]), helper.make_tensor_value_info("x_t", f, [1, 4])],
        [helper.make_tensor_value_info("h_next", f, [1, HIDDEN]), helper.make_tensor_value_info("y_t", f, [1, HIDDEN])])
    graph = helper.make_graph(
        [helper.make_node("Scan", ["h0", "x"], ["h_final", "ys"], name="scan", body=body, num_scan_inputs=1),
         helper.make_node("Relu", ["ys"], ["y"], name="post")],
        "scan_model",
        [helper.make_tensor_value_info("h0", f, [1, HIDDEN]), helper.make_tensor_value_info("x", f, [STEPS, 1, 4])],
        [helper.make_tensor_value_info("y", f, [STEPS, 1, HIDDEN]), helper.make_tensor_value_info("h_final", f, [1, HIDDEN])],
        [numpy_helper.from_array(WX, "WX"), numpy_helper.from_array(WH, "WH")])
    return make_model(graph, opset=16)


def feeds_loop(n: int = 4) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(1)
    return [{"x": rng.standard_normal((1, HIDDEN)).astype(np.float32)} for _ in range(n)]


def feeds_scan(n: int = 4) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(2)
    return [{"h0": rng.standard_normal((1, HIDDEN)).astype(np.float32),
             "x": rng.standard_normal((STEPS, 1, 4)).astype(np.float32)} for _ in range(n)]


def corrupted(proto: onnx.ModelProto, weight: str, factor: float = 1.05) -> graphc.Model:
    model = graphc.load(proto)
    tensor = next(t for _, g in walk_graphs(model.graph) for t in g.tensors().values() if t.name == weight)
    tensor.values = tensor.values * np.float32(factor)
    return model


def test_corrupted_late_loop_weight_is_named_by_path_in_the_first_iteration():
    # W2 is read after W1 in the body; from iteration 1 on, step.first's output diverges too (it
    # reads the corrupted h). Judged over all iterations at once, step.first would be blamed.
    reference, bad = graphc.load(loop_model()), corrupted(loop_model(), "W2")
    report = compare_models(reference, bad, data=feeds_loop(), samples=None, localize=True)
    assert not report.passed
    found = report.localization
    assert found.tensor == "c"
    assert found.candidate_node == found.reference_node == "MatMul 'loop/body/step.second'"
    assert "first diverges in iteration 0 (of 5)" in found.note
    assert found.metrics.shape == (1, HIDDEN)  # one iteration's value


def test_corrupted_first_loop_weight_is_named_by_path():
    found = localize_divergence(graphc.load(loop_model()), corrupted(loop_model(), "W1"), feeds_loop(),
                                Tolerances()).tensor
    assert found == "a"


def test_corrupted_scan_weight_is_named_in_the_iteration_it_first_shows_in():
    # WH multiplies the state: it shows from iteration 0 (h0 is not zero); the input projection
    # cell.input never diverges and comes first in body order: it must not be blamed.
    reference, bad = graphc.load(scan_model()), corrupted(scan_model(), "WH")
    found = compare_models(reference, bad, data=feeds_scan(), samples=None, localize=True).localization
    assert found.tensor == "r"
    assert found.candidate_node == "MatMul 'scan/body/cell.recurrent'"
    assert "inside the body of scan: first diverges in iteration 0" in found.note


def test_scan_divergence_that_starts_in_a_later_iteration_says_so():
    reference = graphc.load(scan_model())
    bad = corrupted(scan_model(), "WH")
    feeds = [dict(f, h0=np.zeros((1, HIDDEN), np.float32)) for f in feeds_scan()]  # MatMul(0, WH) == 0 at first
    found = localize_divergence(reference, bad, feeds, Tolerances())
    assert found.candidate_node == "MatMul 'scan/body/cell.recurrent'"
    assert "first diverges in iteration 1 (of 5)" in found.note


@pytest.mark.parametrize("build,feeds", [(loop_model, feeds_loop), (scan_model, feeds_scan)])
def test_uncorrupted_model_blames_nothing(build, feeds):
    reference, candidate = graphc.load(build()), graphc.load(build())
    body = {t.name for t in shared_tensors(reference, candidate) if t.loop is not None}
    assert len(body) >= 4  # the body's tensors are searched too
    found = localize_divergence(reference, candidate, feeds(), Tolerances())
    assert found.tensor is None and found.compared == found.shared
    assert "every shared tensor is within budget" in found.note


def test_lifted_body_values_are_the_recurrence_over_every_iteration():
    lifted = with_outputs(graphc.load(loop_model()), ["a", "c"])
    feed = feeds_loop(1)[0]
    _, _, a, c = run(lifted, feed)
    h = np.maximum(feed["x"], 0)
    want_a, want_c = [], []
    for _ in range(STEPS):
        want_a.append(h @ W1)
        want_c.append(np.tanh(want_a[-1]) @ W2)
        h = np.tanh(want_c[-1])
    np.testing.assert_allclose(a, np.stack(want_a), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(c, np.stack(want_c), rtol=1e-5, atol=1e-6)


def test_layer_error_of_a_body_layer_is_over_all_iterations():
    reference, bad = graphc.load(loop_model()), corrupted(loop_model(), "W2", 1.2)
    feeds = feeds_loop()
    errors = layer_errors(reference, bad, feeds)
    assert set(errors) == {"loop/body/step.first", "loop/body/step.second"}
    ref_c = np.concatenate([run(with_outputs(reference, ["c"]), f)[-1] for f in feeds])
    bad_c = np.concatenate([run(with_outputs(bad, ["c"]), f)[-1] for f in feeds])
    assert ref_c.shape == (len(feeds) * STEPS, 1, HIDDEN)
    assert errors["loop/body/step.second"].sqnr_db == pytest.approx(sqnr_db(ref_c, bad_c), rel=1e-6)
    assert errors["loop/body/step.first"].sqnr_db > errors["loop/body/step.second"].sqnr_db


def growing_loop_model() -> onnx.ModelProto:
    """A Loop whose carried state grows by one row per iteration: its body tensors have another
    shape in every iteration, so they cannot be stacked (lifted) out."""
    f = TensorProto.FLOAT
    body = helper.make_graph(
        [helper.make_node("Mul", ["s", "w"], ["t"], name="grow.scale"),
         helper.make_node("Concat", ["t", "row"], ["s_next"], name="grow.concat", axis=0),
         helper.make_node("Identity", ["cond"], ["cond_out"], name="grow.cond")],
        "grow_body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond", TensorProto.BOOL, []),
         helper.make_tensor_value_info("s", f, [None, 3])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("s_next", f, [None, 3])])
    graph = helper.make_graph(
        [helper.make_node("Loop", ["steps", "", "x"], ["s_final"], name="grow", body=body),
         helper.make_node("Relu", ["s_final"], ["y"], name="post")],
        "growing", [helper.make_tensor_value_info("x", f, [1, 3])],
        [helper.make_tensor_value_info("y", f, [None, 3])],
        [numpy_helper.from_array(np.array(3, np.int64), "steps"),
         numpy_helper.from_array(np.full((1, 3), 1.5, np.float32), "w"),
         numpy_helper.from_array(np.ones((1, 3), np.float32), "row")])
    return make_model(graph, opset=16)


def test_body_that_cannot_be_lifted_stops_at_its_loop_with_a_note():
    reference, bad = graphc.load(growing_loop_model()), corrupted(growing_loop_model(), "w")
    feeds = [{"x": np.full((1, 3), v, np.float32)} for v in (0.5, 2.0)]
    found = localize_divergence(reference, bad, feeds, Tolerances())
    assert found.candidate_node == "Loop 'grow'"
    assert "inside the Loop's body: not localized further (its body could not be lifted out)" in found.note


def test_cli_verify_localize_names_the_body_node_and_its_iteration(tmp_path, capsys):
    # spox_loop's state starts at zero, so its recurrent weight rnn.U shows from iteration 1 on
    corpus = Path(__file__).resolve().parents[1] / "models" / "corpus"
    model = graphc.load(corpus / "spox_loop.onnx")
    weight = next(t for _, g in walk_graphs(model.graph) for t in g.tensors().values() if t.name == "rnn.U")
    weight.values = weight.values * np.float32(1.05)
    bad = graphc.save(model, tmp_path / "bad.onnx")
    code, out, err = cli(capsys, "verify", corpus / "spox_loop.onnx", bad, "--data", corpus / "spox_loop.npz",
                         "--localize")
    assert code == 1, err
    assert "    candidate node: MatMul 'rnn/body/body.hu'" in out
    assert "    inside the body of rnn: first diverges in iteration 1 (of 16)" in out
