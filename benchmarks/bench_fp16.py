"""fp16 on PP-OCRv4 det, rec and PP-OCR cls, beside onnxconverter-common's converter.

Variants of each model (the float32 file from rapidocr-onnxruntime is the anchor):

- ``graphc fp16``: ``graphc.PassManager("fp16", data=calibration)`` (fold-bn first, which the pass
  declares; the calibration feeds only serve the overflow measurement);
- ``graphc fp16{mode=storage}``: weights stored float16, computed float32;
- ``occ keep-io``: ``onnxconverter_common.float16.convert_float_to_float16(model,
  keep_io_types=True)`` (float32 inputs and outputs, as graphc keeps them);
- ``occ default``: the same with its defaults (float16 inputs and outputs; fed float16 inputs).

Columns: whether onnxruntime (CPU) loads and runs it on every held-out input; outputs that are
NaN or Inf; SQNR of the first output against the float32 model, pooled over the held-out inputs
(ORT CPU, graph optimizations on, as deployed); for graphc compute also the SQNR of the same
plan under *emulated* float16 rounding (every converted tensor and weight rounded to float16,
arithmetic in float32: what GPU/ARM half-precision kernels with float32 accumulation compute;
:func:`graphc.passes.fp16.emulated_model`), because onnxruntime's x86 CPU provider has float16
kernels for only a few ops (measured with 1.32: Clip, Transpose, Concat, LayerNormalization) and
runs the others in float32 between Casts it inserts, dropping the Casts between neighbours; file
size as a ratio to the float32 file; speed: float32 median latency / variant median (> 1 =
faster), all variants of a model timed in one alternation (1 thread, medians) on the first
held-out input, against two anchors: the float32 file as shipped, and the float32 model after
``fold-bn`` (the preparation graphc's variants get, so the second ratio is the half-precision
effect alone). The last lines list the float32 constants of each model beyond float16's range
(65504) and the ops that read them.

Held-out inputs are rendered by ``ppocr_data`` with seed 99 (calibration: seed 1), preprocessed
with the code that ships with the models.

    python benchmarks/run.py fp16
"""
from __future__ import annotations

import logging
import os
import time
import warnings

import numpy as np
import onnx

import bench_quant
import graphc
import ppocr_data
from graphc.bench import compare_all, pair
from graphc.ir import model_bytes
from graphc.passes.fp16 import emulated_model
from graphc.passmanager import PassManager
from graphc.runtime import create_session

TITLE = "fp16: float16 compute and storage on PP-OCR, against onnxconverter-common"
log = logging.getLogger("bench_fp16")

KINDS = ("det", "rec", "cls")
HELD_OUT = {"det": 8, "rec": 100, "cls": 100}
CALIB = {"det": 4, "rec": 16, "cls": 16}
DET_SIDE = 640
ROUNDS = {"det": 20, "rec": 60, "cls": 120}
THREADS = 1
#: the Done-when bar of issue #20
MIN_SQNR_DB, MAX_SIZE = 40.0, 0.52


def _feeds(kind: str, n: int, seed: int) -> list[dict]:
    extra = {"det_side": DET_SIDE} if kind == "det" else {}
    return ppocr_data.feeds(kind, n, seed=seed, **extra)


def _path(kind: str):
    path = bench_quant.ppocr_model(kind)
    return path if path.exists() else None


def _occ(proto: onnx.ModelProto, keep_io: bool) -> bytes:
    from onnxconverter_common import float16  # optional: the bench extra
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float16.convert_float_to_float16(proto, keep_io_types=keep_io).SerializeToString()


def _graphc(path, text: str, calib) -> tuple[bytes, float]:
    model = graphc.load(path)
    start = time.perf_counter()
    PassManager(text, data=calib).run(model)
    return model_bytes(model), time.perf_counter() - start


def _emulated(path, calib) -> bytes:
    model = graphc.load(path)
    PassManager("fold-bn").run(model)
    return model_bytes(emulated_model(model, data=calib))


