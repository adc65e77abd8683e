"""Recipes: a build step as one reviewed TOML file (``graphc opt model.onnx --recipe deploy.toml``).

A recipe holds the pipeline, the calibration and evaluation data, the tolerances and gates, the
benchmark settings and the outputs. Every key has a command-line twin, and flags given on the
command line override the recipe::

    pipeline = "fold-bn,cleanup,quant{calib=percentile}"
    executor = "ray"                  # --executor: where searches run (local, ray, ray://HOST:PORT)

    [data]
    calibration = "calib/"            # --data
    evaluation = "eval.npz"           # --eval-data
    labels = "eval.npz:labels"        # --labels
    input_shapes = ["x:1x3x640x640"]  # --input-shape

    [gates]
    min_sqnr = 25.0                   # --min-sqnr
    max_top1_drop = 0.01              # --max-top1-drop
    min_speedup = 1.2                 # --min-speedup

    [outputs]
    model = "out/model.int8.onnx"     # -o
    report = "out/report.html"        # --report

Sections and keys are declared once, below, as typed dataclasses (``docs/recipes.md`` lists
them); an unknown section or key, a value of the wrong type and a value out of range are errors
that name the file and the key. Relative paths are relative to the recipe's folder, so a build
runs the same from any working directory. ``dumps`` writes a recipe back (only the values that
differ from the defaults); ``loads(dumps(r)) == r``.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import tomllib
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from graphc.errors import ExecutorError, PipelineError, RecipeError
from graphc.executor import executor_from
from graphc.passmanager.options import did_you_mean, option
from graphc.passmanager.pipeline import parse_pipeline

LAYOUTS = ("nchw", "nhwc")


@dataclass(frozen=True)
class DataSettings:
    calibration: str | None = option(None, "calibration data: .npz, folder of .npy/.npz files, or images "
                                     "(--data)")
    evaluation: str | None = option(None, "evaluation data for verification, the task metric and the "
                                    "benchmark (--eval-data); default: the calibration data")
    labels: str | None = option(None, "class labels for the task metric: file.npz:key, file.npz (key "
                                "'labels') or file.npy (--labels)")
    samples: int = option(8, "evaluation samples compared by verification (--samples)", min=1)
    seed: int = option(0, "seed of random inputs when no data is given (--seed)")
    input_shapes: tuple[str, ...] = option((), "concrete shapes of dynamic inputs, NAME:DIMS "
                                           "(--input-shape)")


@dataclass(frozen=True)
class ImageSettings:
    """How a folder of images becomes model inputs (``graphc.calib.images.ImageOptions``); keys
    not given keep ImageOptions' defaults."""

    size: str | None = option(None, "resize to HxW, e.g. 224x224 (--image-size)")
    height: int | None = option(None, "or keep the aspect ratio: resize to this height (--image-height)",
                                min=1)
    max_width: int | None = option(None, "... with the width capped here (--image-max-width)", min=1)
    pad: bool | None = option(None, "pad the width to max_width (default true; --no-image-pad)")
    mean: tuple[float, ...] = option((), "per-channel mean subtracted after scaling (--mean; default 0)")
    std: tuple[float, ...] = option((), "per-channel std divided by (--std; default 1)")
    scale: float | None = option(None, "pixel scale before mean/std (--image-scale; default 1/255)")
    layout: str | None = option(None, "nchw or nhwc (--layout; default nchw)", choices=LAYOUTS)
    channels: str | None = option(None, "colour order rgb or bgr (--channels; default rgb)",
                                  choices=("rgb", "bgr"))


@dataclass(frozen=True)
class VerifySettings:
    enabled: bool = option(False, "compare the result with the input model (--verify); on whenever a "
                           "gate needs it")
    each: bool = option(False, "compare before and after every pass (--verify-each)")
    rtol: float | None = option(None, "relative tolerance of exact mode (--rtol; default 1e-5)", min=0.0)
    atol: float | None = option(None, "absolute tolerance of exact mode (--atol; default: measured per output, "
                                "4x the reference's own spread across onnxruntime optimization levels, at least 1e-6)", min=0.0)
    localize: bool = option(False, "on failure, name the first diverging node (--localize)")


