"""Bounded work on small files (issue 15): fold-constants refuses large or slow evaluations before
evaluating them, and node removal in cleanup / fold-constants / canonicalize is linear."""
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import graphc
import graphc.passes.fold_constants as fold_module
from graphc.passmanager import PassManager
from support import assert_same_outputs, assert_valid, make_model, op_count, random_feeds


def _vi(name, shape, elem=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, elem, shape)


class Evaluated(BaseException):
    """Raised by the stand-in evaluator; a BaseException so that no ``except Exception`` hides it."""


def _never_evaluate(monkeypatch):
    def refuse(node, *args):
        raise Evaluated(f"{node.op} was handed to the reference evaluator")
    monkeypatch.setattr(fold_module, "evaluate_node", refuse)


def _outer_product_model(n):
    a = numpy_helper.from_array(np.ones((n, 1), np.float32), "a")
    b = numpy_helper.from_array(np.ones((1, n), np.float32), "b")
    nodes = [helper.make_node("MatMul", ["a", "b"], ["ab"]),
             helper.make_node("ReduceSum", ["ab"], ["s"], keepdims=0),
             helper.make_node("Add", ["x", "s"], ["y"])]
    return make_model(helper.make_graph(nodes, "g", [_vi("x", [1])], [_vi("y", [1])], [a, b]), opset=13)


def test_constant_outer_product_refused_before_evaluation(monkeypatch):
    model = graphc.load(_outer_product_model(40000))
    _never_evaluate(monkeypatch)
    record = PassManager("fold-constants").run(model).records[0]
    assert not record.modified
    assert record.skipped["result larger than max-elements"] == 1
    assert op_count(model, "MatMul") == 1


