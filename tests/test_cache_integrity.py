"""The cache protects itself: a damaged manifest, an orphan shard or a stray file is named, and
rerunning the cache's own encode command repairs it with identical bytes."""

import dataclasses
import json

import h5py
import pytest
from encode_helpers import make_cfg, shard_bytes

from dait_cache.cache import cache_warnings, open_cache, verify_cache
from dait_cache.cache.manifest import ManifestDamaged
from dait_cache.encode import encode


@pytest.fixture()
def cache(vlm_id, data_root, tmp_path):
    cfg = make_cfg(vlm_id, data_root, tmp_path)
    return cfg, encode(cfg).cache_dir


def _edit(cache_dir, path, value):
    """Change one manifest value in place, as a stray editor would (digests left as they were)."""
    m = json.loads((cache_dir / "manifest.json").read_text())
    d = m
    for k in path[:-1]:
        d = d[k]
    d[path[-1]] = value
    (cache_dir / "manifest.json").write_text(json.dumps(m, indent=2))


@pytest.mark.parametrize(
    "path,value,named",
    [
        (("views", "image_size"), 44, "'views'"),
        (("views", "K"), 2, "'views'"),
        (("vlm", "logit_scale"), 50.0, "'vlm'"),
        (("dataset", "num_classes"), 5, "'dataset'"),
        (("dataset", "data_root"), "/elsewhere", "'dataset'"),
        (("dtype",), "float32", "'dtype'"),
        (("fingerprint_fields", "views", "K"), 2, "'fingerprint_fields'"),
    ],
)
def test_an_edited_manifest_field_is_named_with_the_repair_command(cache, path, value, named):
    cfg, cache_dir = cache
    _edit(cache_dir, path, value)
    with pytest.raises(
        ManifestDamaged,
        match=rf"field {named} was changed.*repair: `dait-cache --workdir "
        rf"{cfg.workdir} encode --dataset cub ",
    ):
        open_cache(cache_dir)
    problems = verify_cache(cache_dir)
    assert len(problems) == 1 and named in problems[0] and "\n" not in problems[0]


def test_digests_rewritten_but_fields_disagreeing_are_caught(cache):
    from dait_cache.cache.manifest import section_digests

    _, cache_dir = cache
    m = json.loads((cache_dir / "manifest.json").read_text())
    m["views"]["image_size"] = 44  # a careful forger recomputes the digests; duplicates still disagree
    m["digests"] = section_digests(m)
    (cache_dir / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ManifestDamaged, match=r"'views.image_size' \(44\) disagrees with fingerprint_fields"):
        open_cache(cache_dir)
    m["fingerprint"] = "0" * 20
    m["digests"] = section_digests(m)
    (cache_dir / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ManifestDamaged, match="'fingerprint' does not match"):
        open_cache(cache_dir)


def test_rerunning_encode_repairs_a_damaged_manifest_without_re_encoding(cache):
    cfg, cache_dir = cache
    before = shard_bytes(cache_dir)
    manifest_before = json.loads((cache_dir / "manifest.json").read_text())
    raw = (cache_dir / "manifest.json").read_bytes()
    (cache_dir / "manifest.json").write_bytes(raw.replace(b'"dtype"', b'"dt\xffpe"', 1))  # not UTF-8
    with pytest.raises(ManifestDamaged, match="not valid JSON"):
        open_cache(cache_dir)
    result = encode(cfg)
    assert result.views_encoded == 0  # every shard checked out and was adopted
    assert shard_bytes(cache_dir) == before and verify_cache(cache_dir) == []
    after = json.loads((cache_dir / "manifest.json").read_text())
    assert after["splits"] == manifest_before["splits"]


@pytest.mark.parametrize("damage", ["content", "not hdf5", "other rows"])
def test_an_orphan_shard_is_adopted_only_if_its_content_checks_out(cache, damage):
    cfg, cache_dir = cache
    before = shard_bytes(cache_dir)
    (cache_dir / "manifest.json").unlink()
    path = cache_dir / "train/shard-00001.h5"
    if damage == "content":  # attributes intact, content damaged
        data = bytearray(path.read_bytes())
        with h5py.File(path) as f:
            offset = f["img_emb"].id.get_chunk_info(0).byte_offset
        data[offset + 3] ^= 0x10
        path.write_bytes(bytes(data))
    elif damage == "not hdf5":  # its attributes cannot even be read
        path.write_bytes(b"not an HDF5 file")
    else:  # a whole shard, of the rows before it
        path.write_bytes((cache_dir / "train/shard-00000.h5").read_bytes())
    result = encode(cfg)
    assert result.views_encoded == 8 * 4  # that shard (8 rows x 4 views) again, the others adopted
    assert shard_bytes(cache_dir) == before and verify_cache(cache_dir) == []


def test_stray_files_and_a_missing_config_are_warnings(cache):
    _, cache_dir = cache
    assert cache_warnings(cache_dir) == []
    (cache_dir / "train/shard-00099.h5").write_bytes(b"x")
    (cache_dir / "test/shard-00000.h5.tmp").write_bytes(b"x")
    (cache_dir / "config.json").unlink()
    assert cache_warnings(cache_dir) == [
        "config.json: missing (the settings the cache was encoded with); rerun the same encode command",
        "test/shard-00000.h5.tmp: unknown file; encode deletes it (an unfinished write)",
        "train/shard-00099.h5: unknown file; no manifest entry names it",
    ]
    assert verify_cache(cache_dir) == []  # warnings, not damage


def _source(cfg, row=1):
    from dait_cache.data import load_dataset

    return load_dataset(cfg.dataset, cfg.data_root, "train").samples[row][0]


def test_an_image_edited_after_encode_is_refused_and_named(vlm_id, data_root, tmp_path):
    import os
    import shutil

    from click.testing import CliRunner
    from PIL import Image

    from cli.main import cli
    from dait_cache.errors import CacheError

    data = tmp_path / "data"
    shutil.copytree(data_root, data)  # our own copy: the session's tree stays untouched
    cfg = make_cfg(vlm_id, data, tmp_path / "ws")
    encode(cfg)
    path = _source(cfg)
    os.utime(path, ns=(1, 1))  # touched only: same bytes
    assert encode(cfg).up_to_date
    Image.new("RGB", (40, 30), (200, 10, 10)).save(path, format="JPEG")  # same name, other pixels
    with pytest.raises(
        CacheError,
        match=rf"1 source image\(s\) changed since they were encoded \(first: "
        rf"{path}\).*--overwrite",
    ):
        encode(cfg)
    r = CliRunner().invoke(cli, ["--workdir", cfg.workdir, "verify", "--deep"])
    # on one line, however long the path: a log (not a terminal) keeps lines whole
    whole = f"{path}: changed since it was encoded (sha256 differs); re-encode with --overwrite"
    assert r.exit_code == 1 and any(whole in line for line in r.output.splitlines()), r.output
    result = encode(dataclasses.replace(cfg, overwrite=True))
    assert result.views_encoded > 0 and not encode(cfg).views_encoded
    assert CliRunner().invoke(cli, ["--workdir", cfg.workdir, "verify", "--deep"]).exit_code == 0
