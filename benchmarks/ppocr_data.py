"""Calibration and evaluation inputs for the PP-OCR models, rendered with Pillow.

No image files ship with rapidocr-onnxruntime, so the benchmarks draw their own: text pages
(several lines of mixed-size Latin text and digits on tinted, noisy backgrounds) for the detector,
and single text lines (some turned by 180 degrees, for the direction classifier) for the
recognizer and the classifier. Each image then goes through the preprocessing code that ships with
the models in rapidocr-onnxruntime (``DetPreProcess``, ``TextRecognizer.resize_norm_img``,
``TextClassifier.resize_norm_img``), so the feeds are what the models see in production:
BGR pixels, ``(x / 255 - 0.5) / 0.5``, NCHW.

Detector feeds vary in shape (pages of several aspect ratios, resized to a multiple of 32 with
the longer side at most ``det_side``), which is what the streaming calibrator has to cope with.
Everything is seeded: the same ``seed`` gives the same feeds.
"""
from __future__ import annotations

import string
from pathlib import Path
from types import SimpleNamespace

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

_FONT_DIRS = (Path("/usr/share/fonts"), Path("/usr/local/share/fonts"), Path("/Library/Fonts"))
_ALPHABET = string.ascii_letters + string.digits + "      .,:-/()%$#"


def _fonts() -> list[Path]:
    found = []
    for folder in _FONT_DIRS:
        if folder.is_dir():
            found.extend(sorted(folder.rglob("*.ttf"))[:12])
    return found


_FONT_FILES = _fonts()


def _font(rng: np.random.Generator, size: int) -> ImageFont.ImageFont:
    if _FONT_FILES:
        return ImageFont.truetype(str(_FONT_FILES[rng.integers(len(_FONT_FILES))]), size)
    return ImageFont.load_default(size=size)  # Pillow's built-in scalable font


def _text(rng: np.random.Generator, low: int, high: int) -> str:
    n = int(rng.integers(low, high))
    return "".join(_ALPHABET[i] for i in rng.integers(len(_ALPHABET), size=n)).strip() or "graphc"


def _background(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    base = rng.integers(150, 256, size=3)
    noise = rng.normal(0, rng.uniform(2, 12), size=(height, width, 1))
    pixels = np.clip(base[None, None, :] + noise, 0, 255).astype(np.uint8)
    return Image.fromarray(pixels, "RGB")


def _ink(rng: np.random.Generator) -> tuple[int, int, int]:
    return tuple(int(v) for v in rng.integers(0, 110, size=3))


def render_page(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """A page of text lines, as a BGR uint8 array (what cv2.imread would give)."""
    img = _background(rng, width, height)
    draw = ImageDraw.Draw(img)
    y = int(rng.integers(4, 20))
    while y < height - 16:
        size = int(rng.integers(14, 40))
        x = int(rng.integers(4, max(5, width // 4)))
        draw.text((x, y), _text(rng, 4, 40), font=_font(rng, size), fill=_ink(rng))
        y += size + int(rng.integers(4, 30))
    if rng.random() < 0.3:
        img = img.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.0)))
    return np.ascontiguousarray(np.asarray(img)[:, :, ::-1])


def render_line(rng: np.random.Generator, flipped: bool = False) -> np.ndarray:
    """One text line cropped tightly, as a BGR uint8 array; ``flipped`` turns it by 180 degrees."""
    return render_line_text(rng, flipped)[0]


def render_line_text(rng: np.random.Generator, flipped: bool = False) -> tuple[np.ndarray, str]:
    """:func:`render_line` and the text drawn on it (the same draws from ``rng``)."""
    size = int(rng.integers(20, 44))
    font = _font(rng, size)
    text = _text(rng, 3, 24)
    left, top, right, bottom = font.getbbox(text)
    pad = int(rng.integers(2, 8))
    width, height = right - left + 2 * pad, bottom - top + 2 * pad
    img = _background(rng, max(width, 8), max(height, 8))
    ImageDraw.Draw(img).text((pad - left, pad - top), text, font=font, fill=_ink(rng))
    if flipped:
        img = img.rotate(180)
    return np.ascontiguousarray(np.asarray(img)[:, :, ::-1]), text


# ---------------------------------------------------------------------------------------------
# the models' own preprocessing (rapidocr-onnxruntime)


def det_feed(page: np.ndarray, side: int) -> np.ndarray:
    from rapidocr_onnxruntime.ch_ppocr_det.utils import DetPreProcess

    return DetPreProcess(limit_side_len=side, limit_type="max")(page)


def rec_feed(line: np.ndarray, shape=(3, 48, 320)) -> np.ndarray:
    from rapidocr_onnxruntime.ch_ppocr_rec.text_recognize import TextRecognizer

    me = SimpleNamespace(rec_image_shape=list(shape))
    max_wh_ratio = shape[2] / shape[1]
    return TextRecognizer.resize_norm_img(me, line, max_wh_ratio)[None].astype(np.float32)


def cls_feed(line: np.ndarray, shape=(3, 48, 192)) -> np.ndarray:
    from rapidocr_onnxruntime.ch_ppocr_cls.text_cls import TextClassifier

    me = SimpleNamespace(cls_image_shape=list(shape))
    return TextClassifier.resize_norm_img(me, line)[None].astype(np.float32)


_PAGE_SIZES = ((640, 480), (480, 640), (640, 360), (512, 512), (800, 320))


def feeds(kind: str, n: int, seed: int = 0, det_side: int = 640) -> list[dict[str, np.ndarray]]:
    """``n`` input feeds ``{"x": array}`` for the PP-OCR model ``kind`` (det, rec or cls)."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        if kind == "det":
            width, height = _PAGE_SIZES[i % len(_PAGE_SIZES)]
            x = det_feed(render_page(rng, width, height), det_side)
        elif kind == "rec":
            x = rec_feed(render_line(rng))
        elif kind == "cls":
            x = cls_feed(render_line(rng, flipped=bool(i % 2)))
        else:
            raise ValueError(f"unknown PP-OCR model kind '{kind}'")
        out.append({"x": x})
    return out


def rec_lines(n: int, seed: int = 0) -> list[tuple[dict[str, np.ndarray], str]]:
    """``feeds("rec", n, seed)`` with the text of each line: ``[({"x": array}, text), ...]``."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        line, text = render_line_text(rng)
        out.append(({"x": rec_feed(line)}, text))
    return out


def save_images(kind: str, n: int, folder: Path, seed: int = 0, det_side: int = 640) -> Path:
    """Write ``n`` rendered images as PNG (for the CLI's image-folder calibration). Det pages are
    stored at the size the detector's preprocessing resizes them to (multiples of 32, longer side
    at most ``det_side``), so normalization is all that is left to do."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        if kind == "det":
            from rapidocr_onnxruntime.ch_ppocr_det.utils import DetPreProcess

            width, height = _PAGE_SIZES[i % len(_PAGE_SIZES)]
            bgr = DetPreProcess(limit_side_len=det_side, limit_type="max").resize(render_page(rng, width, height))
        else:
            bgr = render_line(rng, flipped=kind == "cls" and bool(i % 2))
        Image.fromarray(bgr[:, :, ::-1]).save(folder / f"{kind}_{i:04d}.png")
    return folder
