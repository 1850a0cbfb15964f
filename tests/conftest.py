import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

import fake_trees  # noqa: E402
from tiny_vlm import make_tiny_vlm  # noqa: E402


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
    from dait_cache.config import EncodeConfig
    from dait_cache.encode import encode

    root = tmp_path_factory.mktemp("train-data")
    fake_trees.make_cub(root / "data", n_classes=4, per_class=(8, 3))
    vlm = make_tiny_vlm(root / "vlm")
    cfg = EncodeConfig(
        dataset="cub",
        data_root=str(root / "data"),
        workdir=str(root / "ws"),
        vlm=vlm,
        pretrained=None,
        views=3,
        image_size=64,
        base_size=72,
        batch_size=32,
        workers=0,
        device="cpu",
        shard_size=16,
        prompts="ensemble",
    )
    encode(cfg)
    import shutil

    shutil.rmtree(root / "vlm")
    return root / "ws"


@pytest.fixture(scope="session")
def dogs_cache_workspace(tmp_path_factory):
    """A second workspace, another dataset (fake Stanford Dogs), for cross-dataset refusals."""
    from dait_cache.config import EncodeConfig
    from dait_cache.encode import encode

    root = tmp_path_factory.mktemp("dogs")
    fake_trees.make_dogs(root / "data")
    vlm = make_tiny_vlm(root / "vlm")
    encode(
        EncodeConfig(
            dataset="dogs",
            data_root=str(root / "data"),
            workdir=str(root / "ws"),
            vlm=vlm,
            pretrained=None,
            views=1,
            image_size=64,
            base_size=72,
            workers=0,
            device="cpu",
        )
    )
    return root / "ws"
