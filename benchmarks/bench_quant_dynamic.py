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
VOCAB, EMBED, LSTM_HIDDEN, CLASSES, STEPS = 30522, 128, 256, 8210, 40
GRAPHC = [("graphc quant, no data", "quant"), ("graphc dynamic, all", "quant{activations=dynamic placement=all}")]
ORT = [("ort quantize_dynamic", False), ("ort quantize_dynamic per_channel", True)]
ROUNDS = {"batch 1": 400, "batch 64": 100, f"M={TOKENS}": 100, f"T={STEPS}": 40}
WEIGHT_OPS = ("MatMul", "Gemm", "FusedMatMul", "FusedGemm", "MatMulIntegerToFloat", "DynamicQuantizeMatMul",
              "MatMulInteger", "DynamicQuantizeLinear", "LSTM", "DynamicQuantizeLSTM", "Gather", "DequantizeLinear")


class Row(NamedTuple):
    variant: str
    size_ratio: float
    speed: dict[str, tuple[float, float, float]]  # feed -> (median ratio, p25, p75 of per-round ratios)
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


def build_sequence_model(seed: int = SEED) -> bytes:
    """ids [T, 1] -> Gather(table [VOCAB, EMBED]) -> bidirectional LSTM (hidden LSTM_HIDDEN) ->
    [T, 2 LSTM_HIDDEN] -> Gemm(W [CLASSES, 2 LSTM_HIDDEN], transB=1) + b: a recognizer's shape
    with an embedding in front; seeded weights."""
    rng = np.random.default_rng(seed)
    h, e = LSTM_HIDDEN, EMBED

    def normal(shape, fan_in):
        return onnx.numpy_helper.from_array(rng.standard_normal(shape, dtype=np.float32) / np.float32(np.sqrt(fan_in)))

    inits = {"table": normal((VOCAB, e), 1), "W": normal((2, 4 * h, e), e), "R": normal((2, 4 * h, h), h),
             "head": normal((CLASSES, 2 * h), 2 * h), "head_b": normal((CLASSES,), 100),
             "flat": onnx.numpy_helper.from_array(np.array([-1, 2 * h], np.int64))}
    for name, tensor in inits.items():
        tensor.name = name
    nodes = [helper.make_node("Gather", ["table", "ids"], ["emb"], name="embed"),
             helper.make_node("LSTM", ["emb", "W", "R"], ["y"], hidden_size=h, direction="bidirectional", name="lstm"),
             helper.make_node("Transpose", ["y"], ["yt"], perm=[0, 2, 1, 3], name="to_tbdh"),
             helper.make_node("Reshape", ["yt", "flat"], ["feat"], name="flatten"),
             helper.make_node("Gemm", ["feat", "head", "head_b"], ["logits"], transB=1, name="head")]
    graph = helper.make_graph(nodes, "sequence", [helper.make_tensor_value_info("ids", TensorProto.INT64, ["T", 1])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["T", CLASSES])],
                              list(inits.values()))
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
    """Per feed, the median of the per-round ratios float / variant (each variant alternated with
    float alone); and ``graphc vs ort``: ort per-channel / graphc dynamic-all, alternated directly."""
    speed = {label: {} for label in models}
    for feed_label, feed in timing_feeds.items():
        for label, blob in models.items():
            if label == "float":
                speed[label][feed_label] = (1.0, 1.0, 1.0)
                continue
            log.info("quant dynamic: %s, %s", label, feed_label)
            speed[label][feed_label] = _ratio(models["float"], blob, feed, ROUNDS[feed_label])
    speed["graphc vs ort"] = {feed_label: _ratio(models[ORT[1][0]], models[GRAPHC[1][0]], feed, ROUNDS[feed_label])
                              for feed_label, feed in timing_feeds.items()}
    return speed


def _ratio(a: bytes, b: bytes, feed: dict, rounds: int) -> tuple[float, float, float]:
    """The median of the per-round ratios A / B, and their 25th-75th percentiles."""
    cmp = compare_latency(a, b, feed, threads=THREADS, warmup=5, rounds=rounds)
    per_round = np.asarray(cmp.a.times_ms) / np.asarray(cmp.b.times_ms)
    low, high = np.percentile(per_round, [25, 75])
    return cmp.ratio, float(low), float(high)


def measure(models: dict[str, bytes], timing_feeds: dict, eval_feed: dict, labels,
            per_row: bool = False) -> tuple[list[Row], dict]:
    """``labels`` (or ``per_row``): cosine and top-1 per output row; else one cosine overall."""
    reference = outputs(models["float"], eval_feed)
    speed = speedups(models, timing_feeds)
    rows = []
    rowwise = labels is not None or per_row
    for label, blob in models.items():
        got = outputs(blob, eval_feed)
        cos = np.mean([cosine(r, g) for r, g in zip(reference, got)]) if rowwise else cosine(reference, got)
        rows.append(Row(label, len(blob) / len(models["float"]), speed[label], float(cos),
                        top1_agreement(reference, got) if rowwise else None,
                        float(np.mean(np.argmax(got, -1) == labels)) if labels is not None else None,
                        weight_kernels(blob)))
    return rows, speed["graphc vs ort"]


