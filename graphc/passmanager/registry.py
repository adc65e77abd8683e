"""The pass registry, filled by the ``@register_pass`` decorator.

Passes are found in the packages named by :func:`add_pass_package` (``graphc`` names its built-in
``graphc.passes``; the pass manager sits below the passes and never imports them): every module
and subpackage there is imported on the first lookup, so adding a pass is adding a module or a
package.
"""
from __future__ import annotations

import importlib
import pkgutil

from graphc.errors import PipelineError
from graphc.passmanager.base import Pass
from graphc.passmanager.options import did_you_mean

_REGISTRY: dict[str, type[Pass]] = {}
_PACKAGES: list[str] = []
_loaded: set[str] = set()


def register_pass(cls: type[Pass]) -> type[Pass]:
    """Class decorator: make ``cls`` available to pipelines under ``cls.name``."""
    if not cls.name:
        raise TypeError(f"{cls.__name__} has no name")
    existing = _REGISTRY.get(cls.name)
    if existing is not None and existing is not cls and existing.__qualname__ != cls.__qualname__:
        raise TypeError(f"pass name '{cls.name}' is taken by {existing.__qualname__}")
    _REGISTRY[cls.name] = cls
    return cls


def add_pass_package(name: str) -> None:
    """Look for passes in package ``name`` (its modules and subpackages are imported on the first
    registry lookup)."""
    if name not in _PACKAGES:
        _PACKAGES.append(name)


def _load_builtins() -> None:
    for name in [p for p in _PACKAGES if p not in _loaded]:
        _loaded.add(name)
        package = importlib.import_module(name)
        for info in pkgutil.iter_modules(package.__path__):
            if not info.name.startswith("_"):
                importlib.import_module(f"{name}.{info.name}")


def get_pass(name: str) -> type[Pass]:
    _load_builtins()
    cls = _REGISTRY.get(name)
    if cls is None:
        hint = did_you_mean(name, sorted(_REGISTRY))
        raise PipelineError(f"unknown pass '{name}'{hint}; `graphc passes` lists them")
    return cls


def all_passes() -> list[type[Pass]]:
    _load_builtins()
    return [_REGISTRY[k] for k in sorted(_REGISTRY)]
