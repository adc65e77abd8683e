"""Generate the hostile-input corpus in ``tests/data/bad/`` (small files, committed).

Usage::

    python tests/data/make_bad.py [--out tests/data/bad]

Everything is seeded: running the script again gives byte-identical files
(``tests/robustness/test_corpus.py`` checks that the committed corpus matches the script).

``MANIFEST`` says what graphc must do with each file:

- ``expect="reject"``: loading fails with a :class:`graphc.errors.GraphcError` whose message
  matches ``error``; every CLI command exits 2 with one line ``graphc: error: ...``, writes no
  output file and leaves the input bytes unchanged.
- ``expect="accept"``: a valid but odd model. It loads, ``inspect`` works, every registered pass
  either handles it or skips it, and the result passes the full ONNX checker. ``runs`` says whether
  onnxruntime can execute it (then outputs before and after the exact passes must agree and
  ``verify f f`` exits 0; otherwise ``verify`` exits 2). ``keep`` lists ops that no pass may
  remove or change (nodes carrying subgraphs, ops of unknown domains). ``skip_run`` marks files
  that must never be executed (they would allocate terabytes). ``repaired`` marks files that
  fail ``onnx.checker`` only by their shape declarations (onnxruntime runs them): graphc repairs
  the declarations at load and its results pass the checker.
"""
from __future__ import annotations

import argparse
import struct
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

HERE = Path(__file__).resolve().parent
OUT = HERE / "bad"

F = TensorProto.FLOAT


def _entry(file, expect, why, *, error=None, runs=True, keep=(), skip_run=False, extra=(), repaired=False):
    return {"file": file, "expect": expect, "why": why, "error": error, "runs": runs,
            "keep": tuple(keep), "skip_run": skip_run, "extra": tuple(extra), "repaired": repaired}


