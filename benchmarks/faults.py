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
import json
import os
import random
import shlex
import shutil
import signal
import time
from dataclasses import asdict
from pathlib import Path

from .fault_harness import (
    ARCH,
    Outcome,
    _flip,
    cli,
    digests,
    encode_args,
    make_folder_dataset,
    one_line,
    run_for,
    spawn,
    student_args,
    train_args,
)
from .fault_inputs import bad_inputs


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
    with_workers = 0
    for i in range(kills):
        ws = root / f"kill-{i}"
        # with decode workers: the kernel must take them down too (the rerun, without, is identical)
        n_workers, orphans = run_for([*encode_args(ws, data), "--workers", "2"], duration * (i + 0.5) / kills)
        with_workers += n_workers > 0
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
            same and not tmp and not early and not orphans,
            f"rerun exit {code}, identical {same}, tmp {tmp}, claimed complete early {early}, "
            f"workers left running {orphans}: {text[-200:]}",
        )
    out.notes.append(f"{with_workers} of {kills} kills met DataLoader workers running")
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
    with_workers = 0
    for i in range(kills):
        name = f"kill-{i}"
        moment = duration * (i + 0.5) / kills
        # with DataLoader workers: the kernel must take them down too (the resume, without, is identical)
        n_workers, orphans = run_for(train_args(base, 3, "--name", name, "--workers", "2"), moment)
        with_workers += n_workers > 0
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
            same and not tmp and not early and status == "finished" and not orphans,
            f"resume exit {code}, identical {same}, tmp {tmp}, status {status}, workers left running {orphans}: "
            f"{text[-200:]}",
        )
    out.notes.append(f"{with_workers} of {kills} kills met DataLoader workers running")
    return out


# (signal, to the whole process group, DataLoader workers)
STOPS = (
    (signal.SIGTERM, False, "0"),  # `kill PID`, a scheduler that signals the main process
    (signal.SIGINT, True, "2"),  # a terminal's Ctrl-C
    (signal.SIGINT, False, "0"),
    (signal.SIGTERM, True, "2"),  # `timeout`, a cluster scheduler's cancel
)


def terminate(root: Path, cases: int = len(STOPS)) -> Outcome:
    """SIGTERM (a scheduler's stop) or Ctrl-C during training: exit 143 / 130, status "interrupted",
    one line with the exact command that continues, and that command then finishes the run. Sent
    to the command alone, and to its whole process group with DataLoader workers running (what a
    terminal's Ctrl-C, `timeout` and a cluster scheduler's cancel do); the first ``cases`` of
    :data:`STOPS`."""
    from dait_cache.train import checkpoint as ckpt

    out = Outcome("SIGTERM / Ctrl-C during training")
    data = make_folder_dataset(root / "data", train=24)
    ws = root / "ws"
    assert cli(encode_args(ws, data))[0] == 0
    for sig, group, workers in STOPS[:cases]:
        exit_code, word = (143, "terminated") if sig == signal.SIGTERM else (130, "interrupted")
        name = f"stopped-{sig.name.lower()}" + ("-group" if group else "")
        run_dir = next(ws.glob("*/cache")).parent / "teacher" / name
        # epochs to spare after the first: the run is still training when the signal lands
        args = train_args(ws, 6, "--name", name, "--workers", workers)
        child = spawn(args, session=group)
        child.stdout.readline()
        while not (run_dir / ckpt.METRICS).is_file() and child.poll() is None:  # after the first epoch
            time.sleep(0.05)
        if group:
            os.killpg(child.pid, sig)
        else:
            child.send_signal(sig)
        output = child.communicate()[0]
        status = (ckpt.read_summary(run_dir) or {}).get("status")
        again = shlex.join(["dait-cache", *args, "--resume"])
        said = f"{word}: " in output and f"continue with: {again}" in output and "Traceback" not in output
        resume = ["--resume"] if (run_dir / ckpt.CHECKPOINT).is_file() else []
        code, text = cli(args + resume)
        out.check(
            f"{sig.name} to the {'process group, workers running' if group else 'command'} after the first epoch",
            child.returncode == exit_code and status == "interrupted" and said and code == 0,
            f"exit {child.returncode}, status {status}, said {said}, resume exit {code}: {output[-300:]}",
        )
    return out


def corruption(root: Path, flips: int) -> list[Outcome]:
    """Random single-bit flips per file type; each must be detected (verify, --resume, report)."""
    from dait_cache.cache import verify_cache
    from dait_cache.train import checkpoint as ckpt

    data = make_folder_dataset(root / "data")
    clean = root / "clean"
    assert cli(encode_args(clean, data) + ["--store-views"])[0] == 0  # the view store is a cache file too
    assert cli(train_args(clean, 2))[0] == 0
    rng = random.Random(0)
    outcomes = []
    ds_name = next(clean.glob("*/cache")).parent.name
    cache_files = {
        "shard": "train/shard-00000.h5",
        "text.h5": "text.h5",
        "manifest.json": "manifest.json",
        "view store": "views/train.u8",
    }
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
                code, text = cli(student_args(ws, "dait-f", "--epochs", "1", "--workers", "0"))
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
    out.check(*_overwrite_under_a_training(ws, data))
    return out


def _overwrite_under_a_training(ws: Path, data: Path) -> tuple[str, bool, str]:
    """``encode --overwrite`` (other settings) while a training reads the cache: refused; the
    training, held stopped meanwhile, then finishes on the cache it started with."""
    from dait_cache.cache import verify_cache
    from dait_cache.locks import READERS

    cache = next(ws.glob("*/cache"))
    before = sorted((p.relative_to(cache), p.read_bytes()) for p in cache.rglob("*") if p.is_file())
    run = spawn(train_args(ws, 2, "--name", "read-by"))
    deadline = time.monotonic() + 120
    while not list((cache.parent / READERS).glob("*.json")) and run.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    run.send_signal(signal.SIGSTOP)  # registered and reading: it stays so while encode tries
    try:
        code, said = cli([*encode_args(ws, data), "--overwrite", "--views", "3"])
    finally:
        run.send_signal(signal.SIGCONT)
    trained = run.communicate()[0]
    after = sorted((p.relative_to(cache), p.read_bytes()) for p in cache.rglob("*") if p.is_file())
    ok = (
        code == 1
        and "is being read by run" in said
        and run.returncode == 0
        and after == before
        and verify_cache(cache) == []
        and "Traceback" not in said + trained
    )
    return (
        "overwrite under a training",
        ok,
        f"encode exit {code}, training exit {run.returncode}: {said.strip()[-160:]}",
    )


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
        for line in r.notes:
            print(f"{r.fault}: {line}")
        for line in r.lost:
            print(f"LOST {r.fault}: {line}")
    print(f"{time.perf_counter() - t0:.0f} s")
    if args.out:
        args.out.write_text(json.dumps([asdict(r) for r in results], indent=2) + "\n")


if __name__ == "__main__":
    main()
