"""The write protocol: temp names carry the writer's pid; a cleanup removes only dead writers' files."""

import json
import os
import socket
import subprocess
import sys

import pytest

from dait_cache.errors import DaitError
from dait_cache.io import atomic_write_bytes, prepare_output, remove_stale_temps, temp_owner, temp_path


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
        # of one file name: its dead writers' temps, not those of a name that merely starts alike
        for name in (f"f.h5.{dead.pid}.tmp", f"f.h5x.{dead.pid}.tmp", f"g.h5.{dead.pid}.tmp"):
            (tmp_path / name).write_bytes(b"half")
        assert [p.name for p in remove_stale_temps(tmp_path, of="f.h5")] == [f"f.h5.{dead.pid}.tmp"]
        assert (tmp_path / f"f.h5x.{dead.pid}.tmp").exists() and (tmp_path / f"g.h5.{dead.pid}.tmp").exists()
    finally:
        live.kill()
        live.wait()


def test_a_run_is_abandoned_when_no_live_process_holds_its_lock(tmp_path, dead_pid):
    from dait_cache.locks import abandoned, exclusive, run_lock

    run_dir = tmp_path / "teacher" / "r"
    run_dir.mkdir(parents=True)
    assert abandoned(run_dir)  # no lock: nothing writes it
    with exclusive(run_lock(run_dir), "run r"):
        assert not abandoned(run_dir)  # this process writes it
    lock = run_lock(run_dir)
    lock.write_text(json.dumps({"pid": dead_pid, "host": socket.gethostname()}))
    assert abandoned(run_dir)  # its owner died on this host
    lock.write_text(json.dumps({"pid": dead_pid, "host": "another-host"}))
    assert not abandoned(run_dir)  # another host's process cannot be checked: it counts as alive
    lock.write_text("")
    assert not abandoned(run_dir)  # a lock being written


_LOCK_LOOP = """
import sys
from pathlib import Path
from dait_cache.locks import exclusive
for _ in range(int(sys.argv[2])):
    with exclusive(Path(sys.argv[1]), "x"):
        pass
"""


def test_a_lock_file_is_never_seen_without_its_owner(tmp_path):
    # a lock created empty and filled afterwards, its owner killed in between, refused every later
    # writer for good ("in use by process ? on ?"): the file appears with its content or not at all
    lock = tmp_path / ".encode.lock"
    writer = subprocess.Popen([sys.executable, "-c", _LOCK_LOOP, str(lock), "3000"])
    seen, unreadable = 0, []
    while writer.poll() is None:
        try:
            text = lock.read_text()
        except FileNotFoundError:
            continue
        try:
            seen += json.loads(text)["pid"] == writer.pid
        except ValueError:
            unreadable.append(text)
    assert writer.returncode == 0 and seen > 0
    assert unreadable == []
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_taking_a_lock_removes_only_dead_writers_temp_files_of_it(tmp_path):
    from dait_cache.locks import exclusive

    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    try:
        names = [f".encode.lock.{live.pid}.tmp", f".encode.lock.{dead.pid}.tmp", f"other.{dead.pid}.tmp"]
        for name in names:
            (tmp_path / name).write_text("{}")
        with exclusive(tmp_path / ".encode.lock", "x"):
            pass
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted([names[0], names[2]])
    finally:
        live.kill()
        live.wait()


def test_a_lock_on_a_filesystem_without_hard_links_still_excludes(tmp_path, monkeypatch):
    from dait_cache.errors import DaitError
    from dait_cache.locks import exclusive

    def no_links(src, dst):  # what vfat or an SMB share answers
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_links)
    lock = tmp_path / ".encode.lock"
    with exclusive(lock, "cache c"):
        assert json.loads(lock.read_text()) == {"pid": os.getpid(), "host": socket.gethostname()}
        with pytest.raises(DaitError, match=f"cache c is in use by process {os.getpid()}"):
            with exclusive(lock, "cache c"):
                pass
    assert list(tmp_path.iterdir()) == []


def test_an_ownerless_lock_is_refused_saying_so(tmp_path):
    from dait_cache.errors import DaitError
    from dait_cache.locks import exclusive

    lock = tmp_path / ".encode.lock"
    lock.write_text("")  # what a writer killed while an earlier version took the lock left
    with pytest.raises(DaitError, match=rf"cache c is locked by {lock}, which names no owner .*delete"):
        with exclusive(lock, "cache c"):
            pass
    assert lock.read_text() == ""


