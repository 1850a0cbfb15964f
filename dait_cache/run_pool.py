"""A pool of training processes (demo, study) that stops as one.

A Ctrl-C or SIGTERM that reaches only the command (a scheduler that signals the main process,
`kill PID`) is passed on to the runs in flight; one that reaches the whole process group (a
terminal's Ctrl-C, `timeout`) is taken once per process. Either way each run records itself as
interrupted, keeps its last checkpoint and its process exits cleanly; an error in the parent
stops the runs in flight the same way instead of waiting for them to finish.
"""

from __future__ import annotations

import multiprocessing
import os
import queue
import signal
import weakref
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager

import torch

from .progress import Progress
from .stops import hide_lost_stops

# In a worker process: its pid, where epochs are announced, whether a run is in progress, whether
# a stop came.
_pid = 0
_events = None
_busy = False
_stopping = False


def _on_stop(signum: int, frame) -> None:
    # Taken once: the group's signal and the parent's forwarded one arrive both, and a second raise
    # would cut short the run's record of the first. An idle worker only remembers it.
    global _stopping
    if os.getpid() != _pid:
        # a DataLoader worker forked a moment ago, before its own handler (data.workers): raised
        # there, the stop printed a traceback; its run process, stopping too, ends it
        return
    if _stopping:
        return
    _stopping = True
    if _busy:
        raise KeyboardInterrupt


def _init_worker(threads: int, events) -> None:
    global _events, _pid
    # one thread per run by default: the numbers do not depend on the machine's core count (float
    # sums are split by thread), and a shared machine does not make OpenMP threads spin
    torch.set_num_threads(threads)
    _events, _pid = events, os.getpid()
    events.cancel_join_thread()  # progress lines only: exiting never waits on the parent to read them
    signal.signal(signal.SIGTERM, _on_stop)
    signal.signal(signal.SIGINT, _on_stop)
    hide_lost_stops(lambda: _stopping)


def _call(fn: Callable, *args):
    global _busy
    if _stopping:  # a run handed over after the stop does not start
        raise KeyboardInterrupt
    _busy = True
    try:
        return fn(*args)
    finally:
        _busy = False


def epoch_reporter(name: str, epochs: int) -> Callable[[dict], None] | None:
    """In a pool process: the ``on_epoch`` callback that sends (run name, epochs done, epochs) to
    the parent's progress display; ``None`` elsewhere."""
    if _events is None:
        return None
    events = _events
    return lambda row: events.put((name, row["epoch"] + 1, epochs))


def stop_check() -> Progress | None:
    """In a pool process: the run's ``progress`` callback, which raises the stop again should
    its first raise have been lost; ``None`` elsewhere.

    Python prints and drops an exception raised while it runs a ``__del__`` or a weakref callback
    ("Exception ignored in ..."); the run would go on to its last epoch, as the stop is taken once.
    """
    if _events is None:
        return None

    def check(key: str, done: int, total: int) -> None:
        if _stopping:
            raise KeyboardInterrupt

    return check


class RunPool:
    """``submit(fn, *args)`` runs ``fn`` in one of ``jobs`` spawned processes of ``threads``
    threads; :meth:`announcements` returns the epoch announcements that arrived.

    A run process that dies (SIGKILL, the out-of-memory killer) breaks a process pool: every run
    in flight fails with :class:`BrokenProcessPool` and the pool stops the others, which record
    themselves as interrupted (:meth:`settle` waits for that). The next ``submit`` starts a new pool
    with a new announcement queue: a process killed while it wrote to the old one holds that
    queue's lock for good, and would silence every later run's announcements.
    """

    def __init__(self, jobs: int, threads: int = 1, fresh_process_per_run: bool = False):
        self._ctx = multiprocessing.get_context("spawn")
        self._threads = threads
        self._args = dict(max_workers=jobs, mp_context=self._ctx, initializer=_init_worker)
        if fresh_process_per_run:  # CUDA_VISIBLE_DEVICES only counts before CUDA starts
            self._args["max_tasks_per_child"] = 1
        self._pool: ProcessPoolExecutor | None = None
        self._events = None
        self._pool_of: weakref.WeakKeyDictionary[Future, ProcessPoolExecutor] = weakref.WeakKeyDictionary()

    def submit(self, fn: Callable, *args) -> Future:
        if self._pool is None:
            self._close_events()
            self._events = self._ctx.Queue()
            self._pool = ProcessPoolExecutor(**self._args, initargs=(self._threads, self._events))
        future = self._pool.submit(_call, fn, *args)
        self._pool_of[future] = self._pool
        return future

    def settle(self, future: Future) -> None:
        """After ``future`` failed with :class:`BrokenProcessPool`: wait until its pool has stopped
        its other runs (each has recorded how it ended); the next run gets a new pool."""
        broken = self._pool_of.pop(future, None)
        if broken is not None and broken is self._pool:  # an older pool was settled already
            broken.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def announcements(self) -> list[tuple[str, int, int]]:
        """The (run name, epochs done, epochs) announcements that arrived since the last call."""
        arrived = []
        while self._events is not None:
            try:
                arrived.append(self._events.get_nowait())
            except queue.Empty:
                break
        return arrived

    def _close_events(self) -> None:
        if self._events is not None:
            self._events.close()
            self._events = None

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
        self._close_events()


def died(exc: BaseException) -> bool:
    """Whether a run failed because its process (or another run's) died without a result."""
    return isinstance(exc, BrokenProcessPool)


@contextmanager
def run_pool(jobs: int, threads: int = 1, fresh_process_per_run: bool = False) -> Iterator[RunPool]:
    """A :class:`RunPool` that, should the caller stop (Ctrl-C, SIGTERM, an error), stops the
    runs in flight instead of waiting for them."""
    before = set(multiprocessing.active_children())
    pool = RunPool(jobs, threads, fresh_process_per_run)
    try:
        yield pool
    except BaseException:
        for child in set(multiprocessing.active_children()) - before:
            try:
                os.kill(child.pid, signal.SIGTERM)
            except ProcessLookupError:  # ended meanwhile
                pass
        raise
    finally:
        pool.close()
