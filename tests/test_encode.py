"""Phase 1: encode -> HDF5 cache, against a tiny open_clip model loaded through local-dir:."""

import dataclasses
import hashlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import fake_trees
import h5py
import numpy as np
import pytest
import torch
from encode_helpers import make_cfg, shard_bytes, stop_at_second_shard, torchrun_two, train_cfg
from tiny_vlm import PREPROCESS, make_tiny_vlm

from dait_cache.cache import open_cache, verify_cache
from dait_cache.data import load_dataset
from dait_cache.data.views import sample_view_params
from dait_cache.encode import encode, manifest_for
from dait_cache.errors import CacheError, DaitError, ModelError
from dait_cache.vlm import load_vlm


@pytest.fixture(scope="module")
def encoded(vlm_id, data_root, tmp_path_factory):
    cfg = make_cfg(vlm_id, data_root, tmp_path_factory.mktemp("ws"), workers=2)
    return cfg, encode(cfg)


def test_layout_and_shapes(encoded):
    cfg, result = encoded
    c = open_cache(result.cache_dir)
    assert not result.up_to_date and result.views_encoded == 20 * 4 + 8 * 1
    on_disk = [os.path.join(d, f) for d, _, files in os.walk(result.cache_dir) for f in files]
    assert result.size_bytes == sum(os.path.getsize(f) for f in on_disk)  # what encode prints: the shards too
    assert sorted(p.name for p in (result.cache_dir / "train").iterdir()) == [
        "shard-00000.h5",
        "shard-00001.h5",
        "shard-00002.h5",
    ]
    assert c.img_emb("train").shape == (20, 4, 32) and c.img_emb("train").dtype == np.float16
    assert c.img_emb("test").shape == (8, 1, 32)
    assert c.view_params("train").shape == (20, 4, 15)
    for split, n, views in (("train", 20, 4), ("test", 8, 1)):  # the replayable-view contract
        want = [
            sample_view_params(cfg.seed, i, v, cfg.view_preset, crop_fraction=64 / 72).to_vector()
            for i in range(n)
            for v in range(views)
        ]
        assert np.array_equal(c.view_params(split).reshape(n * views, 15), np.stack(want))
    assert c.text_emb.shape == (4, 1, 32)
    assert c.class_names[0] == "Black footed Albatross"
    assert c.templates == ["a photo of {}, a type of bird"]
    assert c.sample_index("train").tolist() == list(range(20))
    ds = load_dataset("cub", cfg.data_root, "train")
    assert c.labels("train").tolist() == ds.labels
    assert c.images("train").shape == (20, 72, 72, 3)
    m = c.manifest
    assert m["vlm"]["embed_dim"] == 32 and m["views"]["K"] == 3
    assert c.logit_scale == m["vlm"]["logit_scale"] == pytest.approx(1 / 0.07, rel=1e-6)  # the tiny VLM's
    assert c.img_emb("train") is c.img_emb("train")  # the shards are read once, then kept in RAM
    assert (m["vlm"]["mean"], m["vlm"]["std"]) == (PREPROCESS["mean"], PREPROCESS["std"])  # the VLM's own
    assert all(s["state"] == "complete" and len(s["sha256"]) == 64 for s in m["splits"]["train"]["shards"])
    assert json.loads((result.cache_dir / "config.json").read_text())["views"] == 3
    with h5py.File(result.cache_dir / "train/shard-00001.h5") as f:
        assert f["img_emb"].fletcher32 and f.attrs["fingerprint"] == m["fingerprint"]
        assert (f.attrs["row_start"], f.attrs["row_end"]) == (8, 16)


def test_cached_embeddings_equal_open_clip_on_replayed_pixels(encoded, vlm_id):
    cfg, result = encoded
    c = open_cache(result.cache_dir)
    vlm = load_vlm(vlm_id, None, "cpu")
    mean = torch.tensor(vlm.mean).view(1, 3, 1, 1)
    std = torch.tensor(vlm.std).view(1, 3, 1, 1)
    for split, rows, views in (("train", [0, 9, 19], [0, 1, 3]), ("test", [0, 7], [0])):
        px = torch.stack([c.view_pixels(split, r, v) for r in rows for v in views])
        assert px.dtype == torch.uint8 and px.shape[1:] == (3, 64, 64)
        with torch.no_grad():
            ref = vlm.model.encode_image((px.float() / 255 - mean) / std).numpy()
        got = np.stack([c.img_emb(split)[r, v] for r in rows for v in views]).astype(np.float32)
        np.testing.assert_allclose(got, ref, rtol=2e-3, atol=2e-3)
    prompts = [t.format(n) for n in c.class_names for t in c.templates]
    with torch.no_grad():
        ref_t = vlm.model.encode_text(vlm.tokenizer(prompts)).numpy()
    np.testing.assert_allclose(c.text_emb.reshape(len(prompts), -1), ref_t, rtol=1e-5, atol=1e-5)


def test_view_pixels_without_image_cache_decode_again(vlm_id, data_root, tmp_path, encoded):
    cfg = make_cfg(vlm_id, data_root, tmp_path, image_cache=False, workers=0)
    c = open_cache(encode(cfg).cache_dir)
    assert c.images("train") is None
    ref = open_cache(encoded[1].cache_dir)
    for row, view in ((3, 2), (11, 0)):
        assert torch.equal(c.view_pixels("train", row, view), ref.view_pixels("train", row, view))
    np.testing.assert_array_equal(c.img_emb("train"), ref.img_emb("train"))


