"""`make bench`: run every benchmarks/bench_*.py and rewrite BENCHMARKS.md.

Each bench module defines ``TITLE`` and ``run() -> str`` returning a Markdown section body
(tables of ratios measured in one run; see STYLE: numbers as ratios against an anchor).
``python benchmarks/run.py [NAME ...]`` runs only the named modules and keeps the other
sections of BENCHMARKS.md as they were (the header names them); with no names (``make bench``) the
file holds only what this run wrote. Every section's last line gives its run time and date; the
header gives the commit, machine, package versions, start and end of the run and the failures.
The design-notes section is not a benchmark: it is copied from ``benchmarks/design_notes.md`` and
says so in its title. A failing section is written as FAILED, the others still run, and the exit
status is 1.
"""
from __future__ import annotations

import importlib.util
import logging
import platform
import os
import re
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUT = HERE.parent / "BENCHMARKS.md"
NOTES = HERE / "design_notes.md"
NOTES_KEY = "design_notes"


def _modules(only: list[str]) -> list[Path]:
    paths = sorted(HERE.glob("bench_*.py"))
    if only:
        paths = [p for p in paths if p.stem.removeprefix("bench_") in only or p.stem in only]
    return paths


def _load(path: Path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(HERE))
    sys.modules[path.stem] = module  # dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    return module


def _existing_sections() -> dict[str, str]:
    if not OUT.exists():
        return {}
    sections = {}
    for match in re.finditer(r"<!-- bench:(\w+) -->\n(.*?)<!-- /bench:\1 -->", OUT.read_text(), re.S):
        sections[match.group(1)] = match.group(2)
    return sections


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    started, clock = time.time(), time.perf_counter()
    sections, failed, ran = {}, [], []
    for path in _modules(argv):
        name = path.stem.removeprefix("bench_")
        print(f"== {name}", file=sys.stderr, flush=True)
        ran.append(name)
        start = time.perf_counter()
        try:
            module = _load(path)
            body = module.run()
            sections[name] = f"## {module.TITLE}\n\n{body.strip()}\n\n_{time.perf_counter() - start:.0f} s, " \
                             f"{_stamp(time.time())}, `python benchmarks/run.py {name}`_\n\n"
        except Exception as exc:  # one failing benchmark must not hide the others
            logging.exception("benchmark %s failed", name)
            failed.append(name)
            sections[name] = f"## {name}\n\nFAILED in the run of {_stamp(time.time())}: {type(exc).__name__}: {exc}\n\n"
    sections[NOTES_KEY] = _design_notes()
    kept = {} if not argv else {k: v for k, v in _existing_sections().items() if k not in sections}
    # a whole run (no names) writes only what it ran: a section of a removed benchmark does not linger
    sections = kept | sections
    header = _header(argv, started, time.perf_counter() - clock, ran, failed, sorted(kept))
    body = "".join(f"<!-- bench:{k} -->\n{v}<!-- /bench:{k} -->\n" for k, v in sorted(sections.items()))
    OUT.write_text(header + body)
    if failed:
        print(f"benchmarks failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


def _stamp(seconds: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(seconds))


def _header(argv: list[str], started: float, wall: float, ran: list[str], failed: list[str],
            kept: list[str]) -> str:
    """Where, when and how the file was written: every statement in it is taken from this run."""
    command = " ".join(["python benchmarks/run.py", *argv])
    scope = (f"all {len(ran)} benchmark sections in one run" if not argv else
             f"the sections {', '.join(ran)}; the others ({', '.join(kept) or 'none'}) are kept from earlier "
             "runs (each one's last line gives its duration and, where recorded, its date)")
    outcome = f"{len(failed)} failed ({', '.join(failed)})" if failed else "none failed"
    return (
        f"# Benchmarks\n\nWritten by `{command}` (`make bench` runs it with no names) from "
        f"{_stamp(started)} to {_stamp(started + wall)} ({wall:.0f} s): {scope}; {outcome}, exit status "
        f"{1 if failed else 0}. Code: {_git_commit()}. Machine: {_cpu_model()}, {os.cpu_count()} CPUs, "
        f"1-minute load average {os.getloadavg()[0]:.1f} at the end. {_versions()}. Each section states "
        "how its timings and memory figures were made (which runs were alternated, how many, in which "
        "processes); compare the ratios, not the absolute times.\n\n"
    )


def _git_commit() -> str:
    """The commit the benchmarks ran at, and whether the tree had uncommitted changes."""
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=HERE, capture_output=True,
                                text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=HERE,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "not a git checkout"
    # BENCHMARKS.md itself and the plots the run writes are not the code that ran
    changed = [line[3:] for line in dirty.splitlines() if not line[3:].startswith(("BENCHMARKS.md", "benchmarks/compression_curve"))]
    return f"commit {commit}" + (f" with uncommitted changes to {len(changed)} file(s)" if changed else "")


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _versions() -> str:
    from importlib.metadata import PackageNotFoundError, version

    found = []
    for package in ("onnxruntime", "onnx", "numpy", "onnx-graphsurgeon"):
        try:
            found.append(f"{package} {version(package)}")
        except PackageNotFoundError:
            found.append(f"{package} missing")
    return f"Python {platform.python_version()}, " + ", ".join(found)


def _design_notes() -> str:
    """The design-notes section, copied from benchmarks/design_notes.md: numbers quoted by module
    docstrings, measured during development; its title says that make bench does not re-run them."""
    return NOTES.read_text().strip() + "\n\n"


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
