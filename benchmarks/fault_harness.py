"""The fault suite's harness: a generated ``folder:`` dataset, the CLI run in-process or as a
subprocess, and what counts as a one-line refusal."""

from __future__ import annotations

import hashlib
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent

ARCH = "test_resnet"


@dataclass
class Outcome:
    fault: str
    tried: int = 0
    survived: int = 0
    lost: list = field(default_factory=list)  # one line per lost case
    notes: list = field(default_factory=list)  # what the cases met (printed under the table)

    def check(self, case: str, ok: bool, why: str = "") -> None:
        self.tried += 1
        if ok:
            self.survived += 1
        else:
            self.lost.append(f"{case}: {why}")


def make_folder_dataset(root: Path, classes: int = 4, train: int = 12, test: int = 3, size: int = 40) -> Path:
    """``root/{train,test}/<class>/*.jpg``: smooth random colour fields, real JPEG files."""
    rng = np.random.default_rng(0)
    for split, n in (("train", train), ("test", test)):
        for c in range(classes):
            folder = root / split / f"class_{c}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                base = rng.integers(0, 255, size=(4, 4, 3), dtype=np.uint8) // 2 + 40 * c
                img = Image.fromarray(base.astype(np.uint8)).resize((size, size), Image.BILINEAR)
                img.save(folder / f"{i:03d}.jpg", quality=90)
    return root


def encode_args(ws: Path, data: Path, shard_size: int = 8) -> list[str]:
    from dait_cache.minivlm import BASE_SIZE, IMAGE_SIZE, bundled_vlm_id

    return [
        "--workdir",
        str(ws),
        "encode",
        "--dataset",
        f"folder:{data}",
        "--vlm",
        bundled_vlm_id(),
        "--views",
        "2",
        "--image-size",
        str(IMAGE_SIZE),
        "--base-size",
        str(BASE_SIZE),
        "--workers",
        "0",
        "--device",
        "cpu",
        "--shard-size",
        str(shard_size),
        "--batch-size",
        "16",
    ]


def train_args(ws: Path, epochs: int = 3, *extra: str) -> list[str]:
    return [
        "--workdir",
        str(ws),
        "train-teacher",
        "--arch",
        ARCH,
        "--no-pretrained",
        "--epochs",
        str(epochs),
        "--batch-size",
        "8",
        "--lr",
        "1e-3",
        "--device",
        "cpu",
        "--workers",
        "0",
        # a checkpoint after every epoch (not every 10 minutes): the most writes to interrupt, and
        # resumes from the middle of a run
        "--checkpoint-minutes",
        "0",
        *extra,
    ]


def student_args(ws: Path, method: str, *extra: str) -> list[str]:
    """train-student of the suite's arch, from random weights, on the CPU."""
    return ["--workdir", str(ws), "train-student", "--arch", ARCH, "--no-pretrained", "--method", method,
            "--device", "cpu", *extra]  # fmt: skip


def cli(args: list[str]):
    """The command in this process (click's runner): (exit code, output)."""
    from click.testing import CliRunner

    from cli.main import cli as group

    result = CliRunner().invoke(group, args)
    return result.exit_code, result.output + (
        f"{result.exception!r}" if result.exc_info and not isinstance(result.exception, SystemExit) else ""
    )


def spawn(args: list[str], gated: bool = False, session: bool = False) -> subprocess.Popen:
    """The command in a child process that announces when its imports are done (and, ``gated``,
    waits for a line on stdin before it starts, so that two children can start together);
    ``session``: in a process group of its own, which a signal can reach as a whole."""
    wait = "sys.stdin.readline(); " if gated else ""
    code = (
        "import sys, cli.main as m; import dait_cache.encode, dait_cache.train.teacher; "
        f"print('ready', flush=True); {wait}sys.argv=['dait-cache']+sys.argv[1:]; m.main()"
    )
    return subprocess.Popen(
        [sys.executable, "-c", code, *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stdin=subprocess.PIPE if gated else None,
        stderr=subprocess.STDOUT,
        text=True,
        # a harness started in the background (`make test &`) inherits SIGINT ignored, and Python
        # then keeps ignoring it; the child must take Ctrl-C as a user's foreground command does
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        start_new_session=session,
    )


def children(pid: int) -> list[int]:
    """The pids of ``pid``'s child processes (Linux's /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(stat.parent.name))
        except (OSError, IndexError, ValueError):  # ended meanwhile
            continue
    return sorted(found)


def running(pid: int) -> bool:
    """Whether ``pid`` runs: neither gone nor a zombie (a container's init may not reap it)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def run_for(args: list[str], seconds: float) -> tuple[int, list[int]]:
    """Start the command, let it work ``seconds`` after its imports, then SIGKILL it: (how many
    child processes, DataLoader workers, it had; those still running a second later)."""
    child = spawn(args)
    child.stdout.readline()  # "ready"
    time.sleep(seconds)
    workers = children(child.pid)
    child.send_signal(signal.SIGKILL)
    child.wait()
    deadline = time.monotonic() + 1
    while (left := [p for p in workers if running(p)]) and time.monotonic() < deadline:
        time.sleep(0.05)
    for pid in left:  # an orphan is counted, and then not left to the next case
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return len(workers), left


def one_line(code: int, output: str) -> bool:
    """A refusal: non-zero exit, no traceback, and the error is the one last line (progress bars
    and click's usage hint may come before it)."""
    lines = [ln for ln in output.strip().splitlines() if ln.strip()]
    return (
        code != 0
        and "Traceback" not in output
        and bool(lines)
        and lines[-1].startswith("Error:")
        and sum(ln.startswith("Error:") for ln in lines) == 1
    )


def digests(folder: Path, pattern: str) -> dict[str, str]:
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob(pattern))
        if p.is_file()
    }


def _flip(path: Path, rng: random.Random) -> None:
    data = bytearray(path.read_bytes())
    data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
    path.write_bytes(bytes(data))


def _flip_chunk(path: Path, dataset: str) -> None:
    """Flip one byte inside a dataset's first chunk: the file still opens, its checksum fails."""
    import h5py

    with h5py.File(path, "r") as f:
        offset = f[dataset].id.get_chunk_info(0).byte_offset
    data = bytearray(path.read_bytes())
    data[offset + 7] ^= 0x20
    path.write_bytes(bytes(data))
