"""The exporter corpus (tests/models/corpus/): which passes change each model, and what the exact
pipeline and `quant` alone give in speed and error (fp32 onnxruntime, 2 threads).

Per model: every pass run alone (first and only pass) says whether it changed the model or the
one-line error it refused with; the exact pipeline and ``quant`` (with the model's own .npz as
calibration data) are timed against the original with graphc.bench (alternated A/B, medians) and
compared with graphc.verify on the same .npz (worst output's max abs error and SQNR).

A paragraph follows on the trained VAD (``vad_trained_if``): per quant pipeline, which passes
changed it, latency against fp32 at batch 1 per sample rate (one alternation of all candidates),
speech-decision agreement with fp32 on the held-out clips of ``models/vad_signals.py``, and the
bytes of its constants (weights) with how many branch Convs read int8 weights.

    python benchmarks/run.py exporters
"""
from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

import numpy as np
import onnx_graphsurgeon as gs

import graphc
from graphc.bench import compare_all, compare_latency
from graphc.calib.data import open_data
from graphc.errors import GraphcError
from graphc.ir import walk_graphs
from graphc.passmanager import PassManager
from graphc.runtime import create_session, run_session
from graphc.verify import compare_models

log = logging.getLogger(__name__)

TITLE = "Exporter corpus: what each pass changes, exact pipeline and quant (fp32 onnxruntime, 2 threads)"
CORPUS = Path(__file__).resolve().parents[1] / "tests" / "models" / "corpus"
SINGLE = ("cleanup", "fold-constants", "fold-bn", "canonicalize", "quant", "prune", "factorize")
EXACT = "fold-bn,canonicalize,fold-constants,cleanup"
ROUNDS = 100
SAMPLES = 8  # feeds of the .npz compared by graphc.verify
BATCH = 16  # timed feed: 16 stacked samples where the .npz is a stack (else its first feed)


def run() -> str:
    rows = [_model_row(path) for path in sorted(CORPUS.glob("*.onnx"))]
    lines = [
        f"Models: `tests/models/corpus/` (see its README). Passes run alone: {', '.join(SINGLE)}. "
        f"Exact pipeline: `{EXACT}`. Speed: original / result latency, the median of the per-round "
        f"ratios of {ROUNDS} alternated rounds (original, result; 10 warm-up rounds, 2 threads), in "
        "brackets their 25th-75th percentiles (brackets that hold 1.00 mean no difference this run can "
        f"resolve), on the model's first .npz feed (batch {BATCH} where the .npz stacks samples, else "
        f"one feed). Error: worst output over the first {SAMPLES} feeds of the model's .npz (fewer "
        "where it holds fewer). "
        "Nodes count every If/Loop body's nodes too. Runs are in-process (`graphc.load` and the "
        "pass manager, as `graphc opt` runs them; the CLI on the shape-less and wrong declarations: tests/ir/test_declarations.py).",
        "",
        "| model | passes alone that changed it | refused (first words) | exact: nodes | exact: speed | "
        "exact: max abs err | quant: speed | quant: SQNR |",
        "|---|---|---|---|---|---|---|---|",
    ]
    lines += [_cells(r) for r in rows]
    lines += ["", *_trained_vad()]
    return "\n".join(lines)


def _model_row(path: Path) -> dict:
    data = path.with_suffix(".npz")
    changed, refused = [], []
    for name in SINGLE:
        outcome = _run(path, name, data)
        if isinstance(outcome, str):
            refused.append(f"{name}: {outcome[:70]}")
        elif any(r.modified for r in outcome[1].records):
            changed.append(name)
    row = {"model": path.stem, "changed": changed, "refused": refused}
    row["exact"] = _measure(path, EXACT, data)
    row["quant"] = _measure(path, "quant", data)
    log.info("%s: %s", path.stem, row)
    return row


def _run(path: Path, pipeline: str, data: Path):
    """(model, run report) or the one-line error of a refusal."""
    try:
        model = graphc.load(path)
        source = open_data(data, model)
        report = PassManager(pipeline, data=source).run(model)
        graphc.ir.to_proto(model)  # what saving needs
        return model, report
    except GraphcError as exc:
        return str(exc).splitlines()[0]


def _measure(path: Path, pipeline: str, data: Path) -> dict:
    outcome = _run(path, pipeline, data)
    if isinstance(outcome, str):
        return {"error": outcome}
    model, report = outcome
    original = graphc.load(path)
    try:
        verdict = compare_models(original, model, data=open_data(data, original), samples=SAMPLES)
        feed = _timed_feed(original, data)
        timing = compare_latency(original, model, feed, threads=2, warmup=10, rounds=ROUNDS)
    except GraphcError as exc:
        return {"error": str(exc).splitlines()[0]}
    worst = verdict.worst()
    return {"nodes": (_all_nodes(original), _all_nodes(model)),
            "modified": any(r.modified for r in report.records),
            "ratio": timing.ratio, "spread": timing.ratio_spread(), "max_abs": max(o.max_abs for o in verdict.outputs),
            "sqnr": worst.sqnr_db if worst else float("nan")}


def _timed_feed(model, data: Path) -> dict:
    """BATCH stacked samples, or one feed when the model's batch dim is fixed."""
    try:
        return next(iter(open_data(data, model, batch=BATCH)))
    except GraphcError:
        return next(iter(open_data(data, model)))


