"""Replayable augmented views (docs/design.md section 3).

A view is a pure function of a uint8 base image and a :class:`ViewParams` record; the record is
drawn from a generator seeded by ``(seed, sample_index, view_index)`` and stored in the cache as a
fixed-length float32 vector. Crop boxes are fractions of the base side, so the same record renders
at any base size. View 0 is the clean evaluation view (a centre crop).

Rendering order, the same for every preset: crop (resized to ``image_size``), horizontal flip,
rotation (bilinear, black fill), colour jitter in the record's order, Gaussian blur (kernel 5).
"""

from __future__ import annotations

import functools
import hashlib
import math
from dataclasses import astuple, dataclass, fields

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as F

DEFAULT_CROP_FRACTION = 224 / 256  # image_size / base_size of the defaults
BLUR_KERNEL = 5


@dataclass(frozen=True)
class Preset:
    """How augmented views are drawn."""

    name: str
    kind: str  # "resized_crop" (scale range) or "double_crop" (VL2Lite's two random crops)
    scale: tuple[float, float] = (0.5, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    second_crop: tuple[float, float] = (192 / 224, 1.0)  # side of crop 2 relative to crop 1
    max_angle: float = 15.0
    jitter: tuple[float, float, float, float] = (0.3, 0.3, 0.3, 0.05)  # b, c, s, hue
    blur_sigma: tuple[float, float] | None = None
    flip_p: float = 0.5

    def as_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}


PRESETS: dict[str, Preset] = {
    "fgvc": Preset("fgvc", "resized_crop"),
    "vl2lite": Preset("vl2lite", "double_crop", max_angle=60.0, jitter=(0.3, 0.1, 0.1, 0.1), blur_sigma=(1e-5, 10.0)),
}


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        raise ValueError(f"unknown view preset {name!r}; valid: {', '.join(PRESETS)}")
    return PRESETS[name]


@dataclass(frozen=True)
class ViewParams:
    """One view. Every float is float32-representable so that the stored vector replays exactly."""

    top: float  # crop box, fractions of the base side
    left: float
    height: float
    width: float
    flip: float  # 0 or 1
    angle: float  # degrees, counter-clockwise
    brightness: float  # jitter factors; 1 (0 for hue) = unchanged
    contrast: float
    saturation: float
    hue: float
    order0: float  # permutation of (brightness, contrast, saturation, hue)
    order1: float
    order2: float
    order3: float
    blur_sigma: float  # 0 = no blur

    def to_vector(self) -> np.ndarray:
        return np.asarray(astuple(self), dtype=np.float32)

    @classmethod
    def from_vector(cls, vec) -> ViewParams:
        vec = np.asarray(vec, dtype=np.float32)
        if vec.shape != (PARAM_DIM,):
            raise ValueError(f"view params vector must have shape ({PARAM_DIM},), got {vec.shape}")
        return cls(*(float(v) for v in vec))

    @property
    def order(self) -> tuple[int, int, int, int]:
        return (int(self.order0), int(self.order1), int(self.order2), int(self.order3))


PARAM_DIM = len(fields(ViewParams))
PARAM_NAMES = tuple(f.name for f in fields(ViewParams))


def _f32(x: float) -> float:
    return float(np.float32(x))


def clean_view_params(crop_fraction: float = DEFAULT_CROP_FRACTION) -> ViewParams:
    """The evaluation view: a centred square crop, nothing else."""
    off = (1 - crop_fraction) / 2
    return ViewParams(
        _f32(off),
        _f32(off),
        _f32(crop_fraction),
        _f32(crop_fraction),
        0.0,
        0.0,
        1.0,
        1.0,
        1.0,
        0.0,
        0.0,
        1.0,
        2.0,
        3.0,
        0.0,
    )