MANIFEST = [
    # -- not ONNX at all ----------------------------------------------------------------------
    _entry("empty.onnx", "reject", "zero-byte file", error="empty file"),
    _entry("garbage.onnx", "reject", "4 KiB of seeded random bytes", error="not an ONNX model"),
    _entry("text.onnx", "reject", "a text file renamed .onnx", error="not an ONNX model"),
    _entry("png_magic.onnx", "reject", "PNG signature and chunk header (wrong magic)",
           error="not an ONNX model"),
    _entry("zip_magic.onnx", "reject", "zip local header, what a PyTorch .pt file starts with",
           error="not an ONNX model"),
    _entry("tensor_proto.onnx", "reject", "a valid protobuf of the wrong message (TensorProto)",
           error="not an ONNX model"),
    _entry("no_graph.onnx", "reject", "ModelProto with opset_import but no graph",
           error="not an ONNX model"),
    _entry("no_opset.onnx", "reject", "ModelProto with a graph but no opset_import",
           error="not an ONNX model"),
    _entry("truncated_header.onnx", "reject", "first 16 bytes of a valid model",
           error="not an ONNX model"),
    _entry("truncated_half.onnx", "reject", "valid model cut in the middle of a weight",
           error="not an ONNX model"),
    _entry("truncated_last_byte.onnx", "reject", "valid model minus its last byte",
           error="not an ONNX model"),
    # -- ONNX, but the graph is broken ---------------------------------------------------------
    _entry("empty_graph.onnx", "reject", "a graph with no nodes", error="empty graph"),
    _entry("cycle.onnx", "reject", "two Relu nodes feeding each other", error="cycle"),
    _entry("dangling_input.onnx", "reject", "a node reads a tensor nothing produces",
           error="nothing produces"),
    _entry("output_not_produced.onnx", "reject", "a graph output nothing produces",
           error="not produced"),
    _entry("duplicate_output_name.onnx", "reject", "two nodes write the same tensor name",
           error="produced twice"),
    _entry("duplicate_initializer.onnx", "reject",
           "two initializers with the same name and different values", error="defined twice"),
    _entry("input_is_node_output.onnx", "reject", "a node writes a graph input's name",
           error="graph input"),
    _entry("missing_attr_cast.onnx", "reject", "Cast without its required 'to'",
           error="Required attribute 'to'"),
    _entry("missing_attr_concat.onnx", "reject", "Concat without its required 'axis'",
           error="Required attribute 'axis'"),
    _entry("wrong_attr_type.onnx", "reject", "Conv kernel_shape given as a float",
           error="Mismatched attribute type"),
    _entry("unknown_op.onnx", "reject", "an op that does not exist in the default domain",
           error="NoSuchOp"),
    _entry("too_many_inputs.onnx", "reject", "Relu with two inputs", error="input size 2"),
    _entry("init_raw_short.onnx", "reject", "Conv weight raw_data 4 bytes shorter than its dims",
           error="bytes of data"),
    _entry("init_raw_long.onnx", "reject", "Conv weight raw_data 4 bytes longer than its dims",
           error="bytes of data"),
    _entry("init_float_data_count.onnx", "reject", "Conv bias float_data with 3 values for dims [4]",
           error="values, but dims"),
    _entry("init_negative_dim.onnx", "reject", "initializer with a negative dimension",
           error="negative dimension"),
    _entry("init_undefined_dtype.onnx", "reject", "initializer with data_type UNDEFINED",
           error="data type 0"),
    _entry("init_unknown_dtype.onnx", "reject", "initializer with data_type 999", error="data type 999"),
    _entry("init_huge_dims.onnx", "reject", "dims 2^31 x 2^31 with 4 bytes of data (allocation bomb)",
           error="bytes of data"),
    _entry("init_is_node_output.onnx", "reject", "an initializer named like the Conv's output (not SSA)",
           error="both an initializer and the output"),
    _entry("big_init_is_node_output.onnx", "reject",
           "the same with a 4 KiB initializer (streamed by load, kept out of the proto)",
           error="both an initializer and the output"),
    _entry("big_raw_short.onnx", "reject", "1.7 KiB Conv weight whose raw_data is 4 bytes short",
           error="bytes of data"),
    _entry("big_negative_dims.onnx", "reject",
           "1.7 KiB Conv weight with dims [-16, -27]: the product matches the data size",
           error="negative dimension"),
    _entry("invalid_utf8_name.onnx", "reject", "a tensor name that is not UTF-8 (protobuf hands it over as bytes)",
           error="not valid UTF-8"),
    _entry("invalid_utf8_producer.onnx", "reject", "producer_name that is not UTF-8", error="not valid UTF-8"),
    _entry("opset_future.onnx", "reject", "default-domain opset 99, newer than any ONNX release",
           error="opset 99 is outside"),
    _entry("newline_in_name.onnx", "reject",
           "dangling input whose name holds newlines and a fake traceback (message must stay one line)",
           error="nothing produces"),
    _entry("deep_nesting.onnx", "reject", "If nodes nested 200 deep (recursion bomb)",
           error="not an ONNX model"),
    _entry("string_not_utf8.onnx", "reject", "a string initializer holding bytes that are not UTF-8",
           error="string element 1 is not valid UTF-8"),
    _entry("big_corrupt_nested.onnx", "reject",
           "1.7 KiB Conv weight whose nested 'segment' message is corrupt (framing intact)",
           error="initializer 'w' is corrupt"),
    _entry("conv_group_indivisible.onnx", "reject", "Conv group 2 over an input of 3 channels",
           error="group 2 does not divide the 3 channels"),
    _entry("conv_group_negative.onnx", "reject", "Conv group -1", error="group -1 is not a positive"),
    _entry("conv_group_weight.onnx", "reject", "Conv group 3 with a weight of 4 output channels",
           error="group 3 does not divide the 4 output channels"),
    _entry("no_outputs.onnx", "reject", "a graph with nodes but no outputs", error="no outputs"),
    # -- external data that must be refused ----------------------------------------------------
    _entry("ext_absolute.onnx", "reject", "external data location '/etc/passwd'", error="refused"),
    _entry("ext_dotdot.onnx", "reject", "external data location '../outside.bin'", error="refused"),
    _entry("ext_dotdot_inner.onnx", "reject", "external data location 'sub/../../x.bin'",
           error="refused"),
    _entry("ext_empty_location.onnx", "reject", "external data with an empty location", error="refused"),
    _entry("ext_missing.onnx", "reject", "external data file not there", error="missing"),
    _entry("ext_short.onnx", "reject", "external data file shorter than offset+length",
           error="shorter", extra=("ext_short.onnx.data",)),
    _entry("ext_bad_offset.onnx", "reject", "external data offset 'abc' (not a number)",
           error="offset", extra=("ext_bad_offset.onnx.data",)),
    _entry("ext_negative_offset.onnx", "reject", "external data offset -4",
           error="offset", extra=("ext_negative_offset.onnx.data",)),
    _entry("ext_nul_location.onnx", "reject", "external data location with a NUL byte",
           error="refused|missing"),
    # -- valid but odd: must load, and passes must handle or skip -----------------------------
    _entry("nan_weights.onnx", "accept", "NaN in the Conv weight, Inf in the BN variance"),
    _entry("zero_size.onnx", "accept", "a zero-size initializer concatenated with the input"),
    _entry("opset7.onnx", "accept", "IR 3 / opset 7 model, initializers also listed as inputs"),
    _entry("opset21.onnx", "accept", "opset 21 (IR 10)"),
    _entry("opset_latest.onnx", "accept", "the newest opset this ONNX knows"),
    _entry("unknown_domain.onnx", "accept", "an op of domain com.example between standard ops",
           runs=False, keep=("Foo",)),
    _entry("if_subgraph.onnx", "accept",
           "If whose branches hold Conv+BN and Identity and read outer tensors", keep=("If",)),
    _entry("loop_subgraph.onnx", "accept", "Loop whose body holds Identity and Add", keep=("Loop",)),
    _entry("scan_subgraph.onnx", "accept", "Scan whose body holds a running sum", keep=("Scan",)),
    _entry("output_is_input.onnx", "accept", "a graph input that is also a graph output"),
    _entry("hostile_names.onnx", "accept",
           "tensor names '../../etc/passwd', 'a/b\\\\c', unicode, spaces, ':'; empty node names"),
    _entry("duplicate_node_names.onnx", "accept",
           "two nodes named 'dup' (ONNX allows it; onnxruntime refuses to load it)", runs=False),
    _entry("big_weights.onnx", "accept",
           "16-channel Conv: weights over 1 KiB, which load streams from the file into numpy"),
    _entry("shape_mismatch.onnx", "accept",
           "Conv weight has 5 input channels, the input 3: the ONNX checker accepts it, onnxruntime "
           "fails at run time, graphc passes it through", runs=False),
    _entry("bn_params_are_inputs.onnx", "accept", "BatchNormalization whose scale is a graph input"),
    _entry("shared_conv_weight.onnx", "accept", "two Convs share one weight; only one has a BN"),
    _entry("conv_output_is_graph_output.onnx", "accept",
           "the Conv before a BN is also a graph output (folding would change it)"),
    _entry("constant_of_shape_bomb.onnx", "accept",
           "ConstantOfShape of 2^40 floats feeding a ReduceSum (folding must not allocate it)",
           skip_run=True),
    _entry("matmul_outer_product.onnx", "accept",
           "constant MatMul [40000,1]x[1,40000] from a Range (a 6.4 GB result; folding must not compute "
           "it: the old code peaked at 6.2 GB)", skip_run=True),
    _entry("ext_ok.onnx", "accept", "valid external data next to the model", extra=("ext_ok.onnx.data",)),
    _entry("scalar_input.onnx", "accept", "a 0-d (scalar) graph input scaling the Conv input"),
    _entry("input_with_default.onnx", "accept",
           "a graph input that also has an initializer (a default callers may override)"),
    _entry("int_div_by_zero.onnx", "accept",
           "integer Div of constants by a divisor holding 0 (onnxruntime refuses it; not folded)",
           runs=False, keep=("Div",)),
    _entry("shapeless_output_conv_bn.onnx", "accept",
           "Conv+BN whose graph output has no shape (as onnx-graphsurgeon writes)", repaired=True),
    _entry("shapeless_output_convtranspose_bn.onnx", "accept",
           "ConvTranspose+BN whose graph output has no shape", repaired=True),
    _entry("shapeless_output_gemm_bn.onnx", "accept", "Gemm+BN whose graph output has no shape",
           repaired=True),
    _entry("wrong_declared_shapes.onnx", "accept",
           "output declared [1, seqlen] (really [1, 4, 8, 8]); value-info of 0 dims for the Conv output",
           repaired=True),
]


