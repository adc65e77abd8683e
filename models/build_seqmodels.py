"""Build the two trained sequence/transformer models of issue 19 (dev-only: torch, scikit-learn).

Usage::

    python models/build_seqmodels.py [--out models/sequence/] [--only tf2onnx_digits|crnn_lines]

* ``tf2onnx_digits.onnx``: a small ViT-style digits classifier trained in torch, then written
  node by node the way tf2onnx writes a Keras/JAX model (not through torch's exporter): NHWC
  input with Transposes around the Convs, every LayerNorm decomposed into
  ReduceMean/Sub/Pow/ReduceMean/Add/Sqrt/Div/Mul/Add, GELU in its Tanh form (Pow 3), Softmax as
  ReduceMax/Sub/Exp/ReduceSum/Div, dense layers as MatMul + BiasAdd, tensors named
  ``scope/op:0``, opset 13. Data: ``tf2onnx_digits_calib.npz`` (64 training images) and
  ``tf2onnx_digits_test.npz`` (the 450 held-out digits with labels), NHWC.
* ``crnn_lines.onnx``: a CRNN text-line recognizer (Convs, a bidirectional LSTM, a
  large-vocabulary Gemm, CTC) trained on seeded synthetic lines rendered with Pillow in DejaVu
  Sans, exported by torch's TorchScript exporter (opset 17). See ``crnn_lines`` below.

Everything is seeded; torch is pinned to 2 threads. Trained weights are what matter here:
random weights lack the activation outliers and confident outputs that make int8 hard or easy.
"""
from __future__ import annotations

import argparse
import logging
import math
import time
from pathlib import Path

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper
from torch import nn

import build
from corpus_graphs import TfGraph
from graphc.metrics import ctc_greedy_decode

LOG = logging.getLogger("models.build_seqmodels")
MODELS_DIR = Path(__file__).resolve().parent / "sequence"  # not models/*.onnx: the zoo-wide tests glob those
SEED = 0

# --------------------------------------------------------------------------
# tf2onnx-style classifier
# --------------------------------------------------------------------------

DIM, HEADS, MLP, BLOCKS, TOKENS, PATCH = 128, 4, 512, 2, 16, 4
LN_EPS = 1e-6


