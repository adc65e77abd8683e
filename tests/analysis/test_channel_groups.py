"""Channel groups on tiny graphs: one test per op family, exact group structure, and for every
prunable group the key property (masking a random subset == removing it, in onnxruntime)."""
from __future__ import annotations

import numpy as np
import pytest

from channel_check import analyse, assert_groups_exact, masked_and_removed, assert_equivalent
from nets import Net, image
from support import node_named, random_feeds


def statuses(analysis) -> list[tuple[int, str]]:
    return [(g.size, g.status) for g in analysis.groups]


def group_of(analysis, node_name: str, role: str = "producer"):
    found = [g for g in analysis.groups for m in g.members if m.node.name == node_name and m.role == role]
    assert found, f"no group with {role} {node_name}"
    return found[0]


def labels(group, role: str) -> list[str]:
    return sorted({m.node.name for m in group.role(role)})


# ---------------------------------------------------------------------------------------------
# convolutions


def test_conv_chain_groups_and_members():
    n = Net(1)
    x = image(n)
    h = n.relu(n.bn(n.conv(x, 3, 8, name="c1"), 8, name="bn1"))
    h = n.relu(n.bn(n.conv(h, 8, 6, name="c2"), 6, name="bn2"))
    y = n.conv(h, 6, 4, name="c3")
    m = n.model(y)
    a = analyse(m)
    assert statuses(a) == [(8, "prunable"), (3, "blocked"), (6, "prunable"), (4, "blocked")]
    g = group_of(a, "c1")
    assert labels(g, "producer") == ["c1"] and labels(g, "consumer") == ["c2"]
    assert labels(g, "norm") == ["bn1"] and labels(g, "bias") == ["c1"]
    assert a.groups[1].blocked == ["graph input 'x'"]
    assert a.groups[3].blocked == ["graph output 'c3'"]
    # per removed channel: c1 row (3*9) + bias + 4 BN params + c2 column (6*9)
    assert g.params_per_channel == 27 + 1 + 4 + 54
    assert_groups_exact(m)


def test_depthwise_couples_in_and_out_and_rewrites_group():
    n = Net(1)
    x = image(n)
    h = n.cbr(x, 3, 8, name="c1")
    h = n.cbr(h, 8, 8, group=8, name="dw")                  # depthwise
    h = n.cbr(h, 8, 16, k=1, name="pw")
    h = n.cbr(h, 16, 32, group=16, name="dw2")             # depthwise, multiplier 2
    m = n.model(n.conv(h, 32, 4, k=1, name="head"))
    a = analyse(m)
    g = group_of(a, "c1")
    assert labels(g, "producer") == ["c1", "dw"] and labels(g, "consumer") == ["pw"]
    g2 = group_of(a, "pw")
    assert g2.size == 16 and labels(g2, "producer") == ["dw2", "pw"]
    assert g2.positions[("dw2", 1)].shape == (16, 2)        # each input channel owns 2 outputs
    masked, removed, _ = masked_and_removed(m, {g2.id: [0, 5, 9]})
    dw2 = node_named(removed, "dw2")
    assert dw2.attrs["group"] == 13 and dw2.inputs[1].values.shape == (26, 1, 3, 3)
    assert_equivalent(masked, removed, random_feeds(m))
    assert_groups_exact(m)


def test_grouped_conv_keeps_counts_divisible_per_group():
    n = Net(1)
    x = image(n)
    h = n.cbr(x, 3, 8, name="c1")
    h = n.cbr(h, 8, 12, group=2, name="g2")                 # 2 groups: 4 in, 6 out each
    m = n.model(n.conv(h, 12, 4, name="head"))
    a = analyse(m)
    g_in = group_of(a, "c1")
    assert g_in.size == 4 and g_in.positions[("c1", 1)].tolist() == [[0, 4], [1, 5], [2, 6], [3, 7]]
    g_out = group_of(a, "g2")
    assert g_out.size == 6 and g_out.positions[("g2", 1)].shape == (6, 2)
    masked, removed, _ = masked_and_removed(m, {g_in.id: [1], g_out.id: [0, 4]})
    conv = node_named(removed, "g2")
    assert conv.attrs["group"] == 2 and conv.inputs[1].values.shape == (8, 3, 3, 3)
    assert_equivalent(masked, removed, random_feeds(m))
    assert_groups_exact(m)


def test_conv_transpose_plain_grouped_and_bias():
    n = Net(1)
    x = image(n)
    h = n.cbr(x, 3, 8, name="c1")
    h = n.relu(n.node("ConvTranspose", [h, n.weight(8, 6, 2, 2), n.const(np.full(6, 0.2))],
                      name="up", kernel_shape=[2, 2], strides=[2, 2]))
    h = n.relu(n.node("ConvTranspose", [h, n.weight(6, 2, 3, 3)], name="gup", kernel_shape=[3, 3],
                      pads=[1, 1, 1, 1], group=2))
    m = n.model(n.conv(h, 4, 2, name="head"))
    a = analyse(m)
    assert labels(group_of(a, "c1"), "consumer") == ["up"]
    g = group_of(a, "up")
    assert g.size == 3 and labels(g, "consumer") == ["gup"]      # grouped: channel j of each group
    assert group_of(a, "gup").size == 2                       # 4 outputs = 2 per group
    assert_groups_exact(m)


