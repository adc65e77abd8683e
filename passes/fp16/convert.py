"""The compute-mode rewrite: planned nodes compute in the half type, Casts only at region borders.

For a planned node ``n`` with signature positions ``P`` (:mod:`graphc.passes.fp16.signature`):

- a constant read at a position of ``P`` is stored in the half type, ``w16 = round_half(w)``
  (in place when every reader converts, else one half copy shared by the converted readers);
- a float32 tensor computed outside the region and read at a position of ``P`` gets one
  ``Cast(to=half)`` shared by all converted readers. A Cast pair cancels: when the tensor is itself
  ``Cast(to=float)`` of a half tensor, the readers read that half tensor (``half(float(x)) = x``
  exactly for half ``x``);
- the outputs at ``P`` become half tensors (names kept). A reader outside the region gets one
  ``Cast(to=float)`` per tensor, shared by all such readers; a graph output keeps its name and
  float32 type behind that Cast (the half tensor is renamed). ``Cast``, ``Shape`` and ``Size``
  readers read the half tensor directly: ``float(x)`` is exact for half ``x``, so their results do
  not change (a boundary Cast fused into an existing one).

What changes numerically is each converted node's arithmetic and the rounding of its inputs and
constants to the half type (relative error ``2^-11`` for float16, ``2^-8`` for bfloat16).
"""
from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from graphc.ir import NameFactory, is_graph_output, is_standard_op, producer
from graphc.passes.fp16.plan import HalfType, Plan
from graphc.passes.fp16.signature import FloatSignature

#: ONNX element-type numbers of the Cast ``to`` attribute.
ONNX_FLOAT, ONNX_FLOAT16, ONNX_BFLOAT16 = 1, 10, 16
#: readers whose result is the same for a half input and its exact float32 widening.
WIDTH_AGNOSTIC_READERS = ("Cast", "Shape", "Size")


def cast_to(half: HalfType) -> int:
    return ONNX_FLOAT16 if half.name == "float16" else ONNX_BFLOAT16


def signature_positions(node: gs.Node, sig: FloatSignature) -> tuple[list[int], list[int]]:
    return sig.input_positions(len(node.inputs)), sig.output_positions(len(node.outputs))


class HalfRewriter:
    """Rewrites one graph after a :class:`Plan`; counts what it wrote in ``stats``."""

    def __init__(self, graph: gs.Graph, plan: Plan, half: HalfType):
        self.graph, self.plan, self.half = graph, plan, half
        self.names = NameFactory(graph)
        self.stats: dict[str, int] = {}
        self._to_half: dict[int, gs.Tensor] = {}
        self._half_constants: dict[int, gs.Constant] = {}

    def _count(self, key: str, n: int = 1) -> None:
        self.stats[key] = self.stats.get(key, 0) + n

    def rewrite(self) -> None:
        nodes = self.plan.nodes()
        for node, sig in nodes:
            ins, _ = signature_positions(node, sig)
            for i in ins:
                self._narrow_input(node, i)
        for node, sig in nodes:
            _, outs = signature_positions(node, sig)
            for i in outs:
                node.outputs[i].dtype = self.half.dtype
        for node, sig in nodes:
            _, outs = signature_positions(node, sig)
            for i in outs:
                self._widen_readers(node.outputs[i])
        self._count("converted_nodes", len(nodes))

    # -- into the region --------------------------------------------------------------------

    def _narrow_input(self, node: gs.Node, i: int) -> None:
        t = node.inputs[i]
        if isinstance(t, gs.Constant):
            node.inputs[i] = self._half_constant(t)
        elif t.name and not self._computed_in_region(t):
            node.inputs[i] = self._cast_to_half(t)

    def _computed_in_region(self, t: gs.Tensor) -> bool:
        src = producer(t)
        if src is None or src not in self.plan:
            return False
        _, outs = signature_positions(src, self.plan.half[id(src)][1])
        return any(src.outputs[i] is t for i in outs)

    def _half_constant(self, c: gs.Constant) -> gs.Constant:
        if id(c) in self._half_constants:
            return self._half_constants[id(c)]
        values = np.asarray(c.values).astype(self.half.dtype)
        if self._only_converted_readers(c):
            c.values = values                     # every reader converts: same name, half type
            new = c
        else:
            new = gs.Constant(self.names(f"{c.name}.{self.half.name}"), values)
        self._half_constants[id(c)] = new
        self._count("half_constants")
        return new

    def _only_converted_readers(self, c: gs.Constant) -> bool:
        if is_graph_output(self.graph, c):
            return False
        for reader in c.outputs:
            if reader not in self.plan:
                return False
            ins, _ = signature_positions(reader, self.plan.half[id(reader)][1])
            if any(t is c and j not in ins for j, t in enumerate(reader.inputs)):
                return False
        return True

    def _cast_to_half(self, t: gs.Tensor) -> gs.Tensor:
        if id(t) in self._to_half:
            return self._to_half[id(t)]
        src = producer(t)
        if (src is not None and is_standard_op(src, "Cast") and src.attrs.get("to") == ONNX_FLOAT
                and src.inputs[0].dtype == self.half.dtype):
            narrow = src.inputs[0]                # half -> float -> half: the pair cancels
            self._count("cancelled_cast_pairs")
        else:
            narrow = gs.Variable(self.names(f"{t.name}.{self.half.name}"), dtype=self.half.dtype, shape=t.shape)
            self.graph.nodes.append(gs.Node("Cast", self.names(f"{t.name}.to_{self.half.name}"),
                                            attrs={"to": cast_to(self.half)}, inputs=[t], outputs=[narrow]))
            self._count("casts_to_half")
        self._to_half[id(t)] = narrow
        return narrow

    # -- out of the region ------------------------------------------------------------------

    def _widen_readers(self, t: gs.Variable) -> None:
        outside = [(reader, j) for reader in list(t.outputs) for j, x in enumerate(reader.inputs)
                   if x is t and not self._reads_half(reader, j)]
        output = is_graph_output(self.graph, t)
        if not outside and not output:
            return
        if output:
            name = t.name
            t.name = self.names(f"{name}.{self.half.name}")
            wide = gs.Variable(name, dtype=np.float32, shape=t.shape)
            self.graph.outputs = [wide if o is t else o for o in self.graph.outputs]
        else:
            wide = gs.Variable(self.names(f"{t.name}.float"), dtype=np.float32, shape=t.shape)
        self.graph.nodes.append(gs.Node("Cast", self.names(f"{t.name}.to_float"), attrs={"to": ONNX_FLOAT},
                                        inputs=[t], outputs=[wide]))
        self._count("casts_to_float")
        for reader, j in outside:
            reader.inputs[j] = wide

    def _reads_half(self, reader: gs.Node, j: int) -> bool:
        if reader in self.plan:
            ins, _ = signature_positions(reader, self.plan.half[id(reader)][1])
            return j in ins
        return is_standard_op(reader, *WIDTH_AGNOSTIC_READERS)


