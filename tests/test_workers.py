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

loader = DataLoader(Slow(), batch_size=2, num_workers=2, worker_init_fn=worker_init,
                    multiprocessing_context=worker_start(2))
it = iter(loader)
next(it)
print("loading", flush=True)
time.sleep(120)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the parent-death signal is Linux's")
def test_a_killed_process_takes_its_dataloader_workers_with_it():
    # The out-of-memory killer's SIGKILL: no shutdown runs. Torch's own watchdog would notice the
    # orphan only after its current item (here a minute), having read the cache meanwhile.
    proc = subprocess.Popen([sys.executable, "-c", _LOADER], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    workers: list[int] = []
    try:
        assert proc.stdout.readline() == "loading\n"
        workers += children(proc.pid)
        assert len(workers) == 2, workers
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
