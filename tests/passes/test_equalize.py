"""equalize: Conv pairs that must / must not be rescaled, exactness in onnxruntime, idempotence,
the real PP-OCR models, and the int8 SQNR gain on a MobileNetV2-style block with unbalanced
channel ranges; bias absorption (absorb-bias) on Conv -> [BN] -> [Relu] -> Conv nets: where it
must and must not move a bias, from data and from BatchNorm statistics, exactness claims, the
activation range and the int8 SQNR it buys."""
import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import graphc
from graphc.calib.data import open_data
from graphc.errors import DataError, OptionError
from graphc.ir.outputs import with_outputs
from support import (PPOCR_SHAPES, assert_same_outputs, assert_valid, make_model, op_count, random_feeds, run,
                     sqnr_over)

RTOL, ATOL = 1e-5, 1e-6
SHAPES = {"y": [1, 16, 12, 12], "side": [1, 64, 1, 1]}


def _w(rng, *shape):
    fan_in = int(np.prod(shape[1:]))
    return (rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)


def _mbv2_block(act="Relu", residual=True, unbalance=True, seed=0, extra_reader=False):
    """x(1x16x12x12) -> expand 1x1 (64) -> act -> dw 3x3 -> act -> project 1x1 (16) [+ x] -> y.

    ``unbalance`` applies the inverse of equalization with scales spread over four decades (what
    folding BatchNormalization into depthwise Convs often leaves): the function is unchanged,
    per-tensor ranges are not."""
    rng = np.random.default_rng(seed)
    c, e = 16, 64
    w1, b1 = _w(rng, e, c, 1, 1), (rng.standard_normal(e) * 0.1).astype(np.float32)
    w2, b2 = _w(rng, e, 1, 3, 3), (rng.standard_normal(e) * 0.1).astype(np.float32)
    w3, b3 = _w(rng, c, e, 1, 1), (rng.standard_normal(c) * 0.1).astype(np.float32)
    if unbalance:
        k1 = 10.0 ** rng.uniform(-2, 2, e)
        k2 = 10.0 ** rng.uniform(-2, 2, e)
        w1, b1 = w1 * k1[:, None, None, None], b1 * k1
        w2 = w2 / k1[:, None, None, None] * k2[:, None, None, None]
        b2 = b2 * k2
        w3 = w3 / k2[None, :, None, None]
    inits = {"w1": w1, "b1": b1, "w2": w2, "b2": b2, "w3": w3, "b3": b3, "six": np.float32(6), "zero": np.float32(0)}
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="expand")]
    nodes += _act(act, "c1", "a1", "act1")
    nodes.append(helper.make_node("Conv", ["a1", "w2", "b2"], ["c2"], name="dw", group=e, pads=[1, 1, 1, 1]))
    nodes += _act(act, "c2", "a2", "act2")
    nodes.append(helper.make_node("Conv", ["a2", "w3", "b3"], ["c3"], name="project"))
    outputs = ["y"]
    if residual:
        nodes.append(helper.make_node("Add", ["c3", "x"], ["y"], name="residual"))
    else:
        nodes.append(helper.make_node("Identity", ["c3"], ["y"], name="out"))
    if extra_reader:
        nodes.append(helper.make_node("GlobalAveragePool", ["a1"], ["side"], name="side"))
        outputs.append("side")
    graph = helper.make_graph(
        nodes, "mbv2", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, c, 12, 12])],
        [helper.make_tensor_value_info(o, TensorProto.FLOAT, SHAPES[o]) for o in outputs],
        [numpy_helper.from_array(np.asarray(v, np.float32), k) for k, v in inits.items()])
    return graphc.load(make_model(graph, opset=13))


def _act(act, x, y, name):
    if act is None:
        return [helper.make_node("Identity", [x], [y], name=name)]
    if act == "Clip":
        return [helper.make_node("Clip", [x, "zero", "six"], [y], name=name)]
    if act == "LeakyRelu":
        return [helper.make_node("LeakyRelu", [x], [y], name=name, alpha=0.1)]
    return [helper.make_node(act, [x], [y], name=name)]