def test_two_runs_give_identical_bytes(vlm_id, data_root, tmp_path, encoded):
    cfg = make_cfg(vlm_id, data_root, tmp_path, workers=0)  # no workers this time
    second = encode(cfg)
    assert shard_bytes(second.cache_dir) == shard_bytes(encoded[1].cache_dir)


def test_rerun_is_a_no_op(encoded):
    cfg, result = encoded
    again = encode(cfg)
    assert again.up_to_date and again.views_encoded == 0


def test_deleted_shard_is_rebuilt_alone_with_identical_bytes(vlm_id, data_root, tmp_path):
    cfg = make_cfg(vlm_id, data_root, tmp_path)
    first = encode(cfg)
    before = shard_bytes(first.cache_dir)
    mtimes = {p: p.stat().st_mtime_ns for p in first.cache_dir.rglob("*.h5")}
    victim = first.cache_dir / "train/shard-00001.h5"
    victim.unlink()
    (first.cache_dir / "train/shard-00002.h5.tmp").write_bytes(b"half a shard")  # stray tmp
    seen = []
    second = encode(cfg, progress=lambda split, done, total: seen.append((split, total)))
    assert second.views_encoded == 8 * 4 and set(seen) == {("train", 32)}
    assert shard_bytes(second.cache_dir) == before
    for p, t in mtimes.items():
        if p != victim:
            assert p.stat().st_mtime_ns == t  # untouched
    assert not list(second.cache_dir.rglob("*.tmp"))
    assert verify_cache(second.cache_dir) == []


def test_a_repair_leaves_a_cache_from_before_the_probes_without_them(vlm_id, data_root, tmp_path):
    from dait_cache.cache.manifest import read_manifest, write_manifest

    cfg = make_cfg(vlm_id, data_root, tmp_path)
    cache_dir = encode(cfg).cache_dir
    old = read_manifest(cache_dir)
    for key in ("render_probe", "decode_probe", "decoder"):  # as encoded before the probes came in
        del old["views"][key]
    old["created"] = "2026-01-02T03:04:05Z"  # not a time this test could run at
    write_manifest(cache_dir, old)
    (cache_dir / "train/shard-00001.h5").unlink()
    assert encode(cfg).views_encoded == 8 * 4
    # the other shards' machine is still unknown: this one's probes would judge replays by it
    repaired = read_manifest(cache_dir)
    assert not {"render_probe", "decode_probe", "decoder"} & set(repaired["views"])
    assert repaired["created"] == "2026-01-02T03:04:05Z"  # still the cache encoded then


def test_interrupted_encode_resumes(vlm_id, data_root, tmp_path, monkeypatch):
    import dait_cache.encode as enc

    cfg = make_cfg(vlm_id, data_root, tmp_path)
    real = stop_at_second_shard(monkeypatch, enc)
    with pytest.raises(KeyboardInterrupt):
        encode(cfg)
    with pytest.raises(CacheError, match="incomplete"):
        open_cache(cfg.cache_dir)
    # while an encode holds the cache, its unfinished state is not an interruption: training and
    # verify said "interrupted" and printed the command that would start a second encode
    from click.testing import CliRunner

    from cli.main import cli
    from dait_cache.locks import encode_lock, exclusive

    with exclusive(encode_lock(cfg.cache_dir), "cache"):
        writer = f"process {os.getpid()} on {socket.gethostname()}"
        with pytest.raises(CacheError) as err:
            open_cache(cfg.cache_dir)
        assert (
            str(err.value) == f"cache at {cfg.cache_dir} is being written by encode ({writer}); wait for it to finish"
        )
        r = CliRunner().invoke(cli, ["--workdir", str(tmp_path), "verify"])
        assert r.exit_code == 1 and " ".join(r.output.split()) == (
            f"Error: {cfg.cache_dir} is being written by encode ({writer}); verify it once that has finished"
        )
    dead = subprocess.Popen(["true"])
    dead.wait()  # a lock left by a killed encode: the cache was interrupted
    encode_lock(cfg.cache_dir).write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname()}))
    with pytest.raises(CacheError, match="incomplete \\(encode was interrupted\\)"):
        open_cache(cfg.cache_dir)
    r = CliRunner().invoke(cli, ["--workdir", str(tmp_path), "verify"])
    assert r.exit_code == 1 and "incomplete (encode interrupted)" in r.output and "repair:" in r.output
    monkeypatch.setattr(enc, "write_shard", real)
    result = encode(cfg)
    assert result.views_encoded == 12 * 4 + 8  # shard 0 of train was kept
    assert verify_cache(result.cache_dir) == []


