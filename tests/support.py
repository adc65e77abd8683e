"""Shared test helpers: build tiny models, run them in onnxruntime, compare outputs.

Kept in tests/ (not in the package): the package's own comparison code is graphc.verify, which
these helpers deliberately do not use, so tests of passes do not depend on the code under test.
"""
from __future__ import annotations

import glob
import importlib.util
import os
import sysconfig
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

import graphc
from graphc.cli import main
from graphc.ir import Model, to_proto

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "models"


def ppocr_model(kind: str) -> Path | None:
    """Path of a PP-OCR model shipped in rapidocr-onnxruntime: kind in det, rec, cls."""
    try:
        import rapidocr_onnxruntime
    except ImportError:
        return None
    folder = Path(rapidocr_onnxruntime.__file__).parent / "models"
    names = {"det": "ch_PP-OCRv4_det_infer.onnx", "rec": "ch_PP-OCRv4_rec_infer.onnx",
             "cls": "ch_ppocr_mobile_v2.0_cls_infer.onnx"}
    path = folder / names[kind]
    return path if path.exists() else None


#: input shapes used to run the PP-OCR models in tests.
PPOCR_SHAPES = {"det": (1, 3, 96, 128), "rec": (1, 3, 48, 160), "cls": (1, 3, 48, 192)}


def session(model) -> ort.InferenceSession:
    if isinstance(model, Model):
        payload = to_proto(model).SerializeToString()
    elif isinstance(model, onnx.ModelProto):
        payload = model.SerializeToString()
    else:
        payload = str(model)
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(payload, opts, providers=["CPUExecutionProvider"])


def run(model, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    return session(model).run(None, feeds)


def random_feeds(model, shapes: dict[str, tuple] | None = None, seed: int = 0) -> dict[str, np.ndarray]:
    """Random inputs; dynamic dims must be given in ``shapes``."""
    sess = session(model)
    rng = np.random.default_rng(seed)
    feeds = {}
    for inp in sess.get_inputs():
        shape = (shapes or {}).get(inp.name) or tuple(d if isinstance(d, int) else 1 for d in inp.shape)
        dtype = {"tensor(float)": np.float32, "tensor(int64)": np.int64}.get(inp.type, np.float32)
        feeds[inp.name] = rng.standard_normal(shape).astype(dtype) if dtype == np.float32 \
            else rng.integers(0, 4, shape).astype(dtype)
    return feeds


def assert_same_outputs(reference, candidate, feeds, *, rtol=1e-5, atol=1e-6) -> None:
    """Both models give the same outputs (by position) on ``feeds`` within tolerance."""
    ref = run(reference, feeds)
    got = run(candidate, feeds)
    assert len(ref) == len(got)
    for r, g in zip(ref, got):
        assert r.shape == g.shape, (r.shape, g.shape)
        np.testing.assert_allclose(g, r, rtol=rtol, atol=atol)


def sqnr_over(reference, candidate, feeds) -> float:
    """SQNR (dB) of ``candidate``'s outputs against ``reference``'s, pooled over every output and
    every feed in ``feeds``; inf when they are identical."""
    signal = noise = 0.0
    for feed in feeds:
        for r, c in zip(run(reference, feed), run(candidate, feed)):
            signal += float(np.sum(r.astype(np.float64) ** 2))
            noise += float(np.sum((r.astype(np.float64) - c) ** 2))
    return 10 * np.log10(signal / noise) if noise else float("inf")


def assert_valid(model: Model, tmp_path: Path, name: str = "out.onnx") -> Path:
    """Save, pass the full ONNX checker, and load in onnxruntime."""
    path = graphc.save(model, tmp_path / name)
    onnx.checker.check_model(str(path), full_check=True)
    session(path)
    return path


def scale_middle_conv(model: Model, factor: float = 1.5):
    """Scale the weight of ``model``'s middle Conv (in node order) by ``factor``: one corrupted
    layer for localization tests. Returns that Conv."""
    convs = [n for n in model.graph.nodes if n.op == "Conv"]
    target = convs[len(convs) // 2]
    target.inputs[1].values = target.inputs[1].values * np.float32(factor)
    return target


def op_count(model: Model, op: str) -> int:
    return sum(1 for n in model.graph.nodes if n.op == op)


def node_named(model: Model, name: str):
    """The node of ``model`` called ``name`` (StopIteration if there is none)."""
    return next(n for n in model.graph.nodes if n.name == name)


def load_module(path: Path):
    """The Python file at ``path`` (a generator script under models/ or tests/data/) as a module."""
    spec = importlib.util.spec_from_file_location(Path(path).stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def cli(capsys, *args) -> tuple[int, str, str]:
    """``graphc ARGS`` in process: (exit code, stdout, stderr); arguments are made strings."""
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def make_model(graph: onnx.GraphProto, opset: int = 13) -> onnx.ModelProto:
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model
