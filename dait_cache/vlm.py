"""The frozen vision-language model: open_clip, always in eval mode under inference_mode.

Model and preprocessing travel together: :class:`VLM` carries the model's own mean/std, logit
scale and tokenizer. Images come in as uint8 view pixels; normalisation happens here.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch

from .config import prefixed_path
from .errors import ModelError, load_failure
from .io import sha256_file

# VL2Lite's prompts (docs/design.md section 7); Python format strings with one {}.
DATASET_PROMPTS: dict[str, str] = {
    "aircraft": "a photo of {}, one of the airplane models",
    "cub": "a photo of {}, a type of bird",
    "nabirds": "a photo of {}, a type of bird",
    "dogs": "a photo of {}, a type of dog",
    "cars": "a photo of {}, which is the model name of car",
    "synthetic": "a photo of a {}",
}
GENERIC_PROMPT = "a photo of a {}."
# --pretrained random: seeded random weights, for speed measurements on machines without the real ones.
RANDOM_WEIGHTS = "random"
PROMPT_MODES = ("dataset", "ensemble")


def prompt_templates(dataset: str, mode: str = "dataset") -> list[str]:
    """Templates for a dataset: its VL2Lite prompt, or that plus CLIP's simple ImageNet set."""
    if mode not in PROMPT_MODES:
        raise ValueError(f"unknown prompt mode {mode!r}; valid: {', '.join(PROMPT_MODES)}")
    first = DATASET_PROMPTS.get(dataset, GENERIC_PROMPT)
    if mode == "dataset":
        return [first]
    from open_clip.zero_shot_metadata import SIMPLE_IMAGENET_TEMPLATES

    return [first] + [t("{}") for t in SIMPLE_IMAGENET_TEMPLATES]


def resolve_device(device: str) -> torch.device:
    """``auto`` -> CUDA when visible, else CPU; one line when CUDA is asked for and absent."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ModelError("--device cuda was asked for but no CUDA GPU is visible; use --device cpu")
    return torch.device(device)


def _offline_error(name: str, pretrained: str | None, exc: Exception, hub_unreachable: bool = False) -> ModelError:
    fix = (
        "copy the weights here and pass --pretrained /path/to/weights (a file) or --vlm local-dir:/path "
        "(a folder with open_clip_config.json and weights)"
    )
    if hub_unreachable:
        return ModelError(
            f"cannot get weights for VLM {name!r} (pretrained={pretrained!r}): the Hugging Face Hub "
            f"cannot be reached from this machine (or HF_HUB_OFFLINE is set) and they are not in "
            f"its local cache; {fix}"
        )
    return ModelError(
        f"could not obtain weights for VLM {name!r} (pretrained={pretrained!r}): {exc}. "
        f"If this machine is offline, {fix}"
    )


@contextmanager
def _quiet_root_logger(quiet: bool):
    root = logging.getLogger()
    level = root.level
    if quiet:
        root.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        root.setLevel(level)


@dataclass
class VLM:
    """A loaded open_clip model with its preprocessing constants."""

    model: torch.nn.Module
    tokenizer: object
    name: str
    pretrained: str | None
    weights_id: str  # sha256 of a local weights file, or the hub tag
    mean: tuple[float, ...]
    std: tuple[float, ...]
    native_size: int
    logit_scale: float
    embed_dim: int
    device: torch.device
    _image_fn: Callable | None = None  # a compiled encode_image, when asked for

    def describe(self) -> dict:
        return {
            "name": self.name,
            "pretrained": self.pretrained,
            "weights_id": self.weights_id,
            "logit_scale": self.logit_scale,
            "embed_dim": self.embed_dim,
            "mean": list(self.mean),
            "std": list(self.std),
            "native_size": self.native_size,
        }

    def _autocast(self):
        if self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return nullcontext()

    def normalize(self, pixels: torch.Tensor) -> torch.Tensor:
        """uint8 (B, 3, H, W) -> float32 normalised with the model's mean/std, on the device."""
        from .data.views import normalize_pixels

        x = normalize_pixels(pixels, self.mean, self.std, self.device)
        if self.device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def compile(self) -> None:
        """torch.compile the image tower. Same dtypes, so the cached values keep their meaning."""
        self._image_fn = torch.compile(self.model.encode_image)

    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        """Raw (un-normalised) image embeddings, float32 on the CPU, for uint8 view pixels."""
        return self.encode_images_async(pixels)()

    @torch.inference_mode()
    def encode_images_async(self, pixels: torch.Tensor) -> Callable[[], torch.Tensor]:
        """Start encoding; the returned function waits for and returns the CPU float32 embeddings.

        On a GPU the forward pass and the copy to pinned host memory are queued without waiting,
        so the caller can prepare the next batch (or write a shard) while the GPU works.
        """
        fn = self._image_fn or self.model.encode_image
        with self._autocast():
            emb = fn(self.normalize(pixels), normalize=False).float()
        if self.device.type != "cuda":
            return lambda: emb
        host = torch.empty(emb.shape, dtype=emb.dtype, pin_memory=True)
        host.copy_(emb, non_blocking=True)
        done = torch.cuda.Event()
        done.record()

        def wait() -> torch.Tensor:
            done.synchronize()
            return host

        return wait

    @torch.inference_mode()
    def encode_texts(self, texts: Sequence[str], batch_size: int = 256) -> torch.Tensor:
        """Raw text embeddings (N, D), float32 on the CPU."""
        out = []
        for i in range(0, len(texts), batch_size):
            tokens = self.tokenizer(list(texts[i : i + batch_size])).to(self.device)
            with self._autocast():
                out.append(self.model.encode_text(tokens, normalize=False).float().cpu())
        return torch.cat(out)


WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pth")


def weights_id(name: str, pretrained: str | None) -> str:
    """What identifies the VLM's weights in the cache fingerprint: a tag, a hub id, or the sha256
    of the weights file(s)."""
    if (local := _local_dir(name)) is not None:
        # every weights file in the folder, not only the one open_clip picks (its choice is private API)
        files = sorted(p for p in local.iterdir() if p.is_file() and p.suffix in WEIGHT_SUFFIXES)
        if len(files) == 1:  # the usual case: the same id as passing that file to --pretrained
            return f"sha256:{sha256_file(files[0])}"
        if not files:
            return "random-init"
        listing = "\n".join(f"{p.name}:{sha256_file(p)}" for p in files)
        return f"sha256-files:{hashlib.sha256(listing.encode()).hexdigest()}"
    if pretrained == RANDOM_WEIGHTS:
        return "random-init"
    if pretrained and os.path.isfile(pretrained):
        return f"sha256:{sha256_file(pretrained)}"
    return f"tag:{pretrained}" if not name.startswith("hf-hub:") else name


def _local_dir(name: str) -> Path | None:
    """The folder of a ``local-dir:`` name (None for other names); one line when it is missing."""
    if (local := prefixed_path(name, "local-dir")) is not None and not local.is_dir():
        raise ModelError(
            f"VLM folder {local} not found; local-dir: needs a folder holding open_clip_config.json and the weights"
        )
    return local


def _self_contained(name: str) -> bool:
    """``hf-hub:`` and ``local-dir:`` names bring their own weights: ``--pretrained`` is ignored."""
    return name.startswith(("local-dir:", "hf-hub:"))


def check_vlm_name(name: str, pretrained: str | None) -> None:
    """One line for a model open_clip does not know, a missing folder or a missing --pretrained."""
    import open_clip

    _local_dir(name)
    schema = _self_contained(name)
    if not schema and name.replace("/", "-") not in open_clip.list_models():
        raise ModelError(
            f"unknown open_clip model {name!r}; see open_clip.list_models(), or use hf-hub:org/repo or local-dir:/path"
        )
    if not schema and not pretrained:
        tags = ", ".join(open_clip.list_pretrained_tags_by_model(name)) or "none published"
        raise ModelError(
            f"VLM {name!r} needs --pretrained: a tag ({tags}), a local weights file, "
            f"or {RANDOM_WEIGHTS!r} for random weights (speed measurements only)"
        )


