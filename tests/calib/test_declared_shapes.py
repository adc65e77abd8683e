"""Declarations checked by a run on the data (graphc/calib/declared_shapes.py): what only shows
when onnxruntime runs the model - an output declared [1, seqlen] that really is (T, 1, 40) behind
a run-time Reshape target, a value-info [2] that really is [3], an input declared with a literal
0 dim fed [1, 576] - is corrected before any pass runs, one warning line per kind; passes and
MAC counts then see measured shapes, not the declared ones; right declarations cost no run."""
import logging

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import graphc
from graphc.calib import declared_shapes
from graphc.calib.declared_shapes import repair_declarations_by_run
from graphc.cli import main
from graphc.ir import infer_shapes
from graphc.passmanager import PassManager
from support import assert_same_outputs, make_model, run

RNG = np.random.default_rng(0)


def ctc_model() -> onnx.ModelProto:
    """[1, T, 16] -> MatMul -> LogSoftmax -> Reshape to (T, 1, 40) with a target computed at run
    time (its length is a ReduceMax, which inference does not evaluate); declares [1, seqlen]."""
    nodes = [helper.make_node("MatMul", ["x", "W"], ["logits"], name="proj"),
             helper.make_node("LogSoftmax", ["logits"], ["lp"], name="lsm", axis=-1),
             helper.make_node("Shape", ["lp"], ["s"], name="shape"),
             helper.make_node("Gather", ["s", "perm"], ["ts"], name="order", axis=0),
             helper.make_node("Shape", ["ts"], ["n"], name="count"),
             helper.make_node("ReduceMax", ["n"], ["end"], name="end", keepdims=1),
             helper.make_node("Slice", ["ts", "zero", "end"], ["target"], name="take"),
             helper.make_node("Reshape", ["lp", "target"], ["log_probs"], name="to_time_major")]
    inits = [numpy_helper.from_array(RNG.standard_normal((16, 40)).astype(np.float32) / 4, "W"),
             numpy_helper.from_array(np.array([1, 0, 2], np.int64), "perm"),
             numpy_helper.from_array(np.array([0], np.int64), "zero")]
    graph = helper.make_graph(nodes, "ctc", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, "T", 16])],
                              [helper.make_tensor_value_info("log_probs", TensorProto.FLOAT, [1, "seqlen"])], inits,
                              value_info=[helper.make_tensor_value_info("target", TensorProto.INT64, [2])])
    return make_model(graph)


def zero_dim_model() -> onnx.ModelProto:
    """An MLP whose input is declared [0, 576] (and h, y [0, 10]) but is fed [1, 576]."""
    nodes = [helper.make_node("MatMul", ["x", "W"], ["h"], name="fc"),
             helper.make_node("Relu", ["h"], ["y"], name="relu")]
    w = numpy_helper.from_array(RNG.standard_normal((576, 10)).astype(np.float32) / 24, "W")
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [0, 576])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [0, 10])], [w],
                              value_info=[helper.make_tensor_value_info("h", TensorProto.FLOAT, [0, 10])])
    return make_model(graph)


def ctc_feeds(n=3, steps=7):
    return [{"x": RNG.standard_normal((1, steps, 16)).astype(np.float32)} for _ in range(n)]


def warnings_of(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING
            and r.name == "graphc.calib.declared_shapes"]


def test_output_and_value_info_contradicted_by_the_run_are_corrected(caplog, tmp_path):
    proto = ctc_model()
    model = graphc.load(proto)
    assert infer_shapes(model)["log_probs"].shape == (1, "seqlen")  # the declaration fills the gap
    with caplog.at_level(logging.WARNING):
        PassManager("cleanup", data=ctc_feeds()).run(model)
    assert warnings_of(caplog) == [
        "input: 1 graph output shape(s) contradict what onnxruntime computes on the data; contradicting dims "
        "dropped: 'log_probs'",
        "input: 1 value-info shape(s) contradict what onnxruntime computes on the data; dropped: 'target'"]
    (out,) = model.graph.outputs
    assert list(out.shape) == [None, None, None]
    assert infer_shapes(model)["log_probs"].shape == (None, None, None)
    path = graphc.save(model, tmp_path / "out.onnx")
    onnx.checker.check_model(str(path), full_check=True)
    feed = ctc_feeds(1, steps=11)[0]
    assert run(path, feed)[0].shape == (11, 1, 40)
    assert_same_outputs(proto, path, feed)


