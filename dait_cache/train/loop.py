"""One epoch of training and one evaluation pass, and the data they read: the run's splits of the
cache, resident on the device, and the replayed-view loader.

Splits: the validation split (``val_fraction`` per class, seeded) is carved from the cached train
rows first, then ``train_fraction`` is taken from what remains, so every fraction is selected on
the same validation images. The test split is only evaluated, never selected on.

Device discipline: per-batch loss terms and accuracy counts stay on the device; the host reads
them once per epoch (one synchronisation), and a non-finite loss, or non-finite weights or
batch-norm statistics, are reported then, before anything of that epoch is saved.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

import numpy as np
import torch

from ..cache.reader import Cache, PixelSource
from ..config import TrainConfig
from ..data.splits import official_fraction, train_val_split
from ..data.views import normalize_pixels
from ..dist import DistInfo, all_gather_objects, all_reduce_tensor
from ..errors import DaitError
from ..models import Backbone
from ..progress import Progress
from ..seeding import own_rng
from .data import epoch_plan, make_loader

TRAIN, TEST = 0, 1  # split codes of the loader's batch index


def split_rows(cache: Cache, cfg: TrainConfig) -> tuple[np.ndarray, np.ndarray]:
    """(train rows, val rows) of the cached train split: ``train_fraction`` of the official
    training set per class, drawn from the rows the validation split left (see split_counts)."""
    return _split(cache, cfg)[:2]


def split_counts(cache: Cache, cfg: TrainConfig) -> dict:
    """n_train / n_val / n_test, and how many training rows the fraction asked for (when the
    validation split leaves fewer, the run trains on fewer and says so: ``capped``)."""
    train, val, requested = _split(cache, cfg)
    return {
        "n_train": len(train),
        "n_val": len(val),
        "n_test": len(cache.labels("test")),
        "n_train_requested": requested,
        "capped": len(train) < requested,
    }


def _split(cache: Cache, cfg: TrainConfig) -> tuple[np.ndarray, np.ndarray, int]:
    labels = cache.labels("train")
    train, val = train_val_split(labels, cfg.val_fraction, cfg.seed)
    train, requested = official_fraction(labels, train, cfg.train_fraction, cfg.seed)
    return train, val, requested


@dataclass
class TrainData:
    """Everything an epoch reads. Labels and VLM embeddings live on the training device."""

    train_rows: np.ndarray
    val_rows: np.ndarray
    test_rows: np.ndarray
    labels: tuple[torch.Tensor, torch.Tensor]  # (train, test) labels on the device
    vlm_emb: torch.Tensor  # (N_train, V, D) float16 on the device
    loader: torch.utils.data.DataLoader

    @property
    def num_views(self) -> int:
        return int(self.vlm_emb.shape[1])


def prepare_data(cache: Cache, cfg: TrainConfig, device: torch.device) -> TrainData:
    """Cached arrays in memory (and on the device) before any worker starts; one loader."""
    train_rows, val_rows = split_rows(cache, cfg)
    labels = tuple(torch.from_numpy(cache.labels(s)).to(device) for s in ("train", "test"))
    vlm_emb = torch.from_numpy(cache.img_emb("train")).to(device)
    loader = make_loader([PixelSource(cache, "train"), PixelSource(cache, "test")], cfg.workers, device.type == "cuda")
    return TrainData(train_rows, val_rows, np.arange(len(labels[1])), labels, vlm_emb, loader)


def model_input(pixels: torch.Tensor, model: Backbone) -> torch.Tensor:
    """uint8 pixels on the device -> the model's normalised input (channels-last on a GPU)."""
    x = normalize_pixels(pixels, model.mean, model.std)
    return x.contiguous(memory_format=torch.channels_last) if x.device.type == "cuda" else x


def make_batch(
    pixels: torch.Tensor, index: torch.Tensor, data: TrainData, model: Backbone, device: torch.device
) -> dict:
    """A training batch on the device from the loader's (pixels, [split, row, view]) pair."""
    pixels = pixels.to(device, non_blocking=True)
    index = index.to(device, non_blocking=True)
    rows, views = index[:, 1], index[:, 2]
    return {
        "pixels": pixels,
        "x": model_input(pixels, model),
        "label": data.labels[TRAIN][rows],
        "vlm_img": data.vlm_emb[rows, views].float(),
    }


