"""Locks and reader registrations (locks.py) with real lock files and real processes: a dead
owner's lock is taken over, a live one's refused, only one's own lock is released, and readers
are listed while they read and forgotten when they die."""

from __future__ import annotations

import json
import logging
import os
import socket

import pytest

from dait_cache.errors import DaitError
from dait_cache.locks import READERS, encode_lock, encoding_now, exclusive, live_readers, reading

HOST = socket.gethostname()


def _owner(path, pid, host=HOST):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"pid": pid, "host": host}))


def test_a_dead_owners_lock_is_taken_over_with_a_warning(tmp_path, dead_pid, caplog):
    lock = tmp_path / ".encode.lock"
    _owner(lock, dead_pid)
    with caplog.at_level(logging.WARNING, logger="dait_cache.locks"), exclusive(lock, "cache c"):
        assert json.loads(lock.read_text()) == {"pid": os.getpid(), "host": HOST}
    assert f"taking over {lock}: its owner, process {dead_pid}, is gone" in caplog.text
    assert not lock.exists()


def test_a_live_or_remote_owners_lock_is_refused_naming_it(tmp_path, dead_pid):
    lock = tmp_path / ".encode.lock"
    for pid, host in ((os.getppid(), HOST), (dead_pid, "another-host")):  # alive here; not checkable
        _owner(lock, pid, host)
        with pytest.raises(DaitError, match=rf"^cache c is in use by process {pid} on {host} \(lock .*\); wait"):
            with exclusive(lock, "cache c"):
                pass
        assert json.loads(lock.read_text()) == {"pid": pid, "host": host}  # left as it was


def test_only_ones_own_lock_is_released(tmp_path):
    lock = tmp_path / ".encode.lock"
    with exclusive(lock, "cache c"):
        _owner(lock, 1, "another-host")  # someone deleted ours and took it meanwhile
    assert json.loads(lock.read_text()) == {"pid": 1, "host": "another-host"}


def test_a_rank_that_does_not_hold_the_lock_takes_nothing(tmp_path):
    lock = tmp_path / ".encode.lock"
    _owner(lock, os.getppid())
    with exclusive(lock, "cache c", held=False), reading(tmp_path / "cache", "run", held=False):
        pass
    assert not (tmp_path / READERS).exists()


def test_encoding_now_names_a_live_writer_only(tmp_path, dead_pid):
    cache = tmp_path / "cub" / "cache"
    assert encoding_now(cache) is None
    _owner(encode_lock(cache), dead_pid)
    assert encoding_now(cache) is None
    _owner(encode_lock(cache), dead_pid, "another-host")
    assert encoding_now(cache) == f"process {dead_pid} on another-host"
    with pytest.raises(DaitError):  # the lock is taken: the same check a second encode makes
        with exclusive(encode_lock(cache), "cache"):
            pass


def test_readers_are_listed_while_they_read_and_dead_ones_forgotten(tmp_path, dead_pid):
    cache = tmp_path / "cub" / "cache"
    folder = cache.parent / READERS
    with reading(cache, "train-teacher r"), reading(cache, "train-student s"):  # two runs in one process
        listed = live_readers(cache)
        assert sorted(r["what"] for r in listed) == ["train-student s", "train-teacher r"]
        assert {(r["pid"], r["host"]) for r in listed} == {(os.getpid(), HOST)} and len(
            set(map(str, folder.iterdir()))
        ) == 2
    assert live_readers(cache) == [] and list(folder.iterdir()) == []
    _owner(folder / "gone.json", dead_pid)
    _owner(folder / "remote.json", dead_pid, "another-host")
    (folder / "empty.json").write_text("")
    listed = live_readers(cache)
    assert [(r["host"], r["file"]) for r in listed] == [("another-host", str(folder / "remote.json"))]
    assert sorted(p.name for p in folder.iterdir()) == ["remote.json"]
