"""The trained VAD of the exporter corpus (vad_trained_if: conv + LSTM per sample rate inside
If(sr == 16000), built by models/vad_trained.py): quant puts every branch Conv on int8 weights
inside the branches, onnxruntime runs them as QLinearConv there, and the speech decisions on the
held-out clips (models/vad_signals.py, regenerated from its seed) agree with the float model's on
>= 99.5% of frames at each rate. The float model itself is trained (>= 95% of frames right)."""
import collections
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import graphc
from graphc.calib.data import open_data
from graphc.ir import walk_graphs
from support import MODELS, ROOT, load_module

CORPUS = ROOT / "tests" / "models" / "corpus"
SOURCE = CORPUS / "vad_trained_if.onnx"
PIPELINE = "quant{placement=all}"


SIGNALS = load_module(MODELS / "vad_signals.py")


def session(model):
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    source = str(model) if isinstance(model, (str, Path)) else graphc.ir.to_proto(model).SerializeToString()
    return ort.InferenceSession(source, so, providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def quantized():
    model = graphc.load(SOURCE)
    report = graphc.PassManager(PIPELINE, data=open_data(CORPUS / "vad_trained_if.npz", model)).run(model)
    return model, report.records[-1]


@pytest.fixture(scope="module")
def heldout():
    return {sr: SIGNALS.heldout(sr) for sr in SIGNALS.RATES}


def test_the_model_is_a_spox_style_if_with_trained_branches(heldout):
    proto = onnx.load(SOURCE)
    assert [n.op_type for n in proto.graph.node] == ["Equal", "If"]
    ref = session(SOURCE)
    for branch in proto.graph.node[1].attribute:
        ops = collections.Counter(n.op_type for n in branch.g.node)
        assert ops["Conv"] == 5 and ops["LSTM"] == 1 and "audio" in {i for n in branch.g.node for i in n.input}
    for sr, (audio, labels) in heldout.items():
        prob = ref.run(None, {"audio": audio, "sr": np.array(sr, np.int64)})[0]
        assert np.mean((prob > 0.5) == labels) >= 0.95, sr  # measured 0.97-0.98


def test_branch_convs_are_int8_inside_the_branches(quantized, tmp_path):
    model, record = quantized
    assert record.stats["quantized_bodies"] == 2
    for path, scope in walk_graphs(model.graph):
        convs = [n for n in scope.nodes if n.op == "Conv"]
        if not path:
            assert not convs
            continue
        assert len(convs) == 5
        for conv in convs:
            dq = conv.inputs[1].inputs[0]
            assert dq.op == "DequantizeLinear" and dq.inputs[0].values.dtype == np.int8, conv.name
    so = ort.SessionOptions()
    so.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(graphc.ir.to_proto(model).SerializeToString(), so, providers=["CPUExecutionProvider"])
    optimized = onnx.load(so.optimized_model_filepath)
    for branch in optimized.graph.node[-1].attribute:
        assert collections.Counter(n.op_type for n in branch.g.node)["QLinearConv"] == 5


def test_speech_decisions_unchanged_on_995_of_frames(quantized, heldout):
    model, _ = quantized
    ref, cand = session(SOURCE), session(model)
    for sr, (audio, _labels) in heldout.items():
        feed = {"audio": audio, "sr": np.array(sr, np.int64)}
        agreement = SIGNALS.frame_agreement(ref.run(None, feed)[0], cand.run(None, feed)[0])
        assert agreement >= 0.995, (sr, agreement)
