"""Generated images of coloured shapes on textured backgrounds.

The data the built-in image models are trained and evaluated on. Everything is drawn
from a seeded numpy Generator, so a seed reproduces the same image exactly.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

SHAPES = ("circle", "square", "triangle", "star", "cross", "ring", "diamond", "hexagon")
COLORS = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (235, 210, 40),
    "purple": (140, 50, 180),
    "orange": (245, 140, 30),
    "white": (245, 245, 245),
    "black": (20, 20, 20),
}
SIZES = {"small": (0.22, 0.32), "large": (0.55, 0.75)}


def _background(rng: np.random.Generator, size: int) -> Image.Image:
    kind = rng.integers(4)
    base = rng.integers(60, 200, size=3)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    if kind == 0:  # noise
        img = base + rng.normal(0, 25, size=(size, size, 3))
    elif kind == 1:  # stripes
        angle = rng.uniform(0, math.pi)
        freq = rng.uniform(4, 12)
        wave = np.sin((xx * math.cos(angle) + yy * math.sin(angle)) * freq * 2 * math.pi)
        img = base + wave[..., None] * rng.uniform(15, 45)
    elif kind == 2:  # gradient
        other = rng.integers(60, 200, size=3)
        t = (xx * rng.uniform(-1, 1) + yy * rng.uniform(-1, 1))[..., None]
        t = (t - t.min()) / max(float(np.ptp(t)), 1e-6)
        img = base * (1 - t) + other * t
    else:  # checker
        cells = int(rng.integers(3, 9))
        checker = ((xx * cells).astype(int) + (yy * cells).astype(int)) % 2
        img = base + (checker[..., None] * 2 - 1) * rng.uniform(10, 35)
    img = img + rng.normal(0, 6, size=(size, size, 3))
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), "RGB")


def _polygon(cx: float, cy: float, r: float, n: int, rotation: float, inner: float | None = None):
    points = []
    steps = n * 2 if inner else n
    for i in range(steps):
        radius = r if (inner is None or i % 2 == 0) else r * inner
        a = rotation + 2 * math.pi * i / steps
        points.append((cx + radius * math.cos(a), cy + radius * math.sin(a)))
    return points


def draw_shape(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: float, fill, rotation: float) -> None:
    """Draws one shape of radius r centred at (cx, cy)."""
    if shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif shape == "ring":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], outline=fill, width=max(2, int(r * 0.35)))
    elif shape == "square":
        draw.polygon(_polygon(cx, cy, r * 1.2, 4, rotation + math.pi / 4), fill=fill)
    elif shape == "diamond":
        draw.polygon([(cx, cy - r * 1.2), (cx + r * 0.7, cy), (cx, cy + r * 1.2), (cx - r * 0.7, cy)], fill=fill)
    elif shape == "triangle":
        draw.polygon(_polygon(cx, cy, r * 1.2, 3, rotation - math.pi / 2), fill=fill)
    elif shape == "hexagon":
        draw.polygon(_polygon(cx, cy, r * 1.1, 6, rotation), fill=fill)
    elif shape == "star":
        draw.polygon(_polygon(cx, cy, r * 1.25, 5, rotation - math.pi / 2, inner=0.45), fill=fill)
    elif shape == "cross":
        w = r * 0.38
        draw.rectangle([cx - r, cy - w, cx + r, cy + w], fill=fill)
        draw.rectangle([cx - w, cy - r, cx + w, cy + r], fill=fill)
    else:
        raise ValueError(f"unknown shape {shape!r}")


def render(shape: str, color: str, size: str, rng: np.random.Generator, image_size: int = 64) -> Image.Image:
    """Renders one RGB image of a `size` `color` `shape` on a random textured background."""
    img = _background(rng, image_size)
    draw = ImageDraw.Draw(img)
    lo, hi = SIZES[size]
    r = rng.uniform(lo, hi) * image_size / 2
    margin = r * 1.25
    cx = rng.uniform(margin, image_size - margin) if image_size - 2 * margin > 0 else image_size / 2
    cy = rng.uniform(margin, image_size - margin) if image_size - 2 * margin > 0 else image_size / 2
    jitter = rng.integers(-20, 21, size=3)
    fill = tuple(int(v) for v in np.clip(np.array(COLORS[color]) + jitter, 0, 255))
    draw_shape(draw, shape, cx, cy, r, fill, rotation=rng.uniform(0, 2 * math.pi))
    if rng.random() < 0.3:
        img = img.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.0)))
    return img


def random_example(rng: np.random.Generator, image_size: int = 64) -> tuple[Image.Image, str, str, str]:
    """One random (image, shape, color, size)."""
    shape = SHAPES[rng.integers(len(SHAPES))]
    color = list(COLORS)[rng.integers(len(COLORS))]
    size = list(SIZES)[rng.integers(len(SIZES))]
    return render(shape, color, size, rng, image_size), shape, color, size