def test_depthwise_conv_transpose():
    n = Net(1)
    x = image(n)
    h = n.cbr(x, 3, 6, name="c1")
    h = n.relu(n.node("ConvTranspose", [h, n.weight(6, 1, 2, 2)], name="dwup", kernel_shape=[2, 2],
                      strides=[2, 2], group=6))
    m = n.model(n.conv(h, 6, 2, name="head"))
    a = analyse(m)
    g = group_of(a, "c1")
    assert labels(g, "producer") == ["c1", "dwup"] and labels(g, "consumer") == ["head"]
    masked, removed, _ = masked_and_removed(m, {g.id: [2, 3]})
    assert node_named(removed, "dwup").attrs["group"] == 4
    assert_equivalent(masked, removed, random_feeds(m))


# ---------------------------------------------------------------------------------------------
# Gemm, MatMul


def test_gemm_trans_a_trans_b_and_alpha():
    n = Net(1)
    x = image(n)
    h = n.cbr(x, 3, 8, name="c1")
    f = n.node("Flatten", [n.node("GlobalAveragePool", [h])])
    f = n.relu(n.node("Gemm", [f, n.weight(8, 10), n.const(np.ones(10))], name="fc1"))
    ft = n.node("Transpose", [f], perm=[1, 0])
    f = n.relu(n.node("Gemm", [ft, n.weight(6, 10), n.const(np.ones(6))], name="fc2", transA=1, transB=1))
    m = n.model(n.node("Gemm", [f, n.weight(6, 3)], name="fc3", alpha=0.5))
    a = analyse(m)
    assert labels(group_of(a, "c1"), "consumer") == ["fc1"]
    assert labels(group_of(a, "fc1"), "consumer") == ["fc2"]
    assert labels(group_of(a, "fc2"), "consumer") == ["fc3"]
    assert [g.status for g in a.groups].count("prunable") == 3
    assert_groups_exact(m)


def test_matmul_with_constant_weight_and_bias_add():
    n = Net(1)
    x = n.input("x", (2, 5, 6))
    h = n.relu(n.matmul(x, 6, 16, name="up"))
    m = n.model(n.matmul(h, 16, 6, name="down"))
    a = analyse(m)
    g = group_of(a, "up")
    assert g.size == 16 and labels(g, "consumer") == ["down"]
    assert [mm.node.op for mm in g.role("bias")] == ["Add"]
    assert_groups_exact(m)


# ---------------------------------------------------------------------------------------------
# norms


def test_instance_norm_and_batch_norm():
    n = Net(1)
    x = image(n)
    h = n.node("InstanceNormalization", [n.conv(x, 3, 8, name="c1"), n.const(n.rng.uniform(0.5, 1.5, 8)),
                                         n.const(n.rng.normal(0, 1, 8))], name="in1")
    h = n.cbr(n.relu(h), 8, 8, name="c2")
    m = n.model(n.conv(h, 8, 4, name="head"))
    a = analyse(m)
    assert labels(group_of(a, "c1"), "norm") == ["in1"]
    assert_groups_exact(m)


def test_group_norm_prunes_whole_groups():
    n = Net(1, opset=21)
    x = image(n)
    h = n.conv(n.cbr(x, 3, 8, name="c1"), 8, 8, name="c2")
    h = n.relu(n.node("GroupNormalization", [h, n.const(n.rng.uniform(0.5, 1.5, 8)),
                                             n.const(n.rng.normal(0, 1, 8))], name="gn", num_groups=4))
    y = n.conv(h, 8, 4, name="head")
    m = n.model(y, shapes={y: (1, 4, 8, 8)})
    a = analyse(m)
    g = group_of(a, "c2")
    assert g.size == 4 and g.positions[("c2", 1)].tolist() == [[0, 1], [2, 3], [4, 5], [6, 7]]
    masked, removed, _ = masked_and_removed(m, {g.id: [1, 2]})
    assert node_named(removed, "gn").attrs["num_groups"] == 2
    assert_equivalent(masked, removed, random_feeds(m))


