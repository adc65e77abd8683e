"""Every registered pass as the first and only pass on every real model the tests have: the zoo
in models/ and PP-OCR det/rec/cls (rapidocr-onnxruntime).

Each run must succeed (or be a known bug, strict xfail) and leave a model that passes the full
ONNX checker, loads in onnxruntime and keeps its outputs' names and shapes with finite values on
random inputs; an exact pass keeps the outputs within rtol 1e-4 / atol max(1e-4 x max|output|, 1e-6) (real
models: PP-OCR det's probability map moves by up to 2.9e-5 under exact folds, see
passes/canonicalize.py). Calibration data (2 random samples) is given only to a pass that
requires it, as a user without data would run the others. Measured: 86 s for all 81 runs (2
cores shared with other jobs; rec is the slowest, 2-8 s per pass).
"""
from __future__ import annotations

import numpy as np
import pytest

import graphc
from graphc.calib.data import RandomSource, input_specs
from graphc.passmanager import PassManager, all_passes
from graphc.passmanager.pipeline import parse_pipeline
from support import MODELS, PPOCR_SHAPES, assert_valid, ppocr_model, random_feeds, run

ZOO = sorted(p.stem for p in MODELS.glob("*.onnx"))
PPOCR = ("det", "rec", "cls")
#: (pass, model) -> reason: known crashes, strict xfail so the test flips when they are fixed.
KNOWN_CRASHES: dict[tuple[str, str], str] = {}
RTOL, ATOL_SHARE = 1e-4, 1e-4


def _cases():
    for cls in all_passes():
        for name in PPOCR + tuple(ZOO):
            marks = [pytest.mark.real] if name in PPOCR else []
            if (cls.name, name) in KNOWN_CRASHES:
                marks.append(pytest.mark.xfail(strict=True, reason=KNOWN_CRASHES[cls.name, name]))
            yield pytest.param(cls.name, name, marks=marks, id=f"{cls.name}-{name}")


def _load(name: str):
    if name in PPOCR:
        path = ppocr_model(name)
        if path is None:
            pytest.skip("rapidocr-onnxruntime is not installed")
        return graphc.load(path), {"x": PPOCR_SHAPES[name]}
    return graphc.load(MODELS / f"{name}.onnx"), None


@pytest.mark.parametrize("pass_name, model_name", list(_cases()))
def test_pass_alone_on_real_model(pass_name, model_name, tmp_path):
    model, shapes = _load(model_name)
    reference = model.copy()
    instance = parse_pipeline(pass_name).steps[0].instantiate()
    data = RandomSource(input_specs(model), n=2, seed=0, input_shapes=shapes) if instance.requires_data() else None
    records = PassManager(pass_name, data=data, input_shapes=shapes).run(model).records
    # The pass runs last, after exactly the preparation it declares (quant: fold-bn, canonicalize).
    assert [r.name for r in records] == [*instance.preparation(), pass_name]
    assert_valid(model, tmp_path)
    feeds = random_feeds(reference, shapes, seed=3)
    want, got = run(reference, feeds), run(model, feeds)
    assert [o.name for o in model.graph.outputs] == [o.name for o in reference.graph.outputs]
    exact = next(c for c in all_passes() if c.name == pass_name).exact
    for w, g, out in zip(want, got, reference.graph.outputs):
        assert g.shape == w.shape, f"{pass_name} on {model_name}: output '{out.name}' shape {g.shape} != {w.shape}"
        assert np.isfinite(g).all(), f"{pass_name} on {model_name}: output '{out.name}' is not finite"
        if exact:
            np.testing.assert_allclose(g, w, rtol=RTOL, atol=max(ATOL_SHARE * float(np.abs(w).max()), 1e-6),
                                       err_msg=f"{pass_name} changed output '{out.name}' of {model_name}")
