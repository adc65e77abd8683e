"""Build the exporter corpus (tests/models/corpus/): graphs as real exporters write them.

Usage::

    python models/build_corpus.py [--out tests/models/corpus] [--only NAME]

Torch entries (dev-only: torch, onnxscript for the dynamo exporter, scikit-learn for the digits):
a small ResNet conv net and a one-layer transformer, trained briefly on the digits data and
exported as they come out of the exporter (no clean-up: Constant nodes, Identity aliases, the
exporter's own fusions and names are kept):

* ``torch_ts_convnet``: TorchScript exporter (``dynamo=False``, opset 18, eval mode: the exporter
  folds BN into Conv itself).
* ``torch_ts_transformer``: TorchScript exporter, opset 18, ``export_modules_as_functions`` for the
  encoder layer, so the model calls a local function.
* ``torch_dynamo_convnet``, ``torch_dynamo_transformer``: ``torch.export``-based exporter
  (``dynamo=True``, opset 18), dynamic batch.

* ``vad_trained_if``: a conv + LSTM voice-activity detector trained on seeded synthetic speech-like
  and noise clips (``vad_signals.py``), one network per sample rate, exported into the branches of
  ``If(sr == 16000)`` as spox writes silero-vad (``vad_trained.py``).

Hand-written entries (``corpus_graphs.py``, numpy + onnx only): tf2onnx-style classifier, spox-style
If and Loop models and the malformed-declaration cases.

Every entry also gets ``NAME.npz``: calibration/evaluation feeds keyed by input name (a stack
of samples along axis 0, or one feed per entry for inputs that hold a scalar).
Everything is seeded; torch is pinned to 2 threads.
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Callable

import numpy as np
import onnx

import corpus_graphs
import vad_trained

LOG = logging.getLogger("models.build_corpus")
CORPUS_DIR = Path(__file__).resolve().parents[1] / "tests" / "models" / "corpus"
OPSET = 18
CALIB = 16


# --------------------------------------------------------------------------
# torch exports
# --------------------------------------------------------------------------


def digits_model(kind: str):
    """A small conv net or one-layer transformer trained briefly on digits (seeded)."""
    import torch

    import build

    torch.manual_seed(build.SEED)
    if kind == "convnet":
        net, cfg = build.ResNetDigits(widths=(8, 16, 32)), build.TrainCfg(epochs=4, lr=5e-3)
    else:
        net, cfg = build.TransformerDigits(dim=32, heads=4, layers=1), build.TrainCfg(epochs=8, lr=5e-3)
    data = build.load_digits_split()
    build.train(net, data, cfg)
    net.eval()
    LOG.info("  %s torch test acc %.4f", kind, build.torch_accuracy(net, data[2], data[3]))
    return net


def export_torchscript(net, path: Path, functions: set | None) -> None:
    import torch

    torch.onnx.export(net, (torch.zeros(1, 1, 16, 16),), str(path), dynamo=False, opset_version=OPSET,
                      input_names=["input"], output_names=["logits"],
                      dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
                      export_modules_as_functions=functions or False)


def export_dynamo(net, path: Path) -> None:
    import torch

    batch = torch.export.Dim("batch", min=1, max=1024)
    program = torch.onnx.export(net, (torch.zeros(2, 1, 16, 16),), dynamo=True, opset_version=OPSET,
                                input_names=["input"], output_names=["logits"],
                                dynamic_shapes=({0: batch},), external_data=False)
    program.save(str(path), external_data=False)


def torch_entry(kind: str, exporter: str) -> Callable[[Path], None]:
    def write(path: Path) -> None:
        import build

        net = digits_model(kind)
        if exporter == "dynamo":
            export_dynamo(net, path)
        else:
            export_torchscript(net, path, {type(net.layers[0])} if kind == "transformer" else None)
        m = onnx.load(str(path))
        m.producer_version = f"{m.producer_version} (graphc corpus)"
        onnx.save(m, str(path))
        with np.load(build.MODELS_DIR / "digits_calib.npz") as calib:
            np.savez_compressed(path.with_suffix(".npz"), input=calib["input"][:CALIB])
    return write


# --------------------------------------------------------------------------
# hand-written graphs and their data
# --------------------------------------------------------------------------


def vad_feeds(rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Noise with tone bursts, half the samples at 16 kHz and half at 8 kHz (one feed each)."""
    t = np.arange(corpus_graphs.VAD_SAMPLES) / 16000.0
    audio = rng.standard_normal((CALIB, 1, corpus_graphs.VAD_SAMPLES)) * 0.05
    for i in range(CALIB):
        if i % 3:
            audio[i, 0] += 0.5 * np.sin(2 * np.pi * rng.uniform(100, 400) * t) * (t > rng.uniform(0, 0.02))
    sr = np.where(np.arange(CALIB) % 2 == 0, 16000, 8000).astype(np.int64)
    return {"audio": audio.astype(np.float32), "sr": sr}


