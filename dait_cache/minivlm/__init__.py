"""The bundled mini-VLM: a small open_clip model pretrained on the synthetic world.

It plays the frozen foundation model in the embedded default (``encode --dataset synthetic``),
so that the whole pipeline runs with no download. Rebuild it with
``python -m dait_cache.minivlm.pretrain``.
"""

from __future__ import annotations

import json
from pathlib import Path

WEIGHTS_DIR = Path(__file__).parent / "mini-vlm"
# Encoding sizes the mini-VLM was trained for: 32 px views cropped from a 36 px base.
IMAGE_SIZE, BASE_SIZE = 32, 36

MODEL_CFG = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": IMAGE_SIZE, "layers": [1, 1, 1, 1], "width": 8},
    "text_cfg": {"context_length": 24, "vocab_size": 49408, "width": 32, "heads": 4, "layers": 2},
}
PREPROCESS_CFG = {
    "mean": [0.5, 0.5, 0.5],
    "std": [0.25, 0.25, 0.25],
    "size": IMAGE_SIZE,
    "interpolation": "bilinear",
    "resize_mode": "shortest",
}


def bundled_vlm_id() -> str:
    """The ``local-dir:`` identifier of the shipped mini-VLM."""
    return f"local-dir:{WEIGHTS_DIR}"


def card() -> dict:
    """The JSON card: config, training settings, data seed, measured zero-shot top-1."""
    return json.loads((WEIGHTS_DIR / "card.json").read_text())