def _equalize(model, text="equalize"):
    reference = model.copy()
    report = graphc.PassManager(text).run(model)
    return reference, report.records[-1]


def _ranges(model, name):
    w = next(n for n in model.graph.nodes if n.name == name).inputs[1].values
    r = np.abs(w).reshape(w.shape[0], -1).max(axis=1)
    return r.max() / r.min()


@pytest.mark.parametrize("act", ["Relu", "LeakyRelu"])
def test_equalizes_mobilenet_block_exactly(act, tmp_path):
    model = _mbv2_block(act)
    spread = _ranges(model, "expand")
    reference, result = _equalize(model)
    assert result.modified and result.stats["pairs_equalized"] == 2
    assert {d["node"] for d in result.details} == {"expand", "dw"}
    assert op_count(model, "Conv") == 3 and len(model.graph.nodes) == 6
    assert _ranges(model, "expand") < spread / 100
    assert_valid(model, tmp_path)
    feeds = random_feeds(reference, seed=1)
    assert_same_outputs(reference, model, feeds, rtol=RTOL, atol=ATOL)
    again = graphc.PassManager("equalize").run(model).records[-1]
    assert not again.modified


def test_identity_between_convs_is_equalized():
    model = _mbv2_block(None, residual=False)
    graphc.PassManager("cleanup").run(model)  # drops the Identity nodes
    reference, result = _equalize(model)
    assert result.stats["pairs_equalized"] == 2
    assert_same_outputs(reference, model, random_feeds(reference), rtol=RTOL, atol=ATOL)


def test_clip_between_convs_is_not_equalized():
    model = _mbv2_block("Clip")
    before = [n.inputs[1].values.copy() for n in model.graph.nodes if n.op == "Conv"]
    _, result = _equalize(model)
    assert not result.modified
    assert result.skipped == {"Clip between Convs is not positively homogeneous": 2}
    after = [n.inputs[1].values for n in model.graph.nodes if n.op == "Conv"]
    assert all(np.array_equal(a, b) for a, b in zip(before, after))


def test_channel_read_elsewhere_is_not_rescaled():
    model = _mbv2_block("Relu", extra_reader=True)
    reference, result = _equalize(model)
    assert result.stats["pairs_equalized"] == 1  # (dw, project) only: act1 is read by 'side'
    assert result.skipped == {"activation output has other readers or is a graph output": 1,
                              "bias not absorbed: through Relu it is exact only on data "
                              "(absorb-bias=data or gaussian)": 1}
    assert [d["node"] for d in result.details] == ["dw"]
    assert_same_outputs(reference, model, random_feeds(reference), rtol=RTOL, atol=ATOL)


def test_ignore_pattern():
    model = _mbv2_block("Relu")
    _, result = _equalize(model, "equalize{ignore=project}")
    assert result.stats["pairs_equalized"] == 1


def test_balanced_model_is_left_alone():
    model = _mbv2_block("Relu", unbalance=False)
    graphc.PassManager("equalize").run(model)
    assert not graphc.PassManager("equalize").run(model).records[-1].modified


@pytest.mark.parametrize("per_channel", [False, True])
def test_equalization_improves_int8_sqnr(per_channel):
    rng = np.random.default_rng(3)
    feeds = [{"x": rng.standard_normal((1, 16, 12, 12)).astype(np.float32)} for _ in range(8)]
    quant = f"quant{{calib=minmax placement=all per-channel={str(per_channel).lower()}}}"
    sqnr = {}
    for pipeline in (quant, "equalize," + quant):
        model = _mbv2_block("Relu", residual=False)
        reference = model.copy()
        graphc.PassManager(pipeline, data=open_data(feeds, model)).run(model)
        sqnr[pipeline] = sqnr_over(reference, model, feeds)
    plain, equalized = sqnr[quant], sqnr["equalize," + quant]
    # measured: per-tensor 0.0 -> 34.9 dB, per-channel 1.2 -> 35.1 dB (the activation ranges too)
    assert equalized > plain + 10, sqnr


