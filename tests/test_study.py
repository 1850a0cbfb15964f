"""dait-cache study: plans as data (names, dependencies, filters, commands), and resumable execution."""

import csv
import hashlib
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from encode_helpers import own_workspace
from PIL import Image

from benchmarks.fault_harness import children
from cli.main import cli
from dait_cache.config import TrainConfig
from dait_cache.errors import DaitError
from dait_cache.locks import abandoned
from dait_cache.study import StudyFilters, build_plan, run_state
from dait_cache.train import checkpoint as ckpt
from dait_cache.train.student import METHODS, NEEDS_TEACHER

ROOT = Path(__file__).resolve().parents[1]


def test_table1_has_a_teacher_and_every_method_per_dataset_and_seed():
    runs = build_plan("table1", ("cub", "aircraft"), seeds=(0, 2))
    assert len(runs) == 2 * 2 * (1 + 2 * len(METHODS))
    keys = [r.key for r in runs]
    assert len(set(keys)) == len(keys)
    assert "cub/teacher/regnety_016-dait" in keys and "aircraft/teacher/regnety_016-dait-s2" in keys
    assert "aircraft/students/mobilenetv2-dait-f-s2" in keys and "cub/students/resnet18-none" in keys
    for r in runs:
        if r.cfg.role == "student" and r.cfg.method in NEEDS_TEACHER:
            seed = "-s2" if r.cfg.seed == 2 else ""
            assert r.depends == f"{r.cfg.dataset}/teacher/regnety_016-dait{seed}"
            assert r.cfg.teacher == f"regnety_016-dait{seed}"
        elif r.cfg.role == "student":
            assert r.depends is None and r.cfg.teacher is None
    assert keys.index("cub/teacher/regnety_016-dait") < keys.index("cub/students/resnet18-dait-f")


def test_table3_trains_a_teacher_per_fraction_on_the_students_rows():
    runs = build_plan("table3", ("cub",), filters=StudyFilters(students=("resnet18",), methods=("dait-f",)))
    assert [(r.key, r.depends) for r in runs] == [
        ("cub/teacher/regnety_016-dait-frac0.3", None),
        ("cub/students/resnet18-dait-f-frac0.3", "cub/teacher/regnety_016-dait-frac0.3"),
        ("cub/teacher/regnety_016-dait-frac0.5", None),
        ("cub/students/resnet18-dait-f-frac0.5", "cub/teacher/regnety_016-dait-frac0.5"),
        ("cub/teacher/regnety_016-dait", None),
        ("cub/students/resnet18-dait-f", "cub/teacher/regnety_016-dait"),
    ]
    assert [r.cfg.train_fraction for r in runs] == [0.3, 0.3, 0.5, 0.5, 1.0, 1.0]


def test_plan_inputs_an_api_user_gives(monkeypatch):
    """Fractions computed in floating point still select their runs; negative seeds are refused;
    a registered plan's tagged runs keep the fraction and seed tags at the end of their names."""
    from dait_cache.study import PLANS

    runs = build_plan("table3", ("cub",), filters=StudyFilters(fractions=(0.1 + 0.2,)))
    assert runs and {r.cfg.train_fraction for r in runs} == {0.3}
    with pytest.raises(DaitError, match="--seeds 0,-1: seeds are integers of 0 or more"):
        build_plan("table1", ("cub",), seeds=(0, -1))
    # a repeated seed or dataset scheduled the same run folders twice (22 runs for --seeds 0,0)
    once = [r.key for r in build_plan("lambda", ("cub",), seeds=(2, 0))]
    assert [r.key for r in build_plan("lambda", ("cub", "cub"), seeds=(2, 0, 2))] == once and len(once) == 22
    for flag, setting in (("--lr", dict(lr=float("nan"))), ("--weight-decay", dict(weight_decay=-1.0))):
        with pytest.raises(DaitError, match=f"^{flag} .* cannot train"):  # before any run, not in each
            build_plan("table1", ("cub",), base=TrainConfig(**setting))

    def half():
        yield "teacher", "regnety_016", "dait", None, 0.5, "", {}
        yield "student", "resnet18", "dait-f", "regnety_016", 0.5, "mine", {}

    monkeypatch.setitem(PLANS, "half", half)
    assert [r.key for r in build_plan("half", ("cub",), seeds=(2,))] == [
        "cub/teacher/regnety_016-dait-frac0.5-s2",
        "cub/students/resnet18-dait-f-mine-frac0.5-s2",
    ]


def test_teachers_and_lambda_plans_and_filters():
    runs = build_plan("teachers", ("cub",), filters=StudyFilters(teachers=("vgg13", "resnet34")))
    assert [(r.key, r.depends) for r in runs] == [
        ("cub/teacher/resnet34-dait", None),
        ("cub/students/resnet18-dait-f-t-resnet34", "cub/teacher/resnet34-dait"),
        ("cub/teacher/vgg13-dait", None),
        ("cub/students/resnet18-dait-f-t-vgg13", "cub/teacher/vgg13-dait"),
    ]
    base = TrainConfig(epochs=40)
    lam = [r for r in build_plan("lambda", ("cub",), base=base) if r.cfg.role == "student"]
    assert len(lam) == 3 * 3 + 1  # the grid, and CE-first (distillation-first is the grid's k=1, b=0)
    got = {r.group: (r.cfg.lambda_rate, r.cfg.lambda_bias) for r in lam}
    assert got["lam-k0.5-b0.25"] == (0.5 / 40, 0.25) and got["lam-ce-first"] == (-1 / 40, 1.0)
    swapped = build_plan(
        "table2",
        ("cub",),
        filters=StudyFilters(methods=("dait-l",)),
        swap={"regnety_016": "test_resnet", "resnet18": "test_resnet"},
    )
    assert {r.cfg.arch for r in swapped} == {"test_resnet", "mobilenetv2", "efficientnet_b0", "shufflenetv2"}
    assert all(r.cfg.teacher == "test_resnet-dait" for r in swapped if r.cfg.role == "student")
    with pytest.raises(DaitError, match="unknown study plan 'table9'; valid: table1, table2"):
        build_plan("table9", ("cub",))


