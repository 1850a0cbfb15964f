"""The synthetic world: one attribute grammar, a renderer, and the fine-grained task drawn from it.

Objects are flat shapes with a body colour, a number of stripes and a small marker dot, drawn at a
random position, scale and rotation over a cluttered background. The fine-grained task uses 24
classes whose neighbours differ in one subtle attribute (stripe count or marker colour); a
foundation model can be pretrained on the whole grammar (every combination, many phrasings).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageChops, ImageDraw

# The grammar: every attribute, its values, and how each value reads in a caption.
ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "color": ("red", "green", "blue", "yellow", "purple", "orange"),
    "shape": ("circle", "square", "triangle", "diamond", "hexagon", "star"),
    "stripes": ("no", "one", "two", "three"),
    "marker": ("white", "black", "cyan", "magenta"),
}
# The task: 2 colours x 3 shapes x 2 stripe counts x 2 marker colours = 24 classes.
TASK_VALUES: dict[str, tuple[str, ...]] = {
    "color": ("red", "blue"),
    "shape": ("circle", "square", "triangle"),
    "stripes": ("one", "two"),
    "marker": ("white", "black"),
}
CAPTION_TEMPLATES = (
    "a {color} {shape} with {stripes_phrase} and a {marker} dot",
    "a photo of a {color} {shape} with {stripes_phrase} and a {marker} dot",
    "{stripes_phrase} on a {color} {shape} marked by a {marker} dot",
    "a {shape}, {color}, with {stripes_phrase} and a {marker} marker",
    "a {color} {shape} carrying a {marker} dot and {stripes_phrase}",
)
RGB = {
    "red": (200, 40, 40),
    "green": (40, 160, 60),
    "blue": (40, 70, 200),
    "yellow": (220, 200, 40),
    "purple": (130, 50, 170),
    "orange": (230, 130, 30),
    "white": (250, 250, 250),
    "black": (15, 15, 15),
    "cyan": (0, 220, 220),
    "magenta": (230, 0, 200),
}
STRIPE_COUNT = {"no": 0, "one": 1, "two": 2, "three": 3}
CANVAS = 96  # native image side; views resize it like any photo
_LOCAL = 64  # object drawing side before rotation and scaling


def stripes_phrase(value: str) -> str:
    return {"no": "no stripes", "one": "one stripe"}.get(value, f"{value} stripes")


def class_name(attrs: dict[str, str]) -> str:
    """The prompt-ready phrase naming a combination, e.g. 'red circle with one stripe and a white dot'."""
    return f"{attrs['color']} {attrs['shape']} with {stripes_phrase(attrs['stripes'])} and a {attrs['marker']} dot"


def caption(attrs: dict[str, str], template: int = 0) -> str:
    return CAPTION_TEMPLATES[template % len(CAPTION_TEMPLATES)].format(
        stripes_phrase=stripes_phrase(attrs["stripes"]), **attrs
    )


def combinations(values: dict[str, Sequence[str]]) -> list[dict[str, str]]:
    keys = list(ATTRIBUTES)
    return [dict(zip(keys, combo)) for combo in itertools.product(*(values[k] for k in keys))]


def task_classes() -> list[dict[str, str]]:
    """The task's 24 attribute combinations in label order."""
    return combinations(TASK_VALUES)


def all_combinations() -> list[dict[str, str]]:
    """Every combination of the grammar (576): the foundation model's broader world."""
    return combinations(ATTRIBUTES)