class Block(nn.Module):
    """Pre-norm transformer block: x + Attn(LN(x)), then x + MLP(LN(x)) with tanh GELU."""

    def __init__(self):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(DIM, eps=LN_EPS), nn.LayerNorm(DIM, eps=LN_EPS)
        self.q, self.k, self.v, self.o = (nn.Linear(DIM, DIM) for _ in range(4))
        self.fc1, self.fc2 = nn.Linear(DIM, MLP), nn.Linear(MLP, DIM)

    def forward(self, x):
        n, t, _ = x.shape
        h = self.ln1(x)
        split = lambda y: y.reshape(n, t, HEADS, DIM // HEADS).transpose(1, 2)  # noqa: E731
        q, k, v = split(self.q(h)), split(self.k(h)), split(self.v(h))
        att = torch.softmax(q @ k.transpose(2, 3) * (1.0 / math.sqrt(DIM // HEADS)), dim=-1)
        x = x + self.o((att @ v).transpose(1, 2).reshape(n, t, DIM))
        return x + self.fc2(F.gelu(self.fc1(self.ln2(x)), approximate="tanh"))


class Tf2onnxDigits(nn.Module):
    """NHWC 16x16x1 digits -> class probabilities: Conv 3x3 (32) + ReLU, 4x4/4 patch Conv to
    DIM, 16 tokens + position, BLOCKS blocks, LN, mean over tokens, dense head, softmax."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 32, 3, padding=1)
        self.patch = nn.Conv2d(32, DIM, PATCH, stride=PATCH)
        self.pos = nn.Parameter(torch.randn(1, TOKENS, DIM) * 0.02)
        self.blocks = nn.ModuleList(Block() for _ in range(BLOCKS))
        self.ln = nn.LayerNorm(DIM, eps=LN_EPS)
        self.head = nn.Linear(DIM, 10)

    def logits(self, x_nchw):
        x = self.patch(F.relu(self.conv(x_nchw)))
        x = x.permute(0, 2, 3, 1).reshape(x.shape[0], TOKENS, DIM) + self.pos
        for b in self.blocks:
            x = b(x)
        return self.head(self.ln(x).mean(dim=1))

    def forward(self, x_nchw):  # training reads NCHW; the ONNX graph reads NHWC
        return self.logits(x_nchw)


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().numpy().astype(np.float32)


def _dense(lin: nn.Linear) -> tuple[np.ndarray, np.ndarray]:
    """tf2onnx's kernel [in, out] and bias of a torch Linear."""
    return _np(lin.weight).T.copy(), _np(lin.bias)


def _norm(ln: nn.LayerNorm) -> tuple[np.ndarray, np.ndarray]:
    return _np(ln.weight), _np(ln.bias)


def _conv(g: TfGraph, scope: str, x: str, conv: nn.Conv2d, **attrs) -> str:
    return g.op("Conv", f"{scope}/Conv2D", [x, g.init(f"{scope}/kernel:0", _np(conv.weight)),
                                             g.init(f"{scope}/bias:0", _np(conv.bias))], **attrs)


def _attention(g: TfGraph, scope: str, h: str, blk: Block) -> str:
    heads = []
    for name, lin in (("query", blk.q), ("key", blk.k), ("value", blk.v)):
        y = g.dense(f"{scope}/{name}", h, *_dense(lin))
        y = g.op("Reshape", f"{scope}/{name}/Reshape", [y, g.shape(f"{scope}/{name}", [-1, TOKENS, HEADS, DIM // HEADS])])
        heads.append(g.op("Transpose", f"{scope}/{name}/transpose", [y], perm=[0, 2, 1, 3]))
    q, k, v = heads
    kt = g.op("Transpose", f"{scope}/key/transpose_1", [k], perm=[0, 1, 3, 2])
    scores = g.op("MatMul", f"{scope}/einsum/MatMul", [q, kt])
    scores = g.op("Mul", f"{scope}/mul", [scores, g.const(f"{scope}/scale", 1.0 / math.sqrt(DIM // HEADS))])
    ctx = g.op("MatMul", f"{scope}/einsum_1/MatMul", [g.softmax(f"{scope}/softmax", scores), v])
    ctx = g.op("Transpose", f"{scope}/transpose", [ctx], perm=[0, 2, 1, 3])
    ctx = g.op("Reshape", f"{scope}/Reshape", [ctx, g.shape(f"{scope}/merge", [-1, TOKENS, DIM])])
    return g.dense(f"{scope}/attention_output", ctx, *_dense(blk.o))


def tf2onnx_graph(net: Tf2onnxDigits) -> onnx.ModelProto:
    """The trained classifier as tf2onnx writes it (opset 13, NHWC input ``input_image:0``)."""
    g = TfGraph()
    x = g.op("Transpose", "model/conv/Conv2D__6", ["input_image:0"], perm=[0, 3, 1, 2])
    x = g.op("Relu", "model/conv/Relu", [_conv(g, "model/conv", x, net.conv, pads=[1, 1, 1, 1], kernel_shape=[3, 3])])
    x = g.op("Transpose", "model/conv/Relu__10", [x], perm=[0, 2, 3, 1])
    x = g.op("Transpose", "model/patch/Conv2D__12", [x], perm=[0, 3, 1, 2])
    x = _conv(g, "model/patch", x, net.patch, kernel_shape=[PATCH, PATCH], strides=[PATCH, PATCH])
    x = g.op("Transpose", "model/patch/Conv2D__14", [x], perm=[0, 2, 3, 1])
    x = g.op("Reshape", "model/tokens/Reshape", [x, g.shape("model/tokens", [-1, TOKENS, DIM])])
    x = g.op("Add", "model/pos/add", [x, g.init("model/pos/embedding:0", _np(net.pos))])
    for i, blk in enumerate(net.blocks):
        s = f"model/block_{i}"
        x = g.op("Add", f"{s}/add", [x, _attention(g, f"{s}/attention", g.layer_norm(f"{s}/ln_1", x, *_norm(blk.ln1), LN_EPS), blk)])
        h = g.dense(f"{s}/mlp/dense_1", g.layer_norm(f"{s}/ln_2", x, *_norm(blk.ln2), LN_EPS), *_dense(blk.fc1))
        h = g.dense(f"{s}/mlp/dense_2", g.gelu_tanh(f"{s}/mlp/gelu", h), *_dense(blk.fc2))
        x = g.op("Add", f"{s}/add_1", [x, h])
    pooled = g.op("ReduceMean", "model/pool/Mean", [g.layer_norm("model/ln_f", x, *_norm(net.ln), LN_EPS)], axes=[1], keepdims=0)
    probs = g.softmax("model/softmax", g.dense("model/head", pooled, *_dense(net.head)))
    g.nodes.append(helper.make_node("Identity", [probs], ["probs:0"], name="Identity"))
    graph = helper.make_graph(
        g.nodes, "tf2onnx", [helper.make_tensor_value_info("input_image:0", TensorProto.FLOAT, ["unk__0", 16, 16, 1])],
        [helper.make_tensor_value_info("probs:0", TensorProto.FLOAT, ["unk__0", 10])], g.inits)
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], producer_name="tf2onnx")
    m.ir_version = 8
    onnx.checker.check_model(m, full_check=True)
    return m


def build_tf2onnx_digits(out: Path) -> None:
    torch.manual_seed(SEED)
    data = build.load_digits_split()
    net = Tf2onnxDigits()
    t0 = time.perf_counter()
    build.train(net, data, build.TrainCfg(epochs=40, lr=3e-3, weight_decay=0.02))
    LOG.info("tf2onnx_digits trained in %.0f s, torch test acc %.4f", time.perf_counter() - t0,
             build.torch_accuracy(net, data[2], data[3]))
    m = tf2onnx_graph(net)
    onnx.save(m, str(out / "tf2onnx_digits.onnx"))
    nhwc = lambda x: np.ascontiguousarray(x.transpose(0, 2, 3, 1))  # noqa: E731
    rng = np.random.default_rng(SEED)
    calib = data[0][rng.choice(len(data[0]), build.CALIB_SAMPLES, replace=False)]
    np.savez_compressed(out / "tf2onnx_digits_calib.npz", **{"input_image:0": nhwc(calib)})
    np.savez_compressed(out / "tf2onnx_digits_test.npz", **{"input_image:0": nhwc(data[2])}, labels=data[3])
    import onnxruntime as ort
    probs = ort.InferenceSession(str(out / "tf2onnx_digits.onnx"), providers=["CPUExecutionProvider"]).run(
        None, {"input_image:0": nhwc(data[2])})[0]
    with torch.no_grad():
        ref = torch.softmax(net(torch.from_numpy(data[2])), dim=-1).numpy()
    LOG.info("tf2onnx_digits: onnxruntime test acc %.4f, max |p - torch p| %.2e",
             float((probs.argmax(1) == data[3]).mean()), float(np.abs(probs - ref).max()))


# --------------------------------------------------------------------------
# CRNN recognizer on synthetic text lines
# --------------------------------------------------------------------------

FONT = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"
LINE_H, LINE_W, STEPS = 32, 128, 32
VOCAB = 3000          # CTC classes: blank + 2999 DejaVu Sans glyphs
COMMON = 62           # ASCII letters and digits: most characters of a training line
RARE_SHARE = 0.10     # the rest drawn uniformly from the whole glyph set
TRAIN_LINES, CALIB_LINES, TEST_LINES = 4000, 32, 200
BLANK_WEIGHT = 0.1


def glyphs() -> list[str]:
    """The 2999 recognized characters: ASCII letters and digits first, then the printable
    DejaVu Sans glyphs (letters, numbers, punctuation, symbols) in code-point order."""
    import unicodedata

    from fontTools.ttLib import TTFont

    common = [chr(c) for c in range(33, 127) if chr(c).isalnum()]
    cmap = TTFont(FONT).getBestCmap()
    rest = [chr(c) for c in sorted(cmap) if c > 32 and unicodedata.category(chr(c))[0] in "LNPS"
            and chr(c) not in common]
    return (common + rest)[: VOCAB - 1]


def render_lines(chars: list[str], n: int, rng: np.random.Generator) \
        -> tuple[np.ndarray, list[list[int]], np.ndarray]:
    """``n`` lines of 2-7 characters (class ids 1..VOCAB-1) as float32 [n, 1, 32, 128] in
    [-1, 1] (ink dark on white, random size 17-21 px and offsets), their class ids, and per-step
    targets [n, 32]: each character's id at the step under its centre, blank (0) elsewhere - the
    peaky alignment a CTC-trained recognizer converges to, known here because we drew the line."""
    from PIL import Image, ImageDraw, ImageFont

    fonts = {s: ImageFont.truetype(FONT, s) for s in range(17, 22)}
    images = np.empty((n, 1, LINE_H, LINE_W), np.float32)
    frames = np.zeros((n, STEPS), np.int64)
    labels = []
    for i in range(n):
        k = int(rng.integers(2, 8))
        rare = rng.random(k) < RARE_SHARE
        ids = np.where(rare, rng.integers(COMMON, len(chars), k), rng.integers(0, COMMON, k))
        font = fonts[int(rng.integers(17, 22))]
        while ids.size > 1 and font.getlength("".join(chars[j] for j in ids)) > LINE_W - 8:
            ids = ids[:-1]
        text, x0 = "".join(chars[j] for j in ids), int(rng.integers(2, 8))
        img = Image.new("L", (LINE_W, LINE_H), 255)
        ImageDraw.Draw(img).text((x0, int(rng.integers(2, 7))), text, font=font, fill=int(rng.integers(0, 60)))
        images[i, 0] = np.asarray(img, np.float32) / 127.5 - 1.0
        labels.append([int(j) + 1 for j in ids])
        step = -1
        for c in range(len(text)):  # centre of glyph c, one step per LINE_W / STEPS pixels, in order
            centre = x0 + (font.getlength(text[:c]) + font.getlength(text[:c + 1])) / 2
            step = min(max(step + 1, int(centre * STEPS / LINE_W)), STEPS - 1)
            frames[i, step] = labels[-1][c]
    return images, labels, frames


class Crnn(nn.Module):
    """[N, 1, 32, 128] -> [N, 32, VOCAB] logits: Conv-BN-ReLU x3 with pooling to [64 ch, 4 rows,
    32 steps], a bidirectional LSTM (hidden 128) over the steps, a Gemm to the vocabulary."""

    def __init__(self):
        super().__init__()
        def cbr(cin, cout):
            return [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU()]
        self.features = nn.Sequential(*cbr(1, 16), nn.MaxPool2d(2), *cbr(16, 32), nn.MaxPool2d(2),
                                      *cbr(32, 64), nn.MaxPool2d((2, 1)))
        self.lstm = nn.LSTM(256, 128, bidirectional=True)
        self.fc = nn.Linear(256, VOCAB)

    def forward(self, x):
        f = self.features(x)                            # [N, 64, 4, 32]
        n = f.shape[0]
        seq = f.reshape(n, 256, STEPS).permute(2, 0, 1)  # [T, N, 256]
        h, _ = self.lstm(seq)                            # [T, N, 256]
        h = h.transpose(0, 1).reshape(-1, 256)           # [N*T, 256]: the exporter writes a Gemm
        return self.fc(h).reshape(n, STEPS, VOCAB)


def train_crnn(net: Crnn, images: np.ndarray, frames: np.ndarray, steps: int, batch: int = 16) -> None:
    """Per-step cross-entropy against the known alignment (``render_lines``): it converges in a few
    hundred steps where CTC's own alignment search needs thousands, and the result decodes the
    CTC way (greedy: best class per step, repeats merged, blanks dropped)."""
    gen = torch.Generator().manual_seed(SEED)
    opt = torch.optim.AdamW(net.parameters(), lr=3e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps, pct_start=0.1)
    weight = torch.ones(VOCAB)
    weight[0] = BLANK_WEIGHT  # blanks are most steps: without this the net learns "all blank" first
    net.train()
    for step in range(steps):
        idx = torch.randint(0, len(images), (batch,), generator=gen).numpy()
        logits = net(torch.from_numpy(images[idx]))
        loss = F.cross_entropy(logits.reshape(-1, VOCAB), torch.from_numpy(frames[idx]).reshape(-1), weight=weight)
        opt.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(net.parameters(), 5.0)
        opt.step()
        sched.step()
        if step % 20 == 0 or step == steps - 1:
            LOG.info("  step %d/%d loss %.3f", step + 1, steps, loss.item())
    net.eval()


def build_crnn_lines(out: Path, steps: int = 300) -> None:
    torch.manual_seed(SEED)
    chars = glyphs()
    rng = np.random.default_rng(SEED)
    t0 = time.perf_counter()
    train_x, _, train_frames = render_lines(chars, TRAIN_LINES, rng)
    calib_x, _, _ = render_lines(chars, CALIB_LINES, rng)
    test_x, test_y, _ = render_lines(chars, TEST_LINES, rng)
    LOG.info("crnn_lines: rendered %d lines in %.0f s", TRAIN_LINES + CALIB_LINES + TEST_LINES, time.perf_counter() - t0)
    net = Crnn()
    t0 = time.perf_counter()
    train_crnn(net, train_x, train_frames, steps)
    LOG.info("crnn_lines trained in %.0f s", time.perf_counter() - t0)
    path = out / "crnn_lines.onnx"
    build.export_onnx(net, path, (1, LINE_H, LINE_W), 17)
    np.savez_compressed(out / "crnn_lines_calib.npz", input=calib_x)
    lengths = np.array([len(t) for t in test_y], np.int64)
    flat = np.array([c for t in test_y for c in t], np.int64)
    np.savez_compressed(out / "crnn_lines_test.npz", input=test_x, label_ids=flat, label_lengths=lengths)
    (out / "crnn_lines_vocab.txt").write_text("".join(chars) + "\n", encoding="utf-8")
    import onnxruntime as ort
    logits = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": test_x})[0]
    decoded = ctc_greedy_decode(logits)
    exact = np.mean([tuple(d) == tuple(t) for d, t in zip(decoded, test_y)])
    LOG.info("crnn_lines: held-out exact line accuracy %.3f (%d lines)", exact, TEST_LINES)


BUILDERS = {"tf2onnx_digits": build_tf2onnx_digits, "crnn_lines": build_crnn_lines}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=MODELS_DIR)
    ap.add_argument("--only", choices=sorted(BUILDERS))
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(args.threads)
    for name, fn in BUILDERS.items():
        if args.only in (None, name):
            fn(args.out)


if __name__ == "__main__":
    main()