def _all_nodes(model) -> int:
    """Nodes of the graph and of every If/Loop/Scan body in it."""
    return sum(len(scope.nodes) for _, scope in walk_graphs(model.graph))


def _cells(row: dict) -> str:
    exact, quant = row["exact"], row["quant"]
    refused = "; ".join(row["refused"]).replace("|", "\\|") or "-"
    cells = [row["model"], ", ".join(row["changed"]) or "none", refused]
    if "error" in exact:
        cells += ["-", "-", f"error: {exact['error'][:60]}"]
    else:
        speed = _speed(exact) if exact["modified"] else "unchanged"
        cells += [f"{exact['nodes'][0]} -> {exact['nodes'][1]}", speed, f"{exact['max_abs']:.1e}"]
    if "error" in quant:
        cells += ["-", f"error: {quant['error'][:60]}"]
    elif "quant" not in row["changed"]:
        cells += ["unchanged", "-"]
    else:
        cells += [_speed(quant), f"{quant['sqnr']:.1f} dB"]
    return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"


def _speed(measured: dict) -> str:
    low, high = measured["spread"]
    return f"{measured['ratio']:.2f}x ({low:.2f}-{high:.2f})"


# --------------------------------------------------------------------------
# the trained VAD: frame agreement, speed and weight bytes per quant pipeline
# --------------------------------------------------------------------------

VAD = CORPUS / "vad_trained_if.onnx"
VAD_PIPELINES = ("quant", "quant{placement=all}", "equalize,quant{placement=all}")
VAD_ROUNDS = 60


def _vad_signals():
    spec = importlib.util.spec_from_file_location(
        "vad_signals", Path(__file__).resolve().parents[1] / "models" / "vad_signals.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _weight_bytes(model) -> tuple[int, int, int]:
    """(bytes of every constant in the graph and its bodies, branch Convs, those with int8 weights)."""
    seen, total, convs, int8 = set(), 0, 0, 0
    for path, scope in walk_graphs(model.graph):
        for t in scope.tensors().values():
            if isinstance(t, gs.Constant) and id(t) not in seen:
                seen.add(id(t))
                total += t.values.nbytes
        for node in scope.nodes:
            if node.op == "Conv" and path:
                convs += 1
                w = node.inputs[1]
                dq = w.inputs[0] if w.inputs else None
                int8 += bool(dq is not None and dq.op == "DequantizeLinear" and dq.inputs[0].values.dtype == np.int8)
    return total, convs, int8


def _trained_vad() -> list[str]:
    signals = _vad_signals()
    data = VAD.with_suffix(".npz")
    original = graphc.load(VAD)
    candidates = {"fp32": original}
    changed = {}
    for pipeline in VAD_PIPELINES:
        outcome = _run(VAD, pipeline, data)
        if isinstance(outcome, str):
            changed[pipeline] = f"error: {outcome[:60]}"
            continue
        model, report = outcome
        candidates[pipeline] = model
        changed[pipeline] = ", ".join(f"{r.name}: {_summary(r)}" for r in report.records if r.modified) or "none"
    heldout = {sr: signals.heldout(sr) for sr in signals.RATES}
    agreement, speed = {}, {}
    for sr, (audio, _labels) in heldout.items():
        sr_feed = np.array(sr, np.int64)
        probs = {name: run_session(create_session(model, threads=2), {"audio": audio, "sr": sr_feed})[0]
                 for name, model in candidates.items()}
        for name in candidates:
            if name != "fp32":
                agreement[(name, sr)] = signals.frame_agreement(probs["fp32"], probs[name])
        stats = compare_all(candidates, {"audio": audio[:1], "sr": sr_feed}, threads=2, warmup=10, rounds=VAD_ROUNDS)
        for name in candidates:
            speed[(name, sr)] = stats["fp32"].median_ms / stats[name].median_ms
    base_bytes = _weight_bytes(original)[0]
    lines = [
        "**Trained VAD** (`vad_trained_if`: conv + LSTM per sample rate inside `If(sr == 16000)`, "
        "trained on seeded synthetic speech-like vs. noise clips). Agreement: share of the "
        f"{len(heldout[16000][1]) * heldout[16000][1].shape[1]} held-out frames per rate whose speech "
        "decision (p > 0.5) equals fp32's; speed: fp32 median latency / candidate median at batch 1 "
        f"(fp32 and all candidates in one alternation of {VAD_ROUNDS} rounds after 10 warm-up rounds, 2 "
        "threads); weights: bytes "
        "of all constants, graph and bodies.",
        "",
        "| pipeline | what changed | speed 16 kHz | speed 8 kHz | agreement 16 kHz | agreement 8 kHz | "
        "weights | branch Convs int8 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, model in candidates.items():
        if name == "fp32":
            continue
        total, convs, int8 = _weight_bytes(model)
        lines.append(
            f"| `{name}` | {changed[name]} | {speed[(name, 16000)]:.2f}x | {speed[(name, 8000)]:.2f}x | "
            f"{agreement[(name, 16000)]:.4f} | {agreement[(name, 8000)]:.4f} | "
            f"{total / 1e3:.1f} kB ({total / base_bytes:.2f}x) | {int8} of {convs} |")
    return lines


def _summary(record) -> str:
    keys = [k for k in record.stats if k.startswith("quantized_") or k in ("pairs_equalized",)]
    return " ".join(f"{k}={record.stats[k]}" for k in keys) or "modified"
