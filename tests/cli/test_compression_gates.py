"""The verify gates on composed lossy compression pipelines (#20): prune, sparsify and cluster in one
pipeline, and fp16 after canonicalize/fold-bn, each with --data/--eval-data. A tolerance the result
meets exits 0 and writes a valid model; one it cannot meet exits 1, writes no model (the input is left
as it was) and the report says which gate failed and by how much."""
from __future__ import annotations

import hashlib
import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import graphc
from graphc.cli import main
from graphc.ir.codebook import read_codebook
from support import sqnr_over

COMPOSED = "prune{flops=0.7},sparsify{sparsity=0.5},cluster{bits=4}"
FP16 = "canonicalize,fold-bn,fp16"


def _net() -> onnx.ModelProto:
    """x (1, 3, 12, 12) -> Conv 3->64, BN, Relu -> Conv 64->32, Relu -> GAP -> Gemm 32->10."""
    rng = np.random.default_rng(0)

    def init(name, *shape, scale=0.3):
        return numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(np.float32), name)

    inits = [init("w1", 64, 3, 3, 3), init("b1", 64, scale=0.1), init("w2", 32, 64, 3, 3, scale=0.08),
             init("b2", 32, scale=0.1), init("wf", 10, 32), init("bf", 10, scale=0.1),
             numpy_helper.from_array((1 + 0.2 * rng.standard_normal(64)).astype(np.float32), "g"),
             numpy_helper.from_array((0.1 * rng.standard_normal(64)).astype(np.float32), "beta"),
             numpy_helper.from_array((0.1 * rng.standard_normal(64)).astype(np.float32), "mean"),
             numpy_helper.from_array((0.5 + rng.random(64)).astype(np.float32), "var")]
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="c1", pads=[1, 1, 1, 1]),
             helper.make_node("BatchNormalization", ["c1", "g", "beta", "mean", "var"], ["n1"], name="bn1"),
             helper.make_node("Relu", ["n1"], ["r1"], name="relu1"),
             helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], name="c2", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
             helper.make_node("GlobalAveragePool", ["r2"], ["p"], name="gap"),
             helper.make_node("Flatten", ["p"], ["f"], name="flatten"),
             helper.make_node("Gemm", ["f", "wf", "bf"], ["y"], name="fc", transB=1)]
    graph = helper.make_graph(nodes, "small_cnn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 12, 12])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.fixture
def files(tmp_path):
    model = tmp_path / "net.onnx"
    model.write_bytes(_net().SerializeToString())
    rng = np.random.default_rng(1)
    calib, held = tmp_path / "calib.npz", tmp_path / "eval.npz"
    np.savez(calib, x=rng.standard_normal((16, 1, 3, 12, 12)).astype(np.float32))
    np.savez(held, x=rng.standard_normal((8, 1, 3, 12, 12)).astype(np.float32))
    out = tmp_path / "out"
    out.mkdir()
    return model, calib, held, out


def _opt(capsys, files, pipeline, *gate):
    model, calib, held, out = files
    result, report = out / "m.onnx", out / "r.json"
    code = main(["opt", str(model), "-p", pipeline, "-o", str(result), "--data", str(calib),
                 "--eval-data", str(held), "--verify", "--report", str(report), *map(str, gate)])
    text, err = capsys.readouterr()
    return code, result, json.loads(report.read_text()), text, err


def _digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _held_sqnr(files, result):
    model, _, held, _ = files
    x = np.load(held)["x"]
    return sqnr_over(onnx.load(str(model)), onnx.load(str(result)), [{"x": xi} for xi in x])


def test_composed_prune_sparsify_cluster_passes_a_tolerance_it_meets(capsys, files):
    before = _digest(files[0])
    code, result, report, text, err = _opt(capsys, files, COMPOSED, "--min-sqnr", "12")
    assert code == 0 and err == "" and result.is_file() and "result: PASS" in text
    onnx.checker.check_model(str(result), full_check=True)
    assert [p["name"] for p in report["passes"]][-3:] == ["prune", "sparsify", "cluster"]
    saved = onnx.load(str(result))
    assert [n.op_type for n in saved.graph.node].count("Gather") == 3  # every layer decoded from a codebook
    layers = {n.name: read_codebook(n.inputs[1]) for n in graphc.load(result).graph.nodes if n.op in ("Conv", "Gemm")}
    assert all(book is not None and book.codebook.size <= 16 for book in layers.values())
    assert layers["c2"].packed and not layers["fc"].packed  # 9216 indices packed, 320 (< 1024) as uint8
    assert layers["c1"].indices.shape == (32, 3, 3, 3) and layers["c2"].indices.shape == (32, 32, 3, 3)  # 64 -> 32
    stats = {p["name"]: p["stats"] for p in report["passes"]}
    assert stats["sparsify"]["sparsified"] == 3 and stats["cluster"]["clustered"] == 3
    sqnr = next(g for g in report["gates"] if g["name"] == "min_sqnr")
    assert sqnr["passed"] and sqnr["value"] >= 12
    assert sqnr["value"] == pytest.approx(_held_sqnr(files, result), abs=0.05)  # measured on --eval-data
    assert _digest(files[0]) == before


def test_composed_pipeline_fails_a_tolerance_it_cannot_meet_and_writes_nothing(capsys, files):
    before = _digest(files[0])
    code, result, report, text, err = _opt(capsys, files, COMPOSED, "--min-sqnr", "60")
    assert code == 1 and err == ""
    assert not result.exists() and sorted(p.name for p in files[3].iterdir()) == ["r.json"]
    sqnr = next(g for g in report["gates"] if g["name"] == "min_sqnr")
    assert not sqnr["passed"] and sqnr["value"] < 60 and sqnr["detail"] == "worst output 'y'"
    assert report["passed"] is False and report["output_written"] is False
    assert "min SQNR" in text and "FAIL" in text and "not written" in text
    assert _digest(files[0]) == before


def test_fp16_after_canonicalize_and_fold_bn_meets_40_db_and_fails_200(capsys, files):
    code, result, report, text, _ = _opt(capsys, files, FP16, "--min-sqnr", "40")
    assert code == 0 and result.is_file(), text
    onnx.checker.check_model(str(result), full_check=True)
    saved = onnx.load(str(result))
    assert "BatchNormalization" not in [n.op_type for n in saved.graph.node]
    weights = {i.name: i.data_type for i in saved.graph.initializer}
    assert weights and TensorProto.FLOAT16 in weights.values()
    assert _held_sqnr(files, result) >= 40
    result.unlink()
    code, result, report, text, _ = _opt(capsys, files, FP16, "--min-sqnr", "200")
    assert code == 1 and not result.exists()
    sqnr = next(g for g in report["gates"] if g["name"] == "min_sqnr")
    assert not sqnr["passed"] and 40 <= sqnr["value"] < 200
    assert report["output_written"] is False and "not written" in text
