"""quant's weights-only mode: size, speed and accuracy of int8 and int4 weights against float.

Variants, each produced from the float model by one pass (``quant{weights-only=true ...}``):
int8 (per-channel ``DequantizeLinear``), int4 ``nbits`` (``com.microsoft.MatMulNBits``, float
activations) and int4 ``dq`` (block-wise ``DequantizeLinear-21``, the opset raised to 21, which
onnxruntime fuses into MatMulNBits with ``accuracy_level=4``: activations rounded to int8 per
block). Block size 32 for int4. Two models:

- ``models/transformer_digits.onnx`` (the zoo's trained transformer, 14 MatMul/Gemm weights);
  accuracy on the 450 images of ``models/digits_test.npz``: SQNR of the logits against the float
  model (:func:`graphc.metrics.sqnr_db`) and top-1 accuracy against the labels; latency at
  batch 1 (the first test image) and batch 64 (``models/digits_calib.npz``). Weights-only
  calibrates nothing, so the calibration set only serves as a batch of real inputs.
- a synthetic chain of ``LAYERS`` MatMuls with ``HIDDEN`` x ``HIDDEN`` weights (seeded normal,
  scaled by 1/sqrt(K); built here with ``onnx.helper`` at opset 17), where the weights are
  nearly all of the model; latency with activations ``[1, HIDDEN]`` (memory-bound, where fewer
  weight bytes should pay) and ``[64, HIDDEN]`` (compute-bound); SQNR of the output on the
  seeded ``[64, HIDDEN]`` normal input.

Size: serialized model (weights inline) as a ratio to the float model's. Latency: per timing
feed, the float model and every variant in one alternation (:func:`graphc.bench.compare_all`,
``THREADS`` intra-op threads, graph optimizations on, medians and the 25th-75th percentiles of the
per-round ratios); reported as float time / variant time, so > 1 means the variant is faster. The last column lists the ops onnxruntime's optimized
graph actually runs for the weights (saved with ``optimized_model_filepath``), so its fusions
are seen, not assumed. Accuracy is measured twice: as deployed (optimizations on, the fused
kernels) and with onnxruntime's graph optimizations off, where DequantizeLinear + MatMul run in
float and the only error is the weights' rounding; the gap between the two is what a fused
kernel's own rounding of the activations costs.

    python benchmarks/run.py weights_only
"""
from __future__ import annotations

import collections
import logging
import os
import tempfile
from pathlib import Path
from typing import NamedTuple

import numpy as np
import onnx
from onnx import TensorProto, helper

import graphc
from graphc.passes.quant import Quantize
from graphc.bench import compare_all, pair
from graphc.ir import model_bytes
from graphc.runtime import create_session, run_session
from graphc.metrics import sqnr_db, top1_agreement

TITLE = "quant weights-only: int8 / int4 weights, float activations (transformer_digits, 4 x MatMul 2048^2)"
log = logging.getLogger("bench_weights_only")

MODELS = Path(__file__).resolve().parent.parent / "models"
THREADS = 2
LAYERS = 4
HIDDEN = 2048
SEED = 0
#: rows of the synthetic chain's compute-bound timing input and of its SQNR input
SYNTH_ROWS = 64
#: (label, pipeline); None is the float model itself
VARIANTS = [
    ("float", None),
    ("int8", "quant{weights-only=true bits=8}"),
    ("int4 nbits", "quant{weights-only=true bits=4 int4-format=nbits}"),
    ("int4 dq", "quant{weights-only=true bits=4 int4-format=dq}"),
]
WARMUP = 5
#: int4 weights per scale: the variants leave quant's block-size at its default
BLOCK_SIZE = Quantize.Options().block_size
#: timed rounds per timing feed: cheap runs get more rounds, which steady their medians
ROUNDS = {"batch 1": 500, "batch 64": 150, "M=1": 200, f"M={SYNTH_ROWS}": 40}
#: ops that do the weights' work in onnxruntime's optimized graph
WEIGHT_OPS = ("MatMul", "Gemm", "FusedMatMul", "FusedGemm", "MatMulNBits", "DequantizeLinear",
              "MatMulIntegerToFloat", "DynamicQuantizeMatMul", "MatMulInteger")


