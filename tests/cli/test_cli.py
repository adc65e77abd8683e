"""The graphc command: every subcommand in-process through graphc.cli.main, plus the installed
console script in a subprocess, plus the Foundation "done when" on the PP-OCR models."""
from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

import graphc
from graphc.passmanager import Pass, PassResult, all_passes, register_pass
from graphc.passmanager import registry
from support import PPOCR_SHAPES, cli, ppocr_model, scale_middle_conv
from tiny_nets import conv_net, scaled

#: MACs of tiny_nets.conv_net at batch 1: c1, c2, fc.
CONV_NET_MACS = 4 * 64 * 3 * 9 + 6 * 64 * 4 * 9 + 6 * 5


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def net(tmp_path) -> Path:
    path = tmp_path / "net.onnx"
    path.write_bytes(conv_net().SerializeToString())
    return path


@pytest.fixture
def dynamic_net(tmp_path) -> Path:
    path = tmp_path / "dyn.onnx"
    path.write_bytes(conv_net(batch="N", spatial="S").SerializeToString())
    return path


@pytest.fixture
def scaling_pass():
    """A lossy test pass that scales the first Conv's weight by 1.5 (verification must fail)."""

    @register_pass
    class ScaleFirstConv(Pass):
        name = "test-scale-first-conv"
        summary = "test only"
        exact = False

        def run(self, graph, ctx):
            conv = next(n for n in graph.nodes if n.op == "Conv")
            conv.inputs[1].values = conv.inputs[1].values * np.float32(1.5)
            return PassResult(modified=True, stats={"scaled": 1})

    yield ScaleFirstConv.name
    registry._REGISTRY.pop(ScaleFirstConv.name, None)


# -- passes / inspect ------------------------------------------------------------------------------

def test_passes_lists_every_registered_pass(capsys):
    code, out, _ = cli(capsys, "passes")
    assert code == 0
    for cls in all_passes():
        assert f"{cls.name}  (" in out
    assert "keep-inputs: bool = false" in out and "max-elements: int = 1048576  [>= 1]" in out
    code, md, _ = cli(capsys, "passes", "--markdown")
    assert code == 0 and "## `cleanup`" in md and "| `keep-inputs` | bool | `false` |" in md
    code, js, _ = cli(capsys, "passes", "--json")
    catalog = json.loads(js)
    assert [p["name"] for p in catalog] == [c.name for c in all_passes()]
    fold = next(p for p in catalog if p["name"] == "fold-constants")
    assert fold["exact"] and fold["options"][0] == {
        "key": "max-elements", "type": "int", "default": "1048576", "min": 1, "max": None, "choices": None,
        "doc": "largest folded result, in elements"}


def test_inspect_static_model(capsys, net):
    code, out, err = cli(capsys, "inspect", net)
    assert code == 0 and err == ""
    assert "input  x: float32[1, 3, 8, 8]" in out and "output probs: float32[1, 5]" in out
    assert "opsets: ai.onnx 13" in out and "Conv 2" in out
    code, js, _ = cli(capsys, "inspect", net, "--json")
    summary = json.loads(js)
    assert summary["macs"] == CONV_NET_MACS and summary["macs_unknown"] == []
    assert summary["top_macs"][0]["name"] == "c2" and summary["nodes"] == 8
    assert summary["file_bytes"] == net.stat().st_size and summary["op_histogram"]["Relu"] == 2


def test_inspect_dynamic_model_counts_macs_at_the_nominal_shape(capsys, dynamic_net):
    """Dynamic batch and spatial dims: MACs at the passes' nominal shape (batch 1, 224x224), said
    in one line; the count is the conv net's, derived by hand (MACs per output element = C_in*k*k,
    times output elements; the Gemm 6x5), not read from graphc."""
    side = 224
    expected = 4 * 3 * 9 * side * side + 6 * 4 * 9 * side * side + 6 * 5
    code, out, _ = cli(capsys, "inspect", dynamic_net)
    assert code == 0
    assert "MACs at nominal shape x:1x3x224x224 (dims are dynamic; --input-shape to choose)" in out
    assert "MACs unknown" not in out
    code, js, _ = cli(capsys, "inspect", dynamic_net, "--json")
    summary = json.loads(js)
    assert summary["macs"] == expected and summary["macs_unknown"] == []
    assert summary["macs_shape"] == "x:1x3x224x224" and summary["macs_batch_1"] is False
    code, js, _ = cli(capsys, "inspect", dynamic_net, "--input-shape", "x:1x3x8x8", "--json")
    assert code == 0 and json.loads(js)["macs"] == CONV_NET_MACS and json.loads(js)["macs_shape"] is None


