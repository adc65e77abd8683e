"""The user's metric as the quant budget: PP-OCRv4 rec with ``quant{max-metric-drop=0.003}`` and the
CTC character error rate (``graphc.task_metrics:ctc_cer``, the dictionary from the model's own
metadata, spaces collapsed) against the SQNR budget.

- calibration data: 32 rendered text lines (``ppocr_data``, seed 1) through the model's own
  preprocessing; the budgets measure on them only, the float model's decoding as the truth;
- held-out data: 200 other rendered lines (seed 99) with their text: the CER of the float model
  and of each quantized model against the rendered text (corpus CER, ``ctc_cer`` with labels);
- speed: each result against the float model, and the metric budget's result against the SQNR
  budget's directly, alternated A/B with 2 threads, medians (``graphc.bench.compare_latency``).

The detector budget with box F1 is not part of this section: PP-OCRv4 det outputs a probability
map, not boxes, and the box-extraction step is not written yet.
"""
from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import bench_quant  # noqa: E402
import ppocr_data  # noqa: E402

TITLE = "the user's metric as the quant budget: PP-OCRv4 rec, CER budget against SQNR budget"

PIPELINE = "fold-bn,canonicalize,cleanup,quant"
SAMPLES = 32
HELD_OUT = 200
BUDGETS = {"SQNR budget": "min-sqnr=25", "CER budget": "max-metric-drop=0.003"}


def _metric():
    from graphc.verify.user_metric import load_metric

    return load_metric("graphc.task_metrics:ctc_cer",
                       [f"charset={bench_quant.ppocr_model('rec')}", "spaces=collapse"])


def _quantize(options: str, out: Path, calib: list[dict]) -> tuple[float, dict]:
    import graphc
    from graphc.calib.data import open_data

    model = graphc.load(bench_quant.ppocr_model("rec"))
    text = f"{PIPELINE}{{{options} samples={SAMPLES}}}"
    start = time.perf_counter()
    metric = _metric() if "metric" in options else None
    report = graphc.PassManager(text, data=open_data(calib, model), metric=metric).run(model)
    seconds = time.perf_counter() - start
    graphc.save(model, out)
    return seconds, report.records[-1].stats


def _held_out_cer(path: str, feeds: list[dict], texts: list[str]) -> float:
    import numpy as np

    from graphc.runtime import create_session

    session = create_session(path, spin=False)
    outputs = [{"y": session.run(None, feed)[0]} for feed in feeds]
    return _metric().score(outputs, outputs, np.array(texts))


def _latency(a: str, b: str):
    from graphc.bench import compare_latency

    feed = bench_quant._bench_feed("rec")
    return compare_latency(a, b, {"x": feed}, threads=2, warmup=3, rounds=bench_quant.ROUNDS["rec"])


def run() -> str:
    calib = ppocr_data.feeds("rec", SAMPLES, seed=1)
    lines = ppocr_data.rec_lines(HELD_OUT, seed=99)
    feeds, texts = [f for f, _ in lines], [t for _, t in lines]
    original = str(bench_quant.ppocr_model("rec"))
    rows, paths = [], {}
    float_cer = _held_out_cer(original, feeds, texts)
    rows.append(f"| float (original) | - | - | {float_cer:.2%} | - | 1.00x |")
    with tempfile.TemporaryDirectory() as tmp:
        for name, options in BUDGETS.items():
            out = Path(tmp) / f"{name.split()[0]}.onnx"
            seconds, stats = _quantize(options, out, calib)
            paths[name] = str(out)
            cer = _held_out_cer(str(out), feeds, texts)
            speed = _latency(original, str(out))
            rows.append(f"| {name}: `quant{{{options}}}` | {stats.get('budget_float_layers')} of "
                        f"{stats.get('budget_layers')} | {seconds:.0f} s | {cer:.2%} | "
                        f"{(cer - float_cer) * 100:+.2f} pt | {speed.ratio:.2f}x |")
        direct = _latency(paths["SQNR budget"], paths["CER budget"])
    return "\n".join([
        f"PP-OCRv4 rec; budgets on {SAMPLES} rendered calibration lines, CER on {HELD_OUT} held-out rendered "
        "lines against their text (corpus CER, spaces collapsed). Speed: median latency of the float model "
        "over the result (2 threads, alternated).", "",
        "| model | float layers | build | held-out CER | CER change | speed-up |",
        "|---|---|---|---|---|---|", *rows, "",
        f"CER budget result against SQNR budget result, alternated: {direct.ratio:.2f}x "
        "(above 1: the CER budget's model is faster).",
    ])


if __name__ == "__main__":
    print(run())
