"""``--download``: fetch a dataset's official archives, check them, unpack them into place.

Each archive streams to a temp name and is checked against its published size and digest before
it is unpacked; everything unpacks into a temp folder that is renamed into place at the end. A
dataset folder therefore appears complete or not at all, and an interrupted download leaves
only temp files that the next attempt removes.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from ..errors import DatasetError
from ..progress import Progress
from .base import README_HINT

CHUNK = 1 << 20
TIMEOUT_S = 60  # per network read: a stalled connection fails instead of hanging


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
    data_root.mkdir(parents=True, exist_ok=True)
    work = data_root / f".{spec.folder}.download-{os.getpid()}"
    _remove_stale(data_root, spec.folder)
    try:
        work.mkdir()
        for archive in spec.archives:
            path = _download(spec.name, archive, work, progress)
            _unpack(spec.name, path, work / "content")
            path.unlink()  # the archive is not kept: the unpacked tree is what the loaders read
        source = work / "content" / spec.inner if spec.inner else work / "content"
        if not source.is_dir():
            raise DatasetError(
                f"{spec.name}: the archive did not hold {spec.inner}/; it is not the official one (see data/README.md)"
            )
        try:
            source.rename(target)
        except OSError:
            if not target.is_dir():
                raise
            # another process (a second encode on the same --data-root) put it in place first,
            # whole: it renames only a checked, unpacked tree
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return target


def _remove_stale(data_root: Path, folder: str) -> None:
    """Temp folders of earlier downloads whose process is gone."""
    from ..io import pid_alive

    for stale in data_root.glob(f".{folder}.download-*"):
        if not pid_alive(stale.name.rsplit("-", 1)[-1]):
            shutil.rmtree(stale, ignore_errors=True)


def _download(name: str, archive: Archive, work: Path, progress: Progress | None) -> Path:
    """Stream ``archive`` into ``work`` while hashing it; refuse a short or altered file."""
    path = work / archive.filename
    md5, sha256 = hashlib.md5(usedforsecurity=False), hashlib.sha256()
    key = f"download {archive.filename}"
    request = urllib.request.Request(archive.url, headers={"User-Agent": "dait-cache"})
    done = 0
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response, open(path, "wb") as f:
            total = archive.size or int(response.headers.get("Content-Length") or 0)
            total_mb = -(-total // 1_000_000)  # rounded up: a small file is 1 MB, not 0
            while block := response.read(CHUNK):
                f.write(block)
                md5.update(block)
                sha256.update(block)
                done += len(block)
                if progress and total:
                    progress(key, total_mb if done >= total else done // 1_000_000, total_mb)
    except OSError as exc:  # urllib's URLError, timeouts, resets: all mean "could not fetch"
        why = getattr(exc, "reason", None) or exc
        raise DatasetError(
            f"{name}: download of {archive.url} failed ({why}); check your network, or fetch the "
            f"archive by hand and unpack it as data/README.md shows"
        ) from None
    expected = (
        ("size", archive.size, done),
        ("md5", archive.md5, md5.hexdigest()),
        ("sha256", archive.sha256, sha256.hexdigest()),
    )
    for what, want, got in expected:
        if want is not None and want != got:
            raise DatasetError(
                f"{name}: {archive.url} arrived with {what} {got}, not the published {want} (cut off, "
                "or not the official archive); run again, or fetch it by hand (see data/README.md)"
            )
    return path


def _unpack(name: str, path: Path, dest: Path) -> None:
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
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise DatasetError(f"{name}: cannot unpack {path.name} ({exc}); run again with --download") from None
