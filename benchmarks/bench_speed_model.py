"""quant's speed model: the measured cost table against the builtin one.

``placement=auto`` puts on integers what the speed model says is faster
(``passes/quant/speed_model.py``). The builtin table was fitted on an AVX512-VNNI Xeon on
PP-OCR's Conv2d shapes; ``speed-model=measured`` (the default) times one-op float and QDQ models
on this machine once (``graphc/bench/cost_probe.py``) and caches the table per CPU and
onnxruntime version. For each model: the placement each table gives (int8 layers) and the
latency of fp32 / each result at batch 1, 2 threads, all candidates in one alternation (medians);
for the trained VAD also the share of held-out frames whose speech decision equals fp32's.
"""
from __future__ import annotations

import importlib.util
import logging
import time
from pathlib import Path

import numpy as np

import graphc
from graphc.bench import compare_all
from graphc.bench.cost_table import measured_table
from graphc.calib.data import open_data
from graphc.ir import walk_graphs
from graphc.runtime import create_session, run_session

log = logging.getLogger(__name__)

TITLE = "quant speed model: measured cost table vs builtin (placement=auto, 2 threads)"
ROOT = Path(__file__).resolve().parents[1]
VAD = ROOT / "tests" / "models" / "corpus" / "vad_trained_if.onnx"
TABLES = ("builtin", "measured")
ROUNDS = {"vad": 60, "det": 12, "rec": 30, "cls": 60}
MIN_AGREEMENT = 0.995  # issue 18: speech decisions unchanged on >= 99.5% of frames
PPOCR_CALIB = {"det": 4, "rec": 16, "cls": 16}


def run() -> str:
    start = time.perf_counter()
    table = measured_table()
    lines = [f"Measured table: {table.key.describe()} "
             f"({'measured in this run' if table.fresh else 'from the cache'}; unit: ns of one thread).", ""]
    lines += _vad()
    lines += [""] + _ppocr()
    log.info("speed model bench: %.0f s", time.perf_counter() - start)
    return "\n".join(lines)


def _quantize(path: Path, pipeline: str, data) -> tuple[object, dict]:
    model = graphc.load(path)
    report = graphc.PassManager(pipeline, data=open_data(data, model)).run(model)
    return model, report.records[-1].stats


def _int8_layers(model) -> int:
    """Conv/MatMul/Gemm nodes (graph and bodies) whose weight is a DequantizeLinear of integers."""
    count = 0
    for _, scope in walk_graphs(model.graph):
        for node in scope.nodes:
            if node.op in ("Conv", "MatMul", "Gemm") and len(node.inputs) > 1 and node.inputs[1].inputs:
                count += node.inputs[1].inputs[0].op == "DequantizeLinear"
    return count


def _signature(model) -> list[tuple[str, str, str]]:
    """(scope, node, op) of every node: equal for two results with the same placement."""
    return [(path, n.name, n.op) for path, scope in walk_graphs(model.graph) for n in scope.nodes]