def _beyond_half_range(proto: onnx.ModelProto) -> list[str]:
    """Float32 constants (initializers and Constant nodes) with |v| > 65504, with their readers."""
    from onnx import numpy_helper
    values = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    values.update({n.output[0]: numpy_helper.to_array(a.t) for n in proto.graph.node if n.op_type == "Constant"
                   for a in n.attribute if a.name == "value"})
    found = []
    for name, v in values.items():
        if v.dtype == np.float32 and v.size and float(np.abs(v).max()) > 65504:
            readers = sorted({n.op_type for n in proto.graph.node if name in n.input})
            found.append(f"`{name}` (max |v| {float(np.abs(v).max()):.3g}, read by {', '.join(readers)})")
    return found


def _evaluate(blob: bytes, held_out: list[dict], reference: list[np.ndarray], *, half_inputs: bool = False,
              optimize: bool = True) -> dict:
    try:
        session = create_session(blob, optimize=optimize, label="variant")
        name = session.get_outputs()[0].name
        got = []
        for feed in held_out:
            feed = {k: v.astype(np.float16) for k, v in feed.items()} if half_inputs else feed
            got.append(session.run([name], feed)[0].astype(np.float64))
    except Exception as exc:  # noqa: BLE001 - a variant that fails is a result, reported as such
        return {"valid": f"no: {str(exc).splitlines()[0][:80]}"}
    bad = sum(int(np.sum(~np.isfinite(g))) for g in got)
    signal = sum(float(np.sum(r ** 2)) for r in reference)
    noise = sum(float(np.sum((g - r)[np.isfinite(g)] ** 2)) for g, r in zip(got, reference))
    sqnr = float("inf") if noise == 0 else 10 * np.log10(signal / noise)
    return {"valid": "yes", "nonfinite": bad, "sqnr": sqnr}


def _model_rows(kind: str, verdicts: list[str], seen: dict | None = None) -> list[str]:
    path = _path(kind)
    if path is None:
        return [f"| {kind} | rapidocr-onnxruntime not installed | | | | | | |"]
    proto = onnx.load(str(path))
    size = os.path.getsize(path)
    held_out, calib = _feeds(kind, HELD_OUT[kind], 99), _feeds(kind, CALIB[kind], 1)
    ref_session = create_session(str(path))
    reference = [ref_session.run(None, f)[0].astype(np.float64) for f in held_out]
    variants: dict[str, tuple[bytes, str]] = {}
    blob, seconds = _graphc(path, "fp16", calib)
    variants["graphc fp16"] = (blob, f"{seconds:.1f} s")
    blob, seconds = _graphc(path, "fp16{mode=storage}", None)
    variants["graphc fp16{mode=storage}"] = (blob, f"{seconds:.1f} s")
    for label, keep in (("occ keep-io", True), ("occ default", False)):
        start = time.perf_counter()
        variants[label] = (_occ(proto, keep), f"{time.perf_counter() - start:.1f} s")
    results = {label: _evaluate(blob, held_out, reference, half_inputs=label == "occ default")
               for label, (blob, _) in variants.items()}
    emulated = _evaluate(_emulated(path, calib), held_out, reference, optimize=False)
    prepared, _ = _graphc(path, "fold-bn", None)
    timed = {"float": str(path), "float fold-bn": prepared,
             **{k: v[0] for k, v in variants.items() if k != "occ default" and results[k]["valid"] == "yes"}}
    stats = compare_all(timed, held_out[0], threads=THREADS, rounds=ROUNDS[kind])
    beyond = _beyond_half_range(proto)
    verdicts.append(f"{kind}: float32 constants beyond float16's range: {'; '.join(beyond) if beyond else 'none'}")
    rows = []
    for label, (blob, seconds) in variants.items():
        r = results[label]
        ratio = len(blob) / size
        speed = _speedup(stats, "float", label) if label in stats else "-"
        if label in stats and label.startswith("graphc"):
            speed += f" / {_speedup(stats, 'float fold-bn', label)}"
            if seen is not None:
                seen.setdefault("vs_fold_bn", {})[(kind, label)] = pair(stats, "float fold-bn", label, threads=THREADS)
        emu = f"{emulated.get('sqnr', float('nan')):.1f}" if label == "graphc fp16" else "-"
        if r["valid"] != "yes":
            rows.append(f"| {kind} | {label} | {r['valid']} | - | - | - | {ratio:.3f} | - | {seconds} |")
            if label == "graphc fp16":
                verdicts.append(f"{kind}: graphc fp16 not valid in ORT CPU ({r['valid']}) -> MISSES issue 20's bar")
            continue
        rows.append(f"| {kind} | {label} | yes | {r['nonfinite']} | {r['sqnr']:.1f} | {emu} | {ratio:.3f} | "
                    f"{speed} | {seconds} |")
        if label == "graphc fp16":
            ok = r["sqnr"] >= MIN_SQNR_DB and ratio <= MAX_SIZE and r["nonfinite"] == 0
            verdicts.append(f"{kind}: graphc fp16 valid in ORT CPU, {r['nonfinite']} NaN/Inf outputs, SQNR "
                            f"{r['sqnr']:.1f} dB, file {ratio:.3f}x -> {'meets' if ok else 'MISSES'} issue 20's bar "
                            f"(valid, no NaN/Inf, >= {MIN_SQNR_DB:g} dB, <= {MAX_SIZE}x)")
            if seen is not None:
                seen.setdefault("sqnr", {})[kind] = (r["sqnr"], emulated.get("sqnr", float("nan")))
    return rows


