"""The user's metric as the quant budget, against the SQNR budget, on PP-OCRv4 rec (CTC character
error rate, ``graphc.task_metrics:ctc_cer``, the dictionary from the model's own metadata, spaces
collapsed) and PP-OCRv4 det (box F1 of the boxes extracted from the probability map,
``graphc.task_metrics:det_box_f1``, IoU 0.5).

Three disjoint sets of rendered data (``ppocr_data``), each with its own seed:

- calibration (seed 1): 32 rec lines / 16 det pages; the activation ranges come from them, and the
  SQNR budget (``quant{min-sqnr=25}``) measures on them;
- budget evaluation (what ``--eval-data`` gives): 1000 rec lines with their text as labels (seed
  8; session 7, before it 300 lines of seed 7) / 120 det pages without labels (seed 7); the metric budget (``quant{max-metric-drop=D}``) measures the
  metric on them - rec: the CER change against the text, its upper 95% bound a paired bootstrap
  over lines; det: the F1 against the float model's boxes, its upper 95% bound the largest of
  Clopper-Pearson, a bootstrap over pages and Clopper-Pearson on the clustering's effective
  trials - and holds that bound (``metric-confidence``,
  default) to ``D``;
- held-out (seed 99): 2000 rec lines with their text, the CER of each model against the text;
  240 det pages, the F1 of each model's boxes against the float model's boxes (the reference).
  Each change is shown with its standard error (paired over samples), so the verdict's precision
  is visible.

Why the held-out sets are this large (session 6, measured): the previous run held out 200 lines
and 60 pages and both budgets "missed" with no layer kept float. Measured on 6600 rendered lines
(22 seeded sets of 300), the all-int8 rec model's CER change is +0.23 pt (standard error 0.05);
a 200-line held-out set has a standard error of 0.3-0.4 pt - as large as the 0.3 pt limit - and
its seed-99 draw read +0.48 (+0.58 on its first 300 lines). On 720 pages (12 sets of 60) the
all-int8 det's F1 drop against the float boxes is 0.0071; 60-page sets read 0.0031-0.0116. The
generator is the same for every set (no rendering, font or length difference: same function,
only the seed differs), and the bound is calibrated: drawing 400 sets from the measured lines,
the paired bootstrap's 95% bound covers the pooled change in 96% of 300-line sets (95% at 100
and 1000 lines); det's Clopper-Pearson/bootstrap bound 90.5% at 60 pages, 96% at 200 (so the
evaluation now takes 120 pages). The seed-7 evaluation lines were a lucky draw (-0.33 pt, about
2 standard errors below +0.23): the budget's 95% bound (+0.16) missed the truth there, which a
95% bound does one time in 20 (3 of the 22 seeded sets).
The first run with 2000 held-out lines read +0.45 pt (s.e. 0.10) for the same all-int8 model
(same outputs as the model measured above, checked on seeds 7 and 99): pooled with the 6600
lines about +0.27 pt, i.e. the all-int8 rec model sits at the 0.3 pt limit. A budget that lands
reliably under it needs the evaluation margin well below 0.3 pt - about 3000 labelled lines, as
the budget's own sampling-margin warning says for 300.

Session 7: evaluations on many lines made affordable (``passes/quant/evaluations.py``): lines of
the same shape run 32 at a time along the batch axis (outputs bit-identical to one at a time on
this model; 38 against 58 ms a line for the float model, one thread), and the CER is counted 64
lines at a time as the outputs come, only the per-line counts kept (a worker no longer holds 1 MB
of outputs per line). The budget now measures on 1000 lines of a new set (seed 8): the paired
bootstrap's margin there is about 0.26 pt against 0.5 on 300. Measured on a pooled 1500 lines
apart from every set here (seeds 20-22, 500 each; CER change of the all-int8 model against
the float model, paired s.e.): the default (KL ranges, 32 calibration lines) +0.46 pt (0.12);
``calib=mse`` +0.46 (0.12); 128 calibration lines +1.28 (0.12); ``calib=percentile`` (99.99)
+2.14 (0.14); ``bias-correction=true`` +0.08 (0.11), at 190 s a build instead of 45. So the
all-int8 model sits at or above the limit (with the 8600 lines above, about +0.3), and the
budget has to keep layers float. Bias correction would be the better int8 model, but it re-runs
inside every budget evaluation (each is a quantization: about 140 s of correction each, 40-odd
evaluations), so this section does not use it; making the correction cheap inside a budget is
left open.

The first run on 1000 lines (session 7, 2 cores shared with other jobs, load 6-7, so no clean
timing; its BENCHMARKS.md section): the CER budget kept 3 of 30 layers float (the bisection reached 22,
the leave-out quantized 19 of them again) plus 12 ops the speed model moved, its drop on the
evaluation lines -0.03 pt with 95% bound +0.20 pt; held out (seed 99, 2000 lines) +0.23 pt (s.e.
0.10) against the float model's 5.64%, within 0.3 - by about one standard error, so one run does
not show that it lands under 0.3 every time - and the SQNR budget's model +0.16 (0.06), as
before; the CER budget's model 1.52x faster than the SQNR budget's (same alternation; 1.66x in a
separate timing). On the evaluation lines one layer more or less quantized moves the drop by up
to 0.5 pt in either direction (not additive), which is why the leave-out can quantize so many
layers again. That build took 2052 s under that load (the whole section 2809 s); 300 lines took
115 s on a quiet machine, unbatched - not comparable, and no A/B on a quiet machine was made.
The quiet full `make bench` run after it (2026-12-07 02:32-03:16, commit 934b100) built the same
model (3 of 30 layers float, held-out +0.23 pt, s.e. 0.10) in 765 s against the SQNR budget's 45 s.

Speed: the float model and both results timed in one alternation (2 threads, medians of per-round
ratios, ``graphc.bench.compare_all``); the metric budget's result is paired with the SQNR budget's
directly. The met/MISSED lines are computed from this run.
"""
from __future__ import annotations

