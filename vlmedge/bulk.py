"""Bulk inference over many inputs, shared by the local and the Ray engines.

A ``BulkJob`` says which artifact runs which task method with which options; it is plain
data, so Ray ships it to every task and actor. The work per batch is split in two:

    preprocess_batch(job, columns)  decode + preprocess: files -> pixels / fbank features /
                                    token ids; an unreadable input gets an ``error`` instead
    BatchPredictor(job)(columns)    one loaded pipeline: model + the pipeline's own
                                    postprocessing -> result columns

Results are columns: the input's own columns (``path``, ``text`` or a table's columns) plus
``labels`` / ``indices`` / ``scores`` (classify, tag, CLIP zero-shot), ``duration`` (tag),
or ``embedding``, and ``error`` (null when the input was read). ``run_local`` is the
single-process engine: the pipeline's public methods, batch by batch.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np

from vlmedge.errors import ArtifactError, InputError, VlmedgeError

# task -> the task methods it runs; the first is the default
TASK_METHODS: dict[str, tuple[str, ...]] = {
    "image-classification": ("classify",),
    "image-embedding": ("embed",),
    "clip": ("embed_images", "embed_texts", "classify"),
    "audio-classification": ("tag",),
}
ALIASES = {("clip", "embed"): "embed_images", ("audio-classification", "classify"): "tag"}
TABLE_SUFFIXES = (".parquet", ".csv")
TEXT_SUFFIXES = (".txt",)
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aif", ".aiff")
PATH_COLUMNS = ("path",)
TEXT_COLUMNS = ("text", "caption")
RESULT_COLUMNS = ("labels", "indices", "scores", "duration", "embedding", "error")
# columns that only carry data between the two stages; never in the results
_WORK_COLUMNS = ("bytes", "_pixels", "_features", "_input_ids", "_attention_mask", "_error")


@dataclasses.dataclass(frozen=True)
class BulkJob:
    """What to run: plain data, shipped to every preprocessing task and inference worker."""

    artifact: str
    task: str
    method: str
    kind: str                       # "image", "audio" or "text": what one input is
    preprocess: dict[str, Any]      # the manifest's preprocess section
    backend: str = "auto"
    precision: str | None = None
    device: str = "cpu"
    options: dict[str, Any] = dataclasses.field(default_factory=dict)
    session_options: dict[str, Any] = dataclasses.field(default_factory=dict)
    tokenizer_json: str | None = None  # CLIP text: the tokenizer travels with the job
    column: str | None = None           # the input column of a table: "path", "text", ...
    cwd: str = ""                       # relative paths in tables are relative to this

    @property
    def outputs(self) -> tuple[str, ...]:
        """The result columns this job adds, in order."""
        if self.method in ("classify", "tag"):
            return ("labels", "indices", "scores") + (("duration",) if self.method == "tag" else ()) + ("error",)
        return ("embedding", "error")


def make_job(artifact: str | os.PathLike, method: str | None = None, *, backend: str = "auto",
             precision: str | None = None, device: str = "cpu", top_k: int | None = 5,
             pooling: str | None = None, normalize: bool = True, labels: Sequence[str] | None = None,
             templates: Sequence[str] | None = None, window_hop: float | None = None,
             aggregate: str = "max", threshold: float | None = None, column: str | None = None,
             session_options: dict[str, Any] | None = None) -> BulkJob:
    """Checks the method and its options against the artifact's manifest (without opening
    a model, so a mistake is reported before any worker starts) and returns the job."""
    from vlmedge.artifact import Artifact

    art = Artifact.open(artifact, verify=False)  # each worker verifies the files it loads
    manifest = art.manifest
    task = art.task
    if task not in TASK_METHODS:
        raise ArtifactError(f"Artifact {artifact} has task '{task}', which bulk inference cannot run; upgrade vlmedge.")
    method = TASK_METHODS[task][0] if method is None else ALIASES.get((task, method), method)
    if method not in TASK_METHODS[task]:
        raise InputError(f"A {task} artifact runs {', '.join(TASK_METHODS[task])}, not {method!r}.")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise InputError(f"top_k must be a positive integer, not {top_k!r}.")
    if method == "classify" and top_k is None and task != "audio-classification":
        raise InputError("top_k=None (all labels) is for audio tagging; give a number of labels.")
    options: dict[str, Any] = {"top_k": top_k}
    tokenizer_json = None
    if task == "image-embedding":
        options.update(pooling=_check_pooling(manifest, pooling, artifact), normalize=bool(normalize))
    elif pooling is not None or not normalize:
        raise InputError("pooling and normalize apply to image-embedding artifacts only.")
    if task == "clip" and method == "classify":
        from vlmedge.tasks.clip import Clip

        options.update(labels=Clip._labels(labels), templates=Clip._templates(templates))
    elif labels is not None or templates is not None:
        raise InputError("labels and templates are for zero-shot classification with a CLIP artifact "
                         "(task method 'classify').")
    if task == "clip" and method == "embed_texts":
        text = manifest["preprocess"].get("text") or {}
        tokenizer_json = art.path_of(text.get("tokenizer_file", "tokenizer.json")).read_text(encoding="utf-8")
    if task == "audio-classification":
        options.update(window_hop=_check_hop(manifest, window_hop), aggregate=_check_aggregate(aggregate),
                       threshold=_check_threshold(threshold))
    elif window_hop is not None or threshold is not None or aggregate != "max":
        raise InputError("window_hop, aggregate and threshold apply to audio-classification artifacts only.")
    kind = "text" if method == "embed_texts" else ("audio" if task == "audio-classification" else "image")
    return BulkJob(artifact=str(Path(artifact).resolve()), task=task, method=method, kind=kind,
                   preprocess=dict(manifest["preprocess"]), backend=backend, precision=precision, device=device,
                   options=options, session_options=dict(session_options or {}), tokenizer_json=tokenizer_json,
                   column=column, cwd=os.getcwd())


def _check_pooling(manifest: dict[str, Any], pooling: str | None, artifact: Any) -> str:
    from vlmedge.tasks.encoder import POOLINGS

    info = manifest.get("embedding") or {}
    pooling = info.get("default_pooling") if pooling is None else pooling
    if pooling not in POOLINGS:
        raise InputError(f"Unknown pooling {pooling!r}; choose one of {', '.join(POOLINGS)}.")
    outputs = {o["name"] for graph in manifest["graphs"].values() for o in graph["outputs"]}
    needs = {"cls": {"cls"}, "mean": {"patch_tokens"}, "cls+mean": {"cls", "patch_tokens"}, "pooled": {"pooled"}}
    if not needs[pooling] <= outputs:
        raise InputError(f"Pooling {pooling!r} is not available for {artifact} (it outputs {', '.join(sorted(outputs))}).")
    return pooling


def _check_hop(manifest: dict[str, Any], hop: Any) -> float | None:
    """AudioTagger's own window_hop check, from the manifest alone."""
    import math
    import numbers

    from vlmedge.preprocess.audio import AudioPreprocessSpec

    if hop is None:
        return None
    spec = AudioPreprocessSpec.from_dict(manifest["preprocess"]["audio"])
    shift = spec.frame_shift / spec.sampling_rate
    if (isinstance(hop, bool) or not isinstance(hop, numbers.Real) or not math.isfinite(hop)
            or not shift <= hop <= spec.window_seconds):
        raise InputError(f"window_hop={hop!r} must be a number of seconds from {shift:g} (one frame) "
                         f"to {spec.window_seconds:g} (one model window).")
    return float(hop)


