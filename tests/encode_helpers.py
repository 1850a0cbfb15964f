"""Shared by the tests: a small EncodeConfig and TrainConfig, a workspace of one's own, the bytes of
a cache's shards, and two processes under torchrun."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

from dait_cache.config import EncodeConfig, TrainConfig


def make_cfg(vlm_id, data_root, workdir=None, **kw):
    base = dict(
        dataset="cub",
        data_root=str(data_root),
        workdir=str(workdir),
        vlm=vlm_id,
        pretrained=None,
        views=3,
        image_size=64,
        base_size=72,
        batch_size=16,
        workers=0,
        device="cpu",
        shard_size=8,
    )
    base.update(kw)
    return EncodeConfig(**base)


def train_cfg(ws, **kw):
    """Two tiny CPU epochs of timm's test_resnet on the workspace ``ws`` (``kw`` overrides)."""
    base = dict(
        workdir=str(ws),
        arch="test_resnet",  # timm's tiny ResNet: what these tests pin does not depend on the network
        epochs=2,
        batch_size=8,
        pretrained=False,
        workers=0,
        device="cpu",
        val_fraction=0.25,
        lr=1e-3,
    )
    base.update(kw)
    return TrainConfig(**base)


def own_workspace(workspace: Path, dest: Path) -> Path:
    """A workspace at ``dest`` holding ``workspace``'s encoded caches and none of its runs.

    The session's workspace gathers every run the tests train into it (a ResNet-18 run's
    checkpoints weigh 180 MB); copying only the caches keeps the suite's disk use small."""
    for cache in Path(workspace).glob("*/cache"):
        shutil.copytree(cache, Path(dest) / cache.parent.name / "cache")
    return Path(dest)


def shard_bytes(cache_dir):
    return {p.relative_to(cache_dir).as_posix(): p.read_bytes() for p in sorted(cache_dir.rglob("*.h5"))}


def stop_at_second_shard(monkeypatch, module):
    """Make ``module.write_shard`` write the first shard, then raise KeyboardInterrupt (a run
    stopped part-way); returns the real function, to put back for the rerun."""
    real, calls = module.write_shard, []

    def stop(*a, **kw):
        calls.append(a)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*a, **kw)

    monkeypatch.setattr(module, "write_shard", stop)
    return real


def spy_on_figure_weights(monkeypatch) -> list[tuple[str, str]]:
    """Record (run folder name, checkpoint) of every network the figures load, loading it as before."""
    from pathlib import Path

    from dait_cache import figures
    from dait_cache.train.runs import load_run_backbone

    loaded = []

    def spy(run_dir, num_classes, head=True, checkpoint="best"):
        loaded.append((Path(run_dir).name, checkpoint))
        return load_run_backbone(run_dir, num_classes, head, checkpoint)

    monkeypatch.setattr(figures, "load_run_backbone", spy)
    return loaded


def torchrun_two(script: Path, *args: str, threads: int = 1, timeout: float = 300) -> subprocess.CompletedProcess:
    """``script args`` in two processes under torchrun (on a free port), from the repository root,
    each with ``threads`` OpenMP threads."""
    return subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script), *args],
        env=dict(os.environ, OMP_NUM_THREADS=str(threads)),
        cwd=Path(__file__).parent.parent,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
