"""Calibration and evaluation data: re-iterable sources of input feeds ``{input name: array}``.

Sources, bound to a model's inputs so arrays are checked against names, ranks and dtypes:
- ``NpzSource``: one ``.npz`` keyed by input name. An array with the input's rank is a stack of
  samples along axis 0 (fed ``batch`` at a time); one with rank + 1 holds one feed per entry.
- ``FolderSource``: a folder of ``.npy`` (single-input models) or ``.npz`` files, one feed each,
  in sorted name order; shapes may differ between files (dynamic models).
- ``RandomSource``: seeded random data matching declared shapes and dtypes.
- ``IterableSource``: any Python iterable (or callable returning one) of feed dicts.
Image folders are handled by :mod:`graphc.calib.images`. ``open_data`` picks by path.
Sources never hold more than one feed at a time beyond what the user passed in.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np
import onnx_graphsurgeon as gs

from graphc.calib.shapes import concrete_input_shapes
from graphc.errors import DataError
from graphc.ir.model import Model

log = logging.getLogger(__name__)

Feed = dict[str, np.ndarray]


@dataclass(frozen=True)
class InputSpec:
    name: str
    dtype: np.dtype
    shape: tuple  # ints for static dims, str/None for dynamic
    ranked: bool = True  # False: the model does not declare the rank (shape is then ())


def input_specs(model: Model) -> list[InputSpec]:
    specs = []
    for tensor in model.graph.inputs:
        if isinstance(tensor, gs.Constant) or tensor.name in model.input_defaults:
            continue  # an input with a default need not be fed (onnxruntime then uses the default)
        dtype = np.dtype(tensor.dtype) if tensor.dtype is not None else np.dtype(np.float32)
        shape = tuple(d if isinstance(d, int) and d >= 0 else None for d in (tensor.shape or ()))
        specs.append(InputSpec(tensor.name, dtype, shape, ranked=tensor.shape is not None))
    return specs


class DataSource:
    """Base class: iterate to get feeds; iterating again starts over."""

    description = "data"

    def __iter__(self) -> Iterator[Feed]:
        raise NotImplementedError

    def __len__(self) -> int:
        raise NotImplementedError

    def take(self, n: int | None) -> "DataSource":
        return self if n is None or n >= len(self) else _Limited(self, n)


class _Limited(DataSource):
    def __init__(self, inner: DataSource, n: int):
        self.inner, self.n = inner, n
        self.description = f"{inner.description} (first {n})"

    def __iter__(self):
        for i, feed in enumerate(self.inner):
            if i >= self.n:
                return
            yield feed

    def __len__(self):
        return min(self.n, len(self.inner))


def _check_feed(feed: Feed, specs: list[InputSpec], where: str) -> Feed:
    names = {s.name for s in specs}
    missing = names - set(feed)
    if missing:
        raise DataError(f"{where}: no data for input(s) {', '.join(sorted(missing))}")
    out = {}
    for spec in specs:
        arr = np.asarray(feed[spec.name])
        if (spec.shape or spec.ranked) and arr.ndim != len(spec.shape):
            raise DataError(f"{where}: input '{spec.name}' expects rank {len(spec.shape)}, got shape {arr.shape}")
        for i, (want, got) in enumerate(zip(spec.shape, arr.shape)):
            # a literal 0 dim (an empty tensor) is an exporter's "unknown": the data decides, and
            # graphc.calib.declared_shapes opens the declaration before anything runs the model
            if want is not None and want != got and want != 0:
                raise DataError(f"{where}: input '{spec.name}' dim {i} must be {want}, got shape {arr.shape}")
        if arr.dtype != spec.dtype:
            if not (np.issubdtype(arr.dtype, np.number) and np.issubdtype(spec.dtype, np.number)):
                raise DataError(f"{where}: input '{spec.name}' has dtype {arr.dtype}, expected {spec.dtype}")
            arr = arr.astype(spec.dtype)
        out[spec.name] = arr
    return out


class NpzSource(DataSource):
    """Each array is read per input: rank + 1 is one feed per entry, rank is a stack of samples
    fed ``batch`` at a time, and a 0-d array (for a scalar input, or an input of unknown rank) is
    the same value in every feed. The arrays that vary must agree on how many feeds they give."""

    def __init__(self, path: Path, specs: list[InputSpec], batch: int = 1):
        self.path, self.specs, self.batch = Path(path), specs, batch
        self.description = str(path)
        try:
            with np.load(self.path, allow_pickle=False) as npz:
                self._shapes = {k: npz[k].shape for k in npz.files}
        except Exception as exc:
            raise DataError(f"{path}: cannot read .npz ({exc})") from None
        for spec in specs:
            if spec.name not in self._shapes:
                raise DataError(f"{path}: no array named '{spec.name}' (has: {', '.join(self._shapes) or 'none'})")
        self._modes = {s.name: self._mode(s) for s in specs}
        counts = {s.name: self._feeds(s) for s in specs if self._modes[s.name] != "same"}
        if len(set(counts.values())) > 1:
            raise DataError(f"{path}: arrays give different numbers of feeds: "
                            + ", ".join(f"'{k}' {v}" for k, v in counts.items()))
        self._count = next(iter(counts.values()), 1)

    def _mode(self, spec: InputSpec) -> str:
        rank = len(self._shapes[spec.name])
        if rank == 0:
            return "same"
        return "per-feed" if rank == len(spec.shape) + 1 and (spec.shape or spec.ranked) else "stacked"

    def _feeds(self, spec: InputSpec) -> int:
        first = self._shapes[spec.name][0]
        return first if self._modes[spec.name] == "per-feed" else -(-first // self.batch)

    def __len__(self):
        return self._count

    def __iter__(self):
        with np.load(self.path, allow_pickle=False) as npz:
            arrays = {s.name: npz[s.name] for s in self.specs}
        for i in range(self._count):
            feed = {}
            for name, values in arrays.items():
                mode = self._modes[name]
                feed[name] = values if mode == "same" else values[i] if mode == "per-feed" \
                    else values[i * self.batch:(i + 1) * self.batch]
            yield _check_feed(feed, self.specs, f"{self.path}[{i}]")


class FolderSource(DataSource):
    def __init__(self, folder: Path, specs: list[InputSpec]):
        self.folder, self.specs = Path(folder), specs
        self.description = str(folder)
        self.files = sorted(p for p in self.folder.iterdir() if p.suffix in (".npy", ".npz"))
        if not self.files:
            raise DataError(f"{folder}: no .npy or .npz files")
        if any(p.suffix == ".npy" for p in self.files) and len(specs) != 1:
            raise DataError(f"{folder}: .npy files need a single-input model (it has {len(specs)})")

    def __len__(self):
        return len(self.files)

    def __iter__(self):
        for path in self.files:
            try:
                if path.suffix == ".npy":
                    feed = {self.specs[0].name: np.load(path, allow_pickle=False)}
                else:
                    with np.load(path, allow_pickle=False) as npz:
                        feed = {k: npz[k] for k in npz.files}
            except Exception as exc:
                raise DataError(f"{path}: cannot read ({exc})") from None
            yield _check_feed(feed, self.specs, str(path))


class RandomSource(DataSource):
    """Seeded random feeds: standard normal floats, small non-negative integers, random bools."""

    def __init__(self, specs: list[InputSpec], n: int = 8, seed: int = 0,
                 input_shapes: dict[str, tuple[int, ...]] | None = None):
        self.specs, self.n, self.seed = specs, n, seed
        self.description = f"random (seed {seed}, {n} samples)"
        concrete = concrete_input_shapes(specs, input_shapes)
        self.shapes = concrete.shapes
        if concrete.origin and concrete.origin != "--input-shape":
            self.description += f" at {concrete.origin}"
            level = logging.INFO if concrete.origin.startswith("batch 1") else logging.WARNING
            log.log(level, "random inputs at %s", concrete.origin)

    def __len__(self):
        return self.n

    def __iter__(self):
        rng = np.random.default_rng(self.seed)
        for _ in range(self.n):
            feed = {}
            for spec in self.specs:
                shape = self.shapes[spec.name]
                if np.issubdtype(spec.dtype, np.floating):
                    feed[spec.name] = rng.standard_normal(shape).astype(spec.dtype)
                elif spec.dtype == np.bool_:
                    feed[spec.name] = rng.integers(0, 2, shape).astype(np.bool_)
                else:
                    feed[spec.name] = rng.integers(0, 4, shape).astype(spec.dtype)
            yield feed


class IterableSource(DataSource):
    """Wraps a list of feeds, or a callable returning a fresh iterable each time."""

    def __init__(self, items: Iterable[Feed] | Callable[[], Iterable[Feed]], specs: list[InputSpec] | None = None):
        self._factory = items if callable(items) else None
        self._items = None if callable(items) else list(items)
        self.specs = specs
        self.description = "python iterable"

    def __len__(self):
        if self._items is not None:
            return len(self._items)
        return sum(1 for _ in self._factory())

    def __iter__(self):
        items = self._items if self._items is not None else self._factory()
        for i, feed in enumerate(items):
            yield _check_feed(feed, self.specs, f"sample {i}") if self.specs else feed


def open_data(spec: Any, model: Model, *, batch: int = 1, image_options: Any = None) -> DataSource:
    """A source for ``spec``: a DataSource, a path (.npz / folder), or an iterable of feeds."""
    specs = input_specs(model)
    if isinstance(spec, DataSource):
        return spec
    if isinstance(spec, (str, Path)):
        path = Path(spec)
        if not path.exists():
            raise DataError(f"{path}: no such file or folder")
        if path.is_file():
            if path.suffix != ".npz":
                raise DataError(f"{path}: data files must be .npz (keys = input names) or a folder")
            return NpzSource(path, specs, batch)
        if image_options is not None or _has_images(path):
            # here, not at the top: calib.images imports this module (and Pillow)
            from graphc.calib.images import ImageFolderSource

            return ImageFolderSource(path, specs, image_options)
        return FolderSource(path, specs)
    if isinstance(spec, dict):
        return IterableSource([spec], specs)
    return IterableSource(spec, specs)


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


def _has_images(folder: Path) -> bool:
    return any(p.suffix.lower() in IMAGE_SUFFIXES for p in folder.iterdir())
