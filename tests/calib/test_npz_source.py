"""NpzSource reads each array for its own input: scalar (0-d) inputs work (issue 15 item 3)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import graphc
from graphc.calib.data import NpzSource, input_specs
from graphc.cli import main
from graphc.errors import DataError

BAD = Path(__file__).resolve().parents[1] / "data" / "bad"  # the hostile corpus (tests/data/make_bad.py)

MODEL = BAD / "scalar_input.onnx"


def _source(tmp_path, **arrays) -> NpzSource:
    np.savez(tmp_path / "d.npz", **arrays)
    return NpzSource(tmp_path / "d.npz", input_specs(graphc.load(MODEL)))


def test_scalar_input_same_value_every_feed(tmp_path):
    x = np.random.default_rng(0).standard_normal((3, 1, 3, 8, 8)).astype(np.float32)
    feeds = list(_source(tmp_path, x=x, gain=np.float32(2.0)))
    assert len(feeds) == 3
    assert all(f["gain"].shape == () and f["gain"] == 2.0 for f in feeds)
    np.testing.assert_array_equal(feeds[2]["x"], x[2])


def test_scalar_input_one_value_per_feed(tmp_path):
    x = np.zeros((4, 3, 8, 8), np.float32)  # a stack of 4 samples, fed one at a time
    feeds = list(_source(tmp_path, x=x, gain=np.arange(4, dtype=np.float32)))
    assert [float(f["gain"]) for f in feeds] == [0, 1, 2, 3]
    assert all(f["x"].shape == (1, 3, 8, 8) for f in feeds)


def test_feed_counts_must_agree(tmp_path):
    with pytest.raises(DataError, match="different numbers of feeds"):
        _source(tmp_path, x=np.zeros((4, 3, 8, 8), np.float32), gain=np.arange(3, dtype=np.float32))


def test_quant_calibrates_a_model_with_a_scalar_input(tmp_path, capfd):
    rng = np.random.default_rng(1)
    np.savez(tmp_path / "calib.npz", x=rng.standard_normal((4, 3, 8, 8)).astype(np.float32), gain=np.float32(0.5))
    out = tmp_path / "out.onnx"
    code = main(["opt", str(MODEL), "-p", "quant{placement=all}", "--data", str(tmp_path / "calib.npz"),
                 "-o", str(out)])
    assert code == 0, capfd.readouterr().err
    assert out.is_file()
