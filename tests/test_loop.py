"""One epoch of the training loop with a fake objective: the loop's bookkeeping (which rows and
views it feeds, one optimiser step per batch, the averaged terms, train top-1) checked against an
independent computation from the epoch plan."""

from pathlib import Path

import numpy as np
import pytest
import torch

from dait_cache.cache.reader import open_cache
from dait_cache.config import TrainConfig
from dait_cache.data.splits import official_fraction, train_val_split
from dait_cache.dist import DistInfo
from dait_cache.models import create_backbone
from dait_cache.train.data import PlannedBatches, epoch_plan
from dait_cache.train.engine import RunSpec, build_step
from dait_cache.train.loop import TRAIN, prepare_data, split_counts, split_rows, train_one_epoch
from dait_cache.train.objectives import Objective

TARGET = 3.0


class Recording(Objective):
    """Loss (w - 3)^2 of its one parameter, logits that always say class 0, and the batch's mean
    label as a term; keeps what each batch held, and one draw of the global RNG (dropout's)."""

    def __init__(self, num_classes: int):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(()))
        self.num_classes = num_classes
        self.seen: list[dict] = []

    def forward(self, model, batch, epoch):
        self.seen.append({"label": batch["label"].clone(), "vlm_img": batch["vlm_img"].clone(), "draw": torch.rand(())})
        logits = torch.zeros(len(batch["label"]), self.num_classes)
        logits[:, 0] = 1.0
        label_mean = batch["label"].float().mean()
        return (self.w - TARGET) ** 2, logits, {"label_mean": label_mean}


def expected_losses(n_steps: int, lr: float, weight_decay: float) -> tuple[list[float], float]:
    """The losses of n AdamW steps on (w - 3)^2 from w = 0, and the final w."""
    w = torch.zeros((), requires_grad=True)
    opt = torch.optim.AdamW([w], lr=lr, weight_decay=weight_decay)
    losses = []
    for _ in range(n_steps):
        loss = (w - TARGET) ** 2
        losses.append(loss.item())
        opt.zero_grad()
        loss.backward()
        opt.step()
    return losses, w.item()


def one_epoch_setup(workspace, **cfg_kw) -> tuple:
    """(cache, config, resnet18, its TrainData on the CPU) of the tiny workspace, batches of 4."""
    cache = open_cache(workspace / "cub" / "cache")
    cfg = TrainConfig(workdir=str(workspace), arch="resnet18", batch_size=4, pretrained=False, workers=0,
                      device="cpu", val_fraction=0.25, seed=5, **cfg_kw)  # fmt: skip
    model = create_backbone("resnet18", cache.num_classes, pretrained=False)
    return cache, cfg, model, prepare_data(cache, cfg, torch.device("cpu"))


def recording_step(cache, cfg: TrainConfig, model) -> tuple:
    """(a fresh Recording objective, the step module that trains it, its optimiser)."""
    objective = Recording(cache.num_classes)
    spec = RunSpec(cfg, Path(cfg.workdir) / "unused", cache, model, objective)
    _, forward, opt, _ = build_step(spec, torch.device("cpu"), DistInfo())
    return objective, forward.train(), opt


def test_one_epoch_with_a_fake_objective(tiny_cache_workspace):
    cache, cfg, model, data = one_epoch_setup(tiny_cache_workspace, epochs=3, lr=0.05)
    device = torch.device("cpu")
    objective, forward, opt = recording_step(cache, cfg, model)

    torch.manual_seed(123)
    caller = torch.get_rng_state()
    row = train_one_epoch(forward, opt, data, model, cfg, 1, device, DistInfo())
    assert torch.equal(torch.get_rng_state(), caller)  # no hidden global state

    rows, views = epoch_plan(data.train_rows, data.num_views, cfg.seed, 1)
    n_batches = len(rows) // cfg.batch_size  # drop_last
    used = slice(0, n_batches * cfg.batch_size)
    labels = data.labels[TRAIN][torch.from_numpy(rows[used])]
    assert n_batches >= 3 and len(objective.seen) == n_batches
    # the plan's rows in its order, each with the cached embedding of its own view
    assert torch.equal(torch.cat([b["label"] for b in objective.seen]), labels)
    vlm = torch.cat([b["vlm_img"] for b in objective.seen])
    assert torch.equal(vlm, data.vlm_emb[torch.from_numpy(rows[used]), torch.from_numpy(views[used])].float())
    assert row["seen"] == n_batches * cfg.batch_size
    assert row["label_mean"] == pytest.approx(labels.float().mean().item(), abs=1e-6)
    assert row["train_top1"] == pytest.approx(100.0 * (labels == 0).float().mean().item())
    # one optimiser step per batch, the loss averaged over images
    losses, w = expected_losses(n_batches, cfg.lr, cfg.weight_decay)
    assert row["loss"] == pytest.approx(float(np.mean(losses)), rel=1e-5)
    assert objective.w.item() == pytest.approx(w, rel=1e-6)