@dataclass(frozen=True)
class GateSettings:
    min_sqnr: float | None = option(None, "every output's SQNR in dB at least this (--min-sqnr)")
    min_cosine: float | None = option(None, "every output's cosine similarity at least this (--min-cosine)",
                                      min=-1.0, max=1.0)
    min_top1: float | None = option(None, "top-1 agreement with the input model at least this fraction "
                                    "(--min-top1)", min=0.0, max=1.0)
    max_top1_drop: float | None = option(None, "accuracy drop (with labels) or top-1 disagreement "
                                         "(without) at most this fraction (--max-top1-drop)",
                                         min=0.0, max=1.0)
    min_speedup: float | None = option(None, "latency of the input over the result at least this "
                                       "(--min-speedup; runs the benchmark)", min=0.0)
    min_metric: float | None = option(None, "the result's task metric at least this, or at most when lower "
                                      "is better (--min-metric; needs [metric] function)")
    max_metric_drop: float | None = option(None, "the task metric lost against the input model at most this, "
                                           "in the metric's units (--max-metric-drop; needs [metric] function)",
                                           min=0.0)


@dataclass(frozen=True)
class MetricSettings:
    """The user's task metric (``graphc.verify.user_metric``)."""

    function: str | None = option(None, "package.module:function scoring the outputs, e.g. "
                                  "graphc.task_metrics:ctc_cer (--metric)")
    args: tuple[str, ...] = option((), "KEY=VALUE arguments of the metric, e.g. charset=keys.txt "
                                   "(--metric-arg)")


@dataclass(frozen=True)
class BenchSettings:
    enabled: bool = option(False, "measure the latency of the input and the result (--bench)")
    threads: int = option(2, "intra-op threads of both sessions (--bench-threads)", min=1)
    rounds: int = option(30, "alternated timed runs of each model (--bench-rounds)", min=1)
    warmup: int = option(5, "untimed runs of each model first (--bench-warmup)", min=0)


@dataclass(frozen=True)
class OutputSettings:
    model: str | None = option(None, "where the result is written (-o)")
    report: str | None = option(None, "report file: .html, .md or .json (--report)")
    keep_failed: bool = option(False, "write the model even when verification or a gate fails "
                               "(--keep-failed)")
    histograms: tuple[str, ...] = option((), "tensors whose activation histograms the report plots "
                                         "(--histogram; default: the most clipped calibrated tensors)")
    layer_errors: bool = option(True, "measure every layer's error against the input model for the "
                                "report (--no-layer-errors turns it off)")


@dataclass(frozen=True)
class LimitSettings:
    max_seconds: float | None = option(None, "wall-clock limit of each pass in seconds; a pass over it "
                                       "stops the build, nothing is written (--max-seconds)", min=0.001)


@dataclass(frozen=True)
class Recipe:
    pipeline: str | None = option(None, "the pass pipeline, e.g. 'fold-bn,cleanup' (-p)")
    executor: str | None = option(None, "where searches run (quant budget, sensitivity): local, ray or "
                                  "ray://HOST:PORT (--executor; default local processes)")
    data: DataSettings = DataSettings()
    image: ImageSettings = ImageSettings()
    verify: VerifySettings = VerifySettings()
    gates: GateSettings = GateSettings()
    metric: MetricSettings = MetricSettings()
    bench: BenchSettings = BenchSettings()
    outputs: OutputSettings = OutputSettings()
    limits: LimitSettings = LimitSettings()

    def get(self, key: str) -> Any:
        """The value at a dotted key: ``"gates.min_sqnr"``, ``"pipeline"``."""
        section, _, name = key.rpartition(".")
        return getattr(getattr(self, section) if section else self, name)

    def updated(self, values: dict[str, Any]) -> "Recipe":
        """A copy with ``{"data.samples": 4, ...}`` set (checked like file values)."""
        recipe = self
        for key, value in values.items():
            section, _, name = key.rpartition(".")
            cls = type(getattr(recipe, section)) if section else Recipe
            value = _checked(cls, _field(cls, name, key), value, key, "recipe")
            if section:
                inner = dataclasses.replace(getattr(recipe, section), **{name: value})
                recipe = dataclasses.replace(recipe, **{section: inner})
            else:
                recipe = dataclasses.replace(recipe, **{name: value})
        return recipe

    @property
    def gates_given(self) -> bool:
        return any(v is not None for v in dataclasses.astuple(self.gates))

    def rebased(self, base: str | os.PathLike, *, relative: bool = False) -> "Recipe":
        """Paths made relative to ``base`` joined (or, with ``relative``, made relative to it)."""
        changes = {}
        for key in PATH_KEYS:
            value = self.get(key)
            if value is not None:
                changes[key] = _rebase(value, Path(base), relative, labels=key == "data.labels")
        return self.updated(changes) if changes else self


