"""One test per CLI flag that no other test exercised, each of which fails if the flag stops
working: --version, inspect's --top and --attention, opt's --histogram, --no-layer-errors,
--bench-threads, --quiet and --verbose, --labels (verify and opt) and --seed (verify and opt).

The expected values come from outside graphc where one exists: the package metadata's version,
accuracies computed here from onnxruntime's outputs and the label file, random inputs compared
for different seeds, the head count and head dimension read from the model's attention Reshape.
"""
from __future__ import annotations

import importlib.metadata
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

import graphc
from graphc.cli import main
from support import MODELS, cli, run, scale_middle_conv

RESNET = MODELS / "resnet_digits.onnx"
TRANSFORMER = MODELS / "transformer_digits.onnx"
CALIB = MODELS / "digits_calib.npz"
TEST = MODELS / "digits_test.npz"


def test_version(capsys):
    code, out, _ = cli(capsys, "--version")
    assert code == 0 and out.strip() == f"graphc {importlib.metadata.version('graphc')}"


def test_inspect_top_lists_that_many_heaviest_nodes(capsys):
    tops = {}
    for n in (1, 4):
        code, out, _ = cli(capsys, "inspect", RESNET, "--json", "--top", n)
        assert code == 0
        tops[n] = json.loads(out)["top_macs"]
    assert len(tops[1]) == 1 and len(tops[4]) == 4
    macs = [t["macs"] for t in tops[4]]
    assert macs == sorted(macs, reverse=True) and tops[1][0] == tops[4][0]


def _attention_shape() -> tuple[int, int]:
    """(heads, head dim) from the first attention Reshape's target shape in the model file."""
    proto = onnx.load(str(TRANSFORMER))
    inits = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    consts = {n.output[0]: numpy_helper.to_array(n.attribute[0].t) for n in proto.graph.node if n.op_type == "Constant"}
    node = next(n for n in proto.graph.node if n.op_type == "Reshape" and n.name.endswith("attn/Reshape"))
    target = {**inits, **consts}[node.input[1]]
    return int(target[-2]), int(target[-1])


def test_inspect_attention_heads_or_head_dims(capsys):
    heads, dim = _attention_shape()
    by_heads = cli(capsys, "inspect", TRANSFORMER, "--groups", "--attention", "heads")[1]
    by_dims = cli(capsys, "inspect", TRANSFORMER, "--groups", "--attention", "head-dims")[1]
    assert "attention pruned by heads" in by_heads and "attention pruned by head-dims" in by_dims
    # by heads: q, k and v share one group of `heads` channels; by head dims: q and k share one
    # group of `dim` channels (the dot product's axis) and v has its own
    assert f": {heads} channels, prunable" in by_heads and f": {dim} channels, prunable" not in by_heads
    assert f": {dim} channels, prunable" in by_dims


@pytest.fixture(scope="module")
def quant_reports(tmp_path_factory) -> dict[str, dict]:
    """opt resnet_digits with quant: once with defaults, once with --histogram (a calibrated tensor
    the default choice leaves out) and --no-layer-errors."""
    folder = tmp_path_factory.mktemp("flags")
    common = ["opt", RESNET, "-p", "fold-bn,quant{placement=all}", "--data", CALIB, "-q"]
    assert main([str(a) for a in common + ["-o", folder / "a.onnx", "--report", folder / "a.json"]]) == 0
    plain = json.loads((folder / "a.json").read_text())
    shown = {h["tensor"] for h in plain["histograms"]}
    calibrated = [d["tensor"] for p in plain["passes"] for d in p.get("details", []) if "range" in d]
    chosen = next(t for t in calibrated if t not in shown)
    assert main([str(a) for a in common + ["-o", folder / "b.onnx", "--report", folder / "b.json",
                                           "--histogram", chosen, "--no-layer-errors"]]) == 0
    return {"plain": plain, "flags": json.loads((folder / "b.json").read_text()), "chosen": chosen}


def test_histogram_plots_the_chosen_tensor(quant_reports):
    chosen = quant_reports["chosen"]
    assert chosen not in {h["tensor"] for h in quant_reports["plain"]["histograms"]}
    entries = [h for h in quant_reports["flags"]["histograms"] if h["tensor"] == chosen]
    assert entries and sum(entries[0]["counts"]) > 0


def test_no_layer_errors_leaves_the_per_layer_error_out(quant_reports):
    assert all(layer.get("sqnr_db") is not None for layer in quant_reports["plain"]["layers"]
               if layer["op"] == "Conv")
    assert all(layer.get("sqnr_db") is None for layer in quant_reports["flags"]["layers"])