def _check_aggregate(aggregate: Any) -> str:
    from vlmedge.tasks.audio import AGGREGATES

    if aggregate not in AGGREGATES:
        raise InputError(f"aggregate={aggregate!r} is not one of {', '.join(AGGREGATES)}.")
    return aggregate


def _check_threshold(threshold: Any) -> float | None:
    if threshold is None:
        return None
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0.0 <= threshold <= 1.0:
        raise InputError(f"threshold must be a score from 0 to 1 (or None), not {threshold!r}.")
    return float(threshold)


# -- inputs ---------------------------------------------------------------------------------


@dataclasses.dataclass
class Inputs:
    """What the user pointed at, resolved on the driver.

    ``files``: media files in order (folders expanded, recursively, sorted as
    ``vlmedge embed`` sorts them); ``missing``: named files that do not exist;
    ``tables``: Parquet / CSV / text files of paths or captions.
    """

    files: list[str] = dataclasses.field(default_factory=list)
    missing: list[str] = dataclasses.field(default_factory=list)
    tables: list[str] = dataclasses.field(default_factory=list)

    @property
    def table_format(self) -> str | None:
        if not self.tables:
            return None
        return {".parquet": "parquet", ".csv": "csv", ".txt": "text"}[_suffix(self.tables[0])]


