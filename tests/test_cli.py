"""The click shell: help, version, errors as one line."""

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner
from encode_helpers import own_workspace, shard_bytes

from cli.main import cli
from dait_cache import __version__
from dait_cache.train import checkpoint as ckpt

ROOT = Path(__file__).resolve().parents[1]


def test_help_and_version():
    r = CliRunner().invoke(cli, ["-h"])
    assert r.exit_code == 0 and "--workdir" in r.output
    r = CliRunner().invoke(cli, ["--version"])
    assert r.exit_code == 0 and __version__ in r.output


def test_datasets_lists_what_is_present(tmp_path):
    r = CliRunner().invoke(cli, ["datasets", "--data-root", str(tmp_path)])
    assert r.exit_code == 0, r.output
    assert "synthetic" in r.output and "960" in r.output
    rows = {line.split("│")[1].strip(): line for line in r.output.splitlines() if line.count("│") > 2}
    assert "encode --download (1.2 GB)" in rows["cub"] and "by hand: data/README.md" in rows["cars"]


def test_encode_verify_round_trip(tmp_path, monkeypatch):
    import fake_trees
    from tiny_vlm import make_tiny_vlm

    vlm = make_tiny_vlm(tmp_path / "vlm")
    # --download: the official archive, served from a file:// URL (the network's stand-in)
    archives = fake_trees.official_archives("cub", tmp_path / "src", tmp_path / "served")
    fake_trees.serve_archives("cub", archives, monkeypatch)
    args = [
        "--workdir",
        str(tmp_path / "ws"),
        "encode",
        "--dataset",
        "cub",
        "--data-root",
        str(tmp_path / "data"),
        "--vlm",
        vlm,
        "--views",
        "2",
        "--image-size",
        "64",
        "--base-size",
        "72",
        "--workers",
        "0",
        "--device",
        "cpu",
        "--download",
    ]
    r = CliRunner().invoke(cli, args)
    assert r.exit_code == 0, r.output
    assert "download CUB_200_2011.tgz: 1/1" in r.output  # its progress, in MB
    assert "views/s" in r.output and "zero-shot top-1 on test" in r.output and "size on disk" in r.output
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["CUB_200_2011"]
    archives[0].unlink()  # in place now: --download fetches nothing again
    r = CliRunner().invoke(cli, args)
    assert r.exit_code == 0 and "nothing to do" in r.output
    args.remove("--download")
    r = CliRunner().invoke(cli, args[:-6] + ["--image-size", "48", "--base-size", "72", "--workers", "0"])
    assert r.exit_code == 1 and "--overwrite" in r.output and "Traceback" not in r.output
    r = CliRunner().invoke(cli, ["--workdir", str(tmp_path / "ws"), "verify"])
    assert r.exit_code == 0 and "ok" in r.output and "warning" not in r.output
    # --workdir after the command name wins over the one before it
    r = CliRunner().invoke(cli, ["--workdir", str(tmp_path / "nothing"), "verify", "--workdir", str(tmp_path / "ws")])
    assert r.exit_code == 0 and "ok" in r.output, r.output
    cache = tmp_path / "ws/cub/cache"
    # the cache's own config.json replays its encode from anywhere: nothing to do; and where the
    # encode that wrote it was an --overwrite, another setting is still refused, not re-encoded
    recorded = json.loads((cache / "config.json").read_text())
    before = shard_bytes(cache)
    monkeypatch.chdir(tmp_path / "vlm")
    older = {k: v for k, v in recorded.items() if k != "provenance"}  # as versions before provenance wrote it
    for written in ({**recorded, "overwrite": True}, {**older, "overwrite": True}):
        (cache / "config.json").write_text(json.dumps(written))
        r = CliRunner().invoke(cli, ["encode", "--config", str(cache / "config.json")])
        assert r.exit_code == 0 and "nothing to do" in r.output and shard_bytes(cache) == before, r.output
        r = CliRunner().invoke(cli, ["encode", "--config", str(cache / "config.json"), "--base-size", "80"])
        assert r.exit_code == 1 and "--overwrite" in r.output and shard_bytes(cache) == before, r.output
    (cache / "train/shard-00099.h5").write_bytes(b"stray")
    (cache / "train/shard-00001.h5.tmp").write_bytes(b"half")
    (cache / "config.json").unlink()
    r = CliRunner().invoke(cli, ["--workdir", str(tmp_path / "ws"), "verify"])
    text = " ".join(r.output.split())  # one line, whatever the spacing
    assert r.exit_code == 0 and "(3 warnings)" in text, r.output
    assert "train/shard-00099.h5: unknown file; no manifest entry" in text
    assert "shard-00001.h5.tmp: unknown file; encode deletes it" in text and "config.json: missing" in text
    r = CliRunner().invoke(cli, ["--workdir", str(tmp_path / "ws"), "verify", "--strict"])
    assert r.exit_code == 1
    (cache / "train/shard-00001.h5.tmp").unlink()
    (cache / "train/shard-00099.h5").unlink()
    r = CliRunner().invoke(cli, ["--workdir", str(tmp_path / "ws"), "verify"])
    text = " ".join(r.output.split())
    assert r.exit_code == 0 and text.endswith("(1 warning)") and "config.json: missing" in text, r.output
    shard = tmp_path / "ws/cub/cache/train/shard-00000.h5"
    data = bytearray(shard.read_bytes())
    data[-100] ^= 0xFF
    shard.write_bytes(bytes(data))
    r = CliRunner().invoke(cli, ["--workdir", str(tmp_path / "ws"), "verify", "--dataset", "cub"])
    assert r.exit_code == 1 and "sha256 differs" in r.output
    assert "repair: rerun the `dait-cache encode` command" in " ".join(r.output.split())  # config.json is gone


