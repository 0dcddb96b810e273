"""A served model per task: its endpoints, how one request becomes a batchable job, and how a
batch of jobs runs as one call of the task pipeline (results split back per request).

A job holds its request's inputs already decoded and preprocessed (in the request's own
thread: pixels, tokens, prepared clips, as the bulk engines prepare them), so the batch
runs only the pipeline's `<method>_prepared` call.

A batch key holds everything that changes the model call (endpoint, pooling, zero-shot
labels, audio windowing); options that only trim the answer (top_k, threshold) are applied
per request after one call with the widest setting, which gives the same ranking as
calling the pipeline with each request's own options.
"""

from __future__ import annotations

import base64
import collections
import contextlib
import io
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Hashable

import numpy as np

from vlmedge.errors import InputError, UsageError
from vlmedge.preprocess import READ_ERRORS
from vlmedge.preprocess.parallel import prepare_ordered
from vlmedge.serve.config import Limits
from vlmedge.serve.inputs import Inputs, check_audio, check_image, invalid
from vlmedge.tasks.base import check_threshold, option_default
from vlmedge.tasks.clip import image_embedding_refusal


@dataclass(frozen=True)
class Endpoint:
    """POST /v1/models/{model}/{name}: the fields it takes and the inputs it needs."""

    name: str
    summary: str
    inputs: tuple[str, ...]          # images, audio, texts, labels, templates
    options: tuple[str, ...]
    required: tuple[str, ...]        # at least one of these (exactly one when exclusive)
    exclusive: bool = False

    @property
    def fields(self) -> tuple[str, ...]:
        return self.inputs + self.options + ("timeout_ms",)


@dataclass(frozen=True)
class Job:
    key: Hashable
    inputs: int
    payload: Any


def _ranked(predictions: list[Any], top_k: int | None, threshold: float | None = None) -> list[dict]:
    kept = [p for p in predictions if threshold is None or p.score >= threshold]
    return [p._asdict() for p in (kept if top_k is None else kept[:top_k])]


def _split(items: list[Any], counts: list[int]) -> list[list[Any]]:
    out, start = [], 0
    for n in counts:
        out.append(items[start:start + n])
        start += n
    return out


@contextlib.contextmanager
def _as_invalid_field():
    """A pipeline's refusal of a request option (a UsageError: a value outside its choices; an
    InputError: labels or templates it cannot use), as the protocol's 422 invalid_field."""
    try:
        yield
    except (InputError, UsageError) as exc:
        raise invalid("invalid_field", str(exc)) from None


def _pixels(images: list[bytes], spec: Any) -> np.ndarray:
    """Decodes and preprocesses a request's images (several at once, in its own thread and
    the decode workers): the (N, ...) float32 array the pipelines' `<method>_prepared`
    methods take (as the bulk engines prepare them)."""
    from vlmedge.preprocess.image import load_image, preprocess_images

    def one(item: tuple[int, bytes]) -> np.ndarray:
        i, data = item
        try:
            return preprocess_images([load_image(data)], spec)[0]
        except READ_ERRORS as exc:
            raise invalid("invalid_input", f"images[{i}] could not be decoded: {exc}") from None

    return np.stack(list(prepare_ordered(one, list(enumerate(images)), ahead=len(images))))


def _clips(audio: list[bytes], spec: Any, hop: float | None) -> list[Any]:
    """Decodes a request's clips and computes their model windows' features (several at once)."""
    from vlmedge.tasks.audio import AudioTagger

    def one(item: tuple[int, bytes]) -> Any:
        i, data = item
        try:
            return AudioTagger.prepare_clip(data, spec, window_hop=hop)
        except READ_ERRORS as exc:
            raise invalid("invalid_input", f"audio[{i}] cannot be tagged: {exc}") from None

    return list(prepare_ordered(one, list(enumerate(audio)), ahead=len(audio)))


def _warmup_png() -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (64, 48), (120, 60, 200)).save(buffer, format="PNG")
    return buffer.getvalue()


