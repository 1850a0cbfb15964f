"""``--download``: fetch a dataset's official archives, check them, unpack them into place.

Each archive streams to a temp name and is checked against its published size and digest before
it is unpacked; everything unpacks into a temp folder that is renamed into place at the end. A
dataset folder therefore appears complete or not at all, and an interrupted download leaves
only temp files that the next attempt removes.
"""

from __future__ import annotations

import errno
import hashlib
import http.client
import os
import shutil
import tarfile
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ..errors import DatasetError
from ..io import pid_alive
from ..progress import Progress
from .base import README_HINT

CHUNK = 1 << 20
TIMEOUT_S = 60  # per network read: a stalled connection fails instead of hanging
# the network's failures (a refused or reset connection, a stall, a cut-off response) ...
NETWORK_ERRORS = (OSError, http.client.HTTPException)
# ... and, among OSErrors, the local disk's
LOCAL_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EROFS, errno.EPERM}


@dataclass(frozen=True)
class Archive:
    """One published archive. ``size`` in bytes and the digests where they are published."""

    url: str
    size: int | None = None
    md5: str | None = None
    sha256: str | None = None

    @property
    def filename(self) -> str:
        return self.url.rsplit("/", 1)[-1]


@dataclass(frozen=True)
class Download:
    """A dataset's archives and where their content goes: every archive unpacks into one folder,
    and ``inner`` (the folder the archives hold, or None when they hold the files themselves)
    becomes ``data_root / folder``."""

    name: str
    archives: tuple[Archive, ...]
    folder: str
    inner: str | None = None
    approx_gb: float = 0.0  # what a user is told before choosing to download

    @property
    def hint(self) -> str:
        """The fix for a dataset that is not in place."""
        return f"`dait-cache encode --dataset {self.name} --download` fetches it (about {self.approx_gb:g} GB), or {README_HINT}"


def fetch(spec: Download, data_root: Path, progress: Progress | None = None) -> Path:
    """Download, check and unpack ``spec`` into ``data_root / spec.folder``; return that folder."""
    data_root = Path(data_root)
    target = data_root / spec.folder
    if target.exists():  # never unpack over a user's files
        raise DatasetError(
            f"{spec.name}: {target} exists but is not a complete dataset, and --download does not "
            "write over it; move it away and run again with --download (see data/README.md)"
        )
    work = data_root / f".{spec.folder}.download-{os.getpid()}"
    try:
        data_root.mkdir(parents=True, exist_ok=True)
        _remove_stale(data_root, spec.folder)
        work.mkdir()
    except OSError as exc:
        raise _cannot_write(spec, work, exc) from None
    try:
        for archive in spec.archives:
            path = _download(spec, archive, work, progress)
            _unpack(spec, path, work / "content")
            path.unlink()  # the archive is not kept: the unpacked tree is what the loaders read
        source = work / "content" / spec.inner if spec.inner else work / "content"
        if not source.is_dir():
            raise DatasetError(
                f"{spec.name}: the archive did not hold {spec.inner}/; it is not the official one (see data/README.md)"
            )
        try:
            source.rename(target)
        except OSError as exc:
            if not target.is_dir():
                raise _cannot_move(spec, target, exc) from None
            # another process (a second encode on the same --data-root) put it in place first,
            # whole: it renames only a checked, unpacked tree
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return target


def _remove_stale(data_root: Path, folder: str) -> None:
    """Temp folders of earlier downloads whose process is gone."""
    for stale in data_root.glob(f".{folder}.download-*"):
        if not pid_alive(stale.name.rsplit("-", 1)[-1]):
            shutil.rmtree(stale, ignore_errors=True)


