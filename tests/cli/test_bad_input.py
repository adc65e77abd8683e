"""Hostile and mistaken input: every case exits 2 with exactly one `graphc: error:` line on stderr,
no traceback, nothing on stdout, the output folder exactly as it was (no temp files either) and
the input file's bytes unchanged. Also the inputs graphc must accept: unknown-domain ops and
models without static shapes."""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Callable

import numpy as np
import onnx
import pytest

from graphc.cli import main
from support import MODELS, ppocr_model
from tiny_nets import conv_net, custom_domain_net, cyclic_net, dangling_net, empty_net


def _truncated() -> bytes:
    path = ppocr_model("cls")
    data = path.read_bytes() if path is not None else conv_net().SerializeToString()
    return data[: len(data) // 2]


BAD_MODELS: dict[str, Callable[[], bytes | None]] = {
    "missing": lambda: None,
    "text": lambda: b"this is not a model\n",
    "garbage": lambda: np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes(),
    "zero-bytes": lambda: b"",
    "truncated": _truncated,
    "cycle": lambda: cyclic_net().SerializeToString(),
    "dangling-input": lambda: dangling_net().SerializeToString(),
    "empty-graph": lambda: empty_net().SerializeToString(),
}


def snapshot(folder: Path) -> list[tuple[str, int]]:
    return sorted((str(p.relative_to(folder)), p.stat().st_size) for p in folder.rglob("*"))


def digest(path: Path) -> str | None:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None


@pytest.fixture
def outdir(tmp_path) -> Path:
    folder = tmp_path / "out"
    folder.mkdir()
    (folder / "keep.txt").write_text("already here")
    return folder


@pytest.fixture
def good(tmp_path) -> Path:
    path = tmp_path / "in" / "net.onnx"
    path.parent.mkdir()
    path.write_bytes(conv_net().SerializeToString())
    return path


def assert_rejected(capsys, args: list, outdir: Path, watched: Path | None = None) -> str:
    """Run the CLI; check exit 2, one error line, no stdout, untouched output folder and input."""
    before_out, before_in = snapshot(outdir), digest(watched) if watched else None
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    lines = err.splitlines()
    assert code == 2, (args, err)
    assert len(lines) == 1 and lines[0].startswith("graphc: error: "), err
    assert "Traceback" not in err and out == ""
    assert snapshot(outdir) == before_out
    if watched is not None:
        assert digest(watched) == before_in
    return lines[0]


@pytest.mark.parametrize("kind", sorted(BAD_MODELS))
@pytest.mark.parametrize("command", ["inspect", "opt", "verify", "bench"])
def test_bad_model_files(capsys, tmp_path, outdir, kind, command):
    path = tmp_path / "in" / f"{kind}.onnx"
    path.parent.mkdir()
    payload = BAD_MODELS[kind]()
    if payload is not None:
        path.write_bytes(payload)
    args = {"inspect": ["inspect", path], "opt": ["opt", path, "-p", "cleanup", "-o", outdir / "x.onnx"],
            "verify": ["verify", path, path], "bench": ["bench", path, "--rounds", "1"]}[command]
    line = assert_rejected(capsys, args, outdir, path)
    expected = {"missing": "no such file", "text": "not an ONNX model", "garbage": "ONNX model",
                "zero-bytes": "empty file", "truncated": "not an ONNX model", "cycle": "cycle",
                "dangling-input": "reads 'ghost', which nothing produces", "empty-graph": "empty graph"}[kind]
    assert expected in line


def test_folder_as_model(capsys, tmp_path, outdir):
    folder = tmp_path / "model.onnx"
    folder.mkdir()
    assert "not a file" in assert_rejected(capsys, ["inspect", folder], outdir)
    opt = ["opt", folder, "-p", "cleanup", "-o", outdir / "x.onnx"]
    assert "not a file" in assert_rejected(capsys, opt, outdir)


@pytest.mark.parametrize("pipeline,message", [
    ("cleanup,", "expected a pass name, found end of text"),
    (",cleanup", "expected a pass name"),
    ("cleanup{", "expected '}'"),
    ("cleanup{keep-inputs}", "expected '=' after option 'keep-inputs'"),
    ("cleanup fold-constants", "expected ',' or end of pipeline"),
    ("", "expected a pass name"),
    ("cleenup", "unknown pass 'cleenup' (did you mean 'cleanup'?)"),
    ("cleanup{nope=1}", "has no option 'nope'"),
    ("cleanup{keep-inputs=maybe}", "expected true or false"),
    ("fold-constants{max-elements=0}", "below the minimum"),
    ("fold-constants{max-elements=abc}", "expected an integer"),
])
def test_pipeline_errors_fail_before_loading(capsys, tmp_path, outdir, pipeline, message):
    missing = tmp_path / "never-read.onnx"  # the pipeline is checked before the model is opened
    line = assert_rejected(capsys, ["opt", missing, "-p", pipeline, "-o", outdir / "x.onnx"], outdir)
    assert message in line


@pytest.mark.parametrize("extra,message", [
    (["-o", "{out}/missing/x.onnx"], "does not exist"),
    (["-o", "{in}"], "refusing to overwrite the input model"),
    (["-o", "{out}"], "is a folder"),
    (["-o", "{out}/x.onnx", "--report", "{out}/r.txt"], "report must end in .html, .md or .json"),
    (["-o", "{out}/x.onnx", "--report", "{out}/no/r.json"], "does not exist"),
    (["-o", "{out}/x.onnx", "--input-shape", "x"], "is not NAME:DIMS"),
    (["-o", "{out}/x.onnx", "--input-shape", "x:1xAx3"], "dims must be integers"),
    (["-o", "{out}/x.onnx", "--input-shape", "y:1x3x8x8", "--verify"], "the model's inputs are: x"),
    (["-o", "{out}/x.onnx", "--input-shape", "x:1x3x9x9"], "dim 2 is fixed at 8"),
    (["-o", "{out}/x.onnx", "--min-cosine", "2"], "outside [-1.0, 1.0]"),
    (["-o", "{out}/x.onnx", "--samples", "0"], "must be at least 1"),
    (["-o", "{out}/x.onnx", "--data", "{out}/nothing.npz"], "no such file or folder"),
    ([], "no output model: give -o OUT"),
    (["-o", "{out}/x.onnx", "--localize"], "--localize needs --verify"),
])
def test_usage_errors(capsys, good, outdir, extra, message):
    args = ["opt", good, "-p", "cleanup"] + [a.format(out=outdir, **{"in": good}) for a in extra]
    assert message in assert_rejected(capsys, args, outdir, good)


def test_unknown_flag_and_command(capsys, good, outdir):
    assert "unrecognized arguments: --frobnicate" in assert_rejected(
        capsys, ["inspect", good, "--frobnicate"], outdir, good)
    assert "invalid choice: 'optimise'" in assert_rejected(capsys, ["optimise", good], outdir, good)


# -- inputs that are odd but valid -------------------------------------------------------------------

def test_unknown_domain_op_is_inspected_and_left_alone(capsys, tmp_path, outdir):
    src = tmp_path / "custom.onnx"
    src.write_bytes(custom_domain_net().SerializeToString())
    code = main(["inspect", str(src)])
    out, _ = capsys.readouterr()
    assert code == 0 and "Mystery 1" in out and "1 node(s) of domain 'com.example'" in out
    result = outdir / "custom.opt.onnx"
    code = main(["opt", str(src), "-p", "cleanup", "-o", str(result)])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "graphc passes leave them as they are" in out
    nodes = onnx.load(str(result)).graph.node
    assert [(n.op_type, n.domain) for n in nodes] == [("Relu", ""), ("Mystery", "com.example")]
    assert nodes[1].attribute[0].name == "strength" and nodes[1].attribute[0].i == 2
    # onnxruntime cannot run it: verification is impossible, which is an input problem (exit 2)
    line = assert_rejected(capsys, ["verify", src, result], outdir, src)
    assert "onnxruntime cannot load the reference" in line
    assert_rejected(capsys, ["opt", src, "-p", "cleanup", "-o", outdir / "v.onnx", "--verify"], outdir, src)


def test_model_without_static_shapes_is_inspected(capsys, tmp_path):
    """An input of unknown rank: no nominal shape can be made up, so MACs stay unknown (said)."""
    model = conv_net(batch="N", spatial="S")
    model.graph.input[0].type.tensor_type.ClearField("shape")
    src = tmp_path / "dyn.onnx"
    src.write_bytes(model.SerializeToString())
    code = main(["inspect", str(src)])
    out, err = capsys.readouterr()
    assert code == 0 and err == ""
    assert "MACs unknown\n" in out and "MACs unknown for 3 of 3 node(s)" in out


def test_verify_after_a_lossy_pass_needs_a_threshold(capsys, tmp_path):
    """Exact tolerances would fail any quantized model late; the error comes first, names the
    lossy pass and the flags to give, and nothing is written."""
    out = tmp_path / "q.onnx"
    code = main(["opt", str(MODELS / "resnet_digits.onnx"), "-p", "fold-bn,quant{placement=all}",
                 "--data", str(MODELS / "digits_calib.npz"), "--verify", "-o", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and not out.exists()
    assert err.strip() == ("graphc: error: --verify after lossy passes (quant) needs a threshold: "
                           "--min-sqnr, --min-cosine or --min-top1")


def _loop_model() -> onnx.ModelProto:
    return onnx.load(str(Path(__file__).resolve().parents[1] / "data" / "bad" / "loop_subgraph.onnx"))


def _set_elem_type(where: str, elem_type: int) -> onnx.ModelProto:
    """The Loop model with one declared element type set to ``elem_type`` (0 = UNDEFINED)."""
    model = _loop_model()
    body = next(a.g for n in model.graph.node if n.op_type == "Loop" for a in n.attribute if a.name == "body")
    if where == "value_info":
        info = model.graph.value_info.add()
        info.name = model.graph.node[0].output[0]
        info.type.tensor_type.elem_type = elem_type
        return model
    value = {"input": model.graph.input[0], "output": model.graph.output[0],
             "body-input": body.input[2], "body-output": body.output[1]}[where]
    value.type.tensor_type.elem_type = elem_type
    return model


def test_fuzz_case_undefined_input_elem_type(capsys, tmp_path, outdir):
    """Fuzz case (tests/property): loop_subgraph.onnx + flip_byte(50514, 42235, 8233);
    replace_init_values(35073, 61435, 35371) left graph input 'x' with elem_type 0, and inspect
    failed with an internal "TypeError: Cannot interpret '0' as a data type"."""
    import sys
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "property"))
    from mutations import BYTE_MUTATORS, GRAPH_MUTATORS, apply

    names = [f.__name__ for f in GRAPH_MUTATORS] + [f.__name__ for f in BYTE_MUTATORS]
    data = apply(_loop_model().SerializeToString(),
                 [(names.index("flip_byte"), 50514, 42235, 8233),
                  (names.index("replace_init_values"), 35073, 61435, 35371)])
    path = tmp_path / "in" / "fuzz.onnx"
    path.parent.mkdir()
    path.write_bytes(data)
    assert onnx.load(str(path)).graph.input[0].type.tensor_type.elem_type == 0  # the case is still this one
    line = assert_rejected(capsys, ["inspect", path], outdir, path)
    assert "graph input 'x' declares element type 0 (UNDEFINED)" in line
    line = assert_rejected(capsys, ["opt", path, "-p", "cleanup,fold-bn", "-o", outdir / "x.onnx"], outdir, path)
    assert "graph input 'x'" in line


@pytest.mark.parametrize("where,label", [
    ("input", "graph input 'x'"), ("output", "graph output 'y'"), ("value_info", "value_info 'step'"),
    ("body-input", "Loop 'loop' > graph input 'acc_in'"),
    ("body-output", "Loop 'loop' > graph output 'acc_out'")])
@pytest.mark.parametrize("elem_type", [0, 999])
def test_undefined_or_unknown_elem_type_is_named_at_load(capsys, tmp_path, outdir, where, label, elem_type):
    """onnxruntime refuses all of these at load; graphc names the tensor (it used to fail later with
    TypeError/ValueError/KeyError: 999, or accept a value it could not type)."""
    path = tmp_path / "in" / "m.onnx"
    path.parent.mkdir()
    path.write_bytes(_set_elem_type(where, elem_type).SerializeToString())
    for args in (["inspect", path], ["opt", path, "-p", "cleanup,fold-bn", "-o", outdir / "x.onnx"]):
        line = assert_rejected(capsys, args, outdir, path)
        assert f"{label} declares element type {elem_type}" in line, line
