import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

import fake_trees  # noqa: E402
from encode_helpers import make_cfg  # noqa: E402
from tiny_vlm import make_tiny_vlm  # noqa: E402


@pytest.fixture(scope="session")
def dead_pid() -> int:
    """The pid of a process that has exited (on this host)."""
    import subprocess

    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(done.stdout)


@pytest.fixture(scope="session")
def vlm_id(tmp_path_factory):
    """A tiny open_clip model saved as a local-dir: folder (the path users take offline)."""
    return make_tiny_vlm(tmp_path_factory.mktemp("vlm") / "tiny")


@pytest.fixture(scope="session")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    fake_trees.make_cub(root, n_classes=4, per_class=(5, 2))
    return root


@pytest.fixture(scope="session")
def tiny_cache_workspace(tmp_path_factory):
    """A workspace holding one small encoded cache (fake CUB tree, tiny VLM, 64 px views).

    The VLM's folder is deleted afterwards: training must never need it.
    """
    from dait_cache.encode import encode

    root = tmp_path_factory.mktemp("train-data")
    fake_trees.make_cub(root / "data", n_classes=4, per_class=(8, 3))
    vlm = make_tiny_vlm(root / "vlm")
    encode(make_cfg(vlm, root / "data", root / "ws", batch_size=32, shard_size=16, prompts="ensemble"))
    import shutil

    shutil.rmtree(root / "vlm")
    return root / "ws"


@pytest.fixture(scope="session")
def dogs_cache_workspace(tmp_path_factory):
    """A second workspace, another dataset (fake Stanford Dogs), for cross-dataset refusals."""
    from dait_cache.encode import encode

    root = tmp_path_factory.mktemp("dogs")
    fake_trees.make_dogs(root / "data")
    encode(make_cfg(make_tiny_vlm(root / "vlm"), root / "data", root / "ws", dataset="dogs", views=1))
    return root / "ws"
