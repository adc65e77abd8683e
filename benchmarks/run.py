"""`make bench`: run every benchmarks/bench_*.py and rewrite BENCHMARKS.md.

Each bench module defines ``TITLE`` and ``run() -> str`` returning a Markdown section body
(tables of ratios measured in one run; see STYLE: numbers as ratios against an anchor).
``python benchmarks/run.py [NAME ...]`` runs only the named modules and keeps the other
sections of BENCHMARKS.md as they were.
"""
from __future__ import annotations

import importlib.util
import logging
import platform
import re
import sys
import time
from pathlib import Path

import onnxruntime

HERE = Path(__file__).resolve().parent
OUT = HERE.parent / "BENCHMARKS.md"


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
    sections = {}
    failed = []
    for path in _modules(argv):
        name = path.stem.removeprefix("bench_")
        print(f"== {name}", file=sys.stderr, flush=True)
        start = time.perf_counter()
        try:
            module = _load(path)
            body = module.run()
            sections[name] = f"## {module.TITLE}\n\n{body.strip()}\n\n_{time.perf_counter() - start:.0f} s, " \
                             f"`python benchmarks/run.py {name}`_\n\n"
        except Exception as exc:  # one failing benchmark must not hide the others
            logging.exception("benchmark %s failed", name)
            failed.append(name)
            sections[name] = f"## {name}\n\nFAILED in the last run: {type(exc).__name__}: {exc}\n\n"
    header = (
        "# Benchmarks\n\nWritten by `make bench` (`python benchmarks/run.py`). Machine: "
        f"{platform.processor() or platform.machine()}, Python {platform.python_version()}, "
        f"onnxruntime {onnxruntime.__version__}. Each section states how its timings and memory "
        "figures were made (which runs were alternated, how many, in which processes); compare the "
        "ratios, not the absolute times.\n\n"
    )
    # read the file again only now: a section another run wrote meanwhile is kept
    sections = _existing_sections() | sections
    body = "".join(f"<!-- bench:{k} -->\n{v}<!-- /bench:{k} -->\n" for k, v in sorted(sections.items()))
    OUT.write_text(header + body)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
