"""The parity rows an artifact's bundled sample files make: the one recipe the export builds
them with, and `vlmedge check` rebuilds them with from the artifact's own copies on the
machine it runs on (its Pillow, soundfile, soxr and tokenizers, and the manifest's
preprocessing as it reads now).

Every sample file of one input kind makes one row each (captions: one per non-blank line),
in the order of `in_row_order`, and they are the first rows of the parity inputs of the graph
that kind feeds; the seeded random rows follow them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

import numpy as np

from vlmedge.preprocess.audio import AUDIO_SUFFIXES, AudioPreprocessSpec, fbank, load_audio_at
from vlmedge.preprocess.image import ImagePreprocessSpec, image_suffixes, load_image, preprocess_images

CAPTION_SUFFIX = ".txt"


def sample_kind(path: str | Path) -> str | None:
    """"image", "audio" or "text" (a captions file): the input kind a sample file holds."""
    suffix = Path(path).suffix.lower()
    if suffix in image_suffixes():
        return "image"
    if suffix in AUDIO_SUFFIXES:
        return "audio"
    return "text" if suffix == CAPTION_SUFFIX else None


def in_row_order(paths: Iterable[str | Path]) -> list:
    """The sample files in the order of their parity rows: by file name."""
    return sorted(paths, key=lambda p: Path(p).name)


def image_rows(images: list, spec: ImagePreprocessSpec) -> np.ndarray:
    """Image files (or PIL images) -> (N, C, H, W) pixel values, decoded as `load_image` decodes."""
    return preprocess_images([load_image(image) for image in images], spec)


def clip_at_rate(path: str | Path, spec: AudioPreprocessSpec) -> np.ndarray:
    """An audio file decoded, downmixed and resampled to the model's rate, as the runtime does."""
    return load_audio_at(str(path), spec.sampling_rate)[0]


def audio_rows(waves: list[np.ndarray], spec: AudioPreprocessSpec) -> np.ndarray:
    """Clips at the model's rate -> one model input each, the clip taken as one window. A
    raw-waveform model that takes any length gets each clip tiled or cut to one window, so
    that the rows batch; the others pad or truncate in their front end."""
    if spec.front_end != "kaldi-fbank" and spec.variable_length:
        waves = [np.resize(wave, spec.window_samples) for wave in waves]
    return np.stack([fbank(wave, spec) for wave in waves])


def caption_lines(path: str | Path) -> list[str]:
    """A captions file's captions: one per non-blank line."""
    return [line for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


def sample_rows(kind: str, paths: list[Path], section: dict, folder: Path) -> np.ndarray | dict[str, np.ndarray]:
    """The rows sample files of one kind make with a manifest's preprocessing section (`folder`:
    the artifact, whose tokenizer file a text section names): an array of image or audio rows,
    or the tokenizer's arrays by input name for captions."""
    if kind == "image":
        return image_rows(list(paths), ImagePreprocessSpec.from_dict(section))
    if kind == "audio":
        spec = AudioPreprocessSpec.from_dict(section)
        return audio_rows([clip_at_rate(path, spec) for path in paths], spec)
    from vlmedge.preprocess.text import load_text_tokenizer

    return load_text_tokenizer(folder, section).encode([line for path in paths for line in caption_lines(path)])
