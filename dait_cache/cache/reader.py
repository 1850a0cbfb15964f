"""Reading a cache: ``open_cache(dir)`` gives arrays ordered by sample index, loaded into RAM.

Arrays are read in the calling (main) process; DataLoader workers receive numpy arrays, never an
open h5py handle.
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path

import h5py
import numpy as np
import torch

from ..errors import CacheError
from ..locks import encoding_now
from .manifest import TEXT_FILE, is_complete, read_manifest


def _normalize(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True).clip(min=1e-12)


def base_image(images: np.ndarray | None, dataset, sample_index: np.ndarray, row: int, base_size: int) -> torch.Tensor:
    """uint8 (3, S, S) base image of ``row``: from the image cache, else decoded and resized again."""
    from ..data.views import make_base

    if images is not None:
        return torch.from_numpy(np.ascontiguousarray(images[row])).permute(2, 0, 1).contiguous()
    return make_base(dataset.load_image(int(sample_index[row])), base_size)


class Cache:
    """A complete version-1 cache directory."""

    def __init__(self, cache_dir: str | Path):
        self.dir = Path(cache_dir)
        self.manifest = read_manifest(self.dir)
        if not is_complete(self.manifest):
            writer = encoding_now(self.dir)
            if writer:  # "interrupted" would send the user to start a second encode
                raise CacheError(f"cache at {self.dir} is being written by encode ({writer}); wait for it to finish")
            raise CacheError(
                f"cache at {self.dir} is incomplete (encode was interrupted); rerun "
                "the same `dait-cache encode` command to resume it"
            )
        self._arrays: dict[tuple[str, str], object] = {}  # loaded arrays and datasets, by (split, name)

    @property
    def fingerprint(self) -> str:
        return self.manifest["fingerprint"]

    @property
    def splits(self) -> list[str]:
        return list(self.manifest["splits"])

    @cached_property
    def _text(self) -> dict:
        with h5py.File(self.dir / TEXT_FILE, "r") as f:
            return {
                "text_emb": f["text_emb"][...],
                "class_names": [s.decode() if isinstance(s, bytes) else s for s in f["class_names"][...]],
                "templates": [s.decode() if isinstance(s, bytes) else s for s in f["templates"][...]],
            }

    @property
    def text_emb(self) -> np.ndarray:
        """Raw text embeddings (C, P, D) float32: C classes x P templates."""
        return self._text["text_emb"]

    @property
    def class_names(self) -> list[str]:
        return self._text["class_names"]

    @property
    def templates(self) -> list[str]:
        return self._text["templates"]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def logit_scale(self) -> float:
        return float(self.manifest["vlm"]["logit_scale"])

    def class_text_emb(self) -> np.ndarray:
        """(C, D) float32: mean of the normalised template embeddings, renormalised (docs/design.md section 6)."""
        return _normalize(_normalize(self.text_emb.astype(np.float32)).mean(axis=1))

    def _load(self, split: str, name: str) -> np.ndarray | None:
        if split not in self.manifest["splits"]:
            raise CacheError(f"cache at {self.dir} has no split {split!r}; it has {', '.join(self.splits)}")
        key = (split, name)
        if key not in self._arrays:
            parts = []
            for shard in self.manifest["splits"][split]["shards"]:
                try:
                    with h5py.File(self.dir / shard["path"], "r") as f:
                        if name not in f:
                            return None
                        parts.append(f[name][...])  # fletcher32 checksums are checked here
                except (OSError, KeyError, ValueError, RuntimeError) as exc:
                    raise CacheError(
                        f"{self.dir / shard['path']} cannot be read ({type(exc).__name__}: "
                        f"{str(exc).splitlines()[0][:120] if str(exc) else ''}); run `dait-cache "
                        "verify`, then rerun the cache's encode command to repair it"
                    ) from None
            self._arrays[key] = np.concatenate(parts) if parts else np.zeros((0,))
        return self._arrays[key]

    def img_emb(self, split: str) -> np.ndarray:
        """(N, V, D) float16 raw VLM embeddings; view 0 is the clean view."""
        return self._load(split, "img_emb")

    def labels(self, split: str) -> np.ndarray:
        return self._load(split, "label")

    def sample_index(self, split: str) -> np.ndarray:
        return self._load(split, "sample_index")

    def view_params(self, split: str) -> np.ndarray:
        return self._load(split, "view_params")

    def images(self, split: str) -> np.ndarray | None:
        """(N, S, S, 3) uint8 base images when the cache holds them, else None."""
        return self._load(split, "images")

    def base(self, split: str, row: int) -> torch.Tensor:
        """The uint8 (3, S, S) base image of a row: from the image cache or by decoding again."""
        images = self.images(split)
        dataset = self.source_dataset(split) if images is None else None
        return base_image(images, dataset, self.sample_index(split), row, self.manifest["views"]["base_size"])

    def source_dataset(self, split: str, decoding: bool = True):
        """The dataset the cache was encoded from (for re-decoding when there is no image cache).
        ``decoding``: its images will be decoded here, so this machine must decode as the
        encoding machine did (``decoding=False`` for the file list alone)."""
        from ..data import load_dataset

        mismatch = decode_mismatch(self.manifest) if decoding else None
        if mismatch:
            raise CacheError(
                f"{self.dir} keeps no image cache and was encoded on a machine that {mismatch}, so "
                f"decoding its images here would give other pixels than the VLM saw; {KEEP_VIEWS}, or "
                "re-encode here with --overwrite (with the image cache, the default, nothing is decoded again)"
            )
        if (split, "dataset") not in self._arrays:
            ds = self.manifest["dataset"]
            dataset = load_dataset(ds["name"], ds["data_root"], split)
            for key, value in self.decode_options().items():
                setattr(dataset, key, value)
            self._arrays[(split, "dataset")] = dataset
        return self._arrays[(split, "dataset")]

    def decode_options(self) -> dict:
        """The loader options that change decoded pixels (``ImageDataset`` fields), as encode set
        them: a replay or a prediction that decoded otherwise would see other pixels than the VLM."""
        from ..data.aircraft import BANNER_PX

        fields = self.manifest["fingerprint_fields"]["dataset"]
        return {
            "crop_bottom": BANNER_PX if fields.get("crop_banner") else 0,
            "exif_orientation": bool(fields.get("exif_orientation")),
        }

    def view_pixels(self, split: str, row: int, view: int) -> torch.Tensor:
        """uint8 (3, H, W): exactly the pixels the VLM saw for this row and view."""
        from ..data.views import ViewParams, render_view

        params = ViewParams.from_vector(self.view_params(split)[row, view])
        return render_view(self.base(split, row), params, self.manifest["views"]["image_size"])

    def zero_shot_top1(self, split: str = "test") -> float:
        """VLM zero-shot top-1 (%) of the clean views, from the cache alone."""
        img = _normalize(self.img_emb(split)[:, 0].astype(np.float32))
        pred = (img @ self.class_text_emb().T).argmax(1)
        return float((pred == self.labels(split)).mean() * 100) if len(pred) else float("nan")

    def size_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.dir.rglob("*") if p.is_file())


# the fix for a cache whose views this machine renders otherwise
KEEP_VIEWS = (
    "keep the views where it was encoded (its encode command with --store-views adds them to the finished cache)"
)


class PixelSource:
    """The uint8 pixels of any (row, view) of one cache split, for DataLoader workers: copied from
    the view store when the cache has one, else rendered from the base image (image cache in RAM,
    or decoded again) and the recorded view parameters. Both give the same pixels."""

    def __init__(self, cache: Cache, split: str, use_store: bool = True):
        from .view_store import open_store

        self.store = open_store(cache.dir, cache.manifest, split) if use_store else None
        self.params = cache.view_params(split)
        if self.store is None and self.params.shape[1] > 1:  # augmented views will be rendered here
            mismatch = render_mismatch(cache.manifest)
            if mismatch:
                raise CacheError(
                    f"{cache.dir} was encoded on a machine that {mismatch}, so training here would replay "
                    f"other pixels than the VLM saw; {KEEP_VIEWS}, or re-encode here with --overwrite"
                )
        self.images = cache.images(split) if self.store is None else None
        self.image_size = int(cache.manifest["views"]["image_size"])
        self.base_size = int(cache.manifest["views"]["base_size"])
        self.dataset = cache.source_dataset(split) if self.store is None and self.images is None else None
        self.sample_index = cache.sample_index(split)

    def render(self, row: int, view: int) -> torch.Tensor:
        if self.store is not None:
            return torch.from_numpy(np.array(self.store[row, view]))
        from ..data.views import ViewParams, render_view

        base = base_image(self.images, self.dataset, self.sample_index, row, self.base_size)
        return render_view(base, ViewParams.from_vector(self.params[row, view]), self.image_size)


def render_mismatch(manifest: dict) -> str | None:
    """How this machine's rendering differs from the encoding machine's (their render probes), or
    None when it renders the same pixels (or the manifest predates the probe)."""
    from ..data.views import PROBE_DIFFERS, render_probe

    saved, here = manifest["views"].get("render_probe"), render_probe()
    if saved is None or saved == here:
        return None
    return f"renders views otherwise (render probe {saved}, here {here}: {PROBE_DIFFERS})"


def decode_mismatch(manifest: dict) -> str | None:
    """How this machine's image decoding differs from the encoding machine's (their decode probes),
    or None when it decodes the same pixels (or the manifest predates the probe)."""
    from ..data.views import DECODE_DIFFERS, decode_probe, decoder_version

    saved, here = manifest["views"].get("decode_probe"), decode_probe()
    if saved is None or saved == here:
        return None
    return (
        f"decodes images otherwise (decode probe {saved}, {manifest['views'].get('decoder', 'decoder unknown')}; "
        f"here {here}, {decoder_version()}: {DECODE_DIFFERS})"
    )


def open_cache(cache_dir: str | Path) -> Cache:
    """Open a complete cache directory (``<workdir>/<dataset>/cache``)."""
    return Cache(cache_dir)
