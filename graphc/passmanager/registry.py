"""The pass registry, filled by the ``@register_pass`` decorator.

Built-in passes live in ``graphc.passes`` (one module per pass); they are imported on the first
lookup, so adding a pass is adding a module.
"""
from __future__ import annotations

import importlib
import pkgutil

from graphc.errors import PipelineError
from graphc.passmanager.base import Pass
from graphc.passmanager.options import did_you_mean

_REGISTRY: dict[str, type[Pass]] = {}
_builtins_loaded = False


def register_pass(cls: type[Pass]) -> type[Pass]:
    """Class decorator: make ``cls`` available to pipelines under ``cls.name``."""
    if not cls.name:
        raise TypeError(f"{cls.__name__} has no name")
    existing = _REGISTRY.get(cls.name)
    if existing is not None and existing is not cls and existing.__qualname__ != cls.__qualname__:
        raise TypeError(f"pass name '{cls.name}' is taken by {existing.__qualname__}")
    _REGISTRY[cls.name] = cls
    return cls


def _load_builtins() -> None:
    global _builtins_loaded
    if _builtins_loaded:
        return
    _builtins_loaded = True
    import graphc.passes as package

    for info in pkgutil.iter_modules(package.__path__):
        if not info.name.startswith("_"):
            importlib.import_module(f"graphc.passes.{info.name}")


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
