"""Tiny models and data for the executor tests (written to files, as the CLI and build read them),
and the top-level task functions the executors run (importable by spawned and Ray workers)."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

import graphc
from graphc.errors import DataError
from nets import Net


def conv_chain(seed: int = 0, width: int = 8, layers: int = 4) -> graphc.Model:
    """x(1x4x8x8) -> ``layers`` x (Conv 3x3 + Relu) -> Conv 1x1 -> y; conv 1 has one huge weight
    (a per-tensor scale crushes its others: a layer the quant budget keeps float)."""
    n = Net(seed)
    x, cin = n.input("x", [1, 4, 8, 8]), 4
    for i in range(layers):
        x = n.relu(n.conv(x, cin, width, name=f"conv{i}"))
        cin = width
    model = n.model(n.conv(x, width, 2, k=1, name="head"))
    w = model.graph.nodes[2].inputs[1]  # conv1's weight
    values = np.array(w.values, copy=True)
    values[0, 0, 1, 1] = 30.0
    w.values = values
    return model


def write_case(folder: Path, seed: int = 0, samples: int = 8) -> tuple[Path, Path]:
    """The model and an .npz of calibration feeds in ``folder``."""
    model_path, data_path = folder / "model.onnx", folder / "data.npz"
    graphc.save(conv_chain(seed), model_path)
    rng = np.random.default_rng(seed + 1)
    np.savez(data_path, x=rng.standard_normal((samples, 1, 4, 8, 8)).astype(np.float32))
    return model_path, data_path


def scaled(shared: float, item: tuple[int, float]) -> tuple[int, float]:
    """A task that finishes in reverse order when delays fall with the index."""
    index, delay = item
    time.sleep(delay)
    return index, shared * index


def shared_id(shared: dict, item: int) -> int:
    return id(shared)


def sized(shared: bytes, item: int) -> int:
    return len(shared) + item


def failing(shared: object, item: int) -> int:
    if item == 2:
        raise DataError(f"task {item}: bad sample")
    return item
