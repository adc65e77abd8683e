"""quant's dynamic mode (``quant{activations=dynamic}``, and ``quant`` without --data) against
onnxruntime's own ``quantize_dynamic``, on the same float models, in one run.

Variants, each made from the float model:

- ``graphc quant, no data``: ``-p quant`` with no calibration data, which picks the dynamic mode
  by itself; ``placement=auto`` keeps the MatMul/Gemm float whose MACs at batch 1 are below
  ``MIN_MACS`` (passes/quant/dynamic.py);
- ``graphc dynamic, all``: ``quant{activations=dynamic placement=all}``, every MatMul/Gemm with
  a constant weight;
- ``ort quantize_dynamic``: ``onnxruntime.quantization.quantize_dynamic`` with its defaults
  (int8 weights per tensor), and with ``per_channel=True``.

Two models:

- ``models/transformer_digits.onnx`` (trained; 13 MatMul + 1 Gemm with constant weights, 64 and
  128 wide): on the 450 images of ``models/digits_test.npz``, the mean per-image cosine of the
  logits against float, top-1 agreement with float and top-1 accuracy against the labels;
  latency at batch 1 (one test image) and batch 64 (``digits_calib.npz``).
- a synthetic BERT-sized MLP stack: ``LAYERS`` x (MatMul 384x1536, Gelu-free Relu, MatMul
  1536x384, residual Add) on ``[TOKENS, 384]`` (seeded normal weights scaled 1/sqrt(K), opset
  17): cosine of the output over a seeded normal input; latency at ``TOKENS`` rows.

Size: serialized model (weights inline) as a ratio to float. Latency: float (A) against each
variant (B) with :func:`graphc.bench.compare_latency` (alternated A/B, ``THREADS`` threads, graph
optimizations on, medians), float median / variant median (> 1: faster); and graphc's
``dynamic, all`` (B) against ort's ``per_channel`` (A) directly, alternated the same way.
The last column lists the weight ops onnxruntime's optimized graph runs.

    python benchmarks/run.py quant_dynamic
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
from graphc.bench import compare_latency
from graphc.ir import model_bytes
from graphc.metrics import cosine, top1_agreement
from graphc.runtime import create_session, run_session

TITLE = "quant dynamic: int8 weights, activations quantized at run time, vs onnxruntime quantize_dynamic"
log = logging.getLogger("bench_quant_dynamic")

MODELS = Path(__file__).resolve().parent.parent / "models"
THREADS = 2
LAYERS = 4
HIDDEN = 384
FFN = 1536
TOKENS = 128
SEED = 0
GRAPHC = [("graphc quant, no data", "quant"), ("graphc dynamic, all", "quant{activations=dynamic placement=all}")]
ORT = [("ort quantize_dynamic", False), ("ort quantize_dynamic per_channel", True)]
ROUNDS = {"batch 1": 400, "batch 64": 100, f"M={TOKENS}": 100}
WEIGHT_OPS = ("MatMul", "Gemm", "FusedMatMul", "FusedGemm", "MatMulIntegerToFloat", "DynamicQuantizeMatMul",
              "MatMulInteger", "DynamicQuantizeLinear")


class Row(NamedTuple):
    variant: str
    size_ratio: float
    speed: dict[str, float]
    cosine: float
    agreement: float | None
    accuracy: float | None
    kernel: str


def build_mlp_stack(layers: int = LAYERS, seed: int = SEED) -> bytes:
    """``h += Relu(h W1) W2`` ``layers`` times on ``x: [M, HIDDEN]``; seeded weights."""
    rng = np.random.default_rng(seed)
    nodes, inits, h = [], [], "x"
    for i in range(layers):
        for name, (k, n) in ((f"w1_{i}", (HIDDEN, FFN)), (f"w2_{i}", (FFN, HIDDEN))):
            w = rng.standard_normal((k, n), dtype=np.float32) / np.float32(np.sqrt(k))
            inits.append(onnx.numpy_helper.from_array(w, name))
        out = "y" if i == layers - 1 else f"h{i}"
        nodes += [helper.make_node("MatMul", [h, f"w1_{i}"], [f"a{i}"], name=f"ffn{i}.up"),
                  helper.make_node("Relu", [f"a{i}"], [f"r{i}"], name=f"ffn{i}.act"),
                  helper.make_node("MatMul", [f"r{i}", f"w2_{i}"], [f"d{i}"], name=f"ffn{i}.down"),
                  helper.make_node("Add", [h, f"d{i}"], [out], name=f"ffn{i}.residual")]
        h = out
    graph = helper.make_graph(nodes, "mlp_stack", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["M", HIDDEN])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["M", HIDDEN])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="bench_quant_dynamic")
    model.ir_version = 8
    return model.SerializeToString()


def ort_dynamic(float_bytes: bytes, per_channel: bool) -> bytes:
    from onnxruntime.quantization import QuantType, quantize_dynamic  # lazy: only this benchmark needs it

    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "in.onnx", Path(tmp) / "out.onnx"
        src.write_bytes(float_bytes)
        quantize_dynamic(src, dst, per_channel=per_channel, weight_type=QuantType.QInt8)
        return dst.read_bytes()


def variants(float_bytes: bytes) -> dict[str, bytes]:
    out = {"float": float_bytes}
    for label, pipeline in GRAPHC:
        model = graphc.load(float_bytes)
        graphc.PassManager(pipeline).run(model)
        out[label] = model_bytes(model)
    for label, per_channel in ORT:
        out[label] = ort_dynamic(float_bytes, per_channel)
    return out


def weight_kernels(model: bytes) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "optimized.onnx"
        create_session(model, threads=THREADS, optimized_model_path=path)
        proto = onnx.load(str(path), load_external_data=False)
    counts = collections.Counter(n.op_type for n in proto.graph.node if n.op_type in WEIGHT_OPS)
    return ", ".join(f"{k} x{v}" for k, v in sorted(counts.items()))


def outputs(model: bytes, feed: dict) -> np.ndarray:
    return run_session(create_session(model, threads=THREADS), feed)[0]


def speedups(models: dict[str, bytes], timing_feeds: dict[str, dict]) -> dict[str, dict[str, float]]:
    """Float median / variant median per feed; and ``graphc vs ort`` (ort per-channel median /
    graphc dynamic-all median)."""
    speed = {label: {} for label in models}
    for feed_label, feed in timing_feeds.items():
        for label, blob in models.items():
            if label == "float":
                speed[label][feed_label] = 1.0
                continue
            log.info("quant dynamic: %s, %s", label, feed_label)
            speed[label][feed_label] = compare_latency(models["float"], blob, feed, threads=THREADS, warmup=5,
                                                       rounds=ROUNDS[feed_label]).ratio
    speed["graphc vs ort"] = {
        feed_label: compare_latency(models[ORT[1][0]], models[GRAPHC[1][0]], feed, threads=THREADS, warmup=5,
                                    rounds=ROUNDS[feed_label]).ratio
        for feed_label, feed in timing_feeds.items()}
    return speed


def measure(models: dict[str, bytes], timing_feeds: dict, eval_feed: dict, labels) -> tuple[list[Row], dict]:
    reference = outputs(models["float"], eval_feed)
    speed = speedups(models, timing_feeds)
    rows = []
    for label, blob in models.items():
        got = outputs(blob, eval_feed)
        per_sample = np.mean([cosine(r, g) for r, g in zip(reference, got)]) if labels is not None \
            else cosine(reference, got)
        rows.append(Row(label, len(blob) / len(models["float"]), speed[label], float(per_sample),
                        top1_agreement(reference, got) if labels is not None else None,
                        float(np.mean(np.argmax(got, -1) == labels)) if labels is not None else None,
                        weight_kernels(blob)))
    return rows, speed["graphc vs ort"]


def table(rows: list[Row]) -> str:
    feeds = list(rows[0].speed)
    with_top1 = rows[0].agreement is not None
    head = ["variant", "size vs float", *[f"speed vs float, {f}" for f in feeds], "cosine vs float"]
    head += ["top-1 agreement", "top-1 accuracy"] if with_top1 else []
    head.append("onnxruntime runs")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r.variant, f"{r.size_ratio:.3f}x", *[f"{r.speed[f]:.2f}x" for f in feeds], f"{r.cosine:.5f}"]
        if with_top1:
            cells += [f"{r.agreement:.4f}", f"{100 * r.accuracy:.2f}%"]
        cells.append(r.kernel)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def verdict(rows: list[Row], direct: dict[str, float]) -> str:
    """One sentence from the measured values: graphc's dynamic-all against ort per-channel."""
    by = {r.variant: r for r in rows}
    ours, theirs = by[GRAPHC[1][0]], by[ORT[1][0]]
    speed = ", ".join(f"{ratio:.2f}x at {feed}" for feed, ratio in direct.items())
    return (f"graphc `dynamic, all` against ort per-channel `quantize_dynamic`: size {ours.size_ratio / theirs.size_ratio:.2f}x "
            f"of ort's, cosine vs float {ours.cosine:.5f} against {theirs.cosine:.5f}, speed (ort median / graphc "
            f"median, alternated directly) {speed}.")