def _shape_polygon(shape: str) -> list[tuple[float, float]] | None:
    c, r = _LOCAL / 2, _LOCAL / 2 - 3
    if shape == "circle":
        return None
    if shape == "square":
        return [
            (c - 0.78 * r, c - 0.78 * r),
            (c + 0.78 * r, c - 0.78 * r),
            (c + 0.78 * r, c + 0.78 * r),
            (c - 0.78 * r, c + 0.78 * r),
        ]
    if shape == "triangle":
        return [(c, c - r), (c + r, c + 0.8 * r), (c - r, c + 0.8 * r)]
    if shape == "diamond":
        return [(c, c - r), (c + r, c), (c, c + r), (c - r, c)]
    if shape == "hexagon":
        return [(c + r * math.cos(k * math.pi / 3), c + r * math.sin(k * math.pi / 3)) for k in range(6)]
    if shape == "star":
        return [
            (
                c + (r if k % 2 == 0 else 0.5 * r) * math.cos(k * math.pi / 5 - math.pi / 2),
                c + (r if k % 2 == 0 else 0.5 * r) * math.sin(k * math.pi / 5 - math.pi / 2),
            )
            for k in range(10)
        ]
    raise ValueError(f"unknown shape {shape!r}; valid: {', '.join(ATTRIBUTES['shape'])}")


def _jitter(rgb: tuple[int, int, int], rng: np.random.Generator, amount: int) -> tuple[int, ...]:
    return tuple(int(np.clip(v + rng.integers(-amount, amount + 1), 0, 255)) for v in rgb)


def _draw_object(attrs: dict[str, str], rng: np.random.Generator) -> Image.Image:
    mask = Image.new("L", (_LOCAL, _LOCAL), 0)
    poly = _shape_polygon(attrs["shape"])
    md = ImageDraw.Draw(mask)
    if poly is None:
        md.ellipse([3, 3, _LOCAL - 4, _LOCAL - 4], fill=255)
    else:
        md.polygon(poly, fill=255)
    body = _jitter(RGB[attrs["color"]], rng, 18)
    obj = Image.new("RGBA", (_LOCAL, _LOCAL), body + (255,))
    n = STRIPE_COUNT[attrs["stripes"]]
    if n:
        stripes = Image.new("L", (_LOCAL, _LOCAL), 0)
        sd = ImageDraw.Draw(stripes)
        dark = tuple(int(v * 0.3) for v in body)
        for k in range(n):
            x = _LOCAL * (k + 1) / (n + 1)
            sd.rectangle([x - 2.5, 0, x + 2.5, _LOCAL], fill=255)
        obj.paste(dark + (255,), (0, 0), stripes)
    ImageDraw.Draw(obj).ellipse(
        [_LOCAL / 2 - 6, _LOCAL * 0.36 - 6, _LOCAL / 2 + 6, _LOCAL * 0.36 + 6],
        fill=_jitter(RGB[attrs["marker"]], rng, 10) + (255,),
    )
    obj.putalpha(ImageChops.multiply(obj.getchannel("A"), mask))
    return obj


def _draw_background(rng: np.random.Generator) -> Image.Image:
    base = tuple(int(v) for v in rng.integers(150, 236, size=3))
    img = Image.new("RGB", (CANVAS, CANVAS), base)
    d = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(3, 9))):  # clutter lines
        x0, y0, x1, y1 = (float(v) for v in rng.uniform(0, CANVAS, size=4))
        shade = tuple(int(v) for v in rng.integers(60, 200, size=3))
        d.line([x0, y0, x1, y1], fill=shade, width=int(rng.integers(1, 3)))
    for _ in range(int(rng.integers(1, 4))):  # small distractor blobs
        x, y = (float(v) for v in rng.uniform(0, CANVAS, size=2))
        r = float(rng.uniform(2, 5))
        d.ellipse([x - r, y - r, x + r, y + r], fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
    return img


def render(attrs: dict[str, str], rng: np.random.Generator) -> Image.Image:
    """Draw one RGB image of the combination with random pose, scale and clutter."""
    img = _draw_background(rng)
    obj = _draw_object(attrs, rng)
    obj = obj.rotate(float(rng.uniform(0, 360)), resample=Image.BICUBIC, expand=True)
    side = int(round(obj.width * rng.uniform(0.75, 1.1)))
    obj = obj.resize((side, side), Image.BICUBIC)
    slack = max(CANVAS - side, 0)
    x = int(rng.integers(0, slack + 1)) - max(side - CANVAS, 0) // 2
    y = int(rng.integers(0, slack + 1)) - max(side - CANVAS, 0) // 2
    img.paste(obj, (x, y), obj)
    return img