def test_layer_norm_over_channels_is_inexact_and_over_other_axes_passes():
    n = Net(1, opset=17)
    x = n.input("x", (1, 5, 6))
    h = n.matmul(x, 6, 8, name="proj")
    h = n.node("LayerNormalization", [h, n.const(np.ones(8)), n.const(np.full(8, 0.1))], name="ln", axis=-1)
    m = n.model(n.matmul(h, 8, 3, name="head"))
    a = analyse(m)
    g = group_of(a, "proj")
    assert g.status == "inexact" and labels(g, "norm") == ["ln"]
    assert "normalizes over the channel axis" in g.inexact[0]

    n = Net(1, opset=17)
    x = image(n)
    h = n.conv(x, 3, 8, name="c1")          # masked channels are exactly 0 here: LN of 0 is exact in float32
    h = n.relu(n.node("LayerNormalization", [h, n.const(np.ones(8)), n.const(np.full(8, 0.2))], name="ln", axis=-1))
    m = n.model(n.conv(h, 8, 4, name="head"))
    assert group_of(analyse(m), "c1").status == "prunable"    # normalizes over W, not channels
    assert_groups_exact(m)


# ---------------------------------------------------------------------------------------------
# element-wise ops and activations


def test_activations_and_decomposed_patterns_pass_through():
    n = Net(1, opset=20)
    x = image(n)
    h = n.cbr(x, 3, 8, name="c1")
    h = n.node("Clip", [h, n.const(np.float32(0.1)), n.const(np.float32(0.8))])
    h = n.node("HardSigmoid", [h], alpha=0.3, beta=0.4)
    h = n.node("Sigmoid", [n.node("HardSwish", [h])])
    h = n.node("LeakyRelu", [n.node("Tanh", [h])], alpha=0.1)
    h = n.node("Gelu", [h])
    h = n.node("Elu", [n.node("Softplus", [h])])
    # HardSwish as exporters write it: x * clip(x + 3, 0, 6) / 6
    three, zero, six = n.const(np.float32(3)), n.const(np.float32(0)), n.const(np.float32(6))
    h = n.node("Div", [n.node("Mul", [h, n.node("Clip", [n.node("Add", [h, three]), zero, six])]), six])
    h = n.node("Mul", [h, n.node("Sigmoid", [h])])                               # SiLU
    half, one, sqrt2 = n.const(np.float32(0.5)), n.const(np.float32(1)), n.const(np.float32(1.4142135))
    h = n.node("Mul", [n.node("Mul", [h, n.node("Add", [n.node("Erf", [n.node("Div", [h, sqrt2])]), one])]), half])
    m = n.model(n.conv(h, 8, 4, name="head"))
    a = analyse(m)
    g = group_of(a, "c1")
    assert g.status == "prunable" and labels(g, "consumer") == ["head"]
    assert {nd.op for nd in g.passthrough} >= {"Clip", "HardSigmoid", "HardSwish", "Gelu", "Erf", "Div", "Mul"}
    assert_groups_exact(m)


def test_broadcasting_with_per_channel_constants_and_tensors():
    n = Net(1)
    x = image(n)
    gate = n.node("Sigmoid", [n.conv(x, 3, 1, name="spatial")])                   # (N, 1, H, W)
    h = n.node("Mul", [n.conv(x, 3, 8, name="c1"), gate], name="gate")           # masked channels: 0 * gate
    h = n.relu(n.bn(h, 8))
    h = n.node("Add", [h, n.const(n.rng.normal(0, 1, (1, 8, 1, 1)))], name="add_c")
    h = n.node("Mul", [h, n.const(n.rng.uniform(0.5, 1.5, (8, 1, 1)))], name="mul_c")
    h = n.node("Sub", [n.const(n.rng.normal(0, 1, (8, 1, 1))), h], name="sub_c")
    h = n.node("Div", [h, n.const(n.rng.uniform(1, 2, (1, 8, 1, 1)))], name="div_c")
    h = n.node("Max", [h, n.const(n.rng.normal(0, 1, (1, 8, 1, 1)))], name="max_c")
    h = n.node("Min", [h, n.const(np.float32(2.0))], name="min_s")
    h = n.node("PRelu", [h, n.const(n.rng.uniform(0.1, 0.3, (8, 1, 1)))], name="prelu")
    cond = n.const(n.rng.uniform(size=(1, 8, 1, 1)) > 0.5)
    h = n.node("Where", [cond, h, n.node("Mul", [h, n.const(np.float32(0.5))])], name="where_c")
    m = n.model(n.conv(h, 8, 4, name="head"))
    a = analyse(m)
    g = group_of(a, "c1")
    assert g.status == "prunable"
    assert labels(g, "param") == ["add_c", "div_c", "max_c", "mul_c", "prelu", "sub_c", "where_c"]
    assert group_of(a, "spatial").size == 1                                      # broadcast, not coupled
    assert_groups_exact(m)


def test_spatial_gate_on_a_non_zero_masked_value_is_inexact():
    n = Net(1)
    x = image(n)
    gate = n.node("Sigmoid", [n.conv(x, 3, 1, name="spatial")])
    h = n.node("Mul", [n.cbr(x, 3, 8, name="c1"), gate], name="gate")    # relu(BN shift) * gate(x, y)
    g = group_of(analyse(n.model(n.conv(h, 8, 4, name="head"))), "c1")
    assert g.status == "inexact" and "Mul 'gate'" in g.inexact[0]