def _suffix(path: str) -> str:
    return os.path.splitext(path.rstrip("/"))[1].lower()


def _is_uri(path: str) -> bool:
    return "://" in path and not path.startswith("file://")


def media_suffixes(kind: str) -> set[str]:
    if kind == "audio":
        return set(AUDIO_SUFFIXES)
    from vlmedge.embed_files import image_suffixes

    return image_suffixes()


def collect(inputs: Any, kind: str) -> Inputs:
    """Resolves paths, folders, tables and URIs into an ``Inputs`` (local paths made absolute)."""
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    if not isinstance(inputs, (list, tuple)) or not inputs:
        raise InputError("Give at least one input: files, folders, or Parquet/CSV files of paths or captions.")
    suffixes = media_suffixes(kind)
    found = Inputs()
    for raw in inputs:
        if not isinstance(raw, (str, os.PathLike)):
            raise InputError(f"Inputs must be paths, not {type(raw).__name__}; for data in memory build a "
                             "ray.data Dataset with a 'path', 'bytes' or 'text' column.")
        name = os.fspath(raw)
        suffix = _suffix(name)
        if suffix in TABLE_SUFFIXES or (kind == "text" and suffix in TEXT_SUFFIXES):
            found.tables.append(name if _is_uri(name) else os.path.abspath(name))
        elif _is_uri(name):
            found.files.append(name)
        elif os.path.isdir(name):
            root = Path(name).resolve()
            hits = [p for p in root.rglob("*") if p.suffix.lower() in suffixes and p.is_file()
                    and not any(part.startswith(".") for part in p.relative_to(root).parts)]
            found.files.extend(str(p) for p in sorted(hits, key=lambda p: p.relative_to(root).parts))
        elif os.path.isfile(name):
            found.files.append(os.path.abspath(name))
        else:
            found.missing.append(os.path.abspath(name))
    if found.tables and (found.files or found.missing):
        raise InputError("Give either media files and folders or tables (.parquet/.csv) of paths or captions, not both.")
    if len({_suffix(t) for t in found.tables}) > 1:
        raise InputError("Give tables of one format at a time (all .parquet, all .csv or all .txt).")
    if kind == "text" and not found.tables:
        raise InputError("Captions come from a .parquet or .csv file with a 'text' (or 'caption') column, "
                         "or a .txt file with one caption per line.")
    if not (found.files or found.missing or found.tables):
        raise InputError(f"No {kind} files found in {', '.join(map(os.fspath, inputs))}.")
    return found


def input_column(job: BulkJob, columns: Iterable[str] | None) -> str:
    """The column that holds the inputs: the job's ``column``, else ``bytes`` (files read by
    Ray), ``text``/``caption`` (captions) or ``path`` (paths of media files)."""
    if columns is None:
        raise InputError("The input Dataset is empty (it has no rows and so no columns).")
    columns = list(columns)
    if job.column is not None:
        if job.column not in columns:
            raise InputError(f"The input has no column {job.column!r}; its columns are {', '.join(columns)}.")
        return job.column
    wanted = TEXT_COLUMNS if job.kind == "text" else ("bytes",) + PATH_COLUMNS + ("image",) * (job.kind == "image")
    for name in wanted:
        if name in columns:
            return name
    raise InputError(f"The input has columns {', '.join(columns)}; {job.method} reads a "
                     f"{' or '.join(repr(w) for w in wanted)} column (or name one with column=...).")