def test_verify_catches_a_flipped_byte(vlm_id, data_root, tmp_path):
    cfg = make_cfg(vlm_id, data_root, tmp_path)
    cache_dir = encode(cfg).cache_dir
    path = cache_dir / "train/shard-00000.h5"
    good = path.read_bytes()
    data = bytearray(good)
    with h5py.File(path) as f:
        offset = f["img_emb"].id.get_chunk_info(0).byte_offset
    data[offset + 5] ^= 0x01
    path.write_bytes(bytes(data))
    problems = verify_cache(cache_dir)
    assert any("shard-00000.h5: sha256 differs" in p for p in problems)
    assert any("shard-00000.h5: unreadable" in p for p in problems)  # fletcher32 notices too
    text = cache_dir / "text.h5"
    good_text = text.read_bytes()
    text.write_bytes(good_text[:-1] + bytes([good_text[-1] ^ 1]))
    assert any(p.startswith("text.h5: sha256 differs") for p in verify_cache(cache_dir))
    result = encode(cfg)  # the repair verify names: the damaged files alone are encoded again
    assert result.views_encoded == 8 * 4 and path.read_bytes() == good and text.read_bytes() == good_text
    assert verify_cache(cache_dir) == []


def test_fingerprint_tracks_numbers_not_paths(vlm_id, data_root, tmp_path, tmp_path_factory):
    ds = {s: load_dataset("cub", data_root, s) for s in ("train", "test")}

    def fp(**kw):
        kw.setdefault("workdir", tmp_path)
        cfg = make_cfg(vlm_id, kw.pop("data_root", data_root), **kw)
        return manifest_for(cfg, ds)["fingerprint"]

    ref = fp()
    for change in (
        dict(views=4),
        dict(view_preset="vl2lite"),
        dict(image_size=48),
        dict(base_size=80),
        dict(seed=1),
        dict(prompts="ensemble"),
        dict(exif_orientation=False),
    ):
        assert fp(**change) != ref, change
    other_vlm = make_tiny_vlm(tmp_path_factory.mktemp("vlm2") / "tiny", seed=1)
    assert fp(vlm=other_vlm) != ref
    copied_vlm = shutil.copytree(vlm_id.removeprefix("local-dir:"), tmp_path / "vlm-copy")
    assert fp(vlm=f"local-dir:{copied_vlm}") == ref  # the weights' bytes count, not their folder
    for same in (
        dict(workdir=str(tmp_path / "elsewhere")),
        dict(batch_size=3),
        dict(workers=2),
        dict(shard_size=5),
        dict(device="cpu"),
        dict(image_cache=False),
    ):
        assert fp(**same) == ref, same
    moved = tmp_path / "moved"
    shutil.copytree(data_root, moved)
    ds = {s: load_dataset("cub", moved, s) for s in ("train", "test")}
    assert fp(data_root=str(moved)) == ref  # paths are not numbers


def test_other_settings_in_same_place_are_refused(encoded):
    cfg, result = encoded
    # exactly the one difference: the preset's tuples are not "different" from their JSON lists
    with pytest.raises(CacheError, match=r"other settings or inputs \(views\.K: 3 -> 5\); pass --overwrite"):
        encode(dataclasses.replace(cfg, views=5))
    # the same numbers in another layout: shards of other rows, or no image cache
    with pytest.raises(CacheError, match=r"\(shard_size/image_cache: \(8, True\) -> \(5, True\)\); pass --overwrite"):
        encode(dataclasses.replace(cfg, shard_size=5))


def test_a_manifest_without_a_field_this_version_reads_is_refused_not_resumed(encoded, tmp_path):
    from dait_cache.cache.manifest import read_manifest, write_manifest

    cfg, result = encoded
    copy = shutil.copytree(result.cache_dir, tmp_path / "cub" / "cache")
    manifest = read_manifest(copy)  # as another version of dait-cache would have written it
    del manifest["image_cache"]
    write_manifest(copy, manifest)
    with pytest.raises(
        CacheError,
        match=r"^\S+ holds a cache built with other settings or inputs \(its manifest has no field 'image_cache' \(written by another version\?\)\); pass --overwrite",
    ):
        encode(dataclasses.replace(cfg, workdir=str(tmp_path)))
    assert read_manifest(copy) == manifest  # nothing was written over it


def test_overwrite_replaces_a_cache_no_live_process_reads(vlm_id, data_root, tmp_path):
    import socket

    from dait_cache.io import sha256_file
    from dait_cache.locks import READERS, reading

    cfg = make_cfg(vlm_id, data_root, tmp_path)
    cache_dir = encode(cfg).cache_dir
    before = {p: sha256_file(p) for p in sorted(cache_dir.rglob("*")) if p.is_file()}
    # --overwrite deleted the cache under a training that was reading it (its next shard was gone)
    with reading(cache_dir, "run students/x"):
        with pytest.raises(DaitError) as err:
            encode(dataclasses.replace(cfg, views=1, overwrite=True))
    assert str(err.value).startswith(
        f"{cache_dir} is being read by run students/x (process {os.getpid()} on {socket.gethostname()}); "
        "wait for it to finish or stop it, then rerun with --overwrite"
    )
    assert {p: sha256_file(p) for p in sorted(cache_dir.rglob("*")) if p.is_file()} == before
    dead = subprocess.Popen(["true"])
    dead.wait()  # a reader that died without unregistering (SIGKILL) does not block
    stale = cache_dir.parent / READERS / f"{socket.gethostname()}-{dead.pid}-0.json"
    stale.write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname(), "what": "run y"}))
    result = encode(dataclasses.replace(cfg, views=1, overwrite=True))
    assert open_cache(result.cache_dir).img_emb("train").shape[1] == 2 and not stale.exists()


