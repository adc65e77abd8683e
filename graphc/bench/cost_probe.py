"""Measuring the quant speed model's cost table on this CPU: one-op models, float against QDQ int8.

For each op class of the speed model (:mod:`graphc.passes.quant.speed_model`) a :class:`Probe`
builds the same op at 3-4 representative shapes twice: in float, and in the QDQ form graphc
writes (``Q -> DQ -> op(DQ(W), DQ(b)) -> Q -> DQ``, which onnxruntime fuses into
``Q -> QLinearConv/QLinearMatMul/... -> DQ``). Both run in onnxruntime's CPU provider with **one
intra-op thread** (the convention of the whole table, builtin and measured: nanoseconds of one
thread, one sample at the data's shapes), timed alternately, float then int, the median of
``rounds`` rounds.

What a time holds. A run of a one-op model costs ``t0`` (the session's own per-run work,
measured on an ``Identity`` model) plus the op. The int model also pays one QuantizeLinear on its
input and one DequantizeLinear on its output; the speed model charges those to the edges that
cross between domains (``convert``), so they are taken out:

    float(op) = t_float - t0
    int(op)   = t_int - t0 - convert(in) - convert(out)
    convert(n) = (t_QDQ(n) - t0) / 2           # a Q->DQ pair on n elements, per conversion

Fit. Each class's float and int costs are ``fixed + per_mac * M + per_elem * E`` (``M``
multiply-adds, ``E`` output elements): a least-squares fit over the probe's sizes with every
coefficient kept >= 0 (a negative one is dropped and the rest refitted), see :func:`fit_linear`.
Classes with no MACs (element-wise, conversions) fit ``fixed`` and ``per_elem`` only.

Recurrent layers. ``lstm`` times a float bidirectional LSTM against the form
``quant`` writes for it, onnxruntime's ``DynamicQuantizeLSTM`` (int8 weights; X and h quantized
inside the kernel, so no conversion is taken out), at a few hidden sizes. Its costs are per step
and direction (a sample's ``runs``: the time, less ``t0``, is divided by ``T D``), so they hold
at any sequence length: ``M = 4H (I + H)``, ``E = H``. GRU and RNN are not probed: onnxruntime
has no integer kernel for them, so there is nothing to choose.

The table is plain data (``{class: {"float": [fixed, per_mac, per_elem], "int": [...]}}``);
the pass turns it into its own cost functions. Measuring everything takes 10-40 s on one core.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from graphc.runtime import create_session

log = logging.getLogger(__name__)

#: opset of the probe models (QuantizeLinear per-channel axis needs 13).
OPSET = 13
#: intra-op threads of every timing (the table's unit: one thread).
THREADS = 1
#: the probe's version: a cached table measured by another version is measured again
#: (2: LSTM against DynamicQuantizeLSTM added).
VERSION = 2

Clock = Callable[[], float]
Timer = Callable[[list], list]
Coefficients = tuple[float, float, float]


@dataclass(frozen=True)
class Sample:
    """One size of one class: its float and int models and what the speed model would count."""

    cls: str
    float_model: onnx.ModelProto
    int_model: onnx.ModelProto | None  # None: the op costs nothing on integers (folded into a DQ)
    feeds: dict
    macs: float
    elems: float
    in_elems: float  # elements of the input the int model quantizes (its conversion)
    runs: float = 1.0  # the op's repetitions in one model run (an LSTM: steps x directions)


@dataclass(frozen=True)
class Timing:
    """Median nanoseconds of one sample's float and int model (``t0`` and conversions included)."""

    cls: str
    macs: float
    elems: float
    in_elems: float
    float_ns: float
    int_ns: float | None  # None: no int model (free on integers)
    runs: float = 1.0     # the op's repetitions in the run: costs are fitted per repetition


# -- one-op models -----------------------------------------------------------------------------

def _model(nodes, inputs, outputs, inits) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "probe", inputs, outputs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=8)


def _vi(name: str, shape, dtype=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, dtype, list(shape))


def _const(name: str, value) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(value), name)


