"""placement=auto on LSTMs by the measured speed model (passes/quant/recurrent.py, speed_model.py):
a measured table's ``lstm`` costs decide whether an LSTM becomes DynamicQuantizeLSTM, in the
dynamic and the static mode; without them (the builtin table) the hidden-size threshold does; the
costs are per step at the LSTM's sizes; and the cost probe times the very form the pass writes.
Nothing is timed here: tables are given (tests/conftest.py sets GRAPHC_SPEED_MODEL=builtin)."""
from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs
import pytest
from onnx import TensorProto, helper, numpy_helper

import graphc
import graphc.passes.quant.speed_model as speed_model
from graphc.bench import cost_probe
from graphc.bench.cost_table import MeasuredTable, TableKey
from graphc.calib.data import open_data
from graphc.cpu import CpuKey
from graphc.ir import from_proto
from graphc.passes.quant.recurrent import MEASURED_SLOWER
from graphc.passes.quant.speed_model import CostTable, Linear, SpeedModel
from support import make_model, op_count

RNG = np.random.default_rng(11)
KEY = TableKey.of(CpuKey("Test CPU 9000", ("avx2", "avx512_vnni")), "1.32.0")
CONVERT = {"float": [100.0, 0.0, 0.01], "int": [100.0, 0.0, 0.01]}
STEPS, BATCH = 5, 2


def _lstm_model(hidden: int, inputs: int):
    """x [T=5, B=2, inputs] -> bidirectional LSTM (constant W, R, B) -> y, y_h."""
    inits = {"W": RNG.standard_normal((2, 4 * hidden, inputs)) / inputs ** 0.5,
             "R": RNG.standard_normal((2, 4 * hidden, hidden)) / hidden ** 0.5,
             "B": RNG.standard_normal((2, 8 * hidden)) * 0.1}
    node = helper.make_node("LSTM", ["x", "W", "R", "B"], ["y", "y_h"], hidden_size=hidden,
                            direction="bidirectional", name="lstm")
    graph = helper.make_graph([node], "rnn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [STEPS, BATCH, inputs])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [STEPS, 2, BATCH, hidden]),
                               helper.make_tensor_value_info("y_h", TensorProto.FLOAT, [2, BATCH, hidden])],
                              [numpy_helper.from_array(v.astype(np.float32), k) for k, v in inits.items()])
    return graphc.load(make_model(graph, opset=13))


def _measured(lstm: dict | None):
    table = {"convert": CONVERT} | ({"lstm": lstm} if lstm is not None else {})
    return lambda: MeasuredTable(KEY, table, None, fresh=False)


def _run(model, pipeline, data=False):
    feeds = [{"x": RNG.standard_normal((STEPS, BATCH, model.graph.inputs[0].shape[2])).astype(np.float32)}
             for _ in range(3)] if data else None
    report = graphc.PassManager(pipeline, data=open_data(feeds, model) if data else None, prepare=False).run(model)
    return report.records[-1]


#: int8 pays from about H = I = 48 (the shape of a table measured on an AVX512-VNNI EPYC)
CROSSING = {"float": [0.0, 0.0277, 31.7], "int": [1223.0, 0.01225, 7.9]}
INT_ALWAYS = {"float": [1e6, 0.0, 0.0], "int": [0.0, 0.0, 0.0]}
INT_NEVER = {"float": [0.0, 0.0, 0.0], "int": [1e6, 0.0, 0.0]}


@pytest.mark.parametrize("mode, data", [("activations=dynamic", False), ("activations=u8", True)])
@pytest.mark.parametrize("hidden, lstm, rewritten", [
    (16, INT_ALWAYS, True),     # the builtin threshold (64) would keep it float
    (96, INT_NEVER, False),     # ... and would rewrite this one
    (16, CROSSING, False),      # at batch 2 the int kernel's fixed cost per step is shared: H = 32 pays
    (64, CROSSING, True),
])
def test_a_measured_table_decides_each_lstm(monkeypatch, mode, data, hidden, lstm, rewritten):
    monkeypatch.setattr(speed_model, "measured_table", _measured(lstm))
    record = _run(_lstm_model(hidden, hidden), f"quant{{{mode} speed-model=measured}}", data)
    assert record.stats.get("quantized_LSTM", 0) == int(rewritten)
    assert record.skipped.get(MEASURED_SLOWER, 0) == int(not rewritten)


