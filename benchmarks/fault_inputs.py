"""Bad inputs and hostile environments: each must be refused with one line, leaving nothing that
looks complete (``python -m benchmarks.faults`` runs them with the other fault classes)."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

from PIL import Image

from .fault_harness import (
    ARCH,
    Outcome,
    _flip_chunk,
    cli,
    encode_args,
    make_folder_dataset,
    one_line,
    student_args,
    train_args,
)


def bad_inputs(root: Path) -> Outcome:
    """Each bad input: a non-zero exit, one line without a traceback, nothing left that looks complete."""
    from dait_cache.cache.reader import open_cache
    from dait_cache.errors import CacheError

    out = Outcome("bad inputs")
    good = make_folder_dataset(root / "good", classes=2, train=4, test=1)
    ws = root / "ws"
    assert cli(encode_args(ws, good))[0] == 0
    assert cli(train_args(ws, 1))[0] == 0
    ds = next(ws.glob("*/cache")).parent
    write = lambda p, b: (p.parent.mkdir(parents=True, exist_ok=True), p.write_bytes(b))  # noqa: E731
    datasets = {
        "corrupt JPEG": lambda d: write(d / "train/class_0/000.jpg", b"\xff\xd8\xff\xe0 broken"),
        "zero-byte image": lambda d: write(d / "train/class_1/001.jpg", b""),
        "text file named .jpg": lambda d: write(d / "test/class_0/000.jpg", b"not an image\n"),
        "decompression bomb": _bomb,
        "class folders that collide (a_b, 'a b')": lambda d: [
            shutil.copytree(d / "train/class_0", d / "train/a_b"),
            shutil.copytree(d / "train/class_0", d / "train/a b"),
        ],
        "non-UTF-8 class folder": lambda d: os.makedirs(os.path.join(bytes(d / "train"), b"bad\xff")),
        "test class missing from train": lambda d: shutil.copytree(d / "test/class_0", d / "test/other"),
        "empty dataset": lambda d: [shutil.rmtree(d / "train"), (d / "train").mkdir()],
    }
    for name, damage in datasets.items():
        data = _bad_dataset(root, name.replace(" ", "_").replace("'", ""), damage)
        target = root / f"ws-{len(out.lost) + out.tried}"
        code, text = cli(encode_args(target, data))
        complete = False
        for cache in target.glob("*/cache"):
            try:
                open_cache(cache)
                complete = True
            except CacheError:
                pass
        out.check(name, one_line(code, text) and not complete, f"exit {code}, complete {complete}: {text[-240:]}")
    import torch

    assert cli(train_args(ws, 1, "--arch", "test_efficientnet", "--name", "other-arch"))[0] == 0
    other_ckpt = ds / "teacher" / "other-arch" / "checkpoint.pt"

    class Evil:
        def __reduce__(self):
            return (os.system, ("touch " + str(root / "pwned"),))

    evil = root / "evil.pt"
    torch.save({"step": Evil()}, evil)
    run = ds / "teacher" / f"{ARCH}-dait"
    commands = {
        "missing dataset folder": [
            "--workdir",
            str(root / "x"),
            "encode",
            "--dataset",
            "cub",
            "--data-root",
            str(root / "nothing"),
        ],
        "unknown dataset": ["--workdir", str(ws), "encode", "--dataset", "imagenet-x"],
        "unknown VLM folder": encode_args(root / "y", good)[:5] + ["--vlm", "local-dir:/nonexistent"],
        "unknown arch": train_args(ws, 1, "--arch", "resnet9000", "--name", "u1"),
        "unknown student method": ["--workdir", str(ws), "train-student", "--method", "fitnet"],
        "--lr nan": train_args(ws, 1, "--lr", "nan", "--name", "u2"),
        "--temperature 0": train_args(ws, 1, "--temperature", "0", "--name", "u3"),
        "--name outside the workspace": train_args(ws, 1, "--name", "../escape"),
        "--resume with nothing to resume": train_args(ws, 1, "--name", "never", "--resume"),
        "student run as --teacher": None,
        "checkpoint of another arch to --resume": None,
        "pickle that runs code as checkpoint.pt": None,
        "training reads a damaged shard": None,
        "training reads a view store cut short": None,
        "unknown run for --teacher": student_args(ws, "dait-f", "--teacher", "nope"),
        "no cache in the workspace": ["--workdir", str(root / "empty-ws"), "train-teacher"],
    }
    for name, (ok, why) in {**disk_full(root, good, ws), **read_only(root, good, ws), **downloads(root)}.items():
        out.check(name, ok, why)
    for name, args in commands.items():
        if name == "student run as --teacher":
            assert cli(student_args(ws, "none", "--epochs", "1", "--workers", "0"))[0] == 0
            args = student_args(ws, "dait-f", "--teacher", str(ds / "students" / f"{ARCH}-none"), "--workers", "0")
        elif name == "checkpoint of another arch to --resume":
            shutil.copy(other_ckpt, run / "checkpoint.pt")
            args = train_args(ws, 2, "--resume")
        elif name == "training reads a damaged shard":
            damaged = root / "damaged-ws"
            shutil.copytree(ds / "cache", damaged / ds.name / "cache")
            _flip_chunk(damaged / ds.name / "cache" / "train" / "shard-00000.h5", "img_emb")
            args = train_args(damaged, 1)
        elif name == "training reads a view store cut short":
            cut = root / "cut-store-ws"
            shutil.copytree(ds / "cache", cut / ds.name / "cache")
            assert cli(encode_args(cut, good) + ["--store-views"])[0] == 0
            store = cut / ds.name / "cache" / "views" / "train.u8"
            os.truncate(store, store.stat().st_size // 2)
            args = train_args(cut, 1)
        elif name == "pickle that runs code as checkpoint.pt":
            shutil.copy(evil, run / "checkpoint.pt")
            args = train_args(ws, 2, "--resume")
        code, text = cli(args)
        pwned = (root / "pwned").exists()
        out.check(name, one_line(code, text) and not pwned, f"exit {code}, code ran {pwned}: {text[-240:]}")
    return out


def _bad_dataset(root: Path, name: str, damage: Callable[[Path], None]) -> Path:
    data = make_folder_dataset(root / name, classes=2, train=3, test=1)
    damage(data)
    return data


def _bomb(data: Path) -> None:
    Image.new("L", (13500, 13500)).save(data / "train/class_0/000.png")  # 182 M pixels: past PIL's 2x guard
    (data / "train/class_0/000.jpg").unlink()


@contextmanager
def _tmpfs(path: Path, kilobytes: int, options: str = "", cache_from: Path | None = None):
    """Yield whether a tmpfs of ``kilobytes`` (plus the size of ``cache_from``'s files) could be
    mounted at ``path`` (it needs root); with ``cache_from``, that workspace's cache is copied into
    ``path/ws`` first. Unmounted afterwards."""
    path.mkdir(parents=True, exist_ok=True)
    if cache_from is not None:
        kilobytes += sum(p.stat().st_size for p in cache_from.rglob("*") if p.is_file()) // 1024
    command = ["mount", "-t", "tmpfs", "-o", f"size={kilobytes}k{options}", "tmpfs", str(path)]
    mounted = subprocess.run(command, capture_output=True).returncode == 0
    try:
        if mounted and cache_from is not None:
            ds = next(cache_from.glob("*/cache")).parent
            shutil.copytree(ds / "cache", path / "ws" / ds.name / "cache")
        yield mounted
    finally:
        if mounted:
            subprocess.run(["umount", str(path)], capture_output=True)


def read_only(root: Path, data: Path, ws: Path) -> dict[str, tuple[bool, str]]:
    """A workspace on a read-only file system (where even root cannot write; needs root to mount,
    skipped and not counted otherwise): encode, and training from a cache that is in place."""
    results = {}
    place = root / "read-only"
    with _tmpfs(place, 64, ",ro") as mounted:
        if not mounted:
            return results
        code, text = cli(encode_args(place / "ws", data))
        results["read-only workspace: encode"] = (one_line(code, text) and "cannot write" in text, text[-200:])
    with _tmpfs(place, 96, cache_from=ws) as mounted:
        if not mounted:
            return results
        subprocess.run(["mount", "-o", "remount,ro", str(place)], check=True, capture_output=True)
        code, text = cli(train_args(place / "ws", 1))
        results["read-only workspace: training"] = (one_line(code, text) and "cannot write" in text, text[-200:])
    return results


def disk_full(root: Path, data: Path, ws: Path) -> dict[str, tuple[bool, str]]:
    """Encode and train on a small tmpfs that fills up (needs root; skipped, not counted, otherwise)."""
    from dait_cache.cache.reader import open_cache
    from dait_cache.errors import CacheError
    from dait_cache.train import checkpoint as ckpt

    results = {}
    small = root / "tmpfs-encode"
    with _tmpfs(small, 64) as mounted:
        if not mounted:
            return results
        code, text = cli(encode_args(small / "ws", data))
        try:
            open_cache(next((small / "ws").glob("*/cache")))
            complete = True
        except (CacheError, StopIteration):
            complete = False
        results["disk full during encode"] = (
            one_line(code, text) and "disk" in text and not complete,
            f"exit {code}, complete {complete}: {text[-200:]}",
        )
    small = root / "tmpfs-train"
    with _tmpfs(small, 96, cache_from=ws) as mounted:
        if not mounted:
            return results
        name = next(ws.glob("*/cache")).parent.name
        code, text = cli(train_args(small / "ws", 2, "--name", "full"))
        s = ckpt.read_summary(small / "ws" / name / "teacher" / "full") or {}
        results["disk full during training"] = (
            one_line(code, text) and "disk" in text and s.get("status") != "finished",
            f"exit {code}, status {s.get('status')}: {text[-200:]}",
        )
    return results


def downloads(root: Path) -> dict[str, tuple[bool, str]]:
    """``encode --dataset cub --download`` of archives that go wrong, served from file:// URLs and
    a local HTTP server (the network's stand-ins): each is one line, and no dataset folder (nor a
    temp file) is left under --data-root. The disk-full case needs root (a small tmpfs)."""
    import hashlib
    import tarfile

    junk = root / "served" / "CUB_200_2011.tgz"
    junk.parent.mkdir(parents=True, exist_ok=True)
    junk.write_bytes(b"\x1f\x8b" + os.urandom(40_000))  # gzip's magic, then no gzip stream
    escape = root / "served-escape" / "CUB_200_2011.tgz"
    escape.parent.mkdir(parents=True, exist_ok=True)
    (root / "evil.txt").write_text("x")
    with tarfile.open(escape, "w:gz") as tar:
        tar.add(root / "evil.txt", "CUB_200_2011/classes.txt")
        tar.add(root / "evil.txt", "CUB_200_2011/../../../evil.txt")

    md5 = lambda p: hashlib.md5(p.read_bytes()).hexdigest()  # noqa: E731
    results = {}
    with cut_off_server("CUB_200_2011.tgz") as cut_off:
        cases = {
            "download: an archive of another md5": (junk.as_uri(), "0" * 32, "arrived with md5", None),
            "download: the connection closed part-way": (cut_off, None, "the connection closed after", None),
            "download: a file that is no archive": (junk.as_uri(), md5(junk), "cannot unpack", None),
            "download: an archive member that leaves its folder": (escape.as_uri(), md5(escape), "cannot unpack", None),
            "download: onto a full disk": (junk.as_uri(), md5(junk), "cannot write", 16),
        }
        for k, (name, (url, digest, words, tmpfs_kb)) in enumerate(cases.items()):
            place = root / f"download-{k}"
            with _tmpfs(place, tmpfs_kb) if tmpfs_kb else _no_mount(place) as mounted:
                if not mounted:
                    continue
                code, text = _download_cub(place / "data", url, digest)
                left = [str(p.relative_to(place)) for p in place.rglob("*")]
            ok = one_line(code, text) and words in text and left in ([], ["data"])  # an escaped member would be left
            results[name] = (ok, f"exit {code}, left {left}: {text[-200:]}")
    return results


@contextmanager
def cut_off_server(filename: str, reset: bool = False):
    """A local HTTP server (real HTTP, no network) that promises ``filename`` and closes the
    connection after 3,000 of its 100,000 bytes (with ``reset``, resets it: a TCP RST, as a
    dropped link or a proxy gives); yields the file's URL."""
    import http.server
    import socket
    import struct
    import threading
    import time

    class CutOff(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Length", "100000")
            self.end_headers()
            self.wfile.write(b"\x1f\x8b" + bytes(2998))
            self.wfile.flush()
            if reset:  # closing with a zero linger time sends RST instead of FIN
                time.sleep(0.3)  # once the client has read what came and waits for more
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                self.connection.close()  # closes once the handler's files do, before a FIN could go
            self.close_connection = True

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), CutOff)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/{filename}"
    finally:
        server.shutdown()


@contextmanager
def _no_mount(path: Path):
    path.mkdir(parents=True, exist_ok=True)
    yield True


def _download_cub(data_root: Path, url: str, md5: str | None) -> tuple[int, str]:
    """``encode --dataset cub --download`` with cub's archive served from ``url``."""
    from dataclasses import replace

    from dait_cache import data
    from dait_cache.data.download import Archive

    official = data.DOWNLOADS["cub"]
    data.DOWNLOADS["cub"] = replace(official, archives=(Archive(url, md5=md5),))
    try:
        args = encode_args(data_root.parent / "ws", data_root)
        args[args.index("--dataset") + 1] = "cub"
        return cli([*args, "--data-root", str(data_root), "--download"])
    finally:
        data.DOWNLOADS["cub"] = official
