"""A model with more weights than protobuf can hold (> 2 GiB), written as external data.

``write_big_model(folder, layers)``: ``layers`` blocks of Gemm(8192 x 8192, transB) ->
BatchNormalization -> Identity -> Relu on a [1, 8192] input; each Gemm weight is 256 MiB, so 9
layers are 2.25 GiB. The weights are written through ``numpy.memmap`` a block at a time: the
generator never holds more than one 16 MiB block in memory.

``python tests/robustness/big_model.py run IN OUT``: load, ``cleanup,fold-bn``, save with
external data, in this process; prints one JSON line with the wall time and the process's peak RSS
so far after each stage (:func:`graphc.passmanager.memory.process_peak_rss`: the pass manager's
per-pass resets do not hide load). The parent runs it through :func:`graphc.bench.measure_process`,
whose figure covers the whole process from start to exit.
``python tests/robustness/big_model.py stages IN``: the same, and the stages of the libraries
underneath (onnx.load with external data, gs.import_onnx, gs.export_onnx, onnx.save_model
external, onnx.checker on the path), each in a fresh process, to see where copies happen.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
from onnx import TensorProto, helper, numpy_helper

FEATURES = 8192
BLOCK = 1 << 22  # floats per generator block (16 MiB)


def weight_bytes(layers: int, features: int = FEATURES) -> int:
    return layers * features * features * 4


def write_big_model(folder: Path, layers: int, features: int = FEATURES, name: str = "big.onnx") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    data_name = f"{name}.data"
    per_weight = features * features
    data = np.memmap(folder / data_name, dtype=np.float32, mode="w+", shape=(layers * per_weight,))
    pattern = (np.random.default_rng(0).standard_normal(BLOCK) / np.sqrt(features)).astype(np.float32)
    for start in range(0, data.size, BLOCK):
        stop = min(start + BLOCK, data.size)
        layer = start // per_weight  # a different scale per layer, so no two weights are equal
        data[start:stop] = pattern[: stop - start] * np.float32(1 + layer / 8)
    data.flush()
    del data

    rng = np.random.default_rng(1)
    nodes, inits = [], []
    current = "x"
    for i in range(layers):
        weight = TensorProto(name=f"w{i}", data_type=TensorProto.FLOAT, dims=[features, features],
                             data_location=TensorProto.EXTERNAL)
        for key, value in (("location", data_name), ("offset", str(i * per_weight * 4)),
                           ("length", str(per_weight * 4))):
            weight.external_data.add(key=key, value=value)
        inits.append(weight)
        small = {"b": rng.standard_normal(features) * 0.1, "scale": rng.uniform(0.5, 1.5, features),
                 "bias": rng.standard_normal(features) * 0.1, "mean": rng.standard_normal(features) * 0.1,
                 "var": rng.uniform(0.5, 1.5, features)}
        inits.extend(numpy_helper.from_array(v.astype(np.float32), f"{k}{i}") for k, v in small.items())
        nodes += [
            helper.make_node("Gemm", [current, f"w{i}", f"b{i}"], [f"g{i}"], name=f"gemm{i}", transB=1),
            helper.make_node("BatchNormalization", [f"g{i}", f"scale{i}", f"bias{i}", f"mean{i}", f"var{i}"],
                             [f"n{i}"], name=f"bn{i}"),
            helper.make_node("Identity", [f"n{i}"], [f"id{i}"], name=f"id{i}"),
            helper.make_node("Relu", [f"id{i}"], [f"r{i}"], name=f"relu{i}"),
        ]
        current = f"r{i}"
    graph = helper.make_graph(nodes, "big", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, features])],
                              [helper.make_tensor_value_info(current, TensorProto.FLOAT, [1, features])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], producer_name="big_model")
    model.ir_version = 8
    path = folder / name
    path.write_bytes(model.SerializeToString())
    return path


# -- measuring (child processes) ------------------------------------------------------------------


def run_pipeline(src: Path, out: Path) -> dict:
    """load, cleanup+fold-bn, save with external data; times and peak RSS so far after each stage."""
    import graphc
    from graphc.passmanager.memory import process_peak_rss as peak_so_far

    report = {"baseline_rss": peak_so_far()}
    start = time.perf_counter()
    model = graphc.load(src)
    report["load_s"], report["after_load_rss"] = time.perf_counter() - start, peak_so_far()
    t = time.perf_counter()
    run = graphc.PassManager("cleanup,fold-bn").run(model)
    report["passes_s"], report["after_passes_rss"] = time.perf_counter() - t, peak_so_far()
    report["stats"] = {r.name: r.stats for r in run.records}
    t = time.perf_counter()
    graphc.save(model, out, external_data=True)
    report["save_s"], report["peak_rss"] = time.perf_counter() - t, peak_so_far()
    report["total_s"] = time.perf_counter() - start
    report["ops"] = sorted({n.op for n in model.graph.nodes})
    return report


_STAGES = {
    "onnx.load(external data)": "import onnx; m = onnx.load(SRC)",
    "onnx.load + gs.import_onnx": "import onnx, onnx_graphsurgeon as gs; m = onnx.load(SRC); g = gs.import_onnx(m)",
    "+ values to numpy": ("import onnx, onnx_graphsurgeon as gs; m = onnx.load(SRC); g = gs.import_onnx(m)\n"
                          "for t in g.tensors().values():\n    getattr(t, 'values', None)"),
    "+ gs.export_onnx": ("import onnx, onnx_graphsurgeon as gs; m = onnx.load(SRC); g = gs.import_onnx(m)\n"
                         "for t in g.tensors().values():\n    getattr(t, 'values', None)\n"
                         "del m\np = gs.export_onnx(g)"),
    "+ onnx.save_model(external)": ("import onnx, onnx_graphsurgeon as gs; m = onnx.load(SRC); g = gs.import_onnx(m)\n"
                                    "del m\np = gs.export_onnx(g)\n"
                                    "onnx.save_model(p, OUT, save_as_external_data=True, location='o.data')"),
    "onnx.checker.check_model(path, full_check)": "import onnx; onnx.checker.check_model(SRC, full_check=True)",
    "graphc.load": "import graphc; m = graphc.load(SRC)",
}


def measure_stages(src: Path, out_dir: Path) -> dict[str, dict]:
    from graphc.bench.memory import measure_process, python_command

    results = {}
    for label, code in _STAGES.items():
        out = out_dir / "stage.onnx"
        script = (f"SRC, OUT = {str(src)!r}, {str(out)!r}\nimport time; _t = time.perf_counter()\n{code}\n"
                  "import json; print(json.dumps({'s': time.perf_counter() - _t}))")
        proc = measure_process(python_command("-c", script))
        results[label] = dict(json.loads(proc.stdout.strip().splitlines()[-1]), peak=proc.peak_bytes) \
            if proc.returncode == 0 else {"error": proc.stderr.strip().splitlines()[-1:]}
        for p in out_dir.glob("stage.onnx*"):
            p.unlink()
        (out_dir / "o.data").unlink(missing_ok=True)
    return results


if __name__ == "__main__":
    command, src = sys.argv[1], Path(sys.argv[2])
    if command == "run":
        print(json.dumps(run_pipeline(src, Path(sys.argv[3]))))
    elif command == "stages":
        print(json.dumps(measure_stages(src, src.parent)))
    elif command == "write":
        print(write_big_model(src, int(sys.argv[3])))