def test_where_with_spatial_condition_is_inexact():
    n = Net(1)
    x = image(n)
    h = n.cbr(x, 3, 8, name="c1")
    cond = n.node("Slice", [n.node("Greater", [x, n.const(np.float32(0))]), n.const(np.array([0])),
                            n.const(np.array([1])), n.const(np.array([1]))])
    h = n.node("Where", [cond, h, n.node("Mul", [h, n.const(np.float32(0.5))])], name="sel")
    a = analyse(n.model(n.conv(h, 8, 4, name="head")))
    g = group_of(a, "c1")
    assert g.status == "inexact" and "Where 'sel'" in g.inexact[0]


def test_residual_add_merges_producers():
    n = Net(1)
    x = image(n)
    a1 = n.cbr(x, 3, 8, name="stem")
    b = n.bn(n.conv(a1, 8, 8, name="branch"), 8)
    s = n.bn(n.conv(x, 3, 8, k=1, name="short"), 8)
    h = n.relu(n.node("Add", [b, s]))
    h = n.relu(n.node("Add", [n.bn(n.conv(h, 8, 8, name="branch2"), 8), h]))
    m = n.model(n.conv(h, 8, 4, name="head"))
    a = analyse(m)
    g = group_of(a, "branch")
    assert labels(g, "producer") == ["branch", "branch2", "short"]
    assert labels(g, "consumer") == ["branch2", "head"]
    assert_groups_exact(m)


def test_squeeze_excitation_block():
    n = Net(1)
    x = image(n)
    h = n.cbr(x, 3, 8, name="trunk")
    s = n.node("GlobalAveragePool", [h])
    s = n.relu(n.conv(s, 8, 4, k=1, name="se_reduce"))
    s = n.node("HardSigmoid", [n.conv(s, 4, 8, k=1, name="se_expand")], alpha=0.2, beta=0.5)
    h = n.node("Mul", [h, s])
    m = n.model(n.conv(h, 8, 4, name="head"))
    a = analyse(m)
    trunk = group_of(a, "trunk")
    assert labels(trunk, "producer") == ["se_expand", "trunk"]
    assert labels(trunk, "consumer") == ["head", "se_reduce"]
    inner = group_of(a, "se_reduce")
    assert inner.size == 4 and labels(inner, "consumer") == ["se_expand"]
    assert_groups_exact(m)


# ---------------------------------------------------------------------------------------------
# spatial and layout ops


def test_pooling_resize_pad_keep_channels():
    n = Net(1)
    x = image(n)
    h = n.cbr(x, 3, 8, name="c1")
    h = n.node("MaxPool", [h], kernel_shape=[2, 2], strides=[2, 2], pads=[0, 0, 0, 0])
    h = n.node("Pad", [h, n.const(np.array([0, 0, 1, 1, 0, 0, 1, 1]))], mode="reflect")
    h = n.node("AveragePool", [h], kernel_shape=[3, 3])
    h = n.node("Resize", [h, n.const(np.zeros(0, np.float32)), n.const(np.array([1, 1, 2, 2], np.float32))],
               mode="linear")
    h = n.node("AveragePool", [h], kernel_shape=[3, 3], pads=[1, 1, 1, 1], count_include_pad=0)
    h = n.node("Resize", [h, n.const(np.zeros(0, np.float32)), n.const(np.zeros(0, np.float32)),
                          n.const(np.array([1, 8, 6, 6]))], mode="nearest")     # sizes: channel entry rewritten
    m = n.model(n.conv(h, 8, 4, name="head"))
    a = analyse(m)
    g = group_of(a, "c1")
    assert g.status == "prunable" and [mm.role for mm in g.members].count("resize") == 1
    assert_groups_exact(m)


def test_zero_padding_before_pooling_makes_masked_channels_non_constant():
    n = Net(1)
    x = image(n)
    h = n.cbr(x, 3, 8, name="c1")
    h = n.node("Pad", [h, n.const(np.array([0, 0, 1, 1, 0, 0, 1, 1]))], name="zpad")
    h = n.node("AveragePool", [h], kernel_shape=[3, 3])
    g = group_of(analyse(n.model(n.conv(h, 8, 4, name="head"))), "c1")
    assert g.status == "inexact" and "Pad 'zpad'" in g.inexact[0]


