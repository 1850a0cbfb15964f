"""One writer per cache and per run folder: an exclusive lock file holding the owner's pid and host.

Two ``encode`` processes on one cache, or two trainings into one run folder, would otherwise
interleave writes (and one would delete the other's ``*.tmp`` files). A lock left by a process
that died on this host is taken over, with a warning; a lock of a live process is refused with
one line naming it. Trainings register as readers of their cache, so that ``encode --overwrite``
does not delete a cache under a run that is reading it.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import DaitError
from .io import atomic_write_json, pid_alive, remove_stale_temps, temp_path

log = logging.getLogger(__name__)


def _owner(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _gone(owner: dict) -> bool:
    """The owner's process died on this host (another host's cannot be checked: it counts as running)."""
    return owner.get("host") == socket.gethostname() and not pid_alive(owner.get("pid"))


@contextmanager
def exclusive(path: Path, what: str, held: bool = True) -> Iterator[None]:
    """Hold ``path`` as an exclusive lock for the block; ``what`` names the locked thing.
    ``held=False`` (a torchrun rank other than 0, which rank 0's lock covers) takes nothing."""
    if not held:
        yield
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    me = {"pid": os.getpid(), "host": socket.gethostname()}
    while not _create(path, me):
        owner = _owner(path)
        if owner is None and not path.exists():
            continue  # released between our try and our look: try again
        if owner is None:
            raise DaitError(
                f"{what} is locked by {path}, which names no owner (a process killed while it "
                "took the lock left it); delete the lock if no other dait-cache process writes there"
            )
        if _gone(owner):
            log.warning("taking over %s: its owner, process %s, is gone", path, owner.get("pid"))
            path.unlink(missing_ok=True)
            continue
        raise DaitError(
            f"{what} is in use by process {owner.get('pid', '?')} on {owner.get('host', '?')} "
            f"(lock {path}); wait for it to finish, or delete the lock if that process "
            "no longer runs"
        )
    try:
        yield
    finally:
        if _owner(path) == me:
            path.unlink(missing_ok=True)


def _create(path: Path, owner: dict) -> bool:
    """Create the lock ``path`` holding ``owner``, unless it exists. The content is written first
    and the file linked into place: a lock created empty and filled afterwards, its writer killed
    in between, named no owner and refused every later writer for good."""
    remove_stale_temps(path.parent, of=path.name)  # of writers killed before their link
    tmp = temp_path(path)
    tmp.write_text(json.dumps(owner))
    try:
        os.link(tmp, path)
    except FileExistsError:
        return False
    except OSError:  # a filesystem without hard links: created empty, then filled
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as f:
            json.dump(owner, f)
    finally:
        tmp.unlink(missing_ok=True)
    return True


def run_lock(run_dir: Path) -> Path:
    """The lock a training holds while it writes ``run_dir`` (beside it, not in it)."""
    run_dir = Path(run_dir)
    return run_dir.parent / f".{run_dir.name}.lock"


def abandoned(run_dir: Path) -> bool:
    """No process writes ``run_dir``: its lock is gone, or its owner died on this host. A run whose
    summary still says "running" then was killed (SIGKILL, out of memory, the machine went down)."""
    path = run_lock(run_dir)
    if not path.exists():
        return True
    owner = _owner(path)
    return owner is not None and _gone(owner)  # no owner to check: counts as alive


def encode_lock(cache_dir: Path) -> Path:
    """The lock an ``encode`` holds while it writes ``cache_dir`` (beside it, not in it)."""
    return Path(cache_dir).parent / ".encode.lock"


def encoding_now(cache_dir: Path) -> str | None:
    """ "process P on HOST" while an encode writes ``cache_dir`` (a lock of a dead process on this
    host does not count; another host's does), else None."""
    owner = _owner(encode_lock(cache_dir))
    if owner is None or _gone(owner):
        return None
    return f"process {owner.get('pid', '?')} on {owner.get('host', '?')}"


READERS = ".readers"  # beside the cache folder, not in it: verify reports unknown files there
_reader_ids = itertools.count()


@contextmanager
def reading(cache_dir: Path, what: str, held: bool = True) -> Iterator[None]:
    """Register this process as a reader of ``cache_dir`` (``what``: who reads) for the block."""
    if not held:
        yield
        return
    me = {"pid": os.getpid(), "host": socket.gethostname(), "what": what}
    path = Path(cache_dir).parent / READERS / f"{me['host']}-{me['pid']}-{next(_reader_ids)}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, me)
    try:
        yield
    finally:
        path.unlink(missing_ok=True)


def live_readers(cache_dir: Path) -> list[dict]:
    """The registered readers of ``cache_dir`` still running (those of dead processes on this
    host are removed; another host's cannot be checked and count as running)."""
    readers = []
    for path in sorted((Path(cache_dir).parent / READERS).glob("*.json")):
        owner = _owner(path)
        if owner is None or _gone(owner):
            path.unlink(missing_ok=True)
            continue
        readers.append({**owner, "file": str(path)})
    return readers
