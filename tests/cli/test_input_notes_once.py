"""Load's notes about the input (local functions inlined, declarations repaired) are printed once
per command, although a lossy `graphc opt` run with --verify and --report reads its input again
for the reference, the per-layer error and the report."""
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from graphc.cli import main

RNG = np.random.default_rng(3)


def function_model() -> onnx.ModelProto:
    """x [1, 3, 8, 8] -> lib.Block(Conv, Relu) -> Conv -> y, y declared without a shape."""
    body = [helper.make_node("Conv", ["x", "w"], ["c"], name="Conv_0", pads=[1, 1, 1, 1]),
            helper.make_node("Relu", ["c"], ["y"], name="Relu_1")]
    block = helper.make_function("lib", "Block", ["x", "w"], ["y"], body, [helper.make_opsetid("", 17)])
    weights = [numpy_helper.from_array((RNG.standard_normal(s) * 0.3).astype(np.float32), n)
               for n, s in (("w0", (8, 3, 3, 3)), ("w1", (8, 8, 3, 3)))]
    graph = helper.make_graph(
        [helper.make_node("Block", ["x", "w0"], ["h"], name="/block", domain="lib"),
         helper.make_node("Conv", ["h", "w1"], ["y"], name="head", pads=[1, 1, 1, 1])],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], weights)
    model = helper.make_model(graph, functions=[block],
                              opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("lib", 1)])
    model.ir_version = 8
    return model


def test_lossy_opt_with_verify_and_report_prints_each_input_note_once(tmp_path, capsys):
    src, data = tmp_path / "m.onnx", tmp_path / "d.npz"
    onnx.save(function_model(), src)
    np.savez(data, x=RNG.standard_normal((4, 1, 3, 8, 8)).astype(np.float32))
    code = main(["opt", str(src), "-p", "quant", "--data", str(data), "--verify", "--min-sqnr", "0",
                 "-o", str(tmp_path / "out.onnx"), "--report", str(tmp_path / "r.json")])
    err = capsys.readouterr().err
    assert code == 0, err
    notes = [line for line in err.splitlines() if line.startswith("graphc: WARNING: input: ")]
    assert len([n for n in notes if "local function(s) 'lib.Block' inlined" in n]) == 1, err
    assert len(notes) == len(set(notes)) >= 2, err  # the shape-less output's repair is said once too
