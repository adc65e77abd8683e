"""fold-bn on a large model: graphc against onnxslim, wall time and peak memory.

The model is generated in a temporary folder: a chain of ``BLOCKS`` blocks
Conv3x3(C->C, bias) -> BatchNormalization -> Relu with C = ``CHANNELS`` (300 x 256 channels:
about 708 MB of float32 weights). Each tool runs in a fresh subprocess, alternating graphc and
onnxslim; wall time and peak RSS of the whole process, start to exit, by
:func:`graphc.bench.measure_process`, so both include interpreter and library start-up.
Reported: medians, the time ratio, and peak RSS as a multiple of the model's file size.

    python benchmarks/run.py fold_bn                      # 3 alternated runs of each
    GRAPHC_BENCH_REPEATS=1 python benchmarks/run.py fold_bn
"""
from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

BLOCKS = 300
CHANNELS = 256
TITLE = f"fold-bn on a {BLOCKS}-block Conv+BN chain ({BLOCKS * CHANNELS * CHANNELS * 9 * 4 / 1e6:.0f} MB of Conv weights): graphc vs onnxslim"
REPEATS = int(os.environ.get("GRAPHC_BENCH_REPEATS", "3"))
PIPELINE = "fold-bn,cleanup"


def generate(path: Path, blocks: int = BLOCKS, channels: int = CHANNELS, seed: int = 0) -> Path:
    """Write the Conv3x3+BN+ReLU chain to ``path`` (one file, weights inline)."""
    rng = np.random.default_rng(seed)
    nodes, inits = [], []
    x = "x"
    fan_in = channels * 9
    for i in range(blocks):
        weight = rng.standard_normal((channels, channels, 3, 3), dtype=np.float32) / np.float32(np.sqrt(fan_in))
        params = {
            f"conv{i}.w": weight,
            f"conv{i}.b": rng.standard_normal(channels, dtype=np.float32) * np.float32(0.1),
            f"bn{i}.gamma": rng.uniform(0.5, 1.5, channels).astype(np.float32),
            f"bn{i}.beta": rng.standard_normal(channels, dtype=np.float32) * np.float32(0.1),
            f"bn{i}.mean": rng.standard_normal(channels, dtype=np.float32) * np.float32(0.1),
            f"bn{i}.var": rng.uniform(0.5, 2.0, channels).astype(np.float32),
        }
        inits.extend(onnx.numpy_helper.from_array(v, k) for k, v in params.items())
        nodes.append(helper.make_node("Conv", [x, f"conv{i}.w", f"conv{i}.b"], [f"conv{i}.out"],
                                      name=f"conv{i}", pads=[1, 1, 1, 1]))
        nodes.append(helper.make_node("BatchNormalization", [f"conv{i}.out"] + list(params)[2:],
                                      [f"bn{i}.out"], name=f"bn{i}", epsilon=1e-5))
        y = "y" if i == blocks - 1 else f"relu{i}.out"
        nodes.append(helper.make_node("Relu", [f"bn{i}.out"], [y], name=f"relu{i}"))
        x = y
    graph = helper.make_graph(nodes, "conv_bn_chain",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", channels, "H", "W"])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", channels, "H", "W"])],
                              inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], producer_name="bench_fold_bn")
    model.ir_version = 8
    with open(path, "wb") as fh:
        fh.write(model.SerializeToString())
    return path


def _graphc_api_command(src: Path, dst: Path) -> list[str]:
    """The library alone: load, PassManager, save (what the CLI adds is reports and MAC counts)."""
    script = ("import sys, graphc; m = graphc.load(sys.argv[1]); "
              f"graphc.PassManager({PIPELINE!r}).run(m); graphc.save(m, sys.argv[2])")
    return [sys.executable, "-c", script, str(src), str(dst)]


def _graphc_command(src: Path, dst: Path) -> list[str]:
    cli = Path(sys.executable).with_name("graphc")
    if cli.exists() and _cli_has_opt(cli):
        # the input is dynamic (N, C, H, W); the CLI wants a concrete shape for its MAC report
        return [str(cli), "opt", str(src), "-p", PIPELINE, "-o", str(dst), "-q",
                "--input-shape", f"x:1x{CHANNELS}x8x8"]
    return _graphc_api_command(src, dst)  # no CLI yet


def _cli_has_opt(cli: Path) -> bool:
    probe = subprocess.run([str(cli), "opt", "--help"], capture_output=True, text=True)
    return probe.returncode == 0


def _onnxslim_command(src: Path, dst: Path) -> list[str]:
    cli = Path(sys.executable).with_name("onnxslim")
    if cli.exists():
        return [str(cli), str(src), str(dst)]
    return [sys.executable, "-m", "onnxslim", str(src), str(dst)]


