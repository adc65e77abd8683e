"""--verify's exact tolerance is measured: each output's atol is NOISE_FACTOR times the
reference's own spread between onnxruntime's ORT_DISABLE_ALL and ORT_ENABLE_ALL on the same
data, never below 1e-6 (rtol stays 1e-5), printed with the verdict. graphc's own exact pipelines
pass on PP-OCR; one changed weight still fails, on PP-OCR and on a tiny model."""
from __future__ import annotations

import sys

import numpy as np
import pytest

import graphc
from graphc.calib.data import open_data
from graphc.cli import main
from graphc.verify import Tolerances, compare_models
from graphc.verify.noise import measure_noise, widened
from graphc.verify.tolerances import NOISE_FACTOR
from support import ROOT, ppocr_model
from tiny_nets import conv_net

EXACT = "canonicalize,fold-constants,cleanup"


def _tiny_feeds(n=4):
    rng = np.random.default_rng(0)
    return [{"x": rng.standard_normal((1, 3, 8, 8)).astype(np.float32)} for _ in range(n)]


def _one_weight_changed(model, conv_index, factor):
    """A copy of ``model`` with the largest weight of its ``conv_index``-th Conv times ``factor``."""
    changed = model.copy()
    conv = [n for n in changed.graph.nodes if n.op == "Conv"][conv_index]
    w = conv.inputs[1].values.copy()
    flat = w.reshape(-1)
    flat[int(np.argmax(np.abs(flat)))] *= np.float32(factor)
    conv.inputs[1].values = w
    return changed


def test_defaults_measure_and_explicit_tolerances_do_not():
    assert Tolerances.from_options().measures_noise and Tolerances.from_options().noise_factor == NOISE_FACTOR
    assert not Tolerances.from_options(atol=1e-6).measures_noise
    assert not Tolerances.from_options(min_sqnr=30.0).measures_noise  # lossy: thresholds decide
    assert not Tolerances().measures_noise                            # the API default is fixed
    tol = Tolerances.from_options()
    assert widened(tol, 0.0).atol == 1e-6 and widened(tol, 1e-9).atol == 1e-6  # never below the floor
    assert widened(tol, 1e-5).atol == pytest.approx(NOISE_FACTOR * 1e-5) and widened(tol, 1e-5).rtol == 1e-5


def test_tiny_model_one_changed_weight_fails():
    model = graphc.load(conv_net())
    noise = measure_noise(model, [t.name for t in model.graph.outputs], _tiny_feeds())
    assert set(noise) == {"probs"} and NOISE_FACTOR * noise["probs"] < 1e-6  # the floor applies
    same = compare_models(model, model.copy(), data=_tiny_feeds(), tolerances=Tolerances.from_options())
    assert same.passed and any(n.startswith("atol measured: max(1e-06, 4 x") for n in same.notes)
    assert "atol=max(1e-06, 4 x ORT noise)" in same.summary()
    changed = _one_weight_changed(model, 1, 1.001)
    report = compare_models(model, changed, data=_tiny_feeds(), tolerances=Tolerances.from_options())
    assert not report.passed, report.summary()


def _rendered_npz(kind, tmp_path):
    if ppocr_model(kind) is None:
        pytest.skip("rapidocr-onnxruntime is not installed")
    if not (ROOT / "benchmarks" / "ppocr_data.py").is_file():
        pytest.skip("benchmarks/ppocr_data.py (the page renderer) is not in this checkout")
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import ppocr_data

    feeds = ppocr_data.feeds(kind, 4 if kind == "rec" else 1, seed=3, det_side=320)
    path = tmp_path / f"{kind}.npz"
    np.savez(path, x=np.concatenate([f["x"] for f in feeds]))
    return path


#: (model, Conv whose largest weight is scaled by 1.01): an early depthwise Conv in det (some of
#: det's later Convs feed nothing the output depends on), the middle Conv in rec.
CHANGED_CONV = {"det": 5, "rec": 19}


@pytest.mark.parametrize("kind", ["rec", "det"])
def test_ppocr_exact_pipeline_verifies_and_a_changed_weight_fails(kind, tmp_path, capsys):
    data = _rendered_npz(kind, tmp_path)
    out = tmp_path / "out.onnx"
    code = main(["opt", str(ppocr_model(kind)), "-p", EXACT, "--data", str(data), "--verify", "-o", str(out)])
    text = capsys.readouterr().out
    assert code == 0 and out.is_file(), text
    assert "verify: PASS" in text and "note: atol measured: max(1e-06, 4 x" in text
    result = graphc.load(out)
    changed = _one_weight_changed(result, CHANGED_CONV[kind], 1.01)
    report = compare_models(str(ppocr_model(kind)), changed, data=open_data(str(data), result),
                            tolerances=Tolerances.from_options())
    assert not report.passed, report.summary()
