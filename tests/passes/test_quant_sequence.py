"""quant on sequence models: with calibration data (static QDQ), LSTMs still get int8 weights
through onnxruntime's DynamicQuantizeLSTM (there is no static integer LSTM kernel); and the
greedy CTC decoding metric the recognizer benchmark reads.

Error bounds: the Conv -> LSTM -> Gemm graph's outputs keep cosine > 0.999 against float
(measured 0.9999+), the same bound as the dynamic-mode LSTM test."""
import numpy as np
from onnx import TensorProto, helper, numpy_helper

import graphc
from graphc.calib.data import open_data
from graphc.ir import to_proto
from graphc.metrics import ctc_greedy_decode, decoded_agreement
from support import assert_valid, make_model, op_count, run

RNG = np.random.default_rng(11)
T, C, H, CLASSES = 12, 16, 64, 40


def _recognizer():
    """x [1, 1, 4, T] -> Conv 3x3 (C) -> Relu -> [T, 1, C*4] -> bidirectional LSTM (H) ->
    [T, 2H] -> Gemm (transB) -> [T, CLASSES]."""
    w = lambda *s: (RNG.standard_normal(s) / np.sqrt(np.prod(s[1:]))).astype(np.float32)  # noqa: E731
    inits = {"cw": w(C, 1, 3, 3), "cb": (RNG.standard_normal(C) * 0.1).astype(np.float32),
             "to_seq": np.array([1, C * 4, T], np.int64), "W": w(2, 4 * H, C * 4), "R": w(2, 4 * H, H),
             "B": (RNG.standard_normal((2, 8 * H)) * 0.1).astype(np.float32),
             "flat": np.array([T, 2 * H], np.int64), "fw": w(CLASSES, 2 * H),
             "fb": (RNG.standard_normal(CLASSES) * 0.1).astype(np.float32)}
    n = helper.make_node
    nodes = [n("Conv", ["x", "cw", "cb"], ["c"], pads=[1, 1, 1, 1], name="conv"),
             n("Relu", ["c"], ["r"], name="relu"),
             n("Reshape", ["r", "to_seq"], ["s"], name="to_seq"),
             n("Transpose", ["s"], ["st"], perm=[2, 0, 1], name="time_major"),
             n("LSTM", ["st", "W", "R", "B"], ["y"], hidden_size=H, direction="bidirectional", name="lstm"),
             n("Transpose", ["y"], ["yt"], perm=[0, 2, 1, 3], name="to_tbdh"),
             n("Reshape", ["yt", "flat"], ["feat"], name="flatten"),
             n("Gemm", ["feat", "fw", "fb"], ["logits"], transB=1, name="head")]
    graph = helper.make_graph(nodes, "rec", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 4, T])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [T, CLASSES])],
                              [numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()])
    return graphc.load(make_model(graph, opset=13))


def _feeds(n=6):
    return [{"x": RNG.standard_normal((1, 1, 4, T)).astype(np.float32)} for _ in range(n)]


def _cosine(a, b):
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def test_static_quant_also_rewrites_the_lstm(tmp_path):
    model, feeds = _recognizer(), _feeds()
    reference = model.copy()
    record = graphc.PassManager("quant{placement=all}", data=open_data(feeds, model)).run(model).records[-1]
    assert record.stats["quantized_LSTM"] == 1 and record.stats["quantized_Conv"] == 1
    assert op_count(model, "LSTM") == 0 and op_count(model, "DynamicQuantizeLSTM") == 1
    assert op_count(model, "QuantizeLinear") > 0  # the Conv and Gemm are static QDQ
    lstm = next(n for n in model.graph.nodes if n.op == "DynamicQuantizeLSTM")
    assert lstm.domain == "com.microsoft" and np.asarray(lstm.inputs[1].values).dtype == np.int8
    path = assert_valid(model, tmp_path)
    for feed in feeds[:3]:
        assert _cosine(run(path, feed)[0], run(to_proto(reference), feed)[0]) > 0.999


def test_static_quant_leaves_a_small_or_excluded_lstm_float():
    model, feeds = _recognizer(), _feeds()
    record = graphc.PassManager("quant{placement=all exclude=lstm}", data=open_data(feeds, model)).run(model) \
        .records[-1]
    assert "quantized_LSTM" not in record.stats and op_count(model, "LSTM") == 1
    assert record.skipped.get("excluded by pattern", 0) >= 1


def test_budget_keeps_the_lstm_float():
    """The error budget measures static QDQ layers only; the LSTM it does not measure stays float."""
    model, feeds = _recognizer(), _feeds()
    graphc.PassManager("quant{min-sqnr=10}", data=open_data(feeds, model)).run(model)
    assert op_count(model, "LSTM") == 1 and op_count(model, "DynamicQuantizeLSTM") == 0


def test_ctc_greedy_decode_merges_repeats_and_drops_blanks():
    steps = [1, 1, 0, 1, 2, 2, 0, 0, 3]
    scores = np.eye(4)[steps][None]  # [1, 9, 4]
    assert ctc_greedy_decode(scores) == [(1, 1, 2, 3)]
    assert ctc_greedy_decode(scores, blank=3) == [(1, 0, 1, 2, 0)]


def test_decoded_agreement_counts_whole_sequences():
    a = np.eye(4)[[[1, 0, 2], [3, 3, 0]]]      # decodes (1, 2), (3,)
    b = np.eye(4)[[[1, 2, 2], [3, 0, 3]]]      # decodes (1, 2), (3, 3)
    assert decoded_agreement(a, b) == 0.5
    assert decoded_agreement(a, a) == 1.0
