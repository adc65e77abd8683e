"""Peak memory of a whole process, from its start to its exit: run it fresh, read it at the end.

    from graphc.bench.memory import measure_process, python_command
    run = measure_process(python_command("-c", "import graphc; graphc.load('m.onnx')"))
    run.peak_bytes, run.wall_s, run.returncode, run.stdout

Method. The command runs in a fresh process; its peak resident set is the kernel's high-water mark
for that process, which ``os.wait4`` returns (``ru_maxrss``) when it exits - one figure for its
whole life: interpreter start, imports, loading, every pass, saving. Nothing is sampled, so no
short spike is missed.

Two traps, and what is done about them:

- At ``exec`` the kernel folds the high-water mark of the memory the new program replaces into
  ``ru_maxrss``; a child started from a big process (a benchmark that built a 700 MB model, a
  test runner) would report the *parent's* peak. So a tiny launcher (``python -S``, about 10 MB)
  starts the command and reaps it with ``wait4``: what the command inherits is the launcher's.
- The pass manager resets the kernel's mark at each pass to measure passes one by one, which
  erases the earlier peak from the kernel's figure. graphc keeps every mark it erases
  (:func:`graphc.passmanager.memory.process_peak_rss`); a Python child started with
  :func:`python_command` writes that figure to a file when it exits, and ``peak_bytes`` is the
  higher of the two. (A child that never imported graphc writes nothing: importing it just to
  report would itself add to the peak.)

Wall time is the command's, from its start to its exit (set-up included), measured by the
launcher.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

from graphc.errors import DataError

#: environment variable naming the file a child started by :func:`python_command` reports into
PEAK_FILE_ENV = "GRAPHC_PEAK_FILE"

# The launcher: start the command, reap it with wait4 (kill it past the deadline), write what the
# kernel says to the file named in argv[1]. Run as `python -S` so that it is small.
_LAUNCHER = """\
import json, os, signal, subprocess, sys, time
result, timeout, command = sys.argv[1], float(sys.argv[2]), sys.argv[3:]
start = time.perf_counter()
proc = subprocess.Popen(command)
deadline = None if timeout <= 0 else time.monotonic() + timeout
timed_out = False
while True:
    pid, status, usage = os.wait4(proc.pid, 0 if deadline is None else os.WNOHANG)
    if pid == proc.pid:
        break
    if time.monotonic() > deadline:
        proc.send_signal(signal.SIGKILL)
        timed_out = True
        deadline = None
        continue
    time.sleep(0.02)
with open(result, "w") as fh:
    json.dump({"wall": time.perf_counter() - start, "code": os.waitstatus_to_exitcode(status),
               "kernel_peak": usage.ru_maxrss * 1024, "timed_out": timed_out}, fh)
"""

# Runs first in the child: register the report, then run the target as __main__ (a script path,
# "-c CODE" or "-m MODULE", then its arguments), as `python` itself would.
_BOOTSTRAP = """\
import atexit, os, runpy, sys

def _graphc_report_peak():
    memory = sys.modules.get("graphc.passmanager.memory")
    path = os.environ.get("GRAPHC_PEAK_FILE")
    if memory is not None and path:
        with open(path, "w") as fh:
            fh.write(str(memory.process_peak_rss()))

atexit.register(_graphc_report_peak)
_target, sys.argv = sys.argv[1:3], sys.argv[1:]
if _target[0] == "-c":
    sys.argv = ["-c", *sys.argv[2:]]
    exec(compile(_target[1], "<string>", "exec"), {"__name__": "__main__", "__builtins__": __builtins__})
elif _target[0] == "-m":
    sys.argv = sys.argv[1:]
    runpy.run_module(_target[1], run_name="__main__", alter_sys=True)
else:
    sys.path.insert(0, os.path.dirname(os.path.abspath(_target[0])))
    runpy.run_path(_target[0], run_name="__main__")
"""


@dataclass(frozen=True)
class ProcessPeak:
    """One finished child process: its peak RSS over its whole life, wall time, exit and output."""

    peak_bytes: int
    wall_s: float
    returncode: int
    stdout: str
    stderr: str
    kernel_peak_bytes: int           #: ru_maxrss of the child from wait4
    reported_peak_bytes: int | None  #: graphc's process-wide peak written by the child, if any

    def check(self) -> "ProcessPeak":
        """Itself if the child exited with 0; else :class:`DataError` with its last stderr lines."""
        if self.returncode != 0:
            tail = "\n".join(self.stderr.strip().splitlines()[-5:])
            raise DataError(f"measured process exited with {self.returncode}: {tail}")
        return self


def python_command(*args: str) -> list[str]:
    """``python ARGS`` (a script path and its arguments, ``-c CODE ...`` or ``-m MODULE ...``), run
    so that the child reports graphc's process-wide peak at exit (see the module doc)."""
    if not args:
        raise DataError("python_command needs a script, -c CODE or -m MODULE")
    if args[0] in ("-c", "-m") and len(args) < 2:
        raise DataError(f"python_command: {args[0]} needs an argument")
    return [sys.executable, "-c", _BOOTSTRAP, *args]


def measure_process(command: Sequence[str], *, env: Mapping[str, str] | None = None,
                    cwd: str | os.PathLike | None = None, timeout: float | None = None) -> ProcessPeak:
    """Run ``command`` in a fresh process and measure its peak RSS from start to exit."""
    with tempfile.TemporaryDirectory(prefix="graphc-peak-") as tmp:
        folder = Path(tmp)
        report, result = folder / "peak", folder / "launch.json"
        child_env = dict(os.environ if env is None else env)
        child_env[PEAK_FILE_ENV] = str(report)
        launcher = [sys.executable, "-S", "-c", _LAUNCHER, str(result), str(timeout or 0), *command]
        with open(folder / "out", "w+") as out, open(folder / "err", "w+") as err:
            done = subprocess.run(launcher, stdout=out, stderr=err, env=child_env, cwd=cwd)
            out.seek(0)
            err.seek(0)
            stdout, stderr = out.read(), err.read()
        if done.returncode != 0 or not result.exists():
            raise DataError(f"could not measure {_command_text(command)}: {stderr.strip()[-500:]}")
        launched = json.loads(result.read_text())
        text = report.read_text().strip() if report.exists() else ""
    if launched["timed_out"]:
        raise DataError(f"measured process did not finish in {timeout:g} s: {_command_text(command)}")
    reported = int(text) if text else None
    kernel = int(launched["kernel_peak"])
    return ProcessPeak(max(kernel, reported or 0), float(launched["wall"]), int(launched["code"]),
                       stdout, stderr, kernel, reported)


def _command_text(command: Sequence[str]) -> str:
    return " ".join(a if len(a) < 60 else a[:57] + "..." for a in map(str, command))
