"""Fault injection: kill, corrupt, misuse and race the real commands, and count what survives.

    python -m benchmarks.faults [--kills 16] [--flips 8] [--out faults.json]

Everything is real: a ``folder:`` dataset of generated JPEGs, the bundled mini-VLM, timm networks,
HDF5 shards, subprocesses killed with SIGKILL. Each fault class reports (tried, survived, lost);
"lost" lists what happened instead of the promise: a rerun that is not byte-identical, a damaged
file that is accepted, a traceback instead of one line, something left that looks complete.
``tests/faults/`` runs every class at a small size.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
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

    def check(self, case: str, ok: bool, why: str = "") -> None:
        self.tried += 1
        if ok:
            self.survived += 1
        else:
            self.lost.append(f"{case}: {why}")


# ---------------------------------------------------------------- the workspace under test


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


def cli(args: list[str]):
    """The command in this process (click's runner): (exit code, output)."""
    from click.testing import CliRunner

    from cli.main import cli as group

    result = CliRunner().invoke(group, args)
    return result.exit_code, result.output + (
        f"{result.exception!r}" if result.exc_info and not isinstance(result.exception, SystemExit) else ""
    )


def spawn(args: list[str], gated: bool = False) -> subprocess.Popen:
    """The command in a child process that announces when its imports are done (and, ``gated``,
    waits for a line on stdin before it starts, so that two children can start together)."""
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
    )


def run_for(args: list[str], seconds: float) -> None:
    """Start the command, let it work ``seconds`` after its imports, then SIGKILL it."""
    child = spawn(args)
    child.stdout.readline()  # "ready"
    time.sleep(seconds)
    child.send_signal(signal.SIGKILL)
    child.wait()


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


# ---------------------------------------------------------------- fault classes


def kill_encode(root: Path, kills: int) -> Outcome:
    """SIGKILL ``encode`` at ``kills`` moments spread over its run; the rerun must be byte-identical."""
    from dait_cache.cache import open_cache, verify_cache
    from dait_cache.errors import CacheError

    out = Outcome("SIGKILL during encode")
    data = make_folder_dataset(root / "data", train=24)
    ref_ws = root / "ref"
    t0 = time.perf_counter()
    assert cli(encode_args(ref_ws, data))[0] == 0
    duration = time.perf_counter() - t0  # the kill moments spread over an uninterrupted run's time
    cache = next(ref_ws.glob("*/cache"))
    want = digests(cache, "*.h5")
    for i in range(kills):
        ws = root / f"kill-{i}"
        run_for(encode_args(ws, data), duration * (i + 0.5) / kills)
        found = next(ws.glob("*/cache"), None)
        early = False
        if found is not None:
            try:
                open_cache(found)
                early = bool(verify_cache(found))  # it claims complete: it must be
            except CacheError:
                pass
        code, text = cli(encode_args(ws, data))
        found = next(ws.glob("*/cache"))
        same = code == 0 and digests(found, "*.h5") == want and verify_cache(found) == []
        tmp = [p.name for p in found.rglob("*.tmp")]
        out.check(
            f"kill at {duration * (i + 0.5) / kills:.2f} s",
            same and not tmp and not early,
            f"rerun exit {code}, identical {same}, tmp {tmp}, claimed complete early {early}: {text[-200:]}",
        )
    return out


def kill_training(root: Path, kills: int) -> Outcome:
    """SIGKILL ``train-teacher`` at spread moments; ``--resume`` must end tensor-identical."""
    import torch

    from dait_cache.train import checkpoint as ckpt

    out = Outcome("SIGKILL during training")
    data = make_folder_dataset(root / "data", train=24)
    base = root / "ws"
    assert cli(encode_args(base, data))[0] == 0
    t0 = time.perf_counter()
    ref = cli(train_args(base, 3, "--name", "ref"))
    duration = time.perf_counter() - t0
    assert ref[0] == 0, ref[1]
    ds = next(base.glob("*/cache")).parent
    want = ckpt.load(ds / "teacher" / "ref" / ckpt.CHECKPOINT)["step"]
    for i in range(kills):
        name = f"kill-{i}"
        moment = duration * (i + 0.5) / kills
        run_for(train_args(base, 3, "--name", name), moment)
        run_dir = ds / "teacher" / name
        s = ckpt.read_summary(run_dir) or {}
        early = s.get("status") == "finished" and s.get("epochs_done") != 3
        resume = ["--resume"] if (run_dir / ckpt.CHECKPOINT).is_file() else []
        if not resume and run_dir.exists():
            shutil.rmtree(run_dir)  # killed before its first checkpoint: a fresh start
        code, text = cli(train_args(base, 3, "--name", name, *resume))
        same = code == 0 and all(
            torch.equal(want[k], v) for k, v in ckpt.load(run_dir / ckpt.CHECKPOINT)["step"].items()
        )
        tmp = [p.name for p in run_dir.rglob("*.tmp")]
        status = (ckpt.read_summary(run_dir) or {}).get("status")
        out.check(
            f"kill at {moment:.2f} s",
            same and not tmp and not early and status == "finished",
            f"resume exit {code}, identical {same}, tmp {tmp}, status {status}: {text[-200:]}",
        )
    return out


