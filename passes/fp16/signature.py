"""Which inputs and outputs of an op carry its floating-point element type, from the ONNX schemas.

A node converts to half precision by changing the type of one type parameter: the one of its first
output (``T`` of Conv, ``T1`` of Resize). The inputs and outputs bound to that parameter change
with it; every other input keeps its type (Resize's ``scales`` stay float32, its ``sizes`` int64;
MaxPool's ``Indices`` stay int64). The op converts only when the schema at the model's opset
allows the half type for that parameter.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import onnx.defs


@dataclass(frozen=True)
class FloatSignature:
    """Positions of the inputs and outputs bound to the type parameter of output 0."""

    param: str
    inputs: tuple[int, ...]          # formal input positions (the last one repeats when variadic)
    variadic_input: bool
    outputs: tuple[int, ...]
    variadic_output: bool

    def input_positions(self, count: int) -> list[int]:
        return _actual(self.inputs, self.variadic_input, count)

    def output_positions(self, count: int) -> list[int]:
        return _actual(self.outputs, self.variadic_output, count)


def _actual(formal: tuple[int, ...], variadic_last: bool, count: int) -> list[int]:
    positions = [i for i in formal if i < count]
    if variadic_last and formal:
        positions += list(range(max(formal) + 1, count))
    return positions


@lru_cache(maxsize=None)
def float_signature(op: str, opset: int, half: str) -> FloatSignature | None:
    """The signature of ``op`` at ``opset`` if its output-0 type parameter admits ``half``
    (``"tensor(float16)"`` or ``"tensor(bfloat16)"``), else None (unknown op, no such type)."""
    try:
        schema = onnx.defs.get_schema(op, opset, "")
    except onnx.defs.SchemaError:
        return None
    if not schema.outputs:
        return None
    param = schema.outputs[0].type_str
    allowed = {t for c in schema.type_constraints if c.type_param_str == param for t in c.allowed_type_strs}
    if half not in allowed or "tensor(float)" not in allowed:
        return None
    variadic = onnx.defs.OpSchema.FormalParameterOption.Variadic
    ins = tuple(i for i, p in enumerate(schema.inputs) if p.type_str == param)
    outs = tuple(i for i, p in enumerate(schema.outputs) if p.type_str == param)
    return FloatSignature(
        param=param, inputs=ins,
        variadic_input=bool(schema.inputs) and schema.inputs[-1].option == variadic
        and len(schema.inputs) - 1 in ins,
        outputs=outs,
        variadic_output=schema.outputs[-1].option == variadic and len(schema.outputs) - 1 in outs)