def _vad_signals():
    spec = importlib.util.spec_from_file_location("vad_signals", ROOT / "models" / "vad_signals.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _vad() -> list[str]:
    signals = _vad_signals()
    data = VAD.with_suffix(".npz")
    candidates = {"fp32": graphc.load(VAD)}
    for table in TABLES:
        candidates[table], _ = _quantize(VAD, f"quant{{speed-model={table}}}", data)
    branch_convs = sum(n.op == "Conv" for path, scope in walk_graphs(candidates["fp32"].graph) if path
                       for n in scope.nodes)
    lines = [f"**Trained VAD** (`vad_trained_if`, {branch_convs} branch Conv1d inside `If`): `-p quant --data` with "
             f"each table; speed: fp32 median latency / result median at batch 1, fp32 and both results in one "
             f"alternation of {ROUNDS['vad']} rounds after 10 warm-up rounds (2 threads); agreement: share of the "
             "held-out frames whose speech decision (p > 0.5) equals fp32's.",
             "",
             "| table | int8 layers | speed 16 kHz | speed 8 kHz | agreement 16 kHz | agreement 8 kHz |",
             "|---|---|---|---|---|---|"]
    speed, agree = {}, {}
    for sr in signals.RATES:
        audio, _labels = signals.heldout(sr)
        sr_feed = np.array(sr, np.int64)
        probs = {name: run_session(create_session(m, threads=2), {"audio": audio, "sr": sr_feed})[0]
                 for name, m in candidates.items()}
        stats = compare_all(candidates, {"audio": audio[:1], "sr": sr_feed}, threads=2, warmup=10,
                            rounds=ROUNDS["vad"])
        for name in TABLES:
            speed[(name, sr)] = stats["fp32"].median_ms / stats[name].median_ms
            agree[(name, sr)] = signals.frame_agreement(probs["fp32"], probs[name])
    for name in TABLES:
        lines.append(f"| {name} | {_int8_layers(candidates[name])} | {speed[(name, 16000)]:.2f}x | "
                     f"{speed[(name, 8000)]:.2f}x | {agree[(name, 16000)]:.4f} | {agree[(name, 8000)]:.4f} |")
    ints = _int8_layers(candidates["measured"])
    worst = min(agree[("measured", sr)] for sr in signals.RATES)
    met = ints == branch_convs and worst >= MIN_AGREEMENT
    lines += ["", f"Issue 18's bar with the measured table (the default speed-model=auto's choice unless "
                  f"$GRAPHC_SPEED_MODEL is set): branch convolutions int8 {ints} of {branch_convs}, "
                  f"speech decisions unchanged on {worst:.2%} of frames at the worse rate (bar >= "
                  f"{MIN_AGREEMENT:.1%}, every branch Conv int8): {'met' if met else 'MISSED'}."]
    return lines


def _ppocr() -> list[str]:
    try:
        import rapidocr_onnxruntime
    except ImportError:
        return ["PP-OCR: rapidocr-onnxruntime is not installed; skipped."]
    import ppocr_data
    names = {"det": "ch_PP-OCRv4_det_infer.onnx", "rec": "ch_PP-OCRv4_rec_infer.onnx",
             "cls": "ch_ppocr_mobile_v2.0_cls_infer.onnx"}
    base = Path(rapidocr_onnxruntime.__file__).parent / "models"
    lines = ["**PP-OCR** (`-p quant --data`, calibration samples: "
             + ", ".join(f"{k} {v}" for k, v in PPOCR_CALIB.items()) + "; speed: fp32 (fold-bn,canonicalize) median / "
             "result median, all in one alternation (rounds: " + ", ".join(f"{k} {ROUNDS[k]}" for k in PPOCR_CALIB)
             + "; 5 warm-up rounds, 2 threads); when both tables give the same placement the model is timed once).",
             "",
             "| model | int8 layers builtin | int8 layers measured | placement | speed builtin | speed measured |",
             "|---|---|---|---|---|---|"]
    for kind in ("det", "rec", "cls"):
        path = base / names[kind]
        calib = ppocr_data.feeds(kind, PPOCR_CALIB[kind], seed=1)
        fp32 = graphc.load(path)
        graphc.PassManager("fold-bn,canonicalize").run(fp32)
        candidates = {"fp32": fp32}
        for table in TABLES:
            candidates[table], _ = _quantize(path, f"quant{{speed-model={table}}}", calib)
        same = _signature(candidates["builtin"]) == _signature(candidates["measured"])
        if same:  # one model: time it once (every extra session's spinning threads slow the others)
            del candidates["builtin"]
        feed = _bench_feed(ppocr_data, kind)
        stats = compare_all(candidates, {"x": feed}, threads=2, warmup=5, rounds=ROUNDS[kind])
        s = {name: stats["fp32"].median_ms / stats[name].median_ms for name in candidates}
        lines.append(f"| {kind} | {_int8_layers(candidates.get('builtin', candidates['measured']))} | "
                     f"{_int8_layers(candidates['measured'])} | {'same' if same else 'differs'} | "
                     f"{s.get('builtin', s['measured']):.2f}x | {s['measured']:.2f}x |")
    return lines


def _bench_feed(ppocr_data, kind: str) -> np.ndarray:
    if kind == "det":
        page = ppocr_data.render_page(np.random.default_rng(5), 640, 480)
        return ppocr_data.det_feed(page, 640)
    line = ppocr_data.render_line(np.random.default_rng(5), flipped=False)
    return ppocr_data.rec_feed(line) if kind == "rec" else ppocr_data.cls_feed(line)
