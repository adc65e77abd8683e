"""canonicalize on PP-OCRv4 det / rec, PP-OCR cls and the zoo: node counts, exactness, and fp32
onnxruntime latency against the original: per model, the original and every canonicalized variant
in one alternation (graphc.bench.compare_all), medians and the spread of the per-round ratios."""
from __future__ import annotations

import logging
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
import onnx

import graphc
from graphc.bench import compare_all, pair
from graphc.passmanager import PassManager
from graphc.runtime import create_session

log = logging.getLogger(__name__)

TITLE = "canonicalize: fused activations and folded affine maps (fp32, onnxruntime, 2 threads)"
ROOT = Path(__file__).resolve().parents[1]
PPOCR = {  # kind: (file in rapidocr-onnxruntime, bench input shape, timed rounds)
    "det": ("ch_PP-OCRv4_det_infer.onnx", (1, 3, 640, 640), 15),
    "rec": ("ch_PP-OCRv4_rec_infer.onnx", (1, 3, 48, 320), 40),
    "cls": ("ch_ppocr_mobile_v2.0_cls_infer.onnx", (1, 3, 48, 192), 200),
}
#: det variants: what each part of canonicalize is worth (all against the original, same run)
DET_VARIANTS = {
    "canonicalize (default: x*HardSigmoid(x) at opset 12)": "canonicalize",
    "canonicalize{upgrade-opset=true} (native HardSwish, opset 14)": "canonicalize{upgrade-opset=true}",
    "HardSwish chains only": "canonicalize{disable=fold_into_producer,fold_into_consumer,affine_chain}",
    "affine folds only (no activation rules)": "canonicalize{disable=hardswish,hardsigmoid}",
}


WARMUP = 3
ZOO_ROUNDS = 100


def run() -> str:
    rows, variants, upgrades = [], [], []
    for kind, (name, shape, rounds) in PPOCR.items():
        path = _ppocr_path(name)
        if path is None:
            return "rapidocr-onnxruntime is not installed; nothing measured."
        feeds = {"x": text_page(shape)}
        pipelines = {"canonicalize": "canonicalize"}
        if kind == "det":
            pipelines.update(DET_VARIANTS)
        measured = _measure(path, feeds, pipelines, rounds)
        rows.append({**measured["canonicalize"], "label": f"PP-OCR {kind}"})
        upgrades.append(_upgrade_check(kind, path, feeds))
        if kind == "det":
            variants = [(label, measured[label]) for label in DET_VARIANTS]
    for zoo in sorted((ROOT / "models").glob("*.onnx")):
        rows.append({**_measure(zoo, None, {"canonicalize": "canonicalize"}, ZOO_ROUNDS)["canonicalize"],
                     "label": zoo.stem})
    return _markdown(rows, variants, upgrades)


# -- measurements ------------------------------------------------------------------------------------


def _measure(path: Path, feeds, pipelines: dict[str, str], rounds: int) -> dict[str, dict]:
    """Each pipeline's result on a fresh load of ``path``; the original and every result timed in
    one alternation (original, result 1, result 2, ..., repeated ``rounds`` times)."""
    original = graphc.load(path)
    if feeds is None:
        from graphc.bench import bench_feeds
        feeds = bench_feeds(original)
    built, models = {}, {}
    for label, pipeline in pipelines.items():
        model = graphc.load(path)
        record = PassManager(pipeline).run(model).records[0]
        models[label] = model
        built[label] = {
            "pipeline": pipeline, "record": record, "diff": _max_abs_diff(original, model, feeds),
            "ort_nodes": (_ort_nodes(original), _ort_nodes(model)),
        }
    floor = _max_abs_diff(original, original, feeds, optimize_b=True)
    times = compare_all({"original": original, **models}, feeds, threads=2, warmup=WARMUP, rounds=rounds)
    out = {}
    for label, b in built.items():
        timing = pair(times, "original", label, warmup=WARMUP)
        low, high = timing.ratio_spread()
        record = b["record"]
        log.info("%s %s: %s, ratio %.3f", path.name, b["pipeline"], record.stats, timing.ratio)
        out[label] = {
            "shape": "x".join(str(d) for d in next(iter(feeds.values())).shape),
            "nodes": (record.nodes_before, record.nodes_after), "ort_nodes": b["ort_nodes"],
            "stats": record.stats, "skipped": record.skipped, "diff": b["diff"], "floor": floor,
            "a_ms": timing.median_a_ms, "b_ms": timing.median_b_ms, "ratio": timing.ratio,
            "spread": (low, high), "rounds": rounds,
        }
    return out


def _upgrade_check(kind: str, path: Path, feeds) -> dict:
    """Does onnx's version converter handle the model (needed for upgrade-opset), and exactly?"""
    original = graphc.load(path)
    model = graphc.load(path)
    try:
        record = PassManager("canonicalize{upgrade-opset=true}").run(model).records[0]
    except Exception as exc:  # the converter raises many types; report, do not stop the bench
        return {"kind": kind, "from": original.opset, "to": None, "error": f"{type(exc).__name__}: {exc}"}
    return {"kind": kind, "from": original.opset, "to": model.opset,
            "diff": _max_abs_diff(original, model, feeds), "natives": _native_counts(model),
            "stats": record.stats}


def _max_abs_diff(a, b, feeds, optimize_b: bool = False) -> float:
    out_a = create_session(a, optimize=False).run(None, feeds)
    out_b = create_session(b, optimize=optimize_b).run(None, feeds)
    return max(float(np.abs(x - y).max()) for x, y in zip(out_a, out_b))


