"""Packaging: every package directory is installed, passes/ installs as graphc.passes."""
import importlib.util
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_package_dir_is_listed_in_pyproject():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "graphc").rglob("__init__.py")}
    found |= {".".join(("graphc",) + p.parent.relative_to(ROOT).parts) for p in (ROOT / "passes").rglob("__init__.py")}
    assert found <= listed, f"add to pyproject packages: {sorted(found - listed)}"
    assert config["package-dir"]["graphc.passes"] == "passes"


def test_passes_install_as_graphc_passes():
    spec = importlib.util.find_spec("graphc.passes")
    assert spec is not None and Path(spec.origin).parent == ROOT / "passes"


def test_console_script_declared():
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["graphc"] == "graphc.cli:main"
