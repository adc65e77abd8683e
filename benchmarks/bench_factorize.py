"""factorize on the trained zoo: MACs, latency and accuracy, with and without calibration data.

For each case the pass runs twice on the same model: without data (plain SVD / HOSVD, ranks from
the weights' spectra) and with ``models/digits_calib.npz`` (decomposition whitened by the
activations' second moments, errors measured on the data). Reported against the unfactored model,
all in one run: the MACs ratio (batch 1, every Conv/Gemm/MatMul), weight params ratio, onnxruntime
latency ratio (``graphc.bench.compare_latency``: A/B alternated, medians, 2 threads; > 1 means the
factored model is faster) at batch 1 (200 rounds) and 64 (40 rounds), the SQNR of the logits on the digits test set and the
test accuracy, and the mean per-layer error the pass recorded.

    python benchmarks/run.py factorize
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np

import graphc
from graphc.bench import compare_latency
from graphc.calib.data import open_data
from graphc.errors import GraphcError
from graphc.stats import model_stats
from graphc.passmanager import PassManager
from graphc.runtime import create_session, run_session
from graphc.metrics import sqnr_db

TITLE = "factorize: low-rank factorization of the trained zoo"
MODELS = Path(__file__).resolve().parents[1] / "models"
ROUNDS = int(os.environ.get("GRAPHC_BENCH_ROUNDS", "40"))
THREADS = 2
TIMED = ((1, 5 * ROUNDS), (64, ROUNDS))  # (batch, alternated rounds)

#: (model file, pipeline, what it factors)
CASES = [
    ("transformer_digits.onnx", "factorize{energy=0.9 ignore=/fc/*}", "MatMuls, svd, energy 0.9"),
    ("transformer_digits.onnx", "factorize{rank=0.4 ignore=/fc/*}", "MatMuls, svd, rank 0.4"),
    ("transformer_digits.onnx", "factorize{max-error=0.1 ignore=/fc/*}", "MatMuls, svd, max-error 0.1"),
    ("resnet_digits.onnx", "factorize{method=tucker energy=0.9}", "3x3 Convs, tucker, energy 0.9"),
    ("resnet_digits.onnx", "factorize{method=tucker rank=0.5}", "3x3 Convs, tucker, rank 0.5"),
    ("resnet_digits.onnx", "factorize{method=tucker max-error=0.2}", "3x3 Convs, tucker, max-error 0.2"),
    ("resnet_digits.onnx", "factorize{method=dw energy=0.9}", "3x3 Convs, dw, energy 0.9"),
]


def _logits(source, x: np.ndarray) -> np.ndarray:
    session = create_session(source)
    return np.concatenate([run_session(session, {"input": x[i:i + 128]})[0] for i in range(0, len(x), 128)])


def _row(name: str, pipeline: str, label: str, data, test, tmp: Path) -> tuple[list[str], tuple | None]:
    """The table row, and the (layer, ranks) the pass chose (None when it did not run)."""
    original = graphc.load(MODELS / name)
    model = graphc.load(MODELS / name)
    calib = open_data(data, original, batch=16) if data is not None else None
    try:
        record = PassManager(pipeline, data=calib).run(model).records[0]
    except GraphcError as exc:  # the pass's own refusal (max-error without data) is this row's result
        return [f"`{name}`", label, "yes" if calib is not None else "no",
                f"refused: {str(exc).splitlines()[0].split(';')[0][:90]}"] + ["-"] * 7, None
    path = graphc.save(model, tmp / f"{Path(name).stem}.{len(list(tmp.iterdir()))}.onnx")
    shapes = {"input": (1, 1, 16, 16)}
    before, after = model_stats(original, shapes), model_stats(model, shapes)
    x, labels = test["input"], test["labels"]
    ref, got = _logits(MODELS / name, x), _logits(path, x)
    latency = [compare_latency(MODELS / name, path, {"input": x[:batch]}, threads=THREADS, rounds=rounds).ratio
               for batch, rounds in TIMED]
    errors = [d["est_error"] for d in record.details]
    chosen = tuple((d["node"], tuple(d["ranks"])) for d in record.details)
    return [
        f"`{name}`", label, "yes" if calib is not None else "no", str(len(record.details)),
        f"{after.macs / before.macs:.3f}", f"{after.params / before.params:.3f}",
        f"{latency[0]:.2f}", f"{latency[1]:.2f}", f"{sqnr_db(ref, got):.1f}",
        f"{100 * np.mean(ref.argmax(1) == labels):.2f} -> {100 * np.mean(got.argmax(1) == labels):.2f}",
        f"{np.mean(errors):.3f}" if errors else "-",
    ], chosen


def run() -> str:
    missing = [f for f in ("transformer_digits.onnx", "resnet_digits.onnx", "digits_calib.npz",
                           "digits_test.npz") if not (MODELS / f).exists()]
    if missing:
        raise FileNotFoundError(f"models/{missing[0]} is missing: run python models/build.py")
    test = dict(np.load(MODELS / "digits_test.npz"))
    rows, chosen = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, pipeline, label in CASES:
            for data in (None, MODELS / "digits_calib.npz"):
                row, ranks = _row(name, pipeline, label, data, test, Path(tmp))
                rows.append(row)
                chosen.setdefault((name, label), []).append(ranks)
    header = ["model", "factored", "--data", "layers", "MACs ratio", "params ratio",
              "latency ratio b1", "latency ratio b64", "logits SQNR dB", "test acc %", "mean layer error"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    notes = (
        "\n\nRatios are factored / original for MACs and params (lower is smaller) and original / "
        "factored for latency (higher is faster): each latency ratio is the median of the per-round "
        "ratios of the original and the factored file timed A/B alternately (graphc.bench.compare_latency, "
        f"{THREADS} threads, graph optimizations on, "
        + " and ".join(f"{rounds} rounds at batch {batch}" for batch, rounds in TIMED) + " after 5 warm-up "
        "rounds; each row its own alternation). MACs at batch 1 over every Conv/Gemm/MatMul. Without "
        "`--data` the layer error is the relative weight error; with it, the relative output error of each "
        f"layer on the calibration data. `min-saving` is at its default, {_default('min_saving'):g}: layers "
        f"whose chosen rank would not save {_default('min_saving'):.0%} of their MACs are left alone, so "
        "`layers` counts the ones rewritten. "
        + _same_ranks_note(chosen) + "\n"
    )
    return "\n".join(lines) + notes


def _default(option: str):
    """factorize's default for ``option``, read from the pass's Options (not restated here)."""
    from dataclasses import fields

    from graphc.passmanager import get_pass

    return next(f.default for f in fields(get_pass("factorize").Options) if f.name == option)


def _same_ranks_note(chosen: dict) -> str:
    """Which cases factor the same layers at the same ranks with and without data, as measured."""
    both = {label: pair for (_, label), pair in chosen.items() if None not in pair}
    same = [label for label, pair in both.items() if pair[0] == pair[1]]
    differ = [label for label, pair in both.items() if pair[0] != pair[1]]
    text = ""
    if same:
        text += (f"With and without data, {len(same)} of the {len(both)} cases run both ways factor the "
                 f"same layers at the same ranks in this run ({'; '.join(same)}): same graph shape, so the "
                 "spread of their latency ratios is the timing noise of the machine. ")
    if differ:
        text += f"With data the layers or ranks differ from those without for: {'; '.join(differ)}."
    return text.strip()