def terminate(root: Path) -> Outcome:
    """SIGTERM (a scheduler's stop) or Ctrl-C during training: exit 143 / 130, status "interrupted",
    one line with the exact command that continues, and that command then finishes the run."""
    from dait_cache.train import checkpoint as ckpt

    out = Outcome("SIGTERM / Ctrl-C during training")
    data = make_folder_dataset(root / "data", train=24)
    ws = root / "ws"
    assert cli(encode_args(ws, data))[0] == 0
    for sig, exit_code, word in ((signal.SIGTERM, 143, "terminated"), (signal.SIGINT, 130, "interrupted")):
        name = f"stopped-{sig.name.lower()}"
        run_dir = next(ws.glob("*/cache")).parent / "teacher" / name
        child = spawn(train_args(ws, 3, "--name", name))
        child.stdout.readline()
        while not (run_dir / ckpt.METRICS).is_file() and child.poll() is None:  # after the first epoch
            time.sleep(0.05)
        child.send_signal(sig)
        output = child.communicate()[0]
        status = (ckpt.read_summary(run_dir) or {}).get("status")
        again = shlex.join(["dait-cache", *train_args(ws, 3, "--name", name), "--resume"])
        said = f"{word}: " in output and f"continue with: {again}" in output and "Traceback" not in output
        resume = ["--resume"] if (run_dir / ckpt.CHECKPOINT).is_file() else []
        code, text = cli(train_args(ws, 3, "--name", name, *resume))
        out.check(
            f"{sig.name} after the first epoch",
            child.returncode == exit_code and status == "interrupted" and said and code == 0,
            f"exit {child.returncode}, status {status}, said {said}, resume exit {code}: {output[-300:]}",
        )
    return out


def _flip(path: Path, rng: random.Random) -> None:
    data = bytearray(path.read_bytes())
    data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
    path.write_bytes(bytes(data))


def corruption(root: Path, flips: int) -> list[Outcome]:
    """Random single-bit flips per file type; each must be detected (verify, --resume, report)."""
    from dait_cache.cache import verify_cache
    from dait_cache.train import checkpoint as ckpt

    data = make_folder_dataset(root / "data")
    clean = root / "clean"
    assert cli(encode_args(clean, data))[0] == 0
    assert cli(train_args(clean, 2))[0] == 0
    rng = random.Random(0)
    outcomes = []
    ds_name = next(clean.glob("*/cache")).parent.name
    cache_files = {"shard": "train/shard-00000.h5", "text.h5": "text.h5", "manifest.json": "manifest.json"}
    for kind, rel in cache_files.items():
        out = Outcome(f"flipped byte: {kind}")
        for i in range(flips):
            ws = root / f"{kind}-{i}"
            shutil.copytree(clean, ws)
            _flip(ws / ds_name / "cache" / rel, rng)
            problems = verify_cache(ws / ds_name / "cache")
            code, text = cli(["--workdir", str(ws), "verify"])
            out.check(
                f"{kind} flip {i}",
                bool(problems) and code == 1 and "Traceback" not in text,
                f"verify found {problems[:1]}, exit {code}",
            )
            shutil.rmtree(ws)
        outcomes.append(out)
    run = f"{ds_name}/teacher/{ARCH}-dait"
    for kind, rel in (
        ("checkpoint.pt", ckpt.CHECKPOINT),
        ("best.pt", ckpt.BEST),
        ("summary.json", ckpt.SUMMARY),
        ("metrics.jsonl", ckpt.METRICS),
    ):
        out = Outcome(f"flipped byte: {kind}")
        for i in range(flips):
            ws = root / f"{kind}-{i}"
            shutil.copytree(clean, ws)
            _flip(ws / run / rel, rng)
            if kind == "checkpoint.pt":  # --resume must refuse it in one line
                code, text = cli(train_args(ws, 3, "--resume"))
                ok = one_line(code, text) and "checkpoint" in text
            elif kind == "best.pt":  # a student must refuse it as its teacher
                code, text = cli(
                    [
                        "--workdir",
                        str(ws),
                        "train-student",
                        "--arch",
                        ARCH,
                        "--no-pretrained",
                        "--epochs",
                        "1",
                        "--device",
                        "cpu",
                        "--workers",
                        "0",
                        "--method",
                        "dait-f",
                    ]
                )
                ok = one_line(code, text) and "best.pt" in text
            elif kind == "summary.json":  # the report must not show a wrong number as finished
                s = ckpt.read_summary(ws / run)
                original = ckpt.read_summary(clean / run)
                ok = s == original or s.get("status") == "damaged"
                text = str(s)[:160]
            else:  # figures read metrics.jsonl; --resume rewrites it from the checkpoint
                try:
                    rows = ckpt.read_metrics(ws / run)
                    ok = rows == ckpt.read_metrics(clean / run)
                    text = "read silently with other values" if not ok else ""
                except Exception as exc:  # noqa: BLE001 - the harness reports whatever was raised
                    ok = type(exc).__name__ == "DaitError" and "\n" not in str(exc)
                    text = repr(exc)[:160]
                code2, _ = cli(train_args(ws, 2, "--resume"))
                ok = ok and code2 == 0 and ckpt.read_metrics(ws / run) == ckpt.read_metrics(clean / run)
            out.check(f"{kind} flip {i}", ok, text[-200:])
            shutil.rmtree(ws)
        outcomes.append(out)
    return outcomes