def test_inspect_ppocr_det_counts_macs_at_the_nominal_shape(capsys):
    """PP-OCR det (dynamic N, H, W) used to print "MACs unknown": now the count at 1x3x224x224,
    the same as asking for that shape, and the Conv MACs alone (from the ONNX graph with onnx's
    own shape inference, C_in/groups*kh*kw per output element) are most of it."""
    path = ppocr_model("det")
    if path is None:
        pytest.skip("PP-OCR det is not installed")
    code, out, _ = cli(capsys, "inspect", path)
    assert code == 0 and "MACs at nominal shape x:1x3x224x224" in out and "MACs unknown" not in out
    _, js, _ = cli(capsys, "inspect", path, "--json")
    _, given, _ = cli(capsys, "inspect", path, "--input-shape", "x:1x3x224x224", "--json")
    assert json.loads(js)["macs"] == json.loads(given)["macs"] > 0
    model = onnx.load(str(path))
    model.graph.input[0].type.tensor_type.shape.Clear()
    for d in (1, 3, 224, 224):
        model.graph.input[0].type.tensor_type.shape.dim.add().dim_value = d
    inferred = onnx.shape_inference.infer_shapes(model)
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim] for v in inferred.graph.value_info}
    weights = {t.name: list(t.dims) for t in model.graph.initializer}  # paddle2onnx: Constant nodes
    weights.update({n.output[0]: list(a.t.dims) for n in model.graph.node if n.op_type == "Constant"
                    for a in n.attribute if a.name == "value"})
    conv_macs = 0
    for node in model.graph.node:
        if node.op_type == "Conv":
            _, cin_per_group, kh, kw = weights[node.input[1]]
            conv_macs += int(np.prod(shapes[node.output[0]])) * cin_per_group * kh * kw
    assert 0.7 * json.loads(js)["macs"] <= conv_macs <= json.loads(js)["macs"]


def test_inspect_counts_macs_per_sample_when_only_the_batch_is_dynamic(capsys, tmp_path):
    path = tmp_path / "batch.onnx"
    path.write_bytes(conv_net(batch="N").SerializeToString())
    code, js, _ = cli(capsys, "inspect", path, "--json")
    summary = json.loads(js)
    assert code == 0 and summary["macs"] == CONV_NET_MACS and summary["macs_batch_1"] is True
    assert summary["macs_unknown"] == [] and summary["input_shapes"] == {}
    code, out, _ = cli(capsys, "inspect", path)
    assert "MACs are per sample (batch 1; the batch dim is dynamic)" in out
    code, js, _ = cli(capsys, "inspect", path, "--input-shape", "x:2x3x8x8", "--json")
    assert json.loads(js)["macs"] == 2 * CONV_NET_MACS and not json.loads(js)["macs_batch_1"]


def test_inspect_groups_lists_prunable_channels_and_writes_dot(capsys, net, tmp_path):
    dot = tmp_path / "groups.dot"
    code, out, err = cli(capsys, "inspect", net, "--groups", "--dot", dot)
    assert code == 0 and err == ""
    assert "input  x: float32[1, 3, 8, 8]" in out  # the summary comes first
    assert "Conv 'c1': output group 0, prunable" in out
    assert "Gemm 'fc': output group 3, blocked: Softmax 'probs' normalizes over the channel axis" in out
    assert out.rstrip().endswith(f"wrote {dot}") and dot.read_text().startswith("graph channels {")
    code, _, err = cli(capsys, "inspect", net, "--dot", dot)
    assert code == 2 and "--dot needs --groups" in err


# -- opt ---------------------------------------------------------------------------------------------