#: the keys above the sections.
TOP_KEYS = ("pipeline", "executor")
#: keys whose values are paths (rebased against the recipe's folder).
PATH_KEYS = ("data.calibration", "data.evaluation", "data.labels", "outputs.model", "outputs.report")
SECTIONS: dict[str, type] = {name: tp for name, tp in typing.get_type_hints(Recipe).items()
                             if name not in TOP_KEYS}

#: every key, dotted: "pipeline", "data.calibration", ...
ALL_KEYS = [*TOP_KEYS] + [f"{name}.{f.name}" for name, cls in SECTIONS.items() for f in dataclasses.fields(cls)]


def _rebase(value: str, base: Path, relative: bool, *, labels: bool) -> str:
    key = ""
    if labels:
        head, sep, tail = value.rpartition(":")
        if sep and head.lower().endswith((".npz", ".npy")):
            value, key = head, f":{tail}"
    path = Path(value)
    if relative:
        text = os.path.relpath(path, base) if path.is_absolute() else value
    else:
        text = value if path.is_absolute() else str(base / path)
    return text + key


# -- reading ------------------------------------------------------------------------------------

def load_recipe(path: str | os.PathLike) -> Recipe:
    """Read a recipe file; relative paths in it become relative to its folder."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RecipeError(f"{path}: no such recipe") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise RecipeError(f"{path}: cannot read recipe ({exc})") from None
    return loads(text, where=str(path)).rebased(path.parent)


def loads(text: str, *, where: str = "recipe") -> Recipe:
    """A recipe from TOML text, with every key and value checked."""
    try:
        table = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise RecipeError(f"{where}: not valid TOML: {exc}") from None
    top: dict[str, Any] = {}
    for name, value in table.items():
        if name not in SECTIONS:
            top[name] = _checked(Recipe, _field(Recipe, name, name, where), value, name, where)
        elif isinstance(value, dict):
            top[name] = SECTIONS[name](**_values(SECTIONS[name], value, f"{name}.", where))
        else:
            raise RecipeError(f"{where}: '{name}' must be a table, written [{name}]")
    if "pipeline" in top:
        _check_pipeline(top["pipeline"], where)
    if top.get("executor") is not None:
        _check_executor(top["executor"], where)
    return Recipe(**top)


def _check_pipeline(text: str, where: str) -> None:
    try:
        parse_pipeline(text)
    except PipelineError as exc:
        raise RecipeError(f"{where}: pipeline: {exc}") from None


def _check_executor(text: str, where: str) -> None:
    try:
        executor_from(text)
    except ExecutorError as exc:
        raise RecipeError(f"{where}: executor: {exc}") from None


def _values(cls: type, table: dict[str, Any], prefix: str, where: str) -> dict[str, Any]:
    return {name: _checked(cls, _field(cls, name, prefix + name, where), value, prefix + name, where)
            for name, value in table.items()}


def _field(cls: type, name: str, key: str, where: str = "recipe") -> dataclasses.Field:
    fields = {f.name: f for f in dataclasses.fields(cls)}
    known = [*TOP_KEYS, *SECTIONS] if cls is Recipe else sorted(fields)
    if name not in fields or (cls is Recipe and name not in TOP_KEYS):
        prefix = key[: len(key) - len(name)]
        full = [prefix + k for k in known]
        hint = did_you_mean(key, ALL_KEYS + list(SECTIONS) if cls is Recipe else full)
        raise RecipeError(f"{where}: unknown key '{key}'{hint}; known: {', '.join(full)}")
    return fields[name]


def _checked(cls: type, spec: dataclasses.Field, value: Any, key: str, where: str) -> Any:
    value = _convert(_hints(cls)[spec.name], value, key, where)
    meta = spec.metadata or {}
    for v in value if isinstance(value, tuple) else (value,):
        _check_range(v, meta, key, where)
    return value


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _convert(tp: Any, value: Any, key: str, where: str) -> Any:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None:
            return None
        return _convert([a for a in args if a is not type(None)][0], value, key, where)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise RecipeError(f"{where}: '{key}' must be a list, got {_kind(value)}")
        return tuple(_convert(args[0], v, key, where) for v in value)
    if tp is bool and isinstance(value, bool):
        return value
    if tp is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        if not math.isfinite(value):
            raise RecipeError(f"{where}: '{key}' must be a finite number, got {value}")
        return float(value)
    if tp is str and isinstance(value, str):
        if not value.strip() and key != "pipeline":  # the pipeline parser says what a pipeline needs
            raise RecipeError(f"{where}: '{key}' is empty")
        return value
    raise RecipeError(f"{where}: '{key}' must be {_type_text(tp)}, got {_kind(value)} {value!r}")


def _check_range(value: Any, meta: dict, key: str, where: str) -> None:
    if value is None:
        return
    choices = meta.get("choices")
    if choices is not None and value not in choices:
        raise RecipeError(f"{where}: '{key}' is '{value}', not one of {', '.join(choices)}"
                          f"{did_you_mean(str(value), list(choices))}")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        low, high = meta.get("min"), meta.get("max")
        if (low is not None and value < low) or (high is not None and value > high):
            bounds = f"[{low if low is not None else '-inf'}, {high if high is not None else 'inf'}]"
            raise RecipeError(f"{where}: '{key}' is {value}, outside {bounds}")


def _type_text(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is tuple:
        inner = typing.get_args(tp)[0]
        return "a list of " + {float: "numbers", int: "integers", str: "strings"}.get(inner, str(inner))
    if origin in (typing.Union, types.UnionType):
        return _type_text([a for a in typing.get_args(tp) if a is not type(None)][0])
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(tp, str(tp))


def _kind(value: Any) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "a list",
            dict: "a table"}.get(type(value), type(value).__name__)


# -- writing ------------------------------------------------------------------------------------

def dumps(recipe: Recipe) -> str:
    """TOML text of ``recipe``: the values that differ from the defaults, one section each."""
    lines = ["# graphc recipe: graphc opt MODEL --recipe THIS_FILE (docs/recipes.md)"]
    if recipe.pipeline is not None:
        lines.append(f"pipeline = {_toml(recipe.pipeline)}")
    if recipe.executor is not None:
        lines.append(f"executor = {_toml(recipe.executor)}")
    for name, cls in SECTIONS.items():
        section, default = getattr(recipe, name), cls()
        changed = [(f.name, getattr(section, f.name)) for f in dataclasses.fields(cls)
                   if getattr(section, f.name) != getattr(default, f.name)]
        if changed:
            lines += ["", f"[{name}]"] + [f"{key} = {_toml(value)}" for key, value in changed]
    return "\n".join(lines) + "\n"


def save_recipe(recipe: Recipe, path: str | os.PathLike) -> Path:
    """Write ``recipe`` to ``path``, absolute paths made relative to its folder."""
    path = Path(path)
    text = dumps(recipe.rebased(path.parent.resolve(), relative=True))
    try:
        path.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise RecipeError(f"{path}: cannot write recipe ({exc.strerror})") from None
    return path


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)  # a valid TOML basic string
    if isinstance(value, tuple):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} to a recipe")


def key_reference() -> list[dict[str, str]]:
    """Every key with its type, default and doc, for the reference in docs/recipes.md."""
    rows = []
    for name, cls in [("", Recipe), *SECTIONS.items()]:
        hints = _hints(cls)
        for f in dataclasses.fields(cls):
            if f.name in SECTIONS:
                continue
            default = "-" if f.default in (None, ()) else _toml(f.default)
            kind = _type_text(hints[f.name]).removeprefix("a ").removeprefix("an ")
            rows.append({"key": f"{name}.{f.name}" if name else f.name, "type": kind,
                         "default": default, "doc": f.metadata["doc"]})
    return rows


# -- shared with the CLI --------------------------------------------------------------------------

def parse_input_shape(text: str) -> tuple[str, tuple[int, ...]]:
    """``name:1x3x224x224`` (the name may itself contain colons) -> (name, dims)."""
    name, sep, dims = text.rpartition(":")
    if not sep or not name or not dims:
        raise ValueError(f"'{text}' is not NAME:DIMS (e.g. x:1x3x224x224)")
    try:
        shape = tuple(int(d) for d in dims.lower().replace(",", "x").split("x"))
    except ValueError:
        raise ValueError(f"'{text}': dims must be integers separated by 'x'") from None
    if any(d < 0 for d in shape):
        raise ValueError(f"'{text}': dims must be >= 0")
    return name, shape


def input_shapes(recipe: Recipe) -> dict[str, tuple[int, ...]] | None:
    """The recipe's ``data.input_shapes`` as ``{name: dims}`` (None when there are none)."""
    try:
        pairs = [parse_input_shape(text) for text in recipe.data.input_shapes]
    except ValueError as exc:
        raise RecipeError(f"data.input_shapes: {exc}") from None
    return dict(pairs) or None