def test_ppocr_models_stay_exact(ppocr):
    kind, path = ppocr
    model = graphc.load(path)
    reference = model.copy()
    graphc.PassManager("fold-bn,equalize").run(model)
    feeds = random_feeds(reference, {"x": PPOCR_SHAPES[kind]})
    assert_same_outputs(reference, model, feeds, rtol=1e-4, atol=1e-4)


# -- bias absorption -------------------------------------------------------------------------------

HOT = 4.0  # bias of the "hot" channel 0 of conv1 (outputs stay ~1, so atol 1e-6 is a few ulps)


def _hot_net(*, hot_l1=0.2, pads2=0, seed=0, bn=False, act="Relu", bias=True, group2=1):
    """x(1x4x8x8) -> conv1 1x1 (8) [-> bn1] [-> act] -> conv2 3x3 (6, or depthwise 8) -> y.

    Channel 0 of conv1 has bias ``HOT`` and weights of L1 norm ``hot_l1``: for inputs in [-1, 1]
    its pre-activation lies in ``[HOT - hot_l1, HOT + hot_l1]``, reached by :func:`_corner`.
    With ``bn`` a BatchNormalization (running statistics of conv1's output on N(0, 1) inputs;
    channel 0 gamma 0.25, beta 2, so its output is ~N(2, 0.25^2) and 3 sigma above 1.25; others
    gamma 0.5, beta 0) follows conv1."""
    rng = np.random.default_rng(seed)
    w1 = (rng.standard_normal((8, 4, 1, 1)) * 0.5).astype(np.float32)
    w1[0] *= hot_l1 / np.abs(w1[0]).sum()
    b1 = (rng.standard_normal(8) * 0.1).astype(np.float32)
    b1[0] = HOT
    cout2, cin2 = (8, 1) if group2 > 1 else (6, 8)
    w2 = (rng.standard_normal((cout2, cin2, 3, 3)) * 0.1).astype(np.float32)
    b2 = (rng.standard_normal(cout2) * 0.1).astype(np.float32)
    inits = {"w1": w1, "w2": w2}
    if bias:
        inits.update(b1=b1, b2=b2)
    nodes = [helper.make_node("Conv", ["x", "w1"] + (["b1"] if bias else []), ["c1"], name="conv1")]
    pre = "c1"
    if bn:
        gamma, beta = np.full(8, 0.5, np.float32), np.zeros(8, np.float32)
        gamma[0], beta[0] = 0.25, 2.0
        inits.update(gamma=gamma, beta=beta, mean=b1 if bias else np.zeros(8, np.float32),
                     var=(w1.reshape(8, -1) ** 2).sum(axis=1).astype(np.float32))
        nodes.append(helper.make_node("BatchNormalization", ["c1", "gamma", "beta", "mean", "var"], ["n1"],
                                      name="bn1"))
        pre = "n1"
    if act:
        nodes.append(helper.make_node(act, [pre], ["a1"], name="act1"))
        pre = "a1"
    nodes.append(helper.make_node("Conv", [pre, "w2"] + (["b2"] if bias else []), ["y"], name="conv2",
                                  pads=[pads2] * 4, group=group2))
    side = 8 - 2 + 2 * pads2
    graph = helper.make_graph(
        nodes, "hot", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, cout2, side, side])],
        [numpy_helper.from_array(np.asarray(v, np.float32), k) for k, v in inits.items()])
    return graphc.load(make_model(graph, opset=13))


def _box_feeds(n, seed, low=-1.0, high=1.0):
    rng = np.random.default_rng(seed)
    return [{"x": rng.uniform(low, high, (1, 4, 8, 8)).astype(np.float32)} for _ in range(n)]


def _corner(model, t=1.0):
    """The input in [-t, t] that minimizes conv1's channel 0 everywhere: ``-t sign(w1[0])``."""
    w = next(n for n in model.graph.nodes if n.name == "conv1").inputs[1].values[0, :, 0, 0]
    return {"x": np.broadcast_to(-t * np.sign(w)[None, :, None, None], (1, 4, 8, 8)).astype(np.float32).copy()}


def _calibration(model):
    """Box-uniform feeds plus the corner, so the measured minimum of channel 0 is its true minimum."""
    return [_corner(model)] + _box_feeds(15, seed=1)


