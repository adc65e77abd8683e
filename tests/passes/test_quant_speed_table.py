"""quant's speed model with measured cost tables (passes/quant/speed_model.py): op classes by
shape, which table the pass uses (option, environment, fallback) and says it used, that the
table decides the placement, and that the cut charges one conversion per tensor."""
from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs
import pytest
from onnx import TensorProto, helper, numpy_helper

import graphc
import graphc.passes.quant.speed_model as speed_model
from graphc.bench.cost_table import MeasuredTable, TableKey
from graphc.calib.data import open_data
from graphc.cpu import CpuKey
from graphc.passes.quant.speed_model import BUILTIN, TABLE, CostTable, Linear, SpeedModel, integer_nodes, op_class
from support import make_model

RNG = np.random.default_rng(3)
KEY = TableKey.of(CpuKey("Test CPU 9000", ("avx2", "avx512_vnni")), "1.32.0")


def _const(name, *shape):
    return gs.Constant(name, (RNG.standard_normal(shape) * 0.2).astype(np.float32))


def _conv(name, x, w, group=1):
    out = gs.Variable(f"{name}_out", dtype=np.float32)
    return gs.Node("Conv", name, attrs={"group": group}, inputs=[x, w], outputs=[out])


def test_conv_classes_follow_the_weight_shape_and_groups():
    x = gs.Variable("x", dtype=np.float32)
    assert op_class(_conv("c1d", x, _const("w1", 8, 4, 5)), False) == "conv1d"
    assert op_class(_conv("c2d", x, _const("w2", 8, 4, 3, 3)), False) == "conv"
    assert op_class(_conv("dw", x, _const("w3", 8, 1, 3, 3), group=8), False) == "depthwise"
    assert op_class(_conv("gr", x, _const("w4", 8, 2, 3, 3), group=4), False) == "grouped"
    y = gs.Variable("y", dtype=np.float32)
    attention = gs.Node("MatMul", "qk", inputs=[x, y], outputs=[gs.Variable("s", dtype=np.float32)])
    projection = gs.Node("MatMul", "proj", inputs=[x, _const("w5", 16, 16)], outputs=[gs.Variable("p", dtype=np.float32)])
    assert op_class(attention, False) == "matmul_act" and op_class(projection, False) == "matmul"


def test_the_builtin_table_costs_new_classes_like_their_nearest():
    for cls, nearest in (("conv1d", "conv"), ("grouped", "depthwise"), ("matmul_act", "matmul")):
        assert cls not in TABLE and BUILTIN.costs(cls) == TABLE[nearest]


def _measured(table: dict) -> MeasuredTable:
    return MeasuredTable(KEY, table, None, fresh=False)


def _vad_like():
    """x [1, 4, 256] -> Conv1d(4->16, k5) -> Relu -> Conv1d(16->16, k5) -> Relu -> y."""
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[2, 2]), helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], pads=[2, 2]), helper.make_node("Relu", ["c2"], ["y"])]
    inits = {"w1": RNG.standard_normal((16, 4, 5)) * 0.3, "b1": RNG.standard_normal(16) * 0.1,
             "w2": RNG.standard_normal((16, 16, 5)) * 0.2, "b2": RNG.standard_normal(16) * 0.1}
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 256])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16, 256])],
                              [numpy_helper.from_array(v.astype(np.float32), k) for k, v in inits.items()])
    return graphc.load(make_model(graph, opset=13))


def _quant(model, pipeline):
    feeds = [{"x": RNG.standard_normal((1, 4, 256)).astype(np.float32)} for _ in range(4)]
    report = graphc.PassManager(pipeline, data=open_data(feeds, model), prepare=False).run(model)
    return report.records[-1]


CONVERT = {"float": [100.0, 0.0, 0.01], "int": [100.0, 0.0, 0.01]}


@pytest.mark.parametrize("int_cost, quantized", [(0.0, 2), (1e7, 0)])
def test_a_measured_table_decides_the_placement(monkeypatch, int_cost, quantized):
    table = {"convert": CONVERT,
             "conv1d": {"float": [50000.0, 0.0, 0.0], "int": [int_cost, 0.0, 0.0]}}
    monkeypatch.setattr(speed_model, "measured_table", lambda: _measured(table))
    record = _quant(_vad_like(), "quant{speed-model=measured}")
    assert record.stats.get("quantized_Conv", 0) == quantized
    assert record.stats["speed_model"] == "measured on Test CPU 9000 [avx2 avx512_vnni], onnxruntime 1.32.0"


def test_builtin_is_used_when_asked_and_named(monkeypatch):
    monkeypatch.setattr(speed_model, "measured_table", lambda: pytest.fail("measured"))
    record = _quant(_vad_like(), "quant{speed-model=builtin}")
    assert record.stats["speed_model"].startswith("builtin")


@pytest.mark.parametrize("env, expected", [("builtin", "builtin"), ("measured", "measured"), ("", "measured"),
                                           ("bogus", "measured")])
def test_auto_reads_the_environment(monkeypatch, env, expected):
    monkeypatch.setattr(speed_model, "measured_table", lambda: _measured({"convert": CONVERT}))
    monkeypatch.setenv(speed_model.ENV, env)
    assert speed_model.cost_table("auto").source.split()[0] == expected