class ServedModel:
    """One loaded pipeline behind HTTP; subclasses per task."""

    endpoints: dict[str, Endpoint] = {}

    def __init__(self, name: str, pipeline: Any) -> None:
        self.name = name
        self.pipeline = pipeline
        self.task: str = pipeline.task

    # -- what the server calls -------------------------------------------------------------

    def describe(self) -> dict[str, Any]:
        model = self.pipeline.model
        labels = getattr(self.pipeline, "labels", None)
        return {"name": self.name, "task": self.task, "backend": model.backend, "precision": model.precision,
                "provider": model.provider, "labels": list(labels) if labels is not None else None,
                "endpoints": list(self.endpoints)}

    def prepare(self, endpoint: Endpoint, inputs: Inputs, limits: Limits) -> Job:
        """Checks the request (in a request thread, not the model's) and makes its job."""
        given = [name for name in endpoint.required if getattr(inputs, name)]
        needs = " or ".join(endpoint.required)
        if not given:
            raise invalid("missing_input", f"'{endpoint.name}' needs at least one item in {needs}.")
        if endpoint.exclusive and len(given) > 1:
            raise invalid("invalid_field", f"'{endpoint.name}' takes {needs} in one request, not both; "
                                           "send two requests.")
        for i, data in enumerate(inputs.images):
            check_image(data, i, limits)
        return self.job(endpoint.name, inputs, limits)

    def job(self, endpoint: str, inputs: Inputs, limits: Limits) -> Job:
        """The request's batchable job; its files decoded and preprocessed (in its thread)."""
        raise NotImplementedError

    def run(self, key: Hashable, payloads: list[Any]) -> list[dict[str, Any]]:
        """In the model's worker thread: one pipeline call for the whole batch."""
        raise NotImplementedError

    def warm_up(self) -> None:
        """One small call, so that the first request does not pay for lazy initialisation."""
        raise NotImplementedError


class ClassifierModel(ServedModel):
    endpoints = {"classify": Endpoint("classify", "Ranked labels for each image.", ("images",), ("top_k",),
                                      ("images",))}

    def __init__(self, name: str, pipeline: Any) -> None:
        super().__init__(name, pipeline)
        self.default_top_k = option_default(pipeline.classify, "top_k")  # as the Python call's, read once

    def job(self, endpoint: str, inputs: Inputs, limits: Limits) -> Job:
        pixels = _pixels(inputs.images, self.pipeline.spec)
        return Job(("classify",), len(inputs.images), (pixels, inputs.options.get("top_k", self.default_top_k)))

    def run(self, key: Hashable, payloads: list[Any]) -> list[dict[str, Any]]:
        pixels = np.concatenate([batch for batch, _ in payloads])
        top_k = max(k for _, k in payloads)
        ranked = self.pipeline.classify_prepared(pixels, top_k=top_k)
        parts = _split(ranked, [len(batch) for batch, _ in payloads])
        return [{"results": [{"predictions": _ranked(preds, k)} for preds in part]}
                for part, (_, k) in zip(parts, payloads)]

    def warm_up(self) -> None:
        self.pipeline.classify(_warmup_png())


class EncoderModel(ServedModel):
    endpoints = {"embed": Endpoint("embed", "An embedding per image (and CLS attention maps where the model has them).",
                                   ("images",), ("pooling", "normalize", "attention"), ("images",))}

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        info.update(poolings=self.pipeline.poolings, default_pooling=self.pipeline.default_pooling,
                    attention=self.pipeline.has_attention)
        return info

    def job(self, endpoint: str, inputs: Inputs, limits: Limits) -> Job:
        with _as_invalid_field():
            pooling = self.pipeline.resolve_pooling(inputs.options.get("pooling"))
        attention = inputs.options.get("attention", False)
        if attention and not self.pipeline.has_attention:
            raise invalid("invalid_field", f"Model '{self.name}' has no attention maps; leave 'attention' out.")
        key = ("embed", pooling, inputs.options.get("normalize", True), attention)
        pixels = _pixels(inputs.images, self.pipeline.spec)
        return Job(key, len(inputs.images), (pixels, inputs.images if attention else []))

    def run(self, key: Hashable, payloads: list[Any]) -> list[dict[str, Any]]:
        _, pooling, normalize, attention = key
        vectors = self.pipeline.embed_prepared(np.concatenate([p for p, _ in payloads]), pooling=pooling,
                                               normalize=normalize)
        images = [image for _, batch in payloads for image in batch]
        maps = [_attention_png(self.pipeline, image) for image in images] if attention else None
        out = []
        for part in _split(list(range(len(vectors))), [len(p) for p, _ in payloads]):
            answer = {"embeddings": vectors[part].tolist(), "dim": int(vectors.shape[1]), "pooling": pooling,
                      "normalized": normalize}
            if maps is not None:
                answer["attention"] = [maps[i] for i in part]
            out.append(answer)
        return out

    def warm_up(self) -> None:
        self.pipeline.embed(_warmup_png())


