"""Bulk embedding behind `vlmedge embed`: files and folders in, one (N, D) .npy out, with
the ordered list of what each row is and of the files that could not be read.

Each task that embeds names its embedders in EMBEDDERS: an image-embedding artifact
embeds images only; a CLIP artifact embeds images and texts into one space.
"""

from __future__ import annotations

import json
import os
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, NamedTuple, Sequence

import numpy as np

from vlmedge.errors import InputError, VlmedgeError
from vlmedge.preprocess.image import FORMATS, load_image


def image_suffixes() -> set[str]:
    """File suffixes of the image formats vlmedge decodes (.jpg, .png, .webp, .tif ...)."""
    from PIL import Image

    return {ext.lower() for ext, fmt in Image.registered_extensions().items() if fmt in FORMATS}


def collect_inputs(inputs: Sequence[str | os.PathLike]) -> list[Path]:
    """Files as given, and for each folder its image files, recursively, sorted by path;
    hidden files and folders are left out. Missing files stay in (they are reported as
    unreadable when loaded)."""
    suffixes = image_suffixes()
    files: list[Path] = []
    for raw in inputs:
        path = Path(raw)
        if path.is_dir():
            found = [p for p in path.rglob("*")
                     if p.suffix.lower() in suffixes and p.is_file()
                     and not any(part.startswith(".") for part in p.relative_to(path).parts)]
            files.extend(sorted(found, key=lambda p: p.relative_to(path).parts))
        else:
            files.append(path)
    return files


class Embedders(NamedTuple):
    """How one artifact embeds: images (a list of PIL images -> (n, D)), texts (or None)."""

    images: Callable[[list[Any]], np.ndarray]
    texts: Callable[[list[str]], np.ndarray] | None
    settings: dict[str, Any]


def _encoder_embedders(pipeline: Any, pooling: str | None = None, normalize: bool = True) -> Embedders:
    pooling = pipeline.resolve_pooling(pooling)
    return Embedders(lambda images: pipeline.embed(images, pooling=pooling, normalize=normalize), None,
                     {"pooling": pooling, "normalized": normalize})


def _clip_embedders(pipeline: Any, pooling: str | None = None, normalize: bool = True) -> Embedders:
    if pooling is not None:
        raise InputError("--pooling applies to image encoders; a CLIP artifact has one image embedding.")
    if not normalize:
        raise InputError("CLIP embeddings are always L2-normalised; drop --no-normalize.")
    return Embedders(pipeline.embed_images, pipeline.embed_texts, {"normalized": True})


# task -> factory(pipeline, pooling, normalize) -> Embedders
EMBEDDERS: dict[str, Callable[..., Embedders]] = {
    "image-embedding": _encoder_embedders,
    "clip": _clip_embedders,
}


def embedders_for(pipeline: Any, pooling: str | None = None, normalize: bool = True) -> Embedders:
    task = getattr(pipeline, "task", None)
    if task not in EMBEDDERS:
        raise InputError(f"vlmedge embed works with {' and '.join(EMBEDDERS)} artifacts, but this one is "
                         f"{task}; run it with `vlmedge predict` instead.")
    return EMBEDDERS[task](pipeline, pooling=pooling, normalize=normalize)


@dataclass
class EmbedResult:
    embeddings: np.ndarray                      # (len(files) + len(texts), D) float32
    files: list[str]                            # the image rows, in order
    texts: list[str]                            # the text rows, after the images
    skipped: list[dict[str, str]] = field(default_factory=list)  # {"input", "error"}
    settings: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0


def _try_load(path: Path) -> tuple[Any, str | None]:
    try:
        return load_image(path), None
    except (VlmedgeError, OSError, ValueError, MemoryError) as exc:
        return None, str(exc) or type(exc).__name__


def _embed_batch(embed: Callable[[list[Any]], np.ndarray], names: list[str], images: list[Any],
                 skipped: list[dict[str, str]]) -> tuple[list[str], list[np.ndarray]]:
    """Embeds a batch; if the batch fails, embeds its images one by one so one bad image
    costs only itself."""
    try:
        return names, [embed(images)]
    except VlmedgeError as exc:
        if len(images) == 1:
            skipped.append({"input": names[0], "error": str(exc)})
            return [], []
    kept, vectors = [], []
    for name, image in zip(names, images):
        try:
            vectors.append(embed([image]))
            kept.append(name)
        except VlmedgeError as exc:
            skipped.append({"input": name, "error": str(exc)})
    return kept, vectors


