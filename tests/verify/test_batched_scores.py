"""Evaluation feeds run many at a time along a dynamic batch axis
(:func:`graphc.verify.scores.batched_outputs`): the same outputs and scores as one feed at a time,
and one at a time again when the model's rows are not independent."""
import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import graphc
from graphc.runtime import create_session, run_session
from graphc.verify.scores import batched_outputs, reference_outputs, score_outputs
from support import make_model


def _conv(batch="N", seed=0):
    """x[batch, 4, H, W] -> Conv 3x3 -> Relu -> Conv 1x1 -> y (rows independent)."""
    rng = np.random.default_rng(seed)
    inits = [numpy_helper.from_array(rng.standard_normal((8, 4, 3, 3)).astype(np.float32), "w0"),
             numpy_helper.from_array(rng.standard_normal((3, 8, 1, 1)).astype(np.float32), "w1")]
    nodes = [helper.make_node("Conv", ["x", "w0"], ["c"], pads=[1] * 4),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("Conv", ["r", "w1"], ["y"])]
    graph = helper.make_graph(nodes, "conv", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 4, "H", "W"])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 3, "H", "W"])], inits)
    return graphc.load(make_model(graph))


def _mixing():
    """y = x - mean(x over the batch axis): a dynamic batch whose rows are not independent."""
    nodes = [helper.make_node("ReduceMean", ["x"], ["m"], axes=[0], keepdims=1),
             helper.make_node("Sub", ["x", "m"], ["y"])]
    graph = helper.make_graph(nodes, "mix", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 5])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 5])])
    return graphc.load(make_model(graph))


def _by_position():
    """y = x * max(p, 2) for the row at 1-based position p along the batch axis (a running sum of
    ones): alone every row is at position 1, so y = 2x; batched, the first two rows agree with
    that and every later row does not."""
    nodes = [helper.make_node("Mul", ["x", "zero"], ["z"]), helper.make_node("Add", ["z", "one"], ["ones"]),
             helper.make_node("CumSum", ["ones", "axis"], ["p"]), helper.make_node("Max", ["p", "two"], ["f"]),
             helper.make_node("Mul", ["x", "f"], ["y"])]
    inits = [numpy_helper.from_array(np.array(v, np.float32), n) for n, v in (("zero", 0), ("one", 1), ("two", 2))]
    inits.append(numpy_helper.from_array(np.array(0, np.int64), "axis"))
    graph = helper.make_graph(nodes, "position", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", "W"])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", "W"])], inits)
    return graphc.load(make_model(graph))


def _by_position_at_width_6():
    """y = x * (1 + (p - 1) * (W - 5)), p the row's 1-based position in the batch, W the width:
    rows independent at width 5 (y = x), not at width 6 (y = p x)."""
    nodes = [helper.make_node("Mul", ["x", "zero"], ["z"]), helper.make_node("Add", ["z", "one"], ["ones"]),
             helper.make_node("CumSum", ["ones", "axis"], ["p"]), helper.make_node("Sub", ["p", "one"], ["p0"]),
             helper.make_node("Shape", ["x"], ["shape"]), helper.make_node("Gather", ["shape", "one_i"], ["w"]),
             helper.make_node("Cast", ["w"], ["wf"], to=TensorProto.FLOAT), helper.make_node("Sub", ["wf", "five"], ["d"]),
             helper.make_node("Mul", ["p0", "d"], ["e"]), helper.make_node("Add", ["e", "one"], ["f"]),
             helper.make_node("Mul", ["x", "f"], ["y"])]
    inits = [numpy_helper.from_array(np.array(v, np.float32), n) for n, v in (("zero", 0), ("one", 1), ("five", 5))]
    inits += [numpy_helper.from_array(np.array(0, np.int64), "axis"), numpy_helper.from_array(np.array(1, np.int64), "one_i")]
    graph = helper.make_graph(nodes, "width", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", "W"])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", "W"])], inits)
    return graphc.load(make_model(graph))


def _feeds(n, shape=(1, 4, 6, 6), seed=1):
    rng = np.random.default_rng(seed)
    return [{"x": rng.standard_normal(shape).astype(np.float32)} for _ in range(n)]


def _one_at_a_time(model, feeds):
    return reference_outputs(model, feeds, batch=1)


