"""The exporter corpus (tests/models/corpus/, built by models/build_corpus.py) through the CLI.

For every model: each exact pass as the first and only pass (every registered pass is listed:
cleanup, fold-constants, fold-bn, canonicalize, equalize, smooth), and the exact pipeline, run with
`--verify` and `graphc verify` agrees; quant, prune and factorize either write a model that runs
or refuse with one `graphc: error:` line that names the reason - never "pass 'X' failed:
<Python exception>", and never a blame of the result for what the input already had. Known
failures are xfail(strict=True) with the exact failure, so they flip when the fix lands.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from graphc.cli import main
from graphc.passmanager import all_passes
from support import MODELS, load_module

CORPUS = Path(__file__).resolve().parent / "corpus"
NAMES = sorted(p.stem for p in CORPUS.glob("*.onnx"))
#: every registered pass, as the first and only pass (a new pass is covered when it registers)
PASSES = {cls.name: cls.exact for cls in all_passes()}
EXACT = sorted(n for n, exact in PASSES.items() if exact) + ["fold-bn,canonicalize,fold-constants,cleanup"]
LOSSY = sorted(n for n, exact in PASSES.items() if not exact)
MAX_BYTES = 300_000

KNOWN: dict[tuple[str, str], str] = {}  # (model, pipeline) -> the known failure


def case(name: str, pipeline: str):
    reason = KNOWN.get((name, pipeline))
    marks = [pytest.mark.xfail(strict=True, reason=reason)] if reason else []
    return pytest.param(name, pipeline, marks=marks, id=f"{name}-{pipeline}")


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def run_cli(capsys, args: list) -> tuple[int, str]:
    code = main([str(a) for a in args])
    _out, err = capsys.readouterr()
    return code, err


def runnable(path: Path) -> bytes:
    """The model at ``path`` as onnxruntime can run it on real data: literal 0 input dims (which
    it would hold the feeds to) cleared - independently of graphc's own repair."""
    proto = onnx.load(str(path))
    for vi in proto.graph.input:
        for dim in vi.type.tensor_type.shape.dim:
            if dim.HasField("dim_value") and dim.dim_value == 0:
                dim.Clear()
    return proto.SerializeToString()


def feeds(name: str) -> dict[str, np.ndarray]:
    """The first feed of the model's .npz (a stacked input gives its first sample)."""
    session = ort.InferenceSession(runnable(CORPUS / f"{name}.onnx"), providers=["CPUExecutionProvider"])
    with np.load(CORPUS / f"{name}.npz") as data:
        return {i.name: np.asarray(data[i.name][0] if data[i.name].ndim == len(i.shape) + 1 else data[i.name][:1])
                for i in session.get_inputs()}


