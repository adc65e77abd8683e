"""Output safety: the one rule for every file graphc writes, replaces or removes.

The rule. What a run reads - the input model and every file it references (its external data,
and whatever other inputs the caller names) - is never written to, replaced or removed; and no
two outputs of one run are the same file. Two paths are the same file when their
``(st_dev, st_ino)`` agree, which sees through symlinks and hard links; when either does not
exist yet, when their real paths (symlinks resolved) agree. A folder graphc writes into or
removes must not hold a protected file either. Callers check every output up front, before any
work (:class:`OutputPlan`), so a refusal costs nothing and writes nothing; ``ir.save`` checks its
own destination again for API users.

Temporary folders. ``ir.save`` stages its files in a hidden folder beside the destination,
``.<name>.graphc-tmp-<pid>-<token>``, and writes a marker inside it when it creates it: a small
JSON file holding the same pid and random token. A folder left by a killed save is removed by a
later save of the same output only if graphc can prove it created it: a real folder (not a
symlink) whose marker is a regular file naming the pid and token of the folder's own name, whose
pid is dead, and which holds no protected file. A folder that only looks like ours - the right
name, no marker - is never removed, whatever its pid.
"""
from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from graphc.errors import OutputError, UnsafeOutputError
from graphc.ir.external import is_data_file_name, referenced_files

log = logging.getLogger(__name__)

#: between the output's name and the pid in a temporary save folder's name.
TEMP_MARK = ".graphc-tmp-"
#: the file inside a temporary save folder that proves graphc created it.
MARKER_NAME = ".graphc-owner"
_MARKER_KIND = "graphc temporary save folder"


@dataclass(frozen=True)
class FileRef:
    """A path as given, what it resolves to, and its inode when it exists."""

    what: str                          # "the input model", "the report", ...
    path: Path                         # as given
    real: Path                         # symlinks resolved
    identity: tuple[int, int] | None   # (st_dev, st_ino), None when it does not exist

    @classmethod
    def of(cls, path: str | os.PathLike, what: str) -> "FileRef":
        path = Path(path)
        if "\x00" in str(path):
            raise OutputError(f"{str(path)!r}: a path cannot hold a NUL byte")
        try:
            st = path.stat()
            identity = (st.st_dev, st.st_ino)
        except OSError:
            identity = None
        return cls(what, path, Path(os.path.realpath(path)), identity)

    def same_file(self, other: "FileRef") -> bool:
        if self.identity is not None and other.identity is not None:
            return self.identity == other.identity
        return self.real == other.real

    def inside(self, folder: "FileRef") -> bool:
        """True when this file lies somewhere under ``folder`` (by real path or as given)."""
        given = Path(os.path.abspath(self.path))
        return folder.real in self.real.parents or Path(os.path.abspath(folder.path)) in given.parents


class ProtectedFiles:
    """The files one run reads and must leave alone."""

    def __init__(self, refs: Iterable[FileRef] = ()):
        self.refs = tuple(refs)

    @classmethod
    def of_model_file(cls, source: str | os.PathLike, *, others: Iterable[tuple[str | os.PathLike, str]] = ()
                      ) -> "ProtectedFiles":
        """The model at ``source``, the external-data files it references (read from its
        structure, weights untouched), and ``others`` as ``(path, what)``."""
        source = Path(source)
        refs = [FileRef.of(source, "the input model")]
        refs += [FileRef.of(p, "external data of the input model") for p in referenced_files(source)]
        refs += [FileRef.of(p, what) for p, what in others]
        return cls(refs)

    @classmethod
    def of_model(cls, source: Path | None, external_files: Iterable[Path]) -> "ProtectedFiles":
        """A loaded model's file and the external-data files it was loaded from."""
        refs = [FileRef.of(source, "the input model")] if source is not None else []
        return cls(refs + [FileRef.of(p, "external data of the input model") for p in external_files])

    def find(self, path: str | os.PathLike | FileRef) -> FileRef | None:
        """The protected file ``path`` is, or None."""
        ref = path if isinstance(path, FileRef) else FileRef.of(path, "")
        return next((p for p in self.refs if p.same_file(ref)), None)

    def inside(self, folder: str | os.PathLike | FileRef) -> FileRef | None:
        """A protected file under ``folder`` (by path, or by inode anywhere in its tree), or None."""
        ref = folder if isinstance(folder, FileRef) else FileRef.of(folder, "")
        found = next((p for p in self.refs if p.inside(ref)), None)
        if found is not None or ref.identity is None:
            return found
        identities = {p.identity: p for p in self.refs if p.identity is not None}
        for root, _dirs, files in os.walk(ref.path, followlinks=False):
            for name in files:
                try:
                    st = os.lstat(os.path.join(root, name))
                except OSError:
                    continue
                if (st.st_dev, st.st_ino) in identities:
                    return identities[(st.st_dev, st.st_ino)]
        return None


