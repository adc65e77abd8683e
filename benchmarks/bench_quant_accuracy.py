"""Quantization that keeps accuracy: graphc's error budgets on the PP-OCR models against plain
int8 and against onnxruntime's ``quantize_static``, all in one run on the same data.

For each model (PP-OCRv4 rec, PP-OCRv4 det, PP-OCR cls):

- calibration data: rendered inputs (``ppocr_data``, seed 1) through the models' own preprocessing;
- held-out data: other rendered inputs (seed 99), never seen by calibration or by the budget;
- candidates: graphc's ``fold-bn,canonicalize,cleanup,quant`` without and with an error budget
  (``max-top1-drop`` on rec and cls, whose outputs are class scores; ``min-sqnr`` on det, whose
  output is a probability map), and onnxruntime's ``quantize_static`` in its best configuration
  (opset 13, ``quant_pre_process``, per-channel QDQ, u8/s8, min-max calibration) on the same
  calibration data;
- accuracy against the float model on the held-out data: top-1 agreement of every time step
  (rec: the CTC character predictions), of every line (cls), of every text-mask pixel at DB's 0.3
  threshold (det); SQNR of the outputs; for rec also the character accuracy against the rendered
  ground truth after CTC decoding with the model's own dictionary (1 - edit distance / length),
  the float model included;
- speed: latency against the original float model, alternated A/B with 2 threads, medians.

The budgets are measured on the calibration data only; the held-out columns show how far they
carry. A second rec run with another budget shows the sensitivity cache at work.
"""
from __future__ import annotations

import logging
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import bench_quant  # noqa: E402
import ppocr_data  # noqa: E402

TITLE = "quant accuracy: error budgets on PP-OCRv4 rec/det and PP-OCR cls against quantize_static"
log = logging.getLogger("bench_quant_accuracy")

PIPELINE = "fold-bn,canonicalize,cleanup,quant"
#: the budgets each model gets (quant options); the first is the target, a second one re-uses
#: the first's sensitivity sweep from the cache
BUDGETS = {"rec": ["max-top1-drop=0.003 samples=64", "max-top1-drop=0.01 samples=64"],
           "det": ["min-sqnr=25", "min-sqnr=22"], "cls": ["max-top1-drop=0 samples=64"]}
CALIB = {"rec": 64, "det": 16, "cls": 64}
HELD_OUT = {"rec": 200, "det": 12, "cls": 200}
DET_SIDE = max(bench_quant.BENCH_SHAPES["det"][2:])
#: issue #7's bar for rec with a budget
REC_MIN_AGREEMENT, REC_MIN_SPEEDUP = 0.995, 1.5


def _calibration(kind: str) -> list[dict]:
    if kind == "det":
        return ppocr_data.feeds("det", CALIB[kind], seed=1, det_side=DET_SIDE)
    return ppocr_data.feeds(kind, CALIB[kind], seed=1)


def _held_out(kind: str) -> tuple[list[dict], list[str] | None]:
    if kind == "rec":
        lines = ppocr_data.rec_lines(HELD_OUT[kind], seed=99)
        return [feed for feed, _ in lines], [text for _, text in lines]
    if kind == "det":
        return ppocr_data.feeds("det", HELD_OUT[kind], seed=99, det_side=DET_SIDE), None
    return ppocr_data.feeds(kind, HELD_OUT[kind], seed=99), None


def _graphc(kind: str, options: str, out: Path, calib: list[dict]) -> tuple[float, dict, list[dict]]:
    import graphc
    from graphc.calib.data import open_data

    model = graphc.load(bench_quant.ppocr_model(kind))
    text = PIPELINE + (f"{{{options}}}" if options else "")
    start = time.perf_counter()
    report = graphc.PassManager(text, data=open_data(calib, model)).run(model)
    seconds = time.perf_counter() - start
    graphc.save(model, out)
    record = report.records[-1]
    return seconds, record.stats, record.details


# ---------------------------------------------------------------------------------------------
# accuracy


def _edit_distance(a: str, b: str) -> int:
    row = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        prev, row[0] = row[0], i
        for j, cb in enumerate(b, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (ca != cb))
    return row[-1]


def _normal(text: str) -> str:
    return " ".join(text.split())