def test_a_failed_measurement_falls_back_to_the_builtin_table(monkeypatch):
    def broken():
        raise OSError("no space left on device")
    monkeypatch.setattr(speed_model, "measured_table", broken)
    assert speed_model.cost_table("measured") is BUILTIN


def test_measured_classes_replace_the_builtin_ones_and_the_rest_stay():
    table = CostTable.from_measured({"convert": {"float": [7.0, 0.0, 0.5], "int": [7.0, 0.0, 0.5]},
                                     "conv1d": {"float": [1.0, 2.0, 3.0], "int": [4.0, 5.0, 6.0]}}, "measured")
    assert table.costs("conv1d") == (Linear(1, 2, 3), Linear(4, 5, 6))  # nothing to scale by: 1
    assert table.costs("depthwise") == TABLE["depthwise"] and table.convert == speed_model.CONVERT_NS


def test_measured_costs_are_put_in_the_builtin_units():
    # this machine runs float Conv at half the builtin table's cost: its measured Conv1d costs
    # count double in the builtin units; the measured 2-D Conv itself is not taken
    fl = TABLE["conv"][0]
    half = [fl.fixed / 2, fl.per_mac / 2, fl.per_elem / 2]
    table = CostTable.from_measured({"convert": {"float": [0.0, 0.0, 0.0], "int": [0.0, 0.0, 0.0]},
                                     "conv": {"float": half, "int": half},
                                     "conv1d": {"float": [1.0, 2.0, 3.0], "int": [4.0, 5.0, 6.0]}}, "measured")
    assert speed_model.machine_scale({"conv": (Linear(*half), Linear())}) == pytest.approx(0.5)
    assert table.costs("conv1d")[0] == Linear(2, 4, 6) and table.costs("conv1d")[1] == Linear(8, 10, 12)
    assert table.costs("conv") == TABLE["conv"]


# -- the cut ----------------------------------------------------------------------------------

class FlatModel(SpeedModel):
    """Every Conv saves 100 us on integers; a conversion costs ``convert_ns`` whatever its size."""

    def __init__(self, convert_ns):
        super().__init__({})
        self.convert_ns = convert_ns

    def costs(self, node):
        return (100000.0, 0.0) if node.op == "Conv" else None

    def conversion(self, tensor):
        return self.convert_ns


def _two_readers():
    """x -> Conv -> Conv -> c2, read by two float ops (Tanh, Exp)."""
    x = gs.Variable("x", dtype=np.float32, shape=[1, 4, 8, 8])
    c1 = _conv("conv1", x, _const("w1", 4, 4, 1, 1))
    c2 = _conv("conv2", c1.outputs[0], _const("w2", 4, 4, 1, 1))
    t = gs.Node("Tanh", "tanh", inputs=[c2.outputs[0]], outputs=[gs.Variable("t", dtype=np.float32)])
    e = gs.Node("Exp", "exp", inputs=[c2.outputs[0]], outputs=[gs.Variable("e", dtype=np.float32)])
    return gs.Graph(nodes=[c1, c2, t, e], inputs=[x], outputs=[t.outputs[0], e.outputs[0]], opset=13), [c1, c2]


def test_one_dequantization_serves_every_float_reader():
    # integers save 200 us; they cost one Q (x) and one DQ (c2, read twice): 160 us < 200 us.
    # Charging the DQ once per reader (240 us) would keep both Convs float.
    graph, convs = _two_readers()
    chosen, estimate = integer_nodes(graph, convs, FlatModel(80000.0))
    assert chosen == {id(c) for c in convs}
    assert estimate["estimated_cut_us"] == pytest.approx(160.0)
    chosen, _ = integer_nodes(graph, convs, FlatModel(110000.0))  # 220 us > 200 us
    assert not chosen


def test_a_relu_after_an_integer_conv_goes_with_it_when_its_readers_are_float():
    # Relu costs nothing either way; on integers the Q after it absorbs it (range from 0)
    x = gs.Variable("x", dtype=np.float32, shape=[1, 8, 64])
    conv = _conv("conv", x, _const("w", 8, 8, 3))
    relu = gs.Node("Relu", "relu", inputs=[conv.outputs[0]], outputs=[gs.Variable("r", dtype=np.float32, shape=[1, 8, 64])])
    reader = gs.Node("Transpose", "t", attrs={"perm": [0, 2, 1]}, inputs=[relu.outputs[0]],
                     outputs=[gs.Variable("y", dtype=np.float32)])
    graph = gs.Graph(nodes=[conv, relu, reader], inputs=[x], outputs=[reader.outputs[0]], opset=13)
    shapes = {t.name: type("Info", (), {"shape": t.shape})() for t in (x, relu.outputs[0], conv.outputs[0])}
    table = CostTable({**TABLE, "conv1d": (Linear(1e6), Linear())}, (1000.0, 0.0), "test")
    chosen, _ = integer_nodes(graph, [conv, relu], SpeedModel(shapes, table))
    assert chosen == {id(conv), id(relu)}
