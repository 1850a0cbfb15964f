"""Run a plan: a dependency-ordered pool of processes, one run each. Finished runs are skipped,
interrupted ones resumed with their own settings, a failed run is reported and blocks only the
students that need it.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass, field, replace
from pathlib import Path

from ..cache.reader import open_cache
from ..errors import DaitError, first_line
from ..progress import Progress as Show
from ..run_pool import RunPool, died, epoch_reporter, run_pool, stop_check
from ..train import checkpoint as ckpt
from ..train.objectives import ensemble_refusal
from ..train.runs import setting_differences
from ..train.student import NEEDS_ENSEMBLE
from .plans import PlannedRun

Say = Callable[[str], None]


CONFLICT = "other settings"  # a run folder of the plan's name, trained with settings the plan does not ask for
CANNOT = "cannot run"  # the dataset's cache lacks what the run's method needs
NOT_DONE = ("failed", "blocked", CONFLICT, CANNOT)  # states whose students cannot run
# a run whose process ended without a result or a record: nothing in it could say why
KILLED = "its process was killed (SIGKILL, or the out-of-memory killer?); rerun the study to resume it"


def run_state(workdir: str | Path, run: PlannedRun) -> str:
    """done (finished), resumable (has a checkpoint), pending, or "other settings: ..." when
    the run folder holds a run trained with settings the plan does not ask for."""
    run_dir = Path(workdir) / run.key
    summary = ckpt.read_summary(run_dir)
    finished = summary is not None and summary.get("status") == "finished"
    state = "done" if finished else "resumable" if (run_dir / ckpt.CHECKPOINT).is_file() else "pending"
    if state != "pending" and (diffs := setting_differences(run_dir, run.cfg, finished)):
        return f"{CONFLICT}: {'; '.join(diffs)}"
    if not finished and (why := cache_refusal(workdir, run)):
        return f"{CANNOT}: {why}"
    return state


def cache_refusal(workdir: str | Path, run: PlannedRun) -> str | None:
    """Why the dataset's cache cannot train ``run`` (rise and borlan need the prompt ensemble),
    known before the study starts rather than when the run's turn comes, hours in; None when it can
    (or when the cache cannot be read yet: the run then says why itself). The manifest's list of
    templates tells, without loading the text embeddings for each run of the plan."""
    if run.cfg.method not in NEEDS_ENSEMBLE:
        return None
    try:
        templates = open_cache(Path(workdir) / run.cfg.dataset / "cache").manifest["prompts"]["templates"]
    except (DaitError, KeyError):
        return None
    return ensemble_refusal(run.cfg.method, len(templates))


def train_planned(run: PlannedRun, workdir: str, device: str | None = None) -> str:
    """Train (or resume) one run in this process; ``device`` pins it to one GPU."""
    if device is not None:  # before anything touches CUDA in this fresh process
        os.environ["CUDA_VISIBLE_DEVICES"] = device
    from ..train.student import train_student
    from ..train.teacher import train_teacher

    cfg = replace(run.cfg, workdir=workdir, resume=run_state(workdir, run) == "resumable")
    (train_teacher if cfg.role == "teacher" else train_student)(cfg, stop_check(), epoch_reporter(run.key, cfg.epochs))
    return run.key


@dataclass
class _Schedule:
    """The runner's book-keeping: what waits, what runs where, what ended how."""

    plan: list[PlannedRun]
    states: dict[str, str]
    jobs: int
    free: list[str] | None  # GPUs not in use (None: no GPU pinning)
    say: Say
    show: Show
    todo: list[PlannedRun] = field(default_factory=list)
    running: dict = field(default_factory=dict)  # future -> (run, device)
    done: int = 0
    workdir: str = "."

    def start_ready(self, submit: Callable[[PlannedRun, str | None], Future]) -> None:
        """Start every run whose teacher is done while a slot (and a GPU) is free; block the runs
        whose teacher failed."""
        for run in list(self.todo):
            teacher_state = self.states.get(run.depends) if run.depends else "done"
            if teacher_state and teacher_state.startswith(NOT_DONE):
                self.todo.remove(run)
                why = "holds other settings" if teacher_state.startswith(CONFLICT) else "did not finish"
                self.states[run.key] = f"blocked: {run.depends} {why}"
                self.say(f"{run.key}: blocked, its teacher {run.depends} {why}")
                continue
            ready = teacher_state in ("done", "trained") or run.depends not in self.states
            if ready and len(self.running) < self.jobs and (self.free is None or self.free):
                self.todo.remove(run)
                device = self.free.pop(0) if self.free is not None else None
                where = f" on GPU {device}" if device is not None else ""
                self.say(f"run {self.done + len(self.running) + 1}/{len(self.plan)}: {run.key}{where}")
                self.running[submit(run, device)] = (run, device)

    def collect(self, finished, pool: RunPool) -> None:
        """Record the runs that ended; a failed run does not stop the independent ones."""
        for future in finished:
            run, device = self.running.pop(future)
            if self.free is not None:
                self.free.append(device)
            try:
                future.result()
                self.states[run.key] = "trained"
            except Exception as exc:
                if died(exc) and self._stopped_for_another(run, future, pool):
                    self.todo.insert(0, run)
                    self.say(f"{run.key}: stopped when another run's process died; it resumes")
                    continue
                first = KILLED if died(exc) else first_line(exc, 1000)
                self.states[run.key] = f"failed: {first}"
                self.say(f"{run.key}: failed: {first}")
            self.done += 1
            self.show("runs", self.done, len(self.plan))

    def _stopped_for_another(self, run: PlannedRun, future: Future, pool: RunPool) -> bool:
        # One run's process died, and its pool stopped the others: they recorded themselves as
        # interrupted; the one that died could record nothing and still reads "running".
        pool.settle(future)
        return (ckpt.read_summary(Path(self.workdir) / run.key) or {}).get("status") == "interrupted"


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
    workdir = str(workdir)
    sched = _Schedule(plan, {r.key: run_state(workdir, r) for r in plan}, jobs, list(devices) if devices else None,
                      say or (lambda msg: None), show or (lambda key, done, total: None), workdir=workdir)  # fmt: skip
    for r in plan:
        state = sched.states[r.key]
        if state == "done":
            sched.say(f"{r.key}: finished earlier, skipped")
        elif state.startswith(CONFLICT):  # neither trained over nor taken for the plan's run
            sched.say(
                f"{r.key}: holds a run with {state}; move that folder away (or pass the study the "
                "run's settings), then rerun the study"
            )
        elif state.startswith(CANNOT):
            sched.say(f"{r.key}: {state}")
    sched.todo = [
        r for r in plan if sched.states[r.key] != "done" and not sched.states[r.key].startswith((CONFLICT, CANNOT))
    ]
    sched.done = len(plan) - len(sched.todo)
    sched.show("runs", sched.done, len(plan))
    if not sched.todo:
        return sched.states
    # a fresh process per run when runs own GPUs: CUDA_VISIBLE_DEVICES only counts before CUDA starts
    with run_pool(jobs, threads, fresh_process_per_run=bool(devices)) as pool:
        while sched.todo or sched.running:
            sched.start_ready(lambda run, device: pool.submit(train_planned, run, workdir, device))
            if not sched.running:
                # every remaining run waits on a teacher outside the plan that is not done
                for run in sched.todo:
                    sched.states[run.key] = f"blocked: {run.depends} is not finished"
                break
            finished, _ = wait(list(sched.running), timeout=0.5, return_when=FIRST_COMPLETED)
            for event in pool.announcements():
                sched.show(*event)
            sched.collect(finished, pool)
    return sched.states