def _ort_nodes(model) -> int:
    """Nodes onnxruntime runs after its own graph optimizations (level ALL, as timed)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "optimized.onnx"
        create_session(model, threads=2, optimized_model_path=out)
        return len(onnx.load(str(out), load_external_data=False).graph.node)


def _native_counts(model) -> str:
    counts = Counter(n.op for n in model.graph.nodes)
    return ", ".join(f"{op} {counts[op]}" for op in ("HardSwish", "LayerNormalization", "Gelu") if counts[op])


def _ppocr_path(name: str) -> Path | None:
    try:
        import rapidocr_onnxruntime
    except ImportError:
        return None
    path = Path(rapidocr_onnxruntime.__file__).parent / "models" / name
    return path if path.exists() else None


def text_page(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    """Dark text on a light page, normalized as PP-OCR expects ((x/255 - 0.5) / 0.5): the
    detector's probability map is all zero on random noise, which would make timing and
    exactness meaningless."""
    from PIL import Image, ImageDraw, ImageFont
    _, _, h, w = shape
    rng = np.random.default_rng(seed)
    img = Image.new("RGB", (w, h), (235, 232, 228))
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default(size=max(10, min(28, h // 3)))
    step = max(12, min(40, h // 2))
    for i in range(max(1, h // step)):
        text = "".join(rng.choice(list("ABCDEFGH abcdefgh 0123456789"), max(8, w // 10)))
        draw.text((4, 2 + i * step), text, fill=(20, 20, 20), font=font)
    pixels = np.asarray(img, np.float32) / 255.0
    return ((pixels - 0.5) / 0.5).transpose(2, 0, 1)[None].astype(np.float32)


# -- report --------------------------------------------------------------------------------------------


def _twin_note(rows: list[dict], variants: list) -> str:
    """The det row and the default variant are the same pipeline, built and timed separately in the
    same alternation: how far their medians differ is this run's noise between identical models."""
    det = next(r for r in rows if r["label"] == "PP-OCR det")
    twin = next((r for label, r in variants if r["nodes"] == det["nodes"] and r["diff"] == det["diff"]), None)
    if twin is None:
        return "The default variant differs from the det row's model; no noise estimate."
    return (f"The default variant and the det row's `canonicalize` are identical models timed in the same "
            f"alternation: {twin['b_ms']:.2f} ms against {det['b_ms']:.2f} ms, a "
            f"{max(twin['b_ms'], det['b_ms']) / min(twin['b_ms'], det['b_ms']):.2f}x difference that is "
            "noise alone in this run.")


def _markdown(rows: list[dict], variants: list, upgrades: list[dict]) -> str:
    rounds = ", ".join(f"{r['label']} {r['rounds']}" for r in rows if r["label"].startswith("PP-OCR"))
    lines = [
        "Original vs `canonicalize` (default options). Per model, the original and every canonicalized "
        "variant are timed in one alternation with `graphc.bench.compare_all` (original, variant 1, "
        f"variant 2, ..., repeated: {rounds}, the zoo {ZOO_ROUNDS} rounds, after {WARMUP} warm-up rounds; "
        "2 threads, graph optimizations on); speedup = median of the per-round ratios original / "
        "canonicalized (ms columns: each model's median), in brackets their 25th-75th percentiles. Inputs: rendered text pages / "
        "lines for PP-OCR, seeded random data for the zoo. *max abs diff* is against the original "
        "(both unoptimized); *ORT noise* is how far onnxruntime's own fusions move the original on the "
        "same input.",
        "",
        "| model | input | nodes | nodes after ORT opt | max abs diff | ORT noise | original ms | canonical ms "
        "| speedup |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['label']} | {r['shape']} | {r['nodes'][0]} -> {r['nodes'][1]} | "
                     f"{r['ort_nodes'][0]} -> {r['ort_nodes'][1]} | {r['diff']:.1e} | {r['floor']:.1e} | "
                     f"{r['a_ms']:.2f} | {r['b_ms']:.2f} | **{r['ratio']:.2f}x** "
                     f"({r['spread'][0]:.2f}-{r['spread'][1]:.2f}) |")
    lines += ["", "Rules fired, and what was left alone (reason: count):", ""]
    for r in rows:
        fired = ", ".join(f"{k} {v}" for k, v in r["stats"].items()) or "none"
        left = "; ".join(f"{k}: {v}" for k, v in r["skipped"].items()) or "nothing"
        lines.append(f"- **{r['label']}**: {fired}. Left alone: {left}.")
    if variants:
        lines += ["", "PP-OCRv4 det, where the speedup comes from (every variant and the original in the "
                  "one alternation of the det row above):", "",
                  "| variant | nodes | nodes after ORT opt | max abs diff | variant ms | speedup |",
                  "|---|---|---|---|---|---|"]
        for label, r in variants:
            lines.append(f"| {label} | {r['nodes'][1]} | {r['ort_nodes'][1]} | {r['diff']:.1e} | {r['b_ms']:.2f} | "
                         f"{r['ratio']:.2f}x ({r['spread'][0]:.2f}-{r['spread'][1]:.2f}) |")
        lines += ["", _twin_note(rows, variants)]
    lines += ["", "`upgrade-opset=true` (onnx version converter on the whole model):", "",
              "| model | opset | native ops after | max abs diff |", "|---|---|---|---|"]
    for u in upgrades:
        if u.get("to") is None:
            lines.append(f"| {u['kind']} | {u['from']} -> failed: {u['error']} | | |")
        else:
            lines.append(f"| {u['kind']} | {u['from']} -> {u['to']} | {u['natives'] or '-'} | {u['diff']:.1e} |")
    return "\n".join(lines)