def test_concat_on_channels_gives_one_group_per_input():
    n = Net(1)
    x = image(n)
    a1 = n.cbr(x, 3, 4, name="left")
    b1 = n.cbr(x, 3, 6, name="right")
    h = n.node("Concat", [a1, b1], axis=1, name="cat")
    m = n.model(n.conv(h, 10, 4, name="head"))
    a = analyse(m)
    left, right = group_of(a, "left"), group_of(a, "right")
    assert left is not right and (left.size, right.size) == (4, 6)
    assert left.positions[("cat", 1)].ravel().tolist() == [0, 1, 2, 3]
    assert right.positions[("cat", 1)].ravel().tolist() == [4, 5, 6, 7, 8, 9]
    assert labels(left, "consumer") == labels(right, "consumer") == ["head"]
    masked, removed, _ = masked_and_removed(m, {left.id: [1], right.id: [0, 5]})
    head = node_named(removed, "head")
    assert head.inputs[1].values.shape == (4, 7, 3, 3)
    assert_equivalent(masked, removed, random_feeds(m))
    assert_groups_exact(m)


def test_split_and_slice_on_channels_map_ranges_and_rewrite_sizes():
    n = Net(1)
    x = image(n)
    h = n.cbr(x, 3, 8, name="c1")
    p, q = n.node("Split", [h, n.const(np.array([3, 5]))], n_out=2, axis=1, name="split")
    s = n.node("Slice", [h, n.const(np.array([2])), n.const(np.array([6])), n.const(np.array([1]))], name="slice")
    y = n.node("Add", [n.node("Add", [n.conv(p, 3, 4, name="cp"), n.conv(q, 5, 4, name="cq")]),
                       n.conv(s, 4, 4, name="cs")])
    m = n.model(y)
    a = analyse(m)
    parts = [g for g in a.groups if any(mm.node.name == "c1" for mm in g.producers)]
    assert sorted(g.positions[("c1", 1)].ravel().tolist() for g in parts) == [[0, 1], [2], [3, 4, 5], [6, 7]]
    g = next(g for g in parts if g.positions[("c1", 1)].ravel().tolist() == [3, 4, 5])
    assert labels(g, "consumer") == ["cq", "cs"]
    plan = {gg.id: [0] for gg in parts if gg.size > 1}
    masked, removed, _ = masked_and_removed(m, plan)
    split = node_named(removed, "split")
    slice_ = node_named(removed, "slice")
    assert split.inputs[1].values.tolist() == [2, 3]
    assert (slice_.inputs[1].values.tolist(), slice_.inputs[2].values.tolist()) == ([1], [4])
    assert_equivalent(masked, removed, random_feeds(m))
    assert_groups_exact(m)


def test_transpose_moves_the_channel_axis():
    n = Net(1)
    x = image(n)
    h = n.cbr(x, 3, 8, name="c1")
    t = n.relu(n.matmul(n.node("Transpose", [h], perm=[0, 2, 3, 1]), 8, 6, name="mm"))
    h = n.node("Transpose", [t], perm=[0, 3, 1, 2])
    m = n.model(n.conv(h, 6, 4, name="head"))
    a = analyse(m)
    assert labels(group_of(a, "c1"), "consumer") == ["mm"]
    assert labels(group_of(a, "mm"), "consumer") == ["head"]
    assert_groups_exact(m)


def test_gather_on_channels_rewrites_indices():
    n = Net(1)
    x = image(n)
    h = n.cbr(x, 3, 8, name="c1")
    h = n.node("Gather", [h, n.const(np.array([6, 1, 2, 7]))], axis=1, name="pick")
    m = n.model(n.conv(h, 4, 4, name="head"))
    a = analyse(m)
    picked = [g for g in a.groups if any(mm.node.name == "c1" for mm in g.producers)]
    assert sorted(g.size for g in picked) == [4, 4]      # picked channels and the others
    assert_groups_exact(m)


def test_flatten_before_gemm_maps_strides():
    n = Net(1)
    x = image(n)
    h = n.cbr(x, 3, 4, stride=2, name="c1")                    # (1, 4, 4, 4)
    f = n.node("Flatten", [h], axis=1)
    m = n.model(n.node("Gemm", [f, n.weight(5, 64), n.const(np.ones(5))], name="fc", transB=1))
    a = analyse(m)
    g = group_of(a, "c1")
    assert labels(g, "consumer") == ["fc"]
    assert g.positions[("fc", 1) if ("fc", 1) in g.positions else (f, 1)].tolist()[1] == list(range(16, 32))
    assert_groups_exact(m)


def test_reshape_merging_channels_rewrites_its_shape_constant():
    n = Net(1)
    x = image(n)
    h = n.cbr(x, 3, 4, stride=2, name="c1")
    f = n.node("Reshape", [h, n.const(np.array([1, 64]))], name="flat")
    f = n.relu(n.node("Gemm", [f, n.weight(64, 7), n.const(np.ones(7))], name="fc1"))
    m = n.model(n.node("Gemm", [f, n.weight(7, 3)], name="fc2"))
    a = analyse(m)
    g = group_of(a, "c1")
    assert [mm.node.name for mm in g.members if mm.role == "reshape"] == ["flat"]
    masked, removed, _ = masked_and_removed(m, {g.id: [0, 2]})
    flat = node_named(removed, "flat")
    assert flat.inputs[1].values.tolist() == [1, 32]
    assert_equivalent(masked, removed, random_feeds(m))
    assert_groups_exact(m)