def test_constant_outer_product_peak_memory_stays_small(tmp_path):
    # 320 KB of inputs, a 6.4 GB result: the old code evaluated it (6.2 GB peak) then dropped it
    path = tmp_path / "outer.onnx"
    path.write_bytes(_outer_product_model(40000).SerializeToString())
    script = textwrap.dedent(f"""
        import graphc
        model = graphc.load({str(path)!r})
        graphc.PassManager("cleanup,fold-constants,canonicalize").run(model)
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                print(int(line.split()[1]) * 1024)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr[-2000:]
    peak = int(out.stdout.split()[-1])
    assert peak < 1.5 * 2**30, f"peak RSS {peak / 2**30:.2f} GiB"


def _grid_sample_model(size, opset=16):
    rng = np.random.default_rng(0)
    image = numpy_helper.from_array(rng.standard_normal((1, 1, size, size)).astype(np.float32), "image")
    grid = numpy_helper.from_array(rng.uniform(-1, 1, (1, size, size, 2)).astype(np.float32), "grid")
    nodes = [helper.make_node("GridSample", ["image", "grid"], ["g"]),
             helper.make_node("Add", ["x", "g"], ["y"])]
    graph = helper.make_graph(nodes, "g", [_vi("x", [1, 1, size, size])], [_vi("y", [1, 1, size, size])],
                              [image, grid])
    return make_model(graph, opset=opset)


def test_constant_grid_sample_left_with_a_reason(monkeypatch):
    # 128x128 outputs: ~10 s in onnx's Python GridSample kernel (0.6 ms per output element)
    model = graphc.load(_grid_sample_model(128))
    _never_evaluate(monkeypatch)
    record = PassManager("fold-constants").run(model).records[0]
    assert not record.modified
    assert record.skipped == {"GridSample: evaluation would exceed max-work": 1}
    assert op_count(model, "GridSample") == 1


def test_small_constant_grid_sample_still_folds(tmp_path):
    proto = _grid_sample_model(4)
    model = graphc.load(proto)
    record = PassManager("fold-constants").run(model).records[0]
    assert record.stats == {"folded_nodes": 1}
    assert op_count(model, "GridSample") == 0
    path = assert_valid(model, tmp_path)
    assert_same_outputs(proto, path, random_feeds(proto), rtol=1e-5, atol=1e-6)
    assert not PassManager("fold-constants").run(model).records[0].modified


def test_op_without_cost_model_not_evaluated(monkeypatch):
    a = numpy_helper.from_array(np.ones((3, 3), np.float32), "a")
    nodes = [helper.make_node("Einsum", ["a", "a"], ["aa"], equation="ij,jk->ik"),
             helper.make_node("MatMul", ["x", "aa"], ["y"])]
    model = graphc.load(make_model(helper.make_graph(nodes, "g", [_vi("x", [2, 3])], [_vi("y", [2, 3])], [a]), 13))
    _never_evaluate(monkeypatch)
    record = PassManager("fold-constants").run(model).records[0]
    assert record.skipped == {"Einsum: no cost model for its evaluation; not evaluated": 1}


def test_max_work_option_bounds_cheap_ops_too(monkeypatch):
    a = numpy_helper.from_array(np.ones((8, 8), np.float32), "a")
    nodes = [helper.make_node("Neg", ["a"], ["n"]), helper.make_node("Add", ["x", "n"], ["y"])]
    proto = make_model(helper.make_graph(nodes, "g", [_vi("x", [8, 8])], [_vi("y", [8, 8])], [a]), 13)
    model = graphc.load(proto)
    _never_evaluate(monkeypatch)
    record = PassManager("fold-constants{max-work=100}").run(model).records[0]
    assert record.skipped == {"Neg: evaluation would exceed max-work": 1}
    monkeypatch.undo()
    assert PassManager("fold-constants").run(model).records[0].stats == {"folded_nodes": 1}


# -- linear removal: counted node comparisons, not wall time ----------------------------------------

def _chain(pattern, n, *, const_prefix=0, out_shape=(2, 3)):
    """x -> ops of ``pattern`` repeated to n nodes -> y; ``const_prefix`` constant Neg nodes feed an
    Add at the end (they fold) after the variable chain in node order."""
    nodes, x = [], "x"
    for i in range(n):
        op, attrs = pattern[i % len(pattern)]
        nodes.append(helper.make_node(op, [x], [f"t{i}"], name=f"n{i}", **attrs))
        x = f"t{i}"
    c = "c"
    for i in range(const_prefix):
        nodes.append(helper.make_node("Neg", [c], [f"c{i}"], name=f"neg{i}"))
        c = f"c{i}"
    if const_prefix:
        nodes.append(helper.make_node("Add", [x, c], ["y"]))
        x = "y"
    init = [numpy_helper.from_array(np.ones((2, 3), np.float32), "c")]
    graph = helper.make_graph(nodes, "chain", [_vi("x", [2, 3])], [_vi(x, list(out_shape))], init)
    return make_model(graph, opset=13)


N = 2000


def test_cleanup_bypass_loop_is_linear(node_comparisons):
    # Relu, Identity, Relu, Identity...: each Identity removed used to scan past the Relus before it
    model = graphc.load(_chain([("Relu", {}), ("Identity", {})], N))
    node_comparisons[0] = 0
    record = PassManager("cleanup").run(model).records[0]
    assert record.stats["identity_removed"] == N // 2  # the last Relu takes over the output name
    assert op_count(model, "Relu") == N // 2 and len(model.graph.nodes) == N // 2
    assert node_comparisons[0] < N  # old code: ~N^2/8 = 500k comparisons


def test_fold_constants_removal_is_linear(node_comparisons, tmp_path):
    proto = _chain([("Relu", {})], N, const_prefix=N)
    model = graphc.load(proto)
    node_comparisons[0] = 0
    record = PassManager("fold-constants").run(model).records[0]
    assert record.stats["folded_nodes"] == N
    assert op_count(model, "Neg") == 0
    assert node_comparisons[0] < N  # old code: N Relus scanned per folded Neg, 4M comparisons
    path = assert_valid(model, tmp_path)
    assert_same_outputs(proto, path, random_feeds(proto), rtol=0, atol=0)


def test_canonicalize_transpose_pairs_are_linear(node_comparisons, tmp_path):
    proto = _chain([("Transpose", {"perm": [1, 0]})], N + 1, out_shape=(3, 2))
    model = graphc.load(proto)
    node_comparisons[0] = 0
    record = PassManager("canonicalize").run(model).records[0]
    assert record.stats["transpose_pair"] == N // 2
    assert op_count(model, "Transpose") == 1
    assert node_comparisons[0] < N  # old code: ~N^2/8 comparisons
    path = assert_valid(model, tmp_path)
    assert_same_outputs(proto, path, random_feeds(proto), rtol=0, atol=0)


def test_cleanup_infers_shapes_without_the_bypassed_nodes(tmp_path):
    # the Identity is bypassed (left detached until the loop ends) before the Reshape asks for
    # shapes: inference must not see the detached node, or the no-op Reshape survives one run
    shape = numpy_helper.from_array(np.array([2, 3], np.int64), "shape")
    nodes = [helper.make_node("Identity", ["x"], ["i"]), helper.make_node("Relu", ["i"], ["r"]),
             helper.make_node("Reshape", ["r", "shape"], ["y"])]
    proto = make_model(helper.make_graph(nodes, "g", [_vi("x", [2, 3])], [_vi("y", [2, 3])], [shape]), 13)
    model = graphc.load(proto)
    record = PassManager("cleanup").run(model).records[0]
    assert record.stats["identity_removed"] == 1 and record.stats["noop_reshape_removed"] == 1
    assert [n.op for n in model.graph.nodes] == ["Relu"]
    path = assert_valid(model, tmp_path)
    assert_same_outputs(proto, path, random_feeds(proto), rtol=0, atol=0)
    assert not PassManager("cleanup").run(model).records[0].modified