def test_parts_of_an_epoch_count_what_they_trained_and_resume_where_they_stopped(tiny_cache_workspace):
    """A part saved after every batch but the last; an epoch resumed from one part feeds the plan's
    remaining rows, numbers its own parts by images of the whole epoch, and its row (and seconds)
    add the part's."""
    cache, cfg, model, data = one_epoch_setup(tiny_cache_workspace, epochs=2)
    device = torch.device("cpu")

    def run(part=None, epoch=0):
        objective, forward, opt = recording_step(cache, cfg, model)
        parts: list[dict] = []
        row = train_one_epoch(forward, opt, data, model, cfg, epoch, device, DistInfo(),
                              part=part, save_part=parts.append, every_s=1e-9)  # fmt: skip
        draws = torch.stack([b["draw"] for b in objective.seen])
        return row, parts, torch.cat([b["label"] for b in objective.seen]), draws

    straight, parts, labels, draws = run()
    n_batches = straight["seen"] // cfg.batch_size
    assert n_batches >= 3
    # no part after the last batch: the epoch's own row follows at once
    assert [p["images"] for p in parts] == [cfg.batch_size * (b + 1) for b in range(n_batches - 1)]
    assert [p["seen"] for p in parts] == [p["images"] for p in parts]

    k = next(i for i, p in enumerate(parts) if p["correct"] > 0)  # a part whose count a resume must carry
    part = {**parts[k], "seconds": 1000.0}
    resumed, later, rest, rest_draws = run(part)
    assert torch.equal(rest, labels[part["images"] :])  # the plan's rows after the part's
    assert torch.equal(rest_draws, draws[k + 1 :])  # dropout's stream goes on where it stopped
    assert [p["images"] for p in later] == [p["images"] for p in parts[k + 1 :]]
    assert resumed["seen"] == straight["seen"]
    assert resumed["train_top1"] == pytest.approx(straight["train_top1"])
    assert resumed["label_mean"] == pytest.approx(straight["label_mean"], abs=1e-6)
    assert resumed["train_seconds"] >= 1000.0
    # each epoch seeds its own stream: the same again, another next epoch
    assert torch.equal(run()[3], draws) and not torch.equal(run(epoch=1)[3][: len(draws)], draws)


@pytest.mark.parametrize(("val", "frac", "capped"), [(0.25, 0.5, False), (0.5, 1.0, True), (0.0, 1.0, False)])
def test_a_runs_rows_are_the_public_splits_of_its_seed(tiny_cache_workspace, val, frac, capped):
    """What a user reproducing the protocol elsewhere computes from data.splits with the run's seed
    is what the run trains and selects on; the fraction counts the official training set."""
    cache = open_cache(tiny_cache_workspace / "cub" / "cache")
    cfg = TrainConfig(workdir=str(tiny_cache_workspace), val_fraction=val, train_fraction=frac, seed=7)
    labels = cache.labels("train")
    rest, val_rows = train_val_split(labels, val, 7)
    train_rows, _ = official_fraction(labels, rest, frac, 7)
    got = split_rows(cache, cfg)
    assert np.array_equal(got[0], train_rows) and np.array_equal(got[1], val_rows)
    requested = sum(max(1, round(frac * n)) for n in np.bincount(labels))
    assert split_counts(cache, cfg) == {"n_train": len(train_rows), "n_val": len(val_rows),
                                        "n_test": len(cache.labels("test")),
                                        "n_train_requested": requested, "capped": capped}  # fmt: skip
    assert capped == (len(train_rows) < requested)


def test_the_epoch_plan_shares_one_permutation_and_its_views_among_ranks():
    """Every row once, through one of views 1..K (never the clean view 0); each rank's (row, view)
    pairs are the one-process plan's, interleaved and cut to equal shares; a skipped prefix is the
    plan's."""
    rows = np.arange(100, 301)  # 201 rows: two ranks share 200
    order, views = epoch_plan(rows, 5, 3, 2)
    assert sorted(order) == list(rows) and set(views) == {1, 2, 3, 4}
    assert not np.array_equal(epoch_plan(rows, 5, 3, 3)[0], order)  # each epoch its own order
    for rank in (0, 1):
        r, v = epoch_plan(rows, 5, 3, 2, rank, 2)
        assert np.array_equal(r, order[:200][rank::2]) and np.array_equal(v, views[:200][rank::2])
    r, v = epoch_plan(rows, 5, 3, 2, skip=50)
    assert np.array_equal(r, order[50:]) and np.array_equal(v, views[50:])
    assert set(epoch_plan(rows, 1, 3, 2)[1]) == {0}  # a cache of clean views only
    # the documented draw, computed here: every run's numbers depend on this exact stream
    rng = np.random.default_rng(np.random.SeedSequence([3, 7, 2]))
    assert np.array_equal(order, rng.permutation(rows)) and np.array_equal(views, rng.integers(1, 5, size=201))