def test_batched_outputs_are_the_outputs_one_at_a_time():
    model = _conv()
    # 11 feeds of [1, ...], two of [2, ...] in the middle, one of another width: groups end at shape changes
    feeds = _feeds(5) + _feeds(2, (2, 4, 6, 6), seed=2) + _feeds(4, seed=3) + _feeds(1, (1, 4, 6, 7), seed=4)
    alone = _one_at_a_time(model, feeds)
    batched = reference_outputs(model, feeds, batch=4)
    assert len(batched) == len(feeds)
    for one, many, feed in zip(alone, batched, feeds):
        assert many[0].shape == one[0].shape and many[0].shape[0] == feed["x"].shape[0]
        np.testing.assert_allclose(many[0], one[0], rtol=1e-5, atol=1e-6)


def test_the_batch_really_runs_stacked(monkeypatch):
    model = _conv()
    session = create_session(model, spin=False)
    sizes = []
    real = session.run
    monkeypatch.setattr(session, "run", lambda names, feeds: sizes.append(feeds["x"].shape[0]) or real(names, feeds))
    list(batched_outputs(session, _feeds(10), batch=4))
    # 4 stacked, its first, middle and last checked one at a time, then 4 and 2 stacked
    assert sizes == [4, 1, 1, 1, 4, 2]


def test_a_fixed_batch_axis_runs_one_at_a_time(monkeypatch):
    session = create_session(_conv(batch=1), spin=False)
    sizes = []
    real = session.run
    monkeypatch.setattr(session, "run", lambda names, feeds: sizes.append(feeds["x"].shape[0]) or real(names, feeds))
    list(batched_outputs(session, _feeds(5), batch=4))
    assert sizes == [1] * 5


def test_rows_that_mix_fall_back_to_one_at_a_time():
    model = _mixing()
    feeds = _feeds(9, (1, 5))
    alone = _one_at_a_time(model, feeds)
    assert np.all(alone[0][0] == 0)  # one row: x minus itself
    batched = reference_outputs(model, feeds, batch=4)
    for one, many in zip(alone, batched):
        np.testing.assert_array_equal(many[0], one[0])


def test_scores_batched_equal_scores_one_at_a_time():
    model = _conv()
    candidate = _conv(seed=0)
    candidate.graph.nodes[0].inputs[1].values = candidate.graph.nodes[0].inputs[1].values * 1.01
    feeds = _feeds(13)
    references = _one_at_a_time(model, feeds)
    kept_one, kept_many = [], []
    one = score_outputs(candidate, feeds, references, keep=kept_one, batch=1)
    many = score_outputs(candidate, feeds, references, keep=kept_many, batch=5)
    assert one.sqnr < 60
    assert many.sqnr == pytest.approx(one.sqnr, rel=1e-6) and many.cosine == pytest.approx(one.cosine, rel=1e-7)
    assert len(kept_many) == 13
    for a, b in zip(kept_one, kept_many):
        np.testing.assert_allclose(b[0], a[0], rtol=1e-5, atol=1e-6)


def test_a_row_that_differs_only_after_the_first_two_falls_back_to_one_at_a_time():
    model = _by_position()
    feeds = _feeds(9, (1, 5))
    alone = _one_at_a_time(model, feeds)
    stacked = run_session(create_session(model, spin=False),
                          {"x": np.concatenate([f["x"] for f in feeds[:4]])})[0]
    np.testing.assert_array_equal(stacked[:2], np.concatenate([a[0] for a in alone[:2]]))  # first two agree
    assert not np.allclose(stacked[2:], np.concatenate([a[0] for a in alone[2:4]]))  # the rest do not
    batched = reference_outputs(model, feeds, batch=4)
    for one, many in zip(alone, batched):
        np.testing.assert_array_equal(many[0], one[0])


def test_the_first_group_of_each_shape_is_checked(monkeypatch):
    session = create_session(_conv(), spin=False)
    sizes = []
    real = session.run
    monkeypatch.setattr(session, "run", lambda names, feeds: sizes.append(feeds["x"].shape[0]) or real(names, feeds))
    list(batched_outputs(session, _feeds(4) + _feeds(4, (1, 4, 6, 7)) + _feeds(4), batch=4))
    # a group of each width checked (first, middle, last); the width seen before is not checked again
    assert sizes == [4, 1, 1, 1, 4, 1, 1, 1, 4]


def test_rows_that_mix_at_one_shape_only_fall_back_at_that_shape():
    model = _by_position_at_width_6()
    feeds = _feeds(4, (1, 5)) + _feeds(4, (1, 6), seed=2)
    alone = _one_at_a_time(model, feeds)
    np.testing.assert_allclose(alone[5][0], feeds[5]["x"], rtol=1e-6)  # alone, every row is at position 1
    batched = reference_outputs(model, feeds, batch=4)
    for one, many in zip(alone, batched):
        np.testing.assert_allclose(many[0], one[0], rtol=1e-6)
