"""Test-only passes and data for the build-step tests (tests/cli, tests/report, tests/docs).

They stand in for real lossy passes so the report, gates and recipes can be tested on
tiny_nets.conv_net without depending on quant or prune:

- ``test-scale{node=c1 factor=1.5}``: multiplies one layer's weight (lossy, output error grows
  with |factor - 1|; factor=0 on ``fc`` makes every prediction class 0);
- ``test-prune``: drops the last output channel of Conv ``c1`` (and the matching input channel of
  ``c2``), recording ``{"node": "c1", "reason"...}`` details like a pruning pass;
- ``test-calibrate``: needs data and records ``{"tensor", "range", "observed"}`` details for
  ``r1`` and ``r2`` like quant, without changing the graph.

``registered()`` registers them for the duration of a test.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from graphc.passmanager import Pass, PassResult, option, register_pass
from graphc.passmanager import registry
from support import run
from tiny_nets import conv_net


class ScaleLayer(Pass):
    name = "test-scale"
    summary = "test only: scale one layer's weight"
    exact = False

    @dataclass(frozen=True)
    class Options:
        node: str = option("c1", "layer whose weight is scaled")
        factor: float = option(1.5, "scale factor")

    def run(self, graph, ctx):
        node = next(n for n in graph.nodes if n.name == self.options.node)
        node.inputs[1].values = (node.inputs[1].values * np.float32(self.options.factor)).astype(np.float32)
        return PassResult(modified=True, stats={"scaled": 1})


class PruneLastChannel(Pass):
    name = "test-prune"
    summary = "test only: drop the last output channel of c1"
    exact = False

    def run(self, graph, ctx):
        nodes = {n.name: n for n in graph.nodes}
        c1, c2 = nodes["c1"], nodes["c2"]
        c1.inputs[1].values = c1.inputs[1].values[:-1].copy()
        c1.inputs[2].values = c1.inputs[2].values[:-1].copy()
        c2.inputs[1].values = c2.inputs[1].values[:, :-1].copy()
        result = PassResult(modified=True, stats={"channels_removed": 1})
        result.details.append({"node": "c1", "kept": 3, "of": 4})
        return result


class FakeCalibration(Pass):
    name = "test-calibrate"
    summary = "test only: record calibrated ranges without rewriting"
    exact = False
    needs_data = True

    def run(self, graph, ctx):
        result = PassResult(modified=False)
        result.details += [{"tensor": "r1", "range": [0.0, 0.5], "observed": [0.0, 4.0]},
                           {"tensor": "r2", "range": [0.0, 3.0], "observed": [0.0, 3.1]}]
        return result


PASSES = (ScaleLayer, PruneLastChannel, FakeCalibration)


@contextlib.contextmanager
def registered():
    for cls in PASSES:
        register_pass(cls)
    try:
        yield
    finally:
        for cls in PASSES:
            registry._REGISTRY.pop(cls.name, None)


def write_net(folder: Path, name: str = "net.onnx") -> Path:
    path = folder / name
    path.write_bytes(conv_net().SerializeToString())
    return path


def write_labelled_data(folder: Path, n: int = 16, seed: int = 0, name: str = "eval.npz") -> Path:
    """``x`` (one feed per entry) and ``labels``: the conv net's own predictions, so the input model
    scores 100% and any change to its predictions shows as an accuracy drop."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 1, 3, 8, 8)).astype(np.float32)
    model = conv_net()
    labels = np.array([int(np.argmax(run(model, {"x": xi})[0])) for xi in x])
    path = folder / name
    np.savez(path, x=x, labels=labels)
    return path