def _node(model, name):
    return next(n for n in model.graph.nodes if n.name == name)


def _bias(model, name):
    conv = _node(model, name)
    return conv.inputs[2].values.copy() if len(conv.inputs) > 2 else None


def _tensor_range(model, name, feeds):
    probe = with_outputs(model, [name])
    values = np.concatenate([run(probe, f)[-1] for f in feeds])
    return float(values.max() - min(values.min(), 0.0))


def _absorption(result):
    return [d for d in result.details if d["rule"] == "absorb-bias"]


def test_relu_channel_above_its_bias_is_absorbed_from_data(tmp_path):
    model = _hot_net()
    calib = _calibration(model)
    off = model.copy()
    graphc.PassManager("equalize{absorb-bias=off}").run(off)
    reference = model.copy()
    result = graphc.PassManager("equalize{absorb-bias=data}", data=open_data(calib, model)).run(model).records[-1]
    assert result.modified
    assert result.stats["bias_layers_absorbed"] == 1 and result.stats["bias_channels_absorbed"] == 1
    assert result.stats["bias_layers_absorbed_inexact"] == 1  # exact on the data only (Relu)
    (detail,) = _absorption(result)
    assert detail | {"range_before": 0, "range_after": 0} == {
        "node": "conv1", "rule": "absorb-bias", "into": "conv2", "through": "Relu", "source": "data",
        "exact": "on calibration data", "channels": 1, "of": 8, "range_before": 0, "range_after": 0}
    assert detail["range_after"] < detail["range_before"] / 4
    assert len(model.graph.nodes) == 3 and op_count(model, "Conv") == 2
    # only channel 0 of conv1's bias moved (relative to the scaled-only model), by ~its minimum
    moved = _bias(off, "conv1") - _bias(model, "conv1")
    assert np.count_nonzero(moved) == 1 and moved[0] > 0.9 * _bias(off, "conv1")[0] * (HOT - 1) / HOT
    assert not np.array_equal(_bias(off, "conv2"), _bias(model, "conv2"))
    # the quantized tensor between the Convs: measured range 4.2 (after scaling 5.6) -> 1.0
    held_out = _box_feeds(16, seed=2)
    assert _tensor_range(model, "a1", held_out) < _tensor_range(off, "a1", held_out) / 4
    assert _tensor_range(model, "a1", held_out) < _tensor_range(reference, "a1", held_out) / 4
    # the corner is in the data, so the minimum is the true one over [-1, 1]: exact there too
    assert_same_outputs(reference, model, calib[0], rtol=RTOL, atol=ATOL)
    for feed in calib[1:4] + held_out[:4]:
        assert_same_outputs(reference, model, feed, rtol=RTOL, atol=ATOL)
    assert_valid(model, tmp_path)
    again = graphc.PassManager("equalize{absorb-bias=data}", data=open_data(calib, model)).run(model)
    assert not again.records[-1].modified


def test_data_absorption_is_exact_only_on_the_data():
    """Without the corner in the data the measured minimum is above the true one: inputs that
    reach below it change the output (this is why Relu absorption is opt-in)."""
    model = _hot_net()
    reference = model.copy()
    calib = _box_feeds(8, seed=1)
    result = graphc.PassManager("equalize{absorb-bias=data}", data=open_data(calib, model)).run(model).records[-1]
    assert result.stats["bias_channels_absorbed"] == 1
    for feed in calib:
        assert_same_outputs(reference, model, feed, rtol=RTOL, atol=ATOL)
    ref_out, got = run(reference, _corner(model))[0], run(model, _corner(model))[0]
    assert not np.allclose(ref_out, got, rtol=RTOL, atol=ATOL)


def test_relu_channel_that_can_go_below_zero_is_not_absorbed():
    model = _hot_net(hot_l1=8.0)  # channel 0 spans [-4, 12]: no positive minimum
    off = model.copy()
    graphc.PassManager("equalize{absorb-bias=off}").run(off)
    calib = _calibration(model)
    result = graphc.PassManager("equalize{absorb-bias=data}", data=open_data(calib, model)).run(model).records[-1]
    assert "bias_layers_absorbed" not in result.stats and not _absorption(result)
    assert result.skipped == {}
    for name in ("conv1", "conv2"):
        assert np.array_equal(_bias(model, name), _bias(off, name))