def test_paddle_style_computed_reshape_is_traced_and_rewritten():
    """Paddle2ONNX: Reshape(x, Concat(Cast(Slice(Cast(Shape(x)))), Cast(Constant)))."""
    n = Net(1)
    x = image(n)
    h = n.node("GlobalAveragePool", [n.cbr(x, 3, 8, name="c1")])
    batch = n.node("Cast", [n.node("Slice", [n.node("Cast", [n.node("Shape", [h])], to=6),
                                             n.const(np.array([0])), n.const(np.array([1])),
                                             n.const(np.array([0]))])], to=7)
    shape = n.node("Concat", [batch, n.node("Cast", [n.const(np.array([8], np.int32))], to=7, name="chan")], axis=0)
    f = n.node("Reshape", [h, shape], name="flat")
    y = n.node("Add", [n.node("MatMul", [f, n.weight(8, 3)], name="fc"), n.const(np.ones(3))])
    m = n.model(y, shapes={y: (1, 3)})
    a = analyse(m)
    g = group_of(a, "c1")
    assert g.status == "prunable" and labels(g, "consumer") == ["fc"]
    masked, removed, _ = masked_and_removed(m, {g.id: [3, 4, 5]})
    chan = node_named(removed, "chan")
    assert chan.inputs[0].values.tolist() == [5]
    assert_equivalent(masked, removed, random_feeds(m))


def test_shape_feeding_the_same_reshape_follows_at_run_time():
    n = Net(1)
    x = image(n)
    h = n.cbr(x, 3, 8, name="c1")
    nc = n.node("Slice", [n.node("Shape", [h]), n.const(np.array([0])), n.const(np.array([2])), n.const(np.array([0]))])
    f = n.node("Reshape", [h, n.node("Concat", [nc, n.const(np.array([-1]))], axis=0)])      # (N, C, HW)
    y = n.node("MatMul", [n.node("Transpose", [f], perm=[0, 2, 1]), n.weight(8, 3)], name="fc")
    m = n.model(y, shapes={y: (1, 64, 3)})
    g = group_of(analyse(m), "c1")
    assert g.status == "prunable" and labels(g, "consumer") == ["fc"]
    assert_groups_exact(m)


def test_upsample_expand_tile_squeeze_unsqueeze_cast_pass_through():
    for opset, build in (
        (9, lambda n, h: n.node("Upsample", [h, n.const(np.array([1, 1, 2, 2], np.float32))], mode="nearest")),
        (13, lambda n, h: n.node("Tile", [n.node("Expand", [h, n.const(np.array([2, 1, 1, 1]))]),
                                          n.const(np.array([1, 1, 2, 1]))])),
        (13, lambda n, h: n.node("Cast", [n.node("Cast", [n.node("Squeeze", [
            n.node("Unsqueeze", [h, n.const(np.array([2]))]), n.const(np.array([2]))])], to=11)], to=1)),
    ):
        n = Net(5, opset=opset)
        h = build(n, n.cbr(image(n), 3, 8, name="c1"))
        m = n.model(n.conv(h, 8, 4, name="head"))
        g = group_of(analyse(m), "c1")
        assert g.status == "prunable" and labels(g, "consumer") == ["head"]
        assert_groups_exact(m, trials=2)


def test_matmul_with_weights_on_the_left():
    n = Net(5)
    h = n.cbr(image(n), 3, 8, name="c1")
    f = n.node("Reshape", [h, n.const(np.array([8, 64]))])                       # (C, HW)
    f = n.relu(n.node("MatMul", [n.weight(5, 8), f], name="left"))                # W @ X
    m = n.model(n.node("MatMul", [n.weight(3, 5), f], name="left2"))
    a = analyse(m)
    assert labels(group_of(a, "c1"), "consumer") == ["left"]
    assert labels(group_of(a, "left"), "consumer") == ["left2"]
    assert_groups_exact(m)


