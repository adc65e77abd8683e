"""Textual pipelines, MLIR style: ``fold-bn,prune{flops=0.6 criterion=l1},quant{calib=kl}``.

Grammar::

    pipeline := step ("," step)*
    step     := NAME [ "{" [ item (WS item)* ] "}" ]
    item     := KEY "=" VALUE          VALUE: no spaces or braces, or "double quoted"

Commas inside braces belong to the value (list options: ``ops=Conv,MatMul``). Parsing checks every
pass and option against the registry before any work starts. Printing gives canonical text:
explicitly set options in declaration order, values normalized; ``parse(print(p)) == p``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from graphc.errors import OptionError, PipelineError
from graphc.passmanager.base import Pass
from graphc.passmanager.options import format_value, make_options, option_specs
from graphc.passmanager.registry import get_pass

_NAME_CHARS = set("abcdefghijklmnopqrstuvwxyz0123456789-_")


@dataclass(frozen=True)
class PassSpec:
    """One step of a pipeline: the pass class and its validated options."""

    name: str
    cls: type[Pass]
    options: Any
    explicit: tuple[str, ...]  # option keys given in the text

    def instantiate(self) -> Pass:
        return self.cls(self.options)

    def text(self) -> str:
        if not self.explicit:
            return self.name
        values = {s.key: getattr(self.options, s.field) for s in option_specs(self.cls.Options)}
        items = []
        for key in (s.key for s in option_specs(self.cls.Options)):
            if key in self.explicit:
                items.append(f"{key}={_quote(format_value(values[key]))}")
        return f"{self.name}{{{' '.join(items)}}}"


def _quote(text: str) -> str:
    return f'"{text}"' if any(c in text for c in ' {}"') else text


@dataclass(frozen=True)
class Pipeline:
    steps: tuple[PassSpec, ...]
    #: what :func:`expand_preparation` inserted, one line each ("quant requires fold-bn: inserted")
    notes: tuple[str, ...] = field(default=(), compare=False)

    def text(self) -> str:
        return ",".join(step.text() for step in self.steps)

    def __str__(self) -> str:
        return self.text()

    def __len__(self) -> int:
        return len(self.steps)


class _Scanner:
    def __init__(self, text: str):
        self.text = text
        self.pos = 0

    def error(self, message: str) -> PipelineError:
        return PipelineError(f"pipeline '{self.text}': {message} at column {self.pos + 1}")

    def skip_ws(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos].isspace():
            self.pos += 1

    def peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def name(self, what: str) -> str:
        start = self.pos
        while self.pos < len(self.text) and self.text[self.pos].lower() in _NAME_CHARS:
            self.pos += 1
        if start == self.pos:
            found = f"'{self.peek()}'" if self.peek() else "end of text"
            raise self.error(f"expected a {what}, found {found}")
        return self.text[start:self.pos]

    def value(self) -> str:
        if self.peek() == '"':
            end = self.text.find('"', self.pos + 1)
            if end < 0:
                raise self.error("unterminated quoted value")
            value = self.text[self.pos + 1:end]
            self.pos = end + 1
            return value
        start = self.pos
        while self.pos < len(self.text) and not self.text[self.pos].isspace() and self.text[self.pos] not in "{}":
            self.pos += 1
        if start == self.pos:
            raise self.error("expected a value after '='")
        return self.text[start:self.pos]


def _parse_options(sc: _Scanner) -> dict[str, str]:
    items: dict[str, str] = {}
    sc.pos += 1  # '{'
    while True:
        sc.skip_ws()
        if sc.peek() == "}":
            sc.pos += 1
            return items
        if not sc.peek():
            raise sc.error("expected '}'")
        key = sc.name("option name")
        if sc.peek() != "=":
            raise sc.error(f"expected '=' after option '{key}'")
        sc.pos += 1
        if key in items:
            raise OptionError(f"pipeline '{sc.text}': option '{key}' given twice")
        items[key] = sc.value()


def parse_pipeline(text: str) -> Pipeline:
    """Parse and validate pipeline text; raises :class:`PipelineError` / :class:`OptionError`."""
    sc = _Scanner(text)
    steps = []
    while True:
        sc.skip_ws()
        name = sc.name("pass name")
        sc.skip_ws()
        raw = _parse_options(sc) if sc.peek() == "{" else {}
        cls = get_pass(name)
        options, explicit = make_options(cls.Options, raw, name)
        steps.append(PassSpec(name, cls, options, explicit))
        sc.skip_ws()
        if not sc.peek():
            break
        if sc.peek() != ",":
            raise sc.error(f"expected ',' or end of pipeline, found '{sc.peek()}'")
        sc.pos += 1
    return Pipeline(tuple(steps))


def expand_preparation(pipeline: Pipeline) -> Pipeline:
    """The pipeline with each pass's :meth:`Pass.preparation` inserted just before it, in the
    declared order, where that pass does not already run earlier (with any options). Inserted
    passes take their default options; the printed pipeline shows them like written ones."""
    steps: list[PassSpec] = []
    notes = list(pipeline.notes)
    for spec in pipeline.steps:
        missing = [name for name in spec.instantiate().preparation()
                   if name not in {s.name for s in steps}]
        for name in missing:
            cls = get_pass(name)
            steps.append(PassSpec(name, cls, cls.Options(), ()))
        if missing:
            notes.append(f"{spec.name} requires {','.join(missing)}: inserted "
                         f"({spec.name}{{prepare=false}} to leave them out)")
        steps.append(spec)
    return Pipeline(tuple(steps), tuple(notes))


def pipeline_from_passes(passes: list[Pass]) -> Pipeline:
    """A Pipeline for pass instances built in Python (every non-default option is explicit)."""
    steps = []
    for p in passes:
        default = p.Options()
        explicit = tuple(s.key for s in option_specs(p.Options)
                         if getattr(p.options, s.field) != getattr(default, s.field))
        steps.append(PassSpec(p.name, type(p), p.options, explicit))
    return Pipeline(tuple(steps))
