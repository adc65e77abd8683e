"""cluster: k-means codebooks on tiny graphs (the decode onnxruntime runs, nearest-centre assignment,
zeros kept exact, determinism, data-aware weighting), and the k-means itself on hand cases."""
import math

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import graphc
from graphc.calib.data import IterableSource
from graphc.errors import OptionError
from graphc.ir import to_proto
from graphc.passes.cluster.kmeans import kmeans_1d, nearest
from graphc.passmanager import PassManager, parse_pipeline
from support import assert_valid, make_model, op_count, run


def _vi(name, shape):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def _weights(*shape, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(shape) / math.sqrt(int(np.prod(shape[1:])))).astype(np.float32)


def _matmul(w, rows="n"):
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["y"], name="mm")], "g",
                              [_vi("x", [rows, w.shape[0]])], [_vi("y", [rows, w.shape[1]])],
                              [numpy_helper.from_array(w, "W")])
    return make_model(graph)


def _conv(w):
    graph = helper.make_graph([helper.make_node("Conv", ["x", "W"], ["y"], name="conv", pads=[1, 1, 1, 1])], "g",
                              [_vi("x", [1, w.shape[1], 5, 5])], [_vi("y", [1, w.shape[0], 5, 5])],
                              [numpy_helper.from_array(w, "W")])
    return make_model(graph)


def _decoded(model):
    """(codebook, indices) of the only clustered weight, read from the graph."""
    gather = next(n for n in model.graph.nodes if n.op == "Gather")
    cast = gather.inputs[1].inputs[0]
    return gather.inputs[0].values, cast.inputs[0].values


def _cluster(proto, text="cluster", data=None):
    model = graphc.load(proto)
    return model, PassManager(text, data=data).run(model).records[-1]


def test_weights_become_a_codebook_onnxruntime_decodes(tmp_path):
    w = _weights(16, 8)
    model, record = _cluster(_matmul(w), "cluster{bits=2}")
    codebook, indices = _decoded(model)
    assert record.modified and record.stats == {"clustered": 1}
    assert codebook.size == 4 and codebook.dtype == np.float32 and indices.dtype == np.uint8
    assert indices.shape == w.shape
    assert (op_count(model, "Cast"), op_count(model, "Gather"), op_count(model, "MatMul")) == (1, 1, 1)
    # the oracle: each weight is decoded to the centre nearest to it
    distance = np.abs(w[..., None] - codebook[None, None, :])
    np.testing.assert_array_equal(codebook[indices], codebook[np.argmin(distance, axis=-1)])
    assert_valid(model, tmp_path)
    x = np.random.default_rng(1).standard_normal((3, 16)).astype(np.float32)
    np.testing.assert_allclose(run(model, {"x": x})[0], x @ codebook[indices], rtol=1e-5, atol=1e-6)
    again = PassManager("cluster{bits=2}").run(model)
    assert not again.modified


def test_the_file_holds_a_byte_per_weight(tmp_path):
    proto = _matmul(_weights(128, 64))
    model, _ = _cluster(proto, "cluster{bits=4}")
    before = len(proto.SerializeToString())
    after = graphc.save(model, tmp_path / "c.onnx").stat().st_size
    assert after < 0.3 * before


def test_zeros_stay_exact_and_take_index_zero():
    w = _weights(8, 8, 3, 3)
    w[np.abs(w) < 0.1] = 0.0
    model, _ = _cluster(_conv(w), "cluster{bits=3}")
    codebook, indices = _decoded(model)
    assert codebook[0] == 0.0 and codebook.size == 8
    np.testing.assert_array_equal(indices == 0, w == 0)
    assert np.all(codebook[1:] != 0)


def test_a_layer_without_a_constant_weight_is_left_alone():
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], "g",
                              [_vi("x", [2, 8]), _vi("w", [8, 4])], [_vi("y", [2, 4])])
    model, record = _cluster(make_model(graph))
    assert not record.modified and record.skipped == {"weight is not constant": 1}


def test_few_distinct_values_are_kept_exactly():
    w = np.random.default_rng(0).choice(np.array([-0.5, 0.25, 1.0], np.float32), size=(8, 8))
    model, record = _cluster(_matmul(w), "cluster{bits=2}")
    codebook, indices = _decoded(model)
    np.testing.assert_array_equal(codebook[indices], w)
    assert record.details[0]["est_error"] == 0.0


def test_runs_are_deterministic():
    proto = _matmul(_weights(64, 32))
    first, _ = _cluster(proto, "cluster{bits=3 seed=7}")
    second, _ = _cluster(proto, "cluster{bits=3 seed=7}")
    assert to_proto(first).SerializeToString() == to_proto(second).SerializeToString()


def test_data_weighs_the_weights_by_their_inputs_mean_square():
    rng = np.random.default_rng(0)
    w = _weights(16, 8)
    scales = np.exp(rng.uniform(-3, 3, 16)).astype(np.float32)
    feeds = [{"x": (rng.standard_normal((32, 16)) * scales).astype(np.float32)} for _ in range(3)]
    square = np.mean(np.concatenate([f["x"] for f in feeds]).astype(np.float64) ** 2, axis=0)
    h = np.broadcast_to(square[:, None], w.shape)
    objective = {}
    for weighted in ("true", "false"):
        model, record = _cluster(_matmul(w), f"cluster{{bits=2 weighted={weighted}}}", IterableSource(feeds))
        codebook, indices = _decoded(model)
        objective[weighted] = float(np.sum(h * (w - codebook[indices]) ** 2))
        assert record.details[0]["weighted"] == (weighted == "true")
    assert objective["true"] < 0.8 * objective["false"], objective


def test_kmeans_finds_two_obvious_clusters():
    values = np.array([0.0, 0.0, 1.0, 1.0, 10.0, 10.0])
    book = kmeans_1d(values, 2, seed=0)
    np.testing.assert_allclose(book.centres, [0.5, 10.0])
    np.testing.assert_array_equal(book.assignment, [0, 0, 0, 0, 1, 1])


def test_kmeans_importance_pulls_the_centre():
    values = np.array([0.0, 1.0, 10.0])
    book = kmeans_1d(values, 2, np.array([3.0, 1.0, 1.0]), seed=0)
    np.testing.assert_allclose(book.centres, [0.25, 10.0])  # (3 * 0 + 1 * 1) / 4


def test_nearest_breaks_ties_to_the_lower_centre():
    np.testing.assert_array_equal(nearest(np.array([-1.0, 0.5, 0.51, 3.0]), np.array([0.0, 1.0])), [0, 0, 1, 1])


@pytest.mark.parametrize("text", ["cluster{bits=0}", "cluster{bits=9}", "cluster{centres=4}"])
def test_bad_options_are_refused(text):
    with pytest.raises(OptionError):
        parse_pipeline(text)


def test_non_finite_weights_are_left_alone():
    w = _weights(8, 4)
    w[0, 0] = np.nan
    for text in ("cluster", "sparsify"):
        model, record = _cluster(_matmul(w), text)
        assert not record.modified and record.skipped == {"weight has non-finite values (NaN or inf)": 1}
