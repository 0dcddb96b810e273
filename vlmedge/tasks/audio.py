"""Audio tagging: clips -> decode, downmix, resample -> model windows -> log-mel fbank ->
logits -> per-window scores -> clip-level ranked labels. numpy only (no torch).

A clip longer than the model's window (10.255 s for AudioSet AST, 30 s for Whisper, the
window_seconds chosen at export for raw-waveform models, 10 s by default) is cut
into overlapping windows; each window is scored on its own and the clip's scores are the
max (or mean) of its windows' scores.
"""

from __future__ import annotations

import contextlib
import functools
import math
import numbers
import os
from typing import IO, Any, Iterable, NamedTuple, Sequence, Union, overload

import numpy as np

from vlmedge.errors import ArtifactError, InputError, UsageError
from vlmedge.preprocess.audio import AudioPreprocessSpec, fbank, load_audio_at, split_windows
from vlmedge.preprocess.audio.features import check_clip_length
from vlmedge.preprocess.audio.io import FILE_TYPES
from vlmedge.preprocess.parallel import in_batches, prepare_ordered
from vlmedge.runtimes.select import ModelSessions
from vlmedge.tasks.base import (ACTIVATIONS, Pipeline, Prediction, Several, check_threshold, check_top_k, chunks,
                                manifest_activation, naming_overflows, overflow_rows_as, rank)

AUDIO_TYPES = (*FILE_TYPES, np.ndarray, dict)  # dict: {"raw", "sampling_rate"}
# AUDIO_TYPES for type checkers (tag's overloads): one clip given alone
OneClip = Union[str, "os.PathLike[str]", bytes, bytearray, memoryview, IO[bytes], np.ndarray, dict[str, Any]]
AGGREGATES = ("max", "mean")


# One label and its score (sigmoid for multi-label models, the raw output for regression
# models, softmax otherwise): the same ranked-label type every task returns.
Tag = Prediction


class WindowTags(NamedTuple):
    """The ranked tags of one model window, which spans start..end seconds of the clip."""

    start: float
    end: float
    tags: list[Tag]


class ClipTags(NamedTuple):
    """The result for one clip: clip-level ranked tags (the aggregate of the windows'
    scores), the per-window tags in time order (one window when the clip fits in the model's
    window), and the clip's duration in seconds."""

    tags: list[Tag]
    windows: list[WindowTags]
    duration: float


class PreparedClip(NamedTuple):
    """One clip ready for the model (what `AudioTagger.prepare_clip` makes): its duration in
    seconds, the (W, 2) start/end seconds of its model windows and their (W, *spec.feature_shape)
    float32 features."""

    duration: float
    spans: np.ndarray
    features: np.ndarray


class _Scored(NamedTuple):
    duration: float
    spans: list[tuple[float, float]]
    scores: np.ndarray  # (windows, labels)


def _decoded(item: Any, sample_rate: int | None, spec: AudioPreprocessSpec) -> tuple[np.ndarray, float]:
    """One clip decoded and resampled to the model's rate, and its duration in seconds."""
    return load_audio_at(item, spec.sampling_rate, sample_rate)


def _stacked(features: Sequence[np.ndarray]) -> np.ndarray | list[np.ndarray]:
    """One array when the windows' features share a shape (always, but for raw-waveform
    windows of clips of different lengths), else the list."""
    if len({np.shape(f) for f in features}) <= 1:
        return np.stack(features)
    return list(features)


def _features(waves: Sequence[np.ndarray], spec: AudioPreprocessSpec) -> np.ndarray | list[np.ndarray]:
    return _stacked([fbank(w, spec) for w in waves])


def _spans(windows: list[tuple[float, float, np.ndarray]]) -> list[tuple[float, float]]:
    return [(float(start), float(end)) for start, end, _ in windows]


def _clip_name(item: Any, i: int) -> str:
    """How a message names a clip: its file, else its place in the list."""
    return str(item) if isinstance(item, (str, os.PathLike)) else f"Audio clip {i} of the list"


def _as_clips(audio: Any) -> tuple[list[Any], bool]:
    """One clip or a list of them -> a list; says whether it was a single one."""
    if isinstance(audio, AUDIO_TYPES):
        return [audio], True
    if isinstance(audio, (list, tuple)):
        if not audio:
            raise InputError("Got an empty list; pass at least one audio clip.")
        if all(isinstance(x, numbers.Number) for x in audio):
            raise InputError("Got a list of numbers; pass the samples as a numpy array with sample_rate=... .")
        return list(audio), False
    raise InputError(
        f"Unsupported audio input {type(audio).__name__}; pass a path, the bytes of an audio file, "
        "a numpy array with sample_rate, {\"raw\": array, \"sampling_rate\": rate}, or a list of them."
    )


