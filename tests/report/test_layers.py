"""The per-layer table: channels kept, ranks, precision and why, notes and per-layer error."""
from __future__ import annotations

import graphc
from graphc.report.layers import detail_text, layer_table, out_channels
from tiny_nets import conv_net


def rows_by_node(rows):
    return {r["node"]: r for r in rows}


def test_layers_of_the_shared_build(html_build):
    _, outcome = html_build
    rows = rows_by_node(outcome.report["layers"])
    assert list(rows) == ["c1", "c2", "fc"]
    c1, c2, fc = rows["c1"], rows["c2"], rows["fc"]
    assert (c1["status"], c1["channels"], c1["channels_after"]) == ("pruned", 4, 3)
    assert c1["weight_shape"] == [4, 3, 3, 3] and c1["weight_shape_after"] == [3, 3, 3, 3]
    assert c1["notes"] == ["test-prune: kept=3, of=4"] and c1["sqnr_db"] is None  # its output changed shape
    assert (c2["status"], c2["channels_after"], c2["weight_shape_after"]) == ("kept", 6, [6, 3, 3, 3])
    assert isinstance(c2["sqnr_db"], float) and 0 < c2["sqnr_db"] < 60 and fc["sqnr_db"] >= c2["sqnr_db"] - 10
    assert (fc["precision"], fc["activations"], fc["reason"]) == ("float32", "float", None)


def test_quantized_layers_and_the_ones_left_in_float():
    original = graphc.load(conv_net().SerializeToString())
    result = graphc.load(conv_net(qdq=True).SerializeToString())
    rows = rows_by_node(layer_table(original, result, [], {}))
    assert (rows["c1"]["precision"], rows["c1"]["activations"], rows["c1"]["reason"]) == ("int8", "quantized", None)
    assert rows["c2"]["precision"] == "float32" and rows["c2"]["reason"] == "no reason recorded by the quantizing pass"
    passes = [{"name": "quant", "details": [{"node": "Conv 'c2'", "reason": "excluded by pattern"}]}]
    rows = rows_by_node(layer_table(original, result, passes, {}))
    assert rows["c2"]["reason"] == "quant: excluded by pattern" and rows["c2"]["notes"] == []  # not repeated


def test_details_name_layers_by_name_or_label_and_folds_attach_to_their_target():
    model = graphc.load(conv_net().SerializeToString())
    result = graphc.load(conv_net().SerializeToString())
    result.graph.nodes = [n for n in result.graph.nodes if n.name != "fc"]
    passes = [
        {"name": "fold-bn", "details": [{"rule": "conv_bn", "node": "bn7", "into": "c2"}]},
        {"name": "factorize", "details": [{"node": "Gemm 'fc'", "ranks": [2], "full_ranks": [5],
                                           "rule": "rank=0.4"}]},
    ]
    rows = rows_by_node(layer_table(model, result, passes, {"c1": {"sqnr_db": 42.0, "cosine": 0.99}}))
    assert rows["c2"]["notes"] == ["fold-bn: absorbed conv_bn 'bn7'"] and rows["c2"]["status"] == "kept"
    assert rows["fc"]["status"] == "factorized" and rows["fc"]["rank"] == {"ranks": [2], "full": [5]}
    assert rows["fc"]["notes"] == ["factorize: ranks [2] of [5] (rank=0.4)"]
    assert rows["c1"]["sqnr_db"] == 42.0 and rows["c1"]["status"] == "kept"


def test_out_channels_per_op():
    import onnx_graphsurgeon as gs

    assert out_channels(gs.Node("Conv"), (8, 3, 3, 3)) == 8
    assert out_channels(gs.Node("ConvTranspose", attrs={"group": 2}), (4, 3, 2, 2)) == 6
    assert out_channels(gs.Node("Gemm", attrs={"transB": 1}), (10, 4)) == 10
    assert out_channels(gs.Node("Gemm"), (4, 10)) == 10
    assert out_channels(gs.Node("MatMul"), (2, 4, 7)) == 7


def test_detail_text_falls_back_to_short_key_values():
    assert detail_text({"node": "x", "reason": "bias is not constant"}) == "bias is not constant"
    assert detail_text({"node": "x", "a": 1, "b": "two", "c": [1], "d": 2.5}) == "a=1, b=two, d=2.5"
    assert detail_text({"node": "x"}) == "changed"


def test_sparsity_and_codebooks_are_read_from_the_result():
    from graphc.passmanager import PassManager
    from graphc.report.plots import report_plots, size_accuracy_png, sparsity_png

    original = graphc.load(conv_net().SerializeToString())
    result = graphc.load(conv_net().SerializeToString())
    PassManager("sparsify{sparsity=0.5 ignore=fc},cluster{bits=2 ignore=c2}").run(result)
    rows = rows_by_node(layer_table(original, result, [], {}))
    c1, c2, fc = rows["c1"], rows["c2"], rows["fc"]
    assert c1["sparsity"] == 0.5 and c1["codebook"] == 4 and c1["precision"] == "uint8 index"
    assert c1["weight_shape_after"] == c1["weight_shape"] and c1["status"] == "kept"
    assert c2["sparsity"] == 0.5 and c2["codebook"] is None and c2["precision"] == "float32"
    assert fc["sparsity"] == 0.0 and fc["codebook"] == 4
    assert [p.name for p in report_plots({"layers": list(rows.values())})] == ["sparsity"]
    assert sparsity_png([dict(r, sparsity=0.0) for r in rows.values()]) is None
    assert size_accuracy_png({"a": [(2.0, 99.0), (10.0, 98.0)]}, reference=99.1).startswith(b"\x89PNG")
