"""Fetch a PP-OCR model and render data for it: the inputs of docs/tutorial.md and docs/ci/.

    python docs/examples/ppocr.py model det det.onnx       # copy the model rapidocr-onnxruntime ships
    python docs/examples/ppocr.py images det pages --n 8   # folder of PNG text pages
    python docs/examples/ppocr.py data det calib --n 8     # folder of .npz feeds (preprocessed pages)
    python docs/examples/ppocr.py data cls eval.npz --n 32 # .npz: x (one feed per entry) and labels

The images are rendered with Pillow by ``benchmarks/ppocr_data.py``; ``data`` also preprocesses
them as PP-OCR does in production (BGR, ``(x / 255 - 0.5) / 0.5``, NCHW). For ``cls`` every other line is turned by 180 degrees and ``labels``
holds the class the model should answer (0: upright, 1: turned), so graphc can report accuracy.
"""
from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
NAMES = {"det": "ch_PP-OCRv4_det_infer.onnx", "rec": "ch_PP-OCRv4_rec_infer.onnx",
         "cls": "ch_ppocr_mobile_v2.0_cls_infer.onnx"}


def model_path(kind: str) -> Path:
    import rapidocr_onnxruntime

    return Path(rapidocr_onnxruntime.__file__).parent / "models" / NAMES[kind]


def write_data(kind: str, out: Path, n: int, side: int, seed: int) -> None:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import ppocr_data

    feeds = ppocr_data.feeds(kind, n, seed=seed, det_side=side)
    if kind == "det":  # page shapes differ: one .npz per feed
        out.mkdir(parents=True, exist_ok=True)
        for i, feed in enumerate(feeds):
            np.savez(out / f"{i:04d}.npz", **feed)
        return
    x = np.stack([f["x"] for f in feeds])
    labels = np.arange(n) % 2 if kind == "cls" else np.zeros(0, dtype=np.int64)
    np.savez(out, x=x, **({"labels": labels} if kind == "cls" else {}))


def write_images(kind: str, out: Path, n: int, seed: int) -> None:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import ppocr_data

    ppocr_data.save_images(kind, n, out, seed=seed)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    m = sub.add_parser("model", help="copy a PP-OCR model")
    m.add_argument("kind", choices=NAMES)
    m.add_argument("out", type=Path)
    d = sub.add_parser("data", help="render inputs")
    d.add_argument("kind", choices=NAMES)
    d.add_argument("out", type=Path)
    d.add_argument("--n", type=int, default=16, help="number of feeds")
    d.add_argument("--side", type=int, default=640, help="det: longest page side (a multiple of 32)")
    d.add_argument("--seed", type=int, default=0)
    i = sub.add_parser("images", help="render PNG images")
    i.add_argument("kind", choices=NAMES)
    i.add_argument("out", type=Path)
    i.add_argument("--n", type=int, default=16, help="number of images")
    i.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.what == "model":
        shutil.copyfile(model_path(args.kind), args.out)
    elif args.what == "images":
        write_images(args.kind, args.out, args.n, args.seed)
    else:
        write_data(args.kind, args.out, args.n, args.side, args.seed)


if __name__ == "__main__":
    main()