@pytest.mark.parametrize(
    "plan, filters, said",
    [
        (
            "table2",
            StudyFilters(students=("resnet18", "resnet99")),
            "--students resnet99: not in plan table2, whose "
            "students are efficientnet_b0, mobilenetv2, resnet18, shufflenetv2 (names before --arch-map)",
        ),
        (
            "table1",
            StudyFilters(methods=("dait-x",)),
            "--methods dait-x: not in plan table1, whose methods are borlan,",
        ),
        ("teachers", StudyFilters(teachers=("foo_net",)), "--teachers foo_net: not in plan teachers, whose teachers"),
        (
            "table3",
            StudyFilters(fractions=(0.4,)),
            "--fractions 0.4: not in plan table3, whose fractions are 0.3, 0.5, 1$",
        ),
        ("lambda", StudyFilters(students=("mobilenetv2",)), "whose students are resnet18 "),
        # a student architecture is not a teacher of the plan, though the plan trains it
        (
            "table1",
            StudyFilters(teachers=("resnet18",)),
            "--teachers resnet18: not in plan table1, whose teachers are regnety_016 ",
        ),
    ],
)
def test_a_filter_value_the_plan_does_not_hold_is_refused(plan, filters, said):
    # a typo would otherwise drop its runs silently: `--students resnet99` left table2 with its teacher only
    with pytest.raises(DaitError) as err:
        build_plan(plan, ("cub",), filters=filters)
    assert re.search(re.escape(said.rstrip("$")) + ("$" if said.endswith("$") else ""), str(err.value))
    kept = build_plan("table3", ("cub",), filters=StudyFilters(fractions=(0.3,), students=("resnet18",)))
    assert [r.key for r in kept][:2] == ["cub/teacher/regnety_016-dait-frac0.3", "cub/students/resnet18-dait-f-frac0.3"]


@pytest.mark.parametrize(
    "swap, said",
    [
        (
            {"regnety_016": "test_resnet", "resnt18": "test_resnet"},
            "--arch-map resnt18: not an architecture of any plan; the plans' architectures are "
            "efficientnet_b0, mobilenetv2, regnety_016, resnet18, resnet34, resnet50, shufflenetv2, vgg13",
        ),
        ({"vgg13": "vgg_13"}, "--arch-map vgg13=vgg_13: unknown architecture 'vgg_13'; use one of resnet18,"),
    ],
)
def test_an_arch_map_the_plan_cannot_use_is_refused(swap, said):
    # both were silent: a mistyped key replaced nothing, a mistyped value failed each run at its start
    with pytest.raises(DaitError) as err:
        build_plan("teachers", ("cub",), swap=swap)
    assert str(err.value).startswith(said)


def test_one_arch_map_serves_every_plan():
    # benchmarks/study_miniature.sh passes the teacher study's map to the lambda plan too, which
    # was refused for the architectures only the teacher study has
    swap = {"regnety_016": "test_resnet", "resnet50": "test_byobnet", "vgg13": "test_nfnet", "resnet18": "test_resnet"}
    runs = build_plan("lambda", ("cub",), swap=swap)
    assert {r.cfg.arch for r in runs} == {"test_resnet"}


def test_each_printed_command_trains_exactly_the_planned_run(monkeypatch, tmp_path):
    """The dry run's commands are for a cluster scheduler: each must give back the planned config."""
    import shlex

    from dait_cache.train import student, teacher

    seen = []
    monkeypatch.setattr(teacher, "train_teacher", lambda cfg, **kw: seen.append(cfg) or (tmp_path, {}))
    monkeypatch.setattr(student, "train_student", lambda cfg, **kw: seen.append(cfg) or (tmp_path, {}))
    monkeypatch.setattr("cli.train.render_summary", lambda *a: None)
    base = TrainConfig(
        workdir=str(tmp_path),
        epochs=7,
        lr=3e-3,
        pretrained=False,
        device="cpu",
        workers=0,
        eval_test="selected",
        val_fraction=0.2,
        kd_alpha=0.7,  # a setting only students have: train-teacher has no option for it
        teacher="elsewhere-dait",  # the plan names each student's teacher
        resume=True,  # the runner resumes what a folder holds
    )
    runs = build_plan("lambda", ("cub",), seeds=(1,), base=base) + build_plan("table3", ("cub",), base=base)
    runs += build_plan("table1", ("cub",), base=base, filters=StudyFilters(students=("resnet18",)))
    kd = next(r for r in runs if r.cfg.method == "kd")  # the VLM's KD: no intermediate teacher
    assert kd.cfg.kd_alpha == 0.7 and kd.cfg.teacher is None and "--kd-alpha 0.7" in kd.command("w")
    capped = build_plan("table1", ("cub",), base=replace(base, max_batches=2))[0]
    assert "--max-batches" not in capped.command("w")  # a Python-only knob (benchmarks): no option takes it
    for run in runs:
        args = shlex.split(run.command(str(tmp_path)))[1:]
        r = CliRunner().invoke(cli, args)
        assert r.exit_code == 0, (args, r.output)
        assert seen[-1] == replace(run.cfg, workdir=str(tmp_path)), args


def _encode_synthetic(ws: Path) -> None:
    from dait_cache.config import EncodeConfig
    from dait_cache.encode import encode

    encode(EncodeConfig(dataset="synthetic", workdir=str(ws), views=1, batch_size=256, workers=0, device="cpu"))


MINI = [
    "--arch-map",
    "regnety_016=test_resnet,resnet18=test_resnet,resnet34=vit_tiny_patch16_224",
    "--epochs",
    "1",
    "--batch-size",
    "64",
    "--lr",
    "3e-3",
    "--no-pretrained",
    "--device",
    "cpu",
    "--workers",
    "0",
    "--eval-test",
    "selected",
]


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def _run_processes(pid: int) -> list[int]:
    """The study's run processes: its spawned children (not the resource tracker)."""
    found = []
    for child in children(pid):
        try:
            if b"spawn_main" in Path(f"/proc/{child}/cmdline").read_bytes():
                found.append(child)
        except OSError:  # ended meanwhile
            continue
    return found