def test_without_data_nothing_is_run_or_changed(caplog):
    model = graphc.load(ctc_model())
    with caplog.at_level(logging.WARNING):
        PassManager("cleanup").run(model)
    assert not warnings_of(caplog)
    assert list(model.graph.outputs[0].shape) == [1, "seqlen"]


def test_right_declarations_cost_no_run(monkeypatch):
    proto = zero_dim_model()
    for vi in [*proto.graph.input, *proto.graph.output, *proto.graph.value_info]:
        vi.type.tensor_type.shape.dim[0].dim_value = 1
    model = graphc.load(proto)

    def no_run(*args, **kwargs):
        raise AssertionError("a model whose declarations inference confirms was run")

    monkeypatch.setattr(declared_shapes, "create_session", no_run)
    repairs = repair_declarations_by_run(model, [{"x": np.ones((1, 576), np.float32)}])
    assert not repairs


def test_literal_zero_input_dim_is_opened_and_passes_see_measured_shapes(caplog):
    model = graphc.load(zero_dim_model())
    assert infer_shapes(model)["h"].shape == (0, 10)
    with caplog.at_level(logging.WARNING):
        repairs = repair_declarations_by_run(model, [{"x": np.ones((1, 576), np.float32)}])
    assert repairs.opened_inputs == ["x"] and repairs.replaced_outputs == ["y"] and repairs.dropped_info == ["h"]
    assert len(warnings_of(caplog)) == 3
    assert list(model.graph.inputs[0].shape) == [None, 576]
    assert infer_shapes(model)["h"].shape[1:] == (10,) and infer_shapes(model)["h"].shape[0] != 0


def test_cli_opt_on_a_literal_zero_input_counts_macs_and_verifies(tmp_path, capsys):
    src, data, out = tmp_path / "m.onnx", tmp_path / "d.npz", tmp_path / "out.onnx"
    src.write_bytes(zero_dim_model().SerializeToString())
    np.savez(data, x=RNG.standard_normal((4, 1, 576)).astype(np.float32))
    before = src.read_bytes()
    code = main(["opt", str(src), "-p", "cleanup,fold-constants", "--data", str(data), "--verify", "-o", str(out)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert src.read_bytes() == before
    assert "verify: PASS" in captured.out
    macs = next(line for line in captured.out.splitlines() if line.startswith("MACs "))
    assert macs.split()[1] == "5.76k", macs
    saved = onnx.load(str(out))
    assert not saved.graph.input[0].type.tensor_type.shape.dim[0].HasField("dim_value")
    assert sum("made dynamic: 'x'" in line for line in captured.err.splitlines()) == 1


def test_data_of_the_wrong_size_for_a_static_dim_is_still_refused(tmp_path, capsys):
    src, data = tmp_path / "m.onnx", tmp_path / "d.npz"
    proto = zero_dim_model()
    src.write_bytes(proto.SerializeToString())
    np.savez(data, x=RNG.standard_normal((4, 1, 500)).astype(np.float32))
    code = main(["opt", str(src), "-p", "cleanup", "--data", str(data), "-o", str(tmp_path / "o.onnx")])
    err = capsys.readouterr().err
    assert code == 2 and "dim 1 must be 576" in err


@pytest.mark.parametrize("steps", [3, 9])
def test_repairs_are_idempotent(steps):
    model = graphc.load(ctc_model())
    first = repair_declarations_by_run(model, ctc_feeds(1, steps))
    again = repair_declarations_by_run(model, ctc_feeds(1, steps))
    assert first and not again
