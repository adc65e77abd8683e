"""--metric MODULE:FUNCTION and its gates (--min-metric, --max-metric-drop): the user's callable
scores both models on the evaluation data; a bad spec or a failing metric is one line, exit 2."""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from report_passes import write_labelled_data, write_net
from support import cli, run


pytestmark = pytest.mark.usefixtures("report_passes_registered")


def gate(report, name):
    return next(g for g in report["gates"] if g["name"] == name)


def _bias_class() -> int:
    from tiny_nets import _weights

    return int(np.argmax(_weights()["bfc"]))


def test_metric_with_labels_gates_the_drop(capsys, tmp_path):
    net, data = write_net(tmp_path), write_labelled_data(tmp_path)
    labels = np.load(data)["labels"]
    out, report = tmp_path / "x.onnx", tmp_path / "r.json"
    # fc's weight zeroed: every prediction becomes argmax(bias)
    code, text, err = cli(capsys, "opt", net, "-p", "test-scale{node=fc factor=0.0}", "-o", out,
                          "--eval-data", data, "--metric", "user_metrics:agreement", "--max-metric-drop", "0.05",
                          "--min-metric", "0.9", "--report", report)
    r = json.loads(report.read_text())
    expected = float(np.mean(labels == _bias_class()))
    assert code == 1 and err == "" and not out.exists()
    assert r["metric"] == {"metric": "user_metrics:agreement", "samples": 16, "reference": 1.0,
                           "candidate": pytest.approx(expected), "higher_is_better": True,
                           "drop": pytest.approx(1.0 - expected)}
    drop, least = gate(r, "max_metric_drop"), gate(r, "min_metric")
    assert not drop["passed"] and drop["value"] == pytest.approx(1.0 - expected)
    assert not least["passed"] and least["value"] == pytest.approx(expected) and least["label"] == "min metric"
    assert "user_metrics:agreement (higher is better)" in text and "max metric drop" in text
    code, _, _ = cli(capsys, "opt", net, "-p", "test-scale{node=c1 factor=1.0}", "-o", out, "--eval-data", data,
                     "--metric", "user_metrics:agreement", "--max-metric-drop", "0.0", "--min-metric", "1.0")
    assert code == 0 and out.is_file()


def test_lower_is_better_metric_with_arguments_and_no_labels(capsys, tmp_path):
    net = write_net(tmp_path)
    x = np.random.default_rng(1).standard_normal((3, 1, 3, 8, 8)).astype(np.float32)
    np.savez(tmp_path / "eval.npz", x=x)
    out, report = tmp_path / "x.onnx", tmp_path / "r.json"
    args = ["opt", net, "-p", "test-scale{node=fc factor=0.5}", "-o", out, "--eval-data", tmp_path / "eval.npz",
            "--metric", "user_metrics:mean_abs_error", "--metric-arg", "scale=10", "--report", report]
    code, _, _ = cli(capsys, *args, "--min-metric", "1e-9")
    r = json.loads(report.read_text())
    reference = [run(onnx.load(net), {"x": xi})[0] for xi in x]
    got = r["metric"]
    # the reference against itself scores 0; lower is better, so the drop is the candidate's score
    assert got["reference"] == 0.0 and got["higher_is_better"] is False and got["samples"] == 3
    assert got["drop"] == pytest.approx(got["candidate"]) and got["candidate"] > 0
    bound = gate(r, "min_metric")
    assert code == 1 and not bound["passed"] and bound["label"] == "max metric" and not out.exists()
    code, _, _ = cli(capsys, *args, "--min-metric", str(got["candidate"] * 1.01), "--keep-failed")
    assert code == 0 and out.is_file()
    candidate = [run(onnx.load(out), {"x": xi})[0] for xi in x]
    by_hand = 10 * np.mean(np.abs(np.stack(reference) - np.stack(candidate)))
    assert got["candidate"] == pytest.approx(by_hand, rel=1e-5)


@pytest.mark.parametrize("spec, extra, message", [
    ("no_such_module_xyz:f", [], "metric 'no_such_module_xyz:f': cannot import no_such_module_xyz"),
    ("user_metrics", [], "metric 'user_metrics': expected package.module:function"),
    ("user_metrics:missing", [], "metric 'user_metrics:missing': user_metrics has no 'missing'"),
    ("user_metrics:not_callable", [], "metric 'user_metrics:not_callable': not_callable is a int, not callable"),
    ("user_metrics:agreement", ["--metric-arg", "oops"], "argument 'oops' is not KEY=VALUE"),
    ("user_metrics:raises", [], "metric user_metrics:raises raised KeyError: \"no output 'logits'"),
    ("user_metrics:returns_nan", [], "metric user_metrics:returns_nan returned nan, not a finite number"),
    ("user_metrics:returns_text", [], "metric user_metrics:returns_text returned str, not a number"),
    ("user_metrics:agreement", ["--metric-arg", "colour=red"], "raised TypeError"),
])
def test_a_bad_metric_is_one_line_and_exit_2(capsys, tmp_path, spec, extra, message):
    net, data = write_net(tmp_path), write_labelled_data(tmp_path)
    before = net.read_bytes()
    out = tmp_path / "x.onnx"
    code, text, err = cli(capsys, "opt", net, "-p", "cleanup", "-o", out, "--eval-data", data,
                          "--metric", spec, *extra, "--max-metric-drop", "0.1")
    assert code == 2 and err.startswith("graphc: error: ") and message in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not out.exists() and net.read_bytes() == before


def test_metric_gates_need_a_metric(capsys, tmp_path):
    net = write_net(tmp_path)
    code, _, err = cli(capsys, "opt", net, "-p", "cleanup", "-o", tmp_path / "x.onnx", "--max-metric-drop", "0.1")
    assert code == 2 and "--max-metric-drop need --metric" in err


def test_quant_metric_budget_measures_on_the_eval_data(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("GRAPHC_CACHE_DIR", str(tmp_path / "cache"))
    net = write_net(tmp_path)
    rng = np.random.default_rng(3)
    np.savez(tmp_path / "calib.npz", x=rng.standard_normal((4, 1, 3, 8, 8)).astype(np.float32))
    np.savez(tmp_path / "eval.npz", x=rng.standard_normal((10, 1, 3, 8, 8)).astype(np.float32))
    out, report = tmp_path / "x.onnx", tmp_path / "r.json"
    args = ["opt", net, "-p", "quant{placement=all max-metric-drop=1}", "-o", out, "--data", tmp_path / "calib.npz",
            "--metric", "user_metrics:argmax_error", "--metric-arg", "output=probs", "--report", report]
    code, _, err = cli(capsys, *args, "--eval-data", tmp_path / "eval.npz")
    assert code == 0, err
    stats = next(p["stats"] for p in json.loads(report.read_text())["passes"] if p["name"] == "quant")
    assert stats["budget_metric_data"] == "evaluation" and stats["budget_metric_samples"] == 10
    assert stats["budget_metric_confidence"] == 0.95 and "budget_metric_drop_bound" in stats
    code, _, err = cli(capsys, *args)
    stats = next(p["stats"] for p in json.loads(report.read_text())["passes"] if p["name"] == "quant")
    assert code == 0 and stats["budget_metric_data"] == "calibration" and stats["budget_metric_samples"] == 4