def test_bad_image_fail_names_file_and_skip_records_it(vlm_id, tmp_path):
    root = tmp_path / "data"
    fake_trees.make_cub(root, n_classes=2, per_class=(4, 1))
    ds = load_dataset("cub", root, "train")
    bad = ds.samples[5][0]
    Path(bad).write_bytes(b"not a jpeg at all")
    cfg = make_cfg(vlm_id, root, tmp_path / "ws", shard_size=4)
    with pytest.raises(DaitError, match=f"cannot decode image {bad}"):
        encode(cfg)
    assert not (cfg.cache_dir / "train/shard-00001.h5").exists()
    result = encode(dataclasses.replace(cfg, on_bad_image="skip"))
    c = open_cache(result.cache_dir)
    assert result.skipped == 1
    assert c.manifest["splits"]["train"]["skipped"][0]["sample_index"] == 5
    assert c.sample_index("train").tolist() == [0, 1, 2, 3, 4, 6, 7]
    assert c.labels("train").tolist() == [ds.labels[i] for i in (0, 1, 2, 3, 4, 6, 7)]
    assert verify_cache(result.cache_dir) == []
    # the command line says so under its summary, in a cache of its own
    from click.testing import CliRunner

    from cli.main import cli

    args = f"encode --dataset cub --data-root {root} --vlm {cfg.vlm} --views 3 --image-size 64 --base-size 72"
    r = CliRunner().invoke(cli, ["--workdir", str(tmp_path / "cli"), *args.split(), "--on-bad-image", "skip"])
    assert r.exit_code == 0 and "1 unreadable images skipped (listed in manifest.json)" in r.output, r.output
    r = CliRunner().invoke(cli, ["--workdir", str(tmp_path / "good"), *args.split()], catch_exceptions=False)
    assert r.exit_code == 1 and f"cannot decode image {bad}" in r.output  # the default is to stop and name it


def test_an_image_that_vanishes_during_encode_is_a_bad_image_not_a_crash(vlm_id, tmp_path):
    from dait_cache.encode_loader import ViewDataset

    root = tmp_path / "data"
    fake_trees.make_cub(root, n_classes=2, per_class=(2, 1))
    ds = load_dataset("cub", root, "train")
    views = ViewDataset(ds, make_cfg(vlm_id, root, tmp_path / "ws", on_bad_image="skip"), num_views=2)
    Path(ds.samples[1][0]).unlink()  # listed, then gone before its worker decodes it (a network share)
    gone, kept = views[1], views[0]
    assert gone["error"].startswith(f"cannot decode image {ds.samples[1][0]}") and gone["src"] == ""
    assert kept["error"] == "" and kept["src"] == hashlib.sha256(Path(ds.samples[0][0]).read_bytes()).hexdigest()
    assert gone["views"].shape == kept["views"].shape == (2, 3, 64, 64)


def test_overwrite_keeps_the_cache_when_the_new_vlm_does_not_load(vlm_id, data_root, tmp_path):
    cfg = make_cfg(vlm_id, data_root, tmp_path / "ws")
    encode(cfg)
    before = {p: p.read_bytes() for p in sorted(cfg.cache_dir.rglob("*")) if p.is_file()}
    damaged = tmp_path / "damaged-vlm"
    shutil.copytree(vlm_id.split(":", 1)[1], damaged)
    (damaged / "open_clip_model.safetensors").write_bytes(b"not a state dict")
    # a typo in the folder, then damaged weights: the old cache was deleted before either failed
    # (a SafetensorError's traceback before)
    for wrong, why in ((tmp_path / "no-such-vlm", "not found"), (damaged, "does not load (SafetensorError")):
        with pytest.raises(ModelError, match=f"VLM folder {wrong} {re.escape(why)}"):
            encode(dataclasses.replace(cfg, vlm=f"local-dir:{wrong}", overwrite=True))
        assert {p: p.read_bytes() for p in sorted(cfg.cache_dir.rglob("*")) if p.is_file()} == before
    # nor for a VLM passed in (the Python API) that is not the one the settings name
    other = load_vlm(make_tiny_vlm(tmp_path / "other", seed=1), None, "cpu")
    with pytest.raises(DaitError, match=r"^the VLM passed in is local-dir:.*other \(sha256:.*\), but the settings ask"):
        encode(dataclasses.replace(cfg, views=1, overwrite=True), vlm=other)
    assert {p: p.read_bytes() for p in sorted(cfg.cache_dir.rglob("*")) if p.is_file()} == before


def test_offline_download_names_the_local_options(monkeypatch):
    import open_clip.factory as factory

    def offline(*a, **k):
        raise RuntimeError("Failed to download weights for tag 'x': [Errno -3] name resolution")

    monkeypatch.setattr(factory, "download_pretrained", offline)
    with pytest.raises(ModelError, match="--pretrained /path/to/weights.*local-dir:"):
        load_vlm("RN50", "openai", "cpu")


def test_unknown_vlm_and_missing_dir():
    with pytest.raises(ModelError, match="unknown open_clip model"):
        load_vlm("no_such_model", "x", "cpu")
    with pytest.raises(ModelError, match="not found"):
        load_vlm("local-dir:/no/such/dir", None, "cpu")


def test_an_unknown_vlm_is_refused_before_the_workspace_gains_a_folder(data_root, tmp_path):
    for vlm in ("no_such_model", "local-dir:/no/such/dir"):
        with pytest.raises(ModelError, match="unknown open_clip model|not found"):
            encode(make_cfg(vlm, data_root, tmp_path / "ws"))
        assert not (tmp_path / "ws").exists()