# ---------------------------------------------------------------------------------------------
# helpers


def _vi(name, shape, elem=F):
    return helper.make_tensor_value_info(name, elem, shape)


def _model(nodes, inputs, outputs, inits=(), opset=13, ir=8, extra_opsets=()) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(inits))
    opsets = [helper.make_opsetid("", opset)] + [helper.make_opsetid(d, v) for d, v in extra_opsets]
    model = helper.make_model(graph, opset_imports=opsets, producer_name="make_bad")
    model.ir_version = ir
    return model


def _weights(rng, channels_in=3, channels_out=4):
    return {
        "w": rng.standard_normal((channels_out, channels_in, 3, 3)).astype(np.float32),
        "b": rng.standard_normal(channels_out).astype(np.float32),
        "scale": rng.uniform(0.5, 1.5, channels_out).astype(np.float32),
        "bias": rng.standard_normal(channels_out).astype(np.float32),
        "mean": rng.standard_normal(channels_out).astype(np.float32),
        "var": rng.uniform(0.5, 1.5, channels_out).astype(np.float32),
    }


def conv_bn_relu(seed=0, opset=13, ir=8, weights=None) -> onnx.ModelProto:
    """x[1,3,8,8] -> Conv(pads 1) -> BatchNormalization -> Relu -> y[1,4,8,8]: the base model."""
    w = weights or _weights(np.random.default_rng(seed))
    inits = [numpy_helper.from_array(v, k) for k, v in w.items()]
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv", pads=[1, 1, 1, 1],
                         kernel_shape=[3, 3]),
        helper.make_node("BatchNormalization", ["c", "scale", "bias", "mean", "var"], ["n"], name="bn"),
        helper.make_node("Relu", ["n"], ["y"], name="relu"),
    ]
    return _model(nodes, [_vi("x", [1, 3, 8, 8])], [_vi("y", [1, 4, 8, 8])], inits, opset, ir)


def big_conv_bn_relu(seed=0) -> onnx.ModelProto:
    """The base model with 16 output channels: a 1728-byte Conv weight (load streams weights of
    1 KiB and more from the file straight into numpy, a different code path)."""
    m = conv_bn_relu(weights=_weights(np.random.default_rng(seed), channels_out=16))
    m.graph.output[0].type.tensor_type.shape.dim[1].dim_value = 16
    return m


def _init(model: onnx.ModelProto, name: str) -> TensorProto:
    return next(t for t in model.graph.initializer if t.name == name)


def _relu_chain(first_inputs, second_inputs):
    nodes = [helper.make_node("Relu", first_inputs, ["a"], name="r1"),
             helper.make_node("Relu", second_inputs, ["b"], name="r2")]
    return _model(nodes, [_vi("x", [2])], [_vi("b", [2])])


def _with_external(model: onnx.ModelProto, info: dict[str, str]) -> onnx.ModelProto:
    """Mark the Conv weight as external data with the given location/offset/length entries."""
    tensor = _init(model, "w")
    tensor.ClearField("raw_data")
    tensor.data_location = TensorProto.EXTERNAL
    for key, value in info.items():
        tensor.external_data.add(key=key, value=value)
    return model


# ---------------------------------------------------------------------------------------------
# builders: file name -> bytes (or a dict of name -> bytes for files that come with data)