import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import bench_quant  # noqa: E402
import ppocr_data  # noqa: E402

TITLE = "the user's metric as the quant budget: PP-OCRv4 rec CER and det box F1 against the SQNR budget"

PIPELINE = "fold-bn,canonicalize,cleanup,quant"
DET_SIDE = 480
HELD_OUT_CHUNK = 100
REC_EVALUATION = 1000  # labelled lines the CER budget measures on (session 7; 300 before)
REC_EVAL_SEED = 8      # a set of its own (seed 7's first 300 lines were the previous evaluation)


@dataclass(frozen=True)
class Task:
    kind: str
    metric: str
    metric_args: tuple[str, ...]
    name: str             # of the metric
    limit: float          # max-metric-drop and the held-out limit
    calibration: int
    evaluation: int
    held_out: int
    eval_seed: int        # of the budget's evaluation data


def _tasks() -> list[Task]:
    charset = f"charset={bench_quant.ppocr_model('rec')}"
    return [Task("rec", "graphc.task_metrics:ctc_cer", (charset, "spaces=collapse"), "CER", 0.003, 32, REC_EVALUATION,
                 2000, REC_EVAL_SEED),
            Task("det", "graphc.task_metrics:det_box_f1", ("iou=0.5",), "box F1", 0.01, 16, 120, 240, 7)]


def _metric(task: Task):
    from graphc.verify.user_metric import load_metric

    return load_metric(task.metric, list(task.metric_args))


def _feeds(task: Task, n: int, seed: int) -> list[dict]:
    return ppocr_data.feeds(task.kind, n, seed=seed, det_side=DET_SIDE)


def _quantize(task: Task, options: str, out: Path, calib: list[dict], evaluation: list[dict] | None,
              labels=None):
    import graphc
    from graphc.calib.data import open_data

    model = graphc.load(bench_quant.ppocr_model(task.kind))
    text = f"{PIPELINE}{{{options} samples={task.calibration}}}"
    start = time.perf_counter()
    metric = _metric(task) if evaluation is not None else None
    report = graphc.PassManager(text, data=open_data(calib, model), metric=metric,
                                evaluation=open_data(evaluation, model) if evaluation else None,
                                evaluation_labels=labels).run(model)
    seconds = time.perf_counter() - start
    graphc.save(model, out)
    return seconds, report.records[-1].stats


