"""The one place onnxruntime sessions are created, so session options are set consistently.

Used by verify/, calib/ and bench/ only; passes never run models.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Union

import onnxruntime as ort

from graphc.ir.model import Model, model_bytes

SessionSource = Union[Model, bytes, str, os.PathLike]


def create_session(
    source: SessionSource,
    *,
    threads: int | None = None,
    optimize: bool = True,
    optimized_model_path: str | os.PathLike | None = None,
) -> ort.InferenceSession:
    """A CPU session. ``threads=None`` lets onnxruntime decide; benchmarks pin it."""
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
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
    return ort.InferenceSession(payload, sess_options=opts, providers=["CPUExecutionProvider"])