def test_a_lock_released_while_a_writer_looks_at_it_is_taken(tmp_path, monkeypatch):
    import dait_cache.locks as locks

    create, tries = locks._create, []

    def released_at_once(path, owner):  # its owner lets go between our try and our look
        tries.append(path)
        return False if len(tries) == 1 else create(path, owner)

    monkeypatch.setattr(locks, "_create", released_at_once)
    lock = tmp_path / ".encode.lock"
    with locks.exclusive(lock, "cache c"):
        assert json.loads(lock.read_text())["pid"] == os.getpid()
    assert len(tries) == 2


def test_to_jsonable_gives_plain_json_values():
    import dataclasses
    from pathlib import Path

    from dait_cache.io import to_jsonable

    @dataclasses.dataclass(frozen=True)
    class Cfg:
        root: Path
        sizes: tuple
        table: dict

    cfg = Cfg(Path("/data/cub"), (224, (1, 2)), {3: Path("x"), "k": [Path("y")]})
    assert to_jsonable(cfg) == {"root": "/data/cub", "sizes": [224, [1, 2]], "table": {"3": "x", "k": ["y"]}}
    assert to_jsonable({1: 2}) == {"1": 2}  # keys as strings here, not only once json.dumps ran


def test_atomic_writes_replace_take_any_bytes_and_leave_nothing_when_they_fail(tmp_path):
    target = tmp_path / "sub" / "shard.bin"
    atomic_write_bytes(target, b"first")
    atomic_write_bytes(target, bytearray(b"second"))  # over an existing file
    assert target.read_bytes() == b"second"
    atomic_write_bytes(target, memoryview(b"third"))
    assert target.read_bytes() == b"third"
    atomic_write_bytes(target, [b"a", memoryview(b"bc"), bytearray(b"d")])  # parts, one after another
    assert target.read_bytes() == b"abcd"

    def parts_then_full_disk():
        yield b"half of it"
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space left"):
        atomic_write_bytes(tmp_path / "new.bin", parts_then_full_disk())
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["shard.bin", "sub"]  # no half file, no temp


def test_a_commit_flushes_the_file_then_the_folder_of_its_new_name(tmp_path, monkeypatch):
    import dait_cache.io as io_mod

    synced = []
    monkeypatch.setattr(io_mod, "fsync_dir", lambda folder: synced.append((folder, sorted(os.listdir(folder)))))
    atomic_write_bytes(tmp_path / "sub" / "x.bin", b"x")
    assert synced == [(tmp_path / "sub", ["x.bin"])]  # after the rename: the entry that survives a power cut


def test_sha256_reads_the_whole_file_in_chunks(tmp_path):
    import hashlib

    from dait_cache.io import sha256_file

    data = os.urandom(1000)
    (tmp_path / "f").write_bytes(data)
    assert sha256_file(tmp_path / "f", chunk=64) == sha256_file(tmp_path / "f") == hashlib.sha256(data).hexdigest()


def test_pid_alive_counts_unknown_as_alive(dead_pid):
    from dait_cache.io import pid_alive

    assert pid_alive(os.getpid()) and not pid_alive(dead_pid) and not pid_alive(str(dead_pid))
    assert pid_alive(None) and pid_alive("abc") and pid_alive(2**80)  # unreadable: never taken for dead


def test_temp_owner_reads_only_a_pid_after_the_name():
    from pathlib import Path

    assert temp_owner(Path("summary.json.123.tmp")) == 123
    assert temp_owner(Path("123.tmp")) is None  # an earlier version's temp of a file named 123
    assert temp_owner(Path("a.b.tmp")) is None


def test_an_output_is_checked_before_any_work(tmp_path):
    out = prepare_output(tmp_path / "new" / "deeper" / "model.onnx")
    assert out.parent.is_dir() and list(out.parent.iterdir()) == []  # its folder made, no probe left
    figs = prepare_output(tmp_path / "figs", "--plots", folder=True)
    assert figs.is_dir() and list(figs.iterdir()) == []
    (tmp_path / "afile").write_text("")
    with pytest.raises(DaitError) as err:
        prepare_output(tmp_path / "afile" / "sub" / "x.md")
    assert str(err.value) == (
        f"cannot write {tmp_path}/afile/sub/x.md ({tmp_path}/afile is a file, not a folder); "
        "give --output a place you can write"
    )
    with pytest.raises(DaitError, match=r"afile is a file, not a folder\); give --plots a place"):
        prepare_output(tmp_path / "afile", "--plots", folder=True)
    assert (tmp_path / "afile").read_text() == ""
