"""Run a plan: a dependency-ordered pool of processes, one run each. Finished runs are skipped,
interrupted ones resumed with their own settings, a failed run is reported and blocks only the
students that need it.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import replace
from pathlib import Path

from ..errors import DaitError
from ..progress import Progress as Show
from ..train import checkpoint as ckpt
from .plans import PlannedRun

Say = Callable[[str], None]


def run_state(workdir: str | Path, run: PlannedRun) -> str:
    """done (finished), resumable (has a checkpoint) or pending."""
    run_dir = Path(workdir) / run.key
    summary = ckpt.read_summary(run_dir)
    if summary is not None and summary.get("status") == "finished":
        return "done"
    return "resumable" if (run_dir / ckpt.CHECKPOINT).is_file() else "pending"


def _set_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def train_planned(run: PlannedRun, workdir: str, device: str | None = None, events=None) -> str:
    """Train (or resume) one run in this process; ``device`` pins it to one GPU."""
    if device is not None:  # before anything touches CUDA in this fresh process
        os.environ["CUDA_VISIBLE_DEVICES"] = device
    from ..train.student import train_student
    from ..train.teacher import train_teacher

    cfg = replace(run.cfg, workdir=workdir, resume=run_state(workdir, run) == "resumable")
    name = run.key
    on_epoch = None if events is None else (lambda row: events.put((name, row["epoch"] + 1, cfg.epochs)))
    (train_teacher if cfg.role == "teacher" else train_student)(cfg, on_epoch=on_epoch)
    return name


def execute(
    plan: list[PlannedRun],
    workdir: str | Path,
    jobs: int = 1,
    devices: list[str] | None = None,
    threads: int = 1,
    say: Say | None = None,
    show: Show | None = None,
) -> dict[str, str]:
    """Run what is not done; return each run's final state: done, trained, failed: <why> or
    blocked: <teacher>. ``devices`` gives each process one GPU (``CUDA_VISIBLE_DEVICES``)."""
    if jobs < 1:
        raise DaitError(f"--jobs must be 1 or more, not {jobs}")
    say = say or (lambda msg: None)
    show = show or (lambda key, done, total: None)
    workdir = str(workdir)
    states = {r.key: run_state(workdir, r) for r in plan}
    for r in plan:
        if states[r.key] == "done":
            say(f"{r.key}: finished earlier, skipped")
    todo = [r for r in plan if states[r.key] != "done"]
    done = len(plan) - len(todo)
    show("runs", done, len(plan))
    if not todo:
        return states
    ctx = multiprocessing.get_context("spawn")
    free = list(devices) if devices else None
    # a fresh process per run when runs own GPUs: CUDA_VISIBLE_DEVICES only counts before CUDA starts
    pool_kw = {"max_tasks_per_child": 1} if devices else {}
    with (
        ctx.Manager() as manager,
        ProcessPoolExecutor(
            max_workers=jobs, mp_context=ctx, initializer=_set_threads, initargs=(threads,), **pool_kw
        ) as pool,
    ):
        events = manager.Queue()
        running: dict = {}  # future -> (run, device)
        while todo or running:
            for run in list(todo):
                teacher_state = states.get(run.depends) if run.depends else "done"
                if teacher_state and (teacher_state.startswith("failed") or teacher_state.startswith("blocked")):
                    todo.remove(run)
                    states[run.key] = f"blocked: {run.depends} did not finish"
                    say(f"{run.key}: blocked, its teacher {run.depends} did not finish")
                    continue
                ready = teacher_state in ("done", "trained") or run.depends not in states
                if ready and len(running) < jobs and (free is None or free):
                    todo.remove(run)
                    device = free.pop(0) if free is not None else None
                    where = f" on GPU {device}" if device is not None else ""
                    say(f"run {done + len(running) + 1}/{len(plan)}: {run.key}{where}")
                    running[pool.submit(train_planned, run, workdir, device, events)] = (run, device)
            if not running:
                if todo:  # every remaining run waits on a teacher outside the plan that is not done
                    for run in todo:
                        states[run.key] = f"blocked: {run.depends} is not finished"
                    break
                continue
            finished, _ = wait(list(running), timeout=0.5, return_when=FIRST_COMPLETED)
            while not events.empty():
                show(*events.get())
            for future in finished:
                run, device = running.pop(future)
                if free is not None:
                    free.append(device)
                try:
                    future.result()
                    states[run.key] = "trained"
                except Exception as exc:  # a failed run does not stop the independent ones
                    first = (str(exc).splitlines() or [type(exc).__name__])[0]
                    states[run.key] = f"failed: {first}"
                    say(f"{run.key}: failed: {first}")
                done += 1
                show("runs", done, len(plan))
    return states