class AudioTagger(Pipeline):
    """Tags audio clips with an audio-classification artifact (AST, Whisper or a raw-waveform model)."""

    task = "audio-classification"
    # threads that decode, resample and compute features while the model runs (None:
    # vlmedge.preprocess.parallel.DEFAULT_WORKERS; 1: serially)
    decode_workers: int | None = None

    def __init__(self, model: ModelSessions) -> None:
        self.model = model
        manifest = model.artifact.manifest
        if "audio" not in manifest["preprocess"]:
            raise ArtifactError(f"Artifact {model.artifact.root} has no audio preprocessing spec; re-export it.")
        self.spec = AudioPreprocessSpec.from_dict(manifest["preprocess"]["audio"])
        (self._graph, self._session), = model.sessions.items()
        self._input = self._session.inputs[0].name
        self._output = manifest["graphs"][self._graph]["outputs"][0]["name"]
        num_labels = self._session.outputs[0].shape[-1] if self._session.outputs else None
        self.labels: list[str] = manifest.get("labels") or [f"LABEL_{i}" for i in range(num_labels if isinstance(num_labels, int) else 0)]
        if isinstance(num_labels, int) and num_labels >= 0 and num_labels != len(self.labels):
            raise ArtifactError(f"Artifact {model.artifact.root} has {len(self.labels)} labels but its model scores "
                                f"{num_labels} classes; re-export the artifact.")
        self.activation = manifest_activation(manifest, model.artifact.root)

    @property
    def window_seconds(self) -> float:
        """Seconds of audio one model window covers."""
        return self.spec.window_seconds

    # -- input -------------------------------------------------------------------------------

    def decode(self, audio: Any, sample_rate: int | None = None) -> list[tuple[np.ndarray, float]]:
        """Decodes, downmixes and resamples each clip to the model's rate.

        Returns:
            ``(wave, duration_seconds)`` per clip, wave float32 mono at ``spec.sampling_rate``.
        """
        items, single = _as_clips(audio)
        if sample_rate is not None and not any(isinstance(item, (np.ndarray, dict)) for item in items):
            raise InputError(f"sample_rate={sample_rate!r} is the rate of numpy arrays, and none was given: a file "
                             "carries its own rate. Leave sample_rate out, or resample the file.")
        loaded = []
        clips = prepare_ordered(functools.partial(_decoded, sample_rate=sample_rate, spec=self.spec), items,
                                self.decode_workers, ahead=2 * self.batch_size)
        with contextlib.closing(clips):
            for i, item in enumerate(items):
                try:
                    clip = next(clips)
                except InputError as exc:
                    if single or isinstance(item, (str, os.PathLike)):  # a file's message names it
                        raise
                    raise InputError(f"{_clip_name(item, i)}: {exc}") from None
                try:  # before any features, so that the message can name the clip among many
                    check_clip_length(clip[0].size, self.spec)
                except InputError as exc:
                    if single and not isinstance(item, (str, os.PathLike)):  # one array: nothing to name
                        raise
                    raise InputError(f"{_clip_name(item, i)}: {exc}") from None
                loaded.append(clip)
        return loaded

    @staticmethod
    def prepare_clip(audio: Any, spec: AudioPreprocessSpec, sample_rate: int | None = None,
                     window_hop: float | None = None) -> PreparedClip:
        """Decodes one clip and computes its model windows' features, exactly as `tag` does,
        from the artifact's audio preprocessing spec alone (no model): the bulk engines
        prepare clips in one stage (CPU tasks) and call `tag_prepared` in the next."""
        hop = AudioTagger.check_window_hop(window_hop, spec)
        wave, duration = load_audio_at(audio, spec.sampling_rate, sample_rate)
        windows = split_windows(wave, spec, hop)
        spans = np.asarray(_spans(windows), dtype=np.float64).reshape(-1, 2)
        return PreparedClip(duration, spans, _features([segment for _, _, segment in windows], spec))

    def features(self, waves: list[np.ndarray]) -> np.ndarray | list[np.ndarray]:
        """(N, *spec.feature_shape) model input for waveforms already at the model's rate; a
        list when raw-waveform windows differ in length."""
        return _features(waves, self.spec)

    def logits(self, features: np.ndarray | list[np.ndarray]) -> np.ndarray:
        """Raw model outputs for a batch of features, run in chunks (windows of one shape
        together); (N, num_labels) float32."""
        if isinstance(features, list):
            by_shape: dict[tuple[int, ...], list[int]] = {}
            for i, f in enumerate(features):
                by_shape.setdefault(np.shape(f), []).append(i)
            out = np.empty((len(features), len(self.labels)), dtype=np.float32)
            for rows in by_shape.values():
                with overflow_rows_as(rows):
                    out[rows] = self.logits(np.stack([features[i] for i in rows]))
            return out
        outputs = []
        for rows in chunks(range(len(features)), self.batch_size):
            with overflow_rows_as(rows):
                outputs.append(self._session.run({self._input: features[rows.start:rows.stop]})[self._output])
        return np.concatenate(outputs).astype(np.float32, copy=False)

    def _activate(self, logits: np.ndarray) -> np.ndarray:
        return ACTIVATIONS[self.activation](logits)

    # -- scoring -------------------------------------------------------------------------------

    @staticmethod
    def check_window_hop(window_hop: Any, spec: AudioPreprocessSpec) -> float | None:
        """The seconds between window starts (None: the default, half a window); raises
        UsageError unless it lies from one frame (10 ms) to one model window of ``spec``."""
        if window_hop is None:
            return None
        shift = spec.frame_shift / spec.sampling_rate
        if (isinstance(window_hop, bool) or not isinstance(window_hop, numbers.Real)
                or not math.isfinite(window_hop) or not shift <= window_hop <= spec.window_seconds):
            raise UsageError(
                f"window_hop={window_hop!r} must be a number of seconds from {shift:g} (one frame) "
                f"to {spec.window_seconds:g} (one model window)."
            )
        return float(window_hop)

    @staticmethod
    def check_aggregate(aggregate: Any) -> str | None:
        """How the windows' scores make a clip's: one of AGGREGATES, or None (the model's
        default_aggregate), else UsageError."""
        if aggregate is not None and aggregate not in AGGREGATES:
            raise UsageError(f"aggregate={aggregate!r} is not one of {', '.join(AGGREGATES)} (or None).")
        return aggregate

    @property
    def default_aggregate(self) -> str:
        """"max" for a multi-label (sigmoid) model: a tag heard in any window is in the clip;
        "mean" for the others, whose softmax per window sums to 1: the clip's mean does too,
        where the max of each label over the windows summed to one per window."""
        return "max" if self.activation == "sigmoid" else "mean"

    def _aggregate_of(self, aggregate: Any) -> str:
        return self.check_aggregate(aggregate) or self.default_aggregate

    def _score(self, audio: Any, sample_rate: int | None, window_hop: Any) -> tuple[list[_Scored], bool]:
        """Per clip: duration, window spans and per-window scores. Windows of all clips are
        batched together and their features computed one chunk at a time."""
        hop = self.check_window_hop(window_hop, self.spec)
        items, single = _as_clips(audio)
        clips = self.decode(audio, sample_rate)
        windows = [split_windows(wave, self.spec, hop) for wave, _ in clips]
        segments = [segment for clip_windows in windows for _, _, segment in clip_windows]  # views, no copies
        spans = [(duration, _spans(clip_windows)) for (_, duration), clip_windows in zip(clips, windows)]
        features = prepare_ordered(functools.partial(fbank, spec=self.spec), segments, self.decode_workers,
                                   ahead=2 * self.batch_size)
        with contextlib.closing(features), naming_overflows(items, 0, _clip_name):
            return self._scored(spans, (_stacked(batch) for batch in in_batches(features, self.batch_size))), single

    def _scored(self, clips: list[tuple[float, list[tuple[float, float]]]],
                feature_batches: Iterable[np.ndarray | list[np.ndarray]]) -> list[_Scored]:
        """Scores the windows of all clips together, one batch of their features at a time,
        and splits the scores back per (duration, spans); an overflow names the clips (rows)
        whose windows overflowed."""
        clip_of_window = [clip for clip, (_, spans) in enumerate(clips) for _ in spans]
        parts, start = [], 0
        for features in feature_batches:
            with overflow_rows_as(clip_of_window[start:]):
                parts.append(self._activate(self.logits(features)))
            start += len(features)
        scores = np.concatenate(parts)
        results, offset = [], 0
        for duration, spans in clips:
            results.append(_Scored(duration, spans, scores[offset:offset + len(spans)]))
            offset += len(spans)
        return results

    @staticmethod
    def _aggregate(scores: np.ndarray, aggregate: str) -> np.ndarray:
        return scores.max(axis=0) if aggregate == "max" else scores.mean(axis=0)

    def window_probabilities(self, audio: Any, sample_rate: int | None = None,
                             window_hop: float | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per clip: ``(spans, scores)``, spans (W, 2) start/end seconds and scores (W, num_labels)."""
        scored, _ = self._score(audio, sample_rate, window_hop)
        return [(np.asarray(s.spans, dtype=np.float64).reshape(-1, 2), s.scores) for s in scored]

    def probabilities(self, audio: Any, sample_rate: int | None = None, window_hop: float | None = None,
                      aggregate: str | None = None) -> np.ndarray:
        """Clip-level scores, (N, num_labels): the max or mean (aggregate; None: the model's
        default_aggregate) over each clip's windows of the per-window sigmoid (multi-label
        models), softmax, or raw output (regression models, activation "none")."""
        aggregate = self._aggregate_of(aggregate)
        scored, _ = self._score(audio, sample_rate, window_hop)
        return np.stack([self._aggregate(s.scores, aggregate) for s in scored])

    @overload
    def tag(self, audio: OneClip, sample_rate: int | None = None, top_k: int | None = 5,
            threshold: float | None = None, window_hop: float | None = None,
            aggregate: str | None = None) -> ClipTags: ...
    @overload
    def tag(self, audio: Several, sample_rate: int | None = None, top_k: int | None = 5,
            threshold: float | None = None, window_hop: float | None = None,
            aggregate: str | None = None) -> list[ClipTags]: ...

    def tag(self, audio: Any, sample_rate: int | None = None, top_k: int | None = 5,
            threshold: float | None = None, window_hop: float | None = None,
            aggregate: str | None = None) -> ClipTags | list[ClipTags]:
        """Tags one clip or a list of clips.

        Args:
            audio: a path (WAV, FLAC, OGG), the bytes of such a file or a binary file object
                of it, a numpy array (1-D, or 2-D with channels on the smaller axis; integer
                arrays are scaled by their dtype's range), or a list of them.
            sample_rate: the sample rate of numpy arrays in Hz (files carry their own).
            top_k: at most this many tags per clip and per window; None for all.
            threshold: keep only tags whose score is at least this (0..1); refused for a
                regression model (activation "none"), whose scores are raw values.
            window_hop: seconds between window starts for clips longer than one model
                window; default half a window.
            aggregate: "max" or "mean" of the windows' scores for the clip-level tags; None:
                default_aggregate, max for a multi-label (sigmoid) model, else mean.

        Returns:
            A ClipTags for one clip, a list of them for a list.
        """
        top_k = check_top_k(top_k)
        threshold = check_threshold(threshold, self.activation)
        aggregate = self._aggregate_of(aggregate)
        scored, single = self._score(audio, sample_rate, window_hop)
        results = [self._clip_tags(s, top_k, threshold, aggregate) for s in scored]
        return results[0] if single else results

    def tag_prepared(self, clips: Sequence[PreparedClip], top_k: int | None = 5, threshold: float | None = None,
                     aggregate: str | None = None) -> list[ClipTags]:
        """`tag` for clips already prepared by `prepare_clip` (with the window_hop wanted);
        always a list, equal to what `tag` gives for those clips. The windows of all clips
        run through the model together."""
        top_k = check_top_k(top_k)
        threshold = check_threshold(threshold, self.activation)
        aggregate = self._aggregate_of(aggregate)
        if not clips:
            return []
        windows = [np.asarray(window, dtype=np.float32) for clip in clips for window in clip.features]
        spans = [(float(clip.duration), [(float(start), float(end)) for start, end in clip.spans]) for clip in clips]
        batches = (_stacked(batch) for batch in chunks(windows, self.batch_size))
        return [self._clip_tags(s, top_k, threshold, aggregate) for s in self._scored(spans, batches)]

    def _clip_tags(self, scored: _Scored, top_k: int | None, threshold: float | None, aggregate: str) -> ClipTags:
        windows = [WindowTags(start, end, rank(row, self.labels, top_k, threshold))
                   for (start, end), row in zip(scored.spans, scored.scores)]
        clip = self._aggregate(scored.scores, aggregate)
        return ClipTags(rank(clip, self.labels, top_k, threshold), windows, scored.duration)
