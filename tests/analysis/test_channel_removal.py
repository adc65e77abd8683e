"""remove_channels: slicing, folding of masked constants into consumers, border corrections,
multi-group plans, shape-constant rewrites, errors; mask_channels; importance inputs and savings."""
from __future__ import annotations

import numpy as np
import pytest

from channel_check import analyse, assert_equivalent, masked_and_removed
from graphc.analysis import mask_channels, remove_channels
from graphc.errors import PassError
from support import node_named, op_count, random_feeds, run
from nets import Net, image


def _group(analysis, producer):
    return next(g for g in analysis.groups if any(m.node.name == producer for m in g.producers))


def conv_bn_relu_then(consumer_k: int, consumer_bias=True):
    n = Net(4)
    x = image(n)
    h = n.relu(n.bn(n.conv(x, 3, 8, name="c1"), 8, name="bn1"))
    return n.model(n.conv(h, 8, 4, k=consumer_k, bias=consumer_bias, name="c2"))


def test_bn_shift_through_relu_is_folded_into_a_pointwise_consumer_bias():
    m = conv_bn_relu_then(1)
    g = _group(analyse(m), "c1")
    values = g.analysis.masked_values(g)
    v = values.values[("c1", 1)]
    assert np.all(v == 0)                                   # producers output 0 when masked
    shift = values.values[(node_named(m, "bn1").outputs[0].name, 1)]
    assert np.count_nonzero(shift) > 0                      # BN turns 0 into beta - mean*gamma/sqrt(var+eps)
    masked, removed, result = masked_and_removed(m, {g.id: [0, 2, 3, 6]})
    assert (result.channels, result.folded_biases, result.border_corrections) == (4, 1, 0)
    assert op_count(removed, "Conv") == 2 and len(removed.graph.nodes) == len(m.graph.nodes)
    assert node_named(removed, "c2").inputs[1].values.shape == (4, 4, 1, 1)
    assert_equivalent(masked, removed, random_feeds(m))


def _gemm_then_gemm_without_c():
    n = Net(7)
    x = n.input("x", (2, 6))
    h = n.node("Sigmoid", [n.node("Gemm", [x, n.weight(6, 8), n.const(np.ones(8))], name="fc1")])
    return n.model(n.node("Gemm", [h, n.weight(3, 8)], name="fc2", transB=1, alpha=0.7))


@pytest.mark.parametrize("build, producer, consumer, channels", [
    pytest.param(lambda: conv_bn_relu_then(1, consumer_bias=False), "c1", "c2", [1, 5], id="conv-bias"),
    pytest.param(_gemm_then_gemm_without_c, "fc1", "fc2", [0, 7], id="gemm-c"),
])
def test_consumer_without_bias_gets_one(build, producer, consumer, channels):
    m = build()
    g = _group(analyse(m), producer)
    masked, removed, result = masked_and_removed(m, {g.id: channels})
    assert len(node_named(removed, consumer).inputs) == 3 and result.folded_biases == 1
    assert_equivalent(masked, removed, random_feeds(m))


def test_padded_consumer_gets_an_exact_border_correction():
    m = conv_bn_relu_then(3)
    g = _group(analyse(m), "c1")
    masked, removed, result = masked_and_removed(m, {g.id: [0, 2, 3, 6]})
    assert (result.folded_biases, result.border_corrections) == (0, 1)
    # Shape(start=2) -> Concat([1, 1], .) -> ConstantOfShape -> Conv(ones, W_c) -> Add
    for op in ("Shape", "Concat", "ConstantOfShape", "Add"):
        assert op_count(removed, op) == 1
    assert op_count(removed, "Conv") == 3 and op_count(removed, "Slice") == 0
    assert_equivalent(masked, removed, random_feeds(m))


def _conv_bn_then_padded(opset: int):
    n = Net(4, opset=opset)
    x = image(n, n=2)
    h = n.bn(n.conv(x, 3, 8, name="c1"), 8, name="bn1")
    return n.model(n.conv(h, 8, 4, k=3, name="c2"))


@pytest.mark.parametrize("opset, plane_ops", [(13, {"Shape": 1, "Gather": 1}), (17, {"Shape": 1, "Gather": 0})])
def test_a_border_branch_leaves_the_pruned_group_whole(opset, plane_ops):
    """The ones plane reads only the spatial dims of the consumer's input (Shape with start=2, or a
    Gather below opset 15): a fresh analysis finds c1's group whole, one group now 5 wide; a Slice
    of channel 0 (the old plane) split it into channel 0 and the rest."""
    m = _conv_bn_then_padded(opset)
    g = _group(analyse(m), "c1")
    masked, removed, result = masked_and_removed(m, {g.id: [0, 2, 6]})
    assert result.border_corrections == 1
    assert {op: op_count(removed, op) for op in plane_ops} == plane_ops and op_count(removed, "Slice") == 0
    again = [h for h in analyse(removed).groups if any(mm.node.name == "c1" for mm in h.producers)]
    assert [(h.size, h.prunable) for h in again] == [(5, True)]
    assert_equivalent(masked, removed, random_feeds(m))          # batch 2: the plane broadcasts over it


