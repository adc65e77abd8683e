"""The executor interface without Ray: the local executor keeps the order of the items whatever
order tasks finish in (processes and threads), an error raised in a task reaches the caller as
itself, ``--executor`` and the recipe key are checked, and without Ray installed
``--executor ray`` is a one-line error naming the extra (exit 2)."""
from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from executor_nets import failing, scaled, write_case
from graphc.cli import main
from graphc.errors import DataError, ExecutorError, RecipeError
from graphc.executor import LocalExecutor, RayExecutor, current, executor_from, using
from graphc.recipe import dumps, loads

ITEMS = [(i, 0.05 * (4 - i)) for i in range(4)]  # the first item finishes last


@pytest.mark.parametrize("in_threads", [False, True])
def test_local_results_come_back_in_item_order(in_threads):
    results = LocalExecutor(2).map(scaled, 2.0, ITEMS, in_threads=in_threads)
    assert results == [(i, 2.0 * i) for i in range(4)]


def test_one_worker_runs_in_this_process():
    assert LocalExecutor(1).map(scaled, 3.0, ITEMS) == [(i, 3.0 * i) for i in range(4)]


@pytest.mark.parametrize("workers", [1, 2])
def test_a_graphc_error_in_a_task_is_raised_as_itself(workers):
    with pytest.raises(DataError, match="task 2: bad sample"):
        LocalExecutor(workers).map(failing, None, [0, 1, 2, 3])


def test_a_script_without_a_main_guard_and_a_large_shared_value_does_not_hang(tmp_path):
    """A spawned worker re-runs such a script and dies while starting; the pool must report it
    (the items then run in the parent), not block writing the shared value into the dead worker's
    pipe: 4 MB is far above the 64 KiB pipe buffer."""
    script = tmp_path / "unguarded.py"
    script.write_text(textwrap.dedent(f"""
        import sys
        sys.path[:0] = [{str(Path(__file__).parent)!r}, {str(Path(__file__).parents[1])!r}]
        from executor_nets import sized
        from graphc.executor import LocalExecutor
        print("result", LocalExecutor(2).map(sized, bytes(4_000_000), [0, 1, 2]))
    """))
    run = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=180, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.splitlines()[-1] == "result [4000000, 4000001, 4000002]"
    assert "worker processes failed" in run.stderr


def test_executor_names_and_the_executor_in_force():
    assert executor_from(None) is None
    assert executor_from("local") == LocalExecutor()
    assert executor_from("ray") == RayExecutor()
    assert executor_from("ray://10.0.0.1:10001") == RayExecutor(address="ray://10.0.0.1:10001")
    for bad in ("spark", "ray://", "Ray"):
        with pytest.raises(ExecutorError, match="unknown executor"):
            executor_from(bad)
    assert current() == LocalExecutor()
    with using(RayExecutor(num_cpus=1)) as inside:
        assert current() is inside and inside == RayExecutor(num_cpus=1)
        with using(None):
            assert current() is inside
    assert current() == LocalExecutor()


def test_recipe_executor_key_is_checked_and_written_back():
    recipe = loads('executor = "ray://head:10001"\npipeline = "cleanup"\n')
    assert recipe.executor == "ray://head:10001"
    assert loads(dumps(recipe)) == recipe
    with pytest.raises(RecipeError, match="executor: unknown executor 'spark'"):
        loads('executor = "spark"\n')


def test_cli_rejects_an_unknown_executor(tmp_path, capsys):
    model, data = write_case(tmp_path)
    assert main(["sensitivity", str(model), "--data", str(data), "--executor", "spark"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "unknown executor 'spark'" in err


@pytest.mark.parametrize("command", ["sensitivity", "opt"])
def test_without_ray_the_ray_executor_is_a_one_line_error_naming_the_extra(tmp_path, capsys, monkeypatch,
                                                                          command):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    monkeypatch.setenv("GRAPHC_CACHE_DIR", str(tmp_path / "cache"))
    model, data = write_case(tmp_path)
    out = tmp_path / "out.onnx"
    args = (["sensitivity", str(model), "--data", str(data)] if command == "sensitivity" else
            ["opt", str(model), "-p", "quant{placement=all per-channel=false min-sqnr=30}", "--data", str(data),
             "-o", str(out)])
    before = model.read_bytes()
    assert main([*args, "--executor", "ray"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "pip install 'graphc[ray]'" in err, err
    assert not out.exists() and model.read_bytes() == before


class _FlakyRay:
    """A stand-in ``ray`` module whose ``init`` fails ``failures`` times the way a Ray client does
    when the head cannot start the client's server, then succeeds."""

    SERVER_ERROR = ("Initialization failure from server:\nTraceback (most recent call last):\n"
                    "  File \"proxier.py\", line 773, in Datapath\n"
                    "RuntimeError: Starting Ray client server failed. See ray_client_server_23000.err")

    def __init__(self, failures):
        self.failures, self.calls, self.up = failures, [], False

    def is_initialized(self):
        return self.up

    def shutdown(self):
        self.up = False

    def init(self, address=None, **kwargs):
        self.calls.append(address)
        if len(self.calls) <= self.failures:
            raise ConnectionAbortedError(self.SERVER_ERROR)
        self.up = True


@pytest.fixture
def flaky_ray(monkeypatch):
    import graphc.executor.ray_cluster as ray_cluster

    def make(failures):
        fake = _FlakyRay(failures)
        monkeypatch.setattr(ray_cluster, "import_ray", lambda: fake)
        monkeypatch.setattr(ray_cluster.time, "sleep", lambda s: None)
        return fake
    return make


def test_a_cluster_address_is_tried_again_after_a_failed_client_start(flaky_ray):
    fake = flaky_ray(failures=2)
    assert RayExecutor(address="ray://head:10001").connect() is fake
    assert fake.calls == ["ray://head:10001"] * 3 and fake.up


def test_a_cluster_that_keeps_failing_names_the_servers_reason(flaky_ray):
    fake = flaky_ray(failures=99)
    with pytest.raises(ExecutorError) as err:
        RayExecutor(address="ray://head:10001").connect()
    assert len(fake.calls) == 3
    message = str(err.value)
    assert "ray://head:10001 (after 3 attempts)" in message
    assert message.endswith("RuntimeError: Starting Ray client server failed. See ray_client_server_23000.err")


def test_a_local_runtime_is_not_retried(flaky_ray):
    fake = flaky_ray(failures=1)
    with pytest.raises(ExecutorError, match="on this machine: RuntimeError: Starting Ray client"):
        RayExecutor().connect()
    assert fake.calls == [None]
