"""The CUDA path's hazards, checked on the CPU: host syncs, DDP parameter sets, process-group
ownership, the shard writer thread, the view store and the benchmark suite."""

import json
import math
import os
import shlex
import shutil
import socket
import subprocess
import sys
import traceback
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.distributed as tdist
from encode_helpers import make_cfg, own_workspace, shard_bytes, stop_at_second_shard, torchrun_two, train_cfg
from torch.overrides import TorchFunctionMode

import dait_cache.encode as encode_mod
from dait_cache.cache import open_cache, verify_cache
from dait_cache.cache.reader import PixelSource
from dait_cache.config import TrainConfig
from dait_cache.dist import DistInfo, all_reduce_sum, process_group
from dait_cache.encode import encode
from dait_cache.errors import CacheError, DaitError
from dait_cache.models import create_backbone
from dait_cache.train import checkpoint as ckpt
from dait_cache.train.engine import RunSpec, build_step
from dait_cache.train.loop import prepare_data, train_one_epoch
from dait_cache.train.student import BUILDERS
from dait_cache.train.teacher import alignment_objective, train_teacher

ROOT = Path(__file__).parent.parent
HOST_READS = {
    torch.Tensor.item,
    torch.Tensor.__float__,
    torch.Tensor.__int__,
    torch.Tensor.__bool__,
    torch.Tensor.tolist,
    torch.Tensor.numpy,
    torch.Tensor.cpu,
}


# Host reads that are no sync on a GPU: data loading works on CPU tensors, and the optimisers keep
# their step counters on the CPU (torch.optim reads them with .item() only there).
NOT_DEVICE = (
    f"{os.sep}torch{os.sep}optim{os.sep}",
    f"{os.sep}torch{os.sep}utils{os.sep}data{os.sep}",
    f"dait_cache{os.sep}train{os.sep}data.py",
)


