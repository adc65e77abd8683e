"""What one fuzz case runs: ``graphc inspect`` and ``graphc opt -p cleanup,fold-bn`` on a file.

Through ``graphc.cli.main`` when the CLI exists, else through the Python API (load, model stats,
PassManager, save). A case ends in one of:

- ``ok``: accepted, and ``opt`` wrote an output;
- ``rejected``: exit 2 with exactly one stderr line ``graphc: error: ...`` (API: a GraphcError);
- ``crash``: anything else - an exception that is not graphc's, the CLI's "internal error",
  a traceback or several lines on stderr, an output file left after a failure, leftover temp
  files, the input changed, or a case running longer than ``TIME_LIMIT_S``; and a Python
  exception from inside a pass that the pass manager wrapped (``pass 'x' failed: KeyError: ...``,
  ``wrapped=True``): the user sees one clean line, but a pass that meets input it cannot handle
  must say so with a typed error naming the node, not fall over.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import re
import signal
from dataclasses import dataclass
from pathlib import Path

import graphc
from graphc.errors import GraphcError
from graphc.passmanager import all_passes

TIME_LIMIT_S = 30
_WRAPPED = re.compile(r"pass '[\w-]+' failed(?: \(after [^)]*\))?: [A-Za-z_]+(Error|Exception)\b")


def fuzz_pipeline() -> str:
    names = {c.name for c in all_passes()}
    return "cleanup,fold-bn" if "fold-bn" in names else "cleanup"


@dataclass
class Outcome:
    kind: str  # ok | rejected | crash
    detail: str = ""
    wrapped: bool = False

    def __str__(self) -> str:
        return f"{self.kind}: {self.detail}"


class CaseTimeout(Exception):
    pass


@contextlib.contextmanager
def _time_limit(seconds: int):
    def fire(signum, frame):
        raise CaseTimeout(f"case ran longer than {seconds} s")

    old = signal.signal(signal.SIGALRM, fire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def cli_main():
    """``graphc.cli.main`` if the CLI is importable, else None."""
    try:
        from graphc.cli import main
    except Exception:  # noqa: BLE001 - the CLI is optional here; the API path covers it
        return None
    return main


def _snapshot(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


def run_case(data: bytes, folder: Path, *, use_cli: bool = True) -> Outcome:
    """Write ``data`` as ``folder/in.onnx`` (plus a small ``w.bin`` for relative external data)
    and run inspect and opt on it."""
    folder.mkdir(parents=True, exist_ok=True)
    src = folder / "in.onnx"
    src.write_bytes(data)
    (folder / "w.bin").write_bytes(bytes(range(256)) * 16)
    out = folder / "out.onnx"
    before = _snapshot(folder)
    main = cli_main() if use_cli else None
    try:
        with _time_limit(TIME_LIMIT_S):
            outcome = _run_cli(main, src, out) if main is not None else _run_api(src, out)
    except CaseTimeout as exc:
        return Outcome("crash", str(exc))
    after = _snapshot(folder)
    written = after.pop("out.onnx", None)
    after.pop("out.onnx.data", None)
    if after != before:
        return Outcome("crash", f"input or folder changed: {sorted(set(after) ^ set(before)) or 'bytes'}")
    leftovers = [p.name for p in folder.iterdir() if p.name.startswith(".")]
    if leftovers:
        return Outcome("crash", f"temp files left behind: {leftovers}")
    if outcome.kind == "ok" and written is None:
        return Outcome("crash", "opt succeeded but wrote no output")
    if outcome.kind != "ok" and written is not None:
        return Outcome("crash", f"output written although opt failed ({outcome.detail})")
    return outcome


def _run_cli(main, src: Path, out: Path) -> Outcome:
    for argv in (["inspect", str(src)], ["opt", str(src), "-p", fuzz_pipeline(), "-o", str(out)]):
        stdout, stderr = io.StringIO(), io.StringIO()
        try:
            with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
                code = main(argv)
        except CaseTimeout:
            raise
        except BaseException as exc:  # noqa: BLE001 - anything escaping main is a crash
            return Outcome("crash", f"{argv[0]}: {type(exc).__name__} escaped main: {exc}")
        lines = stderr.getvalue().splitlines()
        if code == 0:
            continue
        message = " | ".join(lines)
        if code != 2:
            return Outcome("crash", f"{argv[0]}: exit {code}: {message}")
        # warnings (load-time repairs of declarations) may come first; the error is one line, last
        errors = [line for line in lines if not line.startswith("graphc: WARNING: ")]
        if len(errors) != 1 or not errors[0].startswith("graphc: error: ") or lines[-1] != errors[0]:
            return Outcome("crash", f"{argv[0]}: stderr is not one 'graphc: error:' line: {message[:300]}")
        if "internal error" in lines[0] or "Traceback" in lines[0]:
            return Outcome("crash", f"{argv[0]}: {lines[0]}")
        if _WRAPPED.search(lines[0]):
            return Outcome("crash", f"{argv[0]}: a pass raised a Python exception: {lines[0]}", wrapped=True)
        return Outcome("rejected", f"{argv[0]}: {lines[0]}")
    return Outcome("ok")


def _run_api(src: Path, out: Path) -> Outcome:
    from graphc.stats import model_stats

    try:
        model = graphc.load(src)
        model_stats(model)
        graphc.PassManager(fuzz_pipeline()).run(model)
        graphc.save(model, out)
    except CaseTimeout:
        raise
    except GraphcError as exc:
        message = " ".join(str(exc).split())
        cause = exc.__cause__
        if cause is not None and not isinstance(cause, GraphcError):
            return Outcome("crash", f"a pass raised {type(cause).__name__}: {message}", wrapped=True)
        return Outcome("rejected", f"{type(exc).__name__}: {message}")
    except Exception as exc:  # noqa: BLE001 - the finding
        return Outcome("crash", f"{type(exc).__name__}: {exc}")
    return Outcome("ok")
