"""graphc.verify: metrics, tolerances, compare_models and first-divergence localization."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import graphc
from graphc.errors import DataError, ModelError, VerificationError
from graphc.ir.outputs import computed_tensors, with_outputs
from graphc.verify import RunningMetrics, Tolerances, compare_models, shared_tensors
from graphc.verify.localize import SharedTensor, chunks
from graphc.metrics import cosine, max_abs_error, max_rel_error, sqnr_db, top1_agreement
from graphc.verify.tolerances import NOISE_FACTOR
from tiny_nets import conv_net, scaled

SHAPES = {"x": (1, 3, 8, 8)}


# -- metrics ---------------------------------------------------------------------------------------

def test_metrics_on_known_values():
    ref = np.array([1.0, 2.0, 3.0, 4.0], np.float32)
    got = np.array([1.0, 2.0, 3.0, 5.0], np.float32)
    assert sqnr_db(ref, got) == pytest.approx(10 * math.log10(30.0))
    assert cosine(ref, got) == pytest.approx(34.0 / math.sqrt(30.0 * 39.0))
    assert max_abs_error(ref, got) == 1.0
    assert max_rel_error(ref, got) == pytest.approx(0.25)
    assert sqnr_db(ref, ref) == math.inf
    assert cosine(np.zeros(3), np.zeros(3)) == 1.0 and cosine(np.zeros(3), np.ones(3)) == 0.0
    scores = np.array([[0.1, 0.9], [0.8, 0.2]])
    assert top1_agreement(scores, np.array([[0.2, 0.8], [0.1, 0.9]])) == 0.5


def test_running_metrics_equal_metrics_of_concatenated_samples():
    rng = np.random.default_rng(1)
    refs = [rng.standard_normal((2, 7)).astype(np.float32) for _ in range(3)]
    gots = [r + rng.standard_normal(r.shape).astype(np.float32) * 0.1 for r in refs]
    running = RunningMetrics("y")
    for r, g in zip(refs, gots):
        running.update(r, g)
    m = running.result()
    ref_all, got_all = np.concatenate(refs), np.concatenate(gots)
    assert m.samples == 3 and m.elements == 42
    assert m.sqnr_db == pytest.approx(sqnr_db(ref_all, got_all))
    assert m.cosine == pytest.approx(cosine(ref_all, got_all))
    assert m.max_abs == pytest.approx(max_abs_error(ref_all, got_all))
    assert m.max_rel == pytest.approx(max_rel_error(ref_all, got_all))
    assert m.top1 == pytest.approx(top1_agreement(ref_all, got_all))
    assert not m.passed and "elements outside" in m.failures[0]


def test_nonfinite_values_match_only_themselves():
    running = RunningMetrics("y")
    running.update(np.array([np.nan, 1.0, np.inf]), np.array([np.nan, 1.0, np.inf]))
    assert running.result().passed
    running.update(np.array([np.nan, 1.0, 2.0]), np.array([0.0, 1.0, 2.0]))
    result = running.result()
    assert result.nonfinite == 1 and not result.passed


def test_shape_mismatch_fails_with_reason():
    running = RunningMetrics("y")
    running.update(np.zeros((1, 4)), np.zeros((1, 5)))
    result = running.result()
    assert not result.passed and "shape (1, 5)" in result.failures[0]


def test_top1_only_for_class_like_outputs():
    running = RunningMetrics("y")
    running.update(np.ones((4,), np.float32), np.ones((4,), np.float32))
    assert running.result().top1 is None
    maps = RunningMetrics("prob_map")  # a detector's [N, 1, H, W] map has no class axis
    maps.update(np.ones((1, 1, 4, 4), np.float32), np.ones((1, 1, 4, 4), np.float32))
    assert maps.result().top1 is None
    steps = RunningMetrics("ctc")  # a recognizer's [N, T, C] scores have one per step
    steps.update(np.eye(3, dtype=np.float32)[None], np.eye(3, dtype=np.float32)[None])
    assert steps.result().top1 == 1.0


# -- tolerances ------------------------------------------------------------------------------------

def test_tolerance_modes():
    assert Tolerances().elementwise
    lossy = Tolerances(min_sqnr=30.0)
    assert not lossy.elementwise and lossy.thresholds == {"min_sqnr": 30.0}
    assert Tolerances(min_sqnr=30.0, exact=True).elementwise
    inter = Tolerances(min_sqnr=30.0, min_top1=0.9).for_intermediates()
    assert inter.min_top1 is None and inter.min_sqnr == 30.0 and not inter.elementwise
    assert Tolerances().to_dict()["mode"] == "exact"
    assert Tolerances.from_options() == Tolerances(noise_factor=NOISE_FACTOR)  # atol measured (test_noise)
    assert Tolerances.from_options(min_sqnr=30.0) == Tolerances(min_sqnr=30.0)
    assert Tolerances.from_options(rtol=1e-3, min_sqnr=30.0).elementwise
    assert Tolerances.from_options(atol=0.5).atol == 0.5
    with pytest.raises(ValueError):
        Tolerances(rtol=-1.0)
    with pytest.raises(ValueError):
        Tolerances(min_cosine=2.0)


def test_lossy_mode_ignores_rtol_but_reports_it():
    ref = np.linspace(1, 2, 100, dtype=np.float32)
    got = ref * np.float32(1.001)
    lossy = RunningMetrics("y", tolerances=Tolerances(min_sqnr=40.0))
    lossy.update(ref, got)
    exact = RunningMetrics("y")
    exact.update(ref, got)
    assert lossy.result().passed and lossy.result().mismatched == 100
    assert not exact.result().passed


# -- compare_models --------------------------------------------------------------------------------

def test_identical_models_pass_and_report_is_strict_json(tmp_path):
    path = tmp_path / "net.onnx"
    path.write_bytes(conv_net().SerializeToString())
    report = compare_models(path, path.read_bytes(), samples=3)
    assert report.passed and report.samples == 3 and report.matched_by == "name"
    assert [o.name for o in report.outputs] == ["probs"]
    assert report.outputs[0].sqnr_db == math.inf and report.outputs[0].top1 == 1.0
    data = json.loads(json.dumps(report.to_dict(), allow_nan=False))
    assert data["outputs"][0]["sqnr_db"] == "inf" and data["tolerances"]["mode"] == "exact"
    summary = report.summary()
    assert summary.startswith("PASS") and "\n" not in summary
    assert report.localization is None


def test_corrupted_weight_fails_and_is_localized():
    reference = graphc.load(conv_net())
    candidate = graphc.load(scaled(conv_net(), "w2", 1.5))
    report = compare_models(reference, candidate, localize=True, samples=2)
    assert not report.passed and report.summary().startswith("FAIL")
    loc = report.localization
    assert loc.tensor == "c2" and loc.candidate_node == "Conv 'c2'" and loc.reference_node == "Conv 'c2'"
    assert loc.compared == 3  # c1, r1 pass; c2 fails; nothing after it is run
    assert "first divergence at tensor 'c2'" in report.summary()


def test_localization_across_vanished_names():
    """Cleanup removes the Identity nodes: their output tensors (c1, c2) vanish from the
    candidate; localization skips them and still names the corrupted Conv."""
    reference = graphc.load(conv_net(identities=True))
    candidate = graphc.load(scaled(conv_net(identities=True), "w2", 0.5))
    graphc.PassManager("cleanup").run(candidate)
    remaining = {t.name for t in computed_tensors(candidate)}
    assert "c2" not in remaining and "c1" not in remaining
    report = compare_models(reference, candidate, localize=True, samples=2)
    loc = report.localization
    assert loc.tensor == "c2.raw" and loc.candidate_node == "Conv 'c2'" and loc.reference_node == "Conv 'c2'"
    assert loc.shared == len(remaining) == len(computed_tensors(reference)) - 2


def test_localization_in_chunks_of_one_gives_the_same_answer():
    reference = graphc.load(conv_net())
    candidate = graphc.load(scaled(conv_net(), "wfc", 2.0))
    report = compare_models(reference, candidate, localize=True, chunk_size=1, samples=2)
    assert report.localization.tensor == "fc" and report.localization.candidate_node == "Gemm 'fc'"


def test_chunks_respect_count_and_bytes():
    nodes = [object()] * 5
    tensors = [SharedTensor(f"t{i}", nodes[i], nodes[i], 100) for i in range(5)]
    assert [len(c) for c in chunks(tensors, 2, 10_000)] == [2, 2, 1]
    assert [len(c) for c in chunks(tensors, 10, 250)] == [2, 2, 1]
    assert [len(c) for c in chunks(tensors, 10, 50)] == [1, 1, 1, 1, 1]  # a tensor never waits


def test_float_against_qdq_model():
    """QDQ insertion keeps the float tensor names: outputs are judged by SQNR, and an absurd
    SQNR budget localizes to the first quantized Conv."""
    reference, candidate = conv_net(), conv_net(qdq=True)
    ok = compare_models(reference, candidate, tolerances=Tolerances(min_sqnr=20.0, min_top1=0.5))
    assert ok.passed and not compare_models(reference, candidate).passed
    names = {t.name for t in shared_tensors(graphc.load(reference), graphc.load(candidate))}
    assert "x_dq" not in names and {"c1", "r1", "probs"} <= names
    strict = compare_models(reference, candidate, tolerances=Tolerances(min_sqnr=200.0), localize=True)
    assert not strict.passed and strict.localization.candidate_node == "Conv 'c1'"


def test_localization_needs_a_budget_for_intermediates():
    report = compare_models(conv_net(), scaled(conv_net(), "wfc", -1.0), localize=True, samples=2,
                            tolerances=Tolerances(min_top1=1.0))
    assert not report.passed
    assert report.localization.tensor is None and "min_sqnr" in report.localization.note


def test_tensors_whose_shape_changed_are_skipped():
    """A candidate with more channels in c1 (same names): c1, r1 are not comparable, the first
    comparable tensor that differs is the output of c2."""
    proto = conv_net()
    wider = scaled(proto, "w2", 1.0)
    rng = np.random.default_rng(3)
    for init in wider.graph.initializer:
        if init.name in ("w1", "b1", "w2"):
            shape = {"w1": (6, 3, 3, 3), "b1": (6,), "w2": (6, 6, 3, 3)}[init.name]
            init.CopyFrom(numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), init.name))
    report = compare_models(proto, wider, localize=True, samples=2)
    shared = {t.name for t in shared_tensors(graphc.load(proto), graphc.load(wider), SHAPES)}
    assert "c1" not in shared and "c2" in shared
    assert report.localization.tensor == "c2"


def test_outputs_matched_by_position_when_names_differ():
    candidate = conv_net()
    candidate.graph.node[-1].output[0] = "scores"
    candidate.graph.output[0].name = "scores"
    report = compare_models(conv_net(), candidate, samples=2)
    assert report.passed and report.matched_by == "position" and report.notes
    assert report.outputs[0].candidate_name == "scores"


def test_output_count_mismatch_is_a_verification_error():
    candidate = conv_net()
    candidate.graph.node[-1].output[0] = "other"
    candidate.graph.output[0].name = "other"
    candidate.graph.output.append(helper.make_tensor_value_info("fc", TensorProto.FLOAT, [1, 5]))
    with pytest.raises(VerificationError, match="do not match"):
        compare_models(conv_net(), candidate)


def test_dynamic_inputs_take_given_or_nominal_shapes(tmp_path):
    dynamic = conv_net(batch="N", spatial="S")
    nominal = compare_models(dynamic, dynamic, samples=1)  # batch 1, side 224, said in the data line
    assert nominal.passed and "at a nominal shape (x:1x3x224x224" in nominal.data
    assert compare_models(dynamic, dynamic, input_shapes={"x": (2, 3, 5, 5)}, samples=1).passed
    with pytest.raises(DataError, match="rank 4"):
        compare_models(dynamic, dynamic, input_shapes={"x": (2, 3)})
    with pytest.raises(DataError, match="model's inputs are: x"):
        compare_models(dynamic, dynamic, input_shapes={"y": (2, 3, 5, 5)})
    npz = tmp_path / "data.npz"
    np.savez(npz, x=np.random.default_rng(0).standard_normal((5, 1, 3, 6, 6)).astype(np.float32))
    report = compare_models(dynamic, dynamic, data=npz, samples=3)
    assert report.passed and report.samples == 3


def test_candidate_without_an_unused_input_is_fed_what_it_declares():
    reference = graphc.load(conv_net(unused_input=True))
    candidate = graphc.load(conv_net(unused_input=True))
    graphc.PassManager("cleanup").run(candidate)
    assert len(candidate.graph.inputs) == 1
    assert compare_models(reference, candidate, samples=2).passed


def test_model_runtime_cannot_load_is_a_model_error():
    from tiny_nets import custom_domain_net

    with pytest.raises(ModelError, match="onnxruntime cannot load the reference"):
        compare_models(custom_domain_net(), custom_domain_net())


def test_with_outputs_copies_and_validates():
    model = graphc.load(conv_net())
    exposed = with_outputs(model, ["c1", "probs", "r2"])
    assert [t.name for t in exposed.graph.outputs] == ["probs", "c1", "r2"]
    assert [t.name for t in model.graph.outputs] == ["probs"]
    with pytest.raises(ModelError, match="not computed"):
        with_outputs(model, ["w1"])


@pytest.mark.real
def test_localizes_corrupted_conv_in_ppocr_cls():
    from support import PPOCR_SHAPES, ppocr_model, scale_middle_conv

    path = ppocr_model("cls")
    if path is None:
        pytest.skip("rapidocr-onnxruntime is not installed")
    candidate = graphc.load(path)
    target = scale_middle_conv(candidate)
    report = compare_models(path, candidate, input_shapes={"x": PPOCR_SHAPES["cls"]}, samples=2,
                            localize=True, tolerances=Tolerances(min_sqnr=40.0))
    assert not report.passed
    assert report.localization.candidate_node == f"Conv '{target.name}'"
    assert report.localization.metrics.sqnr_db == pytest.approx(20 * math.log10(2), abs=0.01)
