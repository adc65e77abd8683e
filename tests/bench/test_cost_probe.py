"""The measured cost table of quant's speed model (graphc.bench.cost_probe, graphc.bench.cost_table):
the fit on synthetic timings, the probe models (tiny, mocked clock: no timing is asserted), the
cache key from fake /proc/cpuinfo text, the cache file and when it is measured again."""
from __future__ import annotations

import itertools
import json

import numpy as np
import onnx
import pytest

import graphc.bench.cost_table as cost_table
from graphc.bench import cost_probe
from graphc.bench.cost_probe import Timing, fit_boundary, fit_linear, fit_table
from graphc.bench.cost_table import TableKey, load, measured_table, path_for
from graphc.cpu import cpu_key
from graphc.runtime import create_session, run_session

EPYC = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 9R14 96-Core Processor
flags\t\t: fpu sse sse2 ssse3 fma sse4_1 sse4_2 avx f16c avx2 avx512f avx512bw avx512_vnni avx512_bf16 bmi2

processor\t: 1
model name\t: AMD EPYC 9R14 96-Core Processor
flags\t\t: fpu sse
"""
SAPPHIRE = """processor\t: 0
model name\t: Intel(R) Xeon(R) Platinum 8488C
flags\t\t: fpu sse sse2 fma sse4_1 avx avx2 avx512f avx512bw avx512_vnni avx512_bf16 amx_bf16 amx_tile amx_int8
"""
GRAVITON = "processor\t: 0\nBogoMIPS\t: 243.75\nFeatures\t: fp asimd asimddp i8mm sve\nCPU part\t: 0xd40\n"


# -- the fit ----------------------------------------------------------------------------------

def test_fit_recovers_exact_coefficients():
    macs = [1e5, 1e6, 4e6, 2e7]
    elems = [4e3, 1e4, 8e3, 6e4]
    ns = [3000 + 0.02 * m + 0.5 * e for m, e in zip(macs, elems)]
    assert fit_linear(macs, elems, ns) == pytest.approx((3000, 0.02, 0.5), rel=1e-6)
    assert fit_linear([0] * 3, [16, 1024, 65536], [800 + 0.2 * n for n in (16, 1024, 65536)],
                      use_macs=False) == pytest.approx((800, 0, 0.2), rel=1e-6)


def test_fit_never_returns_a_negative_coefficient():
    # times that fall with size: a plain least-squares slope would be negative
    fixed, per_mac, per_elem = fit_linear([0] * 3, [100, 1000, 10000], [5000, 4900, 4800], use_macs=False)
    assert per_elem == 0 and per_mac == 0 and 4800 <= fixed <= 5000


def _timings(cls, fl, it, t0, convert, layout, nhwc):
    """Synthetic one-op timings as the probe would see them (session overhead and the int
    model's conversions included)."""
    rows = []
    for macs, elems, in_elems in ((2e5, 4096, 8192), (1e6, 16384, 16384), (5e6, 8192, 32768), (2e7, 65536, 65536)):
        edge = [c + l for c, l in zip(convert, layout)] if nhwc else convert
        out_converts = 0 if cls == "matmul" else 1
        conv = lambda n: edge[0] + edge[2] * n  # noqa: E731
        float_ns = t0 + fl[0] + fl[1] * macs + fl[2] * elems
        int_ns = t0 + it[0] + it[1] * macs + it[2] * elems + conv(in_elems) + out_converts * conv(elems)
        rows.append(Timing(cls, macs, elems, in_elems, float_ns, int_ns))
    return rows


@pytest.mark.parametrize("cls, nhwc", [("conv1d", True), ("matmul", False), ("matmul_act", False)])
def test_fit_table_takes_the_conversions_out_of_the_int_times(cls, nhwc):
    convert, layout = (900.0, 0.0, 0.3), (200.0, 0.0, 0.1)
    fl, it = (9000.0, 0.03, 0.2), (4000.0, 0.006, 0.4)
    table = fit_table(_timings(cls, fl, it, 5000.0, convert, layout, nhwc), 5000.0, convert, layout)
    assert table[cls]["float"] == pytest.approx(fl, rel=1e-6)
    assert table[cls]["int"] == pytest.approx(it, rel=1e-6)
    assert table["convert"]["int"] == pytest.approx((1100, 0, 0.4))


def test_fit_table_leaves_folded_classes_free_on_integers():
    rows = [Timing("affine", 0.0, e, e, 300 + 0.1 * e, None) for e in (1.0, 4096.0, 51200.0)]
    table = fit_table(rows, 0.0, (0.0, 0.0, 0.0))
    assert table["affine"]["int"] == [0.0, 0.0, 0.0]
    assert table["affine"]["float"] == pytest.approx((300, 0, 0.1), rel=1e-6)


def test_fit_table_costs_an_lstm_per_step_with_no_conversions():
    """LSTM timings are whole runs of ``runs = T D`` steps; DynamicQuantizeLSTM takes and gives
    float, so nothing but the session overhead is taken out before dividing by the steps."""
    fl, it = (900.0, 0.03, 20.0), (1500.0, 0.01, 8.0)
    rows = []
    for hidden, runs in ((32, 64), (64, 64), (128, 32), (256, 16)):
        macs, elems = 4 * hidden * 2 * hidden, hidden
        rows.append(Timing("lstm", macs, elems, 0.0, 5000 + runs * (fl[0] + fl[1] * macs + fl[2] * elems),
                           5000 + runs * (it[0] + it[1] * macs + it[2] * elems), runs))
    table = fit_table(rows, 5000.0, (4000.0, 0.0, 3.0), (1000.0, 0.0, 1.0))
    assert table["lstm"]["float"] == pytest.approx(fl, rel=1e-6)
    assert table["lstm"]["int"] == pytest.approx(it, rel=1e-6)


def test_fit_boundary_is_half_the_extra_time_of_a_float_layer_between_int_ones():
    conv = {"float": [0.0, 0.02, 0.0], "int": [0.0, 0.01, 0.0]}
    shapes = [(1, 16, 48, 48), (1, 32, 24, 24), (1, 64, 12, 12)]
    allint = [1e5, 8e4, 6e4]
    mixed = []
    for shape, base in zip(shapes, allint):
        elems = float(np.prod(shape))
        middle = 0.01 * elems * shape[1] * 9
        mixed.append(base + middle + 2 * (20000 + 0.8 * elems))
    assert fit_boundary(shapes, mixed, allint, conv) == pytest.approx((20000, 0, 0.8), rel=1e-6)


# -- the probe models -------------------------------------------------------------------------

@pytest.mark.parametrize("sample", [
    cost_probe.conv_sample("conv1d", (1, 4, 64), 8, (5,), stride=2),
    cost_probe.conv_sample("depthwise", (1, 8, 6, 6), 8, (3, 3), group=8),
    cost_probe.conv_sample("grouped", (1, 8, 6, 6), 8, (3, 3), group=2),
    cost_probe.matmul_sample(4, 16, 8),
    cost_probe.matmul_act_sample(2, 4, 8, 4),
    cost_probe.add_sample((2, 8)),
], ids=lambda s: s.cls)
def test_probe_models_are_valid_and_the_int_one_approximates_the_float_one(sample):
    onnx.checker.check_model(sample.float_model, full_check=True)
    onnx.checker.check_model(sample.int_model, full_check=True)
    ref = run_session(create_session(sample.float_model.SerializeToString()), sample.feeds)[0]
    got = run_session(create_session(sample.int_model.SerializeToString()), sample.feeds)[0]
    assert ref.shape == got.shape
    # the probe's activations step by 1/64 and saturate (u8 at 1/64: [-2, 2), after a Relu [0, 4)):
    # the same op, roughly, inside the range the int model can represent
    assert np.mean(np.abs(got - np.clip(ref, got.min(), got.max())) < 0.25) > 0.9


def test_probe_int_models_fuse_into_integer_kernels(tmp_path):
    expected = {"conv1d": "QLinearConv", "matmul": "MatMulIntegerToFloat", "matmul_act": "QLinearMatMul",
                "add": "QLinearAdd"}
    for sample in (cost_probe.conv_sample("conv1d", (1, 4, 64), 8, (5,), stride=2), cost_probe.matmul_sample(4, 16, 8),
                   cost_probe.matmul_act_sample(2, 4, 8, 4), cost_probe.add_sample((2, 8))):
        out = tmp_path / f"{sample.cls}.onnx"
        create_session(sample.int_model.SerializeToString(), optimized_model_path=out)
        assert expected[sample.cls] in {n.op_type for n in onnx.load(str(out)).graph.node}, sample.cls


def test_probe_lstm_runs_the_int8_kernel_and_approximates_the_float_lstm(tmp_path):
    sample = cost_probe.lstm_sample(16, 12, 5)
    assert (sample.macs, sample.elems, sample.runs) == (4 * 16 * (12 + 16), 16, 5 * 2)  # per step and direction
    onnx.checker.check_model(sample.float_model, full_check=True)
    onnx.checker.check_model(sample.int_model)  # a com.microsoft op: the checker knows no schema for it
    out = tmp_path / "lstm.onnx"
    session = create_session(sample.int_model.SerializeToString(), optimized_model_path=out)
    assert [n.op_type for n in onnx.load(str(out)).graph.node] == ["DynamicQuantizeLSTM"]
    ref = run_session(create_session(sample.float_model.SerializeToString()), sample.feeds)
    got = run_session(session, sample.feeds)
    for r, g in zip(ref, got):
        assert r.shape == g.shape
        cosine = float(np.sum(r * g) / np.sqrt(np.sum(r * r) * np.sum(g * g)))
        assert cosine > 0.999


def test_measure_table_with_a_mocked_clock_fits_every_class(monkeypatch):
    monkeypatch.setattr(cost_probe, "BOUNDARY_SHAPES", ((1, 4, 6, 6), (1, 8, 4, 4)))
    ticks = itertools.count()
    clock = lambda: next(ticks) * 0.01  # noqa: E731  every call 10 ms later: one run per timing
    samples = [cost_probe.conv_sample("conv", (1, 4, 6, 6), 4, (3, 3)),
               cost_probe.conv_sample("conv", (1, 8, 4, 4), 8, (1, 1)),
               cost_probe.matmul_sample(4, 16, 8), cost_probe.affine_sample((1, 4)),
               cost_probe.lstm_sample(8, 8, 3), cost_probe.lstm_sample(16, 8, 2)]
    table = cost_probe.measure_table(samples, rounds=2, clock=clock)
    assert set(table) == {"convert", "conv", "matmul", "affine", "lstm"}
    for sides in table.values():
        assert set(sides) == {"float", "int"}
        assert all(len(c) == 3 and min(c) >= 0 for c in sides.values())


# -- the cache key ----------------------------------------------------------------------------

def test_cpu_key_names_the_model_and_the_kernel_flags():
    key = cpu_key(EPYC)
    assert key.model == "AMD EPYC 9R14 96-Core Processor"
    assert key.flags == ("sse4_1", "avx", "fma", "avx2", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16")
    assert "amx_int8" in cpu_key(SAPPHIRE).flags
    arm = cpu_key(GRAVITON)
    assert arm.model == "0xd40" and {"asimddp", "i8mm", "sve"} <= set(arm.flags)


def test_table_key_changes_with_the_cpu_and_onnxruntime():
    a = TableKey.of(cpu_key(EPYC), "1.32.0")
    assert a == TableKey.of(cpu_key(EPYC), "1.32.0") and a.digest() == TableKey.of(cpu_key(EPYC), "1.32.0").digest()
    assert a.digest() != TableKey.of(cpu_key(SAPPHIRE), "1.32.0").digest()
    assert a.digest() != TableKey.of(cpu_key(EPYC), "1.33.0").digest()
    fewer_flags = EPYC.replace(" avx512_vnni", "")
    assert a.digest() != TableKey.of(cpu_key(fewer_flags), "1.32.0").digest()


# -- the cache file ---------------------------------------------------------------------------

TABLE = {"convert": {"float": [20000.0, 0.0, 0.8], "int": [20000.0, 0.0, 0.8]},
         "conv": {"float": [2000.0, 0.02, 0.2], "int": [1000.0, 0.005, 0.1]}}


class FakeProbe:
    def __init__(self):
        self.calls = 0

    def __call__(self):
        self.calls += 1
        return json.loads(json.dumps(TABLE))


@pytest.fixture
def fresh_memo(monkeypatch):
    monkeypatch.setattr(cost_table, "_MEMO", {})


def test_measured_once_then_read_from_the_cache(tmp_path, fresh_memo, monkeypatch):
    key = TableKey.of(cpu_key(EPYC), "1.32.0")
    probe = FakeProbe()
    first = measured_table(key, tmp_path, measure=probe)
    assert probe.calls == 1 and first.fresh and first.table == TABLE
    doc = json.loads(path_for(key, tmp_path).read_text())
    assert doc["format"] == "graphc-speed-model" and doc["version"] == 1
    assert doc["key"] == {"onnxruntime": "1.32.0", "cpu_model": "AMD EPYC 9R14 96-Core Processor",
                          "cpu_flags": list(cpu_key(EPYC).flags), "probe": cost_probe.VERSION,
                          "threads": cost_probe.THREADS}
    assert doc["table"] == TABLE and "1 intra-op thread" in doc["unit"]
    monkeypatch.setattr(cost_table, "_MEMO", {})  # a new process
    again = measured_table(key, tmp_path, measure=probe)
    assert probe.calls == 1 and not again.fresh and again.table == TABLE


def test_another_cpu_is_measured_again(tmp_path, fresh_memo):
    probe = FakeProbe()
    measured_table(TableKey.of(cpu_key(EPYC), "1.32.0"), tmp_path, measure=probe)
    other = measured_table(TableKey.of(cpu_key(SAPPHIRE), "1.32.0"), tmp_path, measure=probe)
    assert probe.calls == 2 and other.fresh
    assert len(list((tmp_path / "speed-model").glob("*.json"))) == 2


@pytest.mark.parametrize("damage", ["not json", "wrong key", "negative cost", "missing convert"])
def test_a_damaged_or_foreign_cache_file_is_ignored(tmp_path, damage):
    key = TableKey.of(cpu_key(EPYC), "1.32.0")
    cost_table.save(key, TABLE, 1.0, tmp_path)
    path = path_for(key, tmp_path)
    doc = json.loads(path.read_text())
    if damage == "not json":
        path.write_text("{")
    else:
        if damage == "wrong key":
            doc["key"]["onnxruntime"] = "1.0"
        elif damage == "negative cost":
            doc["table"]["conv"]["int"][1] = -1.0
        else:
            del doc["table"]["convert"]
        path.write_text(json.dumps(doc))
    assert load(key, tmp_path) is None


def test_an_unwritable_cache_still_gives_the_table(tmp_path, fresh_memo):
    blocker = tmp_path / "file"
    blocker.write_text("")
    result = measured_table(TableKey.of(cpu_key(EPYC), "1.32.0"), blocker, measure=FakeProbe())
    assert result.path is None and result.table == TABLE


def test_cache_dir_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.delenv("GRAPHC_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cost_table.cache_dir() == tmp_path / "xdg" / "graphc"
    monkeypatch.setenv("GRAPHC_CACHE_DIR", str(tmp_path / "own"))
    assert cost_table.cache_dir() == tmp_path / "own"
