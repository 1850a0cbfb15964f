"""The paper's studies as data: each plan is a list of runs, each run a full :class:`TrainConfig`
and the teacher run it waits for (trained on the same rows: same cache, seed and fractions).

Plans (per dataset, repeated per seed):

- ``table1``: the DAIT teacher, then ResNet-18 and MobileNetV2 with every method.
- ``table2``: four students with DAIT-F, DAIT-L and VL2Lite.
- ``table3``: per training fraction, a teacher and the Table-2 students on that fraction.
- ``teachers``: five intermediate teachers (Figs. 4-6), a DAIT-F ResNet-18 student each.
- ``lambda``: DAIT-F ResNet-18 over a grid of lambda = k * epoch + b (Fig. 7a; k in units of
  1/epochs) and the "distillation first" / "CE first" schedules (Fig. 7b).
"""

from __future__ import annotations

import shlex
from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields, replace

from ..config import TrainConfig, dataset_slug
from ..errors import DaitError
from ..models import check_arch
from ..train.runs import check_numbers, fraction_tag, run_name, seed_tag
from ..train.student import METHODS, NEEDS_TEACHER

TEACHER = "regnety_016"
TABLE1_STUDENTS = ("resnet18", "mobilenetv2")
TABLE2_STUDENTS = ("resnet18", "mobilenetv2", "efficientnet_b0", "shufflenetv2")
TABLE2_METHODS = ("dait-f", "dait-l", "vl2lite")
TABLE3_FRACTIONS = (0.3, 0.5, 1.0)
STUDY_TEACHERS = ("resnet50", "resnet34", "efficientnet_b0", "regnety_016", "vgg13")
LAMBDA_K = (0.5, 1.0, 2.0)  # x 1/epochs: the CE weight reaches 1 at 2E, E or E/2 epochs
LAMBDA_B = (0.0, 0.25, 0.5)
STRATEGIES = {"distill-first": (1.0, 0.0), "ce-first": (-1.0, 1.0)}  # (k, b): lambda rises / falls


@dataclass(frozen=True)
class PlannedRun:
    """One run of a study: its settings and the key of the teacher run it waits for."""

    cfg: TrainConfig
    depends: str | None = None
    group: str = ""  # what the run shows in its plan's table or figure (e.g. the lambda grid point)

    @property
    def folder(self) -> str:
        return "teacher" if self.cfg.role == "teacher" else "students"

    @property
    def key(self) -> str:
        """``<dataset>/<teacher|students>/<run name>``: the run folder under the workspace."""
        return f"{self.cfg.dataset}/{self.folder}/{run_name(self.cfg)}"

    def command(self, workdir: str) -> str:
        """The ``dait-cache`` command that trains this run on its own (for a cluster scheduler)."""
        return " ".join(shlex.quote(a) for a in ["dait-cache", "--workdir", workdir, *train_args(self.cfg)])


DEFAULTS = TrainConfig()
NOT_OPTIONS = ("role", "workdir", "resume", "max_batches", "arch", "method")


def _text(value) -> str:
    if isinstance(value, float):
        short = f"{value:g}"
        return short if float(short) == value else repr(value)  # the command must give the same number
    return str(value)


def train_args(cfg: TrainConfig) -> list[str]:
    """The command-line arguments that reproduce ``cfg``: arch and method always, the other
    settings where they differ from the defaults."""
    args = ["train-teacher" if cfg.role == "teacher" else "train-student", "--arch", cfg.arch, "--method", cfg.method]
    for f in fields(TrainConfig):
        value = getattr(cfg, f.name)
        if f.name in NOT_OPTIONS or value == getattr(DEFAULTS, f.name):
            continue
        flag = "--" + f.name.replace("_", "-")
        if isinstance(value, bool):
            args.append(flag if value else f"--no-{f.name.replace('_', '-')}")
        elif value is not None and value != "":
            args += [flag, _text(value)]
    return args