def _resized_crop_box(rng: np.random.Generator, preset: Preset) -> tuple[float, float, float, float]:
    # Like torchvision's RandomResizedCrop.get_params, on the unit square.
    log_ratio = (math.log(preset.ratio[0]), math.log(preset.ratio[1]))
    for _ in range(10):
        area = rng.uniform(*preset.scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        w, h = math.sqrt(area * aspect), math.sqrt(area / aspect)
        if w <= 1 and h <= 1:
            return rng.uniform(0, 1 - h), rng.uniform(0, 1 - w), h, w
    return 0.0, 0.0, 1.0, 1.0


def _double_crop_box(
    rng: np.random.Generator, preset: Preset, crop_fraction: float
) -> tuple[float, float, float, float]:
    # RandomCrop(image_size) of the base, then a random square of side 192..224 of that crop;
    # a crop of a crop is one crop, so it is stored as one box.
    top1, left1 = rng.uniform(0, 1 - crop_fraction, size=2)
    side = crop_fraction * rng.uniform(*preset.second_crop)
    top2, left2 = rng.uniform(0, crop_fraction - side, size=2)
    return top1 + top2, left1 + left2, side, side


def sample_view_params(
    seed: int, sample_index: int, view_index: int, preset: str = "fgvc", *, crop_fraction: float = DEFAULT_CROP_FRACTION
) -> ViewParams:
    """Draw view ``view_index`` of sample ``sample_index``; view 0 is the clean view.

    ``crop_fraction`` is image_size / base_size: the side of the clean view's centre crop and of
    VL2Lite's first random crop.
    """
    p = get_preset(preset)
    if view_index == 0:
        return clean_view_params(crop_fraction)
    rng = np.random.default_rng(np.random.SeedSequence([seed, sample_index, view_index]))
    if p.kind == "resized_crop":
        box = _resized_crop_box(rng, p)
    else:
        box = _double_crop_box(rng, p, crop_fraction)
    flip = float(rng.uniform() < p.flip_p)
    angle = rng.uniform(-p.max_angle, p.max_angle)
    b, c, s, h = p.jitter
    factors = (
        rng.uniform(max(0, 1 - b), 1 + b),
        rng.uniform(max(0, 1 - c), 1 + c),
        rng.uniform(max(0, 1 - s), 1 + s),
        rng.uniform(-h, h),
    )
    order = rng.permutation(4)
    sigma = rng.uniform(*p.blur_sigma) if p.blur_sigma else 0.0
    return ViewParams(*(_f32(v) for v in (*box, flip, angle, *factors, *order, sigma)))


def make_base(image: Image.Image, base_size: int = 256) -> torch.Tensor:
    """RGB-convert and resize (bicubic, PIL) to ``base_size`` square; uint8 tensor (3, S, S)."""
    img = image.convert("RGB")
    if img.size != (base_size, base_size):
        img = img.resize((base_size, base_size), Image.BICUBIC)
    return torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1).contiguous()


def pixel_box(p: ViewParams, side: int) -> tuple[int, int, int, int]:
    """(top, left, height, width) in pixels of ``p``'s crop box on a base image of side ``side``."""
    h = min(max(1, round(p.height * side)), side)
    w = min(max(1, round(p.width * side)), side)
    top = min(max(0, round(p.top * side)), side - h)
    left = min(max(0, round(p.left * side)), side - w)
    return top, left, h, w


def rotate_bilinear(x: torch.Tensor, angle: float) -> torch.Tensor:
    """Rotate a uint8 image (3, H, W) by ``angle`` degrees counter-clockwise about its centre,
    bilinear with black fill: torchvision's ``rotate``, but with the sampling grid computed
    elementwise in float64.

    torchvision builds its grid with a float32 ``bmm``, whose rounding follows the BLAS code path
    (MKL takes an AVX2 path on AMD CPUs, an AVX-512 path on recent Intel ones), so the same record
    rendered other pixels on another machine; elementwise IEEE products and sums round the same
    everywhere, and ``grid_sample`` itself is ATen's own kernel.
    """
    _, h, w = x.shape
    r = math.radians(angle)
    cos, sin = math.cos(r), math.sin(r)
    xs = np.arange(w, dtype=np.float64) + (0.5 - w / 2)  # pixel centres, the image centre at 0
    ys = (np.arange(h, dtype=np.float64) + (0.5 - h / 2))[:, None]
    # the source of each output pixel (inverse rotation), in grid_sample's [-1, 1] coordinates
    gx = (cos * xs - sin * ys) / (w / 2)
    gy = (sin * xs + cos * ys) / (h / 2)
    grid = torch.from_numpy(np.stack(np.broadcast_arrays(gx, gy), -1).astype(np.float32))[None]
    out = torch.nn.functional.grid_sample(
        x[None].float(), grid, mode="bilinear", padding_mode="zeros", align_corners=False
    )
    return out[0].round_().to(torch.uint8)


_JITTER = (F.adjust_brightness, F.adjust_contrast, F.adjust_saturation, F.adjust_hue)