class CountHostReads(TorchFunctionMode):
    """Counts the calls that make the host wait for a device value (a sync on a GPU)."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in HOST_READS:
            frames = [f.filename for f in traceback.extract_stack()]
            if not any(part in f for f in frames for part in NOT_DEVICE):
                self.count += 1
        return func(*args, **(kwargs or {}))


def host_reads_in_one_epoch(ws, method: str, batches: int) -> int:
    cache = open_cache(ws / "cub" / "cache")
    cfg = TrainConfig(
        workdir=str(ws),
        arch="test_resnet",
        batch_size=4,
        pretrained=False,
        workers=0,
        device="cpu",
        val_fraction=0.25,
        max_batches=batches,
        epochs=10,
    )
    torch.manual_seed(0)
    model = create_backbone("test_resnet", cache.num_classes, pretrained=False)
    objective = (
        alignment_objective(cfg, cache, model.num_features)
        if method == "dait"
        else BUILDERS[method](cfg, cache, model, None)
    )
    spec = RunSpec(cfg, ws / "unused", cache, model, objective)
    data = prepare_data(cache, cfg, torch.device("cpu"))
    _, forward, opt, _ = build_step(spec, torch.device("cpu"), DistInfo())
    forward.train()
    with CountHostReads() as counter:
        row = train_one_epoch(forward, opt, data, model, cfg, 0, torch.device("cpu"), DistInfo())
    assert row["seen"] == 4 * batches
    return counter.count


@pytest.mark.parametrize("method", ["dait", "rise", "borlan", "rkd"])
def test_host_reads_do_not_grow_with_batches(tiny_cache_workspace, method):
    # Loss terms and accuracy stay on the device; the host reads them once per epoch.
    two = host_reads_in_one_epoch(tiny_cache_workspace, method, 2)
    five = host_reads_in_one_epoch(tiny_cache_workspace, method, 5)
    assert two == five
    assert two <= 2


def test_every_parameter_registered_once_and_network_layout_round_trips():
    import timm

    for arch in ("resnet18", "mobilenetv2", "regnety_004"):
        m = create_backbone(arch, 5, pretrained=False)
        keys = [k for k, _ in m.named_parameters(remove_duplicate=False)]
        assert len(keys) == len(set(id(p) for p in m.parameters()))  # no module registered twice
        net = timm.create_model(m.net.default_cfg["architecture"], pretrained=False, num_classes=5)
        net.load_state_dict(m.network_state_dict())  # strict: the classifier under its own name


@pytest.mark.slow
def test_ddp_without_unused_parameter_search_for_every_method(tiny_cache_workspace, tmp_path):
    # find_unused_parameters=False: a parameter without a gradient fails the second step.
    ws = own_workspace(tiny_cache_workspace, tmp_path / "ws")
    out = tmp_path / "ddp.json"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node=2",
            "--standalone",
            "-m",
            "benchmarks.gpu_checks",
            "ddp",
            str(ws),
            str(out),
            "cpu",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = json.loads(out.read_text())
    assert runs.pop("world") == 2 and runs.pop("group") is True
    assert set(runs) == {"teacher-ce", "teacher-dait", *BUILDERS}
    assert set(runs.values()) == {"finished"}


def test_process_group_is_left_to_its_owner(tmp_path, monkeypatch):
    tdist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        for var, value in (("LOCAL_RANK", "0"), ("RANK", "0"), ("WORLD_SIZE", "1")):
            monkeypatch.setenv(var, value)
        with process_group("cpu") as info:
            assert info.enabled and info.world == 1
            assert all_reduce_sum(3, info) == 3
        assert tdist.is_initialized()  # not created here, so not destroyed here
    finally:
        tdist.destroy_process_group()


def test_process_group_outside_torchrun_is_a_no_op(monkeypatch):
    for var in ("LOCAL_RANK", "RANK", "WORLD_SIZE"):
        monkeypatch.delenv(var, raising=False)
    with process_group("cpu") as info:
        assert not info.enabled and not tdist.is_initialized()
        assert all_reduce_sum(5, info) == 5


def test_a_group_made_for_a_torchrun_launch_is_joined_read_and_left(tmp_path, monkeypatch):
    from dait_cache.dist import all_gather_objects, all_reduce_tensor, backend_for, launched_by_torchrun

    assert (backend_for("cuda"), backend_for("cpu")) == ("nccl", "gloo")
    for var in ("LOCAL_RANK", "RANK", "WORLD_SIZE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert not launched_by_torchrun()  # all three variables, or it is not torchrun's launch
    monkeypatch.setenv("LOCAL_RANK", "1")  # the second GPU of its machine, say
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    with socket.socket() as free:  # a port no other test process holds
        free.bind(("127.0.0.1", 0))
        monkeypatch.setenv("MASTER_PORT", str(free.getsockname()[1]))
    assert launched_by_torchrun()
    with process_group("cpu") as info:
        assert info == DistInfo(rank=0, world=1, local_rank=1, enabled=True)
        assert tdist.get_backend() == "gloo"
        t = torch.tensor([1.5, 2.0])
        assert torch.equal(all_reduce_tensor(t, info), t) and all_gather_objects({"a": 1}, info) == [{"a": 1}]
    assert not tdist.is_initialized()  # created here, so destroyed here


def test_a_world_of_several_without_a_group_is_one_line(monkeypatch):
    from dait_cache.dist import current

    for var in ("LOCAL_RANK", "RANK"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(DaitError, match=r"^launched by torchrun with WORLD_SIZE > 1 but no process group exists; "):
        current()


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="CPU affinity is Linux's")
def test_usable_cores_are_the_affinity_masks_not_the_machines():
    code = "import os; os.sched_setaffinity(0, {0}); from dait_cache.dist import usable_cores, default_workers; "
    code += "print(usable_cores(), default_workers())"
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["1", "1"]  # pinned to one core of the machine's (2 in CI): one worker


class InlineWriter:
    """The old behaviour: each shard written on the main thread, between VLM batches."""

    def submit(self, job):
        job()

    def drain(self):
        pass

    def close(self):
        pass


def test_writer_thread_gives_the_same_bytes_as_writing_inline(vlm_id, data_root, tmp_path, monkeypatch):
    threaded = make_cfg(vlm_id, data_root, tmp_path / "threaded", workers=2)
    encode(threaded)
    monkeypatch.setattr(encode_mod, "ShardWriter", InlineWriter)
    inline = make_cfg(vlm_id, data_root, tmp_path / "inline", workers=2)
    encode(inline)
    a, b = shard_bytes(threaded.cache_dir), shard_bytes(inline.cache_dir)
    assert len(a) > 1 and a == b
    assert (threaded.cache_dir / "text.h5").read_bytes() == (inline.cache_dir / "text.h5").read_bytes()


def test_writer_error_reaches_the_caller(vlm_id, data_root, tmp_path, monkeypatch):
    def broken(*a, **k):
        raise OSError("No space left on device")

    monkeypatch.setattr(encode_mod, "write_shard", broken)
    with pytest.raises(OSError, match="No space left"):
        encode(make_cfg(vlm_id, data_root, tmp_path / "ws"))


class OrderedVLM:
    """Records when each batch's forward is queued and when its embeddings are collected."""

    def __init__(self):
        self.events = []

    def encode_images_async(self, pixels):
        k = sum(e[0] == "queue" for e in self.events)
        self.events.append(("queue", k))

        def collect():
            self.events.append(("collect", k))
            return pixels.flatten(1).float()

        return collect