# A plan yields, for one dataset and seed, (role, arch, method, teacher arch, fraction, tag, extra settings).
Item = tuple[str, str, str, str | None, float, str, dict]


def _table1() -> Iterator[Item]:
    yield "teacher", TEACHER, "dait", None, 1.0, "", {}
    for arch in TABLE1_STUDENTS:
        for method in METHODS:
            yield "student", arch, method, TEACHER if method in NEEDS_TEACHER else None, 1.0, "", {}


def _table2() -> Iterator[Item]:
    yield "teacher", TEACHER, "dait", None, 1.0, "", {}
    for arch in TABLE2_STUDENTS:
        for method in TABLE2_METHODS:
            yield "student", arch, method, TEACHER if method in NEEDS_TEACHER else None, 1.0, "", {}


def _table3() -> Iterator[Item]:
    for fraction in TABLE3_FRACTIONS:
        yield "teacher", TEACHER, "dait", None, fraction, "", {}
        for arch in TABLE2_STUDENTS:
            for method in TABLE2_METHODS:
                yield "student", arch, method, TEACHER if method in NEEDS_TEACHER else None, fraction, "", {}


def _teachers() -> Iterator[Item]:
    for teacher in STUDY_TEACHERS:
        yield "teacher", teacher, "dait", None, 1.0, "", {}
        yield "student", "resnet18", "dait-f", teacher, 1.0, f"t-{teacher}", {}


def _lambda() -> Iterator[Item]:
    yield "teacher", TEACHER, "dait", None, 1.0, "", {}
    points = {f"k{k:g}-b{b:g}": (k, b) for k in LAMBDA_K for b in LAMBDA_B}
    points.update({name: kb for name, kb in STRATEGIES.items() if f"k{kb[0]:g}-b{kb[1]:g}" not in points})
    for tag, (k, b) in points.items():
        yield "student", "resnet18", "dait-f", TEACHER, 1.0, f"lam-{tag}", {"lambda_k": k, "lambda_bias": b}


PLANS: dict[str, Callable[[], Iterator[Item]]] = {
    "table1": _table1,
    "table2": _table2,
    "table3": _table3,
    "teachers": _teachers,
    "lambda": _lambda,
}


def _same(asked, offered) -> bool:
    if isinstance(asked, float):
        return abs(asked - offered) < 1e-9
    return asked == offered


@dataclass(frozen=True)
class StudyFilters:
    """Narrow a plan: only these students, methods, teachers or fractions (None: all)."""

    students: tuple[str, ...] | None = None
    methods: tuple[str, ...] | None = None
    teachers: tuple[str, ...] | None = None
    fractions: tuple[float, ...] | None = None

    def check(self, plan: str, items: list[Item]) -> None:
        """Refuse a value the plan does not hold: a typo would silently drop its runs."""
        offered = {
            "students": {arch for role, arch, *_ in items if role == "student"},
            "methods": {method for role, _, method, *_ in items if role == "student"},
            "teachers": {arch for role, arch, *_ in items if role == "teacher"},
            "fractions": {fraction for _, _, _, _, fraction, _, _ in items},
        }
        for field, values in offered.items():
            unknown = [v for v in getattr(self, field) or () if not any(_same(v, o) for o in values)]
            if unknown:
                names = " (names before --arch-map)" if field in ("students", "teachers") else ""
                raise DaitError(
                    f"--{field} {','.join(map(_text, unknown))}: not in plan {plan}, whose {field} are "
                    f"{', '.join(map(_text, sorted(values)))}{names}"
                )

    def keep(self, role: str, arch: str, method: str, fraction: float) -> bool:
        if self.fractions is not None and not any(_same(f, fraction) for f in self.fractions):
            return False
        if role == "teacher":
            return self.teachers is None or arch in self.teachers
        # a student whose teacher is filtered out is dropped by build_plan (it could not train)
        return (self.students is None or arch in self.students) and (self.methods is None or method in self.methods)