class _QDQ:
    """Names and initializers of Q/DQ pairs (uint8 activations at scale 1/64, int8 weights per channel)."""

    def __init__(self):
        self.nodes: list = []
        self.inits: list = [_const("s_act", np.float32(1 / 64)), _const("z_act", np.uint8(128)),
                            _const("z_relu", np.uint8(0))]

    def activation(self, x: str, out: str, zero: str = "z_act") -> str:
        """A Q/DQ pair; ``zero="z_relu"`` puts the zero point at the bottom (a Relu's output, which
        onnxruntime then drops into the Q, as graphc's absorbed Relu)."""
        self.nodes += [helper.make_node("QuantizeLinear", [x, "s_act", zero], [f"{out}_q"]),
                       helper.make_node("DequantizeLinear", [f"{out}_q", "s_act", zero], [out])]
        return out

    def weight(self, name: str, w: np.ndarray, axis: int) -> str:
        scale = np.full(w.shape[axis], 1 / 64, np.float32)
        codes = np.clip(np.round(w * 64), -127, 127).astype(np.int8)
        self.inits += [_const(f"{name}_q", codes), _const(f"{name}_s", scale),
                       _const(f"{name}_z", np.zeros(w.shape[axis], np.int8))]
        self.nodes.append(helper.make_node("DequantizeLinear", [f"{name}_q", f"{name}_s", f"{name}_z"], [name],
                                           axis=axis))
        return name

    def bias(self, name: str, b: np.ndarray, w_scale: float = 1 / 64) -> str:
        scale = np.full(b.shape[0], w_scale / 64, np.float32)
        self.inits += [_const(f"{name}_q", np.round(b / scale).astype(np.int32)), _const(f"{name}_s", scale),
                       _const(f"{name}_z", np.zeros(b.shape[0], np.int32))]
        self.nodes.append(helper.make_node("DequantizeLinear", [f"{name}_q", f"{name}_s", f"{name}_z"], [name],
                                           axis=0))
        return name


