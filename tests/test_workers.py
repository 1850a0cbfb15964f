"""DataLoader worker processes (training, encode, predict) end with the process that started them."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from benchmarks.fault_harness import children, running

ROOT = Path(__file__).resolve().parents[1]

# A process that loads with two real DataLoader workers set up as the package sets them up; the
# items after the first batch take a minute, so a worker is busy in the dataset when it is killed.
_LOADER = """
import multiprocessing
import sys
import time
import torch
from torch.utils.data import DataLoader, Dataset
from dait_cache.data.workers import worker_init, worker_start

class Slow(Dataset):
    def __len__(self):
        return 64
    def __getitem__(self, i):
        if i >= 2:
            time.sleep(60)
        return torch.tensor(i)

if __name__ == "__main__":  # a fork server's workers import this file again
    start = worker_start(2) if sys.argv[1] == "package" else multiprocessing.get_context(sys.argv[1])
    loader = DataLoader(Slow(), batch_size=2, num_workers=2, worker_init_fn=worker_init, multiprocessing_context=start)
    it = iter(loader)
    next(it)
    print(*[w.pid for w in it._workers], flush=True)
    time.sleep(120)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the parent-death signal is Linux's")
@pytest.mark.parametrize("start", ["package", "forkserver"])
def test_a_killed_process_takes_its_dataloader_workers_with_it(start, tmp_path):
    # The out-of-memory killer's SIGKILL: no shutdown runs. Torch's own watchdog would notice the
    # orphan only after its current item (here a minute), having read the cache meanwhile. Under a
    # fork server (Python 3.14's default start method on Linux, in a user's own loader) the server
    # is the kernel's parent, and it outlives the process while its workers run: the workers
    # loaded nothing before (each took its parent for dead and ended), and now watch the process.
    (tmp_path / "loader.py").write_text(_LOADER)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, tmp_path / "loader.py", start], env=env, stdout=subprocess.PIPE, text=True)
    workers: list[int] = []
    try:
        workers += map(int, proc.stdout.readline().split())
        assert len(workers) == 2 and all(map(running, workers)), workers
        assert (children(proc.pid) == workers) is (start == "package")  # forked by the process itself
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        deadline = time.monotonic() + 5
        while any(map(running, workers)):
            assert time.monotonic() < deadline, f"DataLoader workers {workers} outlived their process"
            time.sleep(0.05)
    finally:
        proc.kill()
        for pid in workers:
            if running(pid):
                os.kill(pid, signal.SIGKILL)


# Every loader of the package, started where the default start method is a fork server.
_PACKAGE_LOADERS = """
import multiprocessing
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np

if __name__ == "__main__":
    multiprocessing.set_start_method("forkserver")  # Python 3.14's default on Linux
    import fake_trees
    from encode_helpers import make_cfg
    from tiny_vlm import make_tiny_vlm

    from dait_cache.deploy.bundle import Preprocessing
    from dait_cache.deploy.predict import predict_files
    from dait_cache.encode import encode

    root = Path(sys.argv[1])
    fake_trees.make_cub(root / "data")
    cfg = make_cfg(make_tiny_vlm(root / "vlm"), root / "data", root / "ws", workers=2)
    encode(cfg)  # the views' loader
    encode(replace(cfg, store_views=True))  # the view store's, for a cache without one
    files = sorted((root / "data").rglob("*.jpg"))
    logits = lambda px: np.zeros((len(px), 2), np.float32)  # noqa: E731
    predictions, failed = predict_files(logits, Preprocessing(72, 64), ["a", "b"], files, workers=2)
    assert len(predictions) == len(files) and failed == []
    from multiprocessing import forkserver

    print("fork server", forkserver._forkserver._forkserver_pid)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="fork is Linux's start method here")
def test_the_packages_loaders_fork_where_the_default_is_a_fork_server(tmp_path):
    # Forked, a worker starts at once; a fork server's worker re-imports the package and reads the
    # pickled dataset first (a stop in that window leaves a truncated pickle and a traceback)
    (tmp_path / "loaders.py").write_text(_PACKAGE_LOADERS)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")]), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, tmp_path / "loaders.py", tmp_path], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.splitlines()[-1] == "fork server None"  # none was ever started