def _fmt_speed(speed: tuple[float, float, float]) -> str:
    ratio, low, high = speed
    return "1.00x" if (low, high) == (1.0, 1.0) else f"{ratio:.2f}x ({low:.2f}-{high:.2f})"


def table(rows: list[Row]) -> str:
    feeds = list(rows[0].speed)
    with_top1, with_acc = rows[0].agreement is not None, rows[0].accuracy is not None
    head = ["variant", "size vs float", *[f"speed vs float, {f}" for f in feeds], "cosine vs float"]
    head += ["top-1 agreement"] if with_top1 else []
    head += ["top-1 accuracy"] if with_acc else []
    head.append("onnxruntime runs")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r.variant, f"{r.size_ratio:.3f}x", *[_fmt_speed(r.speed[f]) for f in feeds], f"{r.cosine:.5f}"]
        cells += [f"{r.agreement:.4f}"] if with_top1 else []
        cells += [f"{100 * r.accuracy:.2f}%"] if with_acc else []
        cells.append(r.kernel)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def verdict(rows: list[Row], direct: dict[str, float]) -> str:
    """One sentence from the measured values: graphc's dynamic-all against ort per-channel."""
    by = {r.variant: r for r in rows}
    ours, theirs = by[GRAPHC[1][0]], by[ORT[1][0]]
    speed = ", ".join(f"{_fmt_speed(ratio)} at {feed}" for feed, ratio in direct.items())
    same = all(low <= 1.0 <= high for _, low, high in direct.values())
    return (f"graphc `dynamic, all` against ort per-channel `quantize_dynamic`: size {ours.size_ratio / theirs.size_ratio:.2f}x "
            f"of ort's, cosine vs float {ours.cosine:.5f} against {theirs.cosine:.5f}, speed (ort / graphc, the two "
            f"alternated directly: median of the per-round ratios, their 25th-75th percentiles in brackets) {speed}"
            + ("; the brackets hold 1.0: no speed difference this run can resolve." if same else "."))


def _load_note(load: float) -> str:
    """A sentence on how far to trust the timings, from the measured load."""
    cpus = os.cpu_count() or 1
    if load <= cpus:
        return (f"The 1-minute load average was at most the CPU count ({cpus}) at the start and at the end "
                "(not sampled in between).")
    return (f"The machine was oversubscribed (load {load:.1f} on {cpus} CPUs): rows that run the same kernels "
            "can differ by more than their brackets, so read the speeds as rough; sizes, cosines and kernels "
            "do not depend on the load.")


def run() -> str:
    load_before = os.getloadavg()[0]
    test, calib = np.load(MODELS / "digits_test.npz"), np.load(MODELS / "digits_calib.npz")
    digits, digits_direct = measure(
        variants((MODELS / "transformer_digits.onnx").read_bytes()),
        {"batch 1": {"input": test["input"][:1]}, "batch 64": {"input": calib["input"][:64]}},
        {"input": test["input"]}, test["labels"])
    x = np.random.default_rng(SEED + 1).standard_normal((TOKENS, HIDDEN), dtype=np.float32)
    stack, stack_direct = measure(variants(build_mlp_stack()), {f"M={TOKENS}": {"x": x}}, {"x": x}, None)
    ids = np.random.default_rng(SEED + 2).integers(0, VOCAB, (STEPS, 1)).astype(np.int64)
    sequence, sequence_direct = measure(variants(build_sequence_model()), {f"T={STEPS}": {"ids": ids}}, {"ids": ids},
                                        None, per_row=True)
    load_after = os.getloadavg()[0]
    return (
        f"Float anchor = 1.00x. Speed = the median of the per-round ratios float / variant, each variant "
        f"alternated A/B with the float model on its own (5 warm-up rounds, then "
        + ", ".join(f"{k}: {v}" for k, v in ROUNDS.items()) + f" rounds; {THREADS} threads, > 1 is "
        f"faster), in brackets their 25th-75th percentiles. {os.cpu_count()} CPUs, 1-minute load average {load_before:.1f} before and {load_after:.1f} after "
        "the run. Last column: the weight ops in onnxruntime's optimized graph. "
        + _load_note(max(load_before, load_after)) + "\n\n"
        f"**transformer_digits** (cosine = mean per-image cosine of the logits; top-1 on the {len(test['labels'])} "
        "digits_test images; latency on one test image and on 64 calibration images):\n\n"
        + table(digits) + "\n\n" + verdict(digits, digits_direct)
        + f"\n\n**{LAYERS} x MLP block {HIDDEN}->{FFN}->{HIDDEN}** (synthetic, seeded; cosine and latency on a "
        f"[{TOKENS}, {HIDDEN}] normal input):\n\n"
        + table(stack) + "\n\n" + verdict(stack, stack_direct)
        + f"\n\n**sequence model**: embedding {VOCAB}x{EMBED} (Gather), bidirectional LSTM hidden {LSTM_HIDDEN}, "
        f"Gemm {2 * LSTM_HIDDEN}->{CLASSES} (synthetic, seeded; {STEPS} steps, batch 1; cosine = mean per-step cosine "
        "of the logits, top-1 agreement = per-step argmax, as a greedy decoder reads it):\n\n"
        + table(sequence) + "\n\n" + verdict(sequence, sequence_direct) + "\n"
    )


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    print(run())
