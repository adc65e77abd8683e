"""Calibration over many samples runs shard by shard on the executor (graphc/calib/shards.py): a
model quantized with one local worker (everything in this process) and with two spawned workers
(shards sent to them) is the same bytes. The Ray case is in test_ray.py."""
from __future__ import annotations

import pytest

import graphc.calib.collect as collect_module
import graphc.calib.shards as shards_module
from executor_nets import write_case
from graphc.build import build
from graphc.executor import LocalExecutor, using
from graphc.recipe import Recipe

SAMPLES = 3 * shards_module.SHARD_SIZE + 5


@pytest.fixture
def shard_calls(monkeypatch):
    """Shards go to the executor whatever this machine's cores and the first shard's time; the
    number of shards sent to it per call is recorded."""
    monkeypatch.setattr(shards_module, "usable_cores", lambda: 8)
    monkeypatch.setattr(shards_module, "MIN_PARALLEL_SECONDS", 0.0)
    calls = []
    real = collect_module.map_shards

    def spy(fn, shared, shards, desc):
        calls.append(len(shards))
        return real(fn, shared, shards, desc)

    monkeypatch.setattr(collect_module, "map_shards", spy)
    return calls


def quantize(tmp_path, name, calib, executor=None):
    """The case model quantized with ``calib`` ranges from SAMPLES feeds; its bytes."""
    model, data = write_case(tmp_path, samples=SAMPLES)
    out = tmp_path / f"{name}.onnx"
    recipe = Recipe().updated({"pipeline": f"quant{{placement=all calib={calib}}}", "executor": executor,
                               "data.calibration": str(data), "outputs.model": str(out)})
    build(model, recipe)
    return out.read_bytes()


@pytest.mark.parametrize("calib", ["kl", "minmax"])
def test_one_and_two_local_workers_give_the_same_quantized_bytes(tmp_path, shard_calls, calib):
    with using(LocalExecutor(1)):
        one = quantize(tmp_path, "one", calib)
    assert shard_calls == []  # one worker: in this process
    with using(LocalExecutor(2)):
        two = quantize(tmp_path, "two", calib)
    assert shard_calls == [3]  # the first shard here, three on the workers
    assert two == one
