"""calib.moments: second moments per layout against plain numpy (naive im2col), in one session."""
import itertools

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import graphc
from graphc.calib import moments
from graphc.calib.data import open_data
from graphc.calib.moments import Layout, input_second_moments, second_moments
from graphc.errors import DataError, ModelError
from support import make_model

RNG = np.random.default_rng(0)


def _model():
    """x (2, 3, 7, 6) -> Relu -> a -> Transpose(0, 2, 3, 1) -> t (features last)."""
    nodes = [helper.make_node("Relu", ["x"], ["a"]),
             helper.make_node("Transpose", ["a"], ["t"], perm=[0, 2, 3, 1]),
             helper.make_node("Mul", ["t", "two"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 7, 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 7, 6, 3])],
                              [numpy_helper.from_array(np.array(2.0, np.float32), "two")])
    return graphc.load(make_model(graph))


def _feeds(n=3):
    return [{"x": RNG.standard_normal((2, 3, 7, 6)).astype(np.float32)} for _ in range(n)]


def _naive_patches(x, kernel, strides, pads, dilations):
    n, c, h, w = x.shape
    padded = np.pad(x, [(0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])])
    oh = (padded.shape[2] - dilations[0] * (kernel[0] - 1) - 1) // strides[0] + 1
    ow = (padded.shape[3] - dilations[1] * (kernel[1] - 1) - 1) // strides[1] + 1
    rows = []
    for b, i, j in itertools.product(range(n), range(oh), range(ow)):
        ys = i * strides[0] + dilations[0] * np.arange(kernel[0])
        xs = j * strides[1] + dilations[1] * np.arange(kernel[1])
        rows.append(padded[b][:, ys][:, :, xs].reshape(-1))
    return np.array(rows, np.float64)


def _mean_outer(rows):
    return rows.T @ rows / len(rows)


def test_last_axis_and_channels_layouts():
    model, feeds = _model(), _feeds()
    got = input_second_moments(model, feeds, {"t": Layout(), "a": Layout.channels()})
    relu = np.concatenate([np.maximum(f["x"], 0) for f in feeds])
    rows = relu.transpose(0, 2, 3, 1).reshape(-1, 3).astype(np.float64)
    np.testing.assert_allclose(got["t"], _mean_outer(rows), rtol=1e-10)
    np.testing.assert_allclose(got["a"], got["t"], rtol=1e-10)


def test_names_alone_and_graph_inputs():
    model, feeds = _model(), _feeds()
    got = input_second_moments(model, feeds, ["t"])
    assert set(got) == {"t"} and got["t"].shape == (3, 3)
    x_moment = input_second_moments(model, feeds, {"x": Layout.channels()})["x"]
    rows = np.concatenate([f["x"] for f in feeds]).transpose(0, 2, 3, 1).reshape(-1, 3).astype(np.float64)
    np.testing.assert_allclose(x_moment, _mean_outer(rows), rtol=1e-10)


@pytest.mark.parametrize("kernel,strides,pads,dilations", [
    ((3, 3), (1, 1), (1, 1, 1, 1), (1, 1)),
    ((3, 2), (2, 1), (0, 1, 2, 0), (1, 2)),
    ((1, 1), (2, 2), (0, 0, 1, 1), (1, 1)),
    ((2, 2), (3, 2), (0, 0, 0, 0), (2, 1)),
])
def test_conv_patches_match_naive_im2col(kernel, strides, pads, dilations, monkeypatch):
    monkeypatch.setattr(moments, "CHUNK_ROWS", 5)  # many chunks per feed
    model, feeds = _model(), _feeds(2)
    layout = Layout.conv(kernel, strides, pads, dilations)
    got = input_second_moments(model, feeds, {"a": layout})["a"]
    relu = np.concatenate([np.maximum(f["x"], 0) for f in feeds])
    expected = _mean_outer(_naive_patches(relu, kernel, strides, pads, dilations))
    assert got.shape == (3 * kernel[0] * kernel[1],) * 2 == expected.shape
    np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-12)


def test_several_layouts_of_one_tensor_in_one_session():
    model, feeds = _model(), open_data(_feeds(), _model())
    got = second_moments(model, feeds, {"wide": ("a", Layout.conv((3, 3), pads=(1, 1, 1, 1))),
                                        "point": ("a", Layout.channels())})
    assert got["wide"].shape == (27, 27) and got["point"].shape == (3, 3)
    centre = got["wide"].reshape(3, 9, 3, 9)[:, 4, :, 4]  # the kernel centre sees every position
    np.testing.assert_allclose(centre, got["point"], rtol=1e-10)


def test_errors():
    model = _model()
    with pytest.raises(DataError, match="empty"):
        input_second_moments(model, [], ["t"])
    with pytest.raises(ModelError):
        input_second_moments(model, _feeds(1), ["nowhere"])
    with pytest.raises(DataError):
        input_second_moments(model, _feeds(1), {"t": Layout.conv((3,))})