# -- stage 1: preprocessing ------------------------------------------------------------------


def preprocess_batch(batch: dict[str, np.ndarray], job: BulkJob) -> dict[str, np.ndarray]:
    """Decodes and preprocesses one batch of inputs; runs in a CPU task.

    The input column (``bytes`` from Ray's binary reader, ``path``, ``image`` arrays, or
    ``text``) becomes model input in ``_``-prefixed work columns; every other column passes
    through (``bytes`` is dropped). A row that cannot be read gets its message in ``_error``
    and zeros (or an empty array) as features, so one bad file costs only its own row.
    """
    column = input_column(job, batch)
    values = batch[column]
    out = {k: v for k, v in batch.items() if k not in ("bytes", "image")}
    errors = np.array([_null_message(batch, column, i) if v is None else "" for i, v in enumerate(values)],
                      dtype=object)
    if job.kind == "image":
        out["_pixels"] = _preprocess_images(batch, column, job, errors)
    elif job.kind == "audio":
        out["_features"], out["duration"] = _preprocess_audio(batch, column, job, errors)
    else:
        out["_input_ids"], out["_attention_mask"] = _preprocess_texts(values, job, errors)
    out["_error"] = errors
    return out


def _null_message(batch: dict[str, Any], column: str, i: int) -> str:
    if column == "bytes" and "path" in batch:
        return f"File {batch['path'][i]} does not exist; check the path."
    if column in TEXT_COLUMNS:
        return "The caption is missing (null)."
    return f"The {column} of this row is missing (null)."


def _source(value: Any, column: str, cwd: str) -> Any:
    """A cell of the input column as something load_image / load_audio reads."""
    if column == "bytes" or column == "image" or not isinstance(value, str):
        return value
    return value if os.path.isabs(value) or _is_uri(value) else os.path.join(cwd, value)


def _message(exc: BaseException, batch: dict[str, Any] | None = None, column: str = "", i: int = 0) -> str:
    """The error's message; for bytes read from a file, worded as the pipeline words it
    for that file's path."""
    message = str(exc) or type(exc).__name__
    if batch is not None and column == "bytes" and "path" in batch:
        path = batch["path"][i]
        message = message.replace("The image given as bytes", f"Image file {path}")
        message = message.replace("The audio bytes", f"Audio file {path}").replace("the audio bytes", f"audio file {path}")
    return message


def _preprocess_images(batch: dict[str, Any], column: str, job: BulkJob, errors: np.ndarray) -> np.ndarray:
    from vlmedge.preprocess.image import ImagePreprocessSpec, load_image, preprocess_images

    values = batch[column]
    spec = ImagePreprocessSpec.from_dict(job.preprocess["image"])
    height, width = spec.output_size
    shape = (3, height, width) if spec.layout == "NCHW" else (height, width, 3)
    pixels = np.zeros((len(values),) + shape, dtype=np.float32)
    for i, value in enumerate(values):
        if errors[i]:
            continue
        try:
            pixels[i] = preprocess_images([load_image(_source(value, column, job.cwd))], spec)[0]
        except (VlmedgeError, OSError, ValueError, MemoryError) as exc:
            errors[i] = _message(exc, batch, column, i)
    return pixels


