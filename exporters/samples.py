"""Parity inputs: the bundled sample files, preprocessed by the artifact's own
preprocessing, plus seeded random inputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from vlmedge.preprocess.image import ImagePreprocessSpec, load_image, preprocess_images

SAMPLE_DIR = Path(__file__).resolve().parent / "sample_data"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")


def sample_images() -> list[Path]:
    return sorted(p for p in SAMPLE_DIR.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def random_images(n: int, seed: int) -> list[Image.Image]:
    """Noise images of random size and aspect, so resizing and cropping are exercised."""
    rng = np.random.default_rng(seed)
    images = []
    for _ in range(n):
        h, w = rng.integers(24, 400, size=2)
        images.append(Image.fromarray(rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8), "RGB"))
    return images


def image_parity_feeds(spec: ImagePreprocessSpec, n_random: int = 4, seed: int = 0) -> tuple[np.ndarray, dict[str, Path]]:
    """(N, 3, H, W) pixel values: every sample image, random-noise images, and standard
    normal tensors; and the sample files to bundle as {artifact path: source path}."""
    files = sample_images()
    images = [load_image(p) for p in files] + random_images(n_random, seed)
    pixels = preprocess_images(images, spec)
    height, width = spec.output_size
    gaussian = np.random.default_rng(seed + 1).standard_normal((2, 3, height, width)).astype(np.float32)
    bundled = {f"samples/{p.name}": p for p in files}
    return np.concatenate([pixels, gaussian]), bundled