def test_encode_errors_are_one_line(tmp_path):
    r = CliRunner().invoke(
        cli, ["--workdir", str(tmp_path), "encode", "--dataset", "cub", "--data-root", str(tmp_path / "nothing")]
    )
    assert r.exit_code == 1
    assert "CUB_200_2011 not found" in r.output and "Traceback" not in r.output
    r = CliRunner().invoke(cli, ["--workdir", str(tmp_path), "verify"])
    assert r.exit_code == 1 and "no cache in workspace" in r.output


def test_a_workspace_under_a_file_is_one_line(tmp_path):
    (tmp_path / "afile").write_text("")
    ws = tmp_path / "afile" / "ws"
    for args, env in (  # before the command, after it, from the environment: mkdir's traceback before
        (["--workdir", str(ws), "encode", "--dataset", "synthetic"], {}),
        (["demo", "--workdir", str(ws)], {}),
        (["report"], {"DAIT_WORKDIR": str(ws)}),
    ):
        r = CliRunner().invoke(cli, args, env=env)
        assert r.exit_code == 2 and r.output.endswith(
            f"Error: Invalid value for '--workdir': {ws} lies under {tmp_path / 'afile'}, which is a file, not a folder\n"
        ), r.output
    assert (tmp_path / "afile").read_text() == ""


def test_report_checks_run_before_any_work(tiny_cache_workspace, tmp_path):
    base = ["--workdir", str(tiny_cache_workspace), "report", "--format", "json", "--output", str(tmp_path / "t.json")]
    r = CliRunner().invoke(cli, [*base, "--plots", str(tmp_path / "plots"), "--run", "nope"])
    assert r.exit_code == 1 and "--run 'nope' is not a finished run" in r.output
    r = CliRunner().invoke(cli, [*base, "--run", "nope"])
    assert r.exit_code == 2 and "add --plots DIR" in r.output
    assert not (tmp_path / "t.json").exists() and not (tmp_path / "plots").exists()


def tiny_train_args(workdir, command: str, *method: str) -> list[str]:
    """``train-teacher`` / ``train-student`` for one tiny CPU epoch, into a run named ``cli``."""
    return ["--workdir", str(workdir), command, "--arch", "resnet18", *method, "--epochs", "1"] + (
        "--batch-size 8 --no-pretrained --workers 0 --device cpu --name cli".split()
    )


