"""The one place onnxruntime sessions are created, so session options are set consistently.

Used by verify/, calib/ and bench/ only; passes never run models. onnxruntime's own exceptions
are turned into graphc errors here: a model onnxruntime cannot load (unknown op, unsupported
opset, bad graph) is a :class:`ModelError`; a run that rejects its feeds is a :class:`DataError`.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping, Sequence, Union

import numpy as np
import onnxruntime as ort
from onnxruntime.capi import onnxruntime_pybind11_state as ort_state

from graphc.errors import DataError, ModelError
from graphc.ir.model import Model, model_bytes
from graphc.ir.outputs import with_outputs

SessionSource = Union[Model, bytes, str, os.PathLike]

#: exceptions onnxruntime raises from session creation and runs (pybind11, not RuntimeError).
ORT_ERRORS: tuple[type[BaseException], ...] = tuple(
    cls for cls in (getattr(ort_state, name, None) for name in (
        "Fail", "InvalidArgument", "NoSuchFile", "NoModel", "EngineError", "RuntimeException",
        "InvalidProtobuf", "ModelLoaded", "NotImplemented", "InvalidGraph", "EPFail"))
    if isinstance(cls, type)
) + (RuntimeError,)


def create_session(
    source: SessionSource,
    *,
    threads: int | None = None,
    optimize: bool = True,
    optimized_model_path: str | os.PathLike | None = None,
    label: str = "model",
    spin: bool = True,
) -> ort.InferenceSession:
    """A CPU session. ``threads=None`` lets onnxruntime decide; benchmarks pin it.

    ``label`` names the model in error messages ("reference", "candidate"). ``spin=False`` stops
    idle worker threads from busy-waiting between runs (verification and calibration do numpy
    work between runs; benchmarks keep the default).
    """
    opts = ort.SessionOptions()
    opts.log_severity_level = 4  # graphc reports failures itself; no second ERROR line
    if not spin:
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        opts.add_session_config_entry("session.inter_op.allow_spinning", "0")
    if threads is not None:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    opts.graph_optimization_level = (
        ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize else ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    )
    if optimized_model_path is not None:
        opts.optimized_model_filepath = str(optimized_model_path)
    if isinstance(source, Model):
        payload: Union[bytes, str] = model_bytes(source)
    elif isinstance(source, (bytes, bytearray)):
        payload = bytes(source)
    else:
        payload = str(Path(source))
    try:
        return ort.InferenceSession(payload, sess_options=opts, providers=["CPUExecutionProvider"])
    except ORT_ERRORS as exc:
        raise ModelError(f"onnxruntime cannot load the {label}: {_first_line(exc)}") from None


def run_session(
    session: ort.InferenceSession,
    feeds: Mapping[str, np.ndarray],
    output_names: Sequence[str] | None = None,
    *,
    label: str = "model",
) -> list[np.ndarray]:
    """Run ``session`` on the feeds it declares (extra feeds are ignored, so one feed dict can
    serve two models whose unused inputs differ). A missing input is a :class:`DataError`."""
    wanted = [i.name for i in session.get_inputs()]
    missing = [name for name in wanted if name not in feeds]
    if missing:
        raise DataError(f"the {label} needs input(s) {', '.join(missing)} that the data does not provide")
    try:
        return session.run(list(output_names) if output_names is not None else None,
                           {name: feeds[name] for name in wanted})
    except ORT_ERRORS as exc:
        raise DataError(f"onnxruntime failed to run the {label}: {_first_line(exc)}") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def measure_shapes(
    model: Model,
    input_shapes: Mapping[str, Sequence[int]],
    names: Sequence[str],
) -> dict[str, tuple[int, ...]]:
    """Shapes of the tensors ``names`` measured by one run on zeros of ``input_shapes``.

    For what static shape inference cannot see (Reshape targets computed at run time). Every graph
    input needs a concrete shape in ``input_shapes``; a missing one is a :class:`DataError`.
    """
    feeds = {}
    for tensor in model.graph.inputs:
        if tensor.name not in input_shapes:
            raise DataError(f"input '{tensor.name}' needs a concrete shape to measure shapes")
        dtype = np.dtype(tensor.dtype) if tensor.dtype is not None else np.dtype(np.float32)
        feeds[tensor.name] = np.zeros(tuple(int(d) for d in input_shapes[tensor.name]), dtype=dtype)
    exposed = with_outputs(model, names)
    session = create_session(exposed, optimize=False, label="model (shape measurement)")
    output_names = [o.name for o in session.get_outputs()]
    values = run_session(session, feeds, label="model (shape measurement)")
    wanted = set(names)
    return {name: tuple(int(d) for d in np.shape(value))
            for name, value in zip(output_names, values) if name in wanted}