class Row(NamedTuple):
    variant: str
    size_ratio: float
    speed: dict[str, float]  # feed label -> float median / variant median
    spread: dict[str, tuple[float, float]]  # feed label -> p25, p75 of the per-round ratios
    sqnr: float
    sqnr_unfused: float  # onnxruntime optimizations off: DQ + MatMul in float, the weights' error alone
    top1: float | None
    kernel: str


def build_matmul_chain(layers: int = LAYERS, hidden: int = HIDDEN, seed: int = SEED) -> bytes:
    """``y = x W0 W1 ... W(layers-1)``, ``x: [M, hidden]`` with M dynamic; seeded weights."""
    rng = np.random.default_rng(seed)
    nodes, inits = [], []
    x = "x"
    for i in range(layers):
        w = rng.standard_normal((hidden, hidden), dtype=np.float32) / np.float32(np.sqrt(hidden))
        inits.append(onnx.numpy_helper.from_array(w, f"w{i}"))
        y = "y" if i == layers - 1 else f"h{i}"
        nodes.append(helper.make_node("MatMul", [x, f"w{i}"], [y], name=f"matmul{i}"))
        x = y
    graph = helper.make_graph(nodes, "matmul_chain",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["M", hidden])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["M", hidden])],
                              inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                              producer_name="bench_weights_only")
    model.ir_version = 8
    return model.SerializeToString()


def variants(float_bytes: bytes, input_shapes: dict) -> dict[str, bytes]:
    """Each variant's serialized model, made from a fresh load of the float model."""
    out = {}
    for label, pipeline in VARIANTS:
        if pipeline is None:
            out[label] = float_bytes
            continue
        model = graphc.load(float_bytes)
        graphc.PassManager(pipeline, input_shapes=input_shapes).run(model)
        out[label] = model_bytes(model)
    return out