def _preprocess_audio(batch: dict[str, Any], column: str, job: BulkJob,
                      errors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per clip: the (windows, frames, mel bins) features of its model windows, exactly as
    AudioTagger cuts and computes them, and its duration in seconds."""
    from vlmedge.preprocess.audio import AudioPreprocessSpec, fbank, load_audio, resample, split_windows

    values = batch[column]
    spec = AudioPreprocessSpec.from_dict(job.preprocess["audio"])
    features = np.empty(len(values), dtype=object)
    durations = np.zeros(len(values), dtype=np.float64)
    for i, value in enumerate(values):
        features[i] = np.zeros((0, spec.max_length, spec.num_mel_bins), dtype=np.float32)
        if errors[i]:
            continue
        try:
            wave, rate = load_audio(_source(value, column, job.cwd))
            durations[i] = wave.size / rate
            windows = split_windows(resample(wave, rate, spec.sampling_rate), spec, job.options.get("window_hop"))
            features[i] = np.stack([fbank(segment, spec) for _, _, segment in windows])
        except (VlmedgeError, OSError, ValueError, MemoryError) as exc:
            errors[i] = _message(exc, batch, column, i)
    return features, durations


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


def _preprocess_texts(values: np.ndarray, job: BulkJob, errors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    tokenizer = _tokenizer(job)
    texts = []
    for i, value in enumerate(values):
        if isinstance(value, str):
            texts.append(value)
        else:
            errors[i] = errors[i] or f"The caption is a {type(value).__name__}, not text."
            texts.append("")
    encoded = tokenizer.encode(texts)
    ids = np.asarray(encoded["input_ids"])
    mask = np.asarray(encoded["attention_mask"]) if "attention_mask" in encoded else np.ones_like(ids)
    return ids, mask


# -- stage 2: inference ----------------------------------------------------------------------


class BatchPredictor:
    """Loads the artifact once and turns preprocessed batches into result columns.

    The postprocessing is the pipeline's own (the same activations, pooling, normalisation
    and ranking, in the same dtypes), so each row equals what the single-process pipeline
    gives for that input.
    """

    def __init__(self, job: BulkJob, artifact: str | None = None) -> None:
        import vlmedge

        self.job = job
        self.pipeline = vlmedge.load(artifact or job.artifact, backend=job.backend, device=job.device,
                                     precision=job.precision, **job.session_options)
        manifest = self.pipeline.model.artifact.manifest
        self._outputs = {graph: [o["name"] for o in g["outputs"]] for graph, g in manifest["graphs"].items()}
        self._text_matrix = None
        if job.task == "clip" and job.method == "classify":
            labels, templates = job.options["labels"], job.options["templates"]
            matrix = self.pipeline.text_embeddings(labels, templates)
            self._text_matrix = self.pipeline._check_text_embeddings(matrix, len(labels))  # as Clip.logits does

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        errors = [str(e) if e else None for e in batch["_error"]]
        ok = np.array([e is None for e in errors], dtype=bool)
        results = self._infer(batch, ok) if ok.any() else {}
        out = {k: v for k, v in batch.items() if k not in _WORK_COLUMNS and k not in RESULT_COLUMNS}
        rows = np.flatnonzero(ok)
        for name in self.job.outputs:
            if name == "error":
                out["error"] = errors
            elif name == "duration":
                out["duration"] = [float(d) if good else None for d, good in zip(batch["duration"], ok)]
            else:
                column: list[Any] = [None] * len(ok)
                for row, value in zip(rows, results.get(name, [])):
                    column[row] = value
                out[name] = column
        return out

    def _session(self, graph: str | None = None):
        sessions = self.pipeline.model.sessions
        graph = graph or next(iter(sessions))
        return graph, sessions[graph]

    @staticmethod
    def _run(session: Any, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """session.run in chunks no larger than the pipelines use (and the backend accepts)."""
        from vlmedge.tasks.base import MAX_BATCH

        size = MAX_BATCH if session.batch_range is None else max(1, min(MAX_BATCH, session.batch_range[1]))
        n = len(next(iter(feeds.values())))
        parts = [session.run({k: v[start:start + size] for k, v in feeds.items()}) for start in range(0, n, size)]
        return {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}

    def _infer(self, batch: dict[str, np.ndarray], ok: np.ndarray) -> dict[str, list[Any]]:
        method, task = self.job.method, self.job.task
        if task == "audio-classification":
            return self._tag(batch, ok)
        if method == "embed_texts":
            ids, mask = batch["_input_ids"][ok], batch["_attention_mask"][ok]
            graph, session = self._session("text")
            feeds = {"input_ids": ids, "attention_mask": mask}
            raw = self._run(session, {i.name: feeds[i.name] for i in session.inputs})[self._outputs[graph][0]]
            from vlmedge.tasks.clip import l2_normalize

            return {"embedding": list(l2_normalize(raw.astype(np.float32, copy=False)))}
        pixels = np.ascontiguousarray(batch["_pixels"][ok], dtype=np.float32)
        graph, session = self._session("image" if task == "clip" else None)
        raw = self._run(session, {session.inputs[0].name: pixels})
        if task == "image-classification":
            return self._ranked(self._probabilities(raw[self._outputs[graph][0]]))
        if task == "image-embedding":
            return {"embedding": list(self._pool(raw))}
        from vlmedge.tasks.clip import l2_normalize

        embeddings = l2_normalize(raw[self._outputs[graph][0]].astype(np.float32, copy=False))
        if method == "embed_images":
            return {"embedding": list(embeddings)}
        return self._ranked(self._zero_shot(embeddings), labels=self.job.options["labels"])

    def _probabilities(self, logits: np.ndarray) -> np.ndarray:
        """ImageClassifier.probabilities on raw logits."""
        from vlmedge.tasks.base import sigmoid, softmax

        logits = logits.astype(np.float32, copy=False)
        return sigmoid(logits) if self.pipeline.activation == "sigmoid" else softmax(logits)

    def _pool(self, raw: dict[str, np.ndarray]) -> np.ndarray:
        """ImageEncoder.embed on raw outputs."""
        from vlmedge.tasks.encoder import l2_normalize

        outputs = {name: value.astype(np.float32, copy=False) for name, value in raw.items()}
        embeddings = self.pipeline._pool(outputs, self.job.options["pooling"])
        return l2_normalize(embeddings) if self.job.options["normalize"] else embeddings

    def _zero_shot(self, image_embeddings: np.ndarray) -> np.ndarray:
        """Clip.probabilities on normalised image embeddings."""
        from vlmedge.tasks.base import sigmoid, softmax

        clip = self.pipeline
        logits = clip.logit_scale * (image_embeddings.astype(np.float64) @ self._text_matrix.T) + clip.logit_bias
        logits = logits.astype(np.float32).astype(np.float64)
        probs = softmax(logits) if clip.scoring == "softmax" else sigmoid(logits)
        return probs.astype(np.float32)

    def _ranked(self, probs: np.ndarray, labels: Sequence[str] | None = None) -> dict[str, list[Any]]:
        """The top_k labels per row, best first, as ImageClassifier.classify / Clip.zero_shot rank them."""
        labels = self.pipeline.labels if labels is None else labels
        k = min(int(self.job.options["top_k"]), probs.shape[1])
        out: dict[str, list[Any]] = {"labels": [], "indices": [], "scores": []}
        for row in probs:
            order = np.argsort(-row, kind="stable")[:k]
            out["labels"].append([labels[i] for i in order])
            out["indices"].append([int(i) for i in order])
            out["scores"].append([float(row[i]) for i in order])
        return out

    def _tag(self, batch: dict[str, np.ndarray], ok: np.ndarray) -> dict[str, list[Any]]:
        """AudioTagger.tag on precomputed window features: all windows of the batch run
        together, each clip's window scores are aggregated and ranked."""
        from vlmedge.tasks.base import MAX_BATCH, chunks

        tagger = self.pipeline
        clips = [np.asarray(f, dtype=np.float32) for f, good in zip(batch["_features"], ok) if good]
        segments = [window for clip in clips for window in clip]
        scores = np.concatenate([tagger._activate(tagger.logits(np.stack(part)))
                                 for part in chunks(segments, MAX_BATCH)])
        options = self.job.options
        out: dict[str, list[Any]] = {"labels": [], "indices": [], "scores": []}
        offset = 0
        for clip in clips:
            aggregate = tagger._aggregate(scores[offset:offset + len(clip)], options["aggregate"])
            offset += len(clip)
            tags = tagger._ranked(aggregate, options["top_k"], options["threshold"])
            out["labels"].append([t.label for t in tags])
            out["indices"].append([t.index for t in tags])
            out["scores"].append([t.score for t in tags])
        return out