def _study_process(args: list[str], capture: bool = True) -> subprocess.Popen:
    """``dait-cache ARGS`` in a process group of its own, which a signal can reach as a whole; it
    takes Ctrl-C as a foreground command does, even when the tests run in the background."""
    return subprocess.Popen(
        [sys.executable, "-m", "cli.main", *args],
        cwd=ROOT,
        start_new_session=True,
        stdout=subprocess.PIPE if capture else subprocess.DEVNULL,
        stderr=subprocess.STDOUT if capture else subprocess.DEVNULL,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def _wait_for(what: str, ready, child, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while not ready():
        assert child.poll() is None and time.monotonic() < deadline, what
        time.sleep(0.2)


@pytest.mark.slow
def test_a_stopped_study_stops_its_runs_and_one_killed_run_stops_no_other(tmp_path):
    from dait_cache.report import collect_runs

    ws = tmp_path / "ws"
    _encode_synthetic(ws)
    mini = MINI[MINI.index("--lr") :]  # not --epochs 1 nor --workers 0: long runs, DataLoader workers
    mini[mini.index("--workers") + 1] = "1"
    args = ["--workdir", str(ws), "study", "teachers", "--dataset", "synthetic", "--teachers", "regnety_016,vgg13"]
    args += ["--arch-map", "regnety_016=test_resnet,vgg13=test_nfnet", "--epochs", "500", "--batch-size", "64"]
    args += ["--jobs", "2", *mini]
    teachers = [ws / "synthetic" / "teacher" / f"{a}-dait" for a in ("test_resnet", "test_nfnet")]

    def status(t):
        return (ckpt.read_summary(t) or {}).get("status")

    # SIGTERM to the runner alone (a scheduler, `kill PID`): it passes the stop on to the runs in
    # flight, instead of waiting for them to finish. Then one run's process is SIGKILLed (the
    # out-of-memory killer): the other run goes on (a process pool stops all), and SIGTERM to the
    # whole group (`timeout`, a scheduler's cancel) stops it: each process takes it once, as with a
    # terminal's Ctrl-C.
    for fault in ("SIGTERM to the runner", "SIGKILL of one run, then SIGTERM to the group"):
        for t in teachers:  # the previous round's record goes, to see this round's written anew
            (t / ckpt.SUMMARY).unlink(missing_ok=True)
        child = _study_process(args)
        try:
            _wait_for("the runs did not start", lambda: all(status(t) == "running" for t in teachers), child)
            time.sleep(2)  # into the first epoch, DataLoader workers started
            if fault != "SIGTERM to the runner":
                os.kill(_run_processes(child.pid)[0], signal.SIGKILL)
                # the pool stops the other run (which records it), then it resumes in a new pool
                _wait_for("the other run was not stopped", lambda: "interrupted" in map(status, teachers), child)
                other = next(t for t in teachers if status(t) == "interrupted")
                _wait_for("it did not resume", lambda o=other: status(o) == "running" and not abandoned(o), child)
                time.sleep(2)  # its DataLoader worker started: the group's signal reaches it too
                os.killpg(child.pid, signal.SIGTERM)
            else:
                child.send_signal(signal.SIGTERM)
            output = child.communicate(timeout=60)[0]
        finally:
            if child.poll() is None:  # a failed stop: leave no 500-epoch runs behind
                os.killpg(child.pid, signal.SIGKILL)
        said_after = f"after {fault}, the study printed:\n{output}"  # in full: pytest cuts a repr
        assert child.returncode == 143, said_after
        assert "continue with: dait-cache" in output and "leaked" not in output, said_after
        # not even from the killed run's DataLoader worker, which dies with it (data.workers), nor
        # for a stop that landed where Python drops a raise (stops.py)
        assert "Traceback" not in output, said_after
        deadline = time.monotonic() + 10  # the last of them may still be on its way out (a zombie)
        while _group_alive(child.pid):  # no run, pool or DataLoader process left behind
            assert time.monotonic() < deadline, "processes of the study outlived it"
            time.sleep(0.1)
        if fault == "SIGTERM to the runner":
            assert [status(t) for t in teachers] == ["interrupted", "interrupted"]
    said = " ".join(output.split())  # one line, whatever the spacing
    assert sorted(status(t) for t in teachers) == ["interrupted", "running"]  # killed: no record
    killed = next(t for t in teachers if t != other)
    assert status(killed) == "running"
    assert f"{killed.parent.parent.name}/teacher/{killed.name}: failed: its process was killed (SIGKILL" in said
    assert (
        f"{other.parent.parent.name}/teacher/{other.name}: stopped when another run's process died; it resumes" in said
    )
    # the report does not show the killed run as running
    assert {Path(r.run_dir).name: r.status for r in collect_runs(ws) if r.role == "teacher"} == {
        killed.name: "killed",
        other.name: "interrupted",
    }


@pytest.mark.slow
def test_a_killed_study_resumes_without_retraining_and_a_failed_teacher_blocks_only_its_student(tmp_path, monkeypatch):
    ws = tmp_path / "ws"
    _encode_synthetic(ws)
    args = ["--workdir", str(ws), "study", "teachers", "--dataset", "synthetic", "--teachers", "regnety_016", *MINI]
    child = _study_process(args, capture=False)
    teacher = ws / "synthetic" / "teacher" / "test_resnet-dait"
    deadline = time.monotonic() + 300
    while (ckpt.read_summary(teacher) or {}).get("status") != "finished":
        assert child.poll() is None and time.monotonic() < deadline, "the study ended before its first run finished"
        time.sleep(0.2)
    os.killpg(child.pid, signal.SIGKILL)  # the runner and its pool, at once
    child.wait()
    student = ws / "synthetic" / "students" / "test_resnet-dait-f-t-regnety_016"
    assert (ckpt.read_summary(student) or {}).get("status") != "finished"
    before = {p.name: p.read_bytes() for p in teacher.iterdir() if p.is_file()}
    r = CliRunner().invoke(cli, args)
    assert r.exit_code == 0, r.output
    assert "synthetic/teacher/test_resnet-dait: finished earlier, skipped" in r.output
    assert {p.name: p.read_bytes() for p in teacher.iterdir() if p.is_file()} == before  # not retrained
    assert ckpt.read_summary(student)["status"] == "finished"
    assert json.loads((student / "config.json").read_text())["teacher_run"] == str(teacher)
    # a teacher that cannot train: its student is blocked, the other teacher's pair still trains
    args = [
        "--workdir",
        str(ws),
        "study",
        "teachers",
        "--dataset",
        "synthetic",
        "--teachers",
        "regnety_016,resnet34",
        *MINI,
    ]
    r = CliRunner().invoke(cli, args)
    said = " ".join(r.output.split())  # one line, whatever the spacing
    assert r.exit_code == 1 and "2 of 4 runs did not finish" in said
    assert (
        "synthetic/teacher/vit_tiny_patch16_224-dait: failed: vit_tiny_patch16_224 cannot take this cache's 32x32 views"
        in said
    )
    assert (
        "synthetic/students/test_resnet-dait-f-t-resnet34: blocked, its teacher "
        "synthetic/teacher/vit_tiny_patch16_224-dait did not finish" in said
    )
    plan = build_plan(
        "teachers",
        ("synthetic",),
        filters=StudyFilters(teachers=("regnety_016", "resnet34")),
        base=TrainConfig(
            epochs=1, batch_size=64, lr=3e-3, pretrained=False, device="cpu", workers=0, eval_test="selected"
        ),
        swap={"regnety_016": "test_resnet", "resnet18": "test_resnet", "resnet34": "vit_tiny_patch16_224"},
    )
    states = {r.key: run_state(ws, r) for r in plan}
    assert states == {
        "synthetic/teacher/test_resnet-dait": "done",
        "synthetic/students/test_resnet-dait-f-t-regnety_016": "done",
        "synthetic/teacher/vit_tiny_patch16_224-dait": "pending",
        "synthetic/students/test_resnet-dait-f-t-resnet34": "pending",
    }
    # the study's own table and figure from the command line, with the report's metric; the CKA
    # bars show the teachers' weights of that metric's epoch
    from encode_helpers import spy_on_figure_weights

    loaded = spy_on_figure_weights(monkeypatch)
    for metric, words, weights in (
        ("best-val", "best-on-validation epoch", "best-on-validation weights"),
        ("last", "last epoch", "last-epoch weights"),
    ):
        loaded.clear()
        r = CliRunner().invoke(
            cli, ["--workdir", str(ws), "report", "--study", "teachers", "--metric", metric, "--plots", str(tmp_path)]
        )
        assert r.exit_code == 0, r.output
        titles = Image.open(tmp_path / "synthetic-teacher-study.png").info["Description"]
        assert "synthetic" in titles and words in titles and weights in titles, titles
        assert [w for _, w in loaded] == ["best" if metric == "best-val" else "last"]  # the one finished teacher
    # the bars' values, keyed as the rows name their teachers (a key that did not match would draw no bar)
    from cli.study import _cka
    from dait_cache import report as rep
    from dait_cache.study.results import teacher_study

    rows = teacher_study(rep.collect_runs(ws), "test_top1_last")
    values = _cka(rows, "test_top1_last")
    assert set(values) == {r["teacher_run"] for r in rows if r["teacher_run"]} and len(values) == 1
    assert all(0 < v <= 1 for v in values.values())


def _finished_run(ws: Path, key: str, cfg: TrainConfig, **record) -> Path:
    """A run folder as training leaves it, as far as the study looks: config.json and summary.json."""
    from dait_cache.config import save_config
    from dait_cache.io import to_jsonable

    run_dir = ws / key
    run_dir.mkdir(parents=True)
    save_config({**to_jsonable(replace(cfg, workdir=str(ws))), **record}, run_dir)
    ckpt.write_summary(run_dir, {"status": "finished", "epochs": cfg.epochs, "epochs_done": cfg.epochs})
    return run_dir


def test_a_run_folder_with_other_settings_is_neither_taken_nor_trained_over(tmp_path):
    from dait_cache.study import execute

    base = TrainConfig(epochs=2, pretrained=False, device="cpu", workers=0)
    teacher, student = build_plan("teachers", ("cub",), filters=StudyFilters(teachers=("vgg13",)), base=base)
    t_dir = _finished_run(tmp_path, teacher.key, replace(teacher.cfg, epochs=1, lr=1e-3))
    assert run_state(tmp_path, teacher) == "other settings: lr: 0.001 -> 0.0001; epochs: 1 -> 2"
    said = []
    states = execute([teacher, student], tmp_path, say=said.append)
    assert states == {
        teacher.key: "other settings: lr: 0.001 -> 0.0001; epochs: 1 -> 2",
        student.key: f"blocked: {teacher.key} holds other settings",
    }
    assert any(teacher.key in m and "move that folder away" in m for m in said), said
    assert not (tmp_path / student.key).exists()  # nothing trained from the mismatched teacher
    assert ckpt.read_summary(t_dir)["epochs"] == 1  # nor over it
    # the plan's own settings: done; a student that learnt from another teacher folder is not
    other = tmp_path / "ws"
    _finished_run(other, teacher.key, teacher.cfg)
    assert run_state(other, teacher) == "done"
    _finished_run(other, student.key, student.cfg, teacher_run=str(other / "cub/teacher/regnety_016-dait"))
    assert run_state(other, student) == "other settings: teacher: regnety_016-dait -> vgg13-dait"
    (other / teacher.key / "config.json").write_text("[]")  # what it was trained with is lost
    assert run_state(other, teacher) == "other settings: config.json: missing or damaged"
    # an interrupted student whose teacher's best.pt changed since it began: its resume would be
    # refused, so the plan does not call it resumable
    ws = tmp_path / "moved"  # the workspace moved since: the teacher is the recorded folder's name here
    t_dir = _finished_run(ws, teacher.key, teacher.cfg)
    (t_dir / ckpt.BEST).write_bytes(b"the teacher's weights now")
    now = hashlib.sha256(b"the teacher's weights now").hexdigest()
    for began_with, state in (
        ("0" * 64, f"other settings: teacher vgg13-dait: its best.pt changed since this run began (sha256 "
                   f"000000000000 -> {now[:12]}; trained further or replaced)"),
        (now, "resumable"),
    ):  # fmt: skip
        shutil.rmtree(ws / student.key, ignore_errors=True)
        s_dir = _finished_run(ws, student.key, student.cfg, teacher_run="/elsewhere/cub/teacher/vgg13-dait",
                              teacher_fingerprint=began_with)  # fmt: skip
        ckpt.write_summary(s_dir, {"status": "interrupted", "epochs": 2, "epochs_done": 1})
        (s_dir / ckpt.CHECKPOINT).write_bytes(b"the first epoch")
        assert run_state(ws, student) == state
        ckpt.write_summary(s_dir, {"status": "finished", "epochs": 2, "epochs_done": 2})
        assert run_state(ws, student) == "done"  # its numbers are the old teacher's, as it records


def test_a_method_the_cache_cannot_train_is_named_before_the_study_starts(
    dogs_cache_workspace, tiny_cache_workspace, tmp_path
):
    """rise and borlan need the prompt ensemble: on a cache of one template they failed when their
    turn came, hours into a study, instead of being named in its plan."""
    from dait_cache.study import execute
    from dait_cache.study.runner import cache_refusal

    ws = own_workspace(dogs_cache_workspace, tmp_path / "ws")  # a cache of one template
    base = TrainConfig(epochs=2, pretrained=False, device="cpu", workers=0)
    plan = build_plan("table1", ("dogs",), base=base)
    runs = [r for r in plan if r.cfg.method in ("rise", "borlan")]
    assert [r.key for r in runs] == [
        f"dogs/students/{a}-{m}" for a in ("resnet18", "mobilenetv2") for m in ("rise", "borlan")
    ]
    why = {m: f"cannot run: {m} needs the prompt ensemble in the cache (it has 1 template); re-encode with "
              "`dait-cache encode --prompts ensemble`" for m in ("rise", "borlan")}  # fmt: skip
    assert {r.key: run_state(ws, r) for r in runs} == {r.key: why[r.cfg.method] for r in runs}
    assert {run_state(ws, r) for r in plan if r not in runs} == {"pending"}  # the other methods can run
    said = []
    assert execute(runs, ws, say=said.append) == {r.key: why[r.cfg.method] for r in runs}
    assert said == [f"{r.key}: {why[r.cfg.method]}" for r in runs]
    assert not (ws / "dogs" / "students").exists()  # nothing was started
    _finished_run(ws, runs[0].key, runs[0].cfg)  # trained before the cache lost its ensemble: its numbers stand
    assert run_state(ws, runs[0]) == "done"
    args = ["--workdir", str(ws), "study", "table1", "--methods", "rise", "--dry-run"]
    r = CliRunner().invoke(cli, args)
    assert r.exit_code == 0 and " ".join(r.output.split()).count("cannot run: rise needs the prompt ensemble") == 1
    # run, the study trains what it can (the teacher) and ends with the runs it could not start
    miniature = "--arch-map regnety_016=test_resnet,resnet18=test_resnet --students resnet18 --methods rise,dait-f"
    args = ["--workdir", str(ws), "study", "table1", *miniature.split(), "--no-pretrained", "--epochs", "1"]
    r = CliRunner().invoke(cli, [*args, "--device", "cpu", "--workers", "0", "--batch-size", "8"])
    text = " ".join(r.output.split())
    assert r.exit_code == 1 and "1 of 3 runs did not finish" in text and "waits for the re-encode" in text, r.output
    assert ckpt.read_summary(ws / "dogs" / "students" / "test_resnet-dait-f")["status"] == "finished"
    ensemble = build_plan("table1", ("cub",), base=base, filters=StudyFilters(methods=("rise", "borlan")))
    students = [r for r in ensemble if r.cfg.role == "student"]
    assert [cache_refusal(tiny_cache_workspace, r) for r in students] == [None] * 4  # a cache with the ensemble


def test_every_run_of_a_plan_is_done_when_its_folder_holds_what_training_records(tmp_path):
    from dait_cache.study import PLANS
    from dait_cache.train.student import student_config

    base = TrainConfig(epochs=3, pretrained=False, device="cpu", workers=0)
    for plan in PLANS:
        runs, ws = build_plan(plan, ("cub",), seeds=(0, 1), base=base), tmp_path / plan
        assert plan != "table1" or {r.cfg.method for r in runs} >= set(METHODS)
        for run in runs:  # what train_student / train_teacher save: the settings they resolved
            _finished_run(ws, run.key, student_config(run.cfg) if run.cfg.role == "student" else run.cfg)
        assert {r.key: run_state(ws, r) for r in runs} == {r.key: "done" for r in runs}


def test_seeds_of_a_study_share_a_report_cell_with_numpy_mean_and_std(tmp_path):
    from dait_cache.report import build_table, collect_runs

    (tmp_path / "cub" / "cache").mkdir(parents=True)
    runs = [r for r in build_plan("lambda", ("cub",), seeds=(0, 1, 2)) if r.group in ("lam-k1-b0", "lam-ce-first")]
    values = {}
    for i, r in enumerate(runs):
        value = 50.0 + 7.3 * i + (3.1 if r.group == "lam-ce-first" else 0.0)
        values.setdefault(r.group, []).append(value)
        run_dir = tmp_path / r.key
        run_dir.mkdir(parents=True)
        ckpt.write_summary(
            run_dir,
            {
                "status": "finished",
                "epochs": 1,
                "epochs_done": 1,
                "role": "student",
                "arch": r.cfg.arch,
                "method": r.cfg.method,
                "train_fraction": 1.0,
                "seed": r.cfg.seed,
                "test_top1_last": value,
                "test_top1_best_val": value,
            },
        )
    table = build_table([x for x in collect_runs(tmp_path) if x.role == "student"], "last")
    for group, vals in values.items():
        row = next(row for row in table.rows if row[1] == f"dait-f [{group}]")
        mean, text = table.cells[(row, ("cub", 1.0))]
        assert mean == pytest.approx(np.mean(vals))
        assert text == f"{np.mean(vals):.2f} ± {np.std(vals, ddof=1):.2f} (n=3)"
    # the lambda study's own layout, the same cells; then one seed trained with another lr
    from dait_cache.study.results import lambda_study

    point = next(p for p in lambda_study(collect_runs(tmp_path), "test_top1_last") if (p["k"], p["b"]) == (1.0, 0.0))
    vals = values["lam-k1-b0"]
    assert (point["top1"].mean, point["top1"].n, point["top1"].value) == (
        pytest.approx(np.mean(vals)),
        3,
        point["top1"].mean,
    )
    # the same cells at the command line, and the study's figure
    r = CliRunner().invoke(cli, ["--workdir", str(tmp_path), "report", "--study", "lambda", "--plots", str(tmp_path)])
    assert r.exit_code == 0, r.output
    for group, (k, b, strategy) in {
        "lam-k1-b0": ("1/E", 0, "distill-first"),
        "lam-ce-first": ("-1/E", 1, "ce-first"),
    }.items():
        cell = f"{np.mean(values[group]):.2f} ± {np.std(values[group], ddof=1):.2f} (n=3)"
        assert re.search(
            rf"│ cub +│ resnet18 +│ {re.escape(k)} +│ {b} +│ {strategy} +│ {re.escape(cell)} +│", r.output
        ), r.output
    assert "schedule strategies" in Image.open(tmp_path / "cub-lambda-study.png").info["Description"]
    # every --format (and --output): the layout was always a terminal table, whatever was asked
    base = ["--workdir", str(tmp_path), "report", "--study", "lambda"]
    vals = values["lam-k1-b0"]
    r = CliRunner().invoke(cli, [*base, "--format", "json"])
    row = next(x for x in json.loads(r.output)["rows"] if (x["k"], x["b"]) == (1.0, 0.0))
    assert (row["strategy"], row["top1"]["n"], row["top1"]["mixed"]) == ("distill-first", 3, [])
    assert (row["top1"]["mean"], row["top1"]["std"]) == (
        pytest.approx(np.mean(vals)),
        pytest.approx(np.std(vals, ddof=1)),
    )
    r = CliRunner().invoke(cli, [*base, "--format", "csv"])
    row = next(x for x in csv.DictReader(io.StringIO(r.output)) if x["strategy"] == "distill-first")
    assert (float(row["top1"]), float(row["top1_std"]), row["top1_n"]) == (
        pytest.approx(np.mean(vals)),
        pytest.approx(np.std(vals, ddof=1)),
        "3",
    )
    r = CliRunner().invoke(cli, [*base, "--format", "markdown", "--output", str(tmp_path / "lambda.md")])
    cell = f"{np.mean(vals):.2f} ± {np.std(vals, ddof=1):.2f} (n=3)"
    assert (
        r.exit_code == 0
        and f"| cub | resnet18 | 1/E | 0 | distill-first | {cell} |"
        in (tmp_path / "lambda.md").read_text().splitlines()
    )
    r = CliRunner().invoke(cli, ["--workdir", str(tmp_path), "report", "--study", "teachers"])
    assert r.exit_code == 1 and r.output == (
        "Error: no runs of study teachers in the workspace; run `dait-cache study teachers` first\n"
    )
    for r in runs:
        (tmp_path / r.key / "config.json").write_text(json.dumps({"lr": 3e-3 if r.cfg.seed == 2 else 1e-4}))
    point = next(p for p in lambda_study(collect_runs(tmp_path), "test_top1_last") if (p["k"], p["b"]) == (1.0, 0.0))
    assert point["top1"].mixed == ("lr",) and np.isnan(point["top1"].value)
    assert point["top1"].text() == f"{np.mean(vals):.2f} ± {np.std(vals, ddof=1):.2f} (n=3) (mixed settings: lr)"


def test_bad_study_inputs_get_one_line(tmp_path, tiny_cache_workspace):
    ws = tmp_path / "ws"
    r = CliRunner().invoke(cli, ["--workdir", str(ws), "study", "teachers", "--dataset", "cub", "--dry-run"])
    assert r.exit_code == 1 and "no cache" in r.output and "Traceback" not in r.output
    r = CliRunner().invoke(cli, ["--workdir", str(ws), "study", "table9", "--dataset", "cub"])
    assert r.exit_code == 2 and "'table9' is not one of" in r.output
    r = CliRunner().invoke(cli, ["--workdir", str(ws), "study", "table1", "--dataset", "cub", "--jobs", "0"])
    assert r.exit_code == 2 and "--jobs" in r.output
    for option, value, said in (
        ("--seeds", "0,one", "'0,one' is not a comma-separated list of ints"),
        ("--fractions", "0.3,half", "'0.3,half' is not a comma-separated list of floats"),
        ("--arch-map", "regnety_016", "'regnety_016' is not PAPER_ARCH=ARCH (e.g. regnety_016=test_resnet)"),
    ):
        args = ["--workdir", str(tiny_cache_workspace), "study", "table3", "--dataset", "cub", "--dry-run"]
        r = CliRunner().invoke(cli, [*args, option, value])
        assert r.exit_code == 2 and said in " ".join(r.output.split()) and "Traceback" not in r.output, r.output


def test_without_dataset_a_study_plans_every_encoded_dataset(tiny_cache_workspace, tmp_path):
    def dry(ws, *extra):
        return CliRunner().invoke(cli, ["--workdir", str(ws), "study", "teachers", "--dry-run", *extra])

    named, every = dry(tiny_cache_workspace, "--dataset", "cub"), dry(tiny_cache_workspace)
    assert every.exit_code == 0 and every.output == named.output and "cub/teacher/vgg13-dait" in every.output
    # off a terminal (a log) the plan's table keeps its width: every name whole, one row per run
    assert re.search(
        r"│ cub/students/resnet18-dait-f-t-efficientnet_b0 +│ cub/teacher/efficientnet_b0-dait +│", named.output
    )
    r = dry(tmp_path / "empty")
    assert r.exit_code == 1 and "no cache in workspace" in r.output and "encode --dataset" in r.output


def test_devices_must_exist_where_the_study_runs_not_where_it_is_planned(tiny_cache_workspace):
    import torch

    have = torch.cuda.device_count()
    base = ["--workdir", str(tiny_cache_workspace), "study", "table2", "--dataset", "cub", "--students", "resnet18"]
    r = CliRunner().invoke(cli, [*base, "--devices", f"0,{have + 3}"])
    assert r.exit_code == 1 and f"--devices names GPU {'' if have else '0, '}{have + 3}" in r.output
    # a plan printed on a cluster's login node, for the GPU nodes that will run it
    r = CliRunner().invoke(cli, [*base, "--devices", f"0,{have + 3}", "--dry-run"])
    assert r.exit_code == 0 and "study table2:" in r.output, r.output
    r = CliRunner().invoke(cli, [*base, "--devices", "0,x", "--dry-run"])  # no GPU id anywhere
    assert r.exit_code == 2 and "Invalid value for --devices: x is not a GPU id (0, 1, ...)" in r.output, r.output


def test_devices_are_checked_against_the_gpus_the_machine_has(tiny_cache_workspace, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)  # a two-GPU machine, as far as the check sees
    base = ["--workdir", str(tiny_cache_workspace), "study", "table2", "--dataset", "cub", "--students", "resnet18"]
    r = CliRunner().invoke(cli, [*base, "--devices", "0,2,3"])
    assert r.exit_code == 1 and r.output.endswith(
        "Error: --devices names GPU 2, 3, but this machine has 2 GPU(s) (ids 0-1)\n"
    )
    r = CliRunner().invoke(cli, [*base, "--devices", "1,0", "--dry-run"])
    assert r.exit_code == 0 and "study table2:" in r.output, r.output


def test_study_figures_are_drawn(tmp_path):
    from dait_cache.report import RunRecord
    from dait_cache.study.figures import lambda_grid, plot_lambda_study, plot_teacher_study, teacher_bars
    from dait_cache.study.results import Cell, lambda_study, teacher_study

    def rec(role, arch, method, tag, seed, value):
        return RunRecord(
            "cub",
            role,
            arch,
            method,
            1.0,
            "finished",
            1,
            1,
            value,
            value,
            str(tmp_path / f"{arch}{tag}{seed}"),
            tag=tag,
            seed=seed,
        )

    records = [
        rec("teacher", t, "dait", "", s, 60.0 + i + s) for i, t in enumerate(("resnet34", "vgg13")) for s in (0, 1)
    ]
    records += [
        rec("student", "resnet18", "dait-f", f"t-{t}", s, 50.0 + 2 * i + s)
        for i, t in enumerate(("resnet34", "vgg13"))
        for s in (0, 1)
    ]
    records += [
        rec("student", "resnet18", "dait-f", f"lam-k{k:g}-b{b:g}", 0, 40 + 10 * k + 20 * b)
        for k in (0.5, 1.0, 2.0)
        for b in (0.0, 0.5)
    ] + [rec("student", "resnet18", "dait-f", "lam-ce-first", 0, 33.0)]
    teachers = teacher_study(records, "test_top1_last")
    assert [(r["teacher"], r["teacher_top1"].mean, r["student_top1"].mean, r["student_top1"].n) for r in teachers] == [
        ("resnet34", 60.5, 50.5, 2),
        ("vgg13", 61.5, 52.5, 2),
    ]
    grid = lambda_study(records, "test_top1_last")
    assert len(grid) == 7 and {(r["k"], r["b"]): r["strategy"] for r in grid}[(1.0, 0.0)] == "distill-first"
    assert {(r["k"], r["b"]): r["top1"].mean for r in grid}[(-1.0, 1.0)] == 33.0
    # what the figures draw: each bar and heat-map cell is its study point's mean over seeds
    cka = {str(tmp_path / "resnet340"): 0.7}
    bars = teacher_bars([*teachers, {**teachers[1], "teacher": "vgg11", "teacher_run": None}], cka)
    sd = np.std([0, 1], ddof=1)
    assert bars["names"] == ["resnet34", "vgg13", "vgg11\n(vgg13)"]  # the trained arch beside the paper's name
    assert bars["teacher"] == [(60.5, sd), (61.5, sd), (61.5, sd)]
    assert bars["student"] == [(50.5, sd), (52.5, sd), (52.5, sd)]
    np.testing.assert_array_equal(bars["cka"], [0.7, np.nan, np.nan])  # measured for resnet34's run only
    mixed = Cell(50.0, 1.0, 2, mixed=("lr",))  # seeds of different settings: no one mean to draw
    odd = teacher_bars([{**teachers[0], "teacher_top1": None, "student_top1": mixed}], {})
    np.testing.assert_array_equal(odd["teacher"] + odd["student"], [(np.nan, 0.0), (np.nan, 1.0)])
    ks, bs, values = lambda_grid(
        [*grid, {**grid[0], "k": 4.0, "b": 0.25, "top1": None}, {**grid[0], "k": 4.0, "b": 0.5, "top1": mixed}]
    )
    assert ks == [0.5, 1.0, 2.0, 4.0] and bs == [0.0, 0.25, 0.5]  # ce-first (k < 0) has its own bar
    nan = np.nan
    np.testing.assert_array_equal(values, [[45, 50, 60, nan], [nan, nan, nan, nan], [55, 60, 70, nan]])
    for path in (
        plot_teacher_study(teachers, cka, tmp_path / "t.png", "test_top1_best_val"),
        plot_lambda_study(grid, tmp_path / "l.png", "test_top1_best_val"),
    ):
        pixels = np.asarray(Image.open(path).convert("L"), dtype=float)
        assert pixels.shape[0] > 200 and pixels.std() > 10  # drawn, not blank
        titles = Image.open(path).info["Description"]
        assert "cub" in titles and "best-on-validation epoch" in titles, titles  # dataset and metric


def test_study_results_take_only_their_own_runs(tmp_path):
    """A teacher-study row counts the finished DAIT runs of its dataset and teacher (the teacher's
    architecture as the student's teacher run recorded it); the lambda grid is per student."""
    from dait_cache.config import save_config
    from dait_cache.report import RunRecord
    from dait_cache.study.results import Cell, lambda_study, teacher_study

    def rec(role, arch, method, tag, value, dataset="cub", status="finished", seed=0):
        run_dir = tmp_path / dataset / f"{arch}-{method}{tag}-s{seed}-{status}"
        return RunRecord(dataset, role, arch, method, 1.0, status, 1, 1, value, value, str(run_dir), tag=tag, seed=seed)

    mini = rec("teacher", "test_resnet", "dait", "", 70.0)  # the miniature trained for "resnet34"
    student = rec("student", "resnet18", "dait-f", "t-resnet34", 50.0)
    Path(mini.run_dir).mkdir(parents=True)
    save_config({"arch": "test_resnet"}, Path(mini.run_dir))
    Path(student.run_dir).mkdir(parents=True)
    save_config({"teacher_run": mini.run_dir}, Path(student.run_dir))
    records = [
        mini,
        student,
        rec("teacher", "test_resnet", "ce", "", 99.0),  # another method's teacher
        rec("teacher", "test_resnet", "dait", "-other", 98.0),  # a tagged teacher run
        rec("teacher", "test_resnet", "dait", "", 97.0, dataset="aircraft"),
        rec("student", "resnet18", "dait-f", "t-resnet34", 1.0, status="running", seed=1),
        rec("student", "resnet18", "dait-f", "t-resnet34", 2.0, dataset="aircraft"),
        rec("student", "resnet18", "dait-f", "lam-k1-b0", 40.0),
        rec("student", "mobilenetv2", "dait-f", "lam-k1-b0", 30.0),
    ]
    rows = {r["dataset"]: r for r in teacher_study(records, "test_top1_last")}
    cub = rows["cub"]
    assert (cub["teacher_arch"], cub["teacher_run"]) == ("test_resnet", mini.run_dir)
    assert cub["teacher_top1"] == Cell(70.0, 0.0, 1) and cub["student_top1"] == Cell(50.0, 0.0, 1)
    assert cub["student_top1"].text() == "50.00"  # one run: no spread to show
    assert rows["aircraft"]["student_top1"] == Cell(2.0, 0.0, 1)
    assert rows["aircraft"]["teacher_arch"] == "resnet34"  # no recorded teacher run: the plan's name
    grid = {(p["student"], p["k"], p["b"]): p["top1"].mean for p in lambda_study(records, "test_top1_last")}
    assert grid == {("mobilenetv2", 1.0, 0.0): 30.0, ("resnet18", 1.0, 0.0): 40.0}


def test_the_runner_resumes_a_folder_with_a_checkpoint_and_refuses_one_with_other_settings(tmp_path, monkeypatch):
    from dait_cache.study.runner import train_planned
    from dait_cache.train import teacher as teacher_module

    seen, visible = [], []

    def train_teacher(cfg, *a):
        seen.append(cfg)
        visible.append(os.environ.get("CUDA_VISIBLE_DEVICES"))

    monkeypatch.setattr(teacher_module, "train_teacher", train_teacher)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    base = TrainConfig(epochs=2, pretrained=False, device="cpu", workers=0)
    run = build_plan("teachers", ("cub",), filters=StudyFilters(teachers=("vgg13",)), base=base)[0]

    def interrupted_after_one_epoch(ws: Path, cfg: TrainConfig) -> None:
        run_dir = _finished_run(ws, run.key, cfg)
        ckpt.write_summary(run_dir, {"status": "interrupted", "epochs": 2, "epochs_done": 1})
        (run_dir / ckpt.CHECKPOINT).write_bytes(b"the first epoch")

    train_planned(run, str(tmp_path))
    interrupted_after_one_epoch(tmp_path, run.cfg)
    assert run_state(tmp_path, run) == "resumable"
    train_planned(run, str(tmp_path))
    assert [(c.resume, c.workdir) for c in seen] == [(False, str(tmp_path)), (True, str(tmp_path))]
    train_planned(run, str(tmp_path / "pinned"), device="1")  # a run of its own GPU, before CUDA starts
    assert visible == ["0,1", "0,1", "1"]
    interrupted_after_one_epoch(tmp_path / "other", replace(run.cfg, lr=1e-3))
    assert run_state(tmp_path / "other", run) == "other settings: lr: 0.001 -> 0.0001"


def test_the_pool_keeps_to_its_jobs_and_hands_each_run_a_free_gpu(tmp_path, monkeypatch):
    """Three runs that fail at once (no cache), one job, two GPUs: one run at a time, each on
    the GPU the last one gave back, each in a fresh process (CUDA_VISIBLE_DEVICES counts only
    before CUDA starts); a run already done counts, and a student whose teacher is not in the
    list runs (its training finds the teacher or says why not)."""
    from dait_cache.run_pool import run_pool
    from dait_cache.study import execute, runner

    pools = []

    def recorded_pool(*args, **kwargs):
        pools.append(kwargs)
        return run_pool(*args, **kwargs)

    monkeypatch.setattr(runner, "run_pool", recorded_pool)

    base = TrainConfig(epochs=2, pretrained=False, device="cpu", workers=0)
    filters = StudyFilters(students=("resnet18",), methods=("none", "kd", "dait-f"))
    teacher, none, kd, dait_f = build_plan("table1", ("cub",), filters=filters, base=base)
    assert dait_f.depends == teacher.key
    _finished_run(tmp_path, none.key, none.cfg)
    said, shown = [], []
    states = execute(
        [none, kd, dait_f, replace(kd, cfg=replace(kd.cfg, seed=1))],
        tmp_path,
        jobs=1,
        devices=["0", "1"],
        say=said.append,
        show=lambda *a: shown.append(a),
    )
    assert [s for s in said if s.startswith("run ")] == [
        f"run 2/4: {kd.key} on GPU 0",
        f"run 3/4: {dait_f.key} on GPU 1",
        f"run 4/4: {kd.key}-s1 on GPU 0",
    ]
    assert [s.split(":")[0] for s in said if not s.startswith("run ")][1:] == [kd.key, dait_f.key, f"{kd.key}-s1"]
    assert said.index(f"run 3/4: {dait_f.key} on GPU 1") > said.index(
        next(s for s in said if s.startswith(f"{kd.key}: failed"))
    )
    assert shown[0] == ("runs", 1, 4) and shown[-1] == ("runs", 4, 4)
    assert states[none.key] == "done"
    assert all(states[k].startswith("failed: no cache") for k in states if k != none.key), states
    assert pools == [{"fresh_process_per_run": True}]


def test_runs_waiting_on_each_other_are_blocked_and_jobs_must_be_positive(tmp_path):
    from dait_cache.study import execute

    base = TrainConfig(epochs=2, pretrained=False, device="cpu", workers=0)
    teacher, student = build_plan("teachers", ("cub",), filters=StudyFilters(teachers=("vgg13",)), base=base)
    looped = [replace(teacher, depends=student.key), student]
    assert execute(looped, tmp_path) == {
        teacher.key: f"blocked: {student.key} is not finished",
        student.key: f"blocked: {teacher.key} is not finished",
    }
    with pytest.raises(DaitError, match="--jobs must be 1 or more, not 0"):
        execute([teacher], tmp_path, jobs=0)