def test_border_correction_can_be_approximated_by_the_interior_bias():
    m = conv_bn_relu_then(3)
    g = _group(analyse(m), "c1")
    masked, removed, result = masked_and_removed(m, {g.id: [0, 2, 3, 6]}, exact_borders=False)
    assert (result.folded_biases, result.border_corrections) == (1, 0)
    assert len(removed.graph.nodes) == len(m.graph.nodes)
    feeds = random_feeds(m)
    want, got = run(masked, feeds)[0], run(removed, feeds)[0]
    np.testing.assert_allclose(got[:, :, 1:-1, 1:-1], want[:, :, 1:-1, 1:-1], rtol=1e-5, atol=1e-5)
    assert not np.allclose(got, want, atol=1e-4)           # borders differ: that is the approximation


def test_one_plan_removes_inputs_and_outputs_of_the_same_layer():
    n = Net(5)
    x = image(n)
    h = n.cbr(x, 3, 8, name="c1")
    h = n.cbr(h, 8, 6, name="c2")
    m = n.model(n.conv(h, 6, 4, name="c3"))
    a = analyse(m)
    plan = {_group(a, "c1").id: [1, 4, 7], _group(a, "c2").id: [0, 5]}
    masked, removed, result = masked_and_removed(m, plan)
    assert node_named(removed, "c2").inputs[1].values.shape == (4, 5, 3, 3)
    assert result.channels == 5 and result.border_corrections == 2
    assert_equivalent(masked, removed, random_feeds(m))


def test_removal_is_repeatable_on_a_fresh_analysis():
    m = conv_bn_relu_then(1)
    g = _group(analyse(m), "c1")
    _, removed, _ = masked_and_removed(m, {g.id: [0, 1]})
    again = analyse(removed)
    g2 = _group(again, "c1")
    assert g2.size == 6 and g2.prunable
    masked2 = removed.copy()
    mask_channels(masked2.graph, g2, [3])
    remove_channels(removed.graph, g2, [3])
    assert node_named(removed, "c1").inputs[1].values.shape == (5, 3, 3, 3)
    assert_equivalent(masked2, removed, random_feeds(m))


def test_matmul_consumer_folds_into_its_bias_add_or_a_new_add():
    for bias in (True, False):
        n = Net(6)
        x = n.input("x", (1, 5, 6))
        h = n.node("Sigmoid", [n.matmul(x, 6, 10, name="up")])     # sigmoid(0) = 0.5 reaches `down`
        y = n.matmul(h, 10, 3, bias=bias, name="down")
        y = n.node("Relu", [y])
        m = n.model(y)
        g = _group(analyse(m), "up")
        masked, removed, result = masked_and_removed(m, {g.id: [2, 3, 9]})
        assert result.folded_biases == 1
        assert op_count(removed, "Add") == op_count(m, "Add") + (0 if bias else 1)
        assert_equivalent(masked, removed, random_feeds(m))


def test_shared_shape_constant_is_rewritten_copy_on_write():
    n = Net(8)
    x = image(n)
    target = n.const(np.array([1, 64]))
    a1 = n.node("Reshape", [n.cbr(x, 3, 4, stride=2, name="ca"), target], name="ra")
    b1 = n.node("Reshape", [n.cbr(x, 3, 4, stride=2, name="cb"), target], name="rb")
    y = n.node("Add", [n.node("Gemm", [a1, n.weight(64, 3)], name="fa"), n.node("Gemm", [b1, n.weight(64, 3)], name="fb")])
    m = n.model(y)
    a = analyse(m)
    g = _group(a, "ca")
    assert g.prunable
    masked, removed, _ = masked_and_removed(m, {g.id: [1]})
    assert node_named(removed, "ra").inputs[1].values.tolist() == [1, 48]
    assert node_named(removed, "rb").inputs[1].values.tolist() == [1, 64]
    assert_equivalent(masked, removed, random_feeds(m))


def test_equal_split_gets_explicit_sizes():
    n = Net(9, opset=18)
    x = image(n)
    h = n.cbr(x, 3, 8, name="c1")
    p, q = n.node("Split", [h], n_out=2, axis=1, num_outputs=2, name="split")
    m = n.model(n.node("Add", [n.conv(p, 4, 4, name="cp"), n.conv(q, 4, 4, name="cq")]))
    a = analyse(m)
    g = next(g for g in a.groups if g.positions.get(("c1", 1)) is not None and g.positions[("c1", 1)].min() == 0)
    masked, removed, _ = masked_and_removed(m, {g.id: [1]})
    split = node_named(removed, "split")
    assert "num_outputs" not in split.attrs and split.inputs[1].values.tolist() == [3, 4]
    assert_equivalent(masked, removed, random_feeds(m))