def _check_swap(swap: dict[str, str]) -> None:
    """Refuse a replacement of an architecture no plan has (a typo), or by a name no builder knows.
    One map serves every plan: a plan leaves the others' architectures alone."""
    archs = {arch for items in PLANS.values() for _, arch, *_ in items()}
    unknown = [paper for paper in swap if paper not in archs]
    if unknown:
        raise DaitError(
            f"--arch-map {','.join(unknown)}: not an architecture of any plan; the plans' architectures are "
            f"{', '.join(sorted(archs))}"
        )
    for paper, arch in swap.items():
        try:
            check_arch(arch)
        except DaitError as exc:
            raise DaitError(f"--arch-map {paper}={arch}: {exc}") from None


def _check_inputs(
    plan: str, datasets: tuple[str, ...], seeds: tuple[int, ...], base: TrainConfig
) -> tuple[tuple[str, ...], tuple[int, ...]]:
    """The plan's datasets and seeds, each once (a repeat would schedule the same run folder
    twice); one line for what no run could train with, before any run starts."""
    if plan not in PLANS:
        raise DaitError(f"unknown study plan {plan!r}; valid: {', '.join(PLANS)}")
    if not datasets:
        raise DaitError("a study needs at least one --dataset")
    if any(seed < 0 for seed in seeds):
        raise DaitError(f"--seeds {','.join(map(str, seeds))}: seeds are integers of 0 or more")
    check_numbers(base)  # not the device: a dry run prints commands for other machines
    return tuple(dict.fromkeys(map(dataset_slug, datasets))), tuple(dict.fromkeys(seeds))


def build_plan(
    plan: str,
    datasets: tuple[str, ...],
    seeds: tuple[int, ...] = (0,),
    filters: StudyFilters | None = None,
    base: TrainConfig | None = None,
    swap: dict[str, str] | None = None,
) -> list[PlannedRun]:
    """Every run of ``plan`` for each dataset and seed, teachers before the students that need them.

    ``base`` carries the settings every run shares (workdir, epochs, lr, device, ...); ``swap``
    replaces architectures everywhere (``{"regnety_016": "test_resnet"}``: a miniature)."""
    swap, filters, base = swap or {}, filters or StudyFilters(), base or TrainConfig()
    datasets, seeds = _check_inputs(plan, datasets, seeds, base)
    filters.check(plan, list(PLANS[plan]()))
    _check_swap(swap)
    runs: list[PlannedRun] = []
    for dataset in datasets:
        for seed in seeds:
            teachers: dict[tuple[str, float], PlannedRun] = {}
            for role, arch, method, teacher, fraction, tag, extra in PLANS[plan]():
                if not filters.keep(role, arch, method, fraction):
                    continue
                cfg = replace(
                    base,
                    role=role,
                    dataset=dataset,
                    arch=swap.get(arch, arch),
                    method=method,
                    train_fraction=fraction,
                    seed=seed,
                    resume=False,  # the runner resumes what its folder holds
                    teacher=None,  # the plan names each student's teacher
                )
                if role == "teacher":  # settings train-teacher has no option for: its printed command trains it
                    cfg = replace(cfg, kd_alpha=DEFAULTS.kd_alpha)
                if "lambda_k" in extra:  # k in units of 1/epochs
                    cfg = replace(cfg, lambda_rate=extra["lambda_k"] / cfg.epochs, lambda_bias=extra["lambda_bias"])
                if tag:  # runs named by what they vary; the fraction and seed tags stay at the end
                    cfg = replace(cfg, name=f"{tag}{fraction_tag(fraction)}{seed_tag(seed)}")
                depends = None
                if teacher is not None:
                    needed = teachers.get((teacher, fraction))
                    if needed is None:  # the teacher was filtered out: the student cannot run
                        continue
                    cfg = replace(cfg, teacher=run_name(needed.cfg))
                    depends = needed.key
                run = PlannedRun(cfg, depends, group=tag)
                if role == "teacher":
                    teachers[(arch, fraction)] = run
                runs.append(run)
    return runs
