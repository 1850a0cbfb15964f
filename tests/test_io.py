"""The write protocol: temp names carry the writer's pid; a cleanup removes only dead writers' files."""

import os
import subprocess
import sys

from dait_cache.io import atomic_write_bytes, remove_stale_temps, temp_owner, temp_path


def test_temp_names_carry_the_pid_and_nothing_is_left(tmp_path):
    target = tmp_path / "summary.json"
    assert temp_path(target).name == f"summary.json.{os.getpid()}.tmp"
    atomic_write_bytes(target, b"{}")
    assert target.read_bytes() == b"{}" and [p.name for p in tmp_path.iterdir()] == ["summary.json"]


def test_cleanup_removes_only_the_temp_files_of_dead_writers(tmp_path):
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    try:
        names = {
            "live": f"a.h5.{live.pid}.tmp",
            "dead": f"b.h5.{dead.pid}.tmp",
            "legacy": "c.h5.tmp",
            "mine": f"d.json.{os.getpid()}.tmp",
            "nested": f"sub/e.h5.{dead.pid}.tmp",
        }
        for name in names.values():
            (tmp_path / name).parent.mkdir(exist_ok=True)
            (tmp_path / name).write_bytes(b"half")
        assert temp_owner(tmp_path / names["live"]) == live.pid and temp_owner(tmp_path / "c.h5.tmp") is None
        removed = remove_stale_temps(tmp_path)
        assert sorted(p.name for p in removed) == sorted([names["dead"], names["legacy"]])
        assert (tmp_path / names["live"]).exists() and (tmp_path / names["mine"]).exists()
        assert (tmp_path / names["nested"]).exists()  # not recursive unless asked
        assert [p.name for p in remove_stale_temps(tmp_path, recursive=True)] == [f"e.h5.{dead.pid}.tmp"]
    finally:
        live.kill()
        live.wait()


def test_a_run_is_abandoned_when_no_live_process_holds_its_lock(tmp_path):
    import json
    import socket

    from dait_cache.locks import abandoned, exclusive, run_lock

    run_dir = tmp_path / "teacher" / "r"
    run_dir.mkdir(parents=True)
    assert abandoned(run_dir)  # no lock: nothing writes it
    with exclusive(run_lock(run_dir), "run r"):
        assert not abandoned(run_dir)  # this process writes it
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    lock = run_lock(run_dir)
    lock.write_text(json.dumps({"pid": int(dead.stdout), "host": socket.gethostname()}))
    assert abandoned(run_dir)  # its owner died on this host
    lock.write_text(json.dumps({"pid": int(dead.stdout), "host": "another-host"}))
    assert not abandoned(run_dir)  # another host's process cannot be checked: it counts as alive
    lock.write_text("")
    assert not abandoned(run_dir)  # a lock being written
