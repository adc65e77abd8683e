"""What a model is, as data: the body of ``graphc inspect`` and the before/after of a report.

Sizes count the file and its external data; parameters and MACs come from
:func:`graphc.stats.model_stats` (MACs need static shapes: nodes whose shapes stay unknown are listed
under ``macs_unknown`` and their MACs are not in ``macs``; ``input_shapes`` fixes dynamic dims).
When no shapes are given and the batch is the only dynamic dim of every input, MACs are counted
for one sample (batch 1, ``macs_batch_1``: true), the number people compare models by.
Nodes outside the default ONNX domain are counted per domain: graphc's passes leave them as they
are.
"""
from __future__ import annotations

import os
from collections import Counter
from pathlib import Path
from typing import Any

import onnx_graphsurgeon as gs

from graphc.ir.model import Model, file_size
from graphc.ir.usedef import STANDARD_DOMAINS
from graphc.stats import batch_one_shapes, dynamic_batch, model_stats
from graphc.verify.feeds import InputShapes, check_input_shapes


def tensor_signature(tensor: gs.Tensor) -> dict[str, Any]:
    """Name, dtype and shape (ints, symbolic names, or None for unknown dims) of a graph I/O."""
    dtype = None
    if tensor.dtype is not None:
        dtype = getattr(tensor.dtype, "__name__", None) or str(tensor.dtype)
    shape = None if tensor.shape is None else [
        d if isinstance(d, (int, str)) and d != -1 else None for d in tensor.shape]
    return {"name": tensor.name, "dtype": dtype, "shape": shape}


def model_summary(model: Model, *, path: str | os.PathLike | None = None,
                  input_shapes: InputShapes | None = None, top: int = 10) -> dict[str, Any]:
    """Inputs, outputs, opsets, producer, op histogram, parameters, size and MACs of ``model``."""
    check_input_shapes(model, input_shapes)
    graph = model.graph
    batch_1 = batch_one_shapes(model) if not input_shapes and dynamic_batch(model) else None
    stats = model_stats(model, input_shapes or batch_1)
    known = sorted((n for n in stats.per_node if n.macs), key=lambda n: -n.macs)
    custom = Counter(n.domain for n in graph.nodes if n.domain not in STANDARD_DOMAINS)
    return {
        "path": str(path) if path is not None else None,
        "file_bytes": file_size(path) if path is not None and Path(path).is_file() else None,
        "ir_version": model.ir_version,
        "opsets": {(domain or "ai.onnx"): version for domain, version in sorted(model.opset_imports.items())},
        "producer": " ".join(p for p in (model.producer_name, model.producer_version) if p),
        "inputs": [tensor_signature(t) for t in graph.inputs],
        "outputs": [tensor_signature(t) for t in graph.outputs],
        "input_shapes": {k: list(v) for k, v in (input_shapes or {}).items()},
        "nodes": len(graph.nodes),
        "op_histogram": dict(stats.op_histogram),
        "custom_domains": dict(sorted(custom.items())),
        "params": stats.params,
        "weight_bytes": stats.weight_bytes,
        "macs": stats.macs,
        "macs_batch_1": batch_1 is not None,
        "mac_nodes": len(stats.per_node),
        "macs_unknown": stats.unknown_macs,
        "top_macs": [{"name": n.name, "op": n.op, "macs": n.macs,
                      "share": n.macs / stats.macs if stats.macs else 0.0} for n in known[:top]],
        "metadata": {k: _shorten(v) for k, v in sorted(model.metadata.items())},
    }


def _shorten(text: str, limit: int = 120) -> str:
    """Metadata values can be whole vocabularies (PP-OCR rec keeps its character list there)."""
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"
