"""The embedded default: encode -> per seed, train-teacher -> train-student (one arch x five
methods) -> report (mean ± std over seeds), on the synthetic world with the bundled mini-VLM.

All settings live in :class:`DemoConfig`; how they were chosen (on the validation split only) is
in ``docs/demo-search.md``. Finished runs are reused and unfinished ones resumed, so running the
demo twice prints the same table without training again.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, wait
from dataclasses import dataclass, replace
from pathlib import Path

from .cache.build import OtherSettings
from .config import EncodeConfig, TrainConfig
from .dist import usable_cores
from .encode import encode
from .errors import DaitError
from .minivlm import BASE_SIZE, IMAGE_SIZE, bundled_vlm_id
from .report import RunRecord, Table, build_table, collect_runs, seed_stats
from .run_pool import died, epoch_reporter, run_pool, stop_check
from .train import checkpoint as ckpt
from .train.runs import run_name, setting_differences
from .train.student import NEEDS_TEACHER, train_student
from .train.teacher import train_teacher

Announce = Callable[[str], None]  # announces each stage


@dataclass(frozen=True)
class DemoConfig:
    workdir: str = "./dait-work"
    views: int = 8
    seeds: tuple[int, ...] = (0, 1, 2)  # split, init and view order all follow the seed
    train_fraction: float = 0.3
    val_fraction: float = 0.1
    # timm's tiny ResNet (0.38 M parameters): the budget's largest network that learns well in a
    # minute on 2 cores; docs/demo-search.md has the search on validation that chose these values
    teacher_arch: str = "test_resnet"
    teacher_epochs: int = 60
    student_archs: tuple[str, ...] = ("test_resnet",)
    methods: tuple[str, ...] = ("none", "kd", "vl2lite", "dait-l", "dait-f")
    student_epochs: int = 40
    batch_size: int = 64
    lr: float = 3e-3
    lr_step: int = 40  # the teacher's step schedule
    lr_gamma: float = 0.5
    # the students' own (None: the teacher's): a 40-epoch student ends converged at 3e-4 instead of
    # never decaying (docs/demo-search.md, stage D: validation top-1 at the last epoch 63.6 -> 71.7)
    student_lr_step: int | None = 30
    student_lr_gamma: float | None = 0.1
    workers: int = 0  # on 2 cores a worker process only competes with the training threads
    store_views: bool = True  # training copies the views the VLM saw instead of rendering them

    def encode_config(self) -> EncodeConfig:
        # The cache does not depend on the training seed: one cache serves every seed.
        return EncodeConfig(
            dataset="synthetic",
            workdir=self.workdir,
            vlm=bundled_vlm_id(),
            pretrained=None,
            views=self.views,
            image_size=IMAGE_SIZE,
            base_size=BASE_SIZE,
            batch_size=256,
            workers=2,
            device="cpu",
            seed=0,
            store_views=self.store_views,
        )

    def train_config(self, role: str, arch: str, method: str, epochs: int, seed: int = 0) -> TrainConfig:
        # No ImageNet weights offline: every network starts from scratch, as a user without a
        # download would; a higher lr than the paper's 1e-4 (meant for pretrained nets) for that.
        step, gamma = (self.student_lr_step, self.student_lr_gamma) if role == "student" else (None, None)
        return TrainConfig(
            role=role,
            dataset="synthetic",
            workdir=self.workdir,
            arch=arch,
            method=method,
            epochs=epochs,
            batch_size=self.batch_size,
            lr=self.lr,
            lr_step=self.lr_step if step is None else step,
            lr_gamma=self.lr_gamma if gamma is None else gamma,
            pretrained=False,
            device="cpu",
            workers=self.workers,
            seed=seed,
            val_fraction=self.val_fraction,
            train_fraction=self.train_fraction,
            eval_test="selected",
        )

    def plan(self) -> list[TrainConfig]:
        """Every run of the demo in order: the teachers, then per seed the students (the DAIT
        students name their seed's teacher)."""
        teachers = [
            self.train_config("teacher", self.teacher_arch, "dait", self.teacher_epochs, seed) for seed in self.seeds
        ]
        runs = list(teachers)  # teachers first: no student waits for one at the end
        for seed, teacher in zip(self.seeds, teachers):
            for arch in self.student_archs:
                for method in self.methods:
                    cfg = self.train_config("student", arch, method, self.student_epochs, seed)
                    runs.append(replace(cfg, teacher=run_name(teacher) if method in NEEDS_TEACHER else None))
        return runs


def run_dir_of(cfg: TrainConfig) -> Path:
    return Path(cfg.workdir) / cfg.dataset / ("teacher" if cfg.role == "teacher" else "students") / run_name(cfg)


def _state(run_dir: Path) -> str | None:
    s = ckpt.read_summary(run_dir)
    return None if s is None else s["status"]


def default_jobs() -> int:
    """Runs at once: one per core this process may use, at most 8 (a tiny network uses one core
    better than two threads do)."""
    return max(1, min(8, usable_cores()))


def _train(run: TrainConfig) -> str:
    """Train (or resume) one run of the plan, in a pool process that announces its epochs."""
    run_dir = run_dir_of(run)
    train_fn = train_teacher if run.role == "teacher" else train_student
    train_fn(
        replace(run, resume=(run_dir / ckpt.CHECKPOINT).is_file()),
        progress=stop_check(),
        on_epoch=epoch_reporter(run_dir.name, run.epochs),
    )
    return run_dir.name


def run_demo(
    cfg: DemoConfig, step: Announce | None = None, progress=None, jobs: int | None = None
) -> tuple[list[RunRecord], float]:
    """Run (or complete) the whole demo; return its report records and the wall time.

    ``jobs`` runs train at once in worker processes of one thread each (default: :func:`default_jobs`;
    the numbers do not depend on it); a student starts once its seed's teacher is finished. ``progress(key, done, total)`` hears the
    epochs of each run and, under ``"runs"``, the runs finished."""
    t0 = time.perf_counter()
    say = step or (lambda msg: None)
    show = progress or (lambda key, done, total: None)
    jobs = jobs or default_jobs()
    plan = cfg.plan()
    states = [_state(run_dir_of(run)) for run in plan]
    _check_folders(plan, states)  # before the encode: a refusal costs nothing
    say("encode: mini-VLM over the synthetic world")
    try:
        encode(cfg.encode_config(), progress=progress)
    except OtherSettings as exc:  # the demo has no --overwrite: say what to do instead
        raise DaitError(
            f"{cfg.encode_config().cache_dir} holds a cache with other settings than the demo's "
            f"({'; '.join(exc.diffs[:4])}); give the demo another --workdir, or delete that cache"
        ) from None
    todo = []
    for run, state in zip(plan, states):
        if state == "finished":
            say(f"{run.role} {run_dir_of(run).name}: finished earlier, skipped")
        else:
            todo.append(run)
    done = len(plan) - len(todo)
    show("runs", done, len(plan))
    if todo:
        _train_all(todo, plan, done, jobs, say, show)
    return plan_records(cfg), time.perf_counter() - t0


def _check_folders(plan: list[TrainConfig], states: list[str | None]) -> None:
    """Refuse a workspace where a demo run's folder holds a run with other settings (an older
    demo's, or one trained by hand): it would be neither reused nor trained over silently."""
    for run, state in zip(plan, states):
        if state is not None and (diffs := setting_differences(run_dir_of(run), run, state == "finished")):
            raise DaitError(
                f"{run_dir_of(run)} holds a run with other settings than the demo's ({'; '.join(diffs)}); "
                "move it away, or give the demo another --workdir"
            )


def plan_records(cfg: DemoConfig) -> list[RunRecord]:
    """The report records of the demo's own runs (and the VLM's row): other runs in the
    workspace never enter its table."""
    mine = {run_dir_of(run).resolve() for run in cfg.plan()}
    records = collect_runs(Path(cfg.workdir), ["synthetic"])
    return [r for r in records if r.role == "vlm" or Path(r.run_dir).resolve() in mine]


def startable(todo: list[TrainConfig], running: list[TrainConfig], jobs: int) -> list[TrainConfig]:
    """The runs of ``todo`` to start now, in plan order: at most ``jobs`` in flight, and no
    student whose teacher is still to train or training."""
    unfinished = {run_name(r) for r in todo + running if r.role == "teacher"}
    ready = [run for run in todo if run.teacher not in unfinished]
    return ready[: max(0, jobs - len(running))]


def _train_all(todo: list, plan: list, done: int, jobs: int, say: Announce, show) -> None:
    """Train ``todo`` in a pool of ``jobs`` single-purpose processes, students after their teacher."""
    with run_pool(jobs) as pool:
        running: dict = {}
        while todo or running:
            for run in startable(todo, list(running.values()), jobs):
                todo.remove(run)
                say(f"run {done + len(running) + 1}/{len(plan)}: {run.role} {run_dir_of(run).name}")
                running[pool.submit(_train, run)] = run
            finished, _ = wait(list(running), timeout=0.5, return_when=FIRST_COMPLETED)
            for event in pool.announcements():
                show(*event)
            for future in finished:
                running.pop(future)
                if died(future.exception()):
                    raise DaitError(
                        "a run process of the demo ended without a result (killed by SIGKILL or the "
                        "out-of-memory killer?); run the demo again to resume its runs"
                    )
                future.result()  # a failed run stops the demo with its own error (and the runs in flight)
                done += 1
                show("runs", done, len(plan))


@dataclass(frozen=True)
class DeployDemo:
    """The demo's last step: its best student exported to ONNX, classifying three test images."""

    export: object  # deploy.export.ExportResult
    images: list  # [(path, true class name)]
    predictions: list  # deploy.predict.Prediction, through onnxruntime


def deploy_demo(cfg: DemoConfig, examples: int = 3) -> DeployDemo:
    """Export the student with the best validation top-1 (the test split chooses nothing) to ONNX
    and classify ``examples`` synthetic test images, written as PNG files, with the exported file
    alone."""
    from .data.synthetic import load_synthetic
    from .deploy import best_student_per_dataset, find_images, load_run_model, predict_files
    from .deploy.export import export_run
    from .deploy.predict import load_exported

    best = best_student_per_dataset(plan_records(cfg), "val_top1_best").get("synthetic")
    if best is None:
        raise DaitError(f"no finished demo student in {cfg.workdir}; run the demo first")
    result = export_run(load_run_model(best.run_dir), "onnx")
    test = load_synthetic("test")
    folder = Path(cfg.workdir) / "synthetic" / "examples"
    folder.mkdir(parents=True, exist_ok=True)
    images = []
    for i in range(examples):  # sample i is of class i: three different classes
        path = folder / f"test-{i:05d}.png"
        if not path.is_file():
            test.load_image(i).save(path.with_name(path.name + ".tmp.png"))
            path.with_name(path.name + ".tmp.png").replace(path)
        images.append((str(path), test.class_names[test.samples[i][1]]))
    logits_of, prep, names, _ = load_exported(result.path)
    predictions, _ = predict_files(logits_of, prep, names, find_images([p for p, _ in images]), top_k=3)
    return DeployDemo(result, images, predictions)


def demo_table(records: list[RunRecord], metric: str = "best-val") -> Table:
    return build_table(records, metric, baseline="none")


def ordering_claims(table: Table, method: str = "dait-f", others: tuple[str, ...] = ("none", "vl2lite")) -> list[str]:
    """One sentence per (student arch, other method): does ``method`` beat it beyond one standard
    deviation (mean - std above the other's mean + std), by less, or not at all?"""
    claims = []
    for col in table.columns:
        for arch in sorted({row[0] for row in table.rows if row[2] == "student"}):
            mine = _stats(table, (arch, method, "student"), col)
            for other in others:
                theirs = _stats(table, (arch, other, "student"), col)
                if mine is None or theirs is None:
                    continue
                (m, s), (o, t) = mine, theirs
                verdict = "beats" if m - s > o + t else "is above, within one std of" if m > o else "does not beat"
                claims.append(
                    f"{arch} {table.metric}: {method} {verdict} {other} ({m:.2f} ± {s:.2f} vs {o:.2f} ± {t:.2f})"
                )
    return claims


def _stats(table: Table, row: tuple, col) -> tuple[float, float] | None:
    samples = table.samples.get((row, col))
    if not samples or table.cells[(row, col)][0] is None:
        return None
    mean, std, _ = seed_stats([v for _, v in samples])
    return mean, std