def test_bench_threads_is_the_thread_count_measured(capsys, tmp_path):
    for threads in (1, 3):
        report = tmp_path / f"r{threads}.json"
        code, _, _ = cli(capsys, "opt", RESNET, "-p", "fold-bn", "-o", tmp_path / f"o{threads}.onnx", "--bench",
                         "--bench-threads", threads, "--bench-rounds", 2, "--bench-warmup", 0, "--report", report, "-q")
        assert code == 0
        assert json.loads(report.read_text())["latency"]["threads"] == threads


def test_quiet_prints_nothing_and_default_prints_the_report(capsys, tmp_path):
    code, out, err = cli(capsys, "opt", RESNET, "-p", "fold-bn", "-o", tmp_path / "a.onnx", "-q")
    assert code == 0 and out == "" and err == ""
    code, out, _ = cli(capsys, "opt", RESNET, "-p", "fold-bn", "-o", tmp_path / "b.onnx")
    assert code == 0 and "pipeline: fold-bn" in out and "conv_bn=15" in out


def test_verbose_logs_each_pass_at_info(capsys, tmp_path):
    code, _, err = cli(capsys, "opt", RESNET, "-p", "fold-bn,cleanup", "-o", tmp_path / "a.onnx", "-v")
    assert code == 0
    assert "INFO: fold-bn: modified" in err and "INFO: cleanup:" in err
    code, _, err = cli(capsys, "opt", RESNET, "-p", "fold-bn,cleanup", "-o", tmp_path / "b.onnx")
    assert code == 0 and "INFO" not in err


def _scaled(factor: float):
    model = graphc.load(RESNET)
    scale_middle_conv(model, factor)
    return model


def _accuracy(model_path: Path, x: np.ndarray, labels: np.ndarray) -> float:
    logits = run(graphc.load(model_path), {"input": x})[0]
    return float((logits.argmax(1) == labels).mean())


def test_verify_labels_give_both_models_accuracy(capsys, tmp_path):
    test = np.load(TEST)
    x, labels = test["input"][:64], test["labels"][:64]
    np.savez(tmp_path / "data.npz", input=x)
    wrong = (labels + 1) % 10
    np.savez(tmp_path / "labels.npz", right=labels, wrong=wrong)
    candidate = tmp_path / "cand.onnx"
    graphc.save(_scaled(1.3), candidate)
    for key, want in (("right", labels), ("wrong", wrong)):
        code, out, _ = cli(capsys, "verify", RESNET, candidate, "--data", tmp_path / "data.npz",
                           "--labels", f"{tmp_path / 'labels.npz'}:{key}", "--json", "--min-sqnr", -100)
        assert code == 0
        accuracy = json.loads(out)["accuracy"]
        assert accuracy["reference"] == pytest.approx(_accuracy(RESNET, x, want))
        assert accuracy["candidate"] == pytest.approx(_accuracy(candidate, x, want))
    assert _accuracy(RESNET, x, labels) > 0.9 and _accuracy(RESNET, x, wrong) < 0.2


def test_opt_labels_measure_the_task_accuracy(capsys, tmp_path):
    test = np.load(TEST)
    x, labels = test["input"][:64], test["labels"][:64]
    np.savez(tmp_path / "eval.npz", input=x)
    np.save(tmp_path / "labels.npy", labels)
    report = tmp_path / "r.json"
    code, _, _ = cli(capsys, "opt", RESNET, "-p", "fold-bn", "-o", tmp_path / "o.onnx", "--eval-data",
                     tmp_path / "eval.npz", "--labels", tmp_path / "labels.npy", "--report", report, "-q")
    assert code == 0
    accuracy = json.loads(report.read_text())["accuracy"]
    assert accuracy["samples"] == 64
    assert accuracy["reference"] == pytest.approx(_accuracy(RESNET, x, labels))


def test_verify_seed_chooses_the_random_inputs(capsys, tmp_path):
    candidate = tmp_path / "cand.onnx"
    graphc.save(_scaled(1.3), candidate)

    def sqnr(seed: int) -> float:
        code, out, _ = cli(capsys, "verify", RESNET, candidate, "--seed", seed, "--samples", 2, "--json",
                           "--min-sqnr", -100)
        assert code == 0
        return json.loads(out)["outputs"][0]["sqnr_db"]

    first, again, other = sqnr(1), sqnr(1), sqnr(2)
    assert first == again and first != other


def test_an_in_process_call_leaves_the_callers_logging_as_it_was(capsys):
    """``-q`` sets the graphc logger to ERROR for the command only: a build script (or a later test
    reading warnings) that calls main() in-process keeps its own level and handlers."""
    import logging

    logger = logging.getLogger("graphc")
    level, handlers = logger.level, list(logger.handlers)
    assert main(["inspect", str(MODELS / "resnet_digits.onnx"), "-q"]) == 0
    assert logger.level == level and logger.handlers == handlers