def test_padded_consumer_is_not_absorbed():
    model = _hot_net(pads2=1)
    off = model.copy()
    graphc.PassManager("equalize{absorb-bias=off}").run(off)
    result = graphc.PassManager("equalize{absorb-bias=gaussian}",
                                data=open_data(_calibration(model), model)).run(model).records[-1]
    assert result.skipped == {"bias not absorbed: the second Conv reads zero padding": 1}
    assert not _absorption(result)
    for name in ("conv1", "conv2"):
        assert np.array_equal(_bias(model, name), _bias(off, name))


def test_default_does_not_absorb_through_relu():
    model = _hot_net()
    reference = model.copy()
    calib = _calibration(model)
    pm = graphc.PassManager("equalize", data=open_data(calib, model), verify_each=True)
    result = pm.run(model).records[-1]
    assert result.skipped == {"bias not absorbed: through Relu it is exact only on data "
                              "(absorb-bias=data or gaussian)": 1}
    assert not _absorption(result) and result.verify.passed
    off = reference.copy()
    graphc.PassManager("equalize{absorb-bias=off}").run(off)
    assert np.array_equal(_bias(model, "conv1"), _bias(off, "conv1"))
    for feed in _box_feeds(4, seed=3):
        assert_same_outputs(reference, model, feed, rtol=RTOL, atol=ATOL)


def test_exactness_follows_the_mode():
    from graphc.passes.equalize import Equalize

    assert Equalize.exact
    exact = {m: Equalize(Equalize.Options(absorb_bias=m)).exact for m in ("off", "exact", "data", "gaussian")}
    assert exact == {"off": True, "exact": True, "data": False, "gaussian": False}


def test_data_mode_needs_data_and_modes_are_checked():
    with pytest.raises(DataError, match="--data"):
        graphc.PassManager("equalize{absorb-bias=data}").run(_hot_net())
    with pytest.raises(OptionError, match="absorb-bias"):
        graphc.PassManager("equalize{absorb-bias=yes}")


@pytest.mark.parametrize("group2", [1, 8])
def test_identity_pair_is_absorbed_exactly_from_data(group2, tmp_path):
    """No activation: exact for every input. No biases in the model: both are created. Depthwise
    conv2 checks the grouped sum ``W2 c``. Inputs in [1, 2] keep channel 0 positive; held-out
    inputs far outside the calibration range still match."""
    model = _hot_net(act=None, bias=False, group2=group2)
    w = _node(model, "conv1").inputs[1].values
    w[0] = np.abs(w[0])
    reference = model.copy()
    calib = _box_feeds(8, seed=1, low=1.0, high=2.0)
    result = graphc.PassManager("equalize", data=open_data(calib, model)).run(model).records[-1]
    (detail,) = _absorption(result)
    assert detail["through"] == "none" and detail["exact"] == "yes" and detail["source"] == "data"
    assert detail["channels"] >= 1 and detail["range_after"] < detail["range_before"]
    assert "bias_layers_absorbed_inexact" not in result.stats
    assert len(_node(model, "conv1").inputs) == 3 and len(_node(model, "conv2").inputs) == 3
    assert len(model.graph.nodes) == 2
    for feed in _box_feeds(4, seed=5, low=-3.0, high=3.0) + calib[:2]:
        assert_same_outputs(reference, model, feed, rtol=RTOL, atol=ATOL)
    assert_valid(model, tmp_path)
    again = graphc.PassManager("equalize", data=open_data(calib, model)).run(model).records[-1]
    assert not again.modified


