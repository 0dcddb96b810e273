"""Parity inputs: the bundled sample files, preprocessed by the artifact's own
preprocessing (vlmedge.preprocess.samples: the recipe `vlmedge check` rebuilds them with),
plus seeded random inputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from vlmedge.preprocess.audio import AudioPreprocessSpec
from vlmedge.preprocess.image import ImagePreprocessSpec
from vlmedge.preprocess.samples import audio_rows, clip_at_rate, image_rows, in_row_order

SAMPLE_DIR = Path(__file__).resolve().parent / "sample_data"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
AUDIO_DIR = SAMPLE_DIR / "audio"
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg")


def sample_images() -> list[Path]:
    return in_row_order(p for p in SAMPLE_DIR.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


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
    pixels = image_rows(files + random_images(n_random, seed), spec)
    height, width = spec.output_size
    gaussian = np.random.default_rng(seed + 1).standard_normal((2, 3, height, width)).astype(np.float32)
    bundled = {f"samples/{p.name}": p for p in files}
    return np.concatenate([pixels, gaussian]), bundled


def sample_audio_files() -> list[Path]:
    """The bundled audio clips (exporters/sample_data/audio/, made by builtin/make_audio_samples.py)."""
    if not AUDIO_DIR.is_dir():
        return []
    return in_row_order(p for p in AUDIO_DIR.iterdir() if p.suffix.lower() in AUDIO_SUFFIXES)


def random_waveforms(n: int, seed: int, spec: AudioPreprocessSpec) -> list[np.ndarray]:
    """Seeded noise clips at the model's rate, of random level and length: shorter than a
    model window (padding) and longer than one (truncation)."""
    rng = np.random.default_rng(seed)
    waves = []
    for i in range(n):
        fraction = rng.uniform(0.1, 0.9) if i % 2 == 0 else rng.uniform(1.1, 1.5)
        length = max(spec.frame_length, int(fraction * spec.window_samples))
        level = 10 ** rng.uniform(-2.5, -0.5)
        waves.append(np.clip(level * rng.standard_normal(length), -1, 1).astype(np.float32))
    return waves


def audio_parity_feeds(spec: AudioPreprocessSpec, n_random: int = 4, seed: int = 0) -> tuple[np.ndarray, dict[str, Path]]:
    """The model input of every sample clip (decoded, downmixed and resampled as the runtime
    does) and of seeded random clips, plus one standard normal input; and the sample files to
    bundle as {artifact path: source path}."""
    files = sample_audio_files()
    waves = [clip_at_rate(path, spec) for path in files] + random_waveforms(n_random, seed, spec)
    features = audio_rows(waves, spec)
    gaussian = np.random.default_rng(seed + 1).standard_normal((1, *features.shape[1:])).astype(np.float32)
    bundled = {f"samples/{p.name}": p for p in files}
    return np.concatenate([features, gaussian]), bundled