def render_view(base: torch.Tensor, params: ViewParams, image_size: int = 224) -> torch.Tensor:
    """Render ``params`` on a uint8 base image (3, S, S) -> uint8 (3, image_size, image_size)."""
    if base.dtype != torch.uint8 or base.ndim != 3 or base.shape[0] != 3:
        raise ValueError(f"base must be a uint8 (3, S, S) tensor, got {tuple(base.shape)} {base.dtype}")
    top, left, h, w = pixel_box(params, base.shape[-1])
    x = base[:, top : top + h, left : left + w]
    if (h, w) != (image_size, image_size):
        x = F.resize(x, [image_size, image_size], interpolation=InterpolationMode.BILINEAR, antialias=True)
    if params.flip >= 0.5:
        x = F.horizontal_flip(x)
    if params.angle != 0.0:
        x = rotate_bilinear(x, params.angle)
    values = (params.brightness, params.contrast, params.saturation, params.hue)
    neutral = (1.0, 1.0, 1.0, 0.0)
    for k in params.order:
        if values[k] != neutral[k]:
            x = _JITTER[k](x, values[k])
    if params.blur_sigma > 0:
        x = F.gaussian_blur(x, [BLUR_KERNEL, BLUR_KERNEL], [params.blur_sigma, params.blur_sigma])
    return x.contiguous()


# why two render probes differ, for the messages that refuse a replay
PROBE_DIFFERS = "another CPU architecture, or another torch or torchvision"


@functools.cache
def render_probe() -> str:
    """A digest of views rendered here from a fixed noise image by every operation of both presets.

    Machines with the same probe round every operation the presets use alike, as far as one fixed
    image can show; a different probe proves they render other pixels. The manifest keeps the
    encoding machine's probe, so a replay on a machine that rounds otherwise (another CPU
    architecture, another torch or torchvision) is refused instead of silently training on other
    pixels than the VLM saw.
    """
    base = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (3, 72, 72), dtype=np.uint8))
    digest = hashlib.sha256()
    for preset in PRESETS:
        for view in range(1, 9):
            params = sample_view_params(0, 0, view, preset, crop_fraction=64 / 72)
            digest.update(render_view(base, params, 64).numpy().tobytes())
    return digest.hexdigest()[:16]


# why two decode probes differ, for the messages that refuse a replay that decodes images again
DECODE_DIFFERS = "another Pillow, or a Pillow built with another JPEG library"
_DECODE_PROBES = ("baseline-420.jpg", "progressive-420.jpg")  # the common JPEG kinds, chroma halved


@functools.cache
def decode_probe() -> str:
    """A digest of fixed JPEG files decoded here and made into base images (PIL bicubic, up and
    down): what a replay without an image cache computes again before it renders any view.

    JPEG decoders may round the inverse DCT and the chroma upsampling otherwise (libjpeg 9 and
    libjpeg-turbo do), and Pillow's resampling has changed between releases; the render probe
    starts from a base image, so it sees neither.
    """
    from pathlib import Path

    from .base import decode_image

    digest = hashlib.sha256()
    for name in _DECODE_PROBES:
        image = decode_image(Path(__file__).parent / "probe" / name)
        digest.update(np.asarray(image).tobytes())
        for side in (16, 72):
            digest.update(make_base(image, side).numpy().tobytes())
    return digest.hexdigest()[:16]


def decoder_version() -> str:
    """What decodes images here, for the manifest and the messages: Pillow and its JPEG library."""
    import PIL
    from PIL import features

    turbo = features.version("libjpeg_turbo")
    return f"Pillow {PIL.__version__}, " + (f"libjpeg-turbo {turbo}" if turbo else f"libjpeg {features.version('jpg')}")


def normalize_pixels(pixels: torch.Tensor, mean, std, device: torch.device | None = None) -> torch.Tensor:
    """uint8 (B, 3, H, W) -> float32 normalised with a consumer's own mean/std (CLIP's for the VLM,
    the backbone's pretrained statistics for teachers and students)."""
    x = pixels.to(device or pixels.device, non_blocking=True).float().div_(255.0)
    m, s = _stats_on(tuple(mean), tuple(std), x.device)
    return (x - m) / s


@functools.lru_cache(maxsize=64)
def _stats_on(mean: tuple, std: tuple, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    # Made once per device: building them per batch is a blocking host-to-device copy each time.
    return (torch.tensor(mean, device=device).view(1, -1, 1, 1), torch.tensor(std, device=device).view(1, -1, 1, 1))