def run() -> str:
    load_before = os.getloadavg()[0]
    test, calib = np.load(MODELS / "digits_test.npz"), np.load(MODELS / "digits_calib.npz")
    digits, digits_direct = measure(
        variants((MODELS / "transformer_digits.onnx").read_bytes()),
        {"batch 1": {"input": test["input"][:1]}, "batch 64": {"input": calib["input"][:64]}},
        {"input": test["input"]}, test["labels"])
    x = np.random.default_rng(SEED + 1).standard_normal((TOKENS, HIDDEN), dtype=np.float32)
    stack, stack_direct = measure(variants(build_mlp_stack()), {f"M={TOKENS}": {"x": x}}, {"x": x}, None)
    load_after = os.getloadavg()[0]
    return (
        f"Float anchor = 1.00x. Speed = float median / variant median (alternated A/B, {THREADS} threads, > 1 is "
        f"faster). {os.cpu_count()} CPUs, 1-minute load average {load_before:.1f} before and {load_after:.1f} after "
        "the run. Last column: the weight ops in onnxruntime's optimized graph.\n\n"
        "**transformer_digits** (cosine = mean per-image cosine of the logits; top-1 on the 450 digits_test "
        "images; latency on one test image and on 64 calibration images):\n\n"
        + table(digits) + "\n\n" + verdict(digits, digits_direct)
        + f"\n\n**{LAYERS} x MLP block {HIDDEN}->{FFN}->{HIDDEN}** (synthetic, seeded; cosine and latency on a "
        f"[{TOKENS}, {HIDDEN}] normal input):\n\n"
        + table(stack) + "\n\n" + verdict(stack, stack_direct) + "\n"
    )


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    print(run())
