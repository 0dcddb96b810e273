"""The first stage of a bulk run: decode and preprocess, no model (Ray runs it in CPU tasks,
the local engine in threads).

``prepare_batch`` turns the input column (``path``, read here by both engines as the
pipeline reads a path; ``bytes``, ``image`` arrays or ``text`` of a Dataset) into the
model input the pipeline's ``<method>_prepared`` takes, held in ``_``-prefixed work
columns; ``prepared_inputs`` reads them back in the second stage. A row that cannot be read gets its message in ``_error`` (and zeros as
features), so one bad file costs only its own row.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from vlmedge.bulk.inputs import TEXT_COLUMNS, is_uri, source_column
from vlmedge.bulk.job import BulkJob
from vlmedge.bulk.table import is_arrow
from vlmedge.errors import InputError, first_line
from vlmedge.preprocess import READ_ERRORS

# columns that only carry data from the first stage to the second; never in the results
WORK_COLUMNS = ("bytes", "_pixels", "_features", "_spans", "_duration", "_input_ids", "_attention_mask", "_error")


def prepare_batch(batch: dict[str, Any], job: BulkJob) -> dict[str, Any]:
    """Decodes and preprocesses one batch of inputs. Every column but the input's passes
    through (``bytes`` and ``image`` are dropped); the work columns are added."""
    column = source_column(job, batch)
    if is_arrow(batch[column]):  # a table's column as read: its paths or captions as Python values
        batch = {**batch, column: batch[column].to_pylist()}
    values = batch[column]
    out = {k: v for k, v in batch.items() if k not in ("bytes", "image")}
    errors = np.array([_empty_message(batch, column, i) for i in range(len(values))], dtype=object)
    sources = list(values) if job.kind == "text" else [None if v is None else _source(v, column, job.cwd) for v in values]
    out.update(PREPARE[job.kind](sources, job, errors, lambda exc, i: _message(exc, batch, column, i)))
    out["_error"] = errors
    return out


def prepared_inputs(batch: dict[str, Any], ok: np.ndarray, kind: str) -> Any:
    """The work columns of the readable rows as the pipeline's ``<method>_prepared`` takes
    them: pixels, tokens or prepared clips."""
    if kind == "image":
        return np.ascontiguousarray(np.asarray(batch["_pixels"])[ok], dtype=np.float32)
    if kind == "text":
        return {name: np.asarray(batch[f"_{name}"])[ok] for name in ("input_ids", "attention_mask")}
    from vlmedge.tasks.audio import PreparedClip

    rows = np.flatnonzero(ok)
    return [PreparedClip(float(batch["_duration"][i]), np.asarray(batch["_spans"][i], dtype=np.float64),
                         np.asarray(batch["_features"][i], dtype=np.float32)) for i in rows]


def _empty_message(batch: dict[str, Any], column: str, i: int) -> str:
    """The error of a row whose input cell is null, or an empty path; "" for any other row."""
    value = batch[column][i]
    if value is None:
        if column == "bytes" and "path" in batch:
            return f"File {batch['path'][i]} does not exist; check the path."
        if column in TEXT_COLUMNS:
            return "The caption is missing (null)."
        return f"The {column} of this row is missing (null)."
    if isinstance(value, str) and column not in TEXT_COLUMNS and not value.strip():
        return f"The {column} cell of this row is empty; fill it in or drop the row."
    return ""


def _source(value: Any, column: str, cwd: str) -> Any:
    """A cell of the input column as something load_image / load_audio reads."""
    if column == "bytes" or column == "image" or not isinstance(value, str):
        return value
    return value if os.path.isabs(value) or is_uri(value) else os.path.join(cwd, value)


def _read(source: Any) -> Any:
    """What the decoders read: a URI's bytes (s3://, gs://, read through pyarrow's file
    systems, as Ray's readers read them); any other source as it is."""
    if not (isinstance(source, str) and is_uri(source)):
        return source
    import pyarrow as pa
    import pyarrow.fs

    try:
        filesystem, path = pyarrow.fs.FileSystem.from_uri(source)
        with filesystem.open_input_stream(path) as stream:
            return stream.read()
    except (OSError, ValueError, pa.ArrowException) as exc:
        raise InputError(f"File {source} could not be read ({first_line(exc)}); check the URI and its "
                         "access.") from None


