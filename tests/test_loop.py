"""One epoch of the training loop with a fake objective: the loop's bookkeeping (which rows and
views it feeds, one optimiser step per batch, the averaged terms, train top-1) checked against an
independent computation from the epoch plan."""

import numpy as np
import pytest
import torch

from dait_cache.cache.reader import open_cache
from dait_cache.config import TrainConfig
from dait_cache.dist import DistInfo
from dait_cache.models import create_backbone
from dait_cache.train.data import epoch_plan
from dait_cache.train.engine import RunSpec, build_step
from dait_cache.train.loop import TRAIN, prepare_data, train_one_epoch
from dait_cache.train.objectives import Objective

TARGET = 3.0


class Recording(Objective):
    """Loss (w - 3)^2 of its one parameter, logits that always say class 0, and the batch's mean
    label as a term; keeps what each batch held."""

    def __init__(self, num_classes: int):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(()))
        self.num_classes = num_classes
        self.seen: list[dict] = []

    def forward(self, model, batch, epoch):
        self.seen.append({"label": batch["label"].clone(), "vlm_img": batch["vlm_img"].clone()})
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


def test_one_epoch_with_a_fake_objective(tiny_cache_workspace):
    cache = open_cache(tiny_cache_workspace / "cub" / "cache")
    cfg = TrainConfig(workdir=str(tiny_cache_workspace), arch="resnet18", batch_size=4, pretrained=False,
                      workers=0, device="cpu", val_fraction=0.25, epochs=3, seed=5, lr=0.05)  # fmt: skip
    model = create_backbone("resnet18", cache.num_classes, pretrained=False)
    objective = Recording(cache.num_classes)
    spec = RunSpec(cfg, tiny_cache_workspace / "unused", cache, model, objective)
    device = torch.device("cpu")
    data = prepare_data(cache, cfg, device)
    _, forward, opt, _ = build_step(spec, device, DistInfo())
    forward.train()

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