def test_identity_pair_is_absorbed_from_batchnorm_statistics(tmp_path):
    """fold-bn then equalize, no data: the 3-sigma rule on the folded BN picks c, exactly."""
    model = _hot_net(bn=True, act=None)
    reference = model.copy()
    report = graphc.PassManager("fold-bn,equalize,equalize").run(model)
    first, second = report.records[1], report.records[2]
    (detail,) = _absorption(first)
    assert detail["source"] == "batchnorm" and detail["exact"] == "yes" and detail["channels"] == 1
    assert detail["range_after"] < detail["range_before"]
    # the second equalize finds conv1 changed since its BN was folded: the rule applies once
    assert not second.modified
    assert second.skipped == {"bias not absorbed: no calibration data, and no BatchNormalization "
                              "statistics that still describe the layer": 1}
    feeds = [{"x": np.random.default_rng(s).standard_normal((1, 4, 8, 8)).astype(np.float32) * 2}
             for s in range(4)]
    for feed in feeds:
        assert_same_outputs(reference, model, feed, rtol=RTOL, atol=ATOL)
    assert_valid(model, tmp_path)
    assert not graphc.PassManager("equalize").run(model).records[-1].modified


def test_gaussian_rule_through_relu_is_inexact_and_says_so():
    model = _hot_net(bn=True)
    reference = model.copy()
    rng = np.random.default_rng(4)
    typical = [{"x": rng.standard_normal((1, 4, 8, 8)).astype(np.float32)} for _ in range(8)]
    report = graphc.PassManager("fold-bn,equalize{absorb-bias=gaussian}", verify_each=True,
                                verify_data=typical).run(model)  # inexact: measured, not failed
    result = report.records[-1]
    (detail,) = _absorption(result)
    assert detail["source"] == "batchnorm" and detail["exact"] == "no (3-sigma rule)"
    assert result.stats["bias_layers_absorbed_inexact"] == 1
    assert not result.verify.passed
    # BN output of channel 0 ~ N(2, 0.25^2), c = 2 - 3 * 0.25 = 1.25: the output is unchanged
    # exactly for inputs keeping it >= c everywhere (the +corner: 2 + 4 * 0.2 * s), else not
    probe = with_outputs(reference, ["n1"])
    above = below = 0
    for feed in typical + [_corner(reference, t=-1.0), _corner(reference, t=4.0)]:
        lowest = float(run(probe, feed)[1][:, 0].min())
        same = np.allclose(run(reference, feed)[0], run(model, feed)[0], rtol=RTOL, atol=ATOL)
        assert same == (lowest >= 1.25 + 1e-4), lowest
        above, below = above + same, below + (not same)
    assert above >= 5 and below >= 2  # measured: 6 typical feeds and the +corner vs 2 and the -corner


@pytest.mark.parametrize("per_channel", [False, True])
def test_bias_absorption_improves_int8_sqnr(per_channel):
    quant = f"quant{{calib=minmax placement=all per-channel={str(per_channel).lower()}}}"
    sqnr = {}
    for mode in ("off", "data"):
        model = _hot_net()
        reference = model.copy()
        calib = _calibration(model)
        graphc.PassManager(f"equalize{{absorb-bias={mode}}}," + quant, data=open_data(calib, model)).run(model)
        sqnr[mode] = sqnr_over(reference, model, _box_feeds(16, seed=2))
    # measured on held-out feeds: per-tensor weights 33.9 -> 46.3 dB, per-channel 39.9 -> 46.4 dB
    # (the activation between the Convs is per-tensor either way: its range 5.6 -> 1.0 here)
    assert sqnr["data"] > sqnr["off"] + (10 if not per_channel else 5), sqnr


def test_mobilenet_block_has_nothing_to_absorb():
    """Gaussian inputs: no depthwise pre-activation has a positive minimum (and the expand -> dw
    pair pads), so absorb-bias=data changes nothing and the int8 SQNR is the same."""
    rng = np.random.default_rng(3)
    feeds = [{"x": rng.standard_normal((1, 16, 12, 12)).astype(np.float32)} for _ in range(8)]
    sqnr = {}
    for mode in ("exact", "data"):
        model = _mbv2_block("Relu", residual=False)
        reference = model.copy()
        report = graphc.PassManager(f"equalize{{absorb-bias={mode}}},quant{{calib=minmax placement=all}}",
                                    data=open_data(feeds, model)).run(model)
        assert "bias_layers_absorbed" not in report.records[0].stats
        sqnr[mode] = sqnr_over(reference, model, feeds)
    assert sqnr["data"] == pytest.approx(sqnr["exact"], abs=0.01)