def test_train_teacher_cli(tiny_cache_workspace):
    args = tiny_train_args(tiny_cache_workspace, "train-teacher")
    r = CliRunner().invoke(cli, args)
    assert r.exit_code == 0, r.output
    assert "finished" in r.output and "epoch 1:" in r.output and "sia" in r.output
    assert "epoch 1/1" not in r.output and "batches/s" not in r.output  # not a terminal: lines, no bars
    # the summary counts epochs as the epoch lines do: its one epoch is the best, epoch 1
    assert re.search(r"│ finished +│ 1/1 +│[^│\n]+│[^│\n]+│ 1 +│", r.output), r.output
    # the default --train-fraction 1: every training image the validation split left, said so plainly
    assert "images: 28 train (all the validation split left), 4 val, 12 test" in r.output, r.output
    assert "asked for" not in r.output
    frac = tiny_train_args(tiny_cache_workspace, "train-teacher")[:-1] + ["cli-frac"]
    r = CliRunner().invoke(cli, [*frac, "--train-fraction", "0.85", "--val-fraction", "0.25"])
    assert r.exit_code == 0, r.output
    said = " ".join(r.output.split())  # 7 of each class's 8 asked for, 6 left by val
    assert "images: 24 train, 8 val, 12 test (the fraction asked for 28; the validation split left fewer)" in said
    r = CliRunner().invoke(cli, args)
    assert r.exit_code == 1 and "already exists" in r.output and "Traceback" not in r.output
    r = CliRunner().invoke(cli, args[:3] + ["--arch", "no_such_net", "--name", "x", "--no-pretrained"])
    assert r.exit_code == 1 and "unknown architecture" in r.output


def test_a_stop_whose_first_raise_was_lost_takes_effect_at_the_next_batch(tiny_cache_workspace):
    from cli import signals
    from dait_cache.train import checkpoint as ckpt

    # a SIGTERM handled while Python runs a __del__ raises into nothing, and the run went on to its
    # end (exit 0, status finished): the handler also remembers the stop
    signals._pending.append(signals.Terminated)
    args = tiny_train_args(tiny_cache_workspace, "train-teacher")[:-1] + ["lost-stop"]
    r = CliRunner().invoke(cli, args)
    assert r.exit_code == 143 and "terminated: " in r.output and "--resume" in r.output, r.output
    assert not signals._pending  # handled once, not again in the next command
    summary = ckpt.read_summary(tiny_cache_workspace / "cub" / "teacher" / "lost-stop")
    assert summary["status"] == "interrupted" and summary["epochs_done"] == 0


_LOST_STOP = """
import os, signal, sys, time
from cli import signals

class StopInADel:
    def __del__(self):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(1)  # the handler raises here, in a __del__: Python drops the raise

class BugInADel:
    def __del__(self):
        raise ValueError("a bug in a __del__")

class InterruptInADel:  # no stop was taken: nothing raises it again
    def __del__(self):
        raise KeyboardInterrupt("raised by code, not by a signal")

# the hook in place before (Python's own, or pytest's, which reports them) gets what is not a stop
sys.unraisablehook = lambda u: print(f"previous hook: {u.exc_type.__name__}: {u.exc_value}", file=sys.stderr)
for _ in range(2000):  # each command of an in-process runner installs it again: no deeper each time
    signals.install()
InterruptInADel()
StopInADel()
print("went on", flush=True)
try:
    signals.raise_pending()
except signals.Terminated:
    print("stopped at the next progress update", flush=True)
BugInADel()
"""