@pytest.mark.slow
def test_torchrun_two_processes_equal_single_process(vlm_id, data_root, tmp_path, encoded):
    # the dataset arrives by --download (rank 0 fetches, the other waits), from a file:// URL
    (archive,) = fake_trees.official_archives(
        "cub", tmp_path / "src", tmp_path / "served", n_classes=4, per_class=(5, 2)
    )
    served = f"Archive({archive.as_uri()!r}, md5={hashlib.md5(archive.read_bytes()).hexdigest()!r})"
    script = tmp_path / "run.py"
    cfg = make_cfg(vlm_id, tmp_path / "data", tmp_path / "ws", workers=0, download=True)
    script.write_text(
        "from dait_cache.config import EncodeConfig\nfrom dait_cache.encode import encode\n"
        "from dait_cache.dist import process_group\nimport torch.distributed as d\n"
        "import dataclasses\nfrom dait_cache import data\nfrom dait_cache.data.download import Archive\n"
        f"data.DOWNLOADS['cub'] = dataclasses.replace(data.DOWNLOADS['cub'], archives=({served},))\n"
        f"with process_group('cpu'):\n    encode(EncodeConfig(**{dataclasses.asdict(cfg)!r}))\n"
        # the caller's group must survive the library call
        "    assert d.is_initialized()\n    d.barrier()\n"
    )
    done = torchrun_two(script, threads=torch.get_num_threads())
    assert done.returncode == 0, done.stderr[-3000:]
    assert shard_bytes(cfg.cache_dir) == shard_bytes(encoded[1].cache_dir)
    m1 = json.loads((cfg.cache_dir / "manifest.json").read_text())
    m2 = json.loads((encoded[1].cache_dir / "manifest.json").read_text())
    for m in (m1, m2):
        m.pop("created")
        m["dataset"].pop("data_root")
        m.pop("digests")  # they cover the two fields above and the source files' mtimes
        for split in m["splits"].values():
            split.pop("source_stat")  # another copy of the images (downloaded): other mtimes, same bytes
    assert m1 == m2
    assert verify_cache(cfg.cache_dir) == []


def test_crop_banner_is_aircraft_only_and_changes_the_fingerprint(vlm_id, tmp_path):
    fake_trees.make_aircraft(tmp_path / "data")
    ds = {s: load_dataset("aircraft", tmp_path / "data", s) for s in ("train", "test")}
    cfg = make_cfg(vlm_id, tmp_path / "data", tmp_path, dataset="aircraft")
    plain = manifest_for(cfg, ds)["fingerprint"]
    assert manifest_for(dataclasses.replace(cfg, crop_banner=True), ds)["fingerprint"] != plain
    with pytest.raises(DaitError, match="only applies to --dataset aircraft"):
        encode(make_cfg(vlm_id, tmp_path / "data", tmp_path, crop_banner=True))


def test_view_size_the_vit_cannot_take_is_one_clear_error(vlm_id, data_root, tmp_path):
    cfg = make_cfg(vlm_id, data_root, tmp_path, image_size=48, base_size=72)
    with pytest.raises(DaitError, match="cannot encode 48px views.*--image-size 64"):
        encode(cfg)
    assert not (cfg.cache_dir / "train").exists()


def test_folder_dataset_encodes_into_its_own_workspace_folder(vlm_id, tmp_path, monkeypatch):
    path = fake_trees.make_folder(tmp_path, per_class=(3, 2))
    monkeypatch.chdir(tmp_path)
    result = encode(make_cfg(vlm_id, tmp_path, tmp_path / "ws", dataset="folder:mybirds", image_cache=False))
    assert result.cache_dir == tmp_path / "ws" / "folder-mybirds" / "cache"
    c = open_cache(result.cache_dir)
    assert c.manifest["dataset"]["name"] == f"folder:{path}"  # absolute: found from anywhere
    assert c.class_names == ["Blue Jay", "house sparrow"] and c.templates == ["a photo of a {}."]
    monkeypatch.chdir("/")
    assert c.view_pixels("test", 1, 0).shape == (3, 64, 64)
    moved = shutil.copytree(path, tmp_path / "elsewhere" / "mybirds")  # the folder's path is not a number
    cfg = make_cfg(vlm_id, tmp_path, tmp_path / "ws", dataset=f"folder:{moved}", image_cache=False)
    datasets = {s: load_dataset(cfg.dataset, cfg.data_root, s) for s in ("train", "test")}
    assert manifest_for(cfg, datasets)["fingerprint"] == c.fingerprint


def test_training_without_image_cache_decodes_in_workers(vlm_id, data_root, tmp_path):
    from dait_cache.train.teacher import train_teacher

    encode(make_cfg(vlm_id, data_root, tmp_path, image_cache=False))
    run_dir, summary = train_teacher(train_cfg(tmp_path, epochs=1, batch_size=4, workers=2, val_fraction=0.2))
    assert summary["status"] == "finished" and summary["epochs_done"] == 1
    assert (run_dir / "best.pt").is_file()


