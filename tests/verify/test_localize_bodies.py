"""Localization inside If branches (graphc/verify/branches.py): a corrupted weight inside a branch
of the corpus VAD (If(sr == 16000), samples taking both ways) is named by its path, whichever
branch it is in; a corrupted weight read inside a Loop body is named by its path (more in
test_localize_loops.py); the branch views run the same outputs as the original on the samples they were made for."""
from pathlib import Path

import numpy as np
import pytest

import graphc
from graphc.cli import main
from graphc.ir import walk_graphs
from graphc.verify import compare_models
from graphc.verify.branches import taken_branch_views
from support import run

CORPUS = Path(__file__).resolve().parents[1] / "models" / "corpus"
VAD, VAD_DATA = CORPUS / "spox_vad_if.onnx", CORPUS / "spox_vad_if.npz"
LOOP, LOOP_DATA = CORPUS / "spox_loop.onnx", CORPUS / "spox_loop.npz"


def corrupted(src: Path, tmp_path: Path, node_name: str, factor: float = 1.05) -> Path:
    """``src`` with the weight of the node ``node_name`` (in any body) scaled by ``factor``."""
    model = graphc.load(src)
    (node,) = [n for _, g in walk_graphs(model.graph) for n in g.nodes if n.name == node_name]
    node.inputs[1].values = node.inputs[1].values * np.float32(factor)
    return graphc.save(model, tmp_path / "bad.onnx")


@pytest.mark.parametrize("branch,conv", [("then_branch", "then_16k.conv1"), ("else_branch", "else_8k.conv2")])
def test_corrupted_branch_weight_is_localized_by_path(tmp_path, branch, conv):
    bad = corrupted(VAD, tmp_path, conv)
    report = compare_models(VAD, bad, data=VAD_DATA, samples=None, localize=True)
    assert not report.passed
    found = report.localization
    assert found.tensor == f"{conv}.out"
    assert found.candidate_node == found.reference_node == f"Conv 'If_0/{branch}/{conv}'"
    assert found.note == ""


def test_cli_verify_localize_names_the_path(tmp_path, capsys):
    bad = corrupted(VAD, tmp_path, "then_16k.conv0")
    code = main(["verify", str(VAD), str(bad), "--data", str(VAD_DATA), "--localize"])
    out = capsys.readouterr().out
    assert code == 1, out
    assert "candidate node: Conv 'If_0/then_branch/then_16k.conv0'" in out


def test_corrupted_weight_read_in_a_loop_body_is_named_by_path(tmp_path):
    model = graphc.load(LOOP)
    weight = next(t for _, g in walk_graphs(model.graph) for t in g.tensors().values() if t.name == "rnn.W")
    weight.values = weight.values * np.float32(1.05)
    bad = graphc.save(model, tmp_path / "bad.onnx")
    found = compare_models(LOOP, bad, data=LOOP_DATA, samples=None, localize=True).localization
    assert found.candidate_node == found.reference_node == "MatMul 'rnn/body/body.xw'"
    assert "inside the body of rnn: first diverges in iteration 0" in found.note
    assert found.note in found.summary()


def test_branch_views_compute_the_original_outputs_on_their_samples(tmp_path):
    model = graphc.load(VAD)
    with np.load(VAD_DATA) as data:
        feeds = [{"audio": data["audio"][i], "sr": np.asarray(data["sr"][i])} for i in range(len(data["sr"]))]
    views = list(taken_branch_views(model, model, feeds))
    assert sorted(len(samples) for *_, samples, _ in views) == sorted(
        [sum(int(f["sr"]) == 16000 for f in feeds), sum(int(f["sr"]) != 16000 for f in feeds)])
    for ref_view, cand_view, samples, inlined in views:
        assert inlined == 1 and not any(n.op == "If" for n in ref_view.graph.nodes)
        assert [n.name for n in ref_view.graph.nodes] == [n.name for n in cand_view.graph.nodes]
        path = graphc.save(ref_view, tmp_path / f"view{len(samples)}.onnx")
        for feed in samples:
            np.testing.assert_array_equal(run(path, feed)[0], run(VAD, feed)[0])
    assert any(n.op == "If" for n in model.graph.nodes)  # the input model is untouched