def run() -> str:
    verdicts: list[str] = []
    rows, seen = [], {}
    for kind in KINDS:
        log.info("fp16: %s", kind)
        rows += _model_rows(kind, verdicts, seen)
    header = ("| model | variant | valid in ORT CPU | NaN/Inf outputs | SQNR dB (ORT CPU) | SQNR dB (emulated "
              "fp16) | file vs fp32 | speed vs fp32 / vs fp32 fold-bn (1 thread) | convert time |\n"
              "|---|---|---|---|---|---|---|---|---|")
    held = ", ".join(f"{k} {n}" for k, n in HELD_OUT.items())
    return "\n".join([
        f"Held-out inputs: {held} (det pages at most {DET_SIDE} px on the longer side); SQNR of the first "
        "output pooled over them. occ = onnxconverter-common "
        "`convert_float_to_float16`. Speed: per model, the float32 file, the float32 model after fold-bn and "
        f"every valid variant but occ default timed in one alternation ({THREADS} thread; rounds: "
        + ", ".join(f"{k} {v}" for k, v in ROUNDS.items()) + "); a ratio is the median of the per-round ratios "
        "anchor / variant, in brackets their 25th-75th percentiles. Convert time: one conversion, wall.",
        "", header, *rows, "",
        *[f"- {v}" for v in verdicts],
        "",
        _notes(seen) + " "
        "occ converts every BatchNormalization as it is, so a running variance "
        "beyond 65504 (listed above) becomes inf in float16; graphc folds BatchNormalization into the Conv "
        "first (and keeps float32 any node whose constant exceeds the range).",
        "",
        "    python benchmarks/run.py fp16",
    ])


def _notes(seen: dict) -> str:
    """The reading of the CPU-vs-emulated SQNR and of storage mode's speed, from this run's values."""
    sqnr = seen.get("sqnr", {})
    compared = "; ".join(f"{kind} {cpu:.1f} vs {emu:.1f} dB ({'above' if cpu > emu else 'not above'})"
                         for kind, (cpu, emu) in sqnr.items())
    storage = {kind: c for (kind, label), c in seen.get("vs_fold_bn", {}).items() if label.endswith("storage}")}
    holds = [kind for kind, c in storage.items() if c.ratio_spread()[0] <= 1.0 <= c.ratio_spread()[1]]
    others = [kind for kind in storage if kind not in holds]
    return ("onnxruntime's x86 CPU provider runs most float16 nodes in float32 between Casts it inserts "
            "(see the module docstring), so the CPU SQNR of float16 compute need not be what half-precision "
            f"hardware gives; CPU against emulated fp16 SQNR in this run: {compared or 'not measured'}. The "
            "second speed ratio, against the prepared float32 model, is the half-precision effect alone. "
            "Storage mode computes in float32 on folded weights, so against the prepared float32 model it "
            "should time alike: its brackets hold 1.00 for "
            f"{', '.join(holds) or 'no model'}" + (f" and do not for {', '.join(others)}" if others else "")
            + " in this run.")


def _speedup(stats, base: str, label: str) -> str:
    """Paired median speed-up of ``label`` over ``base`` with its 25th-75th percentile spread."""
    both = pair(stats, base, label, threads=THREADS)
    low, high = both.ratio_spread()
    return f"{both.ratio:.2f}x ({low:.2f}-{high:.2f})"
