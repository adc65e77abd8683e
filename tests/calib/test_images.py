"""calib.images: image folders with Pillow preprocessing as data sources."""
import numpy as np
import pytest
from onnx import TensorProto, helper
from PIL import Image

import graphc
from graphc.calib.data import input_specs, open_data
from graphc.calib.images import ImageFolderSource, ImageOptions, load_image
from graphc.errors import DataError
from support import make_model


def _model(shape):
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)])
    return graphc.load(make_model(graph))


def _folder(tmp_path, sizes):
    rng = np.random.default_rng(0)
    for i, (w, h) in enumerate(sizes):
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(tmp_path / f"img{i}.png")
    (tmp_path / "notes.txt").write_text("not an image")
    return tmp_path


def test_fixed_size_normalized_nchw(tmp_path):
    folder = _folder(tmp_path, [(30, 20), (64, 10)])
    opts = ImageOptions(size=(16, 24), mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    source = ImageFolderSource(folder, input_specs(_model([1, 3, 16, 24])), opts)
    feeds = list(source)
    assert len(source) == 2 and len(feeds) == 2
    x = feeds[0]["x"]
    assert x.shape == (1, 3, 16, 24) and x.dtype == np.float32
    assert -1.0 <= x.min() and x.max() <= 1.0
    img = np.asarray(Image.open(folder / "img0.png").convert("RGB").resize((24, 16), Image.BILINEAR), np.float32)
    np.testing.assert_allclose(x[0], ((img / 255 - 0.5) / 0.5).transpose(2, 0, 1), atol=1e-6)


def test_bgr_and_nhwc(tmp_path):
    folder = _folder(tmp_path, [(8, 8)])
    rgb = load_image(folder / "img0.png", ImageOptions(layout="nhwc"))
    bgr = load_image(folder / "img0.png", ImageOptions(layout="nhwc", channels="bgr"))
    assert rgb.shape == (1, 8, 8, 3)
    np.testing.assert_array_equal(rgb[..., ::-1], bgr)


def test_keep_aspect_with_padding(tmp_path):
    folder = _folder(tmp_path, [(40, 10), (400, 10)])
    opts = ImageOptions(height=48, max_width=320, mean=(0.5,) * 3, std=(0.5,) * 3)
    source = ImageFolderSource(folder, input_specs(_model([1, 3, 48, "w"])), opts)
    a, b = (f["x"] for f in source)
    assert a.shape == b.shape == (1, 3, 48, 320)
    assert np.all(a[..., 192:] == 0)          # 40x10 -> 192x48, padded with zeros
    assert np.any(b[..., 300:] != 0)          # 400x10 -> capped at 320, no padding


def test_dynamic_model_keeps_image_sizes(tmp_path):
    folder = _folder(tmp_path, [(12, 7), (5, 9)])
    source = open_data(folder, _model([1, 3, "h", "w"]))
    assert isinstance(source, ImageFolderSource)
    assert [f["x"].shape for f in source] == [(1, 3, 7, 12), (1, 3, 9, 5)]


def test_static_model_dims_are_used_without_options(tmp_path):
    folder = _folder(tmp_path, [(12, 7)])
    source = open_data(folder, _model([1, 3, 10, 6]))
    assert next(iter(source))["x"].shape == (1, 3, 10, 6)


def test_grayscale_input(tmp_path):
    folder = _folder(tmp_path, [(6, 6)])
    source = ImageFolderSource(folder, input_specs(_model([1, 1, 6, 6])), ImageOptions(mean=(0.0,), std=(1.0,)))
    assert next(iter(source))["x"].shape == (1, 1, 6, 6)


def test_bad_options_and_folders(tmp_path):
    with pytest.raises(DataError):
        ImageOptions(layout="chw")
    with pytest.raises(DataError):
        ImageOptions(size=(4, 4), height=4)
    with pytest.raises(DataError):
        ImageOptions(std=(1.0, 0.0, 1.0))
    assert ImageOptions.parse_size("48x320") == (48, 320)
    with pytest.raises(DataError):
        ImageOptions.parse_size("48")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no images"):
        ImageFolderSource(tmp_path / "empty", input_specs(_model([1, 3, 4, 4])))
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "x.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="cannot read image"):
        list(ImageFolderSource(broken, input_specs(_model([1, 3, 4, 4]))))