def test_slice_with_open_end_gets_normalized_bounds():
    n = Net(10)
    x = image(n)
    h = n.cbr(x, 3, 8, name="c1")
    s = n.node("Slice", [h, n.const(np.array([-5])), n.const(np.array([2**62])), n.const(np.array([1]))], name="sl")
    m = n.model(n.node("Add", [n.conv(s, 5, 4, name="cs"), n.conv(h, 8, 4, name="ch")]))
    a = analyse(m)
    inside = next(g for g in a.groups if g.positions.get(("c1", 1)) is not None
                  and g.positions[("c1", 1)].min() == 3)
    outside = next(g for g in a.groups if g.positions.get(("c1", 1)) is not None
                   and g.positions[("c1", 1)].min() == 0)
    masked, removed, _ = masked_and_removed(m, {inside.id: [0], outside.id: [1]})
    sl = node_named(removed, "sl")
    assert (sl.inputs[1].values.tolist(), sl.inputs[2].values.tolist()) == ([2], [6])
    assert_equivalent(masked, removed, random_feeds(m))


def test_errors_name_the_group_and_reason():
    m = conv_bn_relu_then(1)
    a = analyse(m)
    g = _group(a, "c1")
    with pytest.raises(PassError, match="would leave empty tensors"):
        remove_channels(m.graph, g, range(8))
    with pytest.raises(PassError, match="has 8 channels"):
        remove_channels(m.graph, g, [8])
    with pytest.raises(PassError, match="blocked: graph input 'x'"):
        remove_channels(m.graph, a.groups[1], [0])
    with pytest.raises(PassError, match="computed on another graph"):
        remove_channels(m.copy().graph, g, [0])
    with pytest.raises(TypeError):
        remove_channels(m.graph, {g: [0]}, [1])
    assert remove_channels(m.graph, g, []).channels == 0


def _layer_norm_between_matmuls():
    """proj -> LayerNormalization over the channel axis -> head: proj's group is inexact."""
    n = Net(11, opset=17)
    x = n.input("x", (1, 5, 6))
    h = n.node("LayerNormalization", [n.matmul(x, 6, 8, name="proj"), n.const(np.ones(8)),
                                      n.const(np.zeros(8))], axis=-1)
    return n.model(n.matmul(h, 8, 3, name="head"))


def test_inexact_group_needs_allow_inexact():
    m = _layer_norm_between_matmuls()
    g = _group(analyse(m), "proj")
    with pytest.raises(PassError, match="inexact: LayerNormalization"):
        remove_channels(m.graph, g, [0])


def test_inexact_group_removal_with_allow_inexact_still_gives_a_valid_model():
    m = _layer_norm_between_matmuls()
    g = _group(analyse(m), "proj")
    _, removed, result = masked_and_removed(m, {g.id: [0, 3]}, allow_inexact=True)
    assert result.channels == 2
    assert run(removed, random_feeds(m))[0].shape == (1, 5, 3)


def test_mask_channels_zeroes_producer_rows_and_biases():
    m = conv_bn_relu_then(1)
    g = _group(analyse(m), "c1")
    masked = m.copy()
    zeroed = mask_channels(masked.graph, g, [2, 5])
    w = masked.graph.tensors()[node_named(masked, "c1").inputs[1].name].values
    b = masked.graph.tensors()[node_named(masked, "c1").inputs[2].name].values
    assert zeroed == 2 * 27 + 2
    assert not w[[2, 5]].any() and not b[[2, 5]].any() and w[[0, 1, 3, 4, 6, 7]].all()


def test_importance_inputs_and_savings_per_channel():
    m = conv_bn_relu_then(1)
    a = analyse(m)
    g = _group(a, "c1")
    weights = {(mm.role, mm.node.name, mm.slot[0]): w for mm, w in g.weights()}
    conv_w = node_named(m, "c1").inputs[1]
    prod = weights[("producer", "c1", conv_w.name)]
    assert prod.shape == (8, 27) and np.array_equal(prod[3], conv_w.values[3].reshape(-1))
    cons = weights[("consumer", "c2", node_named(m, "c2").inputs[1].name)]
    assert cons.shape == (8, 4)
    assert len([k for k in weights if k[0] == "norm"]) == 4
    _, _, result = masked_and_removed(m, {g.id: [0, 3]})
    assert result.params == 2 * g.params_per_channel
    # MACs per channel: c1 output row (27 MACs x 64 px) + c2 input column (4 x 64 px)
    assert g.macs_per_channel == 27 * 64 + 4 * 64
