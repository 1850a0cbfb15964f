"""Pretrain the mini-VLM contrastively on image-caption pairs from the whole synthetic world.

    python -m dait_cache.minivlm.pretrain [--out DIR] [--steps 1500] [--seed 0]

The pool covers every attribute combination of the grammar (576, 24 of which are the demo
task's classes), drawn from a random stream disjoint from the task's train/test images;
captions come from the grammar's templates. CPU only, seeded; writes open_clip_config.json,
open_clip_model.safetensors (fp16) and card.json with the zero-shot top-1 on the synthetic
test split.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from multiprocessing import Pool
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..data import world
from ..data.synthetic import WORLD_SEED
from ..data.views import make_base, normalize_pixels
from ..io import atomic_write_json
from ..seeding import own_rng
from . import BASE_SIZE, IMAGE_SIZE, MODEL_CFG, PREPROCESS_CFG, WEIGHTS_DIR

POOL_STREAM = 100  # the task uses streams 0 (train) and 1 (test)


def _render(args: tuple[int, int]) -> np.ndarray:
    combo, j = args
    rng = np.random.default_rng(np.random.SeedSequence([WORLD_SEED, POOL_STREAM, combo, j]))
    return make_base(world.render(world.all_combinations()[combo], rng), BASE_SIZE).numpy()


def render_pool(per_combo: int, processes: int = 2) -> torch.Tensor:
    """uint8 (576, per_combo, 3, S, S) base images of every combination."""
    n = len(world.all_combinations())
    jobs = [(c, j) for c in range(n) for j in range(per_combo)]
    with Pool(processes) as pool:
        images = pool.map(_render, jobs, chunksize=256)
    return torch.from_numpy(np.stack(images)).view(n, per_combo, 3, BASE_SIZE, BASE_SIZE)


def _augment(base: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random 64 crop of the 72 base and a horizontal flip: cheap, batched."""
    b = base.shape[0]
    off = torch.randint(0, BASE_SIZE - IMAGE_SIZE + 1, (2,), generator=gen).tolist()
    x = base[:, :, off[0] : off[0] + IMAGE_SIZE, off[1] : off[1] + IMAGE_SIZE]
    flip = torch.rand(b, generator=gen) < 0.5
    return torch.where(flip.view(b, 1, 1, 1), x.flip(-1), x)


def _normalize(x: torch.Tensor) -> torch.Tensor:
    return normalize_pixels(x, PREPROCESS_CFG["mean"], PREPROCESS_CFG["std"])


@torch.no_grad()
def zero_shot_top1(model, tokenizer) -> float:
    """Zero-shot top-1 (%) on the synthetic test split's clean views, with the dataset prompt."""
    from ..data import load_dataset
    from ..data.views import clean_view_params, render_view
    from ..vlm import DATASET_PROMPTS

    model.eval()
    ds = load_dataset("synthetic", split="test")
    p = clean_view_params(IMAGE_SIZE / BASE_SIZE)
    x = torch.stack([render_view(make_base(ds.load_image(i), BASE_SIZE), p, IMAGE_SIZE) for i in range(len(ds))])
    img = F.normalize(model.encode_image(_normalize(x)), dim=-1)
    txt = F.normalize(
        model.encode_text(tokenizer([DATASET_PROMPTS["synthetic"].format(c) for c in ds.class_names])), dim=-1
    )
    return float(((img @ txt.T).argmax(1).numpy() == np.array(ds.labels)).mean() * 100)