def test_opt_writes_a_valid_model_and_reports(capsys, tmp_path):
    src = tmp_path / "ids.onnx"
    src.write_bytes(conv_net(identities=True).SerializeToString())
    before = digest(src)
    out, report = tmp_path / "ids.opt.onnx", tmp_path / "report.json"
    code, text, err = cli(capsys, "opt", src, "-p", "cleanup,fold-constants", "-o", out, "--verify",
                          "--report", report)
    assert code == 0 and err == ""
    assert digest(src) == before
    onnx.checker.check_model(str(out), full_check=True)
    assert sum(1 for n in onnx.load(str(out)).graph.node if n.op_type == "Identity") == 0
    assert "identity_removed=2" in text and "verify: PASS" in text and f"wrote {out}" in text
    data = json.loads(report.read_text())
    assert data["schema"] == "graphc.report/2" and data["pipeline"] == "cleanup,fold-constants"
    assert [p["name"] for p in data["passes"]] == ["cleanup", "fold-constants"]
    assert data["before"]["nodes"] == 10 and data["after"]["nodes"] == 8 and data["passed"] is True
    assert data["verification"]["outputs"][0]["sqnr_db"] == "inf" and data["output_written"]
    md = tmp_path / "report.md"
    assert cli(capsys, "opt", src, "-p", "cleanup", "-o", out, "--report", md)[0] == 0
    assert "# graphc opt report" in md.read_text() and "| `cleanup` |" in md.read_text()


def test_opt_failed_verification_leaves_no_output(capsys, tmp_path, net, scaling_pass):
    outdir = tmp_path / "out"
    outdir.mkdir()
    code, text, err = cli(capsys, "opt", net, "-p", scaling_pass, "-o", outdir / "x.onnx", "--verify",
                          "--min-sqnr", "150", "--localize")
    assert code == 1 and err == ""
    assert list(outdir.iterdir()) == []
    assert "verify: FAIL" in text and "candidate node: Conv 'c1'" in text and "not written" in text
    code, _, _ = cli(capsys, "opt", net, "-p", scaling_pass, "-o", outdir / "x.onnx", "--verify",
                     "--min-sqnr", "150", "--keep-failed")
    assert code == 1 and (outdir / "x.onnx").is_file()


def test_opt_lossy_thresholds_accept_a_small_change(capsys, tmp_path, net, scaling_pass):
    code, text, _ = cli(capsys, "opt", net, "-p", scaling_pass, "-o", tmp_path / "x.onnx", "--verify",
                        "--min-cosine", "0.5", "--samples", "2")
    assert code == 0 and "mode: lossy" in text


def test_opt_verify_each_on_a_dynamic_model(capsys, tmp_path, dynamic_net):
    report = tmp_path / "r.json"
    code, _, err = cli(capsys, "opt", dynamic_net, "-p", "cleanup,fold-constants", "-o", tmp_path / "o.onnx",
                       "--verify-each", "--input-shape", "x:2x3x6x6", "--report", report, "--samples", "2")
    assert code == 0, err
    data = json.loads(report.read_text())
    assert data["recipe"]["data"]["input_shapes"] == ["x:2x3x6x6"]
    assert data["after"]["macs"] == 2 * (4 * 36 * 27 + 6 * 36 * 36 + 30)
    # the model is not specialized to the shape used for checking
    assert graphc.load(tmp_path / "o.onnx").graph.inputs[0].shape == ["N", 3, "S", "S"]


def test_opt_keyboard_interrupt_exits_130_without_output(capsys, monkeypatch, tmp_path, net):
    def interrupted(self, model):
        raise KeyboardInterrupt

    monkeypatch.setattr(graphc.PassManager, "run", interrupted)
    outdir = tmp_path / "out"
    outdir.mkdir()
    code, out, err = cli(capsys, "opt", net, "-p", "cleanup", "-o", outdir / "x.onnx")
    assert code == 130 and out == "" and err.strip() == "graphc: interrupted"
    assert list(outdir.iterdir()) == []


def test_internal_error_is_one_line_unless_debug(capsys, monkeypatch, net):
    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr("graphc.report.model_summary", broken)
    code, _, err = cli(capsys, "inspect", net)
    assert code == 2
    assert err.splitlines() == [
        "graphc: error: internal error: RuntimeError: boom (rerun with --debug for the traceback)"]
    code, _, err = cli(capsys, "inspect", net, "--debug")
    assert code == 2 and "Traceback" in err and err.splitlines()[-1].startswith("graphc: error: internal error")


# -- verify / bench ----------------------------------------------------------------------------------

def test_verify_exit_codes_and_json(capsys, tmp_path, net):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(scaled(conv_net(), "wfc", 1.5).SerializeToString())
    code, out, _ = cli(capsys, "verify", net, net)
    assert code == 0 and out.startswith("verify: PASS")
    code, out, _ = cli(capsys, "verify", net, bad, "--localize", "--json")
    data = json.loads(out)
    assert code == 1 and not data["passed"] and data["localization"]["candidate_node"] == "Gemm 'fc'"
    code, out, _ = cli(capsys, "verify", net, bad, "--atol", "10", "--rtol", "0")
    assert code == 0