def test_planned_batches_drop_only_a_partial_last_batch():
    batches = PlannedBatches()
    rows = np.arange(10)
    batches.set_plan(0, rows, np.ones(10, dtype=np.int64), 4, drop_last=True)
    assert [len(b) for b in batches] == [4, 4]
    batches.set_plan(1, rows[:3], np.zeros(3, dtype=np.int64), 4, drop_last=True)  # fewer than a batch: kept
    assert list(batches) == [[(1, 0, 0), (1, 1, 0), (1, 2, 0)]]
    batches.set_plan(1, rows, np.zeros(10, dtype=np.int64), 4)
    assert [len(b) for b in batches] == [4, 4, 2]


def test_replayed_items_are_the_cached_views_one_by_one_and_whole_from_a_store(tiny_cache_workspace, tmp_path):
    """Each (split, row, view) item gives the pixels the VLM saw for that view, rendered or copied
    from a view store; a batch from the store is fetched whole, a batch of two splits item by item."""
    import shutil

    from dait_cache.cache.reader import PixelSource
    from dait_cache.cache.view_store import build_view_store
    from dait_cache.train.data import Batch, ReplayedViews

    shutil.copytree(tiny_cache_workspace / "cub" / "cache", tmp_path / "cache")
    cache = open_cache(tmp_path / "cache")
    rendered = ReplayedViews([PixelSource(cache, "train"), PixelSource(cache, "test")])
    items = [(0, 2, 1), (0, 5, 3), (0, 5, 0), (1, 4, 0)]
    for split, row, view in items:
        pixels, index = rendered[(split, row, view)]
        assert torch.equal(pixels, cache.view_pixels(("train", "test")[split], row, view))
        assert index.tolist() == [split, row, view]
    build_view_store(cache, workers=0)
    stored = ReplayedViews([PixelSource(cache, "train"), PixelSource(cache, "test")])
    whole = stored.__getitems__(items[:3])
    assert isinstance(whole, Batch) and whole.index.tolist() == [list(i) for i in items[:3]]
    assert torch.equal(whole.pixels, torch.stack([rendered[i][0] for i in items[:3]]))
    mixed = stored.__getitems__(items[1:])  # train and test rows: one by one, each from its split
    assert [torch.equal(p, rendered[i][0]) for (p, _), i in zip(mixed, items[1:])] == [True, True, True]


def _batch(tally, loss: float, ce: float, logits: list[list[float]], labels: list[int]) -> None:
    tally.add(torch.tensor(loss), torch.tensor(logits), torch.tensor(labels), {"ce": torch.tensor(ce)})


def test_a_tally_restored_from_a_saved_part_carries_on_its_sums_counts_and_seconds():
    from dait_cache.train.loop import _Tally

    net, cpu = torch.nn.Linear(2, 2), torch.device("cpu")
    first = _Tally(cpu)
    _batch(first, 2.0, 1.0, [[1, 0], [0, 1], [1, 0]], [0, 0, 0])  # 2 of 3 right
    part = first.state(0, net, DistInfo(), seconds=5.0)
    assert part == {"sums": {"loss": 6.0, "ce": 3.0}, "correct": 2, "seen": 3, "seconds": 5.0}
    resumed = _Tally(cpu, part=part)
    _batch(resumed, 4.0, 0.5, [[0, 1]], [1])  # 1 of 1 right
    assert resumed.state(0, net, DistInfo(), seconds=2.0)["seconds"] == 7.0  # both parts' time
    assert resumed.row(0, net, DistInfo()) == {"loss": 10.0 / 4, "ce": 3.5 / 4, "train_top1": 75.0, "seen": 4}


def test_a_tally_refuses_a_non_finite_loss_or_non_finite_weights():
    from dait_cache.train.loop import NonFiniteLoss, _Tally

    net, cpu = torch.nn.Linear(2, 2), torch.device("cpu")
    tally = _Tally(cpu)
    _batch(tally, float("nan"), 1.0, [[1, 0]], [0])
    with pytest.raises(NonFiniteLoss, match=r"^loss became non-finite during epoch 3 \(") as caught:
        tally.row(2, net, DistInfo())
    assert caught.value.epoch == 2 and caught.value.row["ce"] == 1.0
    tally = _Tally(cpu)
    _batch(tally, 1.0, 1.0, [[1, 0]], [0])
    with torch.no_grad():
        net.bias[0] = float("inf")
    with pytest.raises(NonFiniteLoss, match=r"^the weights or batch-norm statistics became non-finite during epoch 1 "):
        tally.row(0, net, DistInfo())


