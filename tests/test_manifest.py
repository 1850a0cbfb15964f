"""The manifest on its own: its self-check (digests, fingerprint, the fields that repeat fingerprint
fields), what it tells a user (field differences, the repair command) and when a cache is complete.
The manifest under test is a real one, written by encode for the session's small cache."""

from __future__ import annotations

import copy
import hashlib
import json
import shlex

import pytest

from dait_cache.cache import manifest as mf
from dait_cache.errors import CacheError


@pytest.fixture()
def real(tiny_cache_workspace) -> dict:
    return json.loads((tiny_cache_workspace / "cub" / "cache" / mf.MANIFEST).read_text())


def _set(d: dict, path: str, value) -> None:
    *head, last = path.split(".")
    for k in head:
        d = d[k]
    d[last] = value


def _resealed(m: dict) -> dict:
    """``m`` with its digests recomputed, as a careful forger (or a buggy tool) would write it."""
    m = {k: v for k, v in m.items() if k != mf.DIGESTS}
    return {**m, mf.DIGESTS: mf.section_digests(m)}


def test_the_samples_hash_is_sha256_of_tab_separated_path_and_label_lines():
    rows = [("a/1.jpg", 0), ("b/2.jpg", 11)]
    assert mf.samples_hash(rows) == hashlib.sha256(b"a/1.jpg\t0\nb/2.jpg\t11\n").hexdigest()
    assert mf.samples_hash([("a/1.jpg", 0), ("b/2.jpg", 1)]) != mf.samples_hash(rows)  # a relabelled image


def test_field_differences_name_nested_keys_and_see_tuples_as_the_lists_json_saved():
    old = {"views": {"preset": {"scale": [0.5, 1.0], "flip": 0.5}, "K": 16}, "dtype": "float16"}
    new = {"views": {"preset": {"scale": (0.5, 1.0), "flip": 0.0}, "K": 16, "seed": 3}, "dtype": "float16"}
    assert mf.field_differences(old, new) == ["views.preset.flip: 0.5 -> 0.0", "views.seed: None -> 3"]
    long = {"weights_id": "sha256:" + "ab" * 32}
    assert mf.field_differences(long, {}) == [f"weights_id: {'sha256:abab' + 'a...'!r} -> None"]


def test_a_real_manifest_is_intact_and_a_rewrite_keeps_its_bytes(real, tmp_path):
    assert mf.manifest_damage(real) is None
    mf.write_manifest(tmp_path, copy.deepcopy(real))
    first = (tmp_path / mf.MANIFEST).read_bytes()
    assert mf.read_manifest(tmp_path) == real
    mf.write_manifest(tmp_path, mf.read_manifest(tmp_path))
    assert (tmp_path / mf.MANIFEST).read_bytes() == first


@pytest.mark.parametrize(
    "change,said",
    [
        (lambda m: m.pop("shard_size"), "field 'shard_size' is missing since encode wrote it"),
        (lambda m: m.update(extra=1), "field 'extra' is new since encode wrote it"),
        (lambda m: m["dataset"].update(num_classes=5), "field 'dataset' was changed since encode wrote it"),
        (lambda m: m["splits"]["train"].update(size=7), "field 'splits' was changed since encode wrote it"),
        (lambda m: m.pop(mf.DIGESTS), "section 'digests' is missing"),
    ],
)
def test_a_section_removed_added_or_changed_is_named(real, change, said):
    change(real)
    assert mf.manifest_damage(real).startswith(said)


# every manifest field that repeats a fingerprint field, and the value a damaged copy holds
REPEATED = [
    ("views.base_size", 80),
    ("views.image_size", 44),
    ("views.K", 2),
    ("views.seed", 7),
    ("views.preset_settings", {"name": "other"}),
    ("vlm.weights_id", "sha256:other"),
    ("prompts.templates", ["a photo of {}"]),
    ("dtype", "float32"),
    ("format_version", 2),
]


@pytest.mark.parametrize("path,value", REPEATED)
def test_a_resealed_field_that_disagrees_with_its_fingerprint_field_is_named(real, path, value):
    _set(real, path, value)
    damage = mf.manifest_damage(_resealed(real))
    assert damage is not None and damage.startswith(f"field '{path}' ({value!r}) disagrees with fingerprint_fields."), (
        damage
    )


def test_fingerprint_fields_edited_and_resealed_no_longer_give_the_fingerprint(real):
    real["fingerprint_fields"]["views"]["K"] = 2
    assert (
        mf.manifest_damage(_resealed(real))
        == "field 'fingerprint' does not match the fingerprint of 'fingerprint_fields'"
    )


def _write_raw(tmp_path, m) -> None:
    (tmp_path / mf.MANIFEST).write_text(json.dumps(m))


