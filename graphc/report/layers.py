"""Per layer, what happened: the report's layer table, as data.

A layer is a Conv, ConvTranspose, Gemm or MatMul of the input model whose weight is a constant,
in the top graph or inside an If/Loop/Scan body (then named by its path, ``If_0/then_branch/conv``).
It is found again in the result by that name; its row holds:

- ``channels`` / ``channels_after``: output channels (Conv: W[0]; ConvTranspose: W[1] * group;
  Gemm: N of B, by transB; MatMul: B[-1]); ``status`` is ``pruned`` when they drop,
  ``factorized`` when a pass recorded ranks for it, ``removed`` when it is gone, else ``kept``;
- ``precision`` / ``activations``: the weight's stored type (``int8`` behind a DequantizeLinear)
  and whether its data input comes through a DequantizeLinear (``quantized``) or not (``float``);
  ``reason`` says why a layer stayed in float when a pass recorded one;
- ``rank`` and ``notes``: from the passes' ``details`` records that name the layer (see
  docs/writing-a-pass.md: a record with ``node`` (name or ``Op 'name'`` label) is attached to that
  layer; ``into`` attaches a fold to the layer it was folded into; ``ranks``/``full_ranks`` give the
  rank chosen; ``reason`` explains what was not done);
- ``sparsity``: the share of zeros in its weight in the result (sparsify, prune's masks), read
  through a codebook decode; ``codebook``: the number of shared values when the weight is
  ``Gather(codebook, Cast(indices))`` (cluster), whose precision then reads ``uint8 index`` (or
  ``4-bit index``, packed two to a byte: :mod:`graphc.ir.codebook`);
- ``sqnr_db`` / ``cosine``: the error of its output against the input model
  (:func:`graphc.verify.layers.layer_errors`), when measured.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx_graphsurgeon as gs

from graphc.ir.codebook import read_codebook
from graphc.ir.model import Model
from graphc.ir.subgraphs import named_nodes
from graphc.ir.usedef import is_standard_op, producer
from graphc.verify.layers import WEIGHTED_OPS

_LABEL = re.compile(r"^\w+ '(.*)'$")


def layer_table(original: Model, result: Model, passes: list[dict[str, Any]],
                errors: dict[str, dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """One row per weighted layer of ``original`` (see the module docstring), in graph order."""
    after = {name: n for name, n in named_nodes(result.graph) if n.name}
    notes = _notes_by_layer(passes)
    quantized = any(is_standard_op(n, "DequantizeLinear") for _, n in named_nodes(result.graph))
    rows = []
    for name, node in named_nodes(original.graph):  # layers inside If/Loop bodies by path
        weight = _weight(node)
        if weight is None or not node.name:
            continue
        row = _row(node, weight, after.get(name), notes.get(name, {}), quantized)
        row["node"] = name
        metrics = (errors or {}).get(name)
        row["sqnr_db"] = metrics["sqnr_db"] if metrics else None
        row["cosine"] = metrics["cosine"] if metrics else None
        rows.append(row)
    return rows


def _row(node: gs.Node, weight: _Weight, new: gs.Node | None, found: dict[str, Any],
         quantized: bool) -> dict[str, Any]:
    new_weight = _weight(new) if new is not None and new.op == node.op else None
    channels = out_channels(node, weight.shape)
    channels_after = out_channels(new, new_weight.shape) if new_weight is not None else None
    precision = new_weight.stored if new_weight is not None else None
    row = {
        "node": node.name, "op": node.op,
        "status": _status(channels, channels_after, new, found),
        "weight_shape": list(weight.shape),
        "weight_shape_after": list(new_weight.shape) if new_weight is not None else None,
        "channels": channels, "channels_after": channels_after,
        "rank": found.get("rank"),
        "precision": precision,
        "activations": _activations(new) if new_weight is not None else None,
        "reason": found.get("reason"),
        "notes": found.get("notes", []),
    }
    values = _weight_values(new) if new_weight is not None else None
    row["sparsity"] = float(np.mean(values == 0)) if values is not None and values.size else None
    book = read_codebook(new.inputs[1]) if new_weight is not None else None
    row["codebook"] = int(book[0].size) if book is not None else None
    if quantized and precision is not None and precision.startswith("float") and row["reason"] is None:
        row["reason"] = "no reason recorded by the quantizing pass"
    return row


def _status(channels: int | None, after: int | None, new: gs.Node | None, found: dict[str, Any]) -> str:
    if found.get("rank") is not None:
        return "factorized"
    if new is None:
        return "removed"
    if channels is not None and after is not None and after < channels:
        return "pruned"
    return "kept"


@dataclass(frozen=True)
class _Weight:
    shape: tuple[int, ...]
    stored: str  # numpy dtype name of what the file holds: float32, int8, uint8...


def _weight(node: gs.Node | None) -> _Weight | None:
    """The constant weight of a weighted layer, seen through a DequantizeLinear (holding an integer
    constant, or fed by a QuantizeLinear of a float constant: the weight is then stored as the
    QuantizeLinear's zero-point type, uint8 by default)."""
    if node is None or not is_standard_op(node, *WEIGHTED_OPS) or len(node.inputs) < 2:
        return None
    tensor = node.inputs[1]
    book = read_codebook(tensor)
    if book is not None:
        return _Weight(tuple(book.indices.shape), "4-bit index" if book.packed else "uint8 index")
    dequant = producer(tensor)
    if dequant is None or not is_standard_op(dequant, "DequantizeLinear"):
        return _Weight(tuple(tensor.shape), _dtype(tensor)) if isinstance(tensor, gs.Constant) else None
    stored = dequant.inputs[0]
    if isinstance(stored, gs.Constant):
        return _Weight(tuple(stored.shape), _dtype(stored))
    quant = producer(stored)
    if quant is None or not is_standard_op(quant, "QuantizeLinear") or not isinstance(quant.inputs[0], gs.Constant):
        return None
    zero_point = quant.inputs[2] if len(quant.inputs) > 2 else None
    return _Weight(tuple(quant.inputs[0].shape), _dtype(zero_point) if zero_point is not None else "uint8")


def _weight_values(node: gs.Node) -> np.ndarray | None:
    """The float weight the layer computes with: a constant, or a decoded codebook."""
    tensor = node.inputs[1]
    if isinstance(tensor, gs.Constant):
        return np.asarray(tensor.values)
    book = read_codebook(tensor)
    return None if book is None else book[0][book[1].astype(np.int64)]


def _dtype(tensor: gs.Tensor) -> str:
    return np.dtype(tensor.dtype).name if tensor.dtype is not None else "?"


def out_channels(node: gs.Node, shape: tuple[int, ...]) -> int | None:
    """Output channels of a weighted layer from its weight shape (see the module docstring)."""
    if not shape:
        return None
    if node.op == "Conv":
        return int(shape[0])
    if node.op == "ConvTranspose":
        return int(shape[1]) * int(node.attrs.get("group", 1)) if len(shape) > 1 else None
    if node.op == "Gemm":
        return int(shape[0] if node.attrs.get("transB", 0) else shape[-1])
    return int(shape[-1])


def _activations(node: gs.Node) -> str:
    source = producer(node.inputs[0]) if node.inputs else None
    return "quantized" if source is not None and is_standard_op(source, "DequantizeLinear") else "float"


def _notes_by_layer(passes: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """``{layer name: {"notes": [...], "rank": ..., "reason": ...}}`` from the passes' details."""
    found: dict[str, dict[str, Any]] = {}
    for record in passes:
        for detail in record.get("details") or []:
            if not isinstance(detail, dict):
                continue
            target = _name(detail.get("into") or detail.get("node"))
            if target is None:
                continue
            entry = found.setdefault(target, {"notes": []})
            if "ranks" in detail:
                entry["rank"] = {"ranks": detail["ranks"], "full": detail.get("full_ranks")}
            if detail.get("reason") and "into" not in detail:
                entry["reason"] = f"{record['name']}: {detail['reason']}"
                continue  # shown as the reason, not repeated as a note
            entry["notes"].append(f"{record['name']}: {detail_text(detail)}")
    return found


def _name(value: Any) -> str | None:
    if not isinstance(value, str) or not value:
        return None
    match = _LABEL.match(value)
    return match.group(1) if match else value


def detail_text(detail: dict[str, Any]) -> str:
    """A short line for one details record."""
    if "into" in detail:
        return f"absorbed {detail.get('rule', 'node')} '{_name(detail.get('node'))}'"
    if "ranks" in detail:
        full = detail.get("full_ranks")
        text = f"ranks {detail['ranks']}" + (f" of {full}" if full else "")
        return text + (f" ({detail['rule']})" if detail.get("rule") else "")
    if detail.get("reason"):
        return str(detail["reason"])
    parts = [f"{k}={v}" for k, v in detail.items() if k != "node" and isinstance(v, (str, int, float, bool))]
    return ", ".join(parts[:4]) or "changed"


