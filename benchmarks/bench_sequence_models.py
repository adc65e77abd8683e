"""Two trained models of issue 19, quantized with one graphc command each, against onnxruntime's
``quantize_dynamic`` and ``quantize_static`` on the same float models, in one run.

- ``models/tf2onnx_digits.onnx``: a ViT-style digits classifier written the way tf2onnx writes
  one (decomposed LayerNorm/GELU/Softmax, NHWC Transposes around the Convs, MatMul + BiasAdd;
  ``models/build_seqmodels.py``). graphc: ``graphc opt tf2onnx_digits.onnx -p quant --data
  tf2onnx_digits_calib.npz -o out.onnx`` (``activations=auto`` picks dynamic for it); timed on a
  batch of 32 images. Accuracy: top-1 agreement with float on the 450
  held-out digits (``tf2onnx_digits_test.npz``), and top-1 accuracy against the labels.
- ``models/crnn_lines.onnx``: a CRNN recognizer (3 Conv+BN+ReLU, bidirectional LSTM hidden 128,
  a 256x3000 Gemm: 3000 CTC classes) trained on synthetic DejaVu Sans text lines. graphc:
  ``graphc opt crnn_lines.onnx -p quant -o out.onnx`` (no data: the dynamic mode, LSTM and Gemm
  int8; the result with ``--data``, where activations=auto chooses, is a row of its own). Accuracy:
  greedy-decoded string agreement with float on 200 held-out lines (``crnn_lines_test.npz``),
  and exact-line accuracy against the rendered text.

onnxruntime's variants: ``quantize_dynamic`` (int8 weights, per tensor, and ``per_channel``),
``quantize_static`` (QDQ, u8 activations / s8 weights, per-channel, MinMax calibration on the
same calibration file). Speed: every variant and float timed in one alternation
(:func:`graphc.bench.compare_all`, ``THREADS`` threads); speed = float median / variant median,
with the 25th-75th percentiles of the per-round ratios in brackets; a second session of the
float model is timed as a control (its ratio shows the timing noise of the run). Size: serialized bytes as a
ratio to float.

    python benchmarks/run.py sequence_models
"""
from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import NamedTuple

import numpy as np

import graphc
from graphc.bench import compare_all, pair
from graphc.calib.data import open_data
from graphc.ir import model_bytes
from graphc.metrics import ctc_greedy_decode, decoded_agreement, top1_agreement
from graphc.runtime import create_session, run_session

TITLE = "sequence models: a trained tf2onnx-style classifier and a CRNN recognizer, one graphc command each"
log = logging.getLogger("bench_sequence_models")

MODELS = Path(__file__).resolve().parent.parent / "models" / "sequence"
THREADS = 2
ROUNDS = 60
#: the Done-when bars of issue 19: (agreement, speed, size) per model; None: no bar
BARS = {"tf2onnx_digits": (0.995, 1.3, None), "crnn_lines": (0.98, 1.3, 0.5)}
#: ``--input-shape`` given to graphc per model (none: the one commands need none)
SHAPES: dict[str, dict] = {}
GRAPHC = "graphc `-p quant` (the one command)"
#: graphc variants per model: (label, pipeline, with --data); the first is the one command the bars judge
COMMANDS = {"tf2onnx_digits": [(GRAPHC, "quant", True), ("graphc `-p smooth,quant --data`", "smooth,quant", True)],
            "crnn_lines": [(GRAPHC, "quant", False), ("graphc `-p quant --data` (activations=auto)", "quant", True)]}
CONTROL = "float again (timing control)"
TIMED_BATCH = 32  # tf2onnx_digits images per timed run
COUNTS: dict[str, int] = {}  # held-out samples per model, filled as they are scored


class Row(NamedTuple):
    variant: str
    size_ratio: float
    speed: tuple[float, float, float]
    agreement: float
    accuracy: float


def ort_dynamic(src: Path, per_channel: bool) -> bytes:
    from onnxruntime.quantization import QuantType, quantize_dynamic  # lazy: only this benchmark needs it

    with tempfile.TemporaryDirectory() as tmp:
        dst = Path(tmp) / "out.onnx"
        quantize_dynamic(src, dst, per_channel=per_channel, weight_type=QuantType.QInt8)
        return dst.read_bytes()