def _flip_chunk(path: Path, dataset: str) -> None:
    """Flip one byte inside a dataset's first chunk: the file still opens, its checksum fails."""
    import h5py

    with h5py.File(path, "r") as f:
        offset = f[dataset].id.get_chunk_info(0).byte_offset
    data = bytearray(path.read_bytes())
    data[offset + 7] ^= 0x20
    path.write_bytes(bytes(data))


def _bad_dataset(root: Path, name: str, damage: Callable[[Path], None]) -> Path:
    data = make_folder_dataset(root / name, classes=2, train=3, test=1)
    damage(data)
    return data


def _bomb(data: Path) -> None:
    Image.new("L", (13500, 13500)).save(data / "train/class_0/000.png")  # 182 M pixels: past PIL's 2x guard
    (data / "train/class_0/000.jpg").unlink()


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
        "unknown run for --teacher": [
            "--workdir",
            str(ws),
            "train-student",
            "--arch",
            ARCH,
            "--no-pretrained",
            "--method",
            "dait-f",
            "--teacher",
            "nope",
            "--device",
            "cpu",
        ],
        "no cache in the workspace": ["--workdir", str(root / "empty-ws"), "train-teacher"],
    }
    for name, (ok, why) in disk_full(root, good, ws).items():
        out.check(name, ok, why)
    for name, args in commands.items():
        if name == "student run as --teacher":
            assert (
                cli(
                    [
                        "--workdir",
                        str(ws),
                        "train-student",
                        "--arch",
                        ARCH,
                        "--no-pretrained",
                        "--method",
                        "none",
                        "--epochs",
                        "1",
                        "--device",
                        "cpu",
                        "--workers",
                        "0",
                    ]
                )[0]
                == 0
            )
            args = [
                "--workdir",
                str(ws),
                "train-student",
                "--arch",
                ARCH,
                "--no-pretrained",
                "--method",
                "dait-f",
                "--teacher",
                str(ds / "students" / f"{ARCH}-none"),
                "--device",
                "cpu",
                "--workers",
                "0",
            ]
        elif name == "checkpoint of another arch to --resume":
            shutil.copy(other_ckpt, run / "checkpoint.pt")
            args = train_args(ws, 2, "--resume")
        elif name == "training reads a damaged shard":
            damaged = root / "damaged-ws"
            shutil.copytree(ds / "cache", damaged / ds.name / "cache")
            _flip_chunk(damaged / ds.name / "cache" / "train" / "shard-00000.h5", "img_emb")
            args = train_args(damaged, 1)
        elif name == "pickle that runs code as checkpoint.pt":
            shutil.copy(evil, run / "checkpoint.pt")
            args = train_args(ws, 2, "--resume")
        code, text = cli(args)
        pwned = (root / "pwned").exists()
        out.check(name, one_line(code, text) and not pwned, f"exit {code}, code ran {pwned}: {text[-240:]}")
    return out


def _mount_tmpfs(path: Path, kilobytes: int) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    return (
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={kilobytes}k", "tmpfs", str(path)], capture_output=True
        ).returncode
        == 0
    )


