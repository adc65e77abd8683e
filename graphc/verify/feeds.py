"""The inputs a comparison or a benchmark runs on, and the models it runs.

``evaluation_data`` turns what the user gave (a path, a DataSource, feed dicts, or nothing) into
a re-iterable :class:`graphc.calib.data.DataSource` bound to the reference model's inputs; with
nothing given it is seeded random data of the declared shapes (``input_shapes`` for dynamic dims).
``open_model`` accepts a :class:`graphc.ir.Model`, a path, serialized bytes or a ModelProto.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Union

import onnx

from graphc.calib.data import DataSource, RandomSource, input_specs, open_data
from graphc.errors import DataError
from graphc.ir.model import Model, load

ModelInput = Union[Model, str, os.PathLike, bytes, onnx.ModelProto]
#: input name -> concrete shape, for models with dynamic dims.
InputShapes = dict[str, tuple[int, ...]]


def open_model(source: ModelInput) -> tuple[Model, Union[Model, str, bytes]]:
    """(IR of the model, what onnxruntime should load: the path itself when there is one)."""
    if isinstance(source, Model):
        return source, source
    if isinstance(source, (bytes, bytearray)):
        return load(bytes(source)), bytes(source)
    if isinstance(source, onnx.ModelProto):
        model = load(source)
        return model, model
    return load(source), str(Path(source))


def check_input_shapes(model: Model, input_shapes: InputShapes | None) -> None:
    """Raise :class:`DataError` if ``input_shapes`` names an input the model lacks, or gives a
    shape of the wrong rank or one that contradicts a static dim."""
    specs = {s.name: s for s in input_specs(model)}
    for name, shape in (input_shapes or {}).items():
        spec = specs.get(name)
        if spec is None:
            known = ", ".join(specs) or "none"
            raise DataError(f"input shape given for '{name}', but the model's inputs are: {known}")
        if spec.shape and len(shape) != len(spec.shape):
            raise DataError(f"input '{name}' has rank {len(spec.shape)}; the shape given, "
                            f"{'x'.join(map(str, shape))}, has {len(shape)} dims")
        for i, (want, got) in enumerate(zip(spec.shape, shape)):
            if want is not None and want != got:
                raise DataError(f"input '{name}' dim {i} is fixed at {want}; the shape given has {got}")


def evaluation_data(model: Model, data: Any = None, *, input_shapes: InputShapes | None = None,
                    samples: int | None = 8, seed: int = 0) -> DataSource:
    """At most ``samples`` feeds (None: all of ``data``) for ``model``'s inputs."""
    if samples is not None and samples < 1:
        raise DataError(f"samples must be at least 1, got {samples}")
    check_input_shapes(model, input_shapes)
    if data is None:
        return RandomSource(input_specs(model), n=samples or 8, seed=seed, input_shapes=input_shapes)
    return open_data(data, model).take(samples)
