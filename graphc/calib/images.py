"""Image folders as calibration and evaluation data, preprocessed with Pillow.

``ImageFolderSource(folder, specs, options)`` yields one feed per image file (sorted by name) for
a single-input model. Each image goes through :class:`ImageOptions`, in this order:

1. decode with Pillow, convert to RGB (or L for a one-channel input), optionally swap to BGR;
2. resize (bilinear): to ``size`` (H, W); or keeping the aspect ratio to ``height``, the width
   rounded up and capped at ``max_width``, then padded on the right to ``max_width`` when ``pad``
   (PaddleOCR's text-line preprocessing); or, with neither, to the model's static H and W if it
   declares them, else not at all (inputs of varying size for dynamic models);
3. ``(pixel * scale - mean) / std`` per channel, in float32;
4. channels first (``nchw``) or last (``nhwc``), with a batch axis of 1. Padding is zeros after
   normalization, as in PaddleOCR.

Only one image is decoded at a time; the folder is listed once.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from graphc.calib.data import IMAGE_SUFFIXES, DataSource, Feed, InputSpec, _check_feed
from graphc.errors import DataError


@dataclass(frozen=True)
class ImageOptions:
    """How an image becomes a model input (see the module doc for the order of the steps)."""

    size: tuple[int, int] | None = None      # (height, width): resize to exactly this
    height: int | None = None                # keep aspect: resize to this height ...
    max_width: int | None = None             # ... with the width capped here
    pad: bool = True                         # keep aspect: pad the width to max_width
    mean: tuple[float, ...] = (0.0, 0.0, 0.0)
    std: tuple[float, ...] = (1.0, 1.0, 1.0)
    scale: float = 1.0 / 255.0
    layout: str = "nchw"                     # nchw | nhwc
    channels: str = "rgb"                    # rgb | bgr (order of the colour channels)

    def __post_init__(self):
        if self.layout not in ("nchw", "nhwc"):
            raise DataError(f"image layout must be nchw or nhwc, not '{self.layout}'")
        if self.channels not in ("rgb", "bgr"):
            raise DataError(f"image channel order must be rgb or bgr, not '{self.channels}'")
        if self.size is not None and (self.height is not None or self.max_width is not None):
            raise DataError("give either an image size (HxW) or a height with a max width, not both")
        if self.size is not None and (len(self.size) != 2 or min(self.size) <= 0):
            raise DataError(f"image size must be two positive numbers, got {self.size}")
        if self.height is not None and self.height <= 0:
            raise DataError(f"image height must be positive, got {self.height}")
        if self.max_width is not None and self.max_width <= 0:
            raise DataError(f"image max width must be positive, got {self.max_width}")
        if any(s == 0 for s in self.std):
            raise DataError("image std must not contain 0")

    @staticmethod
    def parse_size(text: str) -> tuple[int, int]:
        """``"48x320"`` -> (48, 320)."""
        parts = text.lower().replace("*", "x").split("x")
        try:
            h, w = (int(p) for p in parts)
        except ValueError:
            raise DataError(f"image size must look like HxW (48x320), got '{text}'") from None
        return h, w


class ImageFolderSource(DataSource):
    """One feed per image in ``folder`` (sorted by file name) for a single-input model."""

    def __init__(self, folder, specs: list[InputSpec], options: ImageOptions | None = None):
        self.folder = Path(folder)
        self.specs = specs
        self.options = options or ImageOptions()
        self.description = f"{folder} (images)"
        if len(specs) != 1:
            raise DataError(f"{folder}: image folders need a single-input model (it has {len(specs)})")
        self.spec = specs[0]
        if self.spec.shape and len(self.spec.shape) != 4:
            raise DataError(f"{folder}: image input '{self.spec.name}' must have rank 4, "
                            f"it has shape {self.spec.shape}")
        self.files = sorted(p for p in self.folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not self.files:
            raise DataError(f"{folder}: no images ({', '.join(IMAGE_SUFFIXES)})")

    def __len__(self) -> int:
        return len(self.files)

    def __iter__(self) -> Iterator[Feed]:
        for path in self.files:
            array = load_image(path, self.options, self._declared())
            yield _check_feed({self.spec.name: array}, self.specs, str(path))

    def _declared(self) -> tuple:
        """(channels, height, width) the model declares (None where dynamic)."""
        shape = self.spec.shape or (None, None, None, None)
        if self.options.layout == "nchw":
            return shape[1], shape[2], shape[3]
        return shape[3], shape[1], shape[2]


def load_image(path, options: ImageOptions, declared: tuple = (None, None, None)) -> np.ndarray:
    """The model input for one image file: float32, batch of one, in ``options.layout``."""
    # lazy: Pillow loads only for image data
    from PIL import Image, UnidentifiedImageError

    channels, dh, dw = declared
    try:
        with Image.open(path) as img:
            img = img.convert("L" if channels == 1 else "RGB")
            img = _resized(img, options, dh, dw)
            pixels = np.asarray(img, dtype=np.float32)
    except (UnidentifiedImageError, OSError) as exc:
        raise DataError(f"{path}: cannot read image ({exc})") from None
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    elif options.channels == "bgr":
        pixels = pixels[:, :, ::-1]
    array = _normalized(pixels, options)
    if options.height is not None and options.max_width is not None and options.pad:
        array = _padded(array, options.max_width)
    array = np.transpose(array, (2, 0, 1)) if options.layout == "nchw" else array
    return np.ascontiguousarray(array[None], dtype=np.float32)


def _resized(img, options: ImageOptions, dh, dw):
    # lazy: Pillow loads only for image data
    from PIL import Image

    w, h = img.size
    if options.size is not None:
        target = (options.size[1], options.size[0])
    elif options.height is not None:
        width = math.ceil(w * options.height / h)
        if options.max_width is not None:
            width = min(width, options.max_width)
        target = (max(1, width), options.height)
    elif isinstance(dh, int) and isinstance(dw, int):
        target = (dw, dh)
    else:
        return img
    return img.resize(target, Image.BILINEAR) if target != (w, h) else img


def _normalized(pixels: np.ndarray, options: ImageOptions) -> np.ndarray:
    c = pixels.shape[2]
    mean = np.asarray(options.mean, dtype=np.float32)
    std = np.asarray(options.std, dtype=np.float32)
    if mean.size not in (1, c) or std.size not in (1, c):
        raise DataError(f"image mean/std have {mean.size}/{std.size} values for {c} channel(s)")
    return (pixels * np.float32(options.scale) - mean) / std


def _padded(array: np.ndarray, width: int) -> np.ndarray:
    if array.shape[1] >= width:
        return array
    out = np.zeros((array.shape[0], width, array.shape[2]), dtype=np.float32)
    out[:, :array.shape[1]] = array
    return out
