"""Running the commands the docs show: ``$ ...`` lines of ```console blocks, and workflow steps.

``graphc`` commands run in-process (``graphc.cli.main``) in the given folder, ``python`` commands
in a subprocess with this interpreter; ``mkdir -p`` is done directly. A command whose pipeline
names a pass that is not registered yet is skipped with that reason (see ``missing_passes``).
"""
from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

from graphc.cli import main
from graphc.passmanager import all_passes

ROOT = Path(__file__).resolve().parents[2]


def console_commands(markdown: str) -> list[str]:
    """Every ``$ command`` line inside a ```console block, in order."""
    commands, inside = [], False
    for line in markdown.splitlines():
        if line.startswith("```"):
            inside = line.strip() == "```console"
            continue
        if inside and line.startswith("$ "):
            commands.append(line[2:].strip())
    return commands


def pipeline_passes(text: str) -> list[str]:
    """Pass names of a pipeline text (options in braces dropped)."""
    return [name.strip() for name in re.sub(r"\{[^}]*\}", "", text).split(",") if name.strip()]


def missing_passes(args: list[str]) -> list[str]:
    """Passes named by ``-p``/``--pipeline`` that are not registered."""
    known = {cls.name for cls in all_passes()}
    names = [pipeline_passes(args[i + 1]) for i, a in enumerate(args[:-1]) if a in ("-p", "--pipeline")]
    return [n for group in names for n in group if n not in known]


def option_value(args: list[str], *flags: str) -> str | None:
    for i, arg in enumerate(args[:-1]):
        if arg in flags:
            return args[i + 1]
    return None


def workspace(folder: Path) -> Path:
    """A scratch folder where ``docs/`` and ``benchmarks/`` are the repository's."""
    for name in ("docs", "benchmarks"):
        link = folder / name
        if not link.exists():
            link.symlink_to(ROOT / name, target_is_directory=True)
    return folder


def run_command(command: str | list[str], cwd: Path) -> tuple[int, str]:
    """Run one documented command in ``cwd``; returns (exit code, what it printed)."""
    args = shlex.split(command) if isinstance(command, str) else command
    if args[0] == "graphc":
        return _in_process(args[1:], cwd)
    if args[0] == "python":
        done = subprocess.run([sys.executable, *args[1:]], cwd=cwd, capture_output=True, text=True, timeout=600)
        return done.returncode, done.stdout + done.stderr
    if args[:2] == ["mkdir", "-p"]:
        for name in args[2:]:
            (cwd / name).mkdir(parents=True, exist_ok=True)
        return 0, ""
    raise AssertionError(f"the docs run a command the tests do not know how to run: {command}")


def _in_process(args: list[str], cwd: Path) -> tuple[int, str]:
    import contextlib
    import io

    here = Path.cwd()
    out, err = io.StringIO(), io.StringIO()
    os.chdir(cwd)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(args)
    finally:
        os.chdir(here)
    return code, out.getvalue() + err.getvalue()