class RecDecoder:
    """CTC greedy decoding with the dictionary stored in the rec model's metadata."""

    def __init__(self):
        import onnx
        from rapidocr_onnxruntime.ch_ppocr_rec.utils import CTCLabelDecode

        proto = onnx.load(str(bench_quant.ppocr_model("rec")), load_external_data=False)
        characters = {p.key: p.value for p in proto.metadata_props}["character"].splitlines()
        self.decode = CTCLabelDecode(character=characters)

    def char_accuracy(self, outputs: list[np.ndarray], truth: list[str]) -> float:
        errors = length = 0
        for out, text in zip(outputs, truth):
            got = _normal(self.decode(out)[0][0])
            errors += _edit_distance(got, _normal(text))
            length += len(_normal(text))
        return 1.0 - errors / max(length, 1)


def _latency(reference: str, candidate: str, kind: str):
    """The original and one candidate alternated (2 threads, bench_quant's rounds), medians."""
    from graphc.bench import compare_latency

    feed = bench_quant._bench_feed(kind)
    return compare_latency(reference, candidate, {"x": feed}, threads=2, warmup=3,
                           rounds=bench_quant.ROUNDS[kind])


def _outputs(path: str, feeds: list[dict]) -> list[np.ndarray]:
    from graphc.runtime import create_session

    session = create_session(path, spin=False)
    return [session.run(None, feed)[0] for feed in feeds]


def _accuracy(kind: str, reference: list[np.ndarray], got: list[np.ndarray]) -> dict:
    from graphc.metrics import sqnr_db

    flat_r = np.concatenate([x.ravel() for x in reference])
    flat_g = np.concatenate([x.ravel() for x in got])
    if kind == "det":
        agree = float(np.mean((flat_r > 0.3) == (flat_g > 0.3)))
    else:
        hits = sum(int(np.count_nonzero(r.argmax(-1) == g.argmax(-1))) for r, g in zip(reference, got))
        agree = hits / sum(r.argmax(-1).size for r in reference)
    return {"sqnr": sqnr_db(flat_r, flat_g), "agree": agree}


# ---------------------------------------------------------------------------------------------
# the table


def _model_rows(kind: str, tmp: Path, decoder: RecDecoder | None, verdicts: list[str]) -> list[str]:
    original = str(bench_quant.ppocr_model(kind))
    calib = _calibration(kind)
    held_out, truth = _held_out(kind)
    reference = _outputs(original, held_out)
    candidates = []
    float_out = tmp / f"{kind}_float.onnx"
    seconds = _graphc_float(kind, float_out)
    candidates.append(("graphc float (fold-bn,canonicalize,cleanup)", float_out, seconds, {}))
    runs = [("graphc int8 (no budget)", "")] + [(f"graphc `quant{{{b}}}`" + (" (warm cache)" if i else ""), b)
                                               for i, b in enumerate(BUDGETS[kind])]
    for i, (label, options) in enumerate(runs):
        out = tmp / f"{kind}_{i}.onnx"
        log.info("%s: %s", kind, label)
        seconds, stats, _ = _graphc(kind, options, out, calib)
        candidates.append((label, out, seconds, stats))
    log.info("%s: onnxruntime quantize_static", kind)
    ort_out = tmp / f"{kind}_ort.onnx"
    ort_feeds = calib if kind != "det" else bench_quant._one_shape_det(CALIB[kind])
    ort_seconds, ort_error = bench_quant._ort_quantize(kind, ort_out, ort_feeds)
    if ort_seconds is not None:
        candidates.append(("onnxruntime quantize_static (min-max, per-channel)", ort_out, ort_seconds, {}))
    rows = []
    if decoder is not None:
        rows.append(f"| {kind} | float (original) | - | - | - | "
                    f"{decoder.char_accuracy(reference, truth):.2%} | 1.00x | - | - | - |")
    for label, path, seconds, stats in candidates:
        got = _outputs(str(path), held_out)
        acc = _accuracy(kind, reference, got)
        lat = _latency(original, str(path), kind)
        chars = f"{decoder.char_accuracy(got, truth):.2%}" if decoder is not None else "-"
        calib_text, ints = "-", _integer_layers(str(path))
        floats = stats.get("budget_float_layers")
        if floats is not None and stats.get("budget_speed_trimmed"):
            floats = f"{floats} + {stats['budget_speed_trimmed']} ops"
        if "budget_top1_disagreement" in stats:
            calib_text = f"{1 - stats['budget_top1_disagreement']:.2%} / {stats['budget_sqnr']:.1f} dB"
        elif "budget_sqnr" in stats:
            calib_text = f"{stats['budget_sqnr']:.1f} dB"
        rows.append(f"| {kind} | {label} | {calib_text} | **{acc['agree']:.2%}** | {acc['sqnr']:.1f} | {chars} | "
                    f"**{lat.ratio:.2f}x** | {ints} | {floats if floats is not None else '-'} | {seconds:.0f} |")
        if kind == "rec" and stats.get("budget") == BUDGETS["rec"][0].split()[0]:
            ok = acc["agree"] >= REC_MIN_AGREEMENT and lat.ratio >= REC_MIN_SPEEDUP
            verdicts.append(f"rec with `quant{{{BUDGETS['rec'][0]}}}`: held-out per-timestep agreement "
                            f"{acc['agree']:.2%} (target >= {REC_MIN_AGREEMENT:.1%}), {lat.ratio:.2f}x fp32 "
                            f"(target >= {REC_MIN_SPEEDUP}x): **{'PASS' if ok else 'FAIL'}**, with {ints} "
                            "layers on integers" + (" - the budget found no int8 layer that is both accurate "
                                                    "enough and faster than float here, so the speedup is "
                                                    "the float pipeline's" if ints == 0 else ""))
    if ort_seconds is None:
        verdicts.append(f"onnxruntime quantize_static failed on {kind}: {ort_error}")
    return rows