def _outputs(path: str):
    """A function giving the model's outputs on a list of feeds (one session; rec lines 32 at a time,
    :func:`graphc.verify.scores.batched_outputs`)."""
    from graphc.runtime import create_session
    from graphc.verify.scores import batched_outputs

    session = create_session(path, spin=False)
    return lambda feeds: [{"y": outs[0]} for outs in batched_outputs(session, feeds, 32)]


def _held_out(task: Task, path: str, original: str, feeds: list[dict], texts) -> tuple[float, tuple]:
    """rec: CER against the rendered text; det: box F1 against the float model's boxes; and the
    per-sample counts (errors, opportunities) behind it. In chunks: 2000 rec outputs are 2 GB."""
    import numpy as np

    metric = _metric(task)
    errors, totals = [], []
    model = _outputs(path)
    float_model = _outputs(original) if task.kind == "det" else None
    for start in range(0, len(feeds), HELD_OUT_CHUNK):
        chunk = feeds[start:start + HELD_OUT_CHUNK]
        got = model(chunk)
        if task.kind == "rec":
            e, t = metric.counts(got, got, texts[start:start + HELD_OUT_CHUNK])
        else:
            e, t = metric.counts(float_model(chunk), got, None)
        errors.append(e)
        totals.append(t)
    counts = (np.concatenate(errors), np.concatenate(totals))
    rate = float(counts[0].sum()) / max(float(counts[1].sum()), 1.0)
    return (rate if task.kind == "rec" else 1.0 - rate), counts


def _change_se(model: tuple, reference: tuple) -> float:
    """Standard error of ``rate(model) - rate(reference)`` over the same samples (the pooled
    error rates of the counts, linearized: each sample's ``(e - r t) / T`` summed; paired)."""
    import numpy as np

    def terms(counts):
        e, t = (np.asarray(x, np.float64) for x in counts)
        return (e - e.sum() / t.sum() * t) / t.sum()

    z = terms(model) - terms(reference)
    return float(np.sqrt(len(z) * np.var(z, ddof=1)))


def _drop(task: Task, value: float, reference: float) -> float:
    return value - reference if task.kind == "rec" else reference - value


def _fmt(task: Task, value: float) -> str:
    return f"{value:.2%}" if task.kind == "rec" else f"{value:.4f}"


def _fmt_drop(task: Task, drop: float) -> str:
    return f"{drop * 100:+.2f} pt" if task.kind == "rec" else f"{drop:+.4f}"


def _stats_text(stats: dict) -> str:
    if "budget_metric_drop" not in stats:
        return "-"
    bound = stats.get("budget_metric_drop_bound")
    return (f"{stats['budget_metric_drop']:.4f} (95% bound {bound:.4f}) on {stats['budget_metric_samples']}"
            if bound is not None else f"{stats['budget_metric_drop']:.4f}")