class OutputPlan:
    """The outputs of one run, each refused when it is a protected file or another output."""

    def __init__(self, protected: ProtectedFiles):
        self.protected = protected
        self.files: list[FileRef] = []
        self.folders: list[FileRef] = []

    def add(self, path: str | os.PathLike, what: str) -> Path:
        """Plan a file written (or replaced) at ``path``; returns ``path``."""
        ref = FileRef.of(path, what)
        hit = self.protected.find(ref)
        if hit is not None:
            raise UnsafeOutputError(f"{ref.path}: refusing to overwrite {hit.what} '{hit.path}' with {what}")
        other = next((o for o in self.files if o.same_file(ref)), None)
        if other is not None:
            raise UnsafeOutputError(f"{ref.path}: refusing to overwrite {other.what} '{other.path}' with {what}")
        folder = next((f for f in self.folders if ref.inside(f)), None)
        if folder is not None:
            raise UnsafeOutputError(f"{ref.path}: refusing to write {what} into the folder of {folder.what} "
                                    f"'{folder.path}'")
        self.files.append(ref)
        return ref.path

    def add_folder(self, folder: str | os.PathLike, what: str) -> Path:
        """Plan a folder whose files this run writes (their names decided later)."""
        ref = FileRef.of(folder, what)
        hit = self.protected.find(ref) or self.protected.inside(ref)
        if hit is not None:
            raise UnsafeOutputError(f"{ref.path}: refusing to write {what} into a folder holding {hit.what} "
                                    f"'{hit.path}'")
        other = next((o for o in self.files if o.same_file(ref) or o.inside(ref)), None)
        if other is not None:
            raise UnsafeOutputError(f"{ref.path}: refusing to write {what} into a folder holding {other.what} "
                                    f"'{other.path}'")
        self.folders.append(ref)
        return ref.path

    def add_model(self, path: str | os.PathLike, what: str = "the output model") -> Path:
        """Plan a model saved at ``path``: the model file, and the external-data files a save
        writes or removes beside it (``<name>.<digest>.data``)."""
        out = self.add(path, what)
        hit = next((p for p in self.protected.refs if is_data_file_of(p.path, out) or is_data_file_of(p.real, out)),
                   None)
        if hit is not None:
            raise UnsafeOutputError(f"{out}: refusing to save {what} here: its external data would "
                                    f"overwrite or remove {hit.what} '{hit.path}'")
        return out


def check_writable(path: str | os.PathLike) -> Path:
    """``path`` as a file to create or replace: its folder exists and it is not a folder."""
    path = Path(path)
    if not path.parent.is_dir():
        raise OutputError(f"{path}: folder '{path.parent}' does not exist")
    if path.is_dir():
        raise OutputError(f"{path}: is a folder")
    return path


def is_data_file_of(path: Path, out: Path) -> bool:
    """True when a save of ``out`` may write or remove ``path`` as its external-data file."""
    return os.path.realpath(path.parent) == os.path.realpath(out.parent) and is_data_file_name(path.name, out.name)


# ---------------------------------------------------------------------------------------------
# temporary save folders


class TempFolder:
    """A hidden staging folder beside an output, created by this process with its marker."""

    def __init__(self, path: Path):
        self.path = path

    @classmethod
    def create(cls, out: Path) -> "TempFolder":
        """``.<out.name>.graphc-tmp-<pid>-<token>`` beside ``out``, marker written inside."""
        token = secrets.token_hex(8)
        path = out.parent / f".{out.name}{TEMP_MARK}{os.getpid()}-{token}"
        path.mkdir(mode=0o700)
        try:
            staging = path / f"{MARKER_NAME}.new"
            staging.write_text(json.dumps({"kind": _MARKER_KIND, "pid": os.getpid(), "token": token}))
            os.replace(staging, path / MARKER_NAME)  # the marker is complete or absent
        except BaseException:
            shutil.rmtree(path, ignore_errors=True)
            raise
        return cls(path)

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)

    def __enter__(self) -> Path:
        return self.path

    def __exit__(self, *exc: object) -> None:
        self.remove()


def remove_abandoned_temp(out: Path, protected: ProtectedFiles) -> list[Path]:
    """Remove the temporary save folders of ``out`` that graphc provably created in a process
    that has died (see the module docstring); returns the folders removed."""
    removed = []
    prefix = f".{out.name}{TEMP_MARK}"
    for path in out.parent.glob(f"{prefix}*"):
        reason = _not_ours(path, prefix, protected)
        if reason is not None:
            log.debug("left %s alone: %s", path, reason)
            continue
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    return removed


def _not_ours(path: Path, prefix: str, protected: ProtectedFiles) -> str | None:
    """Why ``path`` must not be removed as an abandoned temporary folder, or None."""
    pid_text, _, token = path.name[len(prefix):].partition("-")
    if not pid_text.isdigit() or not token:
        return "not named like a temporary save folder"
    if path.is_symlink() or not path.is_dir():
        return "not a folder"
    marker = path / MARKER_NAME
    if marker.is_symlink() or not marker.is_file():
        return "no marker: graphc cannot prove it created it"
    try:
        owner = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return "unreadable marker"
    if not isinstance(owner, dict) or owner.get("kind") != _MARKER_KIND or \
            owner.get("pid") != int(pid_text) or owner.get("token") != token:
        return "the marker does not match the folder's name"
    if int(pid_text) == os.getpid() or _alive(int(pid_text)):
        return "its process is alive"
    hit = protected.inside(path)
    if hit is not None:
        return f"it holds {hit.what} '{hit.path}'"
    return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True
