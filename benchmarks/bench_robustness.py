"""Robustness: fuzz throughput, property-test graphs, and a model over 2 GiB.

- **Fuzzing**: ``FUZZ_CASES`` cases (seeded numpy draws of the same mutations and seeds as
  tests/property/test_fuzz.py), each running ``graphc inspect`` and ``graphc opt -p
  cleanup,fold-bn``; cases per minute and the outcome mix (accepted / rejected with one line /
  crash), plus the distinct crash and wrapped-pass-crash messages.
- **Property tests**: ``PROPERTY_GRAPHS`` random graphs through every registered pass with the
  checks of tests/property/test_pass_properties.py; graphs per second per pass.
- **> 2 GiB model** (tests/robustness/big_model.py, 9 x Gemm 8192^2 + BN, 2.25 GiB of external
  data): load, ``cleanup,fold-bn``, save with external data in a fresh child process measured by
  :func:`graphc.bench.measure_process` (peak RSS of the whole child, start to exit); wall time
  against an anchor (copying the weight file once, same disk), and peak RSS as a multiple of the
  weights.
  Skipped when the machine lacks ~3x the weights in free memory or disk.

    python benchmarks/run.py robustness
    GRAPHC_BENCH_SKIP_BIG=1 python benchmarks/run.py robustness
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
for sub in ("tests", "tests/property", "tests/robustness"):
    sys.path.insert(0, str(ROOT / sub))

TITLE = "Robustness: fuzz cases per minute, property-test graphs, a 2.25 GiB model"
FUZZ_CASES = int(os.environ.get("GRAPHC_BENCH_FUZZ_CASES", "500"))
PROPERTY_GRAPHS = int(os.environ.get("GRAPHC_BENCH_PROPERTY_GRAPHS", "60"))
BIG_LAYERS = 9


def _fuzz() -> tuple[str, dict]:
    import fuzz_target
    import mutations

    seeds = mutations.seed_models(ROOT)
    rng = np.random.default_rng(12345)
    outcomes: Counter[str] = Counter()
    crashes: Counter[str] = Counter()
    wrapped: Counter[str] = Counter()
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="graphc-bench-fuzz-") as tmp:
        for i in range(FUZZ_CASES):
            name, data = seeds[int(rng.integers(len(seeds)))]
            steps = [(int(rng.integers(mutations.KINDS)), *(int(v) for v in rng.integers(0, 2**16, 3)))
                     for _ in range(int(rng.integers(1, 4)))]
            outcome = fuzz_target.run_case(mutations.apply(data, steps), Path(tmp) / str(i))
            shutil.rmtree(Path(tmp) / str(i), ignore_errors=True)
            outcomes[outcome.kind] += 1
            if outcome.wrapped:  # a crash inside a pass, shown apart from the others
                wrapped[_short(outcome.detail)] += 1
            elif outcome.kind == "crash":
                crashes[_short(outcome.detail)] += 1
    minutes = (time.perf_counter() - start) / 60
    rate = FUZZ_CASES / minutes
    mode = "CLI (graphc.cli.main)" if fuzz_target.cli_main() else "Python API"
    lines = [f"**Fuzzing** ({mode}, {len(seeds)} seed models, 1-3 mutations per case): "
             f"**{rate:.0f} cases/minute** ({FUZZ_CASES} cases in {minutes * 60:.0f} s); "
             f"accepted {outcomes['ok']}, rejected with one `graphc: error:` line {outcomes['rejected']}, "
             f"crashes {outcomes['crash']} (of which pass crashes wrapped as PassError {sum(wrapped.values())}).", ""]
    for label, found in (("Crashes", crashes), ("Wrapped pass crashes", wrapped)):
        if found:
            lines.append(f"{label} (count x message):")
            lines += [f"- {count} x `{message}`" for message, count in found.most_common(8)]
            lines.append("")
    return "\n".join(lines), {"cases_per_minute": rate, **outcomes}


def _short(message: str) -> str:
    return " ".join(message.split())[:160].replace("`", "'")


def _properties() -> tuple[str, int]:
    import onnx

    import random_graphs
    import test_pass_properties as props
    from graphc.passmanager import all_passes
    from support import run

    rng = np.random.default_rng(99)
    recipes = [random_graphs.random_recipe(rng) for _ in range(PROPERTY_GRAPHS)]
    rows, total = [], 0
    for cls in all_passes():
        count = 0
        start = time.perf_counter()
        for recipe in recipes[: max(10, PROPERTY_GRAPHS // 3) if cls.needs_data else PROPERTY_GRAPHS]:
            proto = random_graphs.build_model(recipe)
            bug = props.KNOWN_BUGS.get(cls.name)
            if bug is not None and bug[0](proto):
                continue
            feeds = random_graphs.input_feeds(recipe)
            props.check_pass_on(cls, proto, feeds, run(proto, feeds))
            count += 1
        wall = time.perf_counter() - start
        total += count
        rows.append(f"| {cls.name} | {'exact' if props._is_exact(cls) else 'lossy'} | {count} | "
                    f"{wall:.1f} | {count / wall:.1f} |")
    text = "\n".join([
        _counted(props.COUNTS_FILE) + " Each is "
        "checked for the full ONNX checker, onnxruntime, unchanged interface, outputs within rtol 1e-5 / "
        "atol 1e-6 (exact passes), SQNR floors and oracles (lossy passes) and idempotence. Throughput of "
        "the same checks here "
        f"({PROPERTY_GRAPHS} graphs, onnx {onnx.__version__}):", "",
        "| pass | kind | graphs | s | graphs/s |", "|---|---|---|---|---|", *rows, ""])
    return text, total


def _counted(path: Path) -> str:
    """The graphs the last property-test run counted (tests/property/last_counts.json), as a sentence."""
    if not path.is_file():
        return (f"**Property tests**: not counted here: {path.relative_to(ROOT)} is missing "
                "(run `pytest tests/property` first).")
    counts = json.loads(path.read_text())
    stamp = time.strftime("%Y-%m-%d %H:%M", time.localtime(path.stat().st_mtime))
    per_pass = ", ".join(f"{name} {c['ran']} ({c['rewritten']} rewritten)" for name, c in sorted(counts.items()))
    return (f"**Property tests**: the last `pytest tests/property` run ({stamp}) checked "
            f"{sum(c['ran'] for c in counts.values())} random graphs, counted as they ran: {per_pass}.")


def _available_memory() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return 0


def _big() -> str:
    import big_model
    from graphc.bench.memory import measure_process, python_command

    weights = big_model.weight_bytes(BIG_LAYERS)
    if os.environ.get("GRAPHC_BENCH_SKIP_BIG"):
        return "**> 2 GiB model**: skipped (GRAPHC_BENCH_SKIP_BIG)."
    with tempfile.TemporaryDirectory(prefix="graphc-bench-big-") as tmp:
        root = Path(tmp)
        if shutil.disk_usage(root).free < 3 * weights or _available_memory() < 3 * weights:
            return "**> 2 GiB model**: skipped (needs ~3x 2.25 GiB of free memory and disk)."
        start = time.perf_counter()
        src = big_model.write_big_model(root / "in", BIG_LAYERS)
        generate_s = time.perf_counter() - start
        start = time.perf_counter()
        shutil.copyfile(src.parent / "big.onnx.data", root / "copy.data")
        os.sync()
        copy_s = time.perf_counter() - start
        (root / "copy.data").unlink()
        (root / "out").mkdir()
        proc = measure_process(python_command(big_model.__file__, "run", str(src), str(root / "out" / "big.onnx")),
                               timeout=3600)
        if proc.returncode != 0:
            return f"**> 2 GiB model**: FAILED: {proc.stderr.strip().splitlines()[-1:]}"
        r = json.loads(proc.stdout.strip().splitlines()[-1])
    gib = 2**30
    peak = proc.peak_bytes
    return "\n".join([
        f"**> 2 GiB model** ({BIG_LAYERS} x Gemm 8192x8192 + BN + Identity + Relu, "
        f"{weights / gib:.2f} GiB of external data; generated in {generate_s:.0f} s): load + "
        f"`cleanup,fold-bn` + save with external data in **{r['total_s']:.0f} s** "
        f"({r['total_s'] / copy_s:.1f}x copying the weight file once, {copy_s:.0f} s), "
        f"**peak RSS {peak / gib:.2f} GiB = {peak / weights:.2f}x the weights** (target < 2x): the "
        f"whole child process from start to exit, interpreter, imports and load included "
        f"(`graphc.bench.measure_process`, {proc.wall_s:.0f} s).", "",
        "| stage | wall s | process peak RSS so far (GiB) | x weights |", "|---|---|---|---|",
        f"| process start | - | {r['baseline_rss'] / gib:.2f} | {r['baseline_rss'] / weights:.2f} |",
        f"| graphc.load | {r['load_s']:.1f} | {r['after_load_rss'] / gib:.2f} | {r['after_load_rss'] / weights:.2f} |",
        f"| cleanup,fold-bn | {r['passes_s']:.1f} | {r['after_passes_rss'] / gib:.2f} | "
        f"{r['after_passes_rss'] / weights:.2f} |",
        f"| graphc.save (external data, full check) | {r['save_s']:.1f} | {r['peak_rss'] / gib:.2f} | "
        f"{r['peak_rss'] / weights:.2f} |", ""])


def run() -> str:
    fuzz_text, fuzz = _fuzz()
    property_text, graphs = _properties()
    big_text = _big()
    summary = (f"Summary: **{fuzz['cases_per_minute']:.0f} fuzz cases/minute**, "
               f"**{graphs} property-test graphs** in this run, and the 2.25 GiB model below.")
    return "\n\n".join([summary, fuzz_text, property_text, big_text])


if __name__ == "__main__":
    print(run())