def emulate_rounding(graph: gs.Graph, plan: Plan, half: HalfType) -> None:
    """Rewrite ``graph`` (float32) to compute what the planned nodes compute in half precision on
    hardware with half-precision storage and float32 accumulation (GPU tensor cores, ARM fp16):
    every constant the planned nodes read at converted positions is rounded to the half type
    (``float(half(w))``), and every tensor they write is rounded after the node
    (``Cast(Cast(t, half), float)``, the rounded tensor keeping the name). Graph inputs entering
    the region are rounded too. The result stays float32 throughout, so onnxruntime's CPU
    provider, which runs most float16 nodes in float32 between Casts it inserts (and then drops the
    Casts between neighbours), cannot hide the rounding: this is the model the error measurement
    runs (with graph optimizations off, so the Cast pairs stay).
    """
    names = NameFactory(graph)
    rounded: dict[int, gs.Tensor] = {}

    def round_tensor(t: gs.Tensor, keep_name: bool) -> gs.Tensor:
        mid = gs.Variable(names(f"{t.name}.{half.name}"), dtype=half.dtype, shape=t.shape)
        out = gs.Variable(names(f"{t.name}.rounded"), dtype=np.float32, shape=t.shape)
        graph.nodes.append(gs.Node("Cast", names(f"{t.name}.to_{half.name}"), attrs={"to": cast_to(half)},
                                   inputs=[t], outputs=[mid]))
        graph.nodes.append(gs.Node("Cast", names(f"{t.name}.to_float"), attrs={"to": ONNX_FLOAT},
                                   inputs=[mid], outputs=[out]))
        if keep_name:  # readers and graph outputs see the rounded value under the original name
            for reader in [r for r in t.outputs if r.outputs[0] is not mid]:
                for j, x in enumerate(reader.inputs):
                    if x is t:
                        reader.inputs[j] = out
            graph.outputs = [out if o is t else o for o in graph.outputs]
            name = t.name
            t.name = names(f"{name}.exact")
            out.name = name
        return out

    for node, sig in plan.nodes():
        ins, outs = signature_positions(node, sig)
        for i in ins:
            t = node.inputs[i]
            if isinstance(t, gs.Constant):
                values = np.asarray(t.values)
                if values.dtype == np.float32:
                    node.inputs[i] = gs.Constant(names(f"{t.name}.rounded"), values.astype(half.dtype).astype(np.float32))
            elif t.name and producer(t) is None and id(t) not in rounded:
                rounded[id(t)] = round_tensor(t, keep_name=False)  # a graph input entering the region
            if id(t) in rounded:
                node.inputs[i] = rounded[id(t)]
        for i in outs:
            round_tensor(node.outputs[i], keep_name=True)
