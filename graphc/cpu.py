"""The channel block width of onnxruntime's blocked (NCHWc) convolutions on this CPU.

onnxruntime's MLAS picks its NCHWc kernels once, from CPUID (``onnxruntime/core/mlas/lib/platform.cpp``):
AVX-512F (with the OS saving its state) -> 16 channels per block; any other x86-64 (AVX2/FMA, AVX
or the SSE2 baseline) -> 8. Its NCHWc graph transformer pads a Conv's output channels up to a
whole block, so channel counts that are multiples of the block are the ones pruning turns into
speed. Elsewhere (ARM and others) the default builds run convolutions without NCHWc; 4 floats, one
128-bit NEON register, is then the useful granularity.

Where the flags come from: ``/proc/cpuinfo`` on Linux (the kernel lists a feature only when the OS
saves its state); else numpy's runtime CPU dispatch table, which checks the same; else the machine
name; else 8. The answer names its source so the prune pass can report why it chose it.
"""
from __future__ import annotations

import logging
import platform
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

CPUINFO = Path("/proc/cpuinfo")
FALLBACK = 8
_X86 = ("x86_64", "amd64", "i386", "i686", "x86")


@dataclass(frozen=True)
class BlockWidth:
    """Channels per NCHWc block and why (``"cpu flags include avx512f"``)."""

    channels: int
    why: str


def nchwc_block_width(cpuinfo: str | None = None) -> BlockWidth:
    """The NCHWc block width for the CPU described by ``cpuinfo`` (``/proc/cpuinfo`` text; read from
    the running machine when None)."""
    text = read_cpuinfo() if cpuinfo is None else cpuinfo
    flags = _flags(text) if text else None
    if flags is not None:
        return _from_flags(flags, "/proc/cpuinfo")
    features = _numpy_features()
    if features is not None:
        return _from_flags(features, "numpy's CPU features")
    machine = platform.machine().lower()
    if machine in _X86:
        return BlockWidth(8, f"{machine} CPU without readable vector flags: x86-64 NCHWc blocks are "
                             "8 channels unless AVX-512 is present")
    if machine:
        return BlockWidth(4, f"{machine} CPU: no x86 NCHWc kernels; 4 floats per 128-bit vector")
    return BlockWidth(FALLBACK, f"CPU unknown: fallback {FALLBACK}")


def read_cpuinfo() -> str | None:
    """``/proc/cpuinfo`` text, or None where there is none (not Linux) or it cannot be read."""
    try:
        return CPUINFO.read_text(errors="replace")
    except OSError:
        return None


def _flags(text: str) -> set[str] | None:
    """The first processor's feature flags (x86 ``flags``, ARM ``Features``), lower case."""
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip().lower() in ("flags", "features"):
            return {f.lower() for f in value.split()}
    return None


def _from_flags(flags: set[str], source: str) -> BlockWidth:
    if "avx512f" in flags:
        return BlockWidth(16, f"{source}: avx512f, onnxruntime's AVX-512 NCHWc kernels use 16-channel blocks")
    for isa in ("avx2", "avx"):
        if isa in flags:
            return BlockWidth(8, f"{source}: {isa} without avx512f, onnxruntime's NCHWc kernels use "
                                 "8-channel blocks")
    if flags & {"sse", "sse2"}:
        return BlockWidth(8, f"{source}: x86 without AVX, onnxruntime's SSE NCHWc kernels use 8-channel blocks")
    return BlockWidth(4, f"{source}: no x86 vector flags (e.g. ARM NEON), 4 floats per 128-bit vector")


def _numpy_features() -> set[str] | None:
    """numpy's runtime CPU dispatch table as lower-case flags (only the features present), or None."""
    try:
        # numpy 2 moved its dispatch table (numpy 1: numpy.core); it may be missing
        from numpy._core._multiarray_umath import __cpu_features__ as table
    except ImportError:
        try:
            from numpy.core._multiarray_umath import __cpu_features__ as table  # numpy 1
        except ImportError:
            return None
    present = {name.lower() for name, on in table.items() if on}
    return present if present else None


#: the CPU features that decide which onnxruntime (MLAS) kernels run, float and integer: what a
#: measured cost table depends on besides the CPU's model.
KERNEL_FLAGS = ("sse4_1", "avx", "fma", "avx2", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16",
                "avx_vnni", "avxvnni", "amx_tile", "amx_int8", "amx_bf16", "asimd", "asimddp", "i8mm", "sve")


@dataclass(frozen=True)
class CpuKey:
    """What identifies a CPU for measured kernel costs: its model name and kernel-relevant flags."""

    model: str
    flags: tuple[str, ...]

    def describe(self) -> str:
        return f"{self.model} [{' '.join(self.flags) or 'no vector flags'}]"


def cpu_key(cpuinfo: str | None = None) -> CpuKey:
    """The :class:`CpuKey` of the CPU ``cpuinfo`` describes (``/proc/cpuinfo`` text; the running
    machine's when None). Without cpuinfo: ``platform.processor()`` (or the machine name) and
    numpy's CPU features."""
    text = read_cpuinfo() if cpuinfo is None else cpuinfo
    model = _model_name(text) if text else None
    flags = _flags(text) if text else None
    if flags is None:
        flags = _numpy_features() or set()
    if not model:
        model = platform.processor() or platform.machine() or "unknown CPU"
    return CpuKey(model, tuple(f for f in KERNEL_FLAGS if f in flags))


def _model_name(text: str) -> str | None:
    """The first ``model name`` (x86) or ``CPU part``/``Hardware`` line's value (ARM)."""
    for key in ("model name", "hardware", "cpu part"):
        for line in text.splitlines():
            name, sep, value = line.partition(":")
            if sep and name.strip().lower() == key and value.strip():
                return " ".join(value.split())
    return None