def _section(task: Task, tmp: Path) -> list[str]:
    import numpy as np

    from graphc.bench import compare_all, pair

    calib = _feeds(task, task.calibration, 1)
    if task.kind == "rec":
        lines = ppocr_data.rec_lines(task.evaluation, seed=task.eval_seed)
        evaluation, eval_labels = [f for f, _ in lines], np.array([t for _, t in lines])
    else:
        evaluation, eval_labels = _feeds(task, task.evaluation, task.eval_seed), None
    if task.kind == "rec":
        lines = ppocr_data.rec_lines(task.held_out, seed=99)
        held, texts = [f for f, _ in lines], np.array([t for _, t in lines])
    else:
        held, texts = _feeds(task, task.held_out, 99), None
    original = str(bench_quant.ppocr_model(task.kind))
    budgets = {"SQNR budget": ("min-sqnr=25", None, None),
               f"{task.name} budget": (f"max-metric-drop={task.limit:g}", evaluation, eval_labels)}
    reference, reference_counts = _held_out(task, original, original, held, texts)
    built = {}
    for name, (options, data, labels) in budgets.items():
        out = tmp / f"{task.kind}-{name.split()[0]}.onnx"
        seconds, stats = _quantize(task, options, out, calib, data, labels)
        value, counts = _held_out(task, str(out), original, held, texts)
        built[name] = (options, str(out), seconds, stats, value, _change_se(counts, reference_counts))
    feed = {"x": bench_quant._bench_feed(task.kind)}
    times = compare_all({"float": original, **{n: b[1] for n, b in built.items()}}, feed, threads=2, warmup=3,
                        rounds=bench_quant.ROUNDS[task.kind])
    rows = [f"| float (original) | - | - | - | {_fmt(task, reference)} | - | 1.00x |"]
    for name, (options, _, seconds, stats, value, se) in built.items():
        speed = pair(times, "float", name)
        low, high = speed.ratio_spread()
        rows.append(f"| {name}: `quant{{{options}}}` | {stats.get('budget_float_layers')} of "
                    f"{stats.get('budget_layers')} | {seconds:.0f} s | {_stats_text(stats)} | {_fmt(task, value)} | "
                    f"{_fmt_drop(task, _drop(task, value, reference))} ± {_fmt_drop(task, se).lstrip('+')} | {speed.ratio:.2f}x ({low:.2f}-{high:.2f}) |")
    metric_name = f"{task.name} budget"
    direct = pair(times, "SQNR budget", metric_name)
    low, high = direct.ratio_spread()
    drop, se = _drop(task, built[metric_name][4], reference), built[metric_name][5]
    held_ok, fast_ok = drop <= task.limit, direct.ratio >= 1.0
    truth = "their text (corpus CER, spaces collapsed)" if task.kind == "rec" else "the float model's boxes"
    return [
        f"### PP-OCRv4 {task.kind}: {task.name}",
        "",
        f"Calibration {task.calibration} (seed 1), budget evaluation {task.evaluation} (seed {task.eval_seed}), "
        f"held-out {task.held_out} (seed 99) "
        f"rendered {'lines' if task.kind == 'rec' else f'pages (longer side {DET_SIDE})'}; held-out "
        f"{task.name} against {truth}. The budget's truth: "
        f"{'the evaluation lines text (labels)' if task.kind == 'rec' else 'the float model boxes'}.",
        "",
        f"| model | float layers | build | budget's drop (eval data) | held-out {task.name} | "
        f"{'CER rise' if task.kind == 'rec' else 'F1 drop'} vs float (+ = worse) ± s.e. | speed-up |",
        "|---|---|---|---|---|---|---|", *rows, "",
        f"- held-out {task.name} within {_fmt_drop(task, task.limit).lstrip('+')} of fp32 (issue 21): "
        f"{'worse' if drop > 0 else 'better'} by {_fmt_drop(task, abs(drop)).lstrip('+')} "
        f"(standard error {_fmt_drop(task, se).lstrip('+')} on {task.held_out}) - "
        f"{'met' if held_ok else 'MISSED'}",
        f"- {task.name} budget's model against the SQNR budget's, same alternation: {direct.ratio:.2f}x "
        f"({low:.2f}-{high:.2f}; above 1: faster) - {'met' if fast_ok else 'MISSED'} (as fast or faster)",
        "",
    ]


def run() -> str:
    out = ["Budgets decided on data apart from the held-out set; the metric budget holds the upper 95% "
           "confidence bound of its drop (rec, with the evaluation lines' text as labels: a paired bootstrap "
           "over lines of the CER change; det, the float boxes as the truth: Clopper-Pearson over the pooled "
           "boxes, a bootstrap over pages and Clopper-Pearson on the effective trials of clustered errors, the largest), so a handful of lucky lines cannot pass it. Speed: median "
           "per-round ratio of the float model's latency over the result (2 threads, one alternation of "
           f"all three models), 25-75% spread in brackets. Each model row is `{PIPELINE}{{OPTIONS "
           "samples=<calibration count>}` on the original; build: that pipeline's wall time, once, with an "
           "evaluation cache that is empty at the start of this section.", ""]
    with tempfile.TemporaryDirectory() as tmp:
        previous = os.environ.get("GRAPHC_CACHE_DIR")
        os.environ["GRAPHC_CACHE_DIR"] = str(Path(tmp) / "cache")  # build times without a warm cache
        try:
            for task in _tasks():
                out += _section(task, Path(tmp))
        finally:
            if previous is None:
                os.environ.pop("GRAPHC_CACHE_DIR", None)
            else:
                os.environ["GRAPHC_CACHE_DIR"] = previous
    return "\n".join(out)


if __name__ == "__main__":
    print(run())
