"""DataLoader worker processes: how they start, their setup, and a quiet end when a run stops."""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import select
import signal
import sys
import threading
import traceback

import torch


def _stop_quietly(signum: int, frame) -> None:
    raise KeyboardInterrupt


def _quiet_fd_sharer(exc_type: type, exc: BaseException, tb) -> None:
    # torch hands each batch to the training process as file descriptors, sent by a thread of
    # multiprocessing's resource sharer in this worker; a training process that stops (Ctrl-C,
    # SIGTERM) mid-handshake hangs up on it, and the thread printed a traceback (through
    # sys.excepthook) after the stop's one-line message. Only that hang-up is silenced.
    hung_up = issubclass(exc_type, (OSError, EOFError))
    if hung_up and any(f.filename.endswith("resource_sharer.py") for f in traceback.extract_tb(tb)):
        return
    sys.__excepthook__(exc_type, exc, tb)


_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _die_with_parent() -> None:
    # A training or encode process killed outright (SIGKILL, the out-of-memory killer) cannot shut
    # its workers down: orphaned, each went on reading the cache until torch's watchdog noticed
    # (after its current item, up to seconds later). The kernel kills them with it instead (Linux;
    # elsewhere the watchdog stays the only guard). The signal comes when the forking *thread*
    # ends: every loader here is built on the main thread.
    parent = multiprocessing.parent_process()
    if not sys.platform.startswith("linux") or parent is None:
        return
    if os.getppid() == parent.pid:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent.pid:  # it died before the line above: no signal will come
            os._exit(0)
        return
    # A fork server's worker (Python 3.14's default start method on Linux), or an orphan already:
    # the server, the kernel's parent, outlives the run (its children keep it open), and torch's
    # watchdog watches the server, so a thread watches the run's process itself.
    try:
        pidfd = os.pidfd_open(parent.pid)
    except ProcessLookupError:
        os._exit(0)
    except (OSError, AttributeError):  # a kernel before 5.3: the watchdog alone
        return
    threading.Thread(target=_end_with, args=(pidfd,), name="dait-parent-watch", daemon=True).start()


def _end_with(pidfd: int) -> None:
    select.select([pidfd], [], [])  # readable once the process has ended
    os.kill(os.getpid(), signal.SIGKILL)


def worker_init(_: int) -> None:
    """DataLoader worker setup: one thread each (rendering is per-image and threads would only
    oversubscribe the cores the other workers use), an end with its process, and a quiet end when
    the run stops."""
    _die_with_parent()
    torch.set_num_threads(1)
    # A SIGTERM sent to the whole process group (a scheduler's cancel, `timeout`, `kill -- -PGID`)
    # reaches the workers too. Killed by it, a worker makes the main process, which is already
    # stopping with its own one-line message, also print a "worker killed by signal" traceback;
    # ending like Ctrl-C instead lets torch's worker loop return quietly. Ctrl-C itself too: the
    # handler inherited from a demo's or study's run process leaves it to that process.
    signal.signal(signal.SIGTERM, _stop_quietly)
    if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
        signal.signal(signal.SIGINT, _stop_quietly)
    sys.excepthook = _quiet_fd_sharer


def worker_start(workers: int) -> str | None:
    """Fork on Linux, for every loader of the package, also where the default start method is
    another: spawn in the demo's and the study's run processes, a fork server from Python 3.14.
    Otherwise each worker re-imports torch and reads the pickled dataset for seconds, and a stop
    in that window leaves it a truncated pickle and a traceback."""
    return "fork" if workers > 0 and sys.platform.startswith("linux") else None


def worker_options(workers: int) -> dict:
    """A DataLoader's ``workers`` processes, started and set up as every loader here starts them."""
    return {"num_workers": workers, "worker_init_fn": worker_init, "multiprocessing_context": worker_start(workers)}