def ort_static(src: Path, calib: dict[str, np.ndarray]) -> bytes:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self):
            name = next(iter(calib))
            self.feeds = iter({name: calib[name][i:i + 1]} for i in range(len(calib[name])))

        def get_next(self):
            return next(self.feeds, None)

    with tempfile.TemporaryDirectory() as tmp:
        dst = Path(tmp) / "out.onnx"
        quantize_static(src, dst, Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
        return dst.read_bytes()


def graphc_opt(src: Path, calib_path: Path | None, pipeline: str, shapes: dict | None) -> bytes:
    """What ``graphc opt SRC -p PIPELINE [--data CALIB] [--input-shape ...] -o out.onnx`` writes."""
    model = graphc.load(src)
    data = open_data(str(calib_path), model) if calib_path is not None else None
    graphc.PassManager(pipeline, data=data, input_shapes=shapes).run(model)
    return model_bytes(model)


def variants(name: str) -> dict[str, bytes]:
    src, calib_path = MODELS / f"{name}.onnx", MODELS / f"{name}_calib.npz"
    calib = dict(np.load(calib_path))
    out = {"float": src.read_bytes()}
    for label, pipeline, with_data in COMMANDS[name]:
        out[label] = graphc_opt(src, calib_path if with_data else None, pipeline, SHAPES.get(name))
    out["ort quantize_dynamic"] = ort_dynamic(src, False)
    out["ort quantize_dynamic per_channel"] = ort_dynamic(src, True)
    out["ort quantize_static (QDQ, per-channel)"] = ort_static(src, calib)
    out[CONTROL] = out["float"]  # a second session of the float model: the noise floor of the timing
    return out


def outputs(model: bytes, feed: dict) -> np.ndarray:
    return run_session(create_session(model, threads=THREADS), feed)[0]


def measure(models: dict[str, bytes], timing_feed: dict, eval_feed: dict, score) -> list[Row]:
    """``score(reference, got) -> (agreement, accuracy)``."""
    stats = compare_all(models, timing_feed, threads=THREADS, warmup=5, rounds=ROUNDS)
    reference = outputs(models["float"], eval_feed)
    rows = []
    for label, blob in models.items():
        cmp = pair(stats, "float", label, threads=THREADS)
        low, high = cmp.ratio_spread()
        rows.append(Row(label, len(blob) / len(models["float"]), (cmp.ratio, low, high),
                        *score(reference, outputs(blob, eval_feed))))
    return rows


def classifier_rows() -> list[Row]:
    test = np.load(MODELS / "tf2onnx_digits_test.npz")
    x, labels = test["input_image:0"], test["labels"]

    def score(ref, got):
        return top1_agreement(ref, got), float(np.mean(got.argmax(-1) == labels))

    COUNTS["tf2onnx_digits"] = len(labels)
    return measure(variants("tf2onnx_digits"), {"input_image:0": x[:TIMED_BATCH]}, {"input_image:0": x}, score)


def recognizer_rows() -> list[Row]:
    test = np.load(MODELS / "crnn_lines_test.npz")
    ends = np.cumsum(test["label_lengths"])
    truth = [tuple(int(c) for c in t) for t in np.split(test["label_ids"], ends[:-1])]

    def score(ref, got):
        lines = ctc_greedy_decode(got)
        return decoded_agreement(ref, got), float(np.mean([a == b for a, b in zip(lines, truth)]))

    x = test["input"]
    COUNTS["crnn_lines"] = len(truth)
    return measure(variants("crnn_lines"), {"input": x[:1]}, {"input": x}, score)


def table(rows: list[Row], agreement: str, accuracy: str) -> str:
    head = ["variant", "size vs float", "speed vs float", agreement, accuracy]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        ratio, low, high = r.speed
        speed = "1.00x" if r.variant == "float" else f"{ratio:.2f}x ({low:.2f}-{high:.2f})"
        lines.append(f"| {r.variant} | {r.size_ratio:.3f}x | {speed} | {r.agreement:.4f} | {100 * r.accuracy:.2f}% |")
    return "\n".join(lines)


def verdict(name: str, rows: list[Row]) -> str:
    """The Done-when bars against graphc's one command, and the timing control, from the measured
    values."""
    by = {r.variant: r for r in rows}
    ours, control = by[GRAPHC], by[CONTROL]
    agreement, speed, size = BARS[name]
    checks = [(f"agreement {ours.agreement:.4f} (bar {agreement})", ours.agreement >= agreement),
              (f"speed {ours.speed[0]:.2f}x (bar {speed}x)", ours.speed[0] >= speed)]
    if size is not None:
        checks.append((f"size {ours.size_ratio:.3f}x (bar {size}x)", ours.size_ratio <= size))
    ratio, low, high = control.speed
    return (f"{name}, {GRAPHC}: " + "; ".join(f"{text} {'met' if ok else 'MISSED'}" for text, ok in checks)
            + f". Timing control (the float model against itself): {ratio:.2f}x ({low:.2f}-{high:.2f}).")


def command(name: str) -> str:
    shapes = "".join(f" --input-shape {k}:{'x'.join(map(str, v))}" for k, v in SHAPES.get(name, {}).items())
    data = f" --data models/sequence/{name}_calib.npz" if COMMANDS[name][0][2] else ""
    return f"`graphc opt models/sequence/{name}.onnx -p quant{data}{shapes} -o out.onnx`"


def run() -> str:
    load_before = os.getloadavg()[0]
    clf, rec = classifier_rows(), recognizer_rows()
    load_after = os.getloadavg()[0]
    return (
        f"Float anchor = 1.00x; speed = the median of the per-round ratios float / variant over {ROUNDS} "
        f"rounds of float and every variant in one alternation after 5 warm-up rounds ({THREADS} threads; "
        f"their 25th-75th percentiles in brackets). graphc's rows are what the command shown writes, run "
        f"through the API (graphc.load, PassManager, the serialized model). {os.cpu_count()} CPUs, "
        f"1-minute load average {load_before:.1f} before and {load_after:.1f} after the run.\n\n"
        f"**tf2onnx_digits** (trained, {100 * clf[0].accuracy:.1f}% on the held-out digits; agreement = top-1 "
        f"agreement with float on those {COUNTS['tf2onnx_digits']} digits, accuracy against their labels; "
        f"latency on a batch of {TIMED_BATCH} images): "
        f"{command('tf2onnx_digits')}\n\n"
        + table(clf, "top-1 agreement", "top-1 accuracy") + "\n\n" + verdict("tf2onnx_digits", clf) + "\n\n"
        f"**crnn_lines** (trained; agreement = fraction of the {COUNTS['crnn_lines']} held-out lines whose "
        f"greedy CTC decoding equals float's, accuracy = exact lines against the rendered text; latency on one line): "
        f"{command('crnn_lines')}\n\n"
        + table(rec, "decoded-line agreement", "exact-line accuracy") + "\n\n" + verdict("crnn_lines", rec) + "\n"
    )


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    print(run())
