"""The measured cost table, cached per CPU and onnxruntime version.

:func:`measured_table` returns the table :mod:`graphc.bench.cost_probe` fits on this machine. It
is measured once and cached as JSON in the user cache directory (``$GRAPHC_CACHE_DIR``, else
``$XDG_CACHE_HOME/graphc``, else ``~/.cache/graphc``), at ``speed-model/<digest>.json``, where the
digest is of the :class:`TableKey`: onnxruntime's version, the CPU's model name and its
kernel-relevant flags (:func:`graphc.cpu.cpu_key`), the probe's version and thread count. Another
CPU or another onnxruntime has another key, so it is measured again (one log line says so). A
file whose key or format does not match what its name promises is ignored and measured again.

File format (``graphc-speed-model`` version 1)::

    {"format": "graphc-speed-model", "version": 1,
     "key": {"onnxruntime": "1.32.0", "cpu_model": "...", "cpu_flags": ["avx2", ...],
             "probe": 1, "threads": 1},
     "unit": "ns per run, 1 intra-op thread", "measured_s": 12.3,
     "table": {"conv": {"float": [fixed, per_mac, per_elem], "int": [...]}, ...,
               "convert": {"float": [fixed, 0, per_elem], "int": [...]}}}
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import onnxruntime as ort

from graphc.bench import cost_probe
from graphc.cpu import CpuKey, cpu_key

log = logging.getLogger(__name__)

FORMAT = "graphc-speed-model"
FORMAT_VERSION = 1
UNIT = f"ns per run, {cost_probe.THREADS} intra-op thread"

Table = dict[str, dict[str, list[float]]]


def cache_dir() -> Path:
    """``$GRAPHC_CACHE_DIR``, else ``$XDG_CACHE_HOME/graphc``, else ``~/.cache/graphc``."""
    if os.environ.get("GRAPHC_CACHE_DIR"):
        return Path(os.environ["GRAPHC_CACHE_DIR"])
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]) / "graphc"
    return Path.home() / ".cache" / "graphc"


@dataclass(frozen=True)
class TableKey:
    """What a measured table depends on."""

    onnxruntime: str
    cpu_model: str
    cpu_flags: tuple[str, ...]
    probe: int = cost_probe.VERSION
    threads: int = cost_probe.THREADS

    @classmethod
    def of(cls, cpu: CpuKey, ort_version: str) -> "TableKey":
        return cls(ort_version, cpu.model, tuple(cpu.flags))

    @classmethod
    def current(cls, cpuinfo: str | None = None) -> "TableKey":
        return cls.of(cpu_key(cpuinfo), ort.__version__)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["cpu_flags"] = list(self.cpu_flags)
        return d

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:16]

    def describe(self) -> str:
        return f"{self.cpu_model} [{' '.join(self.cpu_flags)}], onnxruntime {self.onnxruntime}"


@dataclass(frozen=True)
class MeasuredTable:
    key: TableKey
    table: Table
    path: Path | None       # the cache file (None: could not be written)
    fresh: bool             # measured in this process (not read from the cache)


def path_for(key: TableKey, directory: Path | None = None) -> Path:
    return (directory if directory is not None else cache_dir()) / "speed-model" / f"{key.digest()}.json"


def to_json(key: TableKey, table: Table, seconds: float) -> dict:
    return {"format": FORMAT, "version": FORMAT_VERSION, "key": key.to_dict(), "unit": UNIT,
            "measured_s": round(seconds, 2), "table": table}


def load(key: TableKey, directory: Path | None = None) -> Table | None:
    """The cached table for ``key``, or None (no file, unreadable, another format or key)."""
    path = path_for(key, directory)
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT or doc.get("version") != FORMAT_VERSION \
            or doc.get("key") != key.to_dict() or not _valid_table(doc.get("table")):
        log.info("speed model: ignoring %s (another key or format)", path)
        return None
    return {cls: {side: [float(v) for v in coef] for side, coef in sides.items()}
            for cls, sides in doc["table"].items()}


def _valid_table(table) -> bool:
    if not isinstance(table, dict) or "convert" not in table:
        return False
    for sides in table.values():
        if not isinstance(sides, dict) or set(sides) != {"float", "int"}:
            return False
        for coef in sides.values():
            if not (isinstance(coef, list) and len(coef) == 3
                    and all(isinstance(v, (int, float)) and v >= 0 for v in coef)):
                return False
    return True


def save(key: TableKey, table: Table, seconds: float, directory: Path | None = None) -> Path | None:
    """Write the table (atomically: a temporary file renamed); None if the directory is not writable."""
    path = path_for(key, directory)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(to_json(key, table, seconds), indent=1))
        tmp.replace(path)
    except OSError as exc:
        log.warning("speed model: cannot write the measured table to %s (%s); it is measured again next run",
                    path, exc)
        return None
    return path


_MEMO: dict[tuple[TableKey, Path], MeasuredTable] = {}


def measured_table(key: TableKey | None = None, directory: Path | None = None,
                   measure: Callable[[], Table] = cost_probe.measure_table) -> MeasuredTable:
    """The table for ``key`` (this machine's by default): from this process's memo, else the
    cache file, else measured now (logged in one line) and cached."""
    key = key if key is not None else TableKey.current()
    path = path_for(key, directory)
    memo = _MEMO.get((key, path))
    if memo is not None:
        return memo
    table = load(key, directory)
    if table is not None:
        result = MeasuredTable(key, table, path, fresh=False)
    else:
        log.warning("speed model: measuring onnxruntime's float and int8 kernels on %s (once; cached in %s)",
                    key.describe(), path.parent)
        start = time.perf_counter()
        table = measure()
        seconds = time.perf_counter() - start
        log.info("speed model: measured in %.1f s", seconds)
        result = MeasuredTable(key, table, save(key, table, seconds, directory), fresh=True)
    _MEMO[(key, path)] = result
    return result