def test_encode_queues_the_next_batch_before_it_waits_for_the_last():
    from dait_cache.encode_loader import embedded_batches

    batches = [{"index": [2 * b, 2 * b + 1], "views": torch.full((2, 3, 1, 1, 1), b)} for b in range(3)]
    vlm = OrderedVLM()
    out = []
    for batch, emb in embedded_batches(batches, vlm, num_views=3):
        out.append((batch["index"], emb.tolist()))
        vlm.events.append(("yield", batch["index"][0] // 2))
    # each batch's rows come out whole and in order, (b, V, D) ...
    assert out == [([2 * b, 2 * b + 1], [[[b]] * 3] * 2) for b in range(3)]
    # ... and the device already has batch k + 1 when the host waits for batch k
    assert vlm.events == [
        ("queue", 0),
        ("queue", 1),
        ("collect", 0),
        ("yield", 0),
        ("queue", 2),
        ("collect", 1),
        ("yield", 1),
        ("collect", 2),
        ("yield", 2),
    ]


@pytest.fixture(scope="module")
def stored(vlm_id, data_root, tmp_path_factory):
    """A cache encoded with --store-views (the VLM folder stays: the store is built at the end)."""
    cfg = make_cfg(vlm_id, data_root, tmp_path_factory.mktemp("stored"), store_views=True, workers=2)
    encode(cfg)
    return cfg


def test_view_store_holds_exactly_the_rendered_views(stored):
    cache = open_cache(stored.cache_dir)
    for split in ("train", "test"):
        store, render = PixelSource(cache, split), PixelSource(cache, split, use_store=False)
        assert store.store is not None and render.store is None
        n, v = store.store.shape[:2]
        assert (n, v) == cache.img_emb(split).shape[:2]
        for row in range(n):
            for view in range(v):
                assert torch.equal(store.render(row, view), render.render(row, view))
    assert verify_cache(stored.cache_dir) == []


def test_verify_catches_a_damaged_or_missing_view_store(stored, tmp_path):
    copy = tmp_path / "cache"
    shutil.copytree(stored.cache_dir, copy)
    path = copy / "views" / "train.u8"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    assert any("views/train.u8: sha256 differs" in p for p in verify_cache(copy))
    path.unlink()
    assert any("views/train.u8: missing" in p for p in verify_cache(copy))


def test_training_refuses_a_missing_cut_or_grown_view_store_with_its_rebuild_command(stored, tmp_path):
    """Before, a cut store failed inside numpy's memory map (a raw ValueError) and a grown one
    was replayed; now each is one line with the command that renders it again."""
    copy = tmp_path / "cache"
    shutil.copytree(stored.cache_dir, copy)
    cache, path = open_cache(copy), copy / "views" / "train.u8"
    good = path.read_bytes()
    command = shlex.join(["dait-cache", "--workdir", str(stored.workdir), "encode"])
    for data, found in [
        (good[:-1], f"{len(good) - 1} bytes, expected {len(good)}"),
        (good + b"\0", f"{len(good) + 1} bytes, expected {len(good)}"),
        (None, "missing"),
    ]:
        path.unlink(missing_ok=True)
        if data is not None:
            path.write_bytes(data)
        with pytest.raises(CacheError) as caught:
            PixelSource(cache, "train")
        said = str(caught.value)
        assert said.startswith(
            f"view store {path} is {found}; rebuild it: `{command} --dataset cub --data-root {stored.data_root} "
        )
        assert said.endswith(" --store-views`") and "\n" not in said
    assert PixelSource(cache, "test").store is not None and PixelSource(cache, "train", use_store=False).store is None
    path.write_bytes(good)
    assert PixelSource(cache, "train").store.shape[0] == 20


def test_verify_names_the_flag_that_rebuilds_a_damaged_store_though_the_last_encode_lacked_it(stored, tmp_path):
    from click.testing import CliRunner

    from cli.main import cli

    ws = tmp_path / "ws"
    shutil.copytree(stored.cache_dir, ws / "cub" / "cache")
    config = ws / "cub" / "cache" / "config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "workdir": str(ws), "store_views": False}))
    (ws / "cub" / "cache" / "views" / "test.u8").unlink()
    r = CliRunner().invoke(cli, ["--workdir", str(ws), "verify"])
    lines = r.output.splitlines()
    assert r.exit_code == 1 and lines[0] == "x views/test.u8: missing (rerun encode with --store-views)", r.output
    assert lines[-1].startswith(f"repair: `dait-cache --workdir {ws} encode --dataset cub ")
    assert lines[-1].endswith(" --store-views` re-encodes what is damaged and keeps what checks out")


def test_the_rebuild_command_adds_store_views_once(tmp_path):
    from dait_cache.cache.view_store import rebuild_command

    assert (
        rebuild_command(tmp_path) == "rerun the `dait-cache encode` command that built this cache, with --store-views"
    )
    for flag in [False, True]:
        (tmp_path / "config.json").write_text(
            json.dumps({"workdir": "w", "dataset": "cub", "exif_orientation": True, "store_views": flag})
        )
        assert rebuild_command(tmp_path) == "`dait-cache --workdir w encode --dataset cub --store-views`"


def test_a_deleted_cut_or_damaged_view_store_is_repaired_by_the_command_verify_names(vlm_id, data_root, tmp_path):
    from dait_cache.cache.verify import cache_warnings

    cfg = make_cfg(vlm_id, data_root, tmp_path / "ws", store_views=True)
    encode(cfg)
    views = cfg.cache_dir / "views"
    good = {p.name: p.read_bytes() for p in views.iterdir()}
    (views / "train.u8").unlink()
    (views / "test.u8").write_bytes(good["test.u8"][:-1])
    problems = verify_cache(cfg.cache_dir)
    assert problems == [
        "views/train.u8: missing (rerun encode with --store-views)",
        f"views/test.u8: {len(good['test.u8']) - 1} bytes, expected {len(good['test.u8'])} "
        "(rerun encode with --store-views)",
    ]
    result = encode(cfg)
    assert not result.up_to_date and result.views_encoded == 0
    assert {p.name: p.read_bytes() for p in views.iterdir()} == good and verify_cache(cfg.cache_dir) == []
    damaged = bytearray(good["train.u8"])
    damaged[7] ^= 1
    (views / "train.u8").write_bytes(bytes(damaged))
    said = "views/train.u8: sha256 differs from the manifest (file changed or corrupt; delete it and rerun encode with --store-views)"
    assert verify_cache(cfg.cache_dir) == [said]
    (views / "train.u8").unlink()
    encode(cfg)
    assert (views / "train.u8").read_bytes() == good["train.u8"] and cache_warnings(cfg.cache_dir) == []
    assert encode(replace(cfg, store_views=False)).up_to_date  # without the flag it is kept, not dropped
    assert set(open_cache(cfg.cache_dir).manifest["view_store"]) == {"train", "test"}


def test_the_store_built_afterwards_reports_rows_and_updates_the_callers_cache(vlm_id, data_root, tmp_path):
    from dait_cache.cache.view_store import build_view_store

    cfg = make_cfg(vlm_id, data_root, tmp_path / "ws")
    encode(cfg)
    cache, seen = open_cache(cfg.cache_dir), {}
    written = build_view_store(
        cache, workers=0, progress=lambda task, done, total: seen.setdefault(task, []).append((done, total))
    )
    assert seen == {"view store train": [(16, 20), (20, 20)], "view store test": [(8, 8)]}  # batches of 16 rows
    assert set(cache.manifest["view_store"]) == {"train", "test"}  # the caller's cache replays from it now
    assert written == sum(p.stat().st_size for p in (cfg.cache_dir / "views").iterdir()) == (20 * 4 + 8) * 3 * 64 * 64
    inodes = {p.name: p.stat().st_ino for p in (cfg.cache_dir / "views").iterdir()}
    (cfg.cache_dir / "views" / "test.u8").unlink()
    seen.clear()
    assert build_view_store(cache, workers=0, progress=lambda task, *_: seen.setdefault(task, [])) == written
    assert list(seen) == ["view store test"]  # only the missing split is rendered: train's file is kept
    assert (cfg.cache_dir / "views" / "train.u8").stat().st_ino == inodes["train.u8"]


def test_a_store_kept_while_encoding_with_a_gap_is_not_committed(vlm_id, data_root, tmp_path):
    from dait_cache.cache.view_store import StoreStager

    cfg = make_cfg(vlm_id, data_root, tmp_path / "ws")
    encode(cfg)
    cache = open_cache(cfg.cache_dir)
    render = PixelSource(cache, "test")
    for gap in (3, None):
        stager = StoreStager(cfg.cache_dir, "test", 8, 1, 64)
        for row in range(8):
            if row != gap:
                stager.put(row, render.render(row, 0)[None])
        stager.finish(cache)
        kept = (cfg.cache_dir / "views" / "test.u8").exists()
        assert kept == (gap is None) and not list(cfg.cache_dir.rglob("*.tmp"))
    assert list(open_cache(cfg.cache_dir).manifest["view_store"]) == ["test"] and verify_cache(cfg.cache_dir) == []


def test_torchrun_encode_with_store_views_ends_when_a_rank_looks_after_the_store_is_built(vlm_id, data_root, tmp_path):
    """Rank 1 opens the finished cache late: before, it found the store rank 0 had built meanwhile,
    skipped the barrier rank 0 waited at and left the group, and rank 0 failed there (gloo; exit 1).
    (Rank 1 waits up to 5 s for the store to appear; once the ranks decide together, it cannot,
    and rank 1 goes on.)"""
    import dataclasses

    cfg = make_cfg(vlm_id, data_root, tmp_path / "ws", store_views=True)
    script = tmp_path / "run.py"
    script.write_text(
        "import os, time\nimport dait_cache.encode as enc\n"
        "from dait_cache.config import EncodeConfig\nfrom dait_cache.dist import process_group\n"
        "real = enc.open_cache\n"
        "def late(path):\n"
        "    end = time.time() + 5\n"
        f"    while time.time() < end and not os.path.exists(r'{cfg.cache_dir / 'views' / 'test.u8'}'):\n"
        "        time.sleep(0.05)\n"
        "    return real(path)\n"
        "if os.environ['RANK'] == '1':\n    enc.open_cache = late\n"
        f"with process_group('cpu'):\n    enc.encode(EncodeConfig(**{dataclasses.asdict(cfg)!r}))\n"
        "    os.write(1, b'encoded\\n')\n"
    )
    r = torchrun_two(script, timeout=120)
    assert r.returncode == 0 and r.stdout.count("encoded") == 2, r.stderr[-2000:]
    assert set(open_cache(cfg.cache_dir).manifest["view_store"]) == {"train", "test"}
    assert verify_cache(cfg.cache_dir) == []


def _another_machine(monkeypatch) -> None:
    """This process renders and decodes as another machine would (its probes differ)."""
    from dait_cache.cache import build
    from dait_cache.data import views

    for module in (views, build):
        monkeypatch.setattr(module, "render_probe", lambda: "f" * 16)
        monkeypatch.setattr(module, "decode_probe", lambda: "e" * 16)
    monkeypatch.setattr(build, "decoder_version", lambda: "Pillow 0.0 (another machine)")


def test_a_rerun_on_another_machine_keeps_the_encoding_machine_and_its_store(vlm_id, tmp_path, monkeypatch):
    import fake_trees

    from dait_cache.data import load_dataset

    root = tmp_path / "data"
    fake_trees.make_cub(root, n_classes=2, per_class=(4, 1))
    cfg = make_cfg(vlm_id, root, tmp_path / "ws", store_views=True, shard_size=4)
    encode(cfg)
    before, shards = open_cache(cfg.cache_dir).manifest, shard_bytes(cfg.cache_dir)
    os.utime(load_dataset("cub", root, "train").samples[0][0], ns=(1, 1))  # a copy of the data: other mtimes
    _another_machine(monkeypatch)
    assert encode(replace(cfg, store_views=False)).up_to_date
    after = open_cache(cfg.cache_dir).manifest
    assert after["splits"]["train"]["source_stat"] != before["splits"]["train"]["source_stat"]  # it was rewritten
    assert after["views"] == before["views"] and after["view_store"] == before["view_store"]
    assert PixelSource(open_cache(cfg.cache_dir), "train").store is not None  # replays here from the store
    with pytest.raises(DaitError, match="encoded on a machine that renders views otherwise"):
        PixelSource(open_cache(cfg.cache_dir), "train", use_store=False)
    (cfg.cache_dir / "train" / "shard-00001.h5").unlink()
    with pytest.raises(DaitError, match=r"has shards to encode again, and it was encoded on a machine that renders"):
        encode(cfg)
    monkeypatch.undo()
    assert encode(cfg).views_encoded == 4 * 4  # repaired where it renders alike: one shard of 4 rows
    assert shard_bytes(cfg.cache_dir) == shards and verify_cache(cfg.cache_dir) == []


def test_store_views_on_a_finished_cache_builds_only_the_store(vlm_id, data_root, tmp_path):
    cfg = make_cfg(vlm_id, data_root, tmp_path / "ws")
    encode(cfg)
    before = shard_bytes(cfg.cache_dir)
    from dataclasses import replace

    result = encode(replace(cfg, store_views=True))
    assert result.views_encoded == 0 and not result.up_to_date
    assert shard_bytes(cfg.cache_dir) == before
    assert set(open_cache(cfg.cache_dir).manifest["view_store"]) == {"train", "test"}
    assert encode(replace(cfg, store_views=True)).up_to_date


def test_a_store_kept_while_encoding_equals_one_rendered_afterwards(vlm_id, tmp_path, monkeypatch):
    import fake_trees

    from dait_cache.data import load_dataset

    root = tmp_path / "data"
    fake_trees.make_cub(root, n_classes=2, per_class=(4, 1))
    Path(load_dataset("cub", root, "train").samples[2][0]).write_bytes(b"not a jpeg")  # a gap to close
    rendered = make_cfg(vlm_id, root, tmp_path / "rendered", shard_size=4, on_bad_image="skip")
    encode(rendered)
    encode(replace(rendered, store_views=True))  # rendered again from the finished cache
    kept = make_cfg(vlm_id, root, tmp_path / "kept", shard_size=4, on_bad_image="skip", store_views=True)

    def no_second_pass(*a, **kw):
        raise AssertionError("the store was rendered again")

    monkeypatch.setattr(encode_mod, "build_view_store", no_second_pass)
    encode(kept)
    stores = [open_cache(c.cache_dir).manifest["view_store"] for c in (rendered, kept)]
    assert stores[0] == stores[1] and stores[0]["train"]["shape"][0] == 7
    for split in ("train", "test"):
        a, b = (c.cache_dir / "views" / f"{split}.u8" for c in (rendered, kept))
        assert a.read_bytes() == b.read_bytes()
    assert verify_cache(kept.cache_dir) == [] and not list(kept.cache_dir.rglob("*.tmp"))


def test_a_resumed_encode_renders_the_store_of_what_it_did_not_see(vlm_id, data_root, tmp_path, monkeypatch):
    cfg = make_cfg(vlm_id, data_root, tmp_path / "ws", store_views=True)
    real = stop_at_second_shard(monkeypatch, encode_mod)
    with pytest.raises(KeyboardInterrupt):
        encode(cfg)
    assert not list(cfg.cache_dir.rglob("*.tmp")) and not (cfg.cache_dir / "views" / "train.u8").exists()
    monkeypatch.setattr(encode_mod, "write_shard", real)
    encode(cfg)
    stored = PixelSource(open_cache(cfg.cache_dir), "train")
    render = PixelSource(open_cache(cfg.cache_dir), "train", use_store=False)
    assert all(torch.equal(stored.render(r, 1), render.render(r, 1)) for r in range(len(stored.params)))
    assert verify_cache(cfg.cache_dir) == []


def test_a_store_that_cannot_fit_is_refused_before_it_is_written(vlm_id, data_root, tmp_path, monkeypatch):
    import collections

    cfg = make_cfg(vlm_id, data_root, tmp_path / "ws", store_views=True)
    real, asked = shutil.disk_usage, []
    usage = collections.namedtuple("usage", "total used free")

    def room_for_one_split(path):  # the train store fits, then the disk is full
        asked.append(path)
        return real(path) if len(asked) == 1 else usage(10**6, 10**6 - 1000, 1000)

    monkeypatch.setattr(shutil, "disk_usage", room_for_one_split)
    with pytest.raises(DaitError, match=r"not enough disk space to write test\.u8 under .*: 0\.0 MB free"):
        encode(cfg)
    assert len(asked) == 2 and not list(cfg.cache_dir.rglob("*.tmp"))


def test_training_from_the_store_gives_the_same_weights(tiny_cache_workspace, tmp_path):
    ws = {}
    for name in ("render", "store"):
        ws[name] = own_workspace(tiny_cache_workspace, tmp_path / name)
    from dait_cache.cache.view_store import build_view_store

    build_view_store(open_cache(ws["store"] / "cub" / "cache"), workers=0)
    state = {}
    for name, root in ws.items():
        run_dir, summary = train_teacher(train_cfg(root, epochs=1, workers=2, name="same"))
        state[name] = ckpt.load(run_dir / ckpt.CHECKPOINT)["step"]
    assert state["render"].keys() == state["store"].keys()
    assert all(torch.equal(state["render"][k], state["store"][k]) for k in state["render"])


@pytest.mark.slow
def test_benchmark_quick_writes_every_ratio(tmp_path):
    # the quick profile, smaller: what is checked is that every section writes its ratio (the
    # README's numbers come from the quick profile itself)
    out = tmp_path / "bench.json"
    smaller = ["--images", "32", "--students", "resnet18", "--online-vlm", "bundled"]
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.run", "--quick", "--store-views", *smaller, "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=dict(os.environ, HF_HUB_OFFLINE="1"),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(out.read_text())
    assert res["sections_failed"] == {}
    assert res["device"].startswith("CPU")
    for key in ("encode_over_forward", "teacher_dait_over_ce", "cached_over_online_speedup"):
        assert math.isfinite(res[key]) and res[key] > 0, key
    assert set(res["render_views_per_s_per_core"]) == {"fgvc", "vl2lite"}
    assert set(res["student_epoch_over_compute"]) == {"resnet18@16", "resnet18@16+store"}
    assert res["profile"]["online_vlm"] == "bundled" and res["profile"]["images"] == 32
    assert all(v > 0 for v in res["student_epoch_over_compute"].values())
    assert "encode / bare VLM forward" in proc.stdout
