"""A tiny open_clip model saved as a ``local-dir:`` folder, so tests never touch the network."""

from __future__ import annotations

import json
from pathlib import Path

import torch

TINY_CFG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 64, "layers": 1, "width": 32, "head_width": 16, "patch_size": 16},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}
PREPROCESS = {"mean": [0.48145466, 0.4578275, 0.40821073], "std": [0.26862954, 0.26130258, 0.27577711], "size": 64}


def make_tiny_vlm(folder: Path, seed: int = 0, image_size: int = 64) -> str:
    """Write open_clip_config.json + open_clip_model.safetensors; return the ``local-dir:`` id."""
    import open_clip
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    cfg = {**TINY_CFG, "vision_cfg": {**TINY_CFG["vision_cfg"], "image_size": image_size}}
    torch.manual_seed(seed)
    model = open_clip.CLIP(**cfg)
    (folder / "open_clip_config.json").write_text(
        json.dumps({"model_cfg": cfg, "preprocess_cfg": {**PREPROCESS, "size": image_size}})
    )
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "open_clip_model.safetensors"))
    return f"local-dir:{folder}"
