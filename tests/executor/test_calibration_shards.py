"""Calibration over many samples runs shard by shard on the executor (graphc/calib/shards.py): a
model quantized with one local worker (everything in this process) and with two spawned workers
(shards sent to them) is the same bytes. The Ray case is in test_ray.py."""
from __future__ import annotations

import pytest

import graphc.calib.shards as shards_module
from executor_nets import write_case
from graphc.build import build
from graphc.executor import LocalExecutor, using
from graphc.recipe import Recipe

SAMPLES = 3 * shards_module.SHARD_SIZE + 5


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