def embed_files(embedders: Embedders, files: Sequence[Path], texts: Sequence[str] = (), batch_size: int = 32,
                progress: Callable[[int], None] | None = None, workers: int | None = None) -> EmbedResult:
    """Embeds image files in batches (decoding the next batch while the model runs the
    current one), then texts. Unreadable files are skipped and listed, never fatal.

    Args:
        progress: called with the number of inputs (images or texts) just finished.
    """
    if batch_size < 1:
        raise InputError(f"batch_size must be at least 1, not {batch_size}.")
    if texts and embedders.texts is None:
        raise InputError("This artifact embeds images only; --text needs a CLIP artifact.")
    advance = progress or (lambda n: None)
    started = time.perf_counter()
    skipped: list[dict[str, str]] = []
    kept: list[str] = []
    parts: list[np.ndarray] = []
    batches = [list(files[i:i + batch_size]) for i in range(0, len(files), batch_size)]
    workers = workers or min(4, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="vlmedge-load") as pool:
        def submit(batch: list[Path]) -> list[Future]:
            return [pool.submit(_try_load, path) for path in batch]

        pending = submit(batches[0]) if batches else []
        for index, batch in enumerate(batches):
            loading, pending = pending, (submit(batches[index + 1]) if index + 1 < len(batches) else [])
            names, images = [], []
            for path, future in zip(batch, loading):
                image, error = future.result()
                if error is None:
                    names.append(str(path))
                    images.append(image)
                else:
                    skipped.append({"input": str(path), "error": error})
            if images:
                done, vectors = _embed_batch(embedders.images, names, images, skipped)
                kept.extend(done)
                parts.extend(vectors)
            advance(len(batch))
    for start in range(0, len(texts), batch_size):
        chunk = list(texts[start:start + batch_size])
        parts.append(embedders.texts(chunk))  # type: ignore[misc]
        advance(len(chunk))
    if not parts:
        raise InputError(f"None of the {len(files)} inputs could be read as an image; nothing was written. "
                         + (f"First error: {skipped[0]['error']}" if skipped else ""))
    embeddings = np.concatenate([np.asarray(p, dtype=np.float32) for p in parts])
    return EmbedResult(embeddings, kept, list(texts), skipped, dict(embedders.settings),
                       time.perf_counter() - started)


def side_file(out: Path) -> Path:
    """embeddings.npy -> embeddings.files.json"""
    stem = out.name[:-len(".npy")] if out.name.endswith(".npy") else out.name
    return out.with_name(stem + ".files.json")


def write_embeddings(result: EmbedResult, out: str | os.PathLike, artifact: str | os.PathLike,
                     task: str) -> tuple[Path, Path]:
    """Writes the .npy and, beside it, <stem>.files.json: which input each row is, in
    order (images, then texts) and the skipped files with the reason. Both are written
    to temporary names first and renamed into place."""
    out = Path(out)
    if out.suffix != ".npy":
        out = out.with_name(out.name + ".npy")
    out.parent.mkdir(parents=True, exist_ok=True)
    listing = side_file(out)
    meta = {
        "artifact": str(artifact),
        "task": task,
        "shape": list(result.embeddings.shape),
        "dtype": "float32",
        **result.settings,
        "files": result.files,
        "texts": result.texts,
        "skipped": result.skipped,
    }
    tmp_npy = out.with_name(f".{out.name}.tmp-{os.getpid()}.npy")
    tmp_json = listing.with_name(f".{listing.name}.tmp-{os.getpid()}")
    try:
        np.save(tmp_npy, result.embeddings.astype(np.float32, copy=False))
        tmp_json.write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        os.replace(tmp_npy, out)
        os.replace(tmp_json, listing)
    finally:
        for tmp in (tmp_npy, tmp_json):
            tmp.unlink(missing_ok=True)
    return out, listing
