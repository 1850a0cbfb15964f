"""Per-dataset defaults that depend on the dataset (the embedded default uses a mini-VLM)."""

from __future__ import annotations

from dataclasses import replace

from .config import DEFAULT_PRETRAINED, DEFAULT_VLM, EncodeConfig
from .dist import default_workers


def encode_defaults(dataset: str) -> dict:
    """VLM and image sizes for ``encode`` when the user gives none.

    ``synthetic`` uses the bundled mini-VLM at its training resolution (32 px views of a 36 px
    base); every real dataset uses ConvNeXt-XXLarge at 224 / 256.
    """
    if dataset == "synthetic":
        from .minivlm import BASE_SIZE, IMAGE_SIZE, bundled_vlm_id

        return {"vlm": bundled_vlm_id(), "pretrained": None, "image_size": IMAGE_SIZE, "base_size": BASE_SIZE}
    return {"vlm": DEFAULT_VLM, "pretrained": DEFAULT_PRETRAINED, "image_size": 224, "base_size": 256}


def resolve_encode_config(cfg: EncodeConfig) -> EncodeConfig:
    """``cfg`` with every unset (None) VLM and size setting filled from :func:`encode_defaults`
    and unset workers from the machine's cores; a VLM given without ``pretrained`` keeps None
    (local-dir: and hf-hub: carry their weights)."""
    defaults = encode_defaults(cfg.dataset)
    changes = {k: defaults[k] for k in ("image_size", "base_size") if getattr(cfg, k) is None}
    if cfg.workers is None:  # more workers than cores only slows a small machine down
        changes["workers"] = default_workers()
    if cfg.vlm is None:
        changes.update(vlm=defaults["vlm"], pretrained=cfg.pretrained or defaults["pretrained"])
    return replace(cfg, **changes)