def disk_full(root: Path, data: Path, ws: Path) -> dict[str, tuple[bool, str]]:
    """Encode and train on a small tmpfs that fills up (needs root; skipped, not counted, otherwise)."""
    from dait_cache.cache.reader import open_cache
    from dait_cache.errors import CacheError
    from dait_cache.train import checkpoint as ckpt

    results = {}
    small = root / "tmpfs-encode"
    if not _mount_tmpfs(small, 64):
        return results
    try:
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
    finally:
        subprocess.run(["umount", str(small)], capture_output=True)
    small = root / "tmpfs-train"
    cache_kb = sum(p.stat().st_size for p in ws.rglob("*") if p.is_file()) // 1024
    if not _mount_tmpfs(small, cache_kb + 96):
        return results
    try:
        ds = next(ws.glob("*/cache")).parent
        shutil.copytree(ds / "cache", small / "ws" / ds.name / "cache")
        code, text = cli(train_args(small / "ws", 2, "--name", "full"))
        s = ckpt.read_summary(small / "ws" / ds.name / "teacher" / "full") or {}
        results["disk full during training"] = (
            one_line(code, text) and "disk" in text and s.get("status") != "finished",
            f"exit {code}, status {s.get('status')}: {text[-200:]}",
        )
    finally:
        subprocess.run(["umount", str(small)], capture_output=True)
    return results


def concurrency(root: Path) -> Outcome:
    """Two encodes of one cache, two trainings into one run folder: the second refuses, nothing breaks."""
    from dait_cache.cache import verify_cache

    out = Outcome("concurrent commands")
    data = make_folder_dataset(root / "data", train=24)
    ws = root / "ws"
    for what, args in (("two encodes", encode_args(ws, data)), ("two trainings", train_args(ws, 3))):
        if what == "two trainings":
            assert cli(encode_args(ws, data))[0] == 0
        pair = [spawn(args, gated=True) for _ in range(2)]
        for p in pair:  # both past their imports, then both released at once
            p.stdout.readline()
        for p in pair:
            p.stdin.write("go\n")
            p.stdin.flush()
        outputs = [p.communicate()[0] for p in pair]
        codes = sorted(p.returncode for p in pair)
        refused = any("in use by" in o for o in outputs)
        # on a loaded machine the second may only start once the first has finished: then it must
        # see the finished work (a training refuses to start over, an encode has nothing to do)
        after = any("already exists; pass --resume" in o or "nothing to do" in o for o in outputs)
        cache = next(ws.glob("*/cache"))
        healthy = verify_cache(cache) == []
        ok = (
            (codes == [0, 1] and refused or codes in ([0, 1], [0, 0]) and after)
            and healthy
            and "Traceback" not in "".join(outputs)
        )
        out.check(
            what,
            ok,
            f"exit codes {codes}, refused {refused}, after {after}, cache healthy {healthy}: "
            f"{[o.strip().splitlines()[-1:] for o in outputs]}",
        )
    return out


CLASSES = ("kill-encode", "kill-training", "sigterm", "corruption", "bad-inputs", "concurrency")


def run_all(root: Path, kills: int, flips: int, only: tuple[str, ...] = CLASSES) -> list[Outcome]:
    results: list[Outcome] = []
    steps = {
        "kill-encode": lambda r: [kill_encode(r, kills)],
        "kill-training": lambda r: [kill_training(r, kills)],
        "corruption": lambda r: corruption(r, flips),
        "bad-inputs": lambda r: [bad_inputs(r)],
        "concurrency": lambda r: [concurrency(r)],
        "sigterm": lambda r: [terminate(r)],
    }
    for name in only:
        (root / name).mkdir(parents=True, exist_ok=True)
        results += steps[name](root / name)
    return results


def table(results: list[Outcome]) -> str:
    lines = ["| fault class | tried | survived | lost |", "|---|---|---|---|"]
    lines += [f"| {r.fault} | {r.tried} | {r.survived} | {len(r.lost)} |" for r in results]
    return "\n".join(lines)


def main() -> None:
    import tempfile

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kills", type=int, default=16, help="kill moments per killed command")
    ap.add_argument("--flips", type=int, default=8, help="random byte flips per file type")
    ap.add_argument("--only", default=",".join(CLASSES))
    ap.add_argument("--out", type=Path, default=None, help="write the outcomes as JSON")
    args = ap.parse_args()
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="dait-faults-") as tmp:
        results = run_all(Path(tmp), args.kills, args.flips, tuple(args.only.split(",")))
    print(table(results))
    for r in results:
        for line in r.lost:
            print(f"LOST {r.fault}: {line}")
    print(f"{time.perf_counter() - t0:.0f} s")
    if args.out:
        args.out.write_text(json.dumps([asdict(r) for r in results], indent=2) + "\n")


if __name__ == "__main__":
    main()
