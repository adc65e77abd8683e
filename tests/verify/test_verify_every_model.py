"""#18's bar for `--verify`, over every model the repository ships: an exact pipeline verifies on
each model of models/ and models/sequence/ (the exporter corpus runs every exact pipeline in
tests/models/test_exporter_corpus.py, PP-OCR in test_noise.py), and on every one of those models
and every corpus model, one corrupted weight still fails `graphc verify`.

The corruption is multiplicative noise of 5% on the largest float weight of a Conv, ConvTranspose,
Gemm or MatMul (in any body): noise, not a scale, so a normalization after the layer cannot undo it.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import graphc
from graphc.cli import main
from graphc.ir import walk_graphs
from support import MODELS

CORPUS = Path(__file__).resolve().parents[1] / "models" / "corpus"
EXACT = "fold-bn,canonicalize,fold-constants,cleanup"
ZOO = sorted(MODELS.glob("*.onnx")) + sorted((MODELS / "sequence").glob("*.onnx"))
EVERY = ZOO + sorted(CORPUS.glob("*.onnx"))
WEIGHTED = ("Conv", "ConvTranspose", "Gemm", "MatMul")
#: models whose data file has another name than the model's (None: seeded random feeds).
DATA = {"resnet_digits": "digits_calib.npz", "mobilenetv2_digits": "digits_calib.npz",
        "transformer_digits": "digits_calib.npz", "transformer_digits_opset13": "digits_calib.npz",
        "crnn_lines": "sequence/crnn_lines_calib.npz", "tf2onnx_digits": "sequence/tf2onnx_digits_calib.npz"}


def data_args(path: Path) -> list[str]:
    if path.parent == CORPUS:
        return ["--data", str(path.with_suffix(".npz")), "--samples", "4"]
    name = DATA.get(path.stem)
    return ["--data", str(MODELS / name), "--samples", "4"] if name else []


def ids(paths: list[Path]) -> list[str]:
    return [p.stem for p in paths]


@pytest.mark.parametrize("path", ZOO, ids=ids(ZOO))
def test_exact_pipeline_verifies(capsys, tmp_path, path):
    out = tmp_path / "out.onnx"
    code = main(["opt", str(path), "-p", EXACT, *data_args(path), "--verify", "-q", "-o", str(out)])
    assert code == 0, capsys.readouterr().err
    assert main(["verify", str(path), str(out), *data_args(path), "-q"]) == 0, capsys.readouterr().err


def corrupted(path: Path, tmp_path: Path) -> tuple[Path, str]:
    """A copy of the model at ``path`` with noise on its largest layer weight, and that weight's name."""
    model = graphc.load(path)
    weights = [n.inputs[1] for _, g in walk_graphs(model.graph) for n in g.nodes
               if n.op in WEIGHTED and len(n.inputs) > 1 and hasattr(n.inputs[1], "values")
               and np.issubdtype(n.inputs[1].values.dtype, np.floating)]
    assert weights, f"{path.name} has no constant layer weight to corrupt"
    weight = max(weights, key=lambda w: w.values.size)
    noise = np.random.default_rng(0).standard_normal(weight.values.shape).astype(weight.values.dtype)
    weight.values = weight.values * (1 + np.float32(0.05) * noise)
    return graphc.save(model, tmp_path / "bad.onnx"), weight.name


@pytest.mark.parametrize("path", EVERY, ids=ids(EVERY))
def test_corrupted_weight_fails_verify(capsys, tmp_path, path):
    bad, weight = corrupted(path, tmp_path)
    code = main(["verify", str(path), str(bad), *data_args(path)])
    out, err = capsys.readouterr()
    assert code == 1, f"noise on '{weight}' passed: {out}{err}"
    assert "FAIL" in out