def _attention_png(encoder: Any, image: bytes) -> str:
    """ImageEncoder.render_attention's contact sheet as a PNG data URL."""
    with tempfile.TemporaryDirectory(prefix="vlmedge-attention-") as folder:
        path = encoder.render_attention(image, Path(folder) / "attention.png", panel_size=160)
        return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


class ClipModel(ServedModel):
    endpoints = {
        "embed": Endpoint("embed", "L2-normalised embeddings of images or of captions, in one space.",
                          ("images", "texts"), (), ("images", "texts"), exclusive=True),
        "zero-shot": Endpoint("zero-shot", "Each image ranked against the labels (through the templates).",
                              ("images", "labels", "templates"), ("top_k",), ("images",)),
    }
    CACHE_SIZE = 32

    def __init__(self, name: str, pipeline: Any) -> None:
        super().__init__(name, pipeline)
        # (labels, templates) -> label embeddings; used in the worker thread only
        self._label_cache: collections.OrderedDict[tuple, np.ndarray] = collections.OrderedDict()

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        info.update(scoring=self.pipeline.scoring, context_length=self.pipeline.context_length)
        return info

    def job(self, endpoint: str, inputs: Inputs, limits: Limits) -> Job:
        if endpoint == "embed":
            refusal = image_embedding_refusal(self.pipeline.image_reduction) if inputs.images else None
            if refusal:
                raise invalid("invalid_input", refusal)
            if inputs.images:
                return Job(("embed", "images"), inputs.count, _pixels(inputs.images, self.pipeline.image_spec))
            with _as_invalid_field():
                return Job(("embed", "texts"), inputs.count, self.pipeline.tokenizer.encode(inputs.texts))
        if not inputs.labels:
            raise invalid("missing_input", "'zero-shot' needs candidate labels, e.g. \"labels\": [\"cat\", \"dog\"].")
        with _as_invalid_field():  # the pipeline's own checks of labels and templates
            self.pipeline.check_labels(inputs.labels)
            templates = tuple(self.pipeline.check_templates(list(inputs.templates) or None))
        key = ("zero-shot", tuple(inputs.labels), templates)
        pixels = _pixels(inputs.images, self.pipeline.image_spec)
        # every label by default, as the pipeline's zero_shot answers
        return Job(key, len(inputs.images), (pixels, inputs.options.get("top_k", len(inputs.labels))))

    def _label_embeddings(self, labels: tuple, templates: tuple) -> np.ndarray:
        key = (labels, templates)
        if key in self._label_cache:
            self._label_cache.move_to_end(key)
        else:
            self._label_cache[key] = self.pipeline.text_embeddings(list(labels), list(templates))
            while len(self._label_cache) > self.CACHE_SIZE:
                self._label_cache.popitem(last=False)
        return self._label_cache[key]

    def run(self, key: Hashable, payloads: list[Any]) -> list[dict[str, Any]]:
        if key[0] == "embed":
            if key[1] == "images":
                vectors = self.pipeline.embed_images_prepared(np.concatenate(payloads))
                counts = [len(b) for b in payloads]
            else:
                tokens = {name: np.concatenate([t[name] for t in payloads]) for name in payloads[0]}
                vectors = self.pipeline.embed_texts_prepared(tokens)
                counts = [len(t["input_ids"]) for t in payloads]
            parts = _split(list(vectors), counts)
            return [{"embeddings": [v.tolist() for v in part], "dim": int(vectors.shape[1]), "kind": key[1][:-1],
                     "normalized": True} for part in parts]
        _, labels, templates = key
        pixels = np.concatenate([batch for batch, _ in payloads])
        top_k = max(k for _, k in payloads)
        ranked = self.pipeline.zero_shot_prepared(pixels, list(labels), top_k=top_k,
                                                  text_embeddings=self._label_embeddings(labels, templates))
        parts = _split(ranked, [len(batch) for batch, _ in payloads])
        return [{"results": [{"predictions": _ranked(preds, k)} for preds in part]}
                for part, (_, k) in zip(parts, payloads)]

    def warm_up(self) -> None:
        self.pipeline.embed_images(_warmup_png())
        self.pipeline.embed_texts("a photo of a warm-up.")


