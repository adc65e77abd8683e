"""Compressed size: Huffman bits on hand-computable streams, each tensor encoding on tensors whose
coded size is worked out by hand, and the model-level figures."""
import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import graphc
from graphc.ir.compressed_size import compressed_size, huffman_bits, tensor_code
from support import make_model


@pytest.mark.parametrize("counts, bits", [
    ((1, 1, 2), 6),                     # merges 1+1=2, 2+2=4: lengths 2, 2, 1
    ((5,), 5),                          # one symbol: one bit each
    ((1, 1, 1, 1), 8),                  # four equal: 2 bits each
    ((45, 13, 12, 16, 9, 5), 224),      # CLRS's example: a:0 b:101 c:100 d:111 e:1101 f:1100
    ((0, 3, 0), 3),                     # zero counts are not symbols
    ((), 0),
    ((1,) * 10, 34),                    # ten equal: six 3-bit and four 4-bit codes
])
def test_huffman_bits(counts, bits):
    assert huffman_bits(counts) == bits


def test_random_floats_are_coded_dense():
    values = np.random.default_rng(0).standard_normal(1000).astype(np.float32)
    code = tensor_code(values)
    assert (code.encoding, code.bytes, code.raw_bytes) == ("dense", 4000, 4000)


def test_few_distinct_values_are_coded_by_a_codebook():
    codes = np.array([7] * 500 + [1] * 250 + [2] * 250, dtype=np.uint8)
    # Huffman: 500 x 1 bit + 500 x 2 bits = 1500 bits = 188 bytes; table 3 x (1 + 1) bytes
    assert tensor_code(codes) == type(tensor_code(codes))("codebook", 188 + 6, 1000)


def test_sparse_positions_are_coded_as_gaps():
    values = np.zeros(1000, dtype=np.float32)
    values[99::100] = np.arange(1, 11, dtype=np.float32) * 0.37
    code = tensor_code(values)
    # gaps are all 99: one symbol, 10 bits -> 2 bytes + one 5-byte table entry; the ten distinct
    # nonzeros cost 34 bits + 10 x 5 bytes as a codebook, more than 40 bytes dense
    assert (code.encoding, code.bytes) == ("sparse", 2 + 5 + 40)


def test_clustered_sparse_values_use_both():
    rng = np.random.default_rng(1)
    values = np.where(rng.random(4096) < 0.5, 0.0, rng.choice([-0.5, 0.25, 0.75], 4096)).astype(np.float32)
    code = tensor_code(values)
    assert code.encoding in ("codebook", "sparse+codebook")
    # at most 4 symbols: under 2 bits a weight plus small tables, far below 4 bytes a weight
    assert code.bytes < 4096 * 2 / 8 + 64


def _model(weight):
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, weight.shape[0]])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, weight.shape[1]])],
                              [numpy_helper.from_array(weight, "W")])
    return graphc.load(make_model(graph))


def test_model_sizes_count_structure_and_weights():
    dense = np.random.default_rng(0).standard_normal((64, 64)).astype(np.float32)
    size = compressed_size(_model(dense))
    assert size.weight_bytes == 64 * 64 * 4
    assert size.entropy_coded_bytes == size.file_bytes  # nothing to code better than raw
    assert size.zlib_bytes is not None and size.lzma_bytes is not None
    sparse = dense * (np.abs(dense) > 1.0)
    small = compressed_size(_model(sparse))
    assert small.file_bytes == size.file_bytes  # stored dense: the file does not shrink
    assert small.zlib_bytes < 0.6 * size.zlib_bytes
    assert small.entropy_coded_bytes < 0.6 * size.entropy_coded_bytes
    assert small.encodings == {"sparse": 1}
    assert small.entropy_coded_bytes == small.file_bytes - small.weight_bytes + small.weight_coded_bytes


def _two_layer_model(rng) -> graphc.Model:
    """A large weight (streamed by save) and a small one (kept in the proto), float and int8."""
    big = rng.standard_normal((64, 300)).astype(np.float32)
    small = rng.standard_normal((300, 3)).astype(np.float32)
    codes = rng.integers(-8, 8, (3, 3)).astype(np.int8)
    nodes = [helper.make_node("MatMul", ["x", "A"], ["h"]), helper.make_node("MatMul", ["h", "B"], ["y0"]),
             helper.make_node("Cast", ["C"], ["c"], to=TensorProto.FLOAT),
             helper.make_node("MatMul", ["y0", "c"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])],
                              [numpy_helper.from_array(big, "A"), numpy_helper.from_array(small, "B"),
                               numpy_helper.from_array(codes, "C")])
    return graphc.load(make_model(graph))


def test_file_bytes_are_counted_exactly_without_serializing(monkeypatch):
    import graphc.ir.compressed_size as cs
    from graphc.ir.model import model_bytes

    model = _two_layer_model(np.random.default_rng(1))
    serialized = len(model_bytes(model))
    assert compressed_size(model).file_bytes == serialized
    # a model above the general coders' limit is never serialized (protobuf refuses > 2 GiB)
    monkeypatch.setattr(cs, "GENERAL_CODER_LIMIT", serialized - 1)
    monkeypatch.setattr(cs, "model_bytes", lambda m: pytest.fail("serialized a large model"))
    large = compressed_size(model)
    assert large.file_bytes == serialized
    assert large.zlib_bytes is None and large.lzma_bytes is None
    assert large.entropy_coded_bytes == large.file_bytes - large.weight_bytes + large.weight_coded_bytes


def test_many_distinct_values_after_the_checked_prefix_are_still_counted():
    rng = np.random.default_rng(2)
    head = rng.choice(np.arange(1, 11, dtype=np.float32), 4096)  # a codebook so far (no zeros)
    tail = rng.standard_normal(4096).astype(np.float32)         # ...then thousands of distinct values
    assert tensor_code(np.concatenate([head, tail])).encoding == "dense"
    assert tensor_code(np.concatenate([head, head])).encoding == "codebook"