def _message(exc: BaseException, batch: dict[str, Any], column: str, i: int) -> str:
    """The error's message; for the bytes of a named file (a ``bytes`` column beside a
    ``path``, or a URI), worded as the pipeline words it for a file's path. Files given by
    local path are decoded from the path, so their messages are the pipeline's own."""
    message = str(exc) or type(exc).__name__
    value = batch[column][i]
    if column == "bytes":
        path = batch["path"][i] if "path" in batch else None
    else:
        path = value if isinstance(value, str) and is_uri(value) else None
    if path is not None:
        message = message.replace("The image given as bytes", f"Image file {path}")
        message = message.replace("The audio bytes are empty", f"Audio file {path} is empty")
        message = message.replace("The audio bytes", f"Audio file {path}").replace("the audio bytes", f"audio file {path}")
    return message


def _images(sources: list[Any], job: BulkJob, errors: np.ndarray, message) -> dict[str, Any]:
    from vlmedge.preprocess.image import ImagePreprocessSpec, load_image, preprocess_images

    spec = ImagePreprocessSpec.from_dict(job.preprocess["image"])
    height, width = spec.output_size
    shape = (3, height, width) if spec.layout == "NCHW" else (height, width, 3)
    pixels = np.zeros((len(sources),) + shape, dtype=np.float32)
    for i, source in enumerate(sources):
        if errors[i]:
            continue
        try:
            pixels[i] = preprocess_images([load_image(_read(source))], spec)[0]
        except READ_ERRORS as exc:
            errors[i] = message(exc, i)
    return {"_pixels": pixels}


def _audio(sources: list[Any], job: BulkJob, errors: np.ndarray, message) -> dict[str, Any]:
    """Per clip: its model windows' features, their spans and its duration, as AudioTagger.prepare_clip makes them."""
    from vlmedge.preprocess.audio import AudioPreprocessSpec
    from vlmedge.tasks.audio import AudioTagger

    spec = AudioPreprocessSpec.from_dict(job.preprocess["audio"])
    features = np.empty(len(sources), dtype=object)
    spans = np.empty(len(sources), dtype=object)
    durations = np.zeros(len(sources), dtype=np.float64)
    for i, source in enumerate(sources):
        features[i] = np.zeros((0, spec.max_length, spec.num_mel_bins), dtype=np.float32)
        spans[i] = np.zeros((0, 2), dtype=np.float64)
        if errors[i]:
            continue
        try:
            durations[i], spans[i], features[i] = AudioTagger.prepare_clip(_read(source), spec, **job.prepare_options)
        except READ_ERRORS as exc:
            errors[i] = message(exc, i)
    return {"_features": features, "_spans": spans, "_duration": durations}


_TOKENIZERS: dict[str, Any] = {}


def _tokenizer(job: BulkJob):
    """One TextTokenizer per process and tokenizer, written from the job's copy of tokenizer.json."""
    from vlmedge.preprocess.text import TextPreprocessSpec, TextTokenizer

    key = hashlib.sha256((job.tokenizer_json or "").encode("utf-8")).hexdigest()
    if key not in _TOKENIZERS:
        folder = Path(tempfile.gettempdir()) / "vlmedge-tokenizers"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{key}.json"
        if not path.is_file():
            tmp = folder / f".{key}.{os.getpid()}.tmp"
            tmp.write_text(job.tokenizer_json or "", encoding="utf-8")
            os.replace(tmp, path)
        _TOKENIZERS[key] = TextTokenizer(path, TextPreprocessSpec.from_dict(job.preprocess["text"]))
    return _TOKENIZERS[key]


def _texts(sources: list[Any], job: BulkJob, errors: np.ndarray, message) -> dict[str, Any]:
    texts = []
    for i, value in enumerate(sources):
        if isinstance(value, str):
            texts.append(value)
        else:
            errors[i] = errors[i] or f"The caption is a {type(value).__name__}, not text."
            texts.append("")
    encoded = _tokenizer(job).encode(texts)
    ids = np.asarray(encoded["input_ids"])
    mask = np.asarray(encoded["attention_mask"]) if "attention_mask" in encoded else np.ones_like(ids)
    return {"_input_ids": ids, "_attention_mask": mask}


# the method's input kind -> (sources, job, errors, message) -> work columns
PREPARE = {"image": _images, "audio": _audio, "text": _texts}