def _create(name: str, pretrained: str | None, dev: torch.device):
    """open_clip's model and tokenizer, with its failures turned into one-line ModelErrors."""
    import open_clip

    schema = _self_contained(name)
    random_init = pretrained == RANDOM_WEIGHTS
    local_file = not schema and not random_init and pretrained is not None and Path(str(pretrained)).is_file()
    downloads = name.startswith("hf-hub:") or (not schema and not random_init and not local_file)
    offline = False
    if downloads:
        from .hub import prefer_offline

        offline = prefer_offline()
    try:
        # Seeded init without touching the caller's RNG; on a GPU the parameters are created and
        # initialised there (seconds, where a 1.2 B-parameter init on the CPU takes minutes).
        gpus = [dev] if dev.type == "cuda" else []
        with torch.random.fork_rng(devices=gpus), dev if dev.type == "cuda" else nullcontext():
            torch.manual_seed(0)
            # offline, open_clip's own error log would repeat the one line raised below; with
            # random weights asked for, its "no pretrained weights loaded" warning says nothing new
            with _quiet_root_logger(offline or random_init):
                model = open_clip.create_model(
                    name, pretrained=None if schema or random_init else pretrained, device=dev, precision="fp32"
                )
        return model, open_clip.get_tokenizer(name)
    except Exception as exc:
        if local_file:  # not a download: saying "offline" would send the user the wrong way
            raise ModelError(
                f"weights file {pretrained} does not load into VLM {name!r} ({load_failure(exc)}); "
                f"pass the open_clip weights of {name} (a state dict: .bin, .pt or .safetensors)"
            ) from None
        if (local := _local_dir(name)) is not None:  # nothing to download: no offline advice
            raise ModelError(
                f"VLM folder {local} does not load ({load_failure(exc)}); it needs open_clip_config.json and "
                "the weights saved with it (e.g. open_clip_model.safetensors), as open_clip saves a model"
            ) from None
        if isinstance(exc, (RuntimeError, OSError, ConnectionError)):
            raise _offline_error(name, pretrained, exc, offline) from None
        if isinstance(exc, ValueError):
            raise ModelError(f"cannot build VLM {name!r}: {exc}") from None
        raise


def load_vlm(name: str, pretrained: str | None = None, device: str = "auto") -> VLM:
    """Load any open_clip identifier (built-in name, ``hf-hub:org/repo``, ``local-dir:/path``).

    ``pretrained`` is a tag, a local weights file, or ``"random"`` (seeded random weights, for speed
    measurements); it is ignored for ``hf-hub:``/``local-dir:``.
    """
    import open_clip

    dev = resolve_device(device)
    check_vlm_name(name, pretrained)
    model, tokenizer = _create(name, pretrained, dev)
    # open_clip models start in train mode (drop_path active); we only ever run inference.
    model.eval().requires_grad_(False)
    if dev.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    pre = open_clip.get_model_preprocess_cfg(model)
    size = pre.get("size", 224)
    size = size[0] if isinstance(size, (tuple, list)) else size
    with torch.no_grad():
        probe = model.encode_text(tokenizer(["a"]).to(dev))
    return VLM(
        model=model,
        tokenizer=tokenizer,
        name=name,
        pretrained=None if _self_contained(name) else pretrained,
        weights_id=weights_id(name, pretrained),
        mean=tuple(pre["mean"]),
        std=tuple(pre["std"]),
        native_size=int(size),
        logit_scale=float(model.logit_scale.exp().item()),
        embed_dim=int(probe.shape[-1]),
        device=dev,
    )