def weight_kernels(model: bytes) -> str:
    """Op types onnxruntime runs for the weights after its graph optimizations; MatMulNBits
    with its ``bits`` and ``accuracy_level`` (0 when absent: float activations)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "optimized.onnx"
        create_session(model, threads=THREADS, optimized_model_path=path)
        proto = onnx.load(str(path), load_external_data=False)
    counts = collections.Counter()
    for node in proto.graph.node:
        if node.op_type == "MatMulNBits":
            attrs = {a.name: a.i for a in node.attribute}
            counts[f"MatMulNBits {attrs.get('bits', 4)}-bit acc{attrs.get('accuracy_level', 0)}"] += 1
        elif node.op_type in WEIGHT_OPS:
            counts[node.op_type] += 1
    return ", ".join(f"{k} x{v}" for k, v in sorted(counts.items()))


def outputs(model: bytes, feed: dict, optimize: bool = True) -> np.ndarray:
    session = create_session(model, threads=THREADS, optimize=optimize)
    return run_session(session, feed)[0]


def measure(models: dict[str, bytes], timing_feeds: dict[str, dict], eval_feed: dict,
            labels: np.ndarray | None) -> list[Row]:
    reference = outputs(models["float"], eval_feed)
    timings = {}
    for feed_label, feed in timing_feeds.items():      # float and every variant in one alternation
        log.info("weights-only: timing %s", feed_label)
        timings[feed_label] = compare_all(models, feed, threads=THREADS, warmup=WARMUP, rounds=ROUNDS[feed_label])
    rows = []
    for label, blob in models.items():
        got = reference if label == "float" else outputs(blob, eval_feed)
        unfused = reference if label == "float" else outputs(blob, eval_feed, optimize=False)
        speed, spread = {}, {}
        for feed_label, stats in timings.items():
            cmp = pair(stats, "float", label, threads=THREADS, warmup=WARMUP)
            speed[feed_label], spread[feed_label] = cmp.ratio, cmp.ratio_spread()
        top1 = float(np.mean(np.argmax(got, axis=-1) == labels)) if labels is not None \
            else top1_agreement(reference, got)
        rows.append(Row(label, len(blob) / len(models["float"]), speed, spread,
                        sqnr_db(reference, got), sqnr_db(reference, unfused), top1, weight_kernels(blob)))
    return rows


def transformer_rows() -> tuple[list[Row], dict]:
    test = np.load(MODELS / "digits_test.npz")
    calib = np.load(MODELS / "digits_calib.npz")
    float_bytes = (MODELS / "transformer_digits.onnx").read_bytes()
    models = variants(float_bytes, {"input": (1, 1, 16, 16)})
    feeds = {"batch 1": {"input": test["input"][:1]}, "batch 64": {"input": calib["input"][:64]}}
    labels = test["labels"] if "labels" in test.files else None
    counts = {"test": len(test["input"]), "batch": len(feeds["batch 64"]["input"]), "labels": labels is not None}
    return measure(models, feeds, {"input": test["input"]}, labels), counts


def synthetic_rows() -> list[Row]:
    rng = np.random.default_rng(SEED + 1)
    float_bytes = build_matmul_chain()
    models = variants(float_bytes, {"x": (1, HIDDEN)})
    big = rng.standard_normal((SYNTH_ROWS, HIDDEN), dtype=np.float32)
    feeds = {"M=1": {"x": big[:1]}, f"M={SYNTH_ROWS}": {"x": big}}
    return measure(models, feeds, {"x": big}, None)


def _fmt_speed(row: Row, feed: str) -> str:
    if row.variant == "float":
        return "1.00x"
    low, high = row.spread[feed]
    return f"{row.speed[feed]:.2f}x ({low:.2f}-{high:.2f})"


def _fmt_sqnr(value: float) -> str:
    return "-" if value == float("inf") else f"{value:.1f}"


def table(rows: list[Row], with_top1: bool) -> str:
    feeds = list(rows[0].speed)
    head = ["variant", "size vs float", *[f"speed vs float, {f}" for f in feeds], "SQNR (dB)", "SQNR, ort opt. off"]
    if with_top1:
        head.append("top-1 acc")
    head.append("onnxruntime runs")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r.variant, f"{r.size_ratio:.3f}x", *[_fmt_speed(r, f) for f in feeds], _fmt_sqnr(r.sqnr),
                 _fmt_sqnr(r.sqnr_unfused)]
        if with_top1:
            cells.append(f"{100 * r.top1:.2f}%")
        cells.append(r.kernel)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run() -> str:
    load_before = os.getloadavg()[0]
    transformer, counts = transformer_rows()
    synthetic = synthetic_rows()
    load_after = os.getloadavg()[0]
    rounds = ", ".join(f"{k} {v}" for k, v in ROUNDS.items())
    accuracy = "top-1 accuracy against the labels" if counts["labels"] else "top-1 agreement with float"
    return (
        f"Float anchor = 1.00x. Speed = the median of the per-round ratios float / variant, > 1 is faster: per model and "
        f"batch, the float model and every variant are timed in one alternation "
        f"({', '.join(label for label, _ in VARIANTS)}, repeated: {rounds} rounds after {WARMUP} warm-up "
        f"rounds; {THREADS} threads), in "
        "brackets the 25th-75th percentiles of the per-round ratios. "
        f"{os.cpu_count()} CPUs, 1-minute load average {load_before:.1f} before and {load_after:.1f} "
        f"after the run. int4 block size {BLOCK_SIZE} (quant's default). SQNR of the outputs against float, "
        "as deployed and with onnxruntime's graph optimizations off (no fusion: the weights' rounding "
        "alone). Last column: the weight ops in onnxruntime's optimized graph (accN = MatMulNBits "
        "accuracy_level).\n\n"
        f"**transformer_digits** (SQNR and {accuracy} on the {counts['test']} digits_test images; "
        f"latency on one test image and on {counts['batch']} calibration images):\n\n"
        + table(transformer, with_top1=True)
        + f"\n\n**{LAYERS} x MatMul {HIDDEN}x{HIDDEN}** (synthetic, seeded; SQNR on a [{SYNTH_ROWS}, {HIDDEN}] "
        "normal input):\n\n"
        + table(synthetic, with_top1=False)
        + "\n"
    )


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    print(run())
