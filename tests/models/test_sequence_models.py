"""The two trained models of issue 19 in ``models/sequence/`` (``models/build_seqmodels.py``;
torch is not needed here): their shape is the one their exporters write, and one graphc command
each quantizes them within the issue's accuracy and size bars on the held-out data. Speed is
measured by ``benchmarks/bench_sequence_models.py`` (alternated runs; too noisy for a test on a
shared machine)."""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest

import graphc
from graphc.cli import main
from graphc.metrics import decoded_agreement, top1_agreement
from support import run

SEQ = Path(__file__).resolve().parents[2] / "models" / "sequence"
CLF, REC = SEQ / "tf2onnx_digits.onnx", SEQ / "crnn_lines.onnx"


def _ops(path: Path) -> Counter:
    return Counter(n.op_type for n in onnx.load(str(path)).graph.node)


def test_classifier_is_written_the_tf2onnx_way():
    ops = _ops(CLF)
    model = onnx.load(str(CLF))
    assert [i.name for i in model.graph.input] == ["input_image:0"]
    assert model.graph.input[0].type.tensor_type.shape.dim[3].dim_value == 1  # NHWC
    assert ops["LayerNormalization"] == 0 and ops["Gelu"] == 0 and ops["Softmax"] == 0
    for op, n in (("ReduceMean", 11), ("Pow", 7), ("Sqrt", 5), ("Tanh", 2), ("Exp", 3), ("ReduceSum", 3),
                  ("ReduceMax", 3), ("Conv", 2), ("MatMul", 17)):
        assert ops[op] == n, op  # 5 LayerNorms, 2 GELUs, 3 Softmaxes, 13 dense layers + 4 attention MatMuls
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    by_output = {o: n for n in model.graph.node for o in n.output}
    for conv in convs:  # a Transpose to NCHW in front of every Conv
        assert by_output[conv.input[0]].op_type == "Transpose"
    assert all(n.name and n.output[0].endswith(":0") for n in model.graph.node)


def test_recognizer_is_a_crnn_whose_gemm_dominates_the_file():
    ops = _ops(REC)
    assert ops["Conv"] == 3 and ops["LSTM"] == 1 and ops["Gemm"] == 1
    model = onnx.load(str(REC))
    lstm = next(n for n in model.graph.node if n.op_type == "LSTM")
    assert {a.name: a for a in lstm.attribute}["direction"].s == b"bidirectional"
    sizes = {t.name: onnx.numpy_helper.to_array(t).nbytes for t in model.graph.initializer}
    gemm = next(n for n in model.graph.node if n.op_type == "Gemm")
    head = onnx.numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == gemm.input[1]))
    assert head.shape == (3000, 256)
    assert sizes[gemm.input[1]] > 0.6 * sum(sizes.values())
    vocab = (SEQ / "crnn_lines_vocab.txt").read_text(encoding="utf-8").rstrip("\n")
    assert len(vocab) == 2999  # + the CTC blank


def _one_command(tmp_path, src: Path, *extra: str) -> Path:
    out = tmp_path / f"{src.stem}.int8.onnx"
    assert main(["opt", str(src), "-p", "quant", *extra, "-o", str(out), "-q"]) == 0
    onnx.checker.check_model(str(out), full_check=True)
    return out


@pytest.mark.slow
def test_classifier_one_command_keeps_top1(tmp_path):
    """``graphc opt tf2onnx_digits.onnx -p quant --data tf2onnx_digits_calib.npz``: top-1
    agreement with float >= 0.995 on the 450 held-out digits (measured 0.9956)."""
    out = _one_command(tmp_path, CLF, "--data", str(SEQ / "tf2onnx_digits_calib.npz"))
    ops = _ops(out)
    assert ops["MatMul"] < 17  # integer MatMuls: static QDQ or dynamic, as activations=auto chooses
    assert ops["QuantizeLinear"] + ops["MatMulInteger"] > 0
    x = np.load(SEQ / "tf2onnx_digits_test.npz")["input_image:0"]
    ref, got = run(str(CLF), {"input_image:0": x})[0], run(str(out), {"input_image:0": x})[0]
    assert top1_agreement(ref, got) >= 0.995
    assert out.stat().st_size < 0.4 * CLF.stat().st_size


@pytest.mark.slow
def test_recognizer_one_command_keeps_decoded_lines(tmp_path):
    """``graphc opt crnn_lines.onnx -p quant`` (no data: dynamic): greedy-decoded line agreement
    with float >= 0.98 on 200 held-out lines (measured 0.985), file <= 0.5x, LSTM and Gemm int8."""
    out = _one_command(tmp_path, REC)
    ops = _ops(out)
    assert ops["LSTM"] == 0 and ops["DynamicQuantizeLSTM"] == 1 and ops["MatMulInteger"] == 1
    x = np.load(SEQ / "crnn_lines_test.npz")["input"]
    ref, got = run(str(REC), {"input": x})[0], run(str(out), {"input": x})[0]
    assert decoded_agreement(ref, got) >= 0.98
    assert out.stat().st_size <= 0.5 * REC.stat().st_size
    assert graphc.load(out).graph.nodes  # loads back