def test_a_lost_stop_is_not_printed_but_other_dropped_errors_are():
    p = subprocess.run([sys.executable, "-c", _LOST_STOP], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert p.stdout == "went on\nstopped at the next progress update\n", p.stderr
    assert p.stderr.splitlines() == [
        "previous hook: KeyboardInterrupt: raised by code, not by a signal",
        "previous hook: ValueError: a bug in a __del__",
    ], p.stderr


def test_train_student_cli(tiny_cache_workspace):
    args = tiny_train_args(tiny_cache_workspace, "train-student", "--method", "kd")
    r = CliRunner().invoke(cli, args)
    assert r.exit_code == 0, r.output
    assert "resnet18-kd-cli" in r.output and "finished" in r.output
    assert "teacher:" not in r.output  # kd without --teacher learns from the cached CLIP logits
    r = CliRunner().invoke(cli, args[:3] + ["--method", "dait-f", "--teacher", "nope", "--no-pretrained"])
    assert r.exit_code == 1 and "teacher run 'nope' not found" in r.output
    # an unknown arch is named before the teacher is looked for (there is none to find here)
    r = CliRunner().invoke(cli, args[:3] + ["--arch", "no_such_net", "--method", "dait-f", "--no-pretrained"])
    assert r.exit_code == 1 and "unknown architecture 'no_such_net'" in r.output, r.output


def test_an_unknown_arch_is_named_before_the_workspace_is_read(tmp_path):
    for command in ("train-teacher", "train-student"):
        r = CliRunner().invoke(cli, ["--workdir", str(tmp_path / "none"), command, "--arch", "no_such_net"])
        assert r.exit_code == 1 and "unknown architecture 'no_such_net'" in r.output, r.output
        assert "Traceback" not in r.output and not (tmp_path / "none").exists()
    r = CliRunner().invoke(cli, ["--workdir", str(tmp_path / "none"), "train-student", "--arch", "resnet18.a1_in1k"])
    assert r.exit_code == 1 and "no cache in workspace" in r.output  # a tagged timm name is a known arch


def test_a_model_that_cannot_take_the_views_is_refused_before_its_run_folder(tiny_cache_workspace):
    # a ViT built for 224 px raised a timm AssertionError traceback from the first batch and left a
    # failed run folder behind
    for command, role in (("train-teacher", "teacher"), ("train-student", "students")):
        args = tiny_train_args(tiny_cache_workspace, command, "--method", "none" if role == "students" else "dait")
        args = args[:-1] + ["vit-views", "--arch", "vit_tiny_patch16_224"]
        r = CliRunner().invoke(cli, args)
        said = " ".join(r.output.split())
        assert r.exit_code == 1 and "Traceback" not in r.output, r.output
        assert said.startswith(
            "Error: vit_tiny_patch16_224 cannot take this cache's 64x64 views (Input height (64) doesn't match "
            "model (224)); choose another --arch, or encode a cache at the size it needs (encode --image-size)"
        ), said
        assert not list((tiny_cache_workspace / "cub" / role).glob("*vit-views*"))


def test_a_missing_gpu_is_named_before_the_workspace_gains_a_folder(tmp_path, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # as on any machine without one
    ws = tmp_path / "ws"
    for command in (["encode", "--dataset", "synthetic"], ["train-teacher"], ["train-student"]):
        r = CliRunner().invoke(cli, ["--workdir", str(ws), *command, "--device", "cuda"])
        assert r.exit_code == 1 and r.output.strip().splitlines() == [
            "Error: --device cuda was asked for but no CUDA GPU is visible; use --device cpu"
        ], (command, r.output)
        assert not ws.exists(), command  # encode had made <workdir>/synthetic for its lock


def test_the_summary_names_the_teacher_a_student_learnt_from(capsys):
    from cli.render import render_summary

    summary = {"status": "finished", "epochs": 1, "epochs_done": 1, "n_train": 9, "n_val": 1, "n_test": 4}
    render_summary(Path("ws/students/s"), {**summary, "teacher_run": "ws/teacher/regnety_016-dait-frac0.3"})
    assert "teacher: ws/teacher/regnety_016-dait-frac0.3" in capsys.readouterr().out
    render_summary(Path("ws/students/s"), {**summary, "teacher_run": None})  # kd from the cached CLIP logits
    assert "teacher:" not in capsys.readouterr().out
    render_summary(Path("ws/students/s"), {**summary, "n_train": 10, "n_val": 0})  # --val-fraction 0
    assert "images: 10 train, 0 val, 4 test; no val split: best-val is the last epoch\n" in capsys.readouterr().out


def test_an_epoch_line_shows_each_term_to_four_digits_and_no_learning_rate(capsys):
    from cli.render import epoch_line

    row = {"epoch": 2, "loss": 1.234567, "ce": 0.000123456, "lr": 0.001, "seconds": 3.21, "images_per_s": 99.6}
    epoch_line({**row, "eval_seconds": 0.5, "seen": 96})  # an int count is no term either
    assert capsys.readouterr().err == "epoch 3: loss 1.235  ce 0.0001235  (3.2 s, 100 img/s)\n"  # beside bars


def test_every_option_of_every_command_has_help_and_shows_its_default():
    import click

    missing = [
        (name, p.opts)
        for name, cmd in cli.commands.items()
        for p in cmd.params
        if isinstance(p, click.Option) and not p.hidden and not (p.help or "").split("[default")[0].strip()
    ]
    missing += [("dait-cache", p.opts) for p in cli.params if isinstance(p, click.Option) and not p.help]
    assert missing == []
    no_default = [name for name, cmd in cli.commands.items() if not cmd.context_settings.get("show_default")]
    assert no_default == []


def test_config_file_sets_options_and_flags_win(monkeypatch, tmp_path):
    from dait_cache.train import teacher

    seen = []
    monkeypatch.setattr(teacher, "train_teacher", lambda cfg, **kw: seen.append(cfg) or (tmp_path, {}))
    monkeypatch.setattr("cli.train.render_summary", lambda *a: None)
    (tmp_path / "t.yaml").write_text("epochs: 7\nbatch-size: 16\nlr: 0.5\npretrained: false\nval_fraction: 0.2\n")
    (tmp_path / "t.json").write_text('{"epochs": 3, "seed": 4}')
    base = ["--workdir", str(tmp_path), "train-teacher"]
    r = CliRunner().invoke(cli, [*base, "--config", str(tmp_path / "t.yaml"), "--lr", "0.01"])
    assert r.exit_code == 0, r.output
    c = seen[-1]
    assert (c.epochs, c.batch_size, c.lr, c.pretrained, c.val_fraction) == (7, 16, 0.01, False, 0.2)
    r = CliRunner().invoke(cli, [*base, "--epochs", "9", "--config", str(tmp_path / "t.json")])
    assert r.exit_code == 0 and (seen[-1].epochs, seen[-1].seed) == (9, 4)
    (tmp_path / "w.json").write_text(json.dumps({"workdir": str(tmp_path / "from-file")}))
    r = CliRunner().invoke(cli, [*base, "--config", str(tmp_path / "w.json")])  # --workdir before the command wins
    assert r.exit_code == 0 and seen[-1].workdir == str(tmp_path), r.output
    r = CliRunner().invoke(cli, base[2:] + ["--config", str(tmp_path / "w.json")])  # the file's, given no flag
    assert r.exit_code == 0 and seen[-1].workdir == str(tmp_path / "from-file"), r.output
    (tmp_path / "bad.json").write_text('{"epochz": 3}')
    r = CliRunner().invoke(cli, [*base, "--config", str(tmp_path / "bad.json")])
    assert r.exit_code == 2 and "sets epochz, which train-teacher does not take" in r.output
    (tmp_path / "dashes.json").write_text('{"--epochs": 5}')  # names as typed on the command line
    r = CliRunner().invoke(cli, [*base, "--config", str(tmp_path / "dashes.json")])
    assert r.exit_code == 0 and seen[-1].epochs == 5, r.output
    (tmp_path / "list.json").write_text('["--epochs", 5]')
    r = CliRunner().invoke(cli, [*base, "--config", str(tmp_path / "list.json")])
    assert r.exit_code == 2 and "list.json must hold a mapping of option names to values" in r.output
    (tmp_path / "latin1.yaml").write_bytes("epochs: 3  # réglé\n".encode("latin-1"))  # a traceback before
    r = CliRunner().invoke(cli, [*base, "--config", str(tmp_path / "latin1.yaml")])
    assert r.exit_code == 2 and "latin1.yaml is not UTF-8 text (byte 14); save it as UTF-8" in " ".join(
        r.output.split()
    )
    (tmp_path / "T.YML").write_text("epochs: 6\n")  # YAML by its suffix, in either spelling and case
    r = CliRunner().invoke(cli, [*base, "--config", str(tmp_path / "T.YML")])
    assert r.exit_code == 0 and seen[-1].epochs == 6, r.output
    (tmp_path / "cut.json").write_text('{"epochs": 3')
    (tmp_path / "cut.yaml").write_text("epochs: [3\n")
    for name, why in (
        ("cut.json", "cut.json is not valid JSON (Expecting ',' delimiter: line 1 column 13 (char 12))"),
        ("cut.yaml", "cut.yaml is not valid YAML (while parsing a flow sequence)"),
        ("/proc/self/mem", "/proc/self/mem cannot be read ("),  # an OSError on reading (EIO; EACCES where locked down)
    ):
        r = CliRunner().invoke(cli, [*base, "--config", str(tmp_path / name)])
        assert r.exit_code == 2 and why in " ".join(r.output.split()) and "Traceback" not in r.output, r.output
    monkeypatch.setitem(sys.modules, "yaml", None)  # a Python without PyYAML (timm brings it)
    r = CliRunner().invoke(cli, [*base, "--config", str(tmp_path / "t.yaml")])
    assert r.exit_code == 2 and "YAML needs PyYAML (pip install pyyaml), or write the file as JSON" in " ".join(
        r.output.split()
    )
    r = CliRunner().invoke(cli, [*base, "--config", str(tmp_path / "t.json")])  # JSON needs nothing more
    assert r.exit_code == 0 and seen[-1].epochs == 3, r.output


def test_a_config_json_this_tool_wrote_replays_its_run_from_anywhere(tiny_cache_workspace, tmp_path, monkeypatch):
    """A run's (or a cache's) own config.json as --config: its settings, in the workspace that holds
    it, without what it only records; before, it was refused for its record fields, so a --resume
    had to repeat every flag the run began with."""
    ws = own_workspace(tiny_cache_workspace, tmp_path / "ws")
    monkeypatch.chdir(tmp_path)  # the runs record the workspace as typed: "ws"
    tiny = "--arch test_resnet --epochs 1 --batch-size 8 --no-pretrained --workers 0 --device cpu --seed 3"
    for command in ("train-teacher --lr 0.002", "train-student --method dait-f --lr 0.003"):
        args = ["--workdir", "ws", *command.split(), *tiny.split(), "--val-fraction", "0.25"]
        assert CliRunner().invoke(cli, args).exit_code == 0
    teacher, student = ws / "cub" / "teacher" / "test_resnet-dait-s3", ws / "cub" / "students" / "test_resnet-dait-f-s3"
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")  # the workspace is the one holding the file
    for command, run, lr in (("train-teacher", teacher, 0.002), ("train-student", student, 0.003)):
        r = CliRunner().invoke(cli, [command, "--config", str(run / "config.json"), "--epochs", "2", "--resume"])
        assert r.exit_code == 0, r.output
        config = json.loads((run / "config.json").read_text())
        assert (config["lr"], config["seed"], config["epochs"], config["resume"]) == (lr, 3, 2, True)
        assert ckpt.read_summary(run)["epochs_done"] == 2
    assert json.loads((student / "config.json").read_text())["teacher_run"] == str(teacher)
    assert list((tmp_path / "elsewhere").iterdir()) == []
    # recorded as resumed, yet replaying it starts nothing: the flag is how the run was started
    r = CliRunner().invoke(cli, ["train-teacher", "--config", str(teacher / "config.json"), "--seed", "4"])
    assert r.exit_code == 0 and (ws / "cub" / "teacher" / "test_resnet-dait-s4").is_dir(), r.output
    shutil.copy(teacher / "config.json", tmp_path / "saved.json")  # kept elsewhere: still a run's record
    for config in (teacher / "config.json", tmp_path / "saved.json"):
        r = CliRunner().invoke(cli, ["train-student", "--config", str(config)])
        assert r.exit_code == 2 and f"{config} is a teacher run's config.json; pass it to " in " ".join(
            r.output.split()
        )
    r = CliRunner().invoke(cli, ["train-teacher", "--config", str(ws / "cub" / "cache" / "config.json")])
    assert r.exit_code == 2 and "is a cache's config.json; pass it to `dait-cache encode`" in " ".join(r.output.split())


def test_library_errors_become_one_line_and_an_interruption_says_how_to_continue():
    import errno

    from cli.errors import resume_hint, user_errors

    @user_errors
    def fails(exc):
        raise exc

    with pytest.raises(click.ClickException) as err:
        fails(PermissionError(errno.EACCES, "Permission denied", "/ws/cub"))
    assert err.value.message == (
        "cannot write /ws/cub: Permission denied; choose a writable --workdir (or output path), "
        "or fix the folder's permissions"
    )
    with pytest.raises(FileNotFoundError):  # not a place the user can fix by writing elsewhere: as it was
        fails(FileNotFoundError(errno.ENOENT, "No such file or directory", "/ws/x"))
    assert resume_hint("train-student", ["train-student", "--resume"]) == (
        "the last checkpoint (at most --checkpoint-minutes of training) is kept; continue with: "
        "dait-cache train-student --resume"
    )
    assert resume_hint("encode", ["encode", "--dataset", "my data"]) == (
        "finished shards are kept; continue with: dait-cache encode --dataset 'my data'"
    )
    assert resume_hint("report", ["report"]) == "nothing was half-written; continue with: dait-cache report"


def test_command_summaries_fit_and_aliases_name_their_models():
    from dait_cache.models import ALIASES

    for name, cmd in cli.commands.items():
        assert not cmd.get_short_help_str(limit=60).endswith("..."), name
    r = CliRunner().invoke(cli, ["train-student", "--help"], terminal_width=200)
    for alias in ("resnet18", "mobilenetv2", "efficientnet_b0", "shufflenetv2"):
        assert ALIASES[alias].split(".")[0] in r.output, alias


def test_method_choices_are_the_registries():
    """The CLI lists methods without importing torch; the lists must not drift from the registries."""
    from dait_cache.train.student import METHODS
    from dait_cache.train.teacher import TEACHER_METHODS

    for command, registry in (("train-student", METHODS), ("train-teacher", TEACHER_METHODS)):
        method = next(p for p in cli.commands[command].params if p.name == "method")
        assert sorted(method.type.choices) == sorted(registry), command


def test_option_defaults_are_the_config_dataclasses_defaults():
    from dait_cache.config import EncodeConfig, TrainConfig

    for command, config in (
        ("train-teacher", TrainConfig()),
        ("train-student", TrainConfig()),
        ("encode", EncodeConfig()),
    ):
        for p in cli.commands[command].params:
            # --workdir after the command defaults to the group's (checked below)
            if p.name in ("arch", "method", "dataset", "data_root", "workdir") or not hasattr(config, p.name):
                continue
            default = p.default if isinstance(p.default, (bool, int, float, str, type(None))) else False  # a flag
            assert default == getattr(config, p.name), (command, p.name)
        group_workdir = next(p for p in cli.params if p.name == "workdir").default
        assert group_workdir == config.workdir


def test_progress_rates_name_their_unit(monkeypatch):
    import io
    import time

    from rich.console import Console

    from cli import render

    monkeypatch.setattr(render, "console", Console(file=io.StringIO(), force_terminal=True))
    with render.RichProgress(lambda key: ("images", 8.0)) as progress:  # a training bar: steps are batches
        for done in (1, 2, 3):
            progress("epoch 1/2", done, 10)
            time.sleep(0.02)
        task = progress.bar.tasks[0]
        value, unit = task.fields["rate"].split()
        # the rate shown is steps/s x 8 (read one update earlier, so only about task.speed x 8)
        assert unit == "images/s" and 4 < float(value) / task.speed < 16
        for done in (1, 2, 3):
            progress("runs", done, 5)
            time.sleep(0.02)
        assert progress.bar.tasks[1].fields["rate"] == ""  # a count of runs has no rate


@pytest.mark.parametrize("terminal", [True, False])
def test_a_rank_other_than_0_shows_no_progress(monkeypatch, terminal):
    import io

    from rich.console import Console

    from cli import render

    for show in (True, False):
        shown = io.StringIO()
        monkeypatch.setattr(render, "console", Console(file=shown, force_terminal=terminal))
        with render.RichProgress("views", show=show) as progress:
            progress("train", 5, 5)
        assert ("train" in shown.getvalue()) is show  # under torchrun, rank 0 alone draws the bars