class AudioModel(ServedModel):
    endpoints = {"tag": Endpoint("tag", "Ranked tags for each clip, per clip and per analysis window.", ("audio",),
                                 ("top_k", "threshold", "window_hop", "aggregate"), ("audio",))}

    def __init__(self, name: str, pipeline: Any) -> None:
        super().__init__(name, pipeline)
        self.default_top_k = option_default(pipeline.tag, "top_k")  # as the Python call's, read once

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        info.update(sample_rate=self.pipeline.spec.sampling_rate, window_seconds=self.pipeline.window_seconds,
                    activation=self.pipeline.activation)
        return info

    def job(self, endpoint: str, inputs: Inputs, limits: Limits) -> Job:
        spec = self.pipeline.spec
        with _as_invalid_field():
            hop = self.pipeline.check_window_hop(inputs.options.get("window_hop"), spec)
            check_threshold(inputs.options.get("threshold"), self.pipeline.activation)  # none for raw scores
        seconds = [check_audio(data, i, limits) for i, data in enumerate(inputs.audio)]
        self._check_windows(seconds, hop, limits)
        key = ("tag", hop, inputs.options.get("aggregate"))  # None: the model's default_aggregate
        trim = (inputs.options.get("top_k", self.default_top_k), inputs.options.get("threshold"))
        return Job(key, len(inputs.audio), (_clips(inputs.audio, self.pipeline.spec, hop), trim))

    def _check_windows(self, seconds: list[float], hop: float | None, limits: Limits) -> None:
        """Refuses, from the files' headers, a request whose clips make more model windows
        than the most clips of the longest duration make at the default hop: each window's
        features are computed and held before the model runs, so a small hop on long clips
        would cost memory and time out of all proportion to the request's size."""
        from vlmedge.preprocess.audio import window_count

        spec = self.pipeline.spec
        windows = sum(window_count(round(s * spec.sampling_rate), spec, hop) for s in seconds)
        most = limits.max_inputs * window_count(round(limits.max_audio_seconds * spec.sampling_rate), spec)
        if windows > most:
            raise invalid("too_many_windows", f"The request's clips make {windows:,} analysis windows at window_hop="
                                              f"{hop:g} s; the limit is {most:,} (what {limits.max_inputs} clips of "
                                              f"{limits.max_audio_seconds:g} s make at the default hop). Raise "
                                              "window_hop or send fewer or shorter clips.", 413)

    def run(self, key: Hashable, payloads: list[Any]) -> list[dict[str, Any]]:
        _, hop, aggregate = key
        clips = [clip for batch, _ in payloads for clip in batch]
        tagged = self.pipeline.tag_prepared(clips, top_k=None, aggregate=aggregate)
        out = []
        for part, (_, (top_k, threshold)) in zip(_split(tagged, [len(b) for b, _ in payloads]), payloads):
            out.append({"results": [{
                "duration": clip.duration,
                "predictions": _ranked(clip.tags, top_k, threshold),
                "windows": [{"start": w.start, "end": w.end, "predictions": _ranked(w.tags, top_k, threshold)}
                            for w in clip.windows],
            } for clip in part]})
        return out

    def warm_up(self) -> None:
        rate = self.pipeline.spec.sampling_rate
        self.pipeline.tag(np.zeros(rate, dtype=np.float32), sample_rate=rate)


def serve_pipeline(name: str, pipeline: Any, max_batch: int) -> ServedModel:
    """The served model for a pipeline: the adapter its task's registry entry names, around a
    copy of the pipeline (sharing its loaded model) whose model calls hold up to `max_batch`
    inputs (--max-batch): a request larger than it runs in several, a batch of it in one."""
    import copy

    from vlmedge.registry import task_named

    served = copy.copy(pipeline)
    served.batch_size = max_batch
    return task_named(pipeline.task, f"Model '{name}'").served_class()(name, served)
