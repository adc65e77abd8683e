"""Searches through a real Ray runtime (local, 2 CPUs, started and shut down here) give what the
local executor gives, bit for bit: the quant budget's float layers, output model bytes and report
figures; prune's sensitivity table (``graphc sensitivity``) and the model pruned by it. Also: the
shared value is put in the object store once per job, results come back in item order, and a
graphc error in a task is raised as itself. Skipped without Ray (``make test-ray`` installs it)."""
from __future__ import annotations

import json

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import executor_nets
import graphc
from executor_nets import failing, scaled, shared_id, write_case
from graphc.build import build
from graphc.calib.data import open_data
from graphc.cli import main
from graphc.errors import DataError
from graphc.executor import LocalExecutor, RayExecutor, using
from graphc.recipe import Recipe
from support import make_model

ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'graphc[ray]'; it is in the test extra)")

BUDGET = "quant{placement=all per-channel=false calib=minmax min-sqnr=30}"
PRUNE = "prune{flops=0.5 allocation=sensitivity}"
#: report entries that differ between any two runs (when, how long, which files, which executor).
UNSTABLE = {"created", "recipe", "output", "path", "wall_s", "peak_rss_bytes"}


@pytest.fixture(scope="module")
def ray_runtime():
    # Ray workers do not see tests/ on their path: ship the test's task functions by value
    ray.cloudpickle.register_pickle_by_value(executor_nets)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield ray
    finally:
        ray.shutdown()
        ray.cloudpickle.unregister_pickle_by_value(executor_nets)


def test_results_come_back_in_item_order(ray_runtime):
    items = [(i, 0.05 * (4 - i)) for i in range(4)]  # the first item finishes last
    assert RayExecutor().map(scaled, 2.0, items) == [(i, 2.0 * i) for i in range(4)]


def test_the_shared_value_is_put_once_and_read_once_per_worker(ray_runtime, monkeypatch):
    puts = []
    real_put = ray.put
    monkeypatch.setattr(ray, "put", lambda value, **kw: puts.append(1) or real_put(value, **kw))
    ids = RayExecutor().map(shared_id, {"big": bytes(1 << 20)}, list(range(12)))
    assert len(puts) == 1
    assert len(set(ids)) <= 2  # one copy per worker process (2 CPUs), not one per task


def test_a_graphc_error_in_a_task_is_raised_as_itself(ray_runtime):
    with pytest.raises(DataError, match="task 2: bad sample"):
        RayExecutor().map(failing, None, [0, 1, 2, 3])


def _stable(value):
    """The report without measured times and paths."""
    if isinstance(value, dict):
        return {k: _stable(v) for k, v in value.items() if k not in UNSTABLE}
    if isinstance(value, list):
        return [_stable(v) for v in value]
    return value


def _build(tmp_path, monkeypatch, pipeline, executor, name):
    monkeypatch.setenv("GRAPHC_CACHE_DIR", str(tmp_path / f"cache-{name}"))  # nothing re-used
    model, data = write_case(tmp_path)
    out, report = tmp_path / f"{name}.onnx", tmp_path / f"{name}.json"
    recipe = Recipe().updated({"pipeline": pipeline, "executor": executor, "data.calibration": str(data),
                               "outputs.model": str(out), "outputs.report": str(report)})
    build(model, recipe)
    return out.read_bytes(), json.loads(report.read_text())


def _pass_record(report, name):
    return next(p for p in report["passes"] if p["name"] == name)


def test_quant_budget_through_ray_is_bit_identical_to_local(ray_runtime, tmp_path, monkeypatch):
    local_bytes, local = _build(tmp_path, monkeypatch, BUDGET, "local", "local")
    ray_bytes, on_ray = _build(tmp_path, monkeypatch, BUDGET, "ray", "ray")
    quant = _pass_record(on_ray, "quant")
    assert quant["stats"]["budget_evaluations_run"] > 2  # evaluated, on Ray, not read from a cache
    assert 0 < quant["stats"]["budget_float_layers"]  # the budget kept layers float
    assert ray_bytes == local_bytes
    assert _stable(on_ray) == _stable(local)


