"""Files that are whole or absent, and their checksums: the one home of the write protocol.

A file is written under a temp name that carries the writer's pid (``<name>.<pid>.tmp``), flushed,
fsynced, renamed over its final name, and the folder fsynced: a reader never sees half a file, and
a cleanup can tell a dead writer's leftovers from a live writer's work in progress.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .errors import DaitError

TEMP_SUFFIX = ".tmp"


def to_jsonable(obj: Any) -> Any:
    """Dataclasses, tuples, dicts and paths as plain JSON values (dict keys as strings)."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, Path):
        return str(obj)
    return obj


def temp_path(path: str | os.PathLike) -> Path:
    """Where ``path`` is written before its rename: beside it, named after this process."""
    path = Path(path)
    return path.with_name(f"{path.name}.{os.getpid()}{TEMP_SUFFIX}")


def fsync_dir(path: Path) -> None:
    """Flush a directory entry, so a rename into it survives a power cut."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def commit(tmp: Path, path: Path) -> None:
    """fsync the finished temp file, rename it over ``path``, fsync the folder."""
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(Path(path).parent)


def file_in_the_way(path: str | os.PathLike) -> Path | None:
    """The first of ``path`` and the folders above it that exists and is no folder (a folder
    cannot be made there), None if there is none."""
    path = Path(path)
    return next((p for p in [path, *path.parents] if p.exists() and not p.is_dir()), None)


def prepare_output(path: str | os.PathLike, option: str = "--output", folder: bool = False) -> Path:
    """Make the folder of a file the user named (or the ``folder`` itself) and show that a file
    can be written there (a temp name, created and removed): one line before any work, not a
    traceback after it."""
    path = Path(path)
    parent = path if folder else path.parent
    tmp = temp_path(parent / ".write-check" if folder else path)
    try:
        parent.mkdir(parents=True, exist_ok=True)
        tmp.touch()
        tmp.unlink()
    except OSError as exc:
        blocker = file_in_the_way(path)
        where = parent if exc.filename in (None, str(tmp)) else exc.filename
        why = f"{blocker} is a file, not a folder" if blocker else f"{where}: {exc.strerror or exc}"
        raise DaitError(f"cannot write {path} ({why}); give {option} a place you can write") from None
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes | Sequence[bytes | memoryview]) -> None:
    """Write ``data`` (bytes, or parts written one after another: no joined copy of a large
    payload) to ``path`` through a temp file: readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    try:
        with open(tmp, "wb") as f:
            for part in [data] if isinstance(data, (bytes, bytearray, memoryview)) else data:
                f.write(part)
        commit(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)  # only left when the write failed (a full disk)


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(to_jsonable(obj), indent=2, sort_keys=False) + "\n").encode())


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    """Hex sha256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def pid_alive(pid) -> bool:
    """Whether process ``pid`` exists on this host (unknown counts as alive)."""
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, TypeError, ValueError, OverflowError):
        return True  # exists but is not ours, or unreadable: assume alive
    return True


def temp_owner(path: Path) -> int | None:
    """The pid in a temp file's name; None for names without one (written by earlier versions)."""
    stem = Path(path).name[: -len(TEMP_SUFFIX)]
    pid = stem.rsplit(".", 1)[-1] if "." in stem else ""
    return int(pid) if pid.isdigit() else None


def remove_stale_temps(folder: Path, recursive: bool = False, of: str = "") -> list[Path]:
    """Delete the temp files under ``folder`` whose writer is gone (a crash before its rename);
    a live process's temp file is left alone. ``of``: only the temp files of that file name.
    Returns the files deleted."""
    folder = Path(folder)
    pattern = f"{of}.*{TEMP_SUFFIX}" if of else f"*{TEMP_SUFFIX}"
    found = folder.rglob(pattern) if recursive else folder.glob(pattern)
    removed = []
    for tmp in found:
        owner = temp_owner(tmp)
        if owner is None or (owner != os.getpid() and not pid_alive(owner)):
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed
