"""Build the graphc reference model zoo (dev-only: needs torch and scikit-learn).

Usage::

    python models/build.py [--out models/] [--only NAME]

Every model is built with PyTorch, (optionally) trained on scikit-learn's
bundled ``digits`` data set (no download), and exported with the TorchScript
ONNX exporter (``torch.onnx.export(..., dynamo=False)``).  The export uses
``training=TrainingMode.PRESERVE`` on a model in ``eval()`` mode: that keeps
BatchNormalization nodes in the graph (``TrainingMode.EVAL`` would let the
exporter fuse Conv+BN itself) while still constant-folding shape arithmetic.
After export the graphs are normalised: ``Constant`` nodes become
initializers and ``Identity`` nodes that alias an initializer (the exporter
de-duplicates equal tensors such as zero BN means) are replaced by a copy.

Digits preprocessing (shared by every trained model and ``digits_*.npz``):
8x8 images with values 0..16 are divided by 16, upsampled 2x by pixel
repetition (nearest) to 16x16 and mapped to [-1, 1] via ``x * 2 - 1``;
tensor layout is ``N x 1 x 16 x 16`` float32.  The split is a stratified
75/25 train/test split with ``random_state=0``.

Everything is seeded; results are reproducible for a given torch build and
thread count (the script pins torch to 2 threads).
"""

from __future__ import annotations

import argparse
import logging
import math
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torch.nn.functional as F
from onnx import numpy_helper
from torch import nn

LOG = logging.getLogger("models.build")
SEED = 0
DIGITS_HW = 16
NUM_CLASSES = 10
CALIB_SAMPLES = 64
MODELS_DIR = Path(__file__).resolve().parent


# --------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------


def preprocess_digits(images: np.ndarray) -> np.ndarray:
    """Map raw sklearn digits images (N, 8, 8), values 0..16, to N x 1 x 16 x 16."""
    x = images.astype(np.float32) / 16.0
    x = x.repeat(2, axis=1).repeat(2, axis=2)
    return (x * 2.0 - 1.0)[:, None, :, :].astype(np.float32)


def load_digits_split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Deterministic stratified 75/25 split of the preprocessed digits data."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = preprocess_digits(digits.images)
    y = digits.target.astype(np.int64)
    xtr, xte, ytr, yte = train_test_split(
        x, y, test_size=0.25, random_state=SEED, stratify=y
    )
    return xtr, ytr, xte, yte


def save_digits_npz(out: Path, data) -> None:
    """Write digits_test.npz (input, labels) and digits_calib.npz (input)."""
    xtr, _ytr, xte, yte = data
    np.savez_compressed(out / "digits_test.npz", input=xte, labels=yte)
    rng = np.random.default_rng(SEED)
    idx = np.sort(rng.choice(len(xtr), size=CALIB_SAMPLES, replace=False))
    np.savez_compressed(out / "digits_calib.npz", input=xtr[idx])
    LOG.info("saved digits_test.npz (%d) and digits_calib.npz (%d)", len(xte), len(idx))


def random_shift(x: torch.Tensor, max_shift: int, gen: torch.Generator) -> torch.Tensor:
    """Translate each image by up to +-max_shift pixels, filling with background."""
    n, c, h, w = x.shape
    padded = F.pad(x, [max_shift] * 4, value=-1.0)
    offs = torch.randint(0, 2 * max_shift + 1, (n, 2), generator=gen)
    rows = (offs[:, :1] + torch.arange(h))[:, None, :, None]
    cols = (offs[:, 1:] + torch.arange(w))[:, None, None, :]
    return padded[torch.arange(n)[:, None, None, None], torch.arange(c)[None, :, None, None],
                  rows, cols]


# --------------------------------------------------------------------------
# models
# --------------------------------------------------------------------------


def conv_bn(cin: int, cout: int, k: int, stride: int = 1, groups: int = 1) -> list[nn.Module]:
    """Conv (no bias) followed by BatchNorm, 'same' padding."""
    return [
        nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
    ]


