"""Typed pass options: frozen dataclasses whose fields declare type, default, doc and range.

    @dataclass(frozen=True)
    class Options:
        ratio: float = option(0.5, "fraction of channels removed per group", min=0.0, max=1.0)
        criterion: str = option("l1", "channel importance", choices=("l1", "l2"))
        ignore: tuple[str, ...] = option((), "node name patterns left alone")

Pipeline text spells an option as ``key=value``; option names use dashes (``round-to``) for
fields with underscores (``round_to``). Values parse by the field's annotated type: bool
(true/false), int, float, str, tuple[str, ...] / tuple[int, ...] / tuple[float, ...]
(comma-separated), and ``X | None`` (``none`` for None). An option whose text needs more than its
type says (``round-to``: ``auto`` or an integer, declared ``int | str``) gives a ``parse`` hook,
``text -> value`` raising ValueError; the value is then what the pass reads, unchanged.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from dataclasses import MISSING, dataclass
from typing import Any, Callable

from graphc.errors import OptionError


def option(default: Any, doc: str, *, min: float | None = None, max: float | None = None,
           choices: tuple | None = None, parse: Callable[[str], Any] | None = None) -> Any:
    """Declare an option field with its doc, range and allowed values; ``parse`` turns pipeline
    text into the declared type where the type alone cannot (ValueError for bad text)."""
    meta = {"doc": doc, "min": min, "max": max, "choices": choices, "parse": parse}
    if isinstance(default, (list, dict, set)):
        raise TypeError("option defaults must be immutable (use a tuple)")
    return dataclasses.field(default=default, metadata=meta)


@dataclass(frozen=True)
class NoOptions:
    """A pass without options."""


@dataclass(frozen=True)
class OptionSpec:
    """One option as the CLI and docs see it."""

    key: str          # pipeline spelling, with dashes
    field: str        # dataclass field name
    type: Any
    default: Any
    doc: str
    min: float | None
    max: float | None
    choices: tuple | None
    parse: Callable[[str], Any] | None = None

    @property
    def type_name(self) -> str:
        return _type_name(self.type)


def option_specs(options_cls: type) -> list[OptionSpec]:
    hints = typing.get_type_hints(options_cls)
    specs = []
    for f in dataclasses.fields(options_cls):
        meta = f.metadata or {}
        default = f.default if f.default is not MISSING else None
        specs.append(OptionSpec(
            key=f.name.replace("_", "-"), field=f.name, type=hints[f.name], default=default,
            doc=meta.get("doc", ""), min=meta.get("min"), max=meta.get("max"),
            choices=meta.get("choices"), parse=meta.get("parse"),
        ))
    return specs


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is tuple:
        return f"list of {_type_name(typing.get_args(tp)[0])}"
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        names = [_type_name(a) for a in args if a is not type(None)]
        return " or ".join(names + (["none"] if type(None) in args else []))
    return getattr(tp, "__name__", str(tp))


def parse_value(spec: OptionSpec, text: str, pass_name: str) -> Any:
    """Convert pipeline text to the option's type (or by its ``parse`` hook) and check its range."""
    where = f"{pass_name}{{{spec.key}}}"
    if spec.parse is not None:
        try:
            value = spec.parse(text.strip())
        except ValueError as exc:
            raise OptionError(f"{where}: {exc}") from None
    else:
        value = _convert(spec.type, text.strip(), where)
    check_value(spec, value, pass_name)
    return value


def _convert(tp: Any, text: str, where: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if text.lower() == "none":
            return None
        inner = [a for a in args if a is not type(None)][0]
        return _convert(inner, text, where)
    if origin is tuple:
        items = [t.strip() for t in text.split(",") if t.strip()]
        return tuple(_convert(args[0], t, where) for t in items)
    if tp is bool:
        lowered = text.lower()
        if lowered in ("true", "1", "yes", "on"):
            return True
        if lowered in ("false", "0", "no", "off"):
            return False
        raise OptionError(f"{where}: expected true or false, got '{text}'")
    if tp is int:
        try:
            return int(text)
        except ValueError:
            raise OptionError(f"{where}: expected an integer, got '{text}'") from None
    if tp is float:
        try:
            value = float(text)
        except ValueError:
            raise OptionError(f"{where}: expected a number, got '{text}'") from None
        if not math.isfinite(value):
            raise OptionError(f"{where}: expected a finite number, got '{text}'")
        return value
    if tp is str:
        if not text:
            raise OptionError(f"{where}: empty value")
        return text
    raise OptionError(f"{where}: unsupported option type {tp!r}")


def check_value(spec: OptionSpec, value: Any, pass_name: str) -> None:
    where = f"{pass_name}{{{spec.key}}}"
    values = value if isinstance(value, tuple) else (value,)
    for v in values:
        if v is None:
            continue
        if spec.choices is not None and v not in spec.choices:
            hint = did_you_mean(str(v), [str(c) for c in spec.choices])
            allowed = ", ".join(str(c) for c in spec.choices)
            raise OptionError(f"{where}: '{v}' is not one of {allowed}{hint}")
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            if spec.min is not None and v < spec.min:
                raise OptionError(f"{where}: {v} is below the minimum {spec.min}")
            if spec.max is not None and v > spec.max:
                raise OptionError(f"{where}: {v} is above the maximum {spec.max}")


def format_value(value: Any) -> str:
    """Canonical text of a value (inverse of parse_value)."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):
        return ",".join(format_value(v) for v in value)
    if isinstance(value, float):
        return repr(value) if not value.is_integer() else f"{value:.1f}"
    return str(value)


def did_you_mean(word: str, candidates: list[str]) -> str:
    match = difflib.get_close_matches(word, candidates, n=1, cutoff=0.6)
    return f" (did you mean '{match[0]}'?)" if match else ""


def make_options(options_cls: type, values: dict[str, str], pass_name: str) -> tuple[Any, tuple[str, ...]]:
    """Build an Options instance from ``key -> text``; returns it and the keys given explicitly."""
    specs = {s.key: s for s in option_specs(options_cls)}
    kwargs = {}
    for key, text in values.items():
        spec = specs.get(key) or specs.get(key.replace("_", "-"))
        if spec is None:
            known = sorted(specs)
            hint = did_you_mean(key, known)
            listing = f"; options are: {', '.join(known)}" if known and not hint else ""
            if not known:
                listing = "; it takes no options"
            raise OptionError(f"pass '{pass_name}' has no option '{key}'{hint}{listing}")
        kwargs[spec.field] = parse_value(spec, text, pass_name)
    try:
        instance = options_cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise OptionError(f"pass '{pass_name}': {exc}") from None
    explicit = tuple(s.key for s in specs.values() if s.field in kwargs)
    return instance, explicit


__all__ = ["option", "NoOptions", "OptionSpec", "option_specs", "parse_value", "format_value",
           "make_options", "did_you_mean"]
