"""Channel-dependency analysis time on a ResNet-50-sized graph and on the real PP-OCR models.

The ResNet-50 graph is built here with onnx.helper (53 Conv + BatchNorm + ReLU, bottleneck blocks
with projection shortcuts, GlobalAveragePool, Flatten, Gemm; 25.6M random weights), exported as an
ONNX model and loaded like any file. Timings are medians of alternated runs of: shape inference
(``ctx.shapes()``, the analysis' input, cached separately in the Context) and the channel analysis
itself (groups, members, masked values). The anchor is loading the model (``graphc.load``).
"""
from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

import graphc
from graphc.analysis import analyze_channels
from graphc.ir import infer_shapes

TITLE = "Channel-dependency analysis"
ROUNDS = 5


def resnet50_proto(seed: int = 0, batch: int = 1, size: int = 224) -> onnx.ModelProto:
    """ResNet-50 v1.5 topology with random weights (BN kept unfused, as exporters emit it)."""
    rng = np.random.default_rng(seed)
    nodes, inits = [], []
    counter = iter(range(10**6))

    def const(name, arr):
        inits.append(numpy_helper.from_array(np.asarray(arr, dtype=np.float32), name))
        return name

    def conv_bn(x, cin, cout, k, stride, relu=True):
        i = next(counter)
        w = const(f"conv{i}.w", rng.standard_normal((cout, cin, k, k)) * (2.0 / (cin * k * k)) ** 0.5)
        y = f"conv{i}"
        nodes.append(helper.make_node("Conv", [x, w], [y], name=f"conv{i}", kernel_shape=[k, k],
                                      pads=[k // 2] * 4, strides=[stride, stride]))
        bn = [const(f"bn{i}.{p}", v) for p, v in (
            ("scale", rng.uniform(0.5, 1.5, cout)), ("bias", rng.normal(0, 0.1, cout)),
            ("mean", rng.normal(0, 0.1, cout)), ("var", rng.uniform(0.5, 1.5, cout)))]
        nodes.append(helper.make_node("BatchNormalization", [y] + bn, [f"bn{i}"], name=f"bn{i}"))
        if not relu:
            return f"bn{i}"
        nodes.append(helper.make_node("Relu", [f"bn{i}"], [f"relu{i}"], name=f"relu{i}"))
        return f"relu{i}"

    x = conv_bn("input", 3, 64, 7, 2)
    nodes.append(helper.make_node("MaxPool", [x], ["pool"], kernel_shape=[3, 3], pads=[1] * 4, strides=[2, 2]))
    x, cin = "pool", 64
    for width, blocks, stride in ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)):
        for b in range(blocks):
            s = stride if b == 0 else 1
            h = conv_bn(x, cin, width, 1, 1)
            h = conv_bn(h, width, width, 3, s)
            h = conv_bn(h, width, width * 4, 1, 1, relu=False)
            short = conv_bn(x, cin, width * 4, 1, s, relu=False) if b == 0 else x
            i = next(counter)
            nodes.append(helper.make_node("Add", [h, short], [f"add{i}"], name=f"add{i}"))
            nodes.append(helper.make_node("Relu", [f"add{i}"], [f"out{i}"], name=f"out{i}"))
            x, cin = f"out{i}", width * 4
    nodes.append(helper.make_node("GlobalAveragePool", [x], ["gap"]))
    nodes.append(helper.make_node("Flatten", ["gap"], ["flat"], axis=1))
    w = const("fc.w", rng.standard_normal((1000, 2048)) * 0.02)
    b = const("fc.b", np.zeros(1000))
    nodes.append(helper.make_node("Gemm", ["flat", w, b], ["logits"], transB=1, name="fc"))
    graph = helper.make_graph(nodes, "resnet50", [helper.make_tensor_value_info(
        "input", TensorProto.FLOAT, [batch, 3, size, size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, 1000])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model


def _median_times(fns: dict, rounds: int = ROUNDS) -> dict:
    times = {k: [] for k in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {k: statistics.median(v) for k, v in times.items()}


def measure(model) -> dict:
    shapes = infer_shapes(model)
    proto = graphc.ir.to_proto(model)
    result = {}
    start = time.perf_counter()
    analyze_channels(model.graph, shapes, model.opset)
    first = time.perf_counter() - start
    t = _median_times({
        "load": lambda: graphc.load(proto, check=False),
        "shapes": lambda: infer_shapes(model),
        "analysis": lambda: result.__setitem__("a", analyze_channels(model.graph, shapes, model.opset)),
    })
    a = result["a"]
    counts = {s: sum(g.status == s for g in a.groups) for s in ("prunable", "inexact", "blocked")}
    return {**t, "first": first, "groups": len(a.groups), **counts,
            "convs": sum(n.op in ("Conv", "ConvTranspose", "Gemm", "MatMul") for n in model.graph.nodes)}


def run() -> str:
    rows = []
    model = graphc.load(resnet50_proto())
    params = sum(int(np.prod(t.values.shape)) for t in model.graph.tensors().values()
                 if hasattr(t, "values"))
    rows.append((f"ResNet-50 ({params / 1e6:.1f}M params, batch 1, 224x224)", measure(model), params))
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    try:
        from support import ppocr_model
        for kind in ("det", "rec", "cls"):
            path = ppocr_model(kind)
            if path is not None:
                m = graphc.load(path)
                rows.append((f"PP-OCR {kind} ({path.name})", measure(m), None))
    except ImportError:
        pass
    lines = [
        f"Median of {ROUNDS} runs, one process, alternating load, shapes and analysis in each round. "
        "weighted layers = Conv/ConvTranspose/Gemm/MatMul nodes. `analysis` = `analyze_channels` on shapes already "
        "inferred (what `ctx.analysis(ChannelGroups)` costs when `ctx.shapes()` is cached); `first` = "
        "the first call on that model, timed once (it may also pay lazy imports and first-use caches); `load` "
        "(graphc.load of the in-memory proto) is the anchor.", "",
        "| model | weighted layers | groups (prunable / inexact / blocked) | load | shapes | analysis "
        "| first | analysis / load |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, r, _ in rows:
        lines.append(f"| {name} | {r['convs']} | {r['groups']} ({r['prunable']} / {r['inexact']} / {r['blocked']}) "
                     f"| {r['load'] * 1e3:.0f} ms | {r['shapes'] * 1e3:.0f} ms | {r['analysis'] * 1e3:.0f} ms "
                     f"| {r['first'] * 1e3:.0f} ms | {r['analysis'] / r['load']:.2f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(run())