def run(path: Path, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
    return ort.InferenceSession(runnable(path), providers=["CPUExecutionProvider"]).run(None, feed)


# --------------------------------------------------------------------------
# the corpus itself
# --------------------------------------------------------------------------


def test_corpus_complete():
    expected = {"torch_ts_convnet", "torch_ts_transformer", "torch_dynamo_convnet", "torch_dynamo_transformer",
                "tf2onnx_classifier", "spox_vad_if", "spox_loop", "conv_bn_noshape", "convtranspose_bn_noshape",
                "gemm_bn_noshape", "zero_dim_input", "wrong_rank_output", "runtime_shaped_output",
                "literal_zero_input", "vad_trained_if"}
    assert set(NAMES) == expected
    assert all((CORPUS / f"{n}.npz").is_file() for n in NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_corpus_model_runs_and_is_small(name):
    path = CORPUS / f"{name}.onnx"
    assert path.stat().st_size < MAX_BYTES
    outputs = run(path, feeds(name))
    assert outputs and all(np.isfinite(o).all() and o.size > 0 for o in outputs)


def test_corpus_shapes_of_exporters():
    """Each entry has the feature it stands for (so a rebuild cannot quietly lose it)."""
    load = lambda n: onnx.load(str(CORPUS / f"{n}.onnx"))  # noqa: E731
    ops = lambda m: {n.op_type for n in m.graph.node}  # noqa: E731
    assert [f.name for f in load("torch_ts_transformer").functions] == ["EncoderLayer"]
    assert all(load(n).opset_import[0].version >= 18 or load(n).opset_import[-1].version >= 18
               for n in NAMES if n.startswith("torch_"))
    tf = load("tf2onnx_classifier")
    assert {"Transpose", "Equal", "Cast", "Tanh", "Pow", "Sqrt", "ReduceSum", "Exp"} <= ops(tf)
    assert all(t.name.endswith(":0") for t in tf.graph.input)
    vad = load("spox_vad_if")
    (if_node,) = [n for n in vad.graph.node if n.op_type == "If"]
    for branch in if_node.attribute:
        assert sum(n.op_type == "BatchNormalization" for n in branch.g.node) == 3
    assert vad.opset_import[0].version == 16
    assert "Loop" in ops(load("spox_loop"))
    for name in ("conv_bn_noshape", "convtranspose_bn_noshape", "gemm_bn_noshape"):
        assert not load(name).graph.output[0].type.tensor_type.HasField("shape")
    assert not load("zero_dim_input").graph.input[0].type.tensor_type.shape.dim[0].HasField("dim_value")
    assert len(load("wrong_rank_output").graph.output[0].type.tensor_type.shape.dim) == 2
    runtime = load("runtime_shaped_output")
    assert len(runtime.graph.output[0].type.tensor_type.shape.dim) == 2
    inferred = onnx.shape_inference.infer_shapes(runtime, data_prop=True)  # only a run shows the rank
    assert not any(v.name == "log_probs" and v.type.tensor_type.HasField("shape") for v in inferred.graph.value_info)
    assert load("literal_zero_input").graph.input[0].type.tensor_type.shape.dim[0].dim_value == 0
    assert load("literal_zero_input").graph.input[0].type.tensor_type.shape.dim[0].HasField("dim_value")


def test_hand_written_graphs_rebuild_byte_identical():
    module = load_module(MODELS / "corpus_graphs.py")
    for name, make in module.GRAPHS.items():
        assert make().SerializeToString() == (CORPUS / f"{name}.onnx").read_bytes(), name


# --------------------------------------------------------------------------
# passes over the corpus
# --------------------------------------------------------------------------


@pytest.mark.parametrize("name,pipeline", [case(n, p) for n in NAMES for p in EXACT])
def test_exact_pipeline_verifies(capsys, tmp_path, name, pipeline):
    src, data, out = CORPUS / f"{name}.onnx", CORPUS / f"{name}.npz", tmp_path / "out.onnx"
    before = digest(src)
    code, err = run_cli(capsys, ["opt", src, "-p", pipeline, "--data", data, "--verify", "-q", "-o", out])
    assert code == 0, err
    assert digest(src) == before
    code, err = run_cli(capsys, ["verify", src, out, "--data", data, "-q"])
    assert code == 0, err


@pytest.mark.parametrize("name,pipeline", [case(n, p) for n in NAMES for p in LOSSY])
def test_lossy_pass_works_or_refuses_in_one_line(capsys, tmp_path, name, pipeline):
    src, data, out = CORPUS / f"{name}.onnx", CORPUS / f"{name}.npz", tmp_path / "out.onnx"
    before = digest(src)
    code, err = run_cli(capsys, ["opt", src, "-p", pipeline, "--data", data, "-q", "-o", out])
    assert digest(src) == before
    assert "Traceback" not in err
    if code == 0:
        feed = feeds(name)
        for got, ref in zip(run(out, feed), run(src, feed)):
            assert got.shape == ref.shape and np.isfinite(got).all()
        return
    lines = [line for line in err.splitlines() if line.startswith("graphc: error:")]
    assert code == 2 and len(lines) == 1, err
    assert " failed: " not in lines[0], lines[0]            # a Python exception escaped a pass
    assert "result fails onnx.checker" not in lines[0], lines[0]  # blames the result for the input
    assert not out.exists()
