"""Per-dataset defaults that depend on the dataset (the embedded default uses a mini-VLM)."""

from __future__ import annotations

from .config import DEFAULT_PRETRAINED, DEFAULT_VLM


def encode_defaults(dataset: str) -> dict:
    """VLM and image sizes for ``encode`` when the user gives none."""
    return {"vlm": DEFAULT_VLM, "pretrained": DEFAULT_PRETRAINED, "image_size": 224, "base_size": 256}