@own_rng
def pretrain(out: Path, steps: int, seed: int, per_combo: int, batch: int, lr: float, log=print) -> dict:
    """Train the bundled mini-VLM contrastively on the synthetic world; write it to ``out``; return its card."""
    import open_clip

    t0 = time.perf_counter()
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    pool = render_pool(per_combo)
    log(f"rendered {pool.shape[0] * pool.shape[1]} pool images in {time.perf_counter() - t0:.0f} s")
    combos = world.all_combinations()
    tokenizer = open_clip.get_tokenizer("RN50", context_length=MODEL_CFG["text_cfg"]["context_length"])
    n_tpl = len(world.CAPTION_TEMPLATES)
    tokens = tokenizer([world.caption(c, t) for c in combos for t in range(n_tpl)]).view(len(combos), n_tpl, -1)
    model = open_clip.CLIP(**MODEL_CFG)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.1)
    warmup = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps))
    )
    model.train()
    for step in range(steps):
        # distinct combinations per batch: every caption in the batch is a true negative for the rest
        c = torch.randperm(len(combos), generator=gen)[:batch]
        j = torch.randint(0, per_combo, (len(c),), generator=gen)
        t = torch.randint(0, n_tpl, (len(c),), generator=gen)
        img, txt, scale = model(_normalize(_augment(pool[c, j], gen)), tokens[c, t])
        logits = scale * img @ txt.T
        target = torch.arange(len(c))
        loss = (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        if step % 100 == 0 or step == steps - 1:
            log(
                f"step {step}/{steps} loss {loss.item():.3f} scale {scale.item():.1f} "
                f"({time.perf_counter() - t0:.0f} s)"
            )
    top1 = zero_shot_top1(model, tokenizer)
    card = _card(model, steps, batch, lr, seed, time.perf_counter() - t0, per_combo, len(combos), top1)
    _save(out, model, card)
    return card


def _card(
    model, steps: int, batch: int, lr: float, seed: int, seconds: float, per_combo: int, n_combos: int, top1: float
) -> dict:
    """card.json: how the weights were made."""
    return {
        "model": "mini-VLM (open_clip CLIP: ModifiedResNet image tower, 2-layer text transformer)",
        "model_cfg": MODEL_CFG,
        "preprocess_cfg": PREPROCESS_CFG,
        "parameters": int(sum(p.numel() for p in model.parameters())),
        "training": {
            "steps": steps,
            "batch": batch,
            "lr": lr,
            "optimizer": "AdamW wd 0.1, warmup + cosine",
            "loss": "symmetric InfoNCE, learnable logit scale (clamped at 100)",
            "augmentation": "random 64 crop of the 72 base, horizontal flip",
            "seed": seed,
            "device": "cpu",
            "seconds": round(seconds, 1),
        },
        "data": {
            "world_seed": WORLD_SEED,
            "pool_stream": POOL_STREAM,
            "combinations": n_combos,
            "images_per_combination": per_combo,
            "captions": list(world.CAPTION_TEMPLATES),
            "note": "pool images are drawn from a stream disjoint from the task's train/test images",
        },
        "zero_shot_top1_synthetic_test": round(top1, 2),
        "chance_top1": round(100 / len(world.task_classes()), 2),
    }


def _save(out: Path, model, card: dict) -> None:
    """The local-dir: folder open_clip loads: config, fp16 safetensors weights, card."""
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    (out / "open_clip_config.json").write_text(
        json.dumps({"model_cfg": MODEL_CFG, "preprocess_cfg": PREPROCESS_CFG}, indent=2) + "\n"
    )
    save_file(
        {k: v.detach().half().contiguous() for k, v in model.state_dict().items()},
        str(out / "open_clip_model.safetensors"),
    )
    atomic_write_json(out / "card.json", card)


def main() -> None:
    """``python -m dait_cache.minivlm.pretrain``: rebuild the bundled mini-VLM."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    ap.add_argument("--out", type=Path, default=WEIGHTS_DIR)
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--per-combo", type=int, default=32)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--lr", type=float, default=2e-3)
    args = ap.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    card = pretrain(args.out, args.steps, args.seed, args.per_combo, args.batch, args.lr)
    print(json.dumps({k: card[k] for k in ("zero_shot_top1_synthetic_test", "chance_top1", "parameters")}))


if __name__ == "__main__":
    main()
