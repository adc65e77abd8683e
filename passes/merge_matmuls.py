"""merge-matmuls: MatMuls that read one activation with constant weights (attention's query, key
and value projections) become one MatMul over the concatenated weight, with their bias Adds,
followed by a Split (:mod:`graphc.rewrite.sibling_matmuls` states the maths: exact up to float
rounding of the wider product, rtol 1e-5).

``quant{activations=dynamic}`` runs the same rewrite on the siblings it quantizes, before
quantizing them (``merge-siblings``, default true: one activation quantization and one integer
kernel instead of one per sibling); this pass offers it alone, in float.
"""
from __future__ import annotations

import onnx_graphsurgeon as gs

from graphc.passmanager import Context, Pass, PassResult, register_pass
from graphc.rewrite.sibling_matmuls import merge_sibling_matmuls


@register_pass
class MergeMatMuls(Pass):
    name = "merge-matmuls"
    summary = "merge MatMuls that share an input and have constant weights into one MatMul + Split"
    exact = True

    def run(self, graph: gs.Graph, ctx: Context) -> PassResult:
        result = PassResult(modified=False)
        merged = merge_sibling_matmuls(graph, ctx.opset, result)
        result.modified = bool(merged)
        return result