def test_python_and_the_command_line_resolve_the_same_encode_defaults(tmp_path):
    from click.testing import CliRunner

    from cli.main import cli
    from dait_cache import encode as encode_mod
    from dait_cache.config import EncodeConfig
    from dait_cache.dist import usable_cores
    from dait_cache.minivlm import BASE_SIZE, IMAGE_SIZE, bundled_vlm_id
    from dait_cache.presets import resolve_encode_config

    assert resolve_encode_config(EncodeConfig(dataset="aircraft")) == EncodeConfig(
        dataset="aircraft",
        vlm="convnext_xxlarge",
        pretrained="laion2b_s34b_b82k_augreg_soup",
        image_size=224,
        base_size=256,
        workers=min(4, usable_cores()),  # no more workers than cores (torch warns, and it is slower)
    )
    assert resolve_encode_config(EncodeConfig(workers=7)).workers == 7
    synthetic = resolve_encode_config(EncodeConfig(dataset="synthetic"))
    assert (synthetic.vlm, synthetic.pretrained, synthetic.image_size, synthetic.base_size) == (
        bundled_vlm_id(),
        None,
        IMAGE_SIZE,
        BASE_SIZE,
    )
    mine = resolve_encode_config(EncodeConfig(dataset="cub", vlm="local-dir:/x", image_size=96))
    assert (mine.vlm, mine.pretrained, mine.image_size, mine.base_size) == ("local-dir:/x", None, 96, 256)
    seen = []
    real = encode_mod.resolve_encode_config

    def spy(cfg):
        seen.append(real(cfg))
        raise KeyboardInterrupt  # stop before any work

    encode_mod.resolve_encode_config = spy
    try:
        CliRunner().invoke(cli, ["--workdir", str(tmp_path), "encode", "--dataset", "aircraft"])
    finally:
        encode_mod.resolve_encode_config = real
    assert seen and seen[0] == dataclasses.replace(
        resolve_encode_config(EncodeConfig(dataset="aircraft")), workdir=str(tmp_path), data_root="data"
    )


def test_weights_id_hashes_every_weights_file_of_a_local_dir(tmp_path):
    from dait_cache.io import sha256_file
    from dait_cache.vlm import weights_id

    folder = tmp_path / "vlm"
    folder.mkdir()
    (folder / "open_clip_config.json").write_text("{}")
    assert weights_id(f"local-dir:{folder}", None) == "random-init"
    (folder / "open_clip_model.safetensors").write_bytes(b"a")
    one = weights_id(f"local-dir:{folder}", None)
    assert one == f"sha256:{sha256_file(folder / 'open_clip_model.safetensors')}"  # as --pretrained FILE
    assert one == weights_id("ViT-B-32", str(folder / "open_clip_model.safetensors"))
    (folder / "pytorch_model.bin").write_bytes(b"b")
    two = weights_id(f"local-dir:{folder}", None)
    (folder / "pytorch_model.bin").write_bytes(b"c")  # a file open_clip may or may not pick
    assert len({one, two, weights_id(f"local-dir:{folder}", None)}) == 3


def _on_another_cpu(code: str) -> subprocess.CompletedProcess:
    """Run ``code`` where torch's kernels are ATen's scalar ones (as without AVX2, or on another
    architecture): they round resizing, rotation, saturation and blur otherwise than here."""
    env = dict(os.environ, ATEN_CPU_CAPABILITY="default")
    root = Path(__file__).parent.parent
    return subprocess.run([sys.executable, "-c", code], env=env, cwd=root, capture_output=True, text=True, timeout=300)


def _replay_test_views(cache_dir) -> str:
    """Code that opens the cache, renders a clean test view and says so (the replay any machine may do)."""
    return (
        "from dait_cache.cache import open_cache\nfrom dait_cache.cache.reader import PixelSource\n"
        f"cache = open_cache(r'{cache_dir}')\nPixelSource(cache, 'test').render(0, 0)\nprint('test views ok')\n"
    )


def test_a_machine_that_renders_otherwise_may_not_replay_or_resume(vlm_id, data_root, tmp_path, monkeypatch):
    import dait_cache.encode as enc

    cfg = make_cfg(vlm_id, data_root, tmp_path)
    real = stop_at_second_shard(monkeypatch, enc)
    with pytest.raises(KeyboardInterrupt):
        encode(cfg)
    resume = (
        "from dait_cache.config import EncodeConfig\nfrom dait_cache.encode import encode\n"
        f"encode(EncodeConfig(**{dataclasses.asdict(cfg)!r}))\n"
    )
    r = _on_another_cpu(resume)
    assert r.returncode != 0 and "it was begun on a machine that renders views otherwise" in r.stderr
    assert "pass --overwrite" in r.stderr.splitlines()[-1]
    monkeypatch.setattr(enc, "write_shard", real)
    cache_dir = encode(cfg).cache_dir  # here it resumes
    # finished: verify warns; the clean test views replay anywhere; training is refused in one line
    verify = f"from cli.main import cli\ncli(['--workdir', r'{tmp_path}', 'verify'], standalone_mode=False)\n"
    replay = _replay_test_views(cache_dir)
    r = _on_another_cpu(verify + replay + f"cli({train_args(tmp_path)!r})\n")
    assert "views: this machine renders views otherwise" in r.stdout and "test views ok" in r.stdout, r.stderr
    assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "renders views otherwise (render probe " in r.stderr and "--store-views" in r.stderr
    assert not list((tmp_path / "cub" / "teacher").iterdir())  # no run folder was begun
    # with the stored views (added where it was encoded), training there copies them
    encode(dataclasses.replace(cfg, store_views=True))
    r = _on_another_cpu(verify + replay + "PixelSource(cache, 'train').render(3, 2)\nprint('train views ok')\n")
    assert r.returncode == 0 and "train views ok" in r.stdout, r.stderr
    assert "renders views otherwise" not in r.stdout