# -- the local engine ------------------------------------------------------------------------


def read_table(path: str, fmt: str, job: BulkJob) -> dict[str, list[Any]]:
    """A Parquet / CSV / text table as columns, read the way the Ray engine reads it."""
    import pyarrow.csv as pa_csv

    if fmt == "text":
        lines = Path(path).read_bytes().decode("utf-8").splitlines()
        return {"text": [line for line in lines if line.strip()]}
    if fmt == "parquet":
        import pyarrow.parquet as pq

        table = pq.read_table(path)
    else:
        table = pa_csv.read_csv(path, convert_options=csv_convert_options())
    return table.to_pydict()


def csv_convert_options():
    """Path and caption columns of a CSV are text, even when a value looks like a number."""
    import pyarrow as pa
    import pyarrow.csv as pa_csv

    names = PATH_COLUMNS + TEXT_COLUMNS + ("image", "audio")
    return pa_csv.ConvertOptions(column_types={name: pa.string() for name in names})


def local_batches(job: BulkJob, inputs: Inputs, batch_size: int) -> Iterator[dict[str, list[Any]]]:
    """Input rows in the engine's order: files, then named files that do not exist; or the
    rows of each table in turn."""
    if inputs.tables:
        rows: dict[str, list[Any]] = {}
        for table in inputs.tables:
            for name, values in read_table(table, inputs.table_format, job).items():
                rows.setdefault(name, []).extend(values)
        n = len(next(iter(rows.values()), []))
        for start in range(0, n, batch_size):
            yield {name: values[start:start + batch_size] for name, values in rows.items()}
        return
    files = inputs.files + inputs.missing
    for start in range(0, len(files), batch_size):
        yield {"path": files[start:start + batch_size]}


