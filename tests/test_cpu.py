"""graphc.cpu: onnxruntime's NCHWc block width from mocked /proc/cpuinfo text, and the fallbacks
(numpy's CPU features, the machine name, 8) when there is no cpuinfo."""
from __future__ import annotations

import pytest

import graphc.cpu as cpu

# trimmed from real /proc/cpuinfo files: a second processor and other fields must not confuse it
SKYLAKE_X = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Gold 6148 CPU @ 2.40GHz
flags\t\t: fpu vme de pse tsc msr pae mce cx8 apic sse sse2 ssse3 fma sse4_1 sse4_2 avx f16c avx2 avx512f avx512dq avx512cd avx512bw avx512vl
vmx flags\t: vnmi preemption_timer
bugs\t\t: spectre_v1

processor\t: 1
flags\t\t: fpu sse sse2
"""
ZEN3 = "processor\t: 0\nvendor_id\t: AuthenticAMD\nflags\t\t: fpu sse sse2 ssse3 fma sse4_1 sse4_2 avx f16c avx2 bmi2\n"
SANDY_BRIDGE = "processor\t: 0\nflags\t\t: fpu sse sse2 ssse3 sse4_1 sse4_2 avx\n"
OLD_X86 = "processor\t: 0\nflags\t\t: fpu sse sse2 ssse3\n"
GRAVITON = "processor\t: 0\nBogoMIPS\t: 243.75\nFeatures\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp\n"


@pytest.mark.parametrize("text, channels, word", [
    (SKYLAKE_X, 16, "avx512f"),
    (ZEN3, 8, "avx2"),
    (SANDY_BRIDGE, 8, "avx"),
    (OLD_X86, 8, "SSE"),
    (GRAVITON, 4, "NEON"),
])
def test_block_width_from_cpuinfo(text, channels, word):
    width = cpu.nchwc_block_width(text)
    assert width.channels == channels
    assert word in width.why and "/proc/cpuinfo" in width.why


def test_the_running_machine_is_read_through_read_cpuinfo(monkeypatch):
    monkeypatch.setattr(cpu, "read_cpuinfo", lambda: ZEN3)
    assert cpu.nchwc_block_width().channels == 8
    monkeypatch.setattr(cpu, "read_cpuinfo", lambda: SKYLAKE_X)
    assert cpu.nchwc_block_width().channels == 16


def test_a_missing_cpuinfo_reads_as_none(monkeypatch, tmp_path):
    monkeypatch.setattr(cpu, "CPUINFO", tmp_path / "cpuinfo")
    assert cpu.read_cpuinfo() is None
    (tmp_path / "cpuinfo").write_text(ZEN3)
    assert cpu.read_cpuinfo() == ZEN3


@pytest.mark.parametrize("features, channels", [
    ({"sse2", "avx", "avx2", "avx512f"}, 16),
    ({"sse2", "avx", "avx2"}, 8),
    ({"neon", "asimd"}, 4),
])
def test_without_cpuinfo_numpy_features_are_used(monkeypatch, features, channels):
    monkeypatch.setattr(cpu, "read_cpuinfo", lambda: None)
    monkeypatch.setattr(cpu, "_numpy_features", lambda: features)
    width = cpu.nchwc_block_width()
    assert width.channels == channels and "numpy" in width.why


def test_numpy_features_are_lower_case_flags_of_this_machine():
    features = cpu._numpy_features()
    if features is None:
        pytest.skip("this numpy has no __cpu_features__ table")
    assert all(f == f.lower() for f in features)


@pytest.mark.parametrize("machine, channels", [("x86_64", 8), ("AMD64", 8), ("arm64", 4), ("", 8)])
def test_without_any_flags_the_machine_name_decides(monkeypatch, machine, channels):
    monkeypatch.setattr(cpu, "read_cpuinfo", lambda: None)
    monkeypatch.setattr(cpu, "_numpy_features", lambda: None)
    monkeypatch.setattr(cpu.platform, "machine", lambda: machine)
    width = cpu.nchwc_block_width()
    assert width.channels == channels and width.why


def test_cpuinfo_without_a_flags_line_falls_through(monkeypatch):
    monkeypatch.setattr(cpu, "_numpy_features", lambda: None)
    monkeypatch.setattr(cpu.platform, "machine", lambda: "riscv64")
    width = cpu.nchwc_block_width("processor\t: 0\nisa\t\t: rv64imafdc\n")
    assert width.channels == 4 and "riscv64" in width.why