def test_a_cache_of_one_augmented_view_is_not_replayed_by_a_machine_that_renders_otherwise(dogs_cache_workspace):
    cache_dir = dogs_cache_workspace / "dogs" / "cache"
    assert open_cache(cache_dir).view_params("train").shape[1] == 2  # the clean view and one augmented
    r = _on_another_cpu(_replay_test_views(cache_dir) + "PixelSource(cache, 'train')\n")
    assert "test views ok" in r.stdout and r.returncode == 1, r.stderr
    assert "CacheError" in r.stderr and "renders views otherwise (render probe " in r.stderr


def test_a_machine_that_decodes_otherwise_may_not_replay_a_cache_without_images(
    vlm_id, data_root, tmp_path, monkeypatch
):
    import dait_cache.encode as enc
    from dait_cache.cache.reader import PixelSource
    from dait_cache.cache.verify import cache_warnings, verify_sources
    from dait_cache.data import views

    cfg = make_cfg(vlm_id, data_root, tmp_path / "ws", image_cache=False)
    real = stop_at_second_shard(monkeypatch, enc)
    with pytest.raises(KeyboardInterrupt):
        encode(cfg)
    here = views.decode_probe()
    monkeypatch.setattr(views, "decode_probe", lambda: "0" * 16)  # a Pillow that decodes JPEGs otherwise
    monkeypatch.setattr(enc, "write_shard", real)
    with pytest.raises(DaitError, match="it was begun on a machine that decodes images otherwise"):
        encode(cfg)
    monkeypatch.setattr(views, "decode_probe", lambda: here)
    encode(cfg)  # resumes where it was begun
    manifest = json.loads((cfg.cache_dir / "manifest.json").read_text())
    assert manifest["views"]["decode_probe"] == here and manifest["views"]["decoder"].startswith("Pillow ")
    cache = open_cache(cfg.cache_dir)
    PixelSource(cache, "train").render(0, 1)
    assert cache_warnings(cfg.cache_dir) == []
    kept_cfg = make_cfg(vlm_id, data_root, tmp_path / "kept")  # with the image cache
    stop_at_second_shard(monkeypatch, enc)
    with pytest.raises(KeyboardInterrupt):
        encode(kept_cfg)
    monkeypatch.setattr(enc, "write_shard", real)
    monkeypatch.setattr(views, "decode_probe", lambda: "0" * 16)
    kept = encode(kept_cfg).cache_dir  # its rows keep the base images they were encoded from: it resumes
    cache = open_cache(cfg.cache_dir)
    refused = r"keeps no image cache and was encoded on a machine that decodes images otherwise \(decode probe "
    for replay in (lambda: PixelSource(cache, "train"), lambda: cache.view_pixels("test", 0, 0)):
        with pytest.raises(CacheError, match=refused):
            replay()
    assert [w for w in cache_warnings(cfg.cache_dir) if w.startswith("images: this machine decodes images otherwise")]
    assert verify_sources(cfg.cache_dir) == []  # hashing the source files decodes nothing: it still runs
    # with the image cache nothing is decoded again: a machine that decodes otherwise replays it
    PixelSource(open_cache(kept), "train").render(0, 1)
    assert cache_warnings(kept) == []


def train_args(workdir: Path) -> list[str]:
    return ["--workdir", str(workdir), "train-teacher", "--arch", "test_resnet", "--epochs", "1"] + (
        "--batch-size 8 --no-pretrained --workers 0 --device cpu".split()
    )


def test_torchrun_over_machines_that_render_otherwise_is_refused(vlm_id, data_root, tmp_path):
    # rank 1 runs ATen's scalar kernels: the two processes' render probes differ
    script = tmp_path / "run.py"
    cfg = make_cfg(vlm_id, data_root, tmp_path / "ws", workers=0)
    script.write_text(
        "import os\nif os.environ['RANK'] == '1':\n    os.environ['ATEN_CPU_CAPABILITY'] = 'default'\n"
        "from dait_cache.config import EncodeConfig\nfrom dait_cache.encode import encode\n"
        "from dait_cache.dist import process_group\n"
        f"with process_group('cpu'):\n    encode(EncodeConfig(**{dataclasses.asdict(cfg)!r}))\n"
    )
    r = torchrun_two(script)
    assert r.returncode != 0
    assert r.stderr.count("the 2 encode processes do not render views alike") == 2  # both ranks stop
    assert not cfg.cache_dir.exists()  # before any file