def run_local(job: BulkJob, inputs: Inputs, batch_size: int = 32, progress=None) -> "Any":
    """The single-process engine: the pipeline's public methods (classify, embed, embed_images,
    embed_texts, zero_shot, tag) batch by batch; an input that fails is retried alone and,
    if it fails again, reported in ``error``. Returns a pyarrow Table."""
    import vlmedge

    if batch_size < 1:
        raise InputError(f"batch_size must be at least 1, not {batch_size}.")
    pipeline = vlmedge.load(job.artifact, backend=job.backend, device=job.device, precision=job.precision,
                            **job.session_options)
    call = _public_call(job, pipeline)
    tables = []
    for batch in local_batches(job, inputs, batch_size):
        column = input_column(job, batch)
        values = [_source(v, column, job.cwd) if v is not None else None for v in batch[column]]
        results = _call_isolated(call, values)
        out = {k: v for k, v in batch.items() if k != "bytes"}
        for name in job.outputs:
            out[name] = [None if isinstance(r, _Failed) else r.get(name) for r in results] if name != "error" \
                else [r.message if isinstance(r, _Failed) else None for r in results]
        tables.append(to_arrow(out, job))
        if progress is not None:
            progress(len(values))
    import pyarrow as pa

    if not tables:
        raise InputError("The inputs hold no rows.")
    return pa.concat_tables(tables)


@dataclasses.dataclass
class _Failed:
    message: str


def _call_isolated(call, values: list[Any]) -> list[Any]:
    """Runs the batch; if any input fails, runs each alone so that only it is reported."""
    if all(v is not None for v in values):
        try:
            return call(values)
        except (VlmedgeError, OSError, ValueError, MemoryError):
            pass
    results: list[Any] = []
    for value in values:
        try:
            if value is None:
                raise InputError("The input is missing (null).")
            results.extend(call([value]))
        except (VlmedgeError, OSError, ValueError, MemoryError) as exc:
            results.append(_Failed(_message(exc)))
    return results