def test_without_measured_lstm_costs_the_hidden_size_decides(monkeypatch):
    monkeypatch.setattr(speed_model, "measured_table", _measured(None))  # a table from an older probe
    for hidden, rewritten in ((32, False), (64, True)):
        record = _run(_lstm_model(hidden, 16), "quant{activations=dynamic speed-model=measured}")
        assert record.stats.get("quantized_LSTM", 0) == int(rewritten)
    monkeypatch.setattr(speed_model, "measured_table", lambda: pytest.fail("measured"))
    record = _run(_lstm_model(32, 16), "quant{activations=dynamic speed-model=builtin}")
    assert record.skipped == {"dynamic: LSTM hidden_size below 64 (its integer kernel does not pay)": 1}


def test_placement_all_never_asks_the_speed_model(monkeypatch):
    monkeypatch.setattr(speed_model, "measured_table", lambda: pytest.fail("measured"))
    record = _run(_lstm_model(16, 16), "quant{activations=dynamic placement=all speed-model=measured}")
    assert record.stats["quantized_LSTM"] == 1


def test_lstm_costs_are_per_step_at_the_lstm_sizes():
    table = CostTable.from_measured({"convert": CONVERT, "lstm": {"float": [10.0, 2.0, 3.0],
                                                                  "int": [40.0, 1.0, 1.0]}}, "measured")
    model = _lstm_model(8, 4)
    node = model.graph.nodes[0]
    shapes = {"x": type("Info", (), {"shape": [STEPS, 3, 4]})()}
    macs, elems = 3 * 4 * 8 * (4 + 8), 3 * 8   # batch 3: M = B 4H (I + H), E = B H
    assert SpeedModel(shapes, table).lstm_costs(node) == (10 + 2 * macs + 3 * elems, 40 + macs + elems)
    macs, elems = 2 * 4 * 8 * (4 + 8), 2 * 8    # not in the shapes: as x declares it, [5, 2, 4]
    assert SpeedModel({}, table).lstm_costs(node) == (10 + 2 * macs + 3 * elems, 40 + macs + elems)
    node.inputs[0].shape = None
    macs, elems = 4 * 8 * (4 + 8), 8            # unknown batch: 1
    assert SpeedModel({}, table).lstm_costs(node) == (10 + 2 * macs + 3 * elems, 40 + macs + elems)
    assert SpeedModel({}, speed_model.BUILTIN).lstm_costs(node) is None
    assert table.costs("lstm") == (Linear(10, 2, 3), Linear(40, 1, 1))


def _signature(node: gs.Node) -> tuple:
    """What the kernel sees: op, domain, attributes, and each input's dtype and shape ('' if absent)."""
    inputs = []
    for t in node.inputs:
        if not t.name:
            inputs.append("")
        elif isinstance(t, gs.Constant):
            inputs.append((str(t.values.dtype), tuple(t.values.shape)))
        else:
            inputs.append("activation")
    attrs = {k: v for k, v in node.attrs.items()}
    return node.op, node.domain, attrs["hidden_size"], attrs["direction"], inputs, len(node.outputs)


def test_the_probe_times_the_form_the_pass_writes():
    hidden, inputs = 16, 12
    model = _lstm_model(hidden, inputs)
    _run(model, "quant{activations=dynamic placement=all}")
    written = next(n for n in model.graph.nodes if n.op == "DynamicQuantizeLSTM")
    probe = from_proto(cost_probe.lstm_sample(hidden, inputs, STEPS).int_model)
    probed = next(n for n in probe.graph.nodes if n.op == "DynamicQuantizeLSTM")
    assert _signature(probed) == _signature(written)
    assert op_count(model, "LSTM") == 0