def test_torchrun_over_machines_that_decode_otherwise_needs_the_image_cache(vlm_id, data_root, tmp_path):
    # rank 1's Pillow decodes JPEGs otherwise (its decode probe differs; rendering is alike)
    script = tmp_path / "run.py"
    bare = make_cfg(vlm_id, data_root, tmp_path / "bare", workers=0, image_cache=False)
    kept = make_cfg(vlm_id, data_root, tmp_path / "kept", workers=0)
    script.write_text(
        "import os\nfrom dait_cache.data import views\n"
        "if os.environ['RANK'] == '1':\n    views.decode_probe = lambda: '0' * 16\n"
        "from dait_cache.config import EncodeConfig\nfrom dait_cache.encode import encode\n"
        "from dait_cache.dist import process_group\nfrom dait_cache.errors import DaitError\n"
        "with process_group('cpu'):\n"
        f"    try:\n        encode(EncodeConfig(**{dataclasses.asdict(bare)!r}))\n"
        # one write per line: the two ranks share the pipe, and a write under PIPE_BUF is not split
        "    except DaitError as exc:\n        os.write(1, f'refused: {exc}\\n'.encode())\n"
        f"    encode(EncodeConfig(**{dataclasses.asdict(kept)!r}))\n    os.write(1, b'kept: encoded\\n')\n"
    )
    r = torchrun_two(script)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.count("refused: the 2 encode processes do not decode images alike (their decode probes") == 2
    assert not bare.cache_dir.exists()  # before any file
    assert r.stdout.count("kept: encoded") == 2 and verify_cache(kept.cache_dir) == []


def test_ensemble_text_embeddings_are_laid_out_class_by_template(vlm_id, data_root, tmp_path):
    c = open_cache(encode(make_cfg(vlm_id, data_root, tmp_path, prompts="ensemble", views=0)).cache_dir)
    vlm = load_vlm(vlm_id, None, "cpu")
    assert c.text_emb.shape == (4, len(c.templates), 32) and len(c.templates) > 1
    for cls, template in ((0, 0), (1, 3), (3, len(c.templates) - 1)):
        with torch.no_grad():
            ref = vlm.model.encode_text(vlm.tokenizer([c.templates[template].format(c.class_names[cls])]))
        np.testing.assert_allclose(c.text_emb[cls, template], ref[0].numpy(), rtol=1e-5, atol=1e-5)


def test_settings_that_cannot_encode_are_refused_before_any_work(vlm_id, data_root, tmp_path):
    for bad, message in (
        (dict(image_size=80), r"^--image-size 80 exceeds --base-size 72$"),
        (dict(on_bad_image="warn"), r"^--on-bad-image must be fail or skip, not 'warn'$"),  # the API has no Choice
        (dict(crop_banner=True), r"^--crop-banner only applies to --dataset aircraft$"),
    ):
        with pytest.raises(DaitError, match=message):
            encode(make_cfg(vlm_id, data_root, tmp_path / "ws", **bad))
    assert not (tmp_path / "ws").exists()
    other = load_vlm(make_tiny_vlm(tmp_path / "other", seed=1), None, "cpu")
    with pytest.raises(
        DaitError, match=r"^the VLM passed in is local-dir:.*other \(sha256:.*\), but the settings ask for"
    ):
        encode(make_cfg(vlm_id, data_root, tmp_path / "ws"), vlm=other)
    assert not (tmp_path / "ws" / "cub" / "cache" / "train").exists()  # no shard was encoded


def test_a_shard_whose_every_image_is_unreadable_stops_the_encode(vlm_id, tmp_path):
    fake_trees.make_cub(tmp_path / "data", n_classes=2, per_class=(4, 1))
    train = load_dataset("cub", str(tmp_path / "data"), "train")
    for path, _ in train.samples[:8]:  # the first shard's 8 images
        Path(path).write_bytes(b"not a jpeg")
    cfg = make_cfg(vlm_id, tmp_path / "data", tmp_path / "ws", on_bad_image="skip")
    with pytest.raises(DaitError, match=r"^train shard 0: every image failed to decode; check the dataset$"):
        encode(cfg)


def test_encode_shows_an_image_as_its_exif_orientation_says_unless_told_not_to(vlm_id, tmp_path):
    from PIL import Image, ImageOps

    from dait_cache.data.views import make_base

    fake_trees.make_cub(tmp_path / "data", n_classes=2, per_class=(2, 1))
    path = Path(load_dataset("cub", str(tmp_path / "data"), "train").samples[0][0])
    yy, xx = np.mgrid[0:40, 0:60]
    exif = Image.Exif()
    exif[0x0112] = 6  # stored on its side: a viewer turns it 90 degrees clockwise
    pixels = np.stack([xx * 4, yy * 6, (xx + yy) * 2], -1).astype(np.uint8)
    Image.fromarray(pixels).save(path, quality=95, exif=exif)
    with Image.open(path) as stored:
        shown = make_base(ImageOps.exif_transpose(stored).convert("RGB"), 72)
        as_stored = make_base(stored.convert("RGB"), 72)
    assert not torch.equal(shown, as_stored)
    for flag, want in ((True, shown), (False, as_stored)):
        cfg = make_cfg(vlm_id, tmp_path / "data", tmp_path / f"ws-{flag}", views=0, exif_orientation=flag)
        base = open_cache(encode(cfg).cache_dir).images("train")[0]
        assert torch.equal(torch.from_numpy(np.ascontiguousarray(base)).permute(2, 0, 1), want), flag
    # a cache encoded without the turn (or before the option) is refused by a default encode, which
    # names the flag that keeps it as it is
    with pytest.raises(
        CacheError, match=r"dataset\.exif_orientation: None -> True\).*--no-exif-orientation to keep it"
    ):
        encode(dataclasses.replace(cfg, exif_orientation=True))
