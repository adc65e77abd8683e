"""quant records, per layer it leaves in float, why (the report's per-layer table shows it)."""
import graphc
from graphc.calib.data import open_data
from graphc.passmanager import PassManager
from support import MODELS


def test_layers_left_float_are_named_with_their_reason():
    model = graphc.load(MODELS / "resnet_digits.onnx")
    data = open_data(MODELS / "digits_calib.npz", model).take(8)
    record = PassManager("fold-bn,quant{exclude=/fc/*}", data=data).run(model).records[-1]
    floats = {d["node"]: d for d in record.details if d.get("precision") == "float"}
    assert floats["/fc/Gemm"]["reason"] == "Gemm excluded by pattern"
    assert floats["/fc/Gemm"]["op"] == "Gemm"
    quantized = {n.name for n in model.graph.nodes if n.op == "Conv"
                 and n.inputs[1].inputs and n.inputs[1].inputs[0].op == "DequantizeLinear"}
    assert quantized and not quantized & set(floats)  # a quantized layer is never listed as float
