"""External data must never be read from outside the model's folder, whatever the route.

Complements tests/ir/test_model_io.py (absolute, ``..`` and missing locations by path) with the
routes that do not go through a location string check alone: a symlink inside the folder that
points outside, a symlinked folder, and a model handed over as bytes or as a ModelProto whose
tensors still point at files (nothing may be read then, since there is no folder to check against).
"""
from __future__ import annotations

import os

import onnx
import re

import pytest
from onnx import TensorProto

import graphc
from corpus import BAD, make_bad
from graphc.errors import GraphcError, InputError, UnsafeModelError


def _model_pointing_at(folder, location: str, length: int) -> "os.PathLike":
    model = make_bad.conv_bn_relu()
    make_bad._with_external(model, {"location": location, "offset": "0", "length": str(length)})
    path = folder / "m.onnx"
    path.write_bytes(model.SerializeToString())
    return path


def _weight_length() -> int:
    return len(make_bad._init(make_bad.conv_bn_relu(), "w").raw_data)


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="no symlinks")
def test_symlink_to_a_file_outside_is_refused(tmp_path):
    secret = tmp_path / "secret.bin"
    secret.write_bytes(b"\x01" * _weight_length())
    inner = tmp_path / "model"
    inner.mkdir()
    (inner / "w.bin").symlink_to(secret)
    path = _model_pointing_at(inner, "w.bin", _weight_length())
    with pytest.raises(UnsafeModelError, match="outside"):
        graphc.load(path)


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="no symlinks")
def test_symlinked_subfolder_leading_outside_is_refused(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "w.bin").write_bytes(b"\x01" * _weight_length())
    inner = tmp_path / "model"
    inner.mkdir()
    (inner / "data").symlink_to(outside, target_is_directory=True)
    path = _model_pointing_at(inner, "data/w.bin", _weight_length())
    with pytest.raises(UnsafeModelError, match="outside"):
        graphc.load(path)


def test_symlink_inside_the_folder_is_loaded_or_refused_cleanly(tmp_path):
    (tmp_path / "real.bin").write_bytes(make_bad._init(make_bad.conv_bn_relu(), "w").raw_data)
    (tmp_path / "w.bin").symlink_to(tmp_path / "real.bin")
    path = _model_pointing_at(tmp_path, "w.bin", _weight_length())
    try:
        model = graphc.load(path)
    except GraphcError:
        return
    assert model.graph.nodes[0].inputs[1].values.shape == (4, 3, 3, 3)


@pytest.mark.parametrize("location", ["/etc/hostname", "../x.bin", "ext_ok.onnx.data"])
def test_bytes_and_proto_with_external_references_are_refused(location):
    """Without a path there is no folder: graphc refuses rather than read relative to the cwd."""
    proto = onnx.load(str(BAD / "ext_ok.onnx"), load_external_data=False)
    tensor = next(t for t in proto.graph.initializer if t.data_location == TensorProto.EXTERNAL)
    next(e for e in tensor.external_data if e.key == "location").value = location
    cwd = os.getcwd()
    try:
        os.chdir(BAD)  # even a location that exists relative to the working folder is not read
        for source in (proto, proto.SerializeToString()):
            with pytest.raises(UnsafeModelError, match="external data"):
                graphc.load(source)
    finally:
        os.chdir(cwd)


def test_external_data_file_that_is_a_folder(tmp_path):
    (tmp_path / "w.bin").mkdir()
    path = _model_pointing_at(tmp_path, "w.bin", _weight_length())
    with pytest.raises((InputError, UnsafeModelError)):
        graphc.load(path)


def test_saved_external_data_stays_next_to_the_output(tmp_path):
    """Hostile tensor names ('../../etc/passwd', 'a/b\\c') never become file names on save."""
    model = graphc.load(BAD / "hostile_names.onnx")
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    graphc.save(model, out_dir / "m.onnx", external_data=True)
    names = sorted(p.name for p in out_dir.iterdir())
    assert names[0] == "m.onnx" and all(re.fullmatch(r"m\.onnx\.[0-9a-f]{12}\.data", n) for n in names[1:])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    saved = onnx.load(str(out_dir / "m.onnx"), load_external_data=False)
    locations = {e.value for t in saved.graph.initializer for e in t.external_data if e.key == "location"}
    assert locations <= set(names[1:])
