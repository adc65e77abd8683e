"""Image-folder data for `graphc opt` and `graphc verify`: the --image-* flags and the recipe's
[image] section reach graphc.calib.images.ImageOptions."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

import graphc
from graphc.build import image_options
from graphc.calib.data import open_data
from graphc.cli import build_parser, main, opt_recipe
from graphc.recipe import ImageSettings, loads
from report_passes import registered, write_net

ImageOptions = pytest.importorskip("graphc.calib.images", reason="graphc.calib.images is not in this checkout") \
    .ImageOptions


@pytest.fixture
def images(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    for i, colour in enumerate([(255, 255, 255), (0, 0, 0), (255, 0, 0)]):
        Image.new("RGB", (20, 12), colour).save(folder / f"{i}.png")
    return folder


def test_flags_and_recipe_make_the_same_image_options():
    args = build_parser().parse_args(["opt", "m.onnx", "-p", "cleanup", "--image-size", "8x8", "--mean",
                                      "0.5,0.5,0.5", "--std", "0.5,0.5,0.5", "--channels", "bgr",
                                      "--image-scale", "0.00392156862745098", "--layout", "nchw"])
    from_flags = opt_recipe(args).image
    from_file = loads('[image]\nsize = "8x8"\nmean = [0.5, 0.5, 0.5]\nstd = [0.5, 0.5, 0.5]\nchannels = "bgr"\n'
                      'scale = 0.00392156862745098\nlayout = "nchw"\n').image
    assert from_flags == from_file
    assert image_options(from_flags) == ImageOptions(size=(8, 8), mean=(0.5,) * 3, std=(0.5,) * 3, channels="bgr",
                                                     scale=0.00392156862745098, layout="nchw")
    assert image_options(ImageSettings()) is None
    keep_aspect = opt_recipe(build_parser().parse_args(["opt", "m", "--image-height", "48", "--image-max-width",
                                                        "320", "--no-image-pad"])).image
    assert image_options(keep_aspect) == ImageOptions(height=48, max_width=320, pad=False)


def test_image_options_reach_the_loader(tmp_path, images):
    model = graphc.load(write_net(tmp_path))
    recipe = loads('[image]\nsize = "8x8"\nmean = [0.5, 0.5, 0.5]\nstd = [0.5, 0.5, 0.5]\n')
    feeds = list(open_data(images, model, image_options=image_options(recipe.image)))
    assert [f["x"].shape for f in feeds] == [(1, 3, 8, 8)] * 3
    np.testing.assert_allclose(feeds[0]["x"], 1.0)  # white: (1 - 0.5) / 0.5
    np.testing.assert_allclose(feeds[1]["x"], -1.0)
    np.testing.assert_allclose(feeds[2]["x"][0, :, 0, 0], [1.0, -1.0, -1.0])


def test_opt_and_verify_calibrate_and_evaluate_on_images(capsys, tmp_path, images):
    net = write_net(tmp_path)
    report = tmp_path / "r.json"
    with registered():
        code = main([str(a) for a in ("opt", net, "-p", "test-calibrate,test-scale{factor=1.01}", "-o",
                                      tmp_path / "o.onnx", "--data", images, "--image-size", "8x8", "--mean",
                                      "0.5,0.5,0.5", "--min-cosine", "0.9", "--report", report, "-q")])
    data = json.loads(report.read_text())
    assert code == 0 and data["verification"]["data"] == f"{images} (images)" and data["verification"]["samples"] == 3
    assert data["recipe"]["image"]["size"] == "8x8" and sum(data["histograms"][0]["counts"]) == 3 * 4 * 64
    code = main([str(a) for a in ("verify", net, tmp_path / "o.onnx", "--data", images, "--image-size", "8x8",
                                  "--min-cosine", "0.9", "--json")])
    assert code == 0 and json.loads(capsys.readouterr().out)["data"] == f"{images} (images)"
    code = main([str(a) for a in ("verify", net, net, "--data", images, "--image-size", "0x8")])
    assert code == 2 and "image size must be two positive numbers" in capsys.readouterr().err