def declared_feeds(m: onnx.ModelProto, rng: np.random.Generator, fixed: dict[str, int]) -> dict[str, np.ndarray]:
    """A stack of CALIB samples per input: batch dim -> CALIB, other symbolic dims from ``fixed``."""
    feeds = {}
    for vi in m.graph.input:
        dims = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else fixed.get(d.dim_param, 1)
                for d in vi.type.tensor_type.shape.dim]
        dims[0] = CALIB
        if vi.type.tensor_type.elem_type == onnx.TensorProto.INT64:
            feeds[vi.name] = rng.integers(0, 10, dims).astype(np.int64)
        else:
            feeds[vi.name] = rng.standard_normal(dims).astype(np.float32)
    return feeds


FIXED_DIMS = {"unk__0": 1, "N": 1, "T": 12}


def graph_entry(name: str) -> Callable[[Path], None]:
    def write(path: Path) -> None:
        m = corpus_graphs.GRAPHS[name]()
        onnx.save(m, str(path))
        rng = np.random.default_rng(corpus_graphs.SEED)
        if name == "spox_vad_if":
            feeds = vad_feeds(rng)
        elif name == "wrong_rank_output":  # time-major (T, 1, 32): one feed per entry
            feeds = {"x": rng.standard_normal((CALIB, 12, 1, 32)).astype(np.float32)}
        elif name == "runtime_shaped_output":  # [1, T, 32]: one feed per entry
            feeds = {"x": rng.standard_normal((CALIB, 1, 12, 32)).astype(np.float32)}
        elif name in ("zero_dim_input", "literal_zero_input"):  # really [1, 576]: one feed per entry
            feeds = {"x": rng.standard_normal((CALIB, 1, 576)).astype(np.float32)}
        else:
            feeds = declared_feeds(m, rng, FIXED_DIMS)
        np.savez_compressed(path.with_suffix(".npz"), **feeds)
    return write


ENTRIES: dict[str, Callable[[Path], None]] = {
    "torch_ts_convnet": torch_entry("convnet", "torchscript"),
    "torch_ts_transformer": torch_entry("transformer", "torchscript"),
    "torch_dynamo_convnet": torch_entry("convnet", "dynamo"),
    "torch_dynamo_transformer": torch_entry("transformer", "dynamo"),
    **{name: graph_entry(name) for name in corpus_graphs.GRAPHS},
    "vad_trained_if": lambda path: vad_trained.build(path, CALIB),
}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=CORPUS_DIR, help="output directory")
    ap.add_argument("--only", choices=sorted(ENTRIES), action="append", help="build these entries")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    args.out.mkdir(parents=True, exist_ok=True)
    if any(name.startswith("torch_") for name in args.only or ENTRIES):
        import torch

        torch.set_num_threads(2)
    for name, write in ENTRIES.items():
        if args.only in (None, []) or name in args.only:
            path = args.out / f"{name}.onnx"
            write(path)
            LOG.info("wrote %s (%.0f KiB)", path.name, path.stat().st_size / 1024)


if __name__ == "__main__":
    main()
