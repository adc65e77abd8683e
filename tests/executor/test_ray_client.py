"""``--executor ray://HOST:PORT`` against a real Ray head started here (``ray start --head`` with a
client server port, 2 CPUs, its own temp folder so no other Ray user on the machine finds it): a
small quant budget through the Ray client gives the local executor's output bytes and report
figures. Needs Ray's client extra (``ray[client]``: grpcio), which the test extra installs."""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'graphc[ray]')")
pytest.importorskip("grpc", reason="Ray client needs grpcio (pip install 'ray[client]')")

from graphc.errors import ExecutorError  # noqa: E402
from test_ray import BUDGET, _build, _pass_record, _stable  # noqa: E402  (same case, same comparison)

START_SECONDS = 90
#: what Ray's proxy answers when the per-client server it spawned exited at start-up
SERVER_START_FAILED = "Starting Ray client server failed"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_until_started(port: int, proc: subprocess.Popen, log: Path) -> None:
    """Until ``ray start`` says every process of the head is up and the client port answers (the
    port alone opens before the head's other processes are ready)."""
    deadline = time.monotonic() + START_SECONDS
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"ray start exited with {proc.returncode}: {log.read_text()[-2000:]}")
        if "Ray runtime started" in log.read_text():
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    return
        time.sleep(0.5)
    pytest.fail(f"the Ray head did not start with its client server on port {port} in {START_SECONDS} s: "
                f"{log.read_text()[-2000:]}")


def _head_logs(temp: Path) -> str:
    """The tails of the head's client-server, GCS and raylet error logs: what a failure needs."""
    tails = []
    for path in sorted(temp.glob("session_*/logs/*.err")):
        if path.name.startswith(("ray_client_server", "gcs_server", "raylet")):
            text = path.read_text(errors="replace").strip()
            if text:
                tails.append(f"--- {path.name}\n{text[-1500:]}")
    return "\n".join(tails) or "(no error logs)"


@pytest.fixture(scope="module")
def ray_head():
    """``(ray://127.0.0.1:PORT, temp folder)`` of a head started for this module on loopback only,
    stopped by its process group."""
    gcs, client = _free_port(), _free_port()
    temp = Path(tempfile.mkdtemp(prefix="rayc"))  # short: Ray's socket paths must stay < 108 chars
    log = temp / "start.log"
    ray_cli = Path(sys.executable).with_name("ray")
    with open(log, "w") as out:
        proc = subprocess.Popen([str(ray_cli), "start", "--head", f"--port={gcs}",
                                 f"--ray-client-server-port={client}", "--num-cpus=2",
                                 "--node-ip-address=127.0.0.1",  # whatever this machine's network is
                                 "--include-dashboard=false", "--disable-usage-stats", f"--temp-dir={temp}",
                                 "--block"], stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                # no token auth on this throwaway head (a token in ~/.ray would turn
                                # it on, and the client does not send it unless RAY_AUTH_MODE=token)
                                env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"})
    try:
        _wait_until_started(client, proc, log)
        yield f"ray://127.0.0.1:{client}", temp
    finally:
        if ray.is_initialized():
            ray.shutdown()
        os.killpg(proc.pid, signal.SIGTERM)  # only the head this fixture started
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        shutil.rmtree(temp, ignore_errors=True)


def test_quant_budget_through_a_ray_client_is_bit_identical_to_local(ray_head, tmp_path, monkeypatch):
    address, temp = ray_head
    local_bytes, local = _build(tmp_path, monkeypatch, BUDGET, "local", "local")
    try:
        remote_bytes, remote = _build(tmp_path, monkeypatch, BUDGET, address, "client")
    except ExecutorError as exc:
        if SERVER_START_FAILED in str(exc):
            # Ray's own per-client server process died at start-up on every attempt (seen once in
            # CI, never here): not a graphc result. Skipped with the head's logs in the reason, so
            # the run shows it; any other failure, and any difference from local, fails.
            pytest.skip(f"Ray could not start the client's server on this machine: {exc} | "
                        f"{' '.join(_head_logs(temp).split())[-600:]}")
        pytest.fail(f"{exc}\n{_head_logs(temp)}")
    quant = _pass_record(remote, "quant")
    assert quant["stats"]["budget_evaluations_run"] > 2 and quant["stats"]["budget_float_layers"] > 0
    assert remote_bytes == local_bytes
    assert _stable(remote) == _stable(local)