def test_channel_shuffle_couples_shuffle_groups_and_is_inexact_when_constants_differ():
    n = Net(5)
    h = n.cbr(image(n), 3, 8, name="c1")
    r = n.node("Transpose", [n.node("Reshape", [h, n.const(np.array([1, 2, 4, 8, 8]))], name="split")],
               perm=[0, 2, 1, 3, 4])
    h = n.node("Reshape", [r, n.const(np.array([1, 8, 8, 8]))], name="merge")
    g = group_of(analyse(n.model(n.conv(h, 8, 4, name="head"))), "c1")
    # a position of the split axis stands for 4 channels, whose BN shifts differ
    assert g.size == 2 and g.status == "inexact" and "Reshape 'split'" in g.inexact[0]

    n = Net(5)
    h = n.conv(image(n), 3, 8, name="c1")                  # masked channels are 0: shuffle is exact
    r = n.node("Transpose", [n.node("Reshape", [h, n.const(np.array([1, 2, 4, 8, 8]))])], perm=[0, 2, 1, 3, 4])
    m = n.model(n.conv(n.node("Reshape", [r, n.const(np.array([1, 8, 8, 8]))]), 8, 4, name="head"))
    assert group_of(analyse(m), "c1").status == "prunable"
    assert_groups_exact(m, trials=1)


def test_tensor_read_inside_a_subgraph_blocks():
    from onnx import TensorProto, helper
    n = Net(1)
    h = n.cbr(image(n), 3, 8, name="c1")
    cond = n.input("cond", (), TensorProto.BOOL)
    branch = [helper.make_graph([helper.make_node(op, [h], [f"{op}_out"])], op, [],
                                [helper.make_tensor_value_info(f"{op}_out", TensorProto.FLOAT, None)])
              for op in ("Relu", "Sigmoid")]
    y = n.node("If", [cond], then_branch=branch[0], else_branch=branch[1], name="branch")
    a = analyse(n.model([n.conv(y, 8, 4, name="head")]))
    assert any("is read inside a subgraph" in r for r in group_of(a, "c1").blocked)
    assert group_of(a, "head", "consumer").blocked == ["If 'branch': no channel rule for op 'If'"]


# ---------------------------------------------------------------------------------------------
# attention


def attention_block(n: Net, x: str, tokens=5, dim=12, heads=3, fused=False) -> str:
    hd = dim // heads

    def split_heads(t):
        r = n.node("Reshape", [t, n.const(np.array([1, tokens, heads, hd]))])
        return n.node("Transpose", [r], perm=[0, 2, 1, 3])
    if fused:
        qkv = n.matmul(x, dim, 3 * dim, name="qkv")
        r = n.node("Transpose", [n.node("Reshape", [qkv, n.const(np.array([1, tokens, 3, heads, hd]))])],
                   perm=[2, 0, 3, 1, 4])
        q, k, v = [n.node("Squeeze", [n.node("Slice", [r, n.const(np.array([i])), n.const(np.array([i + 1])),
                                                          n.const(np.array([0]))]), n.const(np.array([0]))])
                   for i in range(3)]
    else:
        q, k, v = (split_heads(n.matmul(x, dim, dim, name=nm)) for nm in ("q", "k", "v"))
    scale = n.const(np.float32(1 / np.sqrt(hd)))
    s = n.node("MatMul", [n.node("Mul", [q, scale]), n.node("Transpose", [k], perm=[0, 1, 3, 2])])
    o = n.node("MatMul", [n.node("Softmax", [s], axis=-1), v])
    o = n.node("Reshape", [n.node("Transpose", [o], perm=[0, 2, 1, 3]), n.const(np.array([1, tokens, dim]))])
    return n.matmul(o, dim, dim, name="out")


def attention_model(fused=False):
    n = Net(2, opset=17)
    x = n.input("x", (1, 5, 12))
    h = n.matmul(x, 12, 12, name="embed")
    y = n.node("Add", [attention_block(n, h, fused=fused), h])
    y = n.node("LayerNormalization", [y, n.const(np.ones(12)), n.const(np.full(12, 0.1))], axis=-1, name="ln")
    return n.model(n.matmul(y, 12, 4, name="head"))


@pytest.mark.parametrize("fused", [False, True], ids=["qkv-separate", "qkv-fused"])
def test_attention_heads_are_grouped(fused):
    m = attention_model(fused)
    a = analyse(m)
    heads = group_of(a, "qkv" if fused else "q")
    assert heads.size == 3 and heads.status == "prunable"
    assert labels(heads, "producer") == (["qkv"] if fused else ["k", "q", "v"])
    assert labels(heads, "consumer") == ["out"]
    assert heads.positions[("qkv" if fused else "q", 2)].shape == (3, 12 if fused else 4)
    assert group_of(a, "embed").status == "inexact"          # residual stream goes through LayerNorm
    masked, removed, _ = masked_and_removed(m, {heads.id: [1]})
    shapes = sorted(nd.inputs[1].values.tolist() for nd in removed.graph.nodes if nd.op == "Reshape")
    assert [1, 5, 2, 4] in shapes or [1, 5, 3, 2, 4] in shapes
    assert [1, 5, 8] in shapes
    assert_equivalent(masked, removed, random_feeds(m))


