"""Model-local functions are inlined at load, so passes see their bodies as ordinary nodes.

Exporters write local functions (``torch.onnx.export(export_modules_as_functions=...)``, the
dynamo exporter at opset 18+, onnxscript): a node of a custom domain whose ``op_type`` names a
``FunctionProto`` of the model. A pass that only looked at graph nodes would see one opaque node
and leave the Conv+BatchNormalization inside it unfolded and unquantized.

The design: ``load`` inlines every call (``onnx.inliner.inline_local_functions``, recursively, in
subgraphs too), the same transformation onnxruntime applies before it runs a model, so the
computed function is unchanged and the model's interface (inputs, outputs, their names) is kept;
what the result loses is the grouping into functions, which no runtime needs. The alternative,
rewriting inside a function's body when every call site agrees on the rewrite (same constant
weights, same shapes), would keep the grouping but needs per-call-site agreement for every pass;
weights reach function bodies as call arguments, so almost every rewrite would have to check it.

Inlined nodes are named by their path, ``<call node>/<body node>`` (``/layers.0/EncoderLayer/
MatMul_4``), as nodes inside If/Loop bodies are, so stats, skip reasons and localization name the
function's node and the call it came from; a name that would collide keeps the inliner's unique
name (``MatMul_4__1``). Load says what it did in one warning line.

When a function body imports another version of the default opset than the model, the inliner
converts the body to the model's version (as onnxruntime's function inlining does).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import onnx
import onnx.inliner

from graphc.errors import ModelError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class InlinedFunctions:
    """What inlining did: the functions (``domain.name``) and how many calls were inlined."""

    functions: tuple[str, ...]
    calls: int

    def log(self) -> None:
        if self.calls:
            log.warning("input: %d call(s) of local function(s) %s inlined (onnxruntime inlines them too; "
                        "the result has no local functions)", self.calls,
                        ", ".join(f"'{f}'" for f in self.functions))


def inline_functions(proto: onnx.ModelProto) -> tuple[onnx.ModelProto, InlinedFunctions]:
    """``proto`` with every local function call inlined (a new proto; ``proto`` is unchanged)."""
    if not proto.functions:
        return proto, InlinedFunctions((), 0)
    local = {(f.domain, f.name): f for f in proto.functions}
    calls = _count_calls(proto.graph, local)
    default = {i.domain or "": i.version for i in proto.opset_import}.get("")
    convert = any(i.version != default for f in proto.functions for i in f.opset_import if not i.domain)
    try:
        inlined = onnx.inliner.inline_local_functions(proto, convert_version=convert)
    except Exception as exc:  # the inliner's C++ errors surface as several exception types
        raise ModelError(f"cannot inline the model's local functions: {type(exc).__name__}: "
                         f"{str(exc).strip().splitlines()[0] if str(exc).strip() else ''}") from None
    _name_by_path(proto.graph, inlined.graph, local)
    names = tuple(sorted({f"{d}.{n}" if d else n for (d, n) in local if calls.get((d, n))}))
    return inlined, InlinedFunctions(names, sum(calls.values()))


def _bodies(node: onnx.NodeProto) -> list[onnx.GraphProto]:
    return [g for a in node.attribute
            for g in ([a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs))]


def _count_calls(graph: onnx.GraphProto, local: dict) -> dict[tuple[str, str], int]:
    """Calls of each local function in ``graph`` and its bodies (not counting nested calls)."""
    counts: dict[tuple[str, str], int] = {}
    for node in graph.node:
        key = (node.domain, node.op_type)
        if key in local:
            counts[key] = counts.get(key, 0) + 1
        for body in _bodies(node):
            for k, v in _count_calls(body, local).items():
                counts[k] = counts.get(k, 0) + v
    return counts


def _expanded(nodes, local: dict, prefix: str) -> list[str | None]:
    """The path name of each node the inliner writes for ``nodes``, in its order (None: keep
    the inliner's name)."""
    names: list[str | None] = []
    for node in nodes:
        function = local.get((node.domain, node.op_type))
        if function is None:
            names.append(f"{prefix}{node.name}" if prefix and node.name else None if prefix else node.name)
            continue
        call = f"{prefix}{node.name}" if node.name else ""
        inner = _expanded(function.node, local, f"{call}/" if call else "")
        names.extend(inner if call else [None] * len(inner))
    return names


def _name_by_path(original: onnx.GraphProto, inlined: onnx.GraphProto, local: dict) -> None:
    """Rename the inlined nodes ``<call>/<body node>``; bodies of If/Loop/Scan likewise. Does
    nothing where the inliner's output does not line up with the expected expansion."""
    wanted = _expanded(original.node, local, "")
    if len(wanted) != len(inlined.node):
        return
    taken = {n.name for n in inlined.node}
    for node, name in zip(inlined.node, wanted):
        if name and name != node.name and name not in taken:
            taken.add(name)
            node.name = name
    before_nodes = [n for n in original.node if (n.domain, n.op_type) not in local and _bodies(n)]
    after_nodes = [n for n in inlined.node if _bodies(n)]
    if len(before_nodes) != len(after_nodes):
        return
    for before, after in zip(before_nodes, after_nodes):
        for body_before, body_after in zip(_bodies(before), _bodies(after)):
            _name_by_path(body_before, body_after, local)
