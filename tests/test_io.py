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