def conv_sample(cls: str, x_shape, cout: int, kernel, stride=1, group=1, seed=0) -> Sample:
    """Conv (+ Relu, fused by both forms) on ``x_shape`` (NCT or NCHW)."""
    rng = np.random.default_rng(seed)
    cin = x_shape[1]
    kernel = tuple(kernel)
    w = (rng.standard_normal((cout, cin // group) + kernel) * 0.1).astype(np.float32)
    b = (rng.standard_normal(cout) * 0.1).astype(np.float32)
    pads = [k // 2 for k in kernel] * 2
    attrs = dict(kernel_shape=list(kernel), strides=[stride] * len(kernel), pads=pads, group=group)
    out_sp = [(n + 2 * (k // 2) - k) // stride + 1 for n, k in zip(x_shape[2:], kernel)]
    y_shape = [x_shape[0], cout] + out_sp
    fl = _model([helper.make_node("Conv", ["x", "w", "b"], ["c"], **attrs), helper.make_node("Relu", ["c"], ["y"])],
                [_vi("x", x_shape)], [_vi("y", y_shape)], [_const("w", w), _const("b", b)])
    q = _QDQ()
    xq = q.activation("x", "xd")
    q.nodes += [helper.make_node("Conv", [xq, q.weight("wd", w, 0), q.bias("bd", b)], ["c"], **attrs),
                helper.make_node("Relu", ["c"], ["r"])]
    q.activation("r", "y", zero="z_relu")
    it = _model(q.nodes, [_vi("x", x_shape)], [_vi("y", y_shape)], q.inits)
    elems = float(np.prod(y_shape))
    macs = elems * float(np.prod(w.shape[1:]))
    feeds = {"x": rng.standard_normal(x_shape).astype(np.float32)}
    return Sample(cls, fl, it, feeds, macs, elems, float(np.prod(x_shape)))


def matmul_sample(rows: int, k: int, n: int, seed=0) -> Sample:
    """``[1, rows, K] x [K, N]`` with a constant weight, then a bias Add (MatMulIntegerToFloat fuses
    it). 3-D as exporters write a transformer's projections (2-D MatMul + Add becomes a Gemm)."""
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal((k, n)) * 0.05).astype(np.float32)
    b = (rng.standard_normal(n) * 0.1).astype(np.float32)
    x_shape = (1, rows, k)
    # declared with a symbolic batch and length, as exporters write them (with static dims
    # onnxruntime turns MatMul + Add into a Gemm before the QDQ fusion, which then never fuses)
    x_decl, y_decl = ("N", "T", k), ("N", "T", n)
    fl = _model([helper.make_node("MatMul", ["x", "w"], ["m"]), helper.make_node("Add", ["m", "b"], ["y"])],
                [_vi("x", x_decl)], [_vi("y", y_decl)], [_const("w", w), _const("b", b)])
    q = _QDQ()
    q.nodes.append(helper.make_node("MatMul", [q.activation("x", "xd"), q.weight("wd", w, 1)], ["m"]))
    q.inits.append(_const("b", b))
    q.nodes.append(helper.make_node("Add", ["m", "b"], ["y"]))
    it = _model(q.nodes, [_vi("x", x_decl)], [_vi("y", y_decl)], q.inits)
    feeds = {"x": rng.standard_normal(x_shape).astype(np.float32)}
    # the int model converts only its input: its output is float (MatMulIntegerToFloat)
    return Sample("matmul", fl, it, feeds, float(rows * k * n), float(rows * n), float(rows * k))


def matmul_act_sample(heads: int, rows: int, k: int, n: int, seed=0) -> Sample:
    """Attention-style ``[H, rows, K] x [H, K, N]``, both activations (QLinearMatMul)."""
    y_shape = (heads, rows, n)
    return _two_activation_sample("matmul_act", "MatMul", (heads, rows, k), (heads, k, n), y_shape,
                                  float(np.prod(y_shape)) * k, seed)


def add_sample(shape, seed=0) -> Sample:
    """``Add`` of two activations of one shape (QLinearAdd)."""
    return _two_activation_sample("add", "Add", shape, shape, shape, 0.0, seed)


def _two_activation_sample(cls: str, op: str, a_shape, b_shape, y_shape, macs: float, seed: int) -> Sample:
    """``y = op(a, b)`` of two activations: in float, and with both inputs and the output behind Q/DQ."""
    rng = np.random.default_rng(seed)
    inputs = [_vi("a", a_shape), _vi("b", b_shape)]
    fl = _model([helper.make_node(op, ["a", "b"], ["y"])], inputs, [_vi("y", y_shape)], [])
    q = _QDQ()
    q.nodes.append(helper.make_node(op, [q.activation("a", "ad"), q.activation("b", "bd")], ["m"]))
    q.activation("m", "y")
    it = _model(q.nodes, inputs, [_vi("y", y_shape)], q.inits)
    feeds = {"a": rng.standard_normal(a_shape).astype(np.float32),
             "b": rng.standard_normal(b_shape).astype(np.float32)}
    in_elems = float(np.prod(a_shape) + np.prod(b_shape))
    return Sample(cls, fl, it, feeds, macs, float(np.prod(y_shape)), in_elems)


def affine_sample(shape, seed=0) -> Sample:
    """A float ``Add`` of a scalar constant; on integers it is folded into a DQ's zero point (free)."""
    rng = np.random.default_rng(seed)
    fl = _model([helper.make_node("Add", ["x", "c"], ["y"])], [_vi("x", shape)], [_vi("y", shape)],
                [_const("c", np.float32(0.5))])
    elems = float(np.prod(shape))
    return Sample("affine", fl, None, {"x": rng.standard_normal(shape).astype(np.float32)}, 0.0, elems, elems)


#: onnxruntime's contrib domain, where its dynamic-int8 LSTM lives
MS_DOMAIN = "com.microsoft"


def lstm_sample(hidden: int, inputs: int, steps: int, directions: int = 2, seed=0) -> Sample:
    """An ``LSTM`` over ``[steps, 1, inputs]`` (bidirectional by default, with a bias, outputs Y
    and Y_h) in float, and as ``com.microsoft.DynamicQuantizeLSTM`` with int8 weights per gate
    unit - the form :mod:`graphc.passes.quant.recurrent` writes (codes ``[D, K, 4H]``, scales
    and zero points ``[D, 4H]``), which quantizes X and h at run time: its input and outputs stay
    float, so there are no conversions to take out. Costs are per step and direction (``runs =
    T D``): ``M = 4H (I + H)``, both matrix products of a step, and ``E = H``, the outputs of a step.
    The per-run overhead is spread over the steps."""
    rng = np.random.default_rng(seed)
    gates = 4 * hidden
    w = (rng.standard_normal((directions, gates, inputs)) * 0.1).astype(np.float32)
    r = (rng.standard_normal((directions, gates, hidden)) * 0.1).astype(np.float32)
    b = (rng.standard_normal((directions, 2 * gates)) * 0.1).astype(np.float32)
    x_shape = (steps, 1, inputs)
    outs = [_vi("y", (steps, directions, 1, hidden)), _vi("y_h", (directions, 1, hidden))]
    attrs = dict(hidden_size=hidden, direction="bidirectional" if directions == 2 else "forward")
    fl = _model([helper.make_node("LSTM", ["x", "w", "r", "b"], ["y", "y_h"], **attrs)], [_vi("x", x_shape)], outs,
                [_const("w", w), _const("r", r), _const("b", b)])
    inits = [_const("b", b)]
    for name, m in (("w", w), ("r", r)):
        scale = np.maximum(np.abs(m).max(axis=2), 1e-8).astype(np.float32) / 127
        codes = np.clip(np.round(m / scale[..., None]), -127, 127).astype(np.int8)
        inits += [_const(f"{name}_q", np.ascontiguousarray(codes.transpose(0, 2, 1))), _const(f"{name}_s", scale),
                  _const(f"{name}_z", np.zeros(scale.shape, np.int8))]
    node = helper.make_node("DynamicQuantizeLSTM", ["x", "w_q", "r_q", "b", "", "", "", "", "w_s", "w_z", "r_s", "r_z"],
                            ["y", "y_h"], domain=MS_DOMAIN, **attrs)
    it = _model([node], [_vi("x", x_shape)], outs, inits)
    it.opset_import.append(helper.make_opsetid(MS_DOMAIN, 1))
    feeds = {"x": rng.standard_normal(x_shape).astype(np.float32)}
    return Sample("lstm", fl, it, feeds, float(gates * (inputs + hidden)), float(hidden), 0.0,
                  runs=float(steps * directions))


def conv_chain(shape, precisions: tuple[str, ...], seed=0) -> onnx.ModelProto:
    """3x3 Conv + Relu layers ``C -> C`` on ``shape`` (NCHW), each ``"int"`` (QDQ) or ``"float"``:
    a float layer between integer ones pays the two conversions as a real graph does (DQ, layout
    change to the float kernels' blocked layout and back, Q)."""
    rng = np.random.default_rng(seed)
    c = shape[1]
    q = _QDQ()
    inits = []
    x, quantized = "x", False
    for i, precision in enumerate(precisions):
        w = (rng.standard_normal((c, c, 3, 3)) * 0.1).astype(np.float32)
        b = (rng.standard_normal(c) * 0.1).astype(np.float32)
        attrs = dict(kernel_shape=[3, 3], pads=[1, 1, 1, 1])
        if precision == "int":
            if not quantized:
                x = q.activation(x, f"in{i}")
            q.nodes += [helper.make_node("Conv", [x, q.weight(f"w{i}", w, 0), q.bias(f"b{i}", b)], [f"c{i}"], **attrs),
                        helper.make_node("Relu", [f"c{i}"], [f"r{i}"])]
            x, quantized = q.activation(f"r{i}", f"a{i}", zero="z_relu"), True
        else:
            inits += [_const(f"w{i}", w), _const(f"b{i}", b)]
            q.nodes += [helper.make_node("Conv", [x, f"w{i}", f"b{i}"], [f"c{i}"], **attrs),
                        helper.make_node("Relu", [f"c{i}"], [f"a{i}"])]
            x, quantized = f"a{i}", False
    q.nodes.append(helper.make_node("Identity", [x], ["y"]))
    return _model(q.nodes, [_vi("x", shape)], [_vi("y", shape)], q.inits + inits)


#: shapes of the in-context conversion probe (``conv_chain`` int-float-int against int-int-int)
BOUNDARY_SHAPES = ((1, 16, 48, 48), (1, 32, 24, 24), (1, 64, 12, 12), (1, 16, 96, 96))


def identity_model(shape) -> onnx.ModelProto:
    return _model([helper.make_node("Identity", ["x"], ["y"])], [_vi("x", shape)], [_vi("y", shape)], [])


def layout_model(n: int) -> onnx.ModelProto:
    """A uint8 ``[1, 16, n/16] -> [1, n/16, 16]`` Transpose: the layout change onnxruntime puts
    around its NHWC integer convolutions."""
    shape = (1, 16, n // 16)
    return _model([helper.make_node("Transpose", ["x"], ["y"], perm=[0, 2, 1])], [_vi("x", shape, TensorProto.UINT8)],
                  [_vi("y", (1, n // 16, 16), TensorProto.UINT8)], [])


def qdq_model(shape) -> onnx.ModelProto:
    q = _QDQ()
    q.activation("x", "y")
    return _model(q.nodes, [_vi("x", shape)], [_vi("y", shape)], q.inits)


#: the probe's shapes per class (small enough that all of them take well under a minute).
def default_samples() -> list[Sample]:
    return [
        # Conv2d, dense (PP-OCR-like): 3x3 and 1x1
        conv_sample("conv", (1, 16, 48, 48), 16, (3, 3)),
        conv_sample("conv", (1, 32, 24, 24), 64, (1, 1)),
        conv_sample("conv", (1, 64, 12, 12), 64, (3, 3)),
        conv_sample("conv", (1, 128, 8, 8), 256, (1, 1)),
        # Conv1d over time (N, C, T): the VAD's shapes
        conv_sample("conv1d", (1, 1, 4096), 16, (16,), stride=4),
        conv_sample("conv1d", (1, 16, 1024), 32, (5,), stride=2),
        conv_sample("conv1d", (1, 32, 256), 32, (5,), stride=2),
        conv_sample("conv1d", (1, 64, 200), 128, (3,)),
        # depthwise and grouped
        conv_sample("depthwise", (1, 32, 40, 40), 32, (3, 3), group=32),
        conv_sample("depthwise", (1, 64, 20, 20), 64, (3, 3), group=64),
        conv_sample("depthwise", (1, 128, 10, 10), 128, (3, 3), group=128),
        conv_sample("grouped", (1, 64, 20, 20), 64, (3, 3), group=4),
        conv_sample("grouped", (1, 128, 10, 10), 128, (3, 3), group=8),
        conv_sample("grouped", (1, 32, 40, 40), 64, (3, 3), group=2),
        # MatMul with a constant weight: transformer projections and FFN, [B*T, K] x [K, N]
        matmul_sample(16, 384, 384),
        matmul_sample(16, 384, 1536),
        matmul_sample(64, 384, 1536),
        matmul_sample(64, 1536, 384),
        # attention MatMuls: Q K^T and P V with 12 heads of 32
        matmul_act_sample(12, 16, 32, 16),
        matmul_act_sample(12, 64, 32, 64),
        matmul_act_sample(12, 64, 64, 32),
        add_sample((1, 16, 48, 48)),
        add_sample((1, 64, 24, 24)),
        add_sample((64, 384)),
        affine_sample((1, 1)),
        affine_sample((1, 4096)),
        affine_sample((1, 32, 40, 40)),
        # bidirectional LSTM, float against DynamicQuantizeLSTM: around where int8 starts to pay
        # (hidden ~48 on an AVX512-VNNI EPYC) and well above it
        lstm_sample(32, 32, 32),
        lstm_sample(64, 64, 32),
        lstm_sample(128, 128, 16),
        lstm_sample(256, 256, 8),
    ]


#: sizes of the conversion probes (elements): from a scalar-like tensor, whose cost is the per-node
#: overhead, to a feature map
CONVERT_SIZES = (16, 1024, 8192, 65536)


# -- timing -------------------------------------------------------------------------------------

class Runner:
    """A session and its feeds; ``__call__`` runs it ``reps`` times and returns seconds per run."""

    def __init__(self, model: onnx.ModelProto, feeds: dict, clock: Clock = time.perf_counter):
        self.session = create_session(model.SerializeToString(), threads=THREADS, label="cost probe")
        self.feeds = feeds
        self.clock = clock
        self.reps = 1

    def __call__(self) -> float:
        start = self.clock()
        for _ in range(self.reps):
            self.session.run(None, self.feeds)
        return (self.clock() - start) / self.reps

    def calibrate(self, budget_s: float) -> None:
        """Warm up, then pick ``reps`` so one call lasts about ``budget_s``."""
        self.reps = 1
        for _ in range(3):
            once = self()
        self.reps = max(1, min(1000, int(budget_s / max(once, 1e-7))))


def alternated(runners: list[Runner], rounds: int, budget_s: float = 0.002) -> list[float]:
    """Median ns per run of each runner, timed in turn over ``rounds`` rounds."""
    for r in runners:
        r.calibrate(budget_s)
    times = [[] for _ in runners]
    for _ in range(rounds):
        for i, r in enumerate(runners):
            times[i].append(r())
    return [float(np.median(t)) * 1e9 for t in times]


# -- fit ----------------------------------------------------------------------------------------

def fit_linear(macs, elems, ns, use_macs: bool = True) -> Coefficients:
    """Least-squares ``(fixed, per_mac, per_elem)`` with every coefficient >= 0: a coefficient the
    unconstrained fit makes negative is fixed at 0 and the others refitted. Errors are relative
    (each row weighted by ``1 / ns``): sizes span orders of magnitude, and the fixed cost is set by
    the small ones."""
    y = np.asarray(ns, float)
    weight = 1.0 / np.maximum(y, 1.0)
    cols = [np.ones(len(ns)), np.asarray(macs, float), np.asarray(elems, float)]
    active = [0, 1, 2] if use_macs else [0, 2]
    while active:
        a = np.stack([cols[i] for i in active], axis=1) * weight[:, None]
        scale = np.maximum(np.abs(a).max(axis=0), 1e-12)  # columns differ by orders of magnitude
        coef, *_ = np.linalg.lstsq(a / scale, y * weight, rcond=None)
        coef = coef / scale
        if np.all(coef >= 0):
            out = [0.0, 0.0, 0.0]
            for i, c in zip(active, coef):
                out[i] = float(c)
            return out[0], out[1], out[2]
        active.pop(int(np.argmin(coef)))
    return 0.0, 0.0, 0.0


#: classes whose integer kernels run on NHWC data between two layout Transposes
NHWC_CLASSES = ("conv", "conv1d", "depthwise", "grouped")
#: classes whose integer form takes and gives float, quantizing inside the kernel
#: (DynamicQuantizeLSTM): no conversion to take out of its time
KERNEL_QUANTIZED = ("lstm",)


def fit_table(timings: list[Timing], t0_ns: float, convert: Coefficients,
              layout: Coefficients = (0.0, 0.0, 0.0)) -> dict[str, dict[str, list[float]]]:
    """The cost table from the timings (see the module doc). ``convert``: one Q or DQ;
    ``layout``: one uint8 layout Transpose (taken out of NHWC classes' int times too). The
    table's ``convert`` entry, what the speed model charges a tensor that crosses domains, is
    their sum."""
    def cost(c: Coefficients, n: float) -> float:
        return c[0] + c[2] * n

    both = tuple(a + b for a, b in zip(convert, layout))
    table = {"convert": {"float": list(both), "int": list(both)}}
    for cls in dict.fromkeys(t.cls for t in timings):
        rows = [t for t in timings if t.cls == cls]
        macs = [t.macs for t in rows]
        elems = [t.elems for t in rows]
        edge = both if cls in NHWC_CLASSES else convert
        in_converts = 0 if cls in KERNEL_QUANTIZED else 1
        out_converts = 0 if cls == "matmul" or cls in KERNEL_QUANTIZED else 1  # MatMulIntegerToFloat: float out
        fl = [max(t.float_ns - t0_ns, 0.0) / t.runs for t in rows]
        it = [max(t.int_ns - t0_ns - in_converts * cost(edge, t.in_elems) - out_converts * cost(edge, t.elems), 0.0)
              / t.runs if t.int_ns is not None else 0.0 for t in rows]
        use_macs = any(m > 0 for m in macs)
        table[cls] = {"float": list(fit_linear(macs, elems, fl, use_macs)),
                      "int": list(fit_linear(macs, elems, it, use_macs))}
    return table


def fit_boundary(shapes, mixed_ns, int_ns, conv: dict) -> Coefficients:
    """One conversion in context: ``(t(int, float, int) - t(int, int, int) - (float - int cost of
    the middle layer by the fitted ``conv`` class)) / 2`` per shape, fitted as ``fixed + per_elem * n``."""
    fl, it = Coefficients(conv["float"]), Coefficients(conv["int"])
    sizes, per = [], []
    for shape, mixed, allint in zip(shapes, mixed_ns, int_ns):
        elems = float(np.prod(shape))
        macs = elems * shape[1] * 9
        middle = (fl[0] + fl[1] * macs + fl[2] * elems) - (it[0] + it[1] * macs + it[2] * elems)
        sizes.append(elems)
        per.append(max((mixed - allint - middle) / 2, 0.0))
    return fit_linear([0] * len(sizes), sizes, per, use_macs=False)


def fit_convert(sizes, pair_ns, t0_ns: float, per_pair: int = 2) -> Coefficients:
    """One conversion, ``fixed + per_elem * n``, from models that do ``per_pair`` of them on
    ``n`` elements (a Q->DQ pair: 2; a layout Transpose: 1)."""
    return fit_linear([0] * len(sizes), sizes, [max(t - t0_ns, 0.0) / per_pair for t in pair_ns], use_macs=False)


# -- the whole measurement ---------------------------------------------------------------------

def measure_table(samples: list[Sample] | None = None, rounds: int = 31,
                  clock: Clock = time.perf_counter) -> dict[str, dict[str, list[float]]]:
    """Time every sample (float and int alternated), the session overhead and the conversions,
    and fit the table."""
    samples = default_samples() if samples is None else samples
    rng = np.random.default_rng(0)
    base = [Runner(identity_model((1, 16)), {"x": np.zeros((1, 16), np.float32)}, clock)]
    base += [Runner(qdq_model((1, n)), {"x": rng.standard_normal((1, n)).astype(np.float32)}, clock)
             for n in CONVERT_SIZES]
    base += [Runner(layout_model(n), {"x": rng.integers(0, 255, (1, 16, n // 16), dtype=np.uint8)}, clock)
             for n in CONVERT_SIZES]
    t = alternated(base, rounds)
    k = len(CONVERT_SIZES)
    t0 = t[0]
    convert = fit_convert(list(CONVERT_SIZES), t[1:1 + k], t0)
    layout = fit_convert(list(CONVERT_SIZES), t[1 + k:], t0, per_pair=1)
    timings = []
    for s in samples:
        models = [s.float_model] + ([s.int_model] if s.int_model is not None else [])
        times = alternated([Runner(m, s.feeds, clock) for m in models], rounds)
        timings.append(Timing(s.cls, s.macs, s.elems, s.in_elems, times[0], times[1] if len(times) > 1 else None,
                              s.runs))
        log.debug("cost probe %s: macs %.0f elems %.0f float/int ns %s", s.cls, s.macs, s.elems,
                  [round(t) for t in times])
    table = fit_table(timings, t0, convert, layout)
    if "conv" in table:  # the conversion in context, which a one-op model cannot show
        mixed, allint = [], []
        for shape in BOUNDARY_SHAPES:
            feeds = {"x": rng.standard_normal(shape).astype(np.float32)}
            t = alternated([Runner(conv_chain(shape, p), feeds, clock)
                            for p in (("int", "float", "int"), ("int", "int", "int"))], rounds)
            mixed.append(t[0])
            allint.append(t[1])
            log.debug("cost probe boundary %s: int-float-int %.0f ns, int-int-int %.0f ns", shape, t[0], t[1])
        boundary = list(fit_boundary(BOUNDARY_SHAPES, mixed, allint, table["conv"]))
        table["convert"] = {"float": boundary, "int": boundary}
    return table