def test_prune_sensitivity_through_ray_is_bit_identical_to_local(ray_runtime, tmp_path, monkeypatch, capsys):
    model, data = write_case(tmp_path)
    tables = []
    for executor in ("local", "ray"):
        assert main(["sensitivity", str(model), "--data", str(data), "--json", "--executor", executor]) == 0
        tables.append(json.loads(capsys.readouterr().out))
    assert tables[0]["groups"] and tables[0] == tables[1]
    local_bytes, local = _build(tmp_path, monkeypatch, PRUNE, "local", "prune-local")
    ray_bytes, on_ray = _build(tmp_path, monkeypatch, PRUNE, "ray", "prune-ray")
    assert ray_bytes == local_bytes
    assert _stable(on_ray) == _stable(local)


def test_sweep_through_ray_gives_the_local_rows_and_outputs(ray_runtime, tmp_path, sweep_recipes):
    from graphc.executor import LocalExecutor
    from graphc.sweep import sweep
    from support import MODELS

    models = [str(MODELS / "mobilenetv2_digits.onnx")]
    local = sweep(models, sweep_recipes, tmp_path / "local", executor=LocalExecutor(1))
    on_ray = sweep(models, sweep_recipes, tmp_path / "ray", executor=RayExecutor())
    assert on_ray.ran == 2 and on_ray.rows == local.rows
    for name in ("exact", "int8"):
        folder = f"mobilenetv2_digits--{name}/model.onnx"
        assert (tmp_path / "ray" / folder).read_bytes() == (tmp_path / "local" / folder).read_bytes()


def test_sharded_calibration_through_ray_is_bit_identical_to_local(ray_runtime, tmp_path, shard_calls):
    from graphc.executor import LocalExecutor, using
    from test_calibration_shards import quantize

    with using(LocalExecutor(1)):
        local = quantize(tmp_path, "local", "kl")
    on_ray = quantize(tmp_path, "ray", "kl", executor="ray")
    assert shard_calls == [3]  # only the Ray build sent shards (one local worker: in this process)
    assert on_ray == local


def _mix_case():
    """A MatMul model whose min-sqnr=30 budget the dynamic mode misses: the per-layer mix
    (tests/passes/test_quant_mix.py has the same graph and explains it)."""
    rng = np.random.default_rng(0)
    w1 = (rng.standard_normal((1024, 128)) / 32).astype(np.float32)
    w2 = (rng.standard_normal((1024, 128)) / 32).astype(np.float32)
    w2[0, :] = 30.0
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["a"], name="good"),
             helper.make_node("MatMul", ["x", "w2"], ["b"], name="bad"),
             helper.make_node("Transpose", ["z"], ["zt"], name="zt", perm=[1, 0]),
             helper.make_node("MatMul", ["z", "zt"], ["c"], name="gram")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [16, 1024]),
                                           helper.make_tensor_value_info("z", TensorProto.FLOAT, [16, 64])],
                              [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in "abc"],
                              [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")])
    feeds = []
    for _ in range(4):
        x = rng.standard_normal((16, 1024)).astype(np.float32) * np.float32(30.0 ** rng.uniform(-1, 1))
        x[:, 0] *= 1e-3
        feeds.append({"x": x, "z": (rng.standard_normal((16, 64)) / 64 ** 0.25).astype(np.float32)})
    return graphc.load(make_model(graph, opset=13)), feeds


def test_quant_mix_through_ray_is_bit_identical_to_local(ray_runtime, tmp_path, monkeypatch):
    results = []
    for name, executor in (("local", LocalExecutor()), ("ray", RayExecutor())):
        monkeypatch.setenv("GRAPHC_CACHE_DIR", str(tmp_path / f"cache-{name}"))  # nothing re-used
        model, feeds = _mix_case()
        with using(executor):
            record = graphc.PassManager("quant{placement=all min-sqnr=30}", data=open_data(feeds, model),
                                        prepare=False).run(model).records[-1]
        stats = {k: v for k, v in record.stats.items() if k != "budget_evaluations_cached"}
        results.append((graphc.save(model, tmp_path / f"{name}.onnx").read_bytes(), stats, record.details))
    assert results[0][1]["budget_mix"] and results[0][1]["budget_evaluations_run"] > 2
    assert results[0][1]["budget_dynamic_layers"] == results[0][1]["budget_static_layers"] == 1
    assert results[0] == results[1]