def autocast_for(device: torch.device) -> Callable[[], AbstractContextManager]:
    """A context factory: bf16 autocast on CUDA, nothing elsewhere."""
    return (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if device.type == "cuda" else nullcontext


def train_step(forward, opt: torch.optim.Optimizer, batch: dict, epoch: int, autocast) -> tuple:
    """One optimiser step; returns (loss, logits, terms) as device tensors (no host sync)."""
    with autocast():
        loss, logits, terms = forward(batch, epoch)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss, logits, terms


class _Tally:
    """An epoch's running sums of loss terms (weighted by images) and correct predictions, kept
    on the device; the host reads them once, at the end (or when a part of the epoch is saved)."""

    def __init__(self, device: torch.device, part: dict | None = None):
        self.sums: dict[str, torch.Tensor] = {}
        self.correct = torch.zeros((), dtype=torch.int64, device=device)
        self.seen, self.before = 0, 0.0  # images and seconds of the part trained before a resume
        if part:
            self.sums = {k: torch.tensor(v, dtype=torch.float32, device=device) for k, v in part["sums"].items()}
            self.correct += part["correct"]
            self.seen, self.before = part["seen"], part["seconds"]

    def add(self, loss: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor, terms: dict) -> None:
        n = len(labels)
        self.seen += n
        self.correct += (logits.argmax(1) == labels).sum()
        for name, value in {"loss": loss.detach(), **terms}.items():
            self.sums[name] = self.sums.get(name, 0.0) + value.float() * n

    def reduced(self, epoch: int, trained: torch.nn.Module, dist: DistInfo) -> tuple[dict, int, int]:
        """(summed terms, correct, seen) over every rank's images; refuses a non-finite loss, and
        a ``trained`` module whose weights or buffers became non-finite, on every rank at once
        when any rank's are (batch-norm statistics are each rank's own)."""
        names = list(self.sums)
        counts = torch.stack([self.correct.float(), torch.tensor(float(self.seen), device=self.correct.device)])
        sums = torch.stack([self.sums[k] for k in names]) if names else counts.new_zeros(0)
        bad = torch.zeros(2, dist.world, device=counts.device)  # [loss, state] x rank
        bad[0, dist.rank] = (~torch.isfinite(sums)).any().float()
        bad[1, dist.rank] = nonfinite_state(trained).float()
        values = torch.cat([sums, counts, bad.flatten()])
        values = all_reduce_tensor(values, dist).tolist()
        correct, seen = int(values[len(names)]), int(values[len(names) + 1])
        bad_ranks = np.asarray(values[len(names) + 2 :]).reshape(2, dist.world)
        for what, flags in zip(("loss", "the weights or batch-norm statistics"), bad_ranks):
            if flags.any():
                ranks = ", ".join(str(r) for r in np.flatnonzero(flags))
                where = f" on rank{'s' if flags.sum() > 1 else ''} {ranks}" if dist.multi else ""
                row = {k: v / max(seen, 1) for k, v in zip(names, values)}
                raise NonFiniteLoss(epoch, row, what, where)
        return dict(zip(names, values)), correct, seen

    def state(self, epoch: int, trained: torch.nn.Module, dist: DistInfo, seconds: float) -> dict:
        """What a part of the epoch saves: the group's sums so far (rank 0 carries them on)."""
        sums, correct, seen = self.reduced(epoch, trained, dist)
        return {"sums": sums, "correct": correct, "seen": seen, "seconds": self.before + seconds}

    def row(self, epoch: int, trained: torch.nn.Module, dist: DistInfo) -> dict:
        """Averaged terms and train top-1 over every rank's images (checked as :meth:`reduced`)."""
        sums, correct, seen = self.reduced(epoch, trained, dist)
        row = {k: v / max(seen, 1) for k, v in sums.items()}
        return {**row, "train_top1": 100.0 * correct / max(seen, 1), "seen": seen}


def nonfinite_state(module: torch.nn.Module) -> torch.Tensor:
    """Whether any floating-point parameter or buffer of ``module`` is NaN or infinite (a 0-dim
    bool tensor on its device: no host sync).

    A diverging step can leave the loss finite and batch-norm's running variance infinite (the
    batch's own statistics normalise the training forward): evaluation, and a checkpoint, would
    then carry it."""
    tensors = [t for t in (*module.parameters(), *module.buffers()) if t.is_floating_point()]
    if not tensors:
        return torch.zeros((), dtype=torch.bool)
    return torch.stack([~torch.isfinite(t).all() for t in tensors]).any()


class NonFiniteLoss(DaitError):
    """The loss of an epoch, or the weights it trained, became NaN or infinite (found before
    anything of it is saved)."""

    def __init__(self, epoch: int, row: dict, what: str = "loss", where: str = ""):
        self.epoch, self.row = epoch, row
        super().__init__(f"{what} became non-finite during epoch {epoch + 1}{where} ({row})")  # counted as shown


def _rng_state(device: torch.device, dist: DistInfo) -> dict:
    """Every rank's RNG states (rank 0's also as ``rng`` / ``cuda_rng``, as one process saves them)."""
    mine = {"rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state(device) if device.type == "cuda" else None}  # fmt: skip
    ranks = all_gather_objects(mine, dist)
    return {**ranks[0], "rng_ranks": ranks} if dist.multi else mine


def _restore_rng(part: dict, device: torch.device, dist: DistInfo) -> None:
    """Each rank's own state where the part was saved by as many ranks; rank 0's otherwise."""
    ranks = part.get("rng_ranks") or []
    state = ranks[dist.rank] if len(ranks) == dist.world else part
    torch.set_rng_state(state["rng"])
    if device.type == "cuda" and state.get("cuda_rng") is not None:
        torch.cuda.set_rng_state(state["cuda_rng"], device)


@own_rng  # the epoch seeds its own stream (dropout etc.); the caller's stays as it was
def train_one_epoch(
    forward,
    opt,
    data: TrainData,
    model: Backbone,
    cfg: TrainConfig,
    epoch: int,
    device: torch.device,
    dist: DistInfo,
    progress: Progress | None = None,
    part: dict | None = None,
    save_part: Callable[[dict], None] | None = None,
    every_s: float = 0.0,
) -> dict:
    """Train one epoch; return its averaged loss terms, train top-1, images seen and seconds.

    ``part`` continues an epoch stopped part-way (what ``save_part`` received: how many images of
    the epoch's plan were trained, the running sums and the RNG state), exactly where it stopped;
    ``save_part`` is called every ``every_s`` seconds inside the epoch so that an interruption
    loses at most that much. Under torchrun every rank calls it at the same batch (rank 0's
    clock decides, asked every :data:`PART_CHECK_EVERY` batches) and rank 0's writes."""
    t0 = time.perf_counter()
    autocast = autocast_for(device)
    torch.manual_seed(_epoch_seed(cfg.seed, epoch))  # dropout etc. replay on resume
    # The ranks' shares interleave, so what a part trained is a prefix of the epoch's plan, in one
    # process or several: the ranks now share the rest (each image once, in any world size), and
    # rank 0 carries the part's sums.
    skip = _images_done(part, cfg.batch_size)
    start = skip // (cfg.batch_size * dist.world)  # batches of each rank before this one (for progress)
    rows, views = epoch_plan(data.train_rows, data.num_views, cfg.seed, epoch, dist.rank, dist.world, skip)
    data.loader.batch_sampler.set_plan(TRAIN, rows, views, cfg.batch_size, drop_last=True)
    total = start + len(data.loader)
    total = total if cfg.max_batches is None else min(total, cfg.max_batches)
    tally = _Tally(device, part if dist.is_main else None)
    if part:
        _restore_rng(part, device, dist)
    last_part = time.monotonic()
    for b, (pixels, index) in enumerate(data.loader, start):
        if b == total:
            break
        batch = make_batch(pixels, index, data, model, device)
        loss, logits, terms = train_step(forward, opt, batch, epoch, autocast)
        tally.add(loss, logits, batch["label"], terms)
        if progress:
            progress(f"epoch {epoch + 1}/{cfg.epochs}", b + 1, total)
        if save_part and every_s > 0 and b + 1 < total and _part_due(b, last_part, every_s, dist):
            # a diverged run stops here (tally.state checks): a checkpoint of NaN weights would resume nothing
            done = tally.state(epoch, forward, dist, time.perf_counter() - t0)
            images = skip + (b + 1 - start) * cfg.batch_size * dist.world
            save_part({"epoch": epoch, "batch": b + 1, "images": images, **done, **_rng_state(device, dist)})
            last_part = time.monotonic()
    row = tally.row(epoch, forward, dist)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return {**row, "train_seconds": tally.before + time.perf_counter() - t0}


PART_CHECK_EVERY = 50  # batches between the ranks' one-number agreements on saving a part


def _part_due(b: int, last_part: float, every_s: float, dist: DistInfo) -> bool:
    """Whether a part of the epoch is saved after batch ``b``: ``every_s`` seconds have passed
    since the last one, by rank 0's clock. The ranks agree every PART_CHECK_EVERY batches (a
    small collective; per batch it would be a host sync per step)."""
    due = time.monotonic() - last_part >= every_s
    if not dist.multi:
        return due
    if (b + 1) % PART_CHECK_EVERY:
        return False
    return bool(all_reduce_tensor(torch.tensor([float(due and dist.is_main)]), dist).item())


def _images_done(part: dict | None, batch_size: int) -> int:
    """Images of the epoch's plan a saved part trained (parts saved before torchrun could save
    them hold only the one process's batch count)."""
    if not part:
        return 0
    return int(part.get("images", part["batch"] * batch_size))


@torch.no_grad()
def evaluate(
    model: Backbone,
    data: TrainData,
    split: int,
    rows: np.ndarray,
    cfg: TrainConfig,
    device: torch.device,
    dist: DistInfo | None = None,
) -> float:
    """Top-1 (%) of the clean view (view 0) of ``rows`` of ``split`` (TRAIN for val, or TEST).

    Under torchrun each rank evaluates its share of the rows and the counts are summed: every
    rank must call it (evaluation would otherwise cost every rank the whole split)."""
    if len(rows) == 0:
        return float("nan")
    dist = dist or DistInfo()
    model.eval()
    autocast = autocast_for(device)
    mine = rows[dist.rank :: dist.world]
    data.loader.batch_sampler.set_plan(split, mine, np.zeros(len(mine), dtype=np.int64), cfg.batch_size * 2)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    for pixels, index in data.loader:
        index = index.to(device, non_blocking=True)
        with autocast():
            z = model(model_input(pixels.to(device, non_blocking=True), model))
        correct += (z.argmax(1) == data.labels[split][index[:, 1]]).sum()
    return 100.0 * int(all_reduce_tensor(correct, dist)) / len(rows)


def _epoch_seed(seed: int, epoch: int) -> int:
    return int(np.random.SeedSequence([seed, 11, epoch]).generate_state(1)[0])