def _download(spec: Download, archive: Archive, work: Path, progress: Progress | None) -> Path:
    """Stream ``archive`` into ``work`` while hashing it; refuse a short or altered file."""
    path = work / archive.filename
    md5, sha256 = hashlib.md5(usedforsecurity=False), hashlib.sha256()
    key = f"download {archive.filename}"
    request = urllib.request.Request(archive.url, headers={"User-Agent": "dait-cache"})
    try:
        response = urllib.request.urlopen(request, timeout=TIMEOUT_S)
    except NETWORK_ERRORS as exc:
        raise _unreachable(spec, archive, exc) from None
    done = 0
    promised = int(response.headers.get("Content-Length") or -1)  # what the server said it sends
    with response:
        total = archive.size or max(promised, 0)
        total_mb = -(-total // 1_000_000)  # rounded up: a small file is 1 MB, not 0
        try:
            with open(path, "wb") as f:
                for block in _blocks(spec, archive, response):
                    f.write(block)
                    md5.update(block)
                    sha256.update(block)
                    done += len(block)
                    if progress and total:
                        progress(key, total_mb if done >= total else done // 1_000_000, total_mb)
        # the local disk's errors (a full disk, a quota; also at close): the network's are DatasetErrors
        except OSError as exc:
            raise _cannot_write(spec, path, exc) from None
    if promised >= 0 and done != promised:  # the connection closed early (urllib reads that as the end)
        raise _unreachable(spec, archive, f"the connection closed after {done} of {promised} bytes")
    expected = (
        ("size", archive.size, done),
        ("md5", archive.md5, md5.hexdigest()),
        ("sha256", archive.sha256, sha256.hexdigest()),
    )
    for what, want, got in expected:
        if want is not None and want != got:
            raise DatasetError(
                f"{spec.name}: {archive.url} arrived with {what} {got}, not the published {want} (cut off, "
                "or not the official archive); run again, or fetch it by hand (see data/README.md)"
            )
    return path


def _blocks(spec: Download, archive: Archive, response) -> Iterator[bytes]:
    """The response's bytes, a chunk at a time; a reset or stall part-way is a DatasetError."""
    while True:
        try:
            block = response.read(CHUNK)
        except NETWORK_ERRORS as exc:
            raise _unreachable(spec, archive, exc) from None
        if not block:
            return
        yield block


def _unpack(spec: Download, path: Path, dest: Path) -> None:
    """Unpack a tar archive (any compression) into ``dest``; links and paths that would leave
    ``dest`` are refused (tarfile's ``data`` filter, or the same check by hand on a Python
    without it)."""
    try:
        with tarfile.open(path) as tar:
            if hasattr(tarfile, "data_filter"):
                tar.extractall(dest, filter="data")
            else:
                for member in tar.getmembers():
                    inside = (dest / member.name).resolve().is_relative_to(dest.resolve())
                    if member.issym() or member.islnk() or not inside:
                        raise tarfile.TarError(f"{member.name} is a link or leaves the folder")
                tar.extractall(dest)
    except (OSError, tarfile.TarError, EOFError) as exc:
        if isinstance(exc, OSError) and exc.errno in LOCAL_ERRNOS:
            raise _cannot_write(spec, dest, exc) from None
        why = " ".join(str(exc).split())  # tarfile lists each compression it tried, a line each
        raise DatasetError(f"{spec.name}: cannot unpack {path.name} ({why}); run again with --download") from None


def _unreachable(spec: Download, archive: Archive, exc: BaseException | str) -> DatasetError:
    why = getattr(exc, "reason", None) or str(exc) or type(exc).__name__  # RemoteDisconnected says nothing
    return DatasetError(
        f"{spec.name}: download of {archive.url} failed ({why}); check your network, or fetch the "
        "archive by hand and unpack it as data/README.md shows"
    )


def _cannot_write(spec: Download, path: Path, exc: OSError) -> DatasetError:
    return DatasetError(
        f"{spec.name}: cannot write {path} ({exc.strerror or exc}); the download needs about "
        f"{spec.approx_gb:g} GB free under --data-root, twice that while it unpacks: free some space "
        "or pass another --data-root"
    )


def _cannot_move(spec: Download, target: Path, exc: OSError) -> DatasetError:
    # space was already there (the tree is unpacked): what blocks the move is the name itself
    return DatasetError(
        f"{spec.name}: cannot move the unpacked dataset to {target} ({exc.strerror or exc}); "
        f"remove or rename what is at {target}, or pass another --data-root, and run again with --download"
    )