def _public_call(job: BulkJob, pipeline: Any):
    """values -> one result dict per value, through the pipeline's public API."""
    options = job.options

    def ranked(predictions) -> dict[str, Any]:
        return {"labels": [p.label for p in predictions], "indices": [p.index for p in predictions],
                "scores": [p.score for p in predictions]}

    if job.task == "image-classification":
        return lambda values: [ranked(p) for p in pipeline.classify(values, top_k=options["top_k"])]
    if job.task == "image-embedding":
        return lambda values: [{"embedding": e} for e in pipeline.embed(values, pooling=options["pooling"],
                                                                         normalize=options["normalize"])]
    if job.task == "audio-classification":
        def tag(values):
            clips = pipeline.tag(values, top_k=options["top_k"], threshold=options["threshold"],
                                 window_hop=options["window_hop"], aggregate=options["aggregate"])
            return [{**ranked(c.tags), "duration": c.duration} for c in clips]
        return tag
    if job.method == "embed_images":
        return lambda values: [{"embedding": e} for e in pipeline.embed_images(values)]
    if job.method == "embed_texts":
        def embed_texts(values):
            for v in values:
                if not isinstance(v, str):
                    raise InputError(f"The caption is a {type(v).__name__}, not text.")
            return [{"embedding": e} for e in pipeline.embed_texts(values)]
        return embed_texts
    matrix = pipeline.text_embeddings(options["labels"], options["templates"])
    return lambda values: [ranked(p) for p in pipeline.zero_shot(values, options["labels"], options["templates"],
                                                                 top_k=options["top_k"], text_embeddings=matrix)]


# -- results as Arrow ------------------------------------------------------------------------


def result_types(job: BulkJob) -> dict[str, Any]:
    import pyarrow as pa

    return {"labels": pa.list_(pa.string()), "indices": pa.list_(pa.int32()), "scores": pa.list_(pa.float32()),
            "duration": pa.float64(), "embedding": pa.list_(pa.float32()), "error": pa.string()}


def to_arrow(columns: dict[str, Any], job: BulkJob):
    """Result columns as a pyarrow Table with fixed types (so every batch has one schema);
    passed-through input columns keep their own types."""
    import pyarrow as pa

    types = result_types(job)
    arrays, names = [], []
    for name, values in columns.items():
        if name in types:
            if name == "embedding":
                values = [None if v is None else np.asarray(v, dtype=np.float32) for v in values]
            arrays.append(pa.array(list(values), type=types[name]))
        elif isinstance(values, np.ndarray) and values.ndim > 1:
            from ray.data.extensions import ArrowTensorArray

            arrays.append(ArrowTensorArray.from_numpy(values))
        else:
            arrays.append(pa.array(list(values) if isinstance(values, np.ndarray) else values))
        names.append(name)
    return pa.Table.from_arrays(arrays, names=names)


def embeddings_matrix(table: Any) -> np.ndarray:
    """The ``embedding`` column of the rows without an error as one (N, D) float32 array."""
    column = table.column("embedding").to_pylist()
    rows = [np.asarray(v, dtype=np.float32) for v in column if v is not None]
    return np.stack(rows) if rows else np.zeros((0, 0), dtype=np.float32)


def write_parquet(batches: Iterable[Any], out: str | os.PathLike) -> tuple[Path, int]:
    """Writes pyarrow tables (or record batches) to one Parquet file, streaming, under a
    temporary name that is renamed into place only when complete. Returns (path, rows)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    writer = None
    rows = 0
    try:
        for batch in batches:
            table = batch if isinstance(batch, pa.Table) else pa.Table.from_batches([batch])
            if writer is None:
                schema = table.schema
                writer = pq.ParquetWriter(tmp, schema)
            elif table.schema != schema:
                table = table.cast(schema)
            writer.write_table(table)
            rows += table.num_rows
        if writer is None:
            raise InputError("There were no results to write.")
        writer.close()
        writer = None
        os.replace(tmp, out)
    finally:
        if writer is not None:
            writer.close()
        tmp.unlink(missing_ok=True)
    return out, rows