def measure(command: list[str]) -> tuple[float, int]:
    """Wall seconds and peak RSS in bytes of one run of ``command`` (a Python program: the
    graphc or onnxslim console script, or ``python -c``) in a fresh process, start to exit, by
    :func:`graphc.bench.measure_process` (a small launcher in between, so the tool does not
    inherit this process's peak; graphc's per-pass resets do not hide its load peak)."""
    from graphc.bench.memory import measure_process, python_command

    args = command[1:] if command[0] == sys.executable else command
    result = measure_process(python_command(*args))
    if result.returncode != 0:
        raise RuntimeError(f"{command[0]} failed ({result.returncode}): {result.stderr.strip()[-2000:]}")
    return result.wall_s, result.peak_bytes


def _count(path: Path, op: str) -> int:
    model = onnx.load(str(path), load_external_data=False)
    return sum(1 for n in model.graph.node if n.op_type == op)


def _max_abs_error(reference: Path, candidate: Path, channels: int = CHANNELS) -> float:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    x = np.random.default_rng(1).standard_normal((1, channels, 8, 8), dtype=np.float32)
    outs = []
    for path in (reference, candidate):
        sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        outs.append(sess.run(None, {"x": x})[0])
        del sess
    return float(np.abs(outs[0] - outs[1]).max()), float(np.abs(outs[0]).max())


def run() -> str:
    tmp = Path(tempfile.mkdtemp(prefix="bench_fold_bn."))
    try:
        src = tmp / "chain.onnx"
        subprocess.run([sys.executable, __file__, "generate", str(src)], check=True)
        size = src.stat().st_size
        tools = {"graphc": (_graphc_command, tmp / "graphc.onnx"),
                 "graphc API": (_graphc_api_command, tmp / "graphc_api.onnx"),
                 "onnxslim": (_onnxslim_command, tmp / "onnxslim.onnx")}
        results: dict[str, list[tuple[float, int]]] = {name: [] for name in tools}
        for _ in range(REPEATS):  # alternate the tools so load on the machine hits both alike
            for name, (command, dst) in tools.items():
                results[name].append(measure(command(src, dst)))
        return _table(src, size, tools, results)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _shown(command: list[str]) -> str:
    """The command as a reader would type it (no temp-dir or venv paths)."""
    return " ".join(Path(a).name if "/" in a else a for a in command)


def _table(src, size, tools, results) -> str:
    from graphc.ir.compressed_size import GENERAL_CODER_LIMIT

    med = {n: (statistics.median(w for w, _ in r), statistics.median(m for _, m in r)) for n, r in results.items()}
    lines = [
        f"Model: {BLOCKS} x (Conv3x3 {CHANNELS}->{CHANNELS} + BatchNormalization + Relu), opset 13, "
        f"{size / 1e6:.0f} MB, {_count(src, 'BatchNormalization')} BatchNormalization nodes. "
        f"graphc runs `{_shown(tools['graphc'][0](src, Path('out.onnx')))}`; graphc API is the same "
        f"pipeline through `graphc.load` / `PassManager` / `graphc.save` in `python -c` (the CLI adds "
        f"its before/after model summaries: parameter and MAC counts and graphc.ir.compressed_size's "
        f"figures, whose zlib/xz coders it skips above {GENERAL_CODER_LIMIT / 2**20:.0f} MiB - this model "
        f"is {'above' if size > GENERAL_CODER_LIMIT else 'below'} that - and whose file bytes it counts "
        f"without serializing the model); "
        f"onnxslim `{_shown(tools['onnxslim'][0](src, Path('out.onnx')))}`; each in a fresh process, "
        f"{REPEATS} rounds of the three tools in turn (alternated), medians; wall time and peak RSS are "
        "the whole process from start to exit (`graphc.bench.measure_process`), start-up included; "
        "time ratio = median tool / median onnxslim. Max abs error: one seeded random 1x"
        f"{CHANNELS}x8x8 input, onnxruntime with graph optimizations off, the tool's output file against the "
        "unfolded model.",
        "",
        "| tool | wall s | time vs onnxslim | peak RSS MB | peak RSS / model size | BN left | max abs error vs unfolded |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, (_, dst) in tools.items():
        wall, peak = med[name]
        err, scale = _max_abs_error(src, dst)
        lines.append(f"| {name} | {wall:.1f} | {wall / med['onnxslim'][0]:.2f}x | {peak / 1e6:.0f} | "
                     f"{peak / size:.2f}x | {_count(dst, 'BatchNormalization')} | {err:.1e} (outputs up to {scale:.2f}) |")
    runs = "; ".join(f"{n}: " + ", ".join(f"{w:.1f} s / {m / 1e6:.0f} MB" for w, m in r) for n, r in results.items())
    lines += ["", f"Individual runs: {runs}."]
    return "\n".join(lines)


if __name__ == "__main__" and sys.argv[1:2] == ["generate"]:
    generate(Path(sys.argv[2]))