def test_bench_one_and_two_models(capsys, net, tmp_path):
    code, out, _ = cli(capsys, "bench", net, net, "--rounds", "3", "--warmup", "0", "--threads", "1")
    assert code == 0 and "ratio A/B" in out and "3 alternated runs each" in out
    code, out, _ = cli(capsys, "bench", net, "--rounds", "2", "--warmup", "0", "--json")
    data = json.loads(out)
    assert code == 0 and data["runs"] == 2 and data["median_ms"] > 0


def test_quiet_and_verbose(capsys, tmp_path, net):
    code, out, err = cli(capsys, "opt", net, "-p", "cleanup", "-o", tmp_path / "q.onnx", "-q")
    assert code == 0 and out == "" and err == ""
    code, out, err = cli(capsys, "opt", net, "-p", "cleanup", "-o", tmp_path / "v.onnx", "-v")
    assert code == 0 and "graphc: INFO:" in err and "cleanup" in out


def test_help_and_missing_command(capsys):
    code, out, _ = cli(capsys, "opt", "--help")
    assert code == 0 and "--keep-failed" in out
    code, _, err = cli(capsys)
    assert code == 2 and "usage: graphc" in err


def test_installed_console_script(tmp_path, net):
    script = Path(sys.executable).with_name("graphc")
    ok = subprocess.run([str(script), "inspect", str(net)], capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0 and "probs" in ok.stdout
    bad = subprocess.run([str(script), "inspect", str(tmp_path / "missing.onnx")], capture_output=True,
                         text=True, timeout=120)
    assert bad.returncode == 2 and bad.stdout == ""
    assert bad.stderr.splitlines() == [f"graphc: error: {tmp_path / 'missing.onnx'}: no such file"]


# -- PP-OCR ------------------------------------------------------------------------------------------

@pytest.mark.real
def test_foundation_done_when_ppocr(capsys, tmp_path, ppocr):
    """`graphc opt -p cleanup,fold-constants` writes a valid model that `graphc verify` accepts."""
    kind, path = ppocr
    out = tmp_path / f"{kind}.opt.onnx"
    shape = "x:" + "x".join(map(str, PPOCR_SHAPES[kind]))
    before = digest(path)
    code, text, err = cli(capsys, "opt", path, "-p", "cleanup,fold-constants", "-o", out)
    assert code == 0, err
    assert digest(path) == before and f"wrote {out}" in text
    onnx.checker.check_model(str(out), full_check=True)
    code, text, err = cli(capsys, "verify", path, out, "--input-shape", shape, "--rtol", "1e-5",
                          "--samples", "2")
    assert code == 0, text + err
    assert text.startswith("verify: PASS")


@pytest.mark.real
def test_verify_localize_names_corrupted_conv_in_ppocr_cls(capsys, tmp_path):
    path = ppocr_model("cls")
    if path is None:
        pytest.skip("rapidocr-onnxruntime is not installed")
    model = graphc.load(path)
    target = scale_middle_conv(model)
    bad = graphc.save(model, tmp_path / "cls.bad.onnx")
    code, out, _ = cli(capsys, "verify", path, bad, "--localize", "--input-shape", "x:1x3x48x192",
                       "--samples", "2")
    assert code == 1
    assert f"candidate node: Conv '{target.name}'" in out and f"reference node: Conv '{target.name}'" in out


def test_inspect_says_the_compressed_sizes(capsys, net, tmp_path):
    code, js, _ = cli(capsys, "inspect", net, "--json")
    before = json.loads(js)
    assert before["zlib_bytes"] < before["file_bytes"] and before["lzma_bytes"] < before["file_bytes"]
    assert before["entropy_coded_bytes"] <= 1.02 * before["file_bytes"]  # of graphc's re-serialization
    small = tmp_path / "small.onnx"
    assert cli(capsys, "opt", net, "-o", small, "-p", "sparsify{sparsity=0.5},cluster{bits=2}")[0] == 0
    code, out, _ = cli(capsys, "inspect", small)
    assert code == 0 and "compressed: zlib " in out and "entropy-coded " in out
    after = json.loads(cli(capsys, "inspect", small, "--json")[1])
    assert after["entropy_coded_bytes"] < 0.7 * before["entropy_coded_bytes"]  # the graph itself is most of it
    assert after["weight_encodings"]["codebook"] == 3 and "codebook" not in before["weight_encodings"]  # the indices
