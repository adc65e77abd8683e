"""What a model is, as data: the body of ``graphc inspect`` and the before/after of a report.

Sizes count the file and its external data; ``zlib_bytes``, ``lzma_bytes`` and
``entropy_coded_bytes`` are the model's compressed sizes (:mod:`graphc.ir.compressed_size`: deflate,
xz, and the Deep Compression figure with Huffman-coded codes, indices and sparse positions); parameters and MACs come from
:func:`graphc.stats.model_stats` (MACs need static shapes: nodes whose shapes stay unknown are listed
under ``macs_unknown`` and their MACs are not in ``macs``; ``input_shapes`` fixes dynamic dims).
When no shapes are given, MACs follow the cost-shape policy of :mod:`graphc.stats` without data:
when the batch is the only dynamic dim of every input they are per sample (batch 1,
``macs_batch_1``: true), the number people compare models by; when other dims are dynamic they
are counted at the nominal shape (:mod:`graphc.calib.shapes`: batch 1, 224 for the other dynamic
dims of image-like inputs, 128 for sequences), said in ``macs_shape`` (else ``None``).
Nodes outside the default ONNX domain are counted per domain: graphc's passes leave them as they
are.
"""
from __future__ import annotations

import os
from collections import Counter
from pathlib import Path
from typing import Any

import onnx_graphsurgeon as gs

from graphc.ir.compressed_size import compressed_size
from graphc.ir.model import Model, file_size
from graphc.ir.usedef import STANDARD_DOMAINS
from graphc.calib.data import input_specs
from graphc.calib.shapes import ConcreteShapes, concrete_input_shapes
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
    nominal = None if input_shapes or batch_1 else nominal_shapes(model)
    stats = model_stats(model, input_shapes or batch_1 or (nominal.shapes if nominal else None))
    known = sorted((n for n in stats.per_node if n.macs), key=lambda n: -n.macs)
    custom = Counter(n.domain for n in graph.nodes if n.domain not in STANDARD_DOMAINS)
    packed = compressed_size(model)
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
        # what the model costs to ship (graphc.ir.compressed_size): deflate, xz, and Huffman-coded weights
        "zlib_bytes": packed.zlib_bytes,
        "lzma_bytes": packed.lzma_bytes,
        "entropy_coded_bytes": packed.entropy_coded_bytes,
        "weight_encodings": packed.encodings,
        "macs": stats.macs,
        "macs_batch_1": batch_1 is not None,
        "macs_shape": nominal.describe() if nominal else None,
        "mac_nodes": len(stats.per_node),
        "macs_unknown": stats.unknown_macs,
        "top_macs": [{"name": n.name, "op": n.op, "macs": n.macs,
                      "share": n.macs / stats.macs if stats.macs else 0.0} for n in known[:top]],
        "metadata": {k: _shorten(v) for k, v in sorted(model.metadata.items())},
    }


def nominal_shapes(model: Model) -> ConcreteShapes | None:
    """The passes' nominal shapes when some input dim is dynamic, else None (also None when an
    input's rank is unknown: no shape can be made up for it)."""
    if any(t.shape is None for t in model.graph.inputs if not isinstance(t, gs.Constant)):
        return None
    chosen = concrete_input_shapes(input_specs(model))
    return chosen if chosen.origin else None


def _shorten(text: str, limit: int = 120) -> str:
    """Metadata values can be whole vocabularies (PP-OCR rec keeps its character list there)."""
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"
