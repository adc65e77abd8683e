"""Minimal reproductions of bugs the robustness suite found, each a strict xfail naming the fix.

When a bug is fixed its test XPASSes and fails: delete the marker (and the matching KNOWN_BUGS
entry in tests/property/test_pass_properties.py or tests/robustness/test_corpus.py, if any).
Bugs visible on corpus files are in test_corpus.py's KNOWN_BUGS instead.
"""
from __future__ import annotations

import subprocess
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import graphc
from graphc.stats import model_stats
from support import make_model

vi = helper.make_tensor_value_info


def test_fold_constants_checks_the_size_before_evaluating():
    nodes = [helper.make_node("ConstantOfShape", ["shape"], ["z"],
                              value=numpy_helper.from_array(np.array([1.0], np.float32))),
             helper.make_node("ReduceSum", ["z"], ["s"], keepdims=0),
             helper.make_node("Add", ["x", "s"], ["y"])]
    inits = [numpy_helper.from_array(np.array([1 << 25], np.int64), "shape")]
    proto = make_model(helper.make_graph(nodes, "g", [vi("x", TensorProto.FLOAT, [2])],
                                         [vi("y", TensorProto.FLOAT, [2])], inits))
    model = graphc.load(proto)
    tracemalloc.start()
    try:
        graphc.PassManager("fold-constants").run(model)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 32 << 20, f"fold-constants allocated {peak / 2**20:.0f} MiB for a result it skips"


def test_stats_of_a_float8_weight():
    w8 = helper.make_tensor("w8", TensorProto.FLOAT8E4M3FN, [4], [1.0, 2.0, 0.5, 0.25])
    nodes = [helper.make_node("DequantizeLinear", ["w8", "s"], ["d"]), helper.make_node("Add", ["x", "d"], ["y"])]
    proto = make_model(helper.make_graph(nodes, "g", [vi("x", TensorProto.FLOAT, [4])],
                                         [vi("y", TensorProto.FLOAT, [4])],
                                         [w8, numpy_helper.from_array(np.array(1.0, np.float32), "s")]), 19)
    proto.ir_version = 9
    onnx.checker.check_model(proto, full_check=True)
    stats = model_stats(graphc.load(proto))
    # by definition: 4 float8 values (1 byte each) and the float32 scale (4 bytes)
    assert stats.params == 5 and stats.weight_bytes == 4 * 1 + 4
    assert stats.op_histogram == {"DequantizeLinear": 1, "Add": 1} and stats.macs == 0


def test_stats_of_a_gemm_with_a_rank1_input():
    proto = make_model(helper.make_graph(
        [helper.make_node("Gemm", ["x", "w"], ["y"])], "g", [vi("x", TensorProto.FLOAT, [4])],
        [vi("y", TensorProto.FLOAT, [3])], [numpy_helper.from_array(np.ones((4, 3), np.float32), "w")]))
    stats = model_stats(graphc.load(proto))
    assert stats.params == 4 * 3 and stats.weight_bytes == 4 * 3 * 4
    (node,) = stats.per_node
    assert node.op == "Gemm" and node.macs in (None, 4 * 3)  # unknown, or the vector-matrix product's 12


def _endless_loop_model() -> onnx.ModelProto:
    """A valid model whose Conv input shape is unknown until a Loop of 2^62 trips has run."""
    body = helper.make_graph(
        [helper.make_node("Identity", ["c"], ["c2"]), helper.make_node("Identity", ["v"], ["v2"])], "body",
        [vi("i", TensorProto.INT64, []), vi("c", TensorProto.BOOL, []), vi("v", TensorProto.FLOAT, None)],
        [vi("c2", TensorProto.BOOL, []), vi("v2", TensorProto.FLOAT, None)])
    nodes = [helper.make_node("Loop", ["trips", "", "x"], ["looped"], body=body),
             helper.make_node("Conv", ["looped", "w"], ["y"])]
    inits = [numpy_helper.from_array(np.array(2**62, np.int64), "trips"),
             numpy_helper.from_array(np.ones((1, 1, 1, 1), np.float32), "w")]
    return make_model(helper.make_graph(nodes, "g", [vi("x", TensorProto.FLOAT, [1, 1, 4, 4])],
                                        [vi("y", TensorProto.FLOAT, ["n", "c", "h", "w"])], inits))


def test_inspect_does_not_run_a_hostile_model(tmp_path):
    path = tmp_path / "loop.onnx"
    path.write_bytes(_endless_loop_model().SerializeToString())
    onnx.checker.check_model(str(path), full_check=True)
    try:
        proc = subprocess.run([sys.executable, "-m", "graphc.cli", "inspect", str(path)],
                              capture_output=True, text=True, timeout=20)
    except subprocess.TimeoutExpired:
        pytest.fail("graphc inspect still runs after 20 s")
    assert proc.returncode in (0, 2)


def test_prune_exact_borders_rerun_is_a_no_op():
    """Fixed: the border branch's ones plane was Shape(Slice(x, channel 0)), and that Slice split the
    pruned group in two ('conv14|conv20|conv4#1', not in the recorded metadata), so a second run
    pruned again. The plane now reads only the spatial dims (graphc/analysis/removal.py)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "property"))
    from random_graphs import Recipe, build_model  # tests/property is not on the test path

    recipe = Recipe(opset=21, shape=(1, 4, 3, 1), layers=((779, 231), (481, 777), (680, 337), (864, 551)),
                    seed=30157, menu="prune")
    model = graphc.load(build_model(recipe))
    first = graphc.PassManager("prune{exact-borders=true}").run(model).records[0]
    assert first.stats["border_corrections"] == 1 and first.stats["channels_removed"] == 1
    again = graphc.PassManager("prune{exact-borders=true}").run(model).records[0]
    assert not again.modified, again.stats
