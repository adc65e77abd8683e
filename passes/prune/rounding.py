"""The multiple a pruned group's channel count is rounded to: ``round-to`` resolved.

An integer is used as given, on every group (``graphc.passes.prune.allocation.group_step`` turns it into a
per-group step). ``auto`` is the channel block of onnxruntime's NCHWc convolutions on this CPU
(:func:`graphc.cpu.nchwc_block_width`: 16 with AVX-512, 8 with AVX2/AVX/SSE), because a count that
is not a whole number of blocks is padded up to one at run time and the removed channels buy
nothing. Two refinements under ``auto``:

- A group narrower than one block (``base < block``, counted in the original model) would have no
  smaller multiple and could never be pruned; its multiple halves until one exists (12 channels on
  AVX-512 round to 8, 8 to 4, never to 0). It runs below one block either way: onnxruntime pads a
  Conv's output channels up to a block and reads an input narrower than a block directly, and a
  grouped/depthwise Conv of such a width is not blocked at all. A group exactly one block wide keeps
  its block, as with an integer: pruning it below a block takes its depthwise Convs off the blocked
  path (measured: BENCHMARKS.md, design notes).
- The resolved block is recorded in the model metadata (``graphc.prune.round_to``) and reused by
  later ``auto`` runs on that model, so a re-run elsewhere (another ISA) keeps the same multiples
  and a met target stays a no-op.
"""
from __future__ import annotations

from dataclasses import dataclass

from graphc import cpu

AUTO = "auto"
META_ROUND_TO = "graphc.prune.round_to"
MAX_ROUND_TO = 4096


@dataclass(frozen=True)
class Rounding:
    """The resolved ``round-to``: ``block`` channels, from ``auto`` or not, and why."""

    block: int
    auto: bool
    why: str

    def multiple(self, base: int) -> int:
        """The multiple for a group of ``base`` original channels (see the module docstring)."""
        multiple = self.block
        if self.auto and base < self.block:
            while multiple > 1 and multiple >= base:
                multiple //= 2
        return multiple

    def record(self) -> dict:
        """The details record stating the choice."""
        return {"option": "round-to", "value": self.block, "auto": self.auto, "why": self.why}


def parse_round_to(text: str) -> int | str:
    """Pipeline text of ``round-to``: ``auto`` or an integer in 1..4096; else ValueError."""
    lowered = text.strip().lower()
    if lowered == AUTO:
        return AUTO
    try:
        value = int(lowered)
    except ValueError:
        raise ValueError(f"round-to must be auto or an integer, got '{text}'") from None
    return check_round_to(value)


def check_round_to(value: int | str) -> int | str:
    """``value`` if it is ``auto`` or an integer in 1..4096; else ValueError."""
    if value == AUTO:
        return value
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"round-to must be auto or an integer, got {value!r}")
    if not 1 <= value <= MAX_ROUND_TO:
        raise ValueError(f"round-to must be auto or an integer in 1..{MAX_ROUND_TO}, got {value}")
    return value


def resolve(option: int | str, metadata: dict) -> Rounding:
    """The rounding a run uses: the integer given, else the model's recorded block, else the CPU's."""
    if option != AUTO:
        return Rounding(int(option), False, "given")
    recorded = _recorded(metadata)
    if recorded is not None:
        return Rounding(recorded, True, f"recorded in the model metadata ({META_ROUND_TO}) by an earlier "
                                        "prune{round-to=auto}, kept so re-runs round alike")
    width = cpu.nchwc_block_width()
    return Rounding(width.channels, True, width.why)


def _recorded(metadata: dict) -> int | None:
    try:
        value = int(metadata.get(META_ROUND_TO, ""))
    except ValueError:
        return None
    return value if 1 <= value <= MAX_ROUND_TO else None
