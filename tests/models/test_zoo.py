"""Sanity checks for the committed reference model zoo in ``models/``.

Uses only onnx, onnxruntime and numpy (torch is a dev-only dependency used by
``models/build.py``).  Every ``models/*.onnx`` gets the generic checks; the
entries listed in ``EXPECTED`` additionally get structural / accuracy checks.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

MODELS = Path(__file__).resolve().parents[2] / "models"
ONNX_FILES = sorted(p.name for p in MODELS.glob("*.onnx"))

# file -> (has BatchNormalization, min digits accuracy or None, opset)
EXPECTED = {
    "resnet_digits.onnx": (True, 0.95, 13),
    "mobilenetv2_digits.onnx": (True, 0.93, 13),
    "densenet_fpn.onnx": (True, None, 13),
    "conv_gemm_head.onnx": (True, None, 13),
    "transformer_digits.onnx": (False, 0.90, 17),
    "transformer_digits_opset13.onnx": (False, 0.90, 13),
}
TRAINED = sorted(f for f, (_, acc, _) in EXPECTED.items() if acc is not None)
README_TOLERANCE = 0.005


def load(name: str) -> onnx.ModelProto:
    return onnx.load(str(MODELS / name))


def op_counts(name: str) -> Counter:
    return Counter(n.op_type for n in load(name).graph.node)


def session(name: str) -> ort.InferenceSession:
    return ort.InferenceSession(str(MODELS / name), providers=["CPUExecutionProvider"])


def readme_accuracies() -> dict[str, float]:
    """Accuracy column of the README table, keyed by file name."""
    text = (MODELS / "README.md").read_text()
    table = re.search(r"<!-- zoo-table:start -->(.*?)<!-- zoo-table:end -->", text, re.S)
    assert table, "README.md has no zoo table"
    out = {}
    for line in table.group(1).strip().splitlines()[2:]:
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells[5].endswith("%"):
            out[cells[1].strip("`")] = float(cells[5].rstrip("%")) / 100.0
    return out


def test_all_expected_models_committed():
    missing = sorted(set(EXPECTED) - set(ONNX_FILES))
    assert not missing, f"missing zoo models: {missing}"


@pytest.mark.parametrize("name", ONNX_FILES)
def test_check_model(name):
    onnx.checker.check_model(str(MODELS / name), full_check=True)


@pytest.mark.parametrize("name", ONNX_FILES)
def test_io_signature(name):
    graph = load(name).graph
    assert [i.name for i in graph.input] == ["input"]
    assert len(graph.output) == 1
    for vi in (graph.input[0], graph.output[0]):
        dims = vi.type.tensor_type.shape.dim
        assert dims[0].dim_param == "batch", f"{vi.name}: batch dim is not symbolic"
        assert all(d.HasField("dim_value") for d in dims[1:]), f"{vi.name}: non-static dims"


@pytest.mark.parametrize("name", ONNX_FILES)
def test_runs_in_onnxruntime(name):
    graph = load(name).graph
    in_dims = [d.dim_value for d in graph.input[0].type.tensor_type.shape.dim[1:]]
    out_dims = [d.dim_value for d in graph.output[0].type.tensor_type.shape.dim[1:]]
    x = np.random.default_rng(0).standard_normal((3, *in_dims)).astype(np.float32)
    (y,) = session(name).run(None, {"input": x})
    assert y.shape == (3, *out_dims)
    assert y.dtype == np.float32
    assert np.isfinite(y).all()
    assert y.std() > 0, "degenerate constant output"


@pytest.mark.parametrize("name", ONNX_FILES)
def test_no_constant_nodes(name):
    """build.py turns Constant nodes into initializers; passes may rely on it."""
    ops = op_counts(name)
    assert ops["Constant"] == 0
    assert ops["Identity"] == 0


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_opset_and_batchnorm(name):
    has_bn, _, opset = EXPECTED[name]
    model = load(name)
    default = [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")]
    assert default == [opset]
    assert (op_counts(name)["BatchNormalization"] > 0) == has_bn


def test_transformer_layernorm_forms():
    native, decomposed = op_counts("transformer_digits.onnx"), op_counts(
        "transformer_digits_opset13.onnx"
    )
    assert native["LayerNormalization"] == 5  # 2 per layer + final norm
    assert decomposed["LayerNormalization"] == 0
    for op in ("ReduceMean", "Sub", "Pow", "Sqrt", "Div", "Erf"):
        assert decomposed[op] > 0, op
    for ops in (native, decomposed):
        assert ops["Softmax"] == 2 and ops["Erf"] == 2
        assert ops["MatMul"] >= 2 * 6  # q, k, v, o, scores, context per layer
        assert ops["Reshape"] > 0 and ops["Transpose"] > 0


def test_structural_patterns():
    dense = op_counts("densenet_fpn.onnx")
    for op in ("Concat", "Resize", "ConvTranspose", "AveragePool"):
        assert dense[op] > 0, op
    mbv2 = op_counts("mobilenetv2_digits.onnx")
    for op in ("Clip", "HardSigmoid", "Mul", "GlobalAveragePool", "Add"):
        assert mbv2[op] > 0, op
    assert any(
        a.name == "group" and a.i > 1
        for n in load("mobilenetv2_digits.onnx").graph.node
        if n.op_type == "Conv"
        for a in n.attribute
    ), "no depthwise conv"
    head = op_counts("conv_gemm_head.onnx")
    assert head["Flatten"] == 1 and head["Gemm"] == 2
    resnet = op_counts("resnet_digits.onnx")
    assert resnet["Add"] == 6 and resnet["BatchNormalization"] == 15


def test_digits_npz():
    test = np.load(MODELS / "digits_test.npz")
    x, y = test["input"], test["labels"]
    assert x.dtype == np.float32 and x.ndim == 4 and x.shape[1:] == (1, 16, 16)
    assert y.dtype == np.int64 and y.shape == (len(x),)
    assert set(np.unique(y)) == set(range(10))
    assert x.min() >= -1.0 and x.max() <= 1.0
    calib = np.load(MODELS / "digits_calib.npz")["input"]
    assert calib.shape == (64, 1, 16, 16) and calib.dtype == np.float32


@pytest.mark.parametrize("name", TRAINED)
def test_trained_accuracy(name):
    test = np.load(MODELS / "digits_test.npz")
    (logits,) = session(name).run(None, {"input": test["input"]})
    acc = float((logits.argmax(axis=1) == test["labels"]).mean())
    assert acc >= EXPECTED[name][1], f"{name}: accuracy {acc:.4f}"
    stated = readme_accuracies()[name]
    assert abs(acc - stated) <= README_TOLERANCE, f"{name}: {acc:.4f} vs README {stated:.4f}"
