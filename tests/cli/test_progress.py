"""Progress bars: tqdm on stderr only when it is a terminal, never with -q; stdout stays the report."""
from __future__ import annotations

import io

import pytest

from graphc import progress as progress_module
from graphc.cli import main
from graphc.progress import progress, progress_bar, set_progress
from report_passes import write_net


class Terminal(io.StringIO):
    def isatty(self):
        return True


@pytest.fixture(autouse=True)
def reset():
    yield
    set_progress(None)


def test_off_when_stderr_is_not_a_terminal(capsys):
    items = [1, 2, 3]
    assert progress(items, desc="x") is items
    with progress_bar(3, "x") as bar:
        bar.update(3)
    assert capsys.readouterr() == ("", "")


def test_on_when_stderr_is_a_terminal_and_off_when_quiet(monkeypatch):
    terminal = Terminal()
    monkeypatch.setattr("sys.stderr", terminal)
    assert list(progress(range(3), desc="verifying", unit="sample")) == [0, 1, 2]
    assert "verifying" in terminal.getvalue() and "sample" in terminal.getvalue()
    set_progress(False)
    terminal.truncate(0)
    assert list(progress(range(3), desc="again")) == [0, 1, 2] and terminal.getvalue() == ""


def test_cli_shows_bars_on_a_terminal_stderr_only(capsys, monkeypatch, tmp_path):
    net = write_net(tmp_path)
    terminal = Terminal()
    monkeypatch.setattr("sys.stderr", terminal)
    code = main(["bench", str(net), str(net), "--rounds", "3", "--warmup", "0"])
    out = capsys.readouterr().out
    assert code == 0 and "benchmark" in terminal.getvalue() and "benchmark" not in out and "ratio A/B" in out
    terminal.truncate(0)
    terminal.seek(0)
    code = main(["opt", str(net), "-p", "cleanup", "-o", str(tmp_path / "o.onnx"), "--verify", "-q"])
    assert code == 0 and terminal.getvalue() == "" and capsys.readouterr().out == ""
    assert progress_module._enabled is False


def test_verbose_logs_name_nodes_and_reasons(capsys, tmp_path):
    from tiny_nets import conv_net

    src = tmp_path / "ids.onnx"
    src.write_bytes(conv_net(identities=True).SerializeToString())
    code = main(["opt", str(src), "-p", "cleanup", "-o", str(tmp_path / "o.onnx"), "-v", "--min-sqnr", "200"])
    err = capsys.readouterr().err
    assert code == 0
    assert "graphc: INFO: cleanup: modified" in err
    assert "graphc: INFO: gate min_sqnr: pass (threshold 200.0, measured inf; worst output 'probs')" in err
