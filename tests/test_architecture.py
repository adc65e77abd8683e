"""The import graph of graphc points one way (docs/writing-a-pass.md, ARCHITECTURE.md).

Every ``import`` in graphc/ and passes/ (module level and inside functions, read with ``ast``) is
an edge between two parts of graphc: a subpackage (``graphc/ir/``), a top-level module
(``graphc/cli.py``) or ``passes`` (installed as ``graphc.passes``). The checks:

- the layer order (:data:`LAYERS`): ``errors``/``progress``/``metrics`` <- ``ir`` <-
  ``calib``/``runtime`` <- ``analysis``/``verify``/``bench``/``stats`` <- ``passmanager`` <-
  ``rewrite`` <- ``passes`` <- the package root (the public API) <- ``build``/``recipe``/``report``
  <- ``cli``; an import never points to a higher layer;
- no cycle between the parts, whatever the layers say;
- no module of one pass imports another pass's private names (``_name``) or private modules.
"""
from __future__ import annotations

import ast
from pathlib import Path

import networkx as nx
import pytest

ROOT = Path(__file__).resolve().parents[1]

#: lowest first; an import may point to its own layer or a lower one.
LAYERS = (
    ("errors", "progress", "cpu", "metrics", "version"),
    ("executor",),  # graphc/executor/: where searches run (local processes, Ray)
    ("ir",),
    ("calib", "runtime"),
    ("analysis", "verify", "bench", "stats"),
    ("passmanager",),
    ("rewrite",),
    ("passes",),
    ("graphc",),  # graphc/__init__.py: the public API (it names graphc.passes to the registry)
    ("build", "recipe", "report", "execute", "sweep"),
    ("cli",),
)
RANK = {part: rank for rank, parts in enumerate(LAYERS) for part in parts}


def source_files() -> dict[str, Path]:
    """``{dotted module name: file}`` for graphc and graphc.passes."""
    modules = {}
    for base, package in ((ROOT / "graphc", ("graphc",)), (ROOT / "passes", ("graphc", "passes"))):
        for path in base.rglob("*.py"):
            parts = package + path.relative_to(base).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            modules[".".join(parts)] = path
    return modules


def part_of(module: str) -> str:
    """The part of graphc a module belongs to (``graphc.passes.quant.rewrite`` -> ``passes``)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "graphc"


def pass_of(module: str) -> str | None:
    """The pass a module of graphc.passes belongs to (``graphc.passes.quant.rewrite`` -> ``quant``)."""
    parts = module.split(".")
    return parts[2] if len(parts) > 2 and parts[1] == "passes" else None


def imports_of(module: str, path: Path, modules: dict[str, Path]) -> list[tuple[str, str, int]]:
    """``(imported module, imported name or "", line)`` for every import in the file."""
    tree = ast.parse(path.read_text(), str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, "", node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[:len(anchor) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                if submodule in modules:  # `from package import module`
                    found.append((submodule, "", node.lineno))
                else:
                    found.append((base, alias.name, node.lineno))
    return [(target, name, line) for target, name, line in found
            if target == "graphc" or target.startswith("graphc.")]


@pytest.fixture(scope="module")
def edges() -> list[tuple[str, str, str, int]]:
    """``(importer, imported module, imported name, line)`` over graphc and graphc.passes."""
    modules = source_files()
    return [(module, target, name, line) for module, path in sorted(modules.items())
            for target, name, line in imports_of(module, path, modules)]


def test_the_walk_sees_the_whole_tree(edges):
    importers = {e[0] for e in edges}
    assert {"graphc.cli", "graphc.passes.quant", "graphc.passes.prune.allocation",
            "graphc.passmanager.registry", "graphc.rewrite.affine"} <= importers
    assert all(part_of(e[0]) in RANK for e in edges), sorted({part_of(e[0]) for e in edges} - set(RANK))


def test_imports_point_down_the_layers(edges):
    upward = [f"{importer}:{line} imports {target} ({part_of(importer)} -> {part_of(target)})"
              for importer, target, _, line in edges
              if RANK[part_of(target)] > RANK[part_of(importer)]]
    assert not upward, "\n".join(upward)


def test_no_cycle_between_parts(edges):
    graph = nx.DiGraph()
    graph.add_edges_from((part_of(importer), part_of(target)) for importer, target, _, _ in edges
                         if part_of(importer) != part_of(target))
    cycles = list(nx.simple_cycles(graph))
    assert not cycles, f"import cycles between parts of graphc: {cycles}"


def test_no_pass_imports_another_pass_s_private_names(edges):
    private = []
    for importer, target, name, line in edges:
        mine, theirs = pass_of(importer), pass_of(target)
        if mine is None or theirs is None or mine == theirs:
            continue
        hidden = [p for p in target.split(".")[2:] + [name] if p.startswith("_")]
        if hidden:
            private.append(f"{importer}:{line} imports {target} {name}".rstrip())
    assert not private, "\n".join(private)


def test_no_file_directly_in_passes_is_private():
    assert [p.name for p in (ROOT / "passes").glob("_*.py") if p.name != "__init__.py"] == []


def test_analysis_holds_analyses_only():
    assert not {"budget", "importance", "sensitivity", "reconstruct"} & {
        p.stem for p in (ROOT / "graphc" / "analysis").glob("*.py")}


def test_function_level_imports_say_why():
    """An import inside a function hides a dependency; each says why it is there (start-up time,
    an optional package, a cycle inside one package) in a comment on its line or above its block."""
    silent = []
    for module, path in sorted(source_files().items()):
        lines = path.read_text().split("\n")
        local = {n.lineno - 1 for fn in ast.walk(ast.parse("\n".join(lines)))
                 if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef))
                 for n in ast.walk(fn) if isinstance(n, (ast.Import, ast.ImportFrom))}
        for i in sorted(local):
            first = i
            while first - 1 in local:
                first -= 1
            if "#" not in lines[i] and not lines[first - 1].strip().startswith("#"):
                silent.append(f"{path.relative_to(ROOT)}:{i + 1}: {lines[i].strip()}")
    assert not silent, "\n".join(silent)