def build_all() -> dict[str, bytes]:
    files: dict[str, bytes] = {}
    rng = np.random.default_rng(1234)
    base = conv_bn_relu().SerializeToString()

    files["empty.onnx"] = b""
    files["garbage.onnx"] = rng.integers(0, 256, 4096, dtype=np.uint8).tobytes()
    files["text.onnx"] = b"This is not a model.\nIt is a text file with an .onnx name.\n"
    files["png_magic.onnx"] = b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR" + bytes(64)
    files["zip_magic.onnx"] = b"PK\x03\x04" + bytes(26) + b"archive/data.pkl" + bytes(64)
    files["tensor_proto.onnx"] = numpy_helper.from_array(np.arange(64, dtype=np.float32), "t").SerializeToString()
    no_graph = onnx.ModelProto(ir_version=8)
    no_graph.opset_import.append(helper.make_opsetid("", 13))
    files["no_graph.onnx"] = no_graph.SerializeToString()
    no_opset = conv_bn_relu()
    del no_opset.opset_import[:]
    files["no_opset.onnx"] = no_opset.SerializeToString()
    files["truncated_header.onnx"] = base[:16]
    files["truncated_half.onnx"] = base[: len(base) // 2]
    files["truncated_last_byte.onnx"] = base[:-1]

    files["empty_graph.onnx"] = _model([], [], []).SerializeToString()
    files["cycle.onnx"] = _relu_chain(["b"], ["a"]).SerializeToString()
    files["dangling_input.onnx"] = _relu_chain(["ghost"], ["a"]).SerializeToString()
    files["output_not_produced.onnx"] = _model(
        [helper.make_node("Relu", ["x"], ["a"], name="r1")], [_vi("x", [2])],
        [_vi("a", [2]), _vi("nowhere", [2])]).SerializeToString()
    files["duplicate_output_name.onnx"] = _model(
        [helper.make_node("Relu", ["x"], ["a"], name="r1"), helper.make_node("Neg", ["x"], ["a"], name="n1")],
        [_vi("x", [2])], [_vi("a", [2])]).SerializeToString()
    files["duplicate_initializer.onnx"] = _model(
        [helper.make_node("Add", ["x", "k"], ["y"], name="add")], [_vi("x", [2])], [_vi("y", [2])],
        [numpy_helper.from_array(np.ones(2, np.float32), "k"),
         numpy_helper.from_array(np.full(2, 7, np.float32), "k")]).SerializeToString()
    files["input_is_node_output.onnx"] = _model(
        [helper.make_node("Relu", ["x"], ["a"], name="r1"), helper.make_node("Neg", ["a"], ["x2"], name="n1"),
         helper.make_node("Abs", ["a"], ["z"], name="abs")],
        [_vi("x", [2]), _vi("z", [2])], [_vi("x2", [2])]).SerializeToString()
    files["missing_attr_cast.onnx"] = _model(
        [helper.make_node("Cast", ["x"], ["y"], name="cast")], [_vi("x", [2])], [_vi("y", [2])]).SerializeToString()
    files["missing_attr_concat.onnx"] = _model(
        [helper.make_node("Concat", ["x", "x"], ["y"], name="concat")], [_vi("x", [2])],
        [_vi("y", [4])]).SerializeToString()
    wrong_attr = conv_bn_relu()
    ks = next(a for a in wrong_attr.graph.node[0].attribute if a.name == "kernel_shape")
    ks.CopyFrom(helper.make_attribute("kernel_shape", 3.0))
    files["wrong_attr_type.onnx"] = wrong_attr.SerializeToString()
    files["unknown_op.onnx"] = _model(
        [helper.make_node("NoSuchOp", ["x"], ["y"], name="mystery")], [_vi("x", [2])],
        [_vi("y", [2])]).SerializeToString()
    files["too_many_inputs.onnx"] = _model(
        [helper.make_node("Relu", ["x", "x"], ["y"], name="relu")], [_vi("x", [2])],
        [_vi("y", [2])]).SerializeToString()

    m = conv_bn_relu()
    _init(m, "w").raw_data = _init(m, "w").raw_data[:-4]
    files["init_raw_short.onnx"] = m.SerializeToString()
    m = conv_bn_relu()
    _init(m, "w").raw_data = _init(m, "w").raw_data + b"\0\0\0\0"
    files["init_raw_long.onnx"] = m.SerializeToString()
    m = conv_bn_relu()
    bias = _init(m, "b")
    bias.ClearField("raw_data")
    bias.float_data.extend([0.5, 0.25, 0.125])
    files["init_float_data_count.onnx"] = m.SerializeToString()
    m = conv_bn_relu()
    del _init(m, "b").dims[:]
    _init(m, "b").dims.extend([-4])
    files["init_negative_dim.onnx"] = m.SerializeToString()
    m = conv_bn_relu()
    _init(m, "b").data_type = TensorProto.UNDEFINED
    files["init_undefined_dtype.onnx"] = m.SerializeToString()
    m = conv_bn_relu()
    _init(m, "b").data_type = 999
    files["init_unknown_dtype.onnx"] = m.SerializeToString()
    m = conv_bn_relu()
    big = _init(m, "b")
    del big.dims[:]
    big.dims.extend([2**31, 2**31])
    big.raw_data = b"\0\0\0\0"
    files["init_huge_dims.onnx"] = m.SerializeToString()
    weights = _weights(np.random.default_rng(0))
    weights["w"] = np.random.default_rng(5).standard_normal((4, 5, 3, 3)).astype(np.float32)
    files["shape_mismatch.onnx"] = conv_bn_relu(weights=weights).SerializeToString()
    m = conv_bn_relu()
    m.graph.initializer.append(numpy_helper.from_array(np.zeros((1, 4, 1, 1), np.float32), "c"))
    files["init_is_node_output.onnx"] = m.SerializeToString()
    m = big_conv_bn_relu()
    m.graph.initializer.append(numpy_helper.from_array(np.zeros((1, 16, 8, 8), np.float32), "c"))
    files["big_init_is_node_output.onnx"] = m.SerializeToString()
    m = big_conv_bn_relu()
    _init(m, "w").raw_data = _init(m, "w").raw_data[:-4]
    files["big_raw_short.onnx"] = m.SerializeToString()
    m = big_conv_bn_relu()
    del _init(m, "w").dims[:]
    _init(m, "w").dims.extend([-16, -27])
    files["big_negative_dims.onnx"] = m.SerializeToString()
    m = conv_bn_relu()
    m.graph.node[1].output[0] = "NNNN"
    m.graph.node[2].input[0] = "NNNN"
    files["invalid_utf8_name.onnx"] = m.SerializeToString().replace(b"NNNN", b"N\xa9NN")
    m = conv_bn_relu()
    m.producer_name = "PPPP"
    files["invalid_utf8_producer.onnx"] = m.SerializeToString().replace(b"PPPP", b"P\xf1\xf2P")
    files["opset_future.onnx"] = conv_bn_relu(opset=99, ir=10).SerializeToString()
    ghost = "ghost\nTraceback (most recent call last):\n  File \"x\", line 1\nKeyError: 'boom'"
    files["newline_in_name.onnx"] = _relu_chain([ghost], ["a"]).SerializeToString()
    files["deep_nesting.onnx"] = _deep_if(200)

    files.update(_external_files())

    files["nan_weights.onnx"] = _nan_weights().SerializeToString()
    files["zero_size.onnx"] = _zero_size().SerializeToString()
    files["opset7.onnx"] = _opset7().SerializeToString()
    files["opset21.onnx"] = conv_bn_relu(opset=21, ir=10).SerializeToString()
    latest = onnx.defs.onnx_opset_version()
    files["opset_latest.onnx"] = conv_bn_relu(opset=latest, ir=onnx.IR_VERSION).SerializeToString()
    files["unknown_domain.onnx"] = _unknown_domain().SerializeToString()
    files["if_subgraph.onnx"] = _if_subgraph().SerializeToString()
    files["loop_subgraph.onnx"] = _loop_subgraph().SerializeToString()
    files["scan_subgraph.onnx"] = _scan_subgraph().SerializeToString()
    files["output_is_input.onnx"] = _model(
        [helper.make_node("Relu", ["x"], ["y"], name="relu")], [_vi("x", [2])],
        [_vi("x", [2]), _vi("y", [2])]).SerializeToString()
    files["hostile_names.onnx"] = _hostile_names().SerializeToString()
    files["big_weights.onnx"] = big_conv_bn_relu().SerializeToString()
    files["duplicate_node_names.onnx"] = _hostile_names("dup").SerializeToString()
    files["bn_params_are_inputs.onnx"] = _bn_params_are_inputs().SerializeToString()
    files["shared_conv_weight.onnx"] = _shared_conv_weight().SerializeToString()
    files["conv_output_is_graph_output.onnx"] = _conv_output_is_graph_output().SerializeToString()
    files["constant_of_shape_bomb.onnx"] = _constant_of_shape_bomb().SerializeToString()
    files["matmul_outer_product.onnx"] = _matmul_outer_product().SerializeToString()
    files.update(_issue15_files())
    files.update(_declaration_files())
    return files


def _issue15_files() -> dict[str, bytes]:
    """Malformed-but-parseable inputs, and valid ones graphc used to change (issue 15)."""
    files = {}
    text = helper.make_tensor("text", TensorProto.STRING, [2], [b"ok", b"SSSS"])
    m = _model([helper.make_node("Identity", ["text"], ["t"], name="id"), helper.make_node("Relu", ["x"], ["y"], name="relu")],
               [_vi("x", [2])], [_vi("y", [2]), _vi("t", [2], TensorProto.STRING)], [text])
    files["string_not_utf8.onnx"] = m.SerializeToString().replace(b"SSSS", b"S\xff\xfeS")
    m = big_conv_bn_relu()
    _init(m, "w").segment.begin, _init(m, "w").segment.end = 123456, 654321
    segment = TensorProto.Segment(begin=123456, end=654321).SerializeToString()
    corrupt = b"\x08" + b"\xff" * (len(segment) - 1)  # a varint that never ends inside the field
    files["big_corrupt_nested.onnx"] = m.SerializeToString().replace(segment, corrupt)
    for name, group, out_channels in (("conv_group_indivisible", 2, 4), ("conv_group_negative", -1, 4),
                                      ("conv_group_weight", 3, 4)):
        w = np.random.default_rng(9).standard_normal((out_channels, 1, 3, 3)).astype(np.float32)
        m = _model([helper.make_node("Conv", ["x", "w"], ["c"], name="conv", group=group, pads=[1, 1, 1, 1]),
                    helper.make_node("Relu", ["c"], ["y"], name="relu")],
                   [_vi("x", [1, 3, 8, 8])], [_vi("y", [1, out_channels, 8, 8])], [numpy_helper.from_array(w, "w")])
        files[f"{name}.onnx"] = m.SerializeToString()
    files["no_outputs.onnx"] = _model([helper.make_node("Relu", ["x"], ["y"], name="relu")],
                                      [_vi("x", [2])], []).SerializeToString()
    w = np.random.default_rng(10).standard_normal((4, 3, 3, 3)).astype(np.float32)
    files["scalar_input.onnx"] = _model(
        [helper.make_node("Mul", ["x", "gain"], ["m"], name="gain"),
         helper.make_node("Conv", ["m", "w"], ["y"], name="conv", pads=[1, 1, 1, 1])],
        [_vi("x", [1, 3, 8, 8]), _vi("gain", [])], [_vi("y", [1, 4, 8, 8])],
        [numpy_helper.from_array(w, "w")]).SerializeToString()
    files["input_with_default.onnx"] = _model(
        [helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
         helper.make_node("Add", ["c", "offset"], ["y"], name="add")],
        [_vi("x", [1, 3, 8, 8]), _vi("offset", [1, 4, 1, 1])], [_vi("y", [1, 4, 8, 8])],
        [numpy_helper.from_array(w, "w"),
         numpy_helper.from_array(np.full((1, 4, 1, 1), 0.5, np.float32), "offset")]).SerializeToString()
    files["int_div_by_zero.onnx"] = _model(
        [helper.make_node("Div", ["num", "den"], ["q"], name="div"), helper.make_node("Add", ["x", "q"], ["y"], name="add")],
        [_vi("x", [2], TensorProto.INT64)], [_vi("y", [2], TensorProto.INT64)],
        [numpy_helper.from_array(np.array([4, 5], np.int64), "num"),
         numpy_helper.from_array(np.array([0, 1], np.int64), "den")]).SerializeToString()
    return files


def _bn_after(op: str, rng) -> onnx.ModelProto:
    """``op`` -> BatchNormalization, the graph output declared without a shape."""
    if op == "Gemm":
        node = helper.make_node("Gemm", ["x", "w"], ["c"], name="gemm", transB=1)
        x, w = _vi("x", [2, 6]), rng.standard_normal((4, 6)) / np.sqrt(6)
    else:  # weights at He-init scale, as trained layers have: outputs of order 1
        node = helper.make_node(op, ["x", "w"], ["c"], name=op.lower(), pads=[1, 1, 1, 1])
        x = _vi("x", [1, 3, 8, 8])
        w = rng.standard_normal((4, 3, 3, 3) if op == "Conv" else (3, 4, 3, 3)) * np.sqrt(2 / 27)
    bn = helper.make_node("BatchNormalization", ["c", "scale", "bias", "mean", "var"], ["y"], name="bn")
    params = {k: v for k, v in _weights(rng).items() if k not in ("w", "b")}
    inits = [numpy_helper.from_array(w.astype(np.float32), "w")] + [numpy_helper.from_array(v, k) for k, v in params.items()]
    return _model([node, bn], [x], [helper.make_tensor_value_info("y", F, None)], inits)


def _declaration_files() -> dict[str, bytes]:
    """Models whose only problem is what they declare about shapes (onnxruntime runs them)."""
    rng = np.random.default_rng(11)
    files = {f"shapeless_output_{op.lower()}_bn.onnx": _bn_after(op, rng).SerializeToString()
             for op in ("Conv", "ConvTranspose", "Gemm")}
    m = conv_bn_relu(seed=12)
    m.graph.output[0].CopyFrom(_vi("y", [1, "seqlen"]))
    m.graph.value_info.append(_vi("c", [0, 0, 8, 8]))
    files["wrong_declared_shapes.onnx"] = m.SerializeToString()
    return files


def _external_files() -> dict[str, bytes]:
    files = {}
    w_bytes = _init(conv_bn_relu(), "w").raw_data
    n = str(len(w_bytes))
    cases = {
        "ext_absolute.onnx": {"location": "/etc/passwd", "offset": "0", "length": "16"},
        "ext_dotdot.onnx": {"location": "../outside.bin", "length": n},
        "ext_dotdot_inner.onnx": {"location": "sub/../../x.bin", "length": n},
        "ext_empty_location.onnx": {"location": "", "length": n},
        "ext_missing.onnx": {"location": "ext_missing.onnx.data", "length": n},
        "ext_short.onnx": {"location": "ext_short.onnx.data", "length": n},
        "ext_bad_offset.onnx": {"location": "ext_bad_offset.onnx.data", "offset": "abc", "length": n},
        "ext_negative_offset.onnx": {"location": "ext_negative_offset.onnx.data", "offset": "-4",
                                     "length": n},
        "ext_nul_location.onnx": {"location": "ext\0ok.onnx.data", "length": n},
        "ext_ok.onnx": {"location": "ext_ok.onnx.data", "offset": "0", "length": n},
    }
    for name, info in cases.items():
        files[name] = _with_external(conv_bn_relu(), info).SerializeToString()
    files["ext_short.onnx.data"] = w_bytes[: len(w_bytes) // 2]
    files["ext_bad_offset.onnx.data"] = w_bytes
    files["ext_negative_offset.onnx.data"] = w_bytes
    files["ext_ok.onnx.data"] = w_bytes
    return files


def _field(number: int, payload: bytes) -> bytes:
    """Protobuf wire format of one length-delimited field."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _deep_if(depth: int) -> bytes:
    """If nodes nested ``depth`` deep, written by hand: protobuf refuses to build (or parse)
    messages nested deeper than 100, so the nesting is encoded at the wire level."""
    def leaf(i):
        return helper.make_graph([helper.make_node("Identity", ["x"], [f"e{i}"])], f"leaf{i}", [],
                                 [_vi(f"e{i}", [2])]).SerializeToString()

    def if_node(out: str, then_bytes: bytes, else_bytes: bytes) -> bytes:
        then_attr = _field(1, b"then_branch") + _field(6, then_bytes) + _varint(20 << 3) + _varint(5)
        else_attr = _field(1, b"else_branch") + _field(6, else_bytes) + _varint(20 << 3) + _varint(5)
        return (_field(1, b"cond") + _field(2, out.encode()) + _field(4, b"If")
                + _field(5, then_attr) + _field(5, else_attr))

    body = leaf(0)  # only the then-branch nests: the file grows linearly with depth
    for i in range(1, depth):
        out = f"o{i}"
        body = (_field(1, if_node(out, body, leaf(i))) + _field(2, f"level{i}".encode())
                + _field(12, _vi(out, [2]).SerializeToString()))
    model = _model([], [_vi("cond", [], TensorProto.BOOL), _vi("x", [2])], [_vi("y", [2])])
    # Concatenated occurrences of a message field merge: this appends the top node to the graph.
    return model.SerializeToString() + _field(7, _field(1, if_node("y", body, leaf(depth))))


def _nan_weights() -> onnx.ModelProto:
    w = _weights(np.random.default_rng(2))
    w["w"][0, 0, 1, 1] = np.nan
    w["var"][2] = np.inf
    return conv_bn_relu(weights=w)


def _zero_size() -> onnx.ModelProto:
    nodes = [helper.make_node("Concat", ["x", "empty"], ["c"], name="concat", axis=1),
             helper.make_node("Relu", ["c"], ["y"], name="relu")]
    empty = numpy_helper.from_array(np.zeros((1, 0, 4), np.float32), "empty")
    return _model(nodes, [_vi("x", [1, 3, 4])], [_vi("y", [1, 3, 4])], [empty])


def _opset7() -> onnx.ModelProto:
    m = conv_bn_relu(opset=7, ir=3)
    for t in m.graph.initializer:  # IR 3: every initializer is also a graph input
        m.graph.input.append(_vi(t.name, list(t.dims)))
    return m


def _unknown_domain() -> onnx.ModelProto:
    nodes = [helper.make_node("Relu", ["x"], ["a"], name="relu"),
             helper.make_node("Identity", ["a"], ["b"], name="id"),
             helper.make_node("Foo", ["b"], ["c"], name="foo", domain="com.example", alpha=0.5),
             helper.make_node("Neg", ["c"], ["y"], name="neg")]
    return _model(nodes, [_vi("x", [2])], [_vi("y", [2])], extra_opsets=[("com.example", 1)])


def _if_subgraph() -> onnx.ModelProto:
    w = _weights(np.random.default_rng(3))
    then_nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["tc"], name="then.conv", pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["tc", "scale", "bias", "mean", "var"], ["tn"], name="then.bn"),
        helper.make_node("Add", ["tn", "outer"], ["t_out"], name="then.add"),
    ]
    else_nodes = [
        helper.make_node("Identity", ["outer"], ["e_id"], name="else.id"),
        helper.make_node("Relu", ["e_id"], ["e_out"], name="else.relu"),
    ]
    then_g = helper.make_graph(then_nodes, "then", [], [_vi("t_out", [1, 4, 8, 8])],
                               [numpy_helper.from_array(v, k) for k, v in w.items()])
    else_g = helper.make_graph(else_nodes, "else", [], [_vi("e_out", [1, 4, 8, 8])])
    outer = [
        # 'outer' is read only inside the branches: cleanup must not delete its producer.
        helper.make_node("Conv", ["x", "w0"], ["outer"], name="outer.conv", pads=[1, 1, 1, 1]),
        helper.make_node("ReduceSum", ["x"], ["s"], name="sum", keepdims=0),
        helper.make_node("Greater", ["s", "zero"], ["cond"], name="cond"),
        helper.make_node("If", ["cond"], ["y"], name="if", then_branch=then_g, else_branch=else_g),
    ]
    inits = [numpy_helper.from_array(np.random.default_rng(4).standard_normal((4, 3, 3, 3)).astype(np.float32), "w0"),
             numpy_helper.from_array(np.array(0, np.float32), "zero")]
    return _model(outer, [_vi("x", [1, 3, 8, 8])], [_vi("y", [1, 4, 8, 8])], inits)


def _loop_subgraph() -> onnx.ModelProto:
    body_nodes = [
        helper.make_node("Identity", ["cond_in"], ["cond_out"], name="body.cond"),
        helper.make_node("Identity", ["acc_in"], ["acc_id"], name="body.id"),
        helper.make_node("Add", ["acc_id", "step"], ["acc_out"], name="body.add"),
    ]
    body = helper.make_graph(
        body_nodes, "body",
        [_vi("i", [], TensorProto.INT64), _vi("cond_in", [], TensorProto.BOOL), _vi("acc_in", [2])],
        [_vi("cond_out", [], TensorProto.BOOL), _vi("acc_out", [2])])
    nodes = [
        helper.make_node("Relu", ["x"], ["step"], name="step"),
        helper.make_node("Loop", ["trips", "keep_going", "x"], ["y"], name="loop", body=body),
    ]
    inits = [numpy_helper.from_array(np.array(3, np.int64), "trips"),
             numpy_helper.from_array(np.array(True), "keep_going")]
    return _model(nodes, [_vi("x", [2])], [_vi("y", [2])], inits)


def _scan_subgraph() -> onnx.ModelProto:
    body = helper.make_graph(
        [helper.make_node("Add", ["sum_in", "row"], ["sum_out"], name="body.add"),
         helper.make_node("Identity", ["sum_out"], ["scan_out"], name="body.id")],
        "body", [_vi("sum_in", [2]), _vi("row", [2])], [_vi("sum_out", [2]), _vi("scan_out", [2])])
    nodes = [helper.make_node("Scan", ["init", "x"], ["final", "y"], name="scan", body=body,
                              num_scan_inputs=1)]
    inits = [numpy_helper.from_array(np.zeros(2, np.float32), "init")]
    return _model(nodes, [_vi("x", [3, 2])], [_vi("final", [2]), _vi("y", [3, 2])], inits)


def _hostile_names(node_name: str = "") -> onnx.ModelProto:
    names = ["../../etc/passwd", "a/b\\c", "名前 with space", "x:0"]
    nodes = [
        helper.make_node("Relu", ["x"], [names[0]], name=node_name or "relu"),
        helper.make_node("Identity", [names[0]], [names[1]], name=node_name or "id"),
        helper.make_node("Add", [names[1], names[3]], [names[2]], name=""),
        helper.make_node("Neg", [names[2]], ["y"], name=""),
    ]
    inits = [numpy_helper.from_array(np.ones(2, np.float32), names[3])]
    return _model(nodes, [_vi("x", [2])], [_vi("y", [2])], inits)


def _bn_params_are_inputs() -> onnx.ModelProto:
    m = conv_bn_relu(seed=6)
    scale = _init(m, "scale")
    m.graph.input.append(_vi("scale", list(scale.dims)))
    m.graph.initializer.remove(scale)
    return m


def _shared_conv_weight() -> onnx.ModelProto:
    w = _weights(np.random.default_rng(7))
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c1", "scale", "bias", "mean", "var"], ["n1"], name="bn1"),
        helper.make_node("Conv", ["x", "w", "b"], ["c2"], name="conv2", pads=[1, 1, 1, 1], dilations=[1, 1]),
        helper.make_node("Add", ["n1", "c2"], ["y"], name="add"),
    ]
    inits = [numpy_helper.from_array(v, k) for k, v in w.items()]
    return _model(nodes, [_vi("x", [1, 3, 8, 8])], [_vi("y", [1, 4, 8, 8])], inits)


def _conv_output_is_graph_output() -> onnx.ModelProto:
    m = conv_bn_relu(seed=8)
    m.graph.output.append(_vi("c", [1, 4, 8, 8]))
    return m


def _constant_of_shape_bomb() -> onnx.ModelProto:
    nodes = [
        helper.make_node("ConstantOfShape", ["huge"], ["zeros"], name="bomb",
                         value=numpy_helper.from_array(np.array([1.0], np.float32))),
        helper.make_node("ReduceSum", ["zeros"], ["total"], name="sum", keepdims=0),
        helper.make_node("Add", ["x", "total"], ["y"], name="add"),
    ]
    inits = [numpy_helper.from_array(np.array([2**40], np.int64), "huge")]
    return _model(nodes, [_vi("x", [2])], [_vi("y", [2])], inits)


def _matmul_outer_product(n: int = 40000) -> onnx.ModelProto:
    """Range -> [n,1] and [1,n] -> MatMul: all constant, a few bytes of file, n*n floats of result."""
    nodes = [
        helper.make_node("Range", ["start", "limit", "delta"], ["r"], name="range"),
        helper.make_node("Unsqueeze", ["r", "axis1"], ["col"], name="col"),
        helper.make_node("Unsqueeze", ["r", "axis0"], ["row"], name="row"),
        helper.make_node("MatMul", ["col", "row"], ["outer"], name="outer"),
        helper.make_node("ReduceSum", ["outer"], ["total"], name="sum", keepdims=0),
        helper.make_node("Add", ["x", "total"], ["y"], name="add"),
    ]
    inits = [numpy_helper.from_array(np.array(v, np.float32), k)
             for k, v in (("start", 0.0), ("limit", float(n)), ("delta", 1.0))]
    inits += [numpy_helper.from_array(np.array([1], np.int64), "axis1"),
              numpy_helper.from_array(np.array([0], np.int64), "axis0")]
    return _model(nodes, [_vi("x", [2])], [_vi("y", [2])], inits)


# ---------------------------------------------------------------------------------------------


def write(out: Path = OUT) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, data in sorted(build_all().items()):
        path = out / name
        path.write_bytes(data)
        written.append(path)
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    written = write(args.out)
    total = sum(p.stat().st_size for p in written)
    print(f"wrote {len(written)} files ({total} bytes) to {args.out}")


if __name__ == "__main__":
    main()