def _graphc_float(kind: str, out: Path) -> float:
    import graphc

    model = graphc.load(bench_quant.ppocr_model(kind))
    start = time.perf_counter()
    graphc.PassManager("fold-bn,canonicalize,cleanup").run(model)
    seconds = time.perf_counter() - start
    graphc.save(model, out)
    return seconds


def _integer_layers(path: str) -> int:
    """Conv/Gemm/MatMul that read a dequantized weight: the layers that run on integers."""
    import onnx

    graph = onnx.load(path).graph
    dequantized = {n.output[0] for n in graph.node if n.op_type == "DequantizeLinear"}
    return sum(1 for n in graph.node if n.op_type in ("Conv", "Gemm", "MatMul")
               and len(n.input) > 1 and n.input[1] in dequantized)


def run() -> str:
    verdicts: list[str] = []
    rows: list[str] = []
    with tempfile.TemporaryDirectory() as tmp, tempfile.TemporaryDirectory() as cache:
        tmp = Path(tmp)
        previous = os.environ.get("GRAPHC_CACHE_DIR")
        os.environ["GRAPHC_CACHE_DIR"] = cache  # a cold cache: the first runs pay for the sweep
        try:
            decoder = RecDecoder()
            for kind in ("rec", "det", "cls"):
                rows += _model_rows(kind, tmp, decoder if kind == "rec" else None, verdicts)
        finally:
            if previous is None:
                os.environ.pop("GRAPHC_CACHE_DIR", None)
            else:
                os.environ["GRAPHC_CACHE_DIR"] = previous
    return "\n".join([
        f"Calibration: {CALIB['rec']} rendered lines (rec, cls), {CALIB['det']} pages (det); held-out: "
        f"{HELD_OUT['rec']} other lines ({HELD_OUT['rec'] * 40} rec time steps), {HELD_OUT['det']} other pages. "
        "Agreement = top-1 agreement with the float model (rec: every time step; cls: every line; det: "
        "text-mask pixels at 0.3). Budget (calibration) = what the budget measured on the calibration "
        "data (top-1 agreement / output SQNR). Chars = character accuracy against the rendered text "
        "after CTC decoding. Speedup = original fp32 latency / candidate latency (alternated, 2 threads, "
        "medians). int8 layers = Conv/Gemm/MatMul reading a dequantized weight. Float layers = "
        "layers the budget kept float (+ ops the speed trim moved to float). Build s = the whole "
        "pipeline, sensitivity sweep included (the first budget of a model starts with a cold cache; "
        "the second re-uses its evaluations).",
        "",
        "| model | candidate | budget (calibration) | held-out agreement | SQNR dB | chars | speedup | "
        "int8 layers | float layers | build s |",
        "|---|---|---|---|---|---|---|---|---|---|",
        *rows, "", *[f"- {v}" for v in verdicts]])


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    print(run())
