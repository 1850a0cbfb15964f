"""Shared by the encode tests: a small EncodeConfig and the bytes of a cache's shards."""

from dait_cache.config import EncodeConfig


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


def shard_bytes(cache_dir):
    return {p.relative_to(cache_dir).as_posix(): p.read_bytes() for p in sorted(cache_dir.rglob("*.h5"))}