@pytest.mark.parametrize("fused", [False, True], ids=["qkv-separate", "qkv-fused"])
def test_attention_head_dims_option(fused):
    m = attention_model(fused)
    a = analyse(m, attention="head-dims")
    dims = [g for g in a.groups if g.status == "prunable"]
    # separate projections: q/k dims and v dims are independent; fused: one group
    assert sorted(g.size for g in dims) == ([4] if fused else [4, 4])
    for g in dims:
        masked, removed, _ = masked_and_removed(m, {g.id: [0, 2]}, attention="head-dims")
        assert_equivalent(masked, removed, random_feeds(m))


# ---------------------------------------------------------------------------------------------
# blocking


def blocked_reasons(m) -> list[str]:
    return [r for g in analyse(m).groups for r in g.blocked]


def _net_with(op_builder, opset=13, outputs_extra=()):
    n = Net(3, opset=opset)
    x = image(n)
    h = op_builder(n, n.cbr(x, 3, 8, name="c1"))
    return n, h


def test_unknown_op_blocks_with_its_domain():
    n, h = _net_with(lambda n, h: n.node("FancyAct", [h], domain="com.example", name="fancy"))
    m = n.model(n.conv(h, 8, 4, name="head"))
    a = analyse(m)
    g = group_of(a, "c1")
    assert g.blocked == ["unknown op 'FancyAct' (domain com.example) at FancyAct 'fancy'"]
    assert "unknown op 'FancyAct' (domain com.example) at FancyAct 'fancy'" in group_of(a, "head", "consumer").blocked


def test_standard_op_without_rule_blocks():
    n, h = _net_with(lambda n, h: n.node("CumSum", [h, n.const(np.array(2))], name="cs"))
    h = n.node("Einsum", [h], equation="nchw->nchw", name="ein")
    a = analyse(n.model(n.conv(h, 8, 4, name="head"), opset=13))
    assert group_of(a, "c1").blocked == ["Einsum 'ein': no channel rule for op 'Einsum'"]


@pytest.mark.parametrize("op,attrs,reason", [
    ("Softmax", {"axis": 1}, "Softmax 'red' normalizes over the channel axis"),
    ("ReduceMean", {"axes": [1]}, "ReduceMean 'red' reduces the channel axis"),
    ("ReduceMax", {"axes": [1], "keepdims": 0}, "ReduceMax 'red' reduces the channel axis"),
    ("ArgMax", {"axis": 1}, "ArgMax 'red' reduces the channel axis"),
    ("LRN", {"size": 3}, "LRN 'red' mixes channels with each other or with space"),
    ("DepthToSpace", {"blocksize": 2}, "DepthToSpace 'red' mixes channels with each other or with space"),
])
def test_ops_over_the_channel_axis_block(op, attrs, reason):
    n, h = _net_with(lambda n, h: n.node(op, [h], name="red", **attrs))
    a = analyse(n.model([h]))
    assert reason in group_of(a, "c1").blocked


def test_softmax_and_reduction_over_other_axes_pass():
    n, h = _net_with(lambda n, h: n.node("Softmax", [n.node("ReduceMean", [h], axes=[3])], axis=2))
    m = n.model(n.conv(h, 8, 4, name="head"))
    assert group_of(analyse(m), "c1").status == "prunable"


def test_pad_on_channel_axis_and_graph_output_block():
    n, h = _net_with(lambda n, h: n.node("Pad", [h, n.const(np.array([0, 1, 0, 0, 0, 1, 0, 0]))], name="p"))
    a = analyse(n.model(n.conv(h, 10, 4, name="head")))
    assert group_of(a, "c1").blocked == ["Pad 'p' pads the channel axis"]
    n, h = _net_with(lambda n, h: h)
    a = analyse(n.model([n.conv(h, 8, 4, name="head"), h]))
    assert group_of(a, "c1").blocked == [f"graph output '{h}'"]


def test_data_dependent_shape_blocks():
    def build(n, h):
        c = n.node("Gather", [n.node("Shape", [h], name="shp"), n.const(np.array([1]))], axis=0)
        shape = n.node("Concat", [n.const(np.array([1])), n.node("Mul", [c, n.const(np.array([64]))], name="mul")], axis=0)
        return n.node("Reshape", [h, shape], name="flat")
    n, f = _net_with(build)
    y = n.node("MatMul", [f, n.weight(512, 3)])
    a = analyse(n.model(y, shapes={y: (1, 3)}))
    reasons = group_of(a, "c1").blocked
    assert "Shape 'shp' reads the channel count into Mul 'mul'" in reasons


def test_every_weighted_layer_is_in_a_group_or_blocked_with_reason():
    n, h = _net_with(lambda n, h: n.node("FancyAct", [h], domain="com.example"))
    h = n.conv(h, 8, 6, name="c2")
    m = n.model(n.node("Gemm", [n.node("Flatten", [n.node("GlobalAveragePool", [h])]), n.weight(6, 2)], name="fc"))
    for row in analyse(m).layer_status():
        assert row["groups"], row
        assert row["prunable"] or row["reasons"], row
