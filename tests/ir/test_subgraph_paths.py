"""Nodes inside If/Loop/Scan bodies are named by their path (``If_0/then_branch/conv``) wherever
graphc shows them: MAC listings (inspect --top), fold-bn's details, skip logs, the report's layer
table. And given input shapes reach the nodes inside bodies, whose exporter-declared
``[N, 1, 512]`` no longer shadows what inference derives (the VAD's branch Convs get MACs)."""
import logging
from pathlib import Path

import graphc
from graphc.cli import main
from graphc.ir import infer_shapes, named_nodes, node_label, path_name, walk_graphs
from graphc.passmanager import PassManager
from graphc.report.layers import layer_table
from graphc.stats import model_stats

CORPUS = Path(__file__).resolve().parents[1] / "models" / "corpus"
VAD = CORPUS / "spox_vad_if.onnx"
LOOP = CORPUS / "spox_loop.onnx"


def test_path_names_of_nodes_in_bodies():
    model = graphc.load(VAD)
    names = dict(named_nodes(model.graph))
    assert names["If_0"].op == "If" and names["Equal_0"].op == "Equal"
    conv = names["If_0/then_branch/then_16k.conv0"]
    assert conv.op == "Conv" and conv.name == "then_16k.conv0"
    assert node_label(conv, "If_0/then_branch") == "Conv 'If_0/then_branch/then_16k.conv0'"
    assert node_label(conv) == "Conv 'then_16k.conv0'"
    loop = dict(named_nodes(graphc.load(LOOP).graph))
    assert loop["rnn/body/body.xw"].op == "MatMul"
    assert sum(1 for _ in named_nodes(model.graph)) == sum(len(g.nodes) for _, g in walk_graphs(model.graph))


def test_mac_listing_names_branch_convs_by_path_and_counts_them_at_given_shapes():
    model = graphc.load(VAD)
    stats = model_stats(model, {"audio": (1, 512), "sr": ()})
    macs = {n.name: n.macs for n in stats.per_node}
    # then branch: 512 samples -> conv0 (stride 4) 128 -> conv1 (stride 2) 64, 32 x 16 x 3 kernel
    assert macs["If_0/then_branch/then_16k.conv1"] == 64 * 32 * 16 * 3
    assert macs["If_0/else_branch/else_8k.conv1"] == 128 * 32 * 16 * 3
    assert len(macs) == 8 and None not in macs.values()
    shapes = infer_shapes(model, {"audio": (1, 512), "sr": ()})
    assert shapes["then_16k.frames"].shape == (1, 1, 512)  # the branch declares [N, 1, 512]


def test_inspect_top_shows_paths(capsys):
    code = main(["inspect", str(VAD), "--input-shape", "audio:1x512", "--top", "2"])
    out = capsys.readouterr().out
    assert code == 0
    assert "If_0/else_branch/else_8k.conv1" in out and "MACs unknown" not in out


def test_fold_bn_details_and_report_rows_name_branch_layers_by_path(caplog):
    original = graphc.load(VAD)
    model = graphc.load(VAD)
    record = PassManager("fold-bn").run(model).records[0]
    into = {d["node"]: d["into"] for d in record.details}
    assert into["If_0/then_branch/then_16k.conv0.bn"] == "If_0/then_branch/then_16k.conv0"
    assert len(into) == 6 and all(k.startswith("If_0/") for k in into)
    rows = {r["node"]: r for r in layer_table(original, model, [{"name": "fold-bn", "details": record.details}])}
    assert len(rows) == 8
    row = rows["If_0/else_branch/else_8k.conv2"]
    assert row["status"] == "kept" and row["notes"] == ["fold-bn: absorbed conv_bn 'If_0/else_branch/else_8k.conv2.bn'"]


def test_canonicalize_logs_skips_inside_bodies_by_path(caplog):
    model = graphc.load(LOOP)
    with caplog.at_level(logging.INFO, logger="graphc.passes.canonicalize"):
        PassManager("canonicalize").run(model)
    inside = [r.getMessage() for r in caplog.records if "left alone" in r.getMessage() and "'rnn/body/" in r.getMessage()]
    outside = [r.getMessage() for r in caplog.records if "left alone" in r.getMessage() and "'body." in r.getMessage()]
    assert inside and not outside


def test_path_name_of_unnamed_body_node_uses_its_op():
    model = graphc.load(VAD)
    path, body = next((p, g) for p, g in walk_graphs(model.graph) if p)
    node = body.nodes[0]
    node.name = ""
    assert path_name(path, node) == f"{path}/{node.op}"
    assert path_name("", node) == ""