class BasicBlock(nn.Module):
    """ResNet basic block; strided 1x1 conv+BN projection when the shape changes."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.body = nn.Sequential(
            *conv_bn(cin, cout, 3, stride), nn.ReLU(), *conv_bn(cout, cout, 3)
        )
        self.proj = None
        if stride != 1 or cin != cout:
            self.proj = nn.Sequential(*conv_bn(cin, cout, 1, stride))

    def forward(self, x):
        skip = x if self.proj is None else self.proj(x)
        return F.relu(self.body(x) + skip)


class ResNetDigits(nn.Module):
    """Stem + 3 stages x 2 basic blocks (32-64-128), GAP, Flatten, Gemm."""

    def __init__(self, widths=(32, 64, 128)):
        super().__init__()
        self.stem = nn.Sequential(*conv_bn(1, widths[0], 3), nn.ReLU())
        blocks, cin = [], widths[0]
        for i, w in enumerate(widths):
            stride = 1 if i == 0 else 2
            blocks += [BasicBlock(cin, w, stride), BasicBlock(w, w, 1)]
            cin = w
        self.stages = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, NUM_CLASSES)

    def forward(self, x):
        x = self.pool(self.stages(self.stem(x)))
        return self.fc(torch.flatten(x, 1))


class SqueezeExcite(nn.Module):
    """GlobalAveragePool -> Conv -> ReLU -> Conv -> HardSigmoid -> Mul."""

    def __init__(self, ch: int, squeeze: int):
        super().__init__()
        self.fc1 = nn.Conv2d(ch, squeeze, 1)
        self.fc2 = nn.Conv2d(squeeze, ch, 1)

    def forward(self, x):
        s = F.adaptive_avg_pool2d(x, 1)
        s = F.hardsigmoid(self.fc2(F.relu(self.fc1(s))))
        return x * s


class InvertedResidual(nn.Module):
    """MobileNetV2 block: [1x1 expand+BN+ReLU6] -> dw3x3+BN+ReLU6 -> [SE] -> 1x1+BN."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int, se: bool = False):
        super().__init__()
        hid = cin * expand
        layers: list[nn.Module] = []
        if expand != 1:
            layers += [*conv_bn(cin, hid, 1), nn.ReLU6()]
        layers += [*conv_bn(hid, hid, 3, stride, groups=hid), nn.ReLU6()]
        if se:
            layers.append(SqueezeExcite(hid, max(8, hid // 4)))
        layers += conv_bn(hid, cout, 1)
        self.body = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        y = self.body(x)
        return x + y if self.residual else y


class MobileNetV2Digits(nn.Module):
    """Small MobileNetV2 with one squeeze-excitation block."""

    # (cin, cout, stride, expand, se)
    CFG = [(16, 16, 1, 1, False), (16, 24, 2, 4, False), (24, 24, 1, 4, True),
           (24, 32, 2, 4, False), (32, 32, 1, 4, False)]

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(*conv_bn(1, 16, 3), nn.ReLU6())
        self.blocks = nn.Sequential(*[InvertedResidual(*c) for c in self.CFG])
        self.head = nn.Sequential(*conv_bn(32, 128, 1), nn.ReLU6(), nn.AdaptiveAvgPool2d(1))
        self.fc = nn.Linear(128, NUM_CLASSES)

    def forward(self, x):
        x = self.head(self.blocks(self.stem(x)))
        return self.fc(torch.flatten(x, 1))


class DenseLayer(nn.Module):
    """DenseNet-BC layer: BN-ReLU-Conv1x1-BN-ReLU-Conv3x3, output concatenated."""

    def __init__(self, cin: int, growth: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.BatchNorm2d(cin), nn.ReLU(), *conv_bn(cin, 2 * growth, 1), nn.ReLU(),
            nn.Conv2d(2 * growth, growth, 3, padding=1, bias=False),
        )

    def forward(self, x):
        return torch.cat([x, self.body(x)], dim=1)


def dense_block(cin: int, growth: int, n: int) -> tuple[nn.Sequential, int]:
    """n dense layers; returns the block and its output channel count."""
    layers = [DenseLayer(cin + i * growth, growth) for i in range(n)]
    return nn.Sequential(*layers), cin + n * growth


def transition(cin: int, cout: int) -> nn.Sequential:
    """DenseNet transition: BN-ReLU-Conv1x1-AvgPool2."""
    return nn.Sequential(
        nn.BatchNorm2d(cin), nn.ReLU(), nn.Conv2d(cin, cout, 1, bias=False), nn.AvgPool2d(2)
    )


class DenseNetFPN(nn.Module):
    """3 dense blocks (32x32, 16x16, 8x8) + FPN top-down path -> dense map."""

    def __init__(self, growth: int = 12, lat: int = 32, out_ch: int = 8):
        super().__init__()
        self.stem = nn.Sequential(*conv_bn(3, 24, 3), nn.ReLU())
        self.db1, c1 = dense_block(24, growth, 3)
        self.tr1 = transition(c1, c1 // 2)
        self.db2, c2 = dense_block(c1 // 2, growth, 3)
        self.tr2 = transition(c2, c2 // 2)
        self.db3, c3 = dense_block(c2 // 2, growth, 3)
        self.lat1, self.lat2, self.lat3 = (nn.Conv2d(c, lat, 1) for c in (c1, c2, c3))
        self.up = nn.Sequential(
            nn.ConvTranspose2d(lat, lat, 2, stride=2, bias=False), nn.BatchNorm2d(lat), nn.ReLU()
        )
        self.fuse = nn.Sequential(*conv_bn(2 * lat, lat, 3), nn.ReLU())
        self.head = nn.Conv2d(lat, out_ch, 1)

    def forward(self, x):
        f1 = self.db1(self.stem(x))
        f2 = self.db2(self.tr1(f1))
        f3 = self.db3(self.tr2(f2))
        p3 = self.lat3(f3)
        p2 = self.lat2(f2) + F.interpolate(p3, scale_factor=2.0, mode="nearest")
        p1 = torch.cat([self.lat1(f1), self.up(p2)], dim=1)
        return self.head(self.fuse(p1))


class ConvGemmHead(nn.Module):
    """Conv-BN-ReLU-Conv-BN-ReLU-Flatten-Gemm-ReLU-Gemm on 3x16x16."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            *conv_bn(3, 16, 3), nn.ReLU(), *conv_bn(16, 32, 3, stride=2), nn.ReLU()
        )
        self.classifier = nn.Sequential(
            nn.Linear(32 * 8 * 8, 64), nn.ReLU(), nn.Linear(64, NUM_CLASSES)
        )

    def forward(self, x):
        return self.classifier(torch.flatten(self.features(x), 1))


class SelfAttention(nn.Module):
    """Hand-written multi-head self-attention (MatMul/Reshape/Transpose/Softmax)."""

    def __init__(self, dim: int, heads: int, tokens: int):
        super().__init__()
        self.heads, self.tokens, self.dh = heads, tokens, dim // heads
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim) for _ in range(4))

    def split(self, x):
        x = x.reshape(-1, self.tokens, self.heads, self.dh)
        return x.transpose(1, 2)  # B x H x T x dh

    def forward(self, x):
        q, k, v = self.split(self.q(x)), self.split(self.k(x)), self.split(self.v(x))
        att = torch.softmax(q @ k.transpose(2, 3) * (1.0 / math.sqrt(self.dh)), dim=-1)
        y = (att @ v).transpose(1, 2).reshape(-1, self.tokens, self.heads * self.dh)
        return self.o(y)


class EncoderLayer(nn.Module):
    """Pre-norm transformer encoder layer with a GELU MLP."""

    def __init__(self, dim: int, heads: int, tokens: int, mlp: int):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = SelfAttention(dim, heads, tokens)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp), nn.GELU(), nn.Linear(mlp, dim))

    def forward(self, x):
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class TransformerDigits(nn.Module):
    """4x4 patches of the 16x16 image -> Linear embed -> 2 encoder layers -> mean-pool."""

    def __init__(self, dim: int = 64, heads: int = 4, layers: int = 2, patch: int = 4):
        super().__init__()
        self.patch, self.grid = patch, DIGITS_HW // patch
        tokens = self.grid * self.grid
        self.embed = nn.Linear(patch * patch, dim)
        self.pos = nn.Parameter(torch.randn(1, tokens, dim) * 0.02)
        self.layers = nn.Sequential(*[EncoderLayer(dim, heads, tokens, 2 * dim) for _ in range(layers)])
        self.norm = nn.LayerNorm(dim)
        self.fc = nn.Linear(dim, NUM_CLASSES)

    def forward(self, x):
        g, p = self.grid, self.patch
        x = x.reshape(-1, g, p, g, p).transpose(2, 3).reshape(-1, g * g, p * p)
        x = self.layers(self.embed(x) + self.pos)
        return self.fc(self.norm(x).mean(dim=1))


def randomize_bn(model: nn.Module, gen: torch.Generator) -> None:
    """Give every BN non-trivial stats: mean~N(0,.5), var~U(.5,2), random affine."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                c = m.num_features
                m.running_mean.copy_(torch.randn(c, generator=gen) * 0.5)
                m.running_var.copy_(torch.rand(c, generator=gen) * 1.5 + 0.5)
                m.weight.copy_(torch.rand(c, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(c, generator=gen) * 0.2)


# --------------------------------------------------------------------------
# training
# --------------------------------------------------------------------------


@dataclass
class TrainCfg:
    epochs: int
    lr: float
    weight_decay: float = 1e-4
    batch: int = 64
    max_shift: int = 2
    label_smoothing: float = 0.05


def train(model: nn.Module, data, cfg: TrainCfg) -> None:
    """AdamW + one-cycle LR, random-shift augmentation, cross-entropy."""
    xtr, ytr = torch.from_numpy(data[0]), torch.from_numpy(data[1])
    gen = torch.Generator().manual_seed(SEED)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps = cfg.epochs * math.ceil(len(xtr) / cfg.batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=steps)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    model.train()
    for epoch in range(cfg.epochs):
        perm, total = torch.randperm(len(xtr), generator=gen), 0.0
        for i in range(0, len(xtr), cfg.batch):
            idx = perm[i : i + cfg.batch]
            xb = random_shift(xtr[idx], cfg.max_shift, gen) if cfg.max_shift else xtr[idx]
            loss = loss_fn(model(xb), ytr[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss) * len(idx)
        if epoch % 5 == 4 or epoch == cfg.epochs - 1:
            LOG.info("  epoch %d/%d loss %.4f", epoch + 1, cfg.epochs, total / len(xtr))
    model.eval()


# --------------------------------------------------------------------------
# export + ONNX post-processing
# --------------------------------------------------------------------------


def export_onnx(model: nn.Module, path: Path, chw: tuple[int, ...], opset: int) -> None:
    """TorchScript export keeping BN nodes, dynamic batch, then normalise the graph."""
    model.eval()
    dummy = torch.zeros(1, *chw)
    torch.onnx.export(
        model, (dummy,), str(path), dynamo=False, opset_version=opset,
        input_names=["input"], output_names=["logits"],
        dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
        do_constant_folding=True, training=torch.onnx.TrainingMode.PRESERVE,
    )
    m = onnx.load(str(path))
    constants_to_initializers(m.graph)
    materialize_identity_initializers(m.graph)
    m.producer_name, m.producer_version = "graphc-models-build", torch.__version__
    onnx.checker.check_model(m, full_check=True)
    onnx.save(m, str(path))


def constants_to_initializers(graph: onnx.GraphProto) -> None:
    """Replace Constant(value=tensor) nodes by initializers of the same name."""
    keep = []
    for node in graph.node:
        attr = {a.name: a for a in node.attribute}
        if node.op_type == "Constant" and "value" in attr:
            t = onnx.TensorProto()
            t.CopyFrom(attr["value"].t)
            t.name = node.output[0]
            graph.initializer.append(t)
        else:
            keep.append(node)
    del graph.node[:]
    graph.node.extend(keep)


def materialize_identity_initializers(graph: onnx.GraphProto) -> None:
    """Turn `y = Identity(initializer)` into a separate initializer `y`."""
    inits = {t.name: t for t in graph.initializer}
    keep = []
    for node in graph.node:
        if node.op_type == "Identity" and node.input[0] in inits:
            t = onnx.TensorProto()
            t.CopyFrom(inits[node.input[0]])
            t.name = node.output[0]
            graph.initializer.append(t)
        else:
            keep.append(node)
    del graph.node[:]
    graph.node.extend(keep)


# --------------------------------------------------------------------------
# metrics
# --------------------------------------------------------------------------


def count_macs(model: onnx.ModelProto) -> int:
    """MACs at batch 1 of Conv, ConvTranspose, Gemm and MatMul (via shape inference)."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    for vi in list(m.graph.input) + list(m.graph.output):
        vi.type.tensor_type.shape.dim[0].dim_value = 1
    m = onnx.shape_inference.infer_shapes(m, strict_mode=True)
    shapes = {t.name: list(t.dims) for t in m.graph.initializer}
    for vi in list(m.graph.value_info) + list(m.graph.input) + list(m.graph.output):
        shapes[vi.name] = [d.dim_value for d in vi.type.tensor_type.shape.dim]
    return sum(node_macs(n, shapes) for n in m.graph.node)


def node_macs(node: onnx.NodeProto, shapes: dict[str, list[int]]) -> int:
    """Multiply-accumulates of one node (0 for ops that are not counted)."""
    if node.op_type == "Conv":
        w, y = shapes[node.input[1]], shapes[node.output[0]]
        return int(np.prod(y)) * int(np.prod(w[1:]))
    if node.op_type == "ConvTranspose":
        x, w = shapes[node.input[0]], shapes[node.input[1]]
        return int(np.prod(x)) * int(np.prod(w[1:]))  # w: Cin x Cout/g x kh x kw
    if node.op_type in ("Gemm", "MatMul"):
        a, y = shapes[node.input[0]], shapes[node.output[0]]
        trans_a = any(x.name == "transA" and x.i for x in node.attribute)
        k = a[0] if trans_a else a[-1]
        return int(np.prod(y)) * k
    return 0


def ort_accuracy(path: Path, x: np.ndarray, y: np.ndarray) -> float:
    """Top-1 accuracy of an ONNX classifier in onnxruntime (CPU)."""
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    logits = sess.run(None, {"input": x})[0]
    return float((logits.argmax(axis=1) == y).mean())


def torch_accuracy(model: nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    """Top-1 accuracy of the torch model (sanity check against onnxruntime)."""
    with torch.no_grad():
        pred = model(torch.from_numpy(x)).argmax(dim=1).numpy()
    return float((pred == y).mean())


# --------------------------------------------------------------------------
# zoo
# --------------------------------------------------------------------------


@dataclass
class Spec:
    """One zoo entry: how to make the torch model and which files to export."""

    name: str
    make: Callable[[], nn.Module]
    chw: tuple[int, ...]
    exports: list[tuple[str, int, str]]  # (file name, opset, file-specific note)
    patterns: str
    train: TrainCfg | None = None
    min_acc: float | None = None


SPECS = [
    Spec("resnet_digits", ResNetDigits, (1, 16, 16), [("resnet_digits.onnx", 13, "")],
         "Conv+BN+ReLU, residual Add (identity and strided 1x1 projection shortcuts), "
         "GlobalAveragePool, Flatten, Gemm; wide enough (32-64-128) for pruning speed-ups",
         TrainCfg(epochs=12, lr=3e-3), 0.95),
    Spec("mobilenetv2_digits", MobileNetV2Digits, (1, 16, 16),
         [("mobilenetv2_digits.onnx", 13, "")],
         "inverted residuals: 1x1 expand, depthwise 3x3 (group=C), Clip(0,6) as ReLU6, "
         "linear 1x1 project+BN, residual Add; squeeze-excitation (GAP-Conv-ReLU-Conv-"
         "HardSigmoid-Mul)", TrainCfg(epochs=25, lr=5e-3), 0.93),
    Spec("densenet_fpn", DenseNetFPN, (3, 32, 32), [("densenet_fpn.onnx", 13, "")],
         "dense blocks with channel Concat, pre-activation BN after Concat (BN not after a "
         "Conv), AveragePool transitions, FPN laterals, Resize nearest x2 + Add, "
         "ConvTranspose+BN upsampling, Concat fusion; dense output map"),
    Spec("conv_gemm_head", ConvGemmHead, (3, 16, 16), [("conv_gemm_head.onnx", 13, "")],
         "Conv+BN+ReLU x2 (strided), Flatten merging channels with spatial dims into Gemm, "
         "Gemm+ReLU+Gemm classifier head"),
    Spec("transformer_digits", TransformerDigits, (1, 16, 16),
         [("transformer_digits.onnx", 17, "; native LayerNormalization"),
          ("transformer_digits_opset13.onnx", 13,
           "; LayerNorm decomposed (ReduceMean/Sub/Pow/ReduceMean/Add/Sqrt/Div/Mul/Add)")],
         "patchify Reshape/Transpose, Linear embed (MatMul+Add), 4-head self-attention "
         "with Reshape head splits, Transpose, MatMul, Softmax; pre-norm residuals, "
         "GELU (Erf form) MLP, ReduceMean pooling, Gemm",
         TrainCfg(epochs=100, lr=3e-3, weight_decay=0.01), 0.90),
]


@dataclass
class Row:
    """One README table row (one exported file)."""

    model: str
    file: str
    opset: int
    params: int
    macs: int
    accuracy: float | None
    patterns: str

    def cells(self) -> list[str]:
        acc = "-" if self.accuracy is None else f"{100 * self.accuracy:.2f}%"
        return [self.model, f"`{self.file}`", str(self.opset), f"{self.params:,}",
                f"{self.macs:,}", acc, self.patterns]


def build_spec(spec: Spec, out: Path, data) -> list[Row]:
    """Build, (train), export and measure one zoo entry."""
    LOG.info("building %s", spec.name)
    torch.manual_seed(SEED)
    model = spec.make()
    t0 = time.perf_counter()
    if spec.train is not None:
        train(model, data, spec.train)
        LOG.info("  trained in %.1fs, torch test acc %.4f", time.perf_counter() - t0,
                 torch_accuracy(model, data[2], data[3]))
    else:
        randomize_bn(model, torch.Generator().manual_seed(SEED + 1))
    model.eval()
    params = sum(p.numel() for p in model.parameters())
    rows = []
    for fname, opset, note in spec.exports:
        path = out / fname
        export_onnx(model, path, spec.chw, opset)
        acc = ort_accuracy(path, data[2], data[3]) if spec.train is not None else None
        if acc is not None and acc < spec.min_acc:
            raise RuntimeError(f"{fname}: accuracy {acc:.4f} < required {spec.min_acc}")
        row = Row(spec.name, fname, opset, params, count_macs(onnx.load(str(path))), acc,
                  spec.patterns + note)
        LOG.info("  wrote %s (%.0f KiB) macs=%s acc=%s", fname, path.stat().st_size / 1024,
                 f"{row.macs:,}", row.cells()[5])
        rows.append(row)
    return rows


# --------------------------------------------------------------------------
# README
# --------------------------------------------------------------------------

TABLE_START, TABLE_END = "<!-- zoo-table:start -->", "<!-- zoo-table:end -->"
HEADER = ["model", "file", "opset", "params", "MACs (batch 1)", "digits test acc", "patterns covered"]

README = """# Reference model zoo

Small, deterministic ONNX models used by the tests and benchmarks of every graphc
pass (BN folding, channel-dependency analysis / pruning, quantization,
factorization, canonicalization). `models/` is data, not a Python package.

Rebuild (dev-only dependencies `torch==2.13.0` and `scikit-learn`; about 2-3 minutes on
2 idle CPU cores, each trained model under a minute):

```
python models/build.py --out models/            # everything
python models/build.py --out models/ --only transformer_digits   # one entry
```

{start}
{table}
{end}

* Every model has one input `input` (float32, N x C x H x W, dim 0 symbolic `batch`) and
  one output `logits` (`[batch, 10]` for the classifiers, `[batch, 8, 32, 32]` for
  `densenet_fpn`).  Input shapes: digits models and `conv_gemm_head` use 16x16
  (`1x16x16` / `3x16x16`), `densenet_fpn` uses `3x32x32`.
* Params = trainable torch parameters (BN running stats excluded). MACs are counted by
  `count_macs()` in `build.py` from ONNX shape inference at batch 1, for Conv,
  ConvTranspose, Gemm and MatMul only (element-wise ops, pooling, Softmax ignored).
* Accuracies are measured in onnxruntime (CPUExecutionProvider) on
  `digits_test.npz`; `tests/models/test_zoo.py` re-measures them and checks them
  against this table.
* Untrained models (`densenet_fpn`, `conv_gemm_head`) have random weights and
  non-trivial BN statistics (mean ~ N(0, 0.5), var ~ U(0.5, 2), gamma ~ U(0.5, 1.5),
  beta ~ N(0, 0.2)) so BN folding is observable.

## Data

* `digits_test.npz`: `input` (float32, 450 x 1 x 16 x 16), `labels` (int64).
* `digits_calib.npz`: `input` (float32, 64 x 1 x 16 x 16), drawn from the training split.

Preprocessing (sklearn `load_digits`, bundled with the wheel, no download): 8x8 pixel
values 0..16 are divided by 16, upsampled 2x by pixel repetition to 16x16, and mapped to
[-1, 1] with `x * 2 - 1`. Split: stratified 75/25 `train_test_split(random_state=0)`.
Training uses random +-2 pixel shifts, AdamW with a one-cycle schedule, label smoothing.

## Export

TorchScript exporter (`torch.onnx.export(..., dynamo=False)`) with the model in
`eval()` mode but `training=TrainingMode.PRESERVE` and `do_constant_folding=True`: the
graphs keep real `BatchNormalization` nodes (inference form, one output) while
shape arithmetic is folded (e.g. Resize gets a constant `scales` of `[1, 1, 2, 2]`).
After export, `Constant` nodes are turned into initializers and `Identity` aliases of
initializers into copies, so every weight/constant is an initializer.

* `transformer_digits.onnx` (opset 17) has native `LayerNormalization`; GELU is
  exported in its Erf form (`Div, Erf, Add, Mul, Mul`) at both opsets (the `Gelu` op
  only exists from opset 20).  `transformer_digits_opset13.onnx` is the same trained
  network with LayerNorm decomposed into `ReduceMean, Sub, Pow, ReduceMean, Add, Sqrt,
  Div, Mul, Add`, which canonicalization must fuse back into `LayerNormalization`.
* For pruning speed benchmarks use a large batch (e.g. 128-256) with `resnet_digits`
  (spatial dims are static). Keep pruned channel counts multiples of 8: in onnxruntime
  (CPU, batch 128, 1 thread) a re-export at widths 24-48-96 (56% of the MACs) ran ~1.3x
  faster and 16-32-64 (25%) ~3x faster than 32-64-128, but 22-45-90 (49%) was *slower*
  than the full model (likely because onnxruntime's NCHWc layout optimisation only
  applies when channel counts are divisible by its block size).
* Reproducible: rebuilding with the same torch build and thread count (the script pins
  torch to 2 threads) gives byte-identical `.onnx` and `.npz` files; other torch builds
  or CPUs may give slightly different weights (and accuracies).
"""


def read_rows(path: Path) -> dict[str, list[str]]:
    """Existing README table rows keyed by file name (for --only rebuilds)."""
    if not path.exists():
        return {}
    text = path.read_text()
    m = re.search(re.escape(TABLE_START) + r"(.*?)" + re.escape(TABLE_END), text, re.S)
    rows = {}
    for line in (m.group(1) if m else "").strip().splitlines()[2:]:
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        rows[cells[1].strip("`")] = cells
    return rows


def write_readme(out: Path, rows: list[Row]) -> None:
    """Regenerate README.md, keeping rows of models that were not rebuilt."""
    path = out / "README.md"
    cells = read_rows(path)
    cells.update({r.file: r.cells() for r in rows})
    order = [e[0] for s in SPECS for e in s.exports]
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(cells[f]) + " |" for f in order if f in cells]
    path.write_text(README.format(start=TABLE_START, end=TABLE_END, table="\n".join(lines)))
    LOG.info("wrote %s", path)


def print_summary(rows: list[Row]) -> None:
    """Final human-readable summary table."""
    print(f"{'file':36} {'opset':>5} {'params':>10} {'MACs':>12} {'acc':>8}")
    for r in rows:
        print(f"{r.file:36} {r.opset:>5} {r.params:>10,} {r.macs:>12,} {r.cells()[5]:>8}")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=MODELS_DIR, help="output directory")
    ap.add_argument("--only", choices=[s.name for s in SPECS], help="build one entry")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(2)
    args.out.mkdir(parents=True, exist_ok=True)
    data = load_digits_split()
    save_digits_npz(args.out, data)
    rows = []
    for spec in SPECS:
        if args.only in (None, spec.name):
            rows += build_spec(spec, args.out, data)
    write_readme(args.out, rows)
    print_summary(rows)


if __name__ == "__main__":
    main()