def test_the_images_a_part_trained_count_its_batches_where_it_predates_the_count():
    from dait_cache.train.loop import _images_done

    assert _images_done(None, 16) == 0
    assert _images_done({"batch": 3}, 16) == 48  # a part saved before torchrun could save parts
    assert _images_done({"batch": 3, "images": 40}, 16) == 40


def test_evaluation_is_the_clean_views_top1_in_eval_mode(tiny_cache_workspace):
    """evaluate's top-1 equals one computed here image by image: view 0 of each row, the model's
    normalisation, batch-norm's running statistics (eval mode); every row counts, none is left
    out, and a split without rows (--val-fraction 0) has no number."""
    import copy

    from dait_cache.data.views import normalize_pixels
    from dait_cache.train.loop import TEST, evaluate

    torch.manual_seed(0)
    cache, cfg, model, data = one_epoch_setup(tiny_cache_workspace)
    device = torch.device("cpu")
    with torch.no_grad():  # running statistics far from a batch's own: train mode would differ
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)

    def by_hand(net, split: str, rows: np.ndarray) -> float:
        pixels = torch.stack([cache.view_pixels(split, int(r), 0) for r in rows])
        with torch.no_grad():
            guess = net(normalize_pixels(pixels, model.mean, model.std)).argmax(1)
        return 100.0 * (guess == torch.from_numpy(cache.labels(split)[rows])).sum().item() / len(rows)

    def each(net, split: int, rows: np.ndarray, evaluated: bool) -> list[float]:
        name = ("train", "test")[split]
        if evaluated:
            return [evaluate(net.train(), data, split, rows[i : i + 1], cfg, device) for i in range(len(rows))]
        return [by_hand(net, name, rows[i : i + 1]) for i in range(len(rows))]

    model.eval()
    want = each(model, TEST, data.test_rows, evaluated=False)
    assert set(want) == {0.0, 100.0}  # some right, some wrong: a count can be off
    # with each image's own statistics (train mode) the same weights guess otherwise
    assert each(copy.deepcopy(model).train(), TEST, data.test_rows, evaluated=False) != want
    assert each(model, TEST, data.test_rows, evaluated=True) == want
    for split, rows in ((TEST, data.test_rows), (TRAIN, data.val_rows), (TEST, data.test_rows[:5])):
        expected = by_hand(model.eval(), ("train", "test")[split], rows)
        assert evaluate(model.train(), data, split, rows, cfg, device) == expected
    assert np.isnan(evaluate(model, data, TEST, data.test_rows[:0], cfg, device))


def test_max_batches_cuts_an_epoch_and_a_resumed_part_counts_on_from_where_it_stopped(tiny_cache_workspace):
    """--max-batches trains that many batches; the progress of an epoch resumed from a part goes
    on from the part's batch to the epoch's last, as one uninterrupted epoch's does."""
    import dataclasses

    cache, cfg, model, data = one_epoch_setup(tiny_cache_workspace, epochs=2)
    device = torch.device("cpu")

    def run(cfg, part=None):
        _, forward, opt = recording_step(cache, cfg, model)
        shown, parts = [], []
        row = train_one_epoch(forward, opt, data, model, cfg, 0, device, DistInfo(),
                              progress=lambda *a: shown.append(a), part=part,
                              save_part=parts.append, every_s=1e-9)  # fmt: skip
        return row, shown, parts

    row, shown, parts = run(dataclasses.replace(cfg, max_batches=2))
    assert row["seen"] == 2 * cfg.batch_size and [s[1:] for s in shown] == [(1, 2), (2, 2)]
    row, shown, parts = run(cfg)
    n = row["seen"] // cfg.batch_size
    assert n >= 3 and [s[1:] for s in shown] == [(b, n) for b in range(1, n + 1)]
    assert {s[0] for s in shown} == {"epoch 1/2"}
    row, shown, _ = run(cfg, part=parts[0])  # one batch trained before the stop
    assert [s[1:] for s in shown] == [(b, n) for b in range(2, n + 1)] and row["seen"] == n * cfg.batch_size
    row, shown, _ = run(dataclasses.replace(cfg, max_batches=2), part=parts[0])
    assert [s[1:] for s in shown] == [(2, 2)] and row["seen"] == 2 * cfg.batch_size
