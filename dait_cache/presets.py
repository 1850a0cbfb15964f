"""Per-dataset defaults that depend on the dataset (the embedded default uses a mini-VLM)."""

from __future__ import annotations

from .config import DEFAULT_PRETRAINED, DEFAULT_VLM


def encode_defaults(dataset: str) -> dict:
    """VLM and image sizes for ``encode`` when the user gives none.

    ``synthetic`` uses the bundled mini-VLM at its training resolution (64 px views of a 72 px
    base); every real dataset uses ConvNeXt-XXLarge at 224 / 256.
    """
    if dataset == "synthetic":
        from .minivlm import BASE_SIZE, IMAGE_SIZE, bundled_vlm_id

        return {"vlm": bundled_vlm_id(), "pretrained": None, "image_size": IMAGE_SIZE, "base_size": BASE_SIZE}
    return {"vlm": DEFAULT_VLM, "pretrained": DEFAULT_PRETRAINED, "image_size": 224, "base_size": 256}
