"""remove_dead_nodes: graphsurgeon's ``graph.cleanup()`` (default options), linear.

Each case builds the same graph twice, cleans one with graphsurgeon and one with
``remove_dead_nodes``, and compares what is left: the nodes in order, and every remaining tensor's
producers and readers. The work test counts node comparisons (graphsurgeon's attribute-wise
``Node.__eq__``, which ``list.remove`` runs per element it scans), not wall time."""
from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs
import pytest
from onnx import TensorProto, helper, numpy_helper

import graphc
from graphc.ir import remove_dead_nodes


def _vi(name, shape=(2, 3)):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, list(shape))


def _model(nodes, outputs, inits=(), inputs=("x",)):
    graph = helper.make_graph(nodes, "g", [_vi(i) for i in inputs], [_vi(o) for o in outputs], list(inits))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _c(name):
    return numpy_helper.from_array(np.ones((2, 3), np.float32), name)


def _node(op, inputs, outputs, name, **attrs):
    return helper.make_node(op, inputs, outputs, name=name, **attrs)


CASES = {
    "dead_branch": _model([_node("Relu", ["x"], ["a"], "live"), _node("Neg", ["x"], ["d1"], "dead1"),
                           _node("Exp", ["d1"], ["d2"], "dead2")], ["a"]),
    "shared_constant": _model([_node("Add", ["x", "c"], ["a"], "live"), _node("Mul", ["x", "c"], ["d"], "dead"),
                               _node("Sub", ["a", "c"], ["y"], "live2")], ["y"], [_c("c")]),
    "multi_output_half_used": _model([_node("Split", ["x"], ["s0", "s1"], "split", axis=0),
                                      _node("Relu", ["s0"], ["y"], "live")], ["y"]),
    "dead_after_output": _model([_node("Relu", ["x"], ["y"], "live"), _node("Neg", ["y"], ["z"], "dead")], ["y"]),
    "two_inputs_one_unused": _model([_node("Relu", ["x"], ["y"], "live")], ["y"], inputs=("x", "unused")),
    "chain_all_live": _model([_node("Relu", ["x"], ["a"], "n0"), _node("Relu", ["a"], ["b"], "n1"),
                              _node("Relu", ["b"], ["y"], "n2")], ["y"]),
}


def _picture(graph: gs.Graph):
    tensors = graph.tensors()
    return ([n.name for n in graph.nodes], [t.name for t in graph.inputs], [t.name for t in graph.outputs],
            {name: ([n.name for n in t.inputs], [n.name for n in t.outputs]) for name, t in tensors.items()})


@pytest.mark.parametrize("case", sorted(CASES))
def test_same_result_as_graphsurgeon_cleanup(case):
    ours, theirs = graphc.load(CASES[case]).graph, graphc.load(CASES[case]).graph
    theirs.cleanup()
    remove_dead_nodes(ours)
    assert _picture(ours) == _picture(theirs)


def test_dead_nodes_are_removed_and_disconnected():
    graph = graphc.load(CASES["shared_constant"]).graph
    dead = next(n for n in graph.nodes if n.name == "dead")
    c = dead.inputs[1]
    remove_dead_nodes(graph)
    assert [n.name for n in graph.nodes] == ["live", "live2"]
    assert dead.inputs == [] and dead.outputs == []
    assert [n.name for n in c.outputs] == ["live", "live2"]


def test_producer_of_a_graph_input_is_dropped_as_graphsurgeon_does():
    ours, theirs = graphc.load(CASES["chain_all_live"]).graph, graphc.load(CASES["chain_all_live"]).graph
    for graph in (ours, theirs):  # make 'a' a graph input: its producer n0 must go
        graph.inputs.append(next(t for t in graph.nodes[0].outputs))
    theirs.cleanup()
    remove_dead_nodes(ours)
    assert _picture(ours) == _picture(theirs)
    assert [n.name for n in ours.nodes] == ["n1", "n2"]


def test_graph_with_a_body_goes_to_graphsurgeon_which_cleans_the_body():
    then_graph = helper.make_graph([_node("Neg", ["x"], ["dead_in_body"], "body_dead"),
                                    _node("Relu", ["x"], ["t"], "body_live")], "then", [], [_vi("t")])
    else_graph = helper.make_graph([_node("Exp", ["x"], ["e"], "else_live")], "else", [], [_vi("e")])
    cond = numpy_helper.from_array(np.array(True), "cond")
    model = _model([_node("If", ["cond"], ["y"], "if", then_branch=then_graph, else_branch=else_graph),
                    _node("Neg", ["x"], ["d"], "dead")], ["y"], [cond])
    graph = graphc.load(model).graph
    remove_dead_nodes(graph)
    assert [n.name for n in graph.nodes] == ["if"]
    assert [n.name for n in graph.nodes[0].attrs["then_branch"].nodes] == ["body_live"]


N = 2000


def _shared_constant_fan(n):
    """n live readers of constant c first, then n dead ones: removing each dead reader from c's
    reader list by list.remove scans past the n live readers (n*n comparisons)."""
    nodes, live = [], "x"
    for i in range(n):
        nodes.append(_node("Add", [live, "c"], [f"l{i}"], f"live{i}"))
        live = f"l{i}"
    nodes += [_node("Mul", ["x", "c"], [f"d{i}"], f"dead{i}") for i in range(n)]
    return _model(nodes, [live], [_c("c")])


def test_removal_is_linear_when_a_constant_loses_many_readers(node_comparisons):
    graph = graphc.load(_shared_constant_fan(N)).graph
    node_comparisons[0] = 0
    remove_dead_nodes(graph)
    assert len(graph.nodes) == N
    assert len(graph.nodes[0].inputs[1].outputs) == N  # c keeps its live readers only
    assert node_comparisons[0] < N  # per-node detach (graphsurgeon's cleanup): about N*N = 4M