def test_read_manifest_refusals_say_what_and_how_to_repair(real, tmp_path):
    with pytest.raises(CacheError, match=r"no cache at .*missing manifest.json.*dait-cache encode"):
        mf.read_manifest(tmp_path)
    _write_raw(tmp_path, [real])
    with pytest.raises(mf.ManifestDamaged, match=r"is not a manifest \(a JSON list\); repair: rebuild it"):
        mf.read_manifest(tmp_path, repair="rebuild it")
    older = {k: v for k, v in real.items() if k != mf.DIGESTS}  # another format, from before the digests
    older["format_version"] = 0
    _write_raw(tmp_path, older)
    with pytest.raises(CacheError, match=r"has format version 0, this tool reads 1; re-encode with --overwrite"):
        mf.read_manifest(tmp_path)
    newer = _resealed(
        {**real, "format_version": 2, "fingerprint_fields": {**real["fingerprint_fields"], "format_version": 2}}
    )
    newer = _resealed({**newer, "fingerprint": mf.fingerprint(newer["fingerprint_fields"])})
    _write_raw(tmp_path, newer)
    with pytest.raises(CacheError, match=r"has format version 2, this tool reads 1"):
        mf.read_manifest(tmp_path)
    real["views"]["K"] = 2
    _write_raw(tmp_path, real)
    with pytest.raises(
        mf.ManifestDamaged, match=r"field 'views' was changed .*repair: rebuild it \(rebuilds the manifest"
    ):
        mf.read_manifest(tmp_path, repair="rebuild it")


def _config(**kw) -> dict:
    base = dict(
        workdir="/w s", dataset="cub", data_root="/data", vlm="local-dir:/v", pretrained=None, views=16,
        view_preset="fgvc", image_size=224, base_size=256, seed=0, shard_size=512, prompts="dataset",
        on_bad_image="fail", image_cache=True, crop_banner=False, exif_orientation=True, store_views=False,
    )  # fmt: skip
    return {**base, **kw}


def test_the_repair_command_holds_every_setting_the_cache_was_encoded_with(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(_config()))
    expected = (
        "dait-cache --workdir '/w s' encode --dataset cub --data-root /data --vlm local-dir:/v --views 16 "
        "--view-preset fgvc --image-size 224 --base-size 256 --seed 0 --shard-size 512 --prompts dataset "
        "--on-bad-image fail"
    )
    assert mf.encode_command(tmp_path) == f"`{expected}`"
    flags = dict(image_cache=False, crop_banner=True, exif_orientation=False, store_views=True)
    (tmp_path / "config.json").write_text(json.dumps(_config(**flags)))
    cmd = shlex.split(mf.encode_command(tmp_path).strip("`"))
    assert cmd[-4:] == ["--no-image-cache", "--crop-banner", "--no-exif-orientation", "--store-views"]
    before_flags = {k: v for k, v in _config().items() if k not in flags}  # a config.json of an older tool
    (tmp_path / "config.json").write_text(json.dumps(before_flags))
    # an older tool kept the image cache, did not crop and did not turn images upright by EXIF
    assert mf.encode_command(tmp_path).endswith("--on-bad-image fail --no-exif-orientation`")
    (tmp_path / "config.json").write_text("{")
    assert mf.encode_command(tmp_path) == "rerun the `dait-cache encode` command that built this cache"


def test_a_cache_is_complete_only_with_its_text_and_every_planned_shard(real):
    assert mf.is_complete(real)
    for breaks in (
        lambda m: m["text"].update(state="pending"),
        lambda m: m["splits"]["train"]["shards"].pop(),
        lambda m: m["splits"]["test"]["shards"][0].update(state="pending"),
    ):
        m = copy.deepcopy(real)
        breaks(m)
        assert not mf.is_complete(m)


def test_a_recorded_shard_is_kept_in_row_order_and_clears_only_its_own_skipped_images(tiny_cache_workspace, real):
    from dait_cache.cache.build import record_shard

    info = real["splits"]["train"]
    want = copy.deepcopy(info["shards"])
    assert [s["rows"] for s in want] == [[0, 16], [16, 32]] and info["skipped"] == []
    # as if both shards had been encoded before, skipping one image each
    info["shards"], info["skipped"] = [], [{"sample_index": 3, "path": "a.jpg"}, {"sample_index": 20, "path": "b.jpg"}]
    cache_dir = tiny_cache_workspace / "cub" / "cache"
    record_shard(cache_dir, real, "train", 1, 16, 32)  # encoded again: it skipped nothing this time
    assert info["skipped"] == [{"sample_index": 3, "path": "a.jpg"}]  # shard 0's is not its to clear
    record_shard(cache_dir, real, "train", 0, 0, 16)
    assert info["shards"] == want and info["skipped"] == []  # rows 0-16 first: the reader concatenates in this order
