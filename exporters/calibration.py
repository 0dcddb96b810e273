"""Calibration and evaluation data: user files -> per-graph model inputs.

Files are preprocessed by the artifact's own preprocessing (vlmedge.preprocess, the code
the runtime runs), so a quantizer calibrates on exactly what the deployed model will see.

- calibration: a folder of images or audio clips (searched recursively; .txt files in it
  are read as captions), or a text file of captions, one per line; a seeded random subset
  of `size` items of each kind is used.
- evaluation: a folder with one sub-folder per class, named after the model's labels
  ("tabby cat", "tabby_cat" and "Tabby-Cat" all match the label "tabby cat").
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

from vlmedge.errors import ExportError, InputError, UsageError
from vlmedge.exporters.samples import AUDIO_SUFFIXES, IMAGE_SUFFIXES
from vlmedge.exporters.spec import ExportSpec, GraphSpec
from vlmedge.parity import feed_batches
from vlmedge.preprocess import visible_paths

DEFAULT_CALIBRATION_SIZE = 300
TEXT_SUFFIXES = (".txt",)
# graph input names each kind of data produces
KIND_INPUTS = {"image": {"pixel_values"}, "audio": {"input_values"},
               "text": {"input_ids", "attention_mask", "token_type_ids"}}
_CHUNK = 32  # files decoded and preprocessed at once
# one input's rows: an (N, ...) array, or a list of N arrays where the rows differ in shape
Feed = np.ndarray | list[np.ndarray]


def graph_kind(graph: GraphSpec) -> str | None:
    """Which kind of data (image, audio, text) a graph's inputs are made from."""
    names = set(graph.input_names)
    return next((kind for kind, produced in KIND_INPUTS.items() if names <= produced), None)


def list_files(folder: Path, suffixes: tuple[str, ...]) -> list[Path]:
    """The files of these suffixes under folder, hidden ones left out (as `vlmedge embed` does)."""
    return sorted(p for p in visible_paths(folder) if p.is_file() and p.suffix.lower() in suffixes)


def _subset(items: list[Any], size: int | None, seed: int = 0) -> list[Any]:
    if size is None or len(items) <= size:
        return items
    keep = np.sort(np.random.default_rng(seed).choice(len(items), size=size, replace=False))
    return [items[i] for i in keep]


class Preprocessor:
    """The artifact's preprocessing for one kind of data, batch by batch."""

    def __init__(self, spec: ExportSpec, kind: str) -> None:
        if kind not in spec.preprocess:
            raise ExportError(f"This model takes no {kind} input (it takes: {', '.join(spec.preprocess)}).")
        self.kind = kind
        self.spec = spec
        config = spec.preprocess[kind]
        if kind == "image":
            from vlmedge.preprocess.image import ImagePreprocessSpec

            self._image = ImagePreprocessSpec.from_dict(config)
        elif kind == "audio":
            from vlmedge.preprocess.audio import AudioPreprocessSpec

            self._audio = AudioPreprocessSpec.from_dict(config)
        else:
            from vlmedge.preprocess.text import TextPreprocessSpec, TextTokenizer

            text_spec = TextPreprocessSpec.from_dict(config)
            source = spec.extra_files.get(text_spec.tokenizer_file)
            if source is None:
                raise ExportError("This model's text preprocessing has no tokenizer file; it cannot read captions.")
            self._tokenizer = TextTokenizer(source, text_spec)

    def __call__(self, items: list[Any]) -> dict[str, Feed]:
        """Files (or captions) -> {input name: batch}; raises InputError on an unreadable item."""
        if self.kind == "image":
            from vlmedge.preprocess.image import load_image, preprocess_images

            return {"pixel_values": preprocess_images([load_image(p) for p in items], self._image)}
        if self.kind == "audio":
            from vlmedge.preprocess.audio import fbank, load_audio_at

            features = []
            for path in items:
                features.append(fbank(load_audio_at(path, self._audio.sampling_rate)[0], self._audio))
            return {"input_values": _stacked(features)}
        return dict(self._tokenizer.encode(list(items)))


def _stacked(rows: list[np.ndarray]) -> Feed:
    """One (N, ...) array of rows of one shape, else the list of rows: a raw-waveform model
    takes a clip shorter than its window at the clip's own length, so such rows differ
    (vlmedge.parity.feed_batches batches them by shape)."""
    return np.stack(rows) if len({row.shape for row in rows}) == 1 else list(rows)


def _preprocess_all(items: list[Any], preprocess: Preprocessor, say: Callable[[str], None]) -> tuple[dict[str, Feed], list[int]]:
    """Preprocesses items in chunks; unreadable ones are skipped (and counted). Returns the
    batch and the indices of the items that made it."""
    parts: dict[str, list[np.ndarray]] = {}
    kept: list[int] = []
    skipped: list[str] = []
    for start in range(0, len(items), _CHUNK):
        chunk = list(range(start, min(start + _CHUNK, len(items))))
        try:
            batches = [(chunk, preprocess([items[i] for i in chunk]))]
        except InputError:  # find the bad ones one by one
            batches = []
            for i in chunk:
                try:
                    batches.append(([i], preprocess([items[i]])))
                except InputError as exc:
                    skipped.append(f"{items[i]}: {exc}")
        for indices, batch in batches:
            kept.extend(indices)
            for name, value in batch.items():
                parts.setdefault(name, []).append(value)
    if skipped:
        say(f"skipped {len(skipped)} unreadable file(s), e.g. {skipped[0]}")
    return {name: _stacked([row for part in values for row in part]) for name, values in parts.items()}, kept


def _match_dtypes(feeds: dict[str, Feed], graph: GraphSpec, spec: ExportSpec) -> dict[str, Feed]:
    reference = spec.parity_feeds.get(graph.name, {})
    out = {}
    for name in graph.input_names:
        if name not in feeds:
            raise ExportError(f"The {graph.name} graph takes '{name}', which its preprocessing does not make.")
        value = feeds[name]
        if name in reference:
            dtype = reference[name].dtype
            value = [row.astype(dtype, copy=False) for row in value] if isinstance(value, list) \
                else value.astype(dtype, copy=False)
        out[name] = value
    return out


def _captions(files: list[Path]) -> list[str]:
    lines = []
    for file in files:
        lines += [line.strip() for line in file.read_text(encoding="utf-8", errors="replace").splitlines()]
    return [line for line in lines if line]


def calibration_feeds(path: str | Path, spec: ExportSpec, size: int = DEFAULT_CALIBRATION_SIZE, seed: int = 0,
                      say: Callable[[str], None] = lambda message: None) -> dict[str, dict[str, Feed]]:
    """{graph: {input: array}} for every graph the data at `path` can feed.

    Args:
        path: a folder of images or audio files, or a text file of captions.
        spec: the export's spec; its preprocessing and graph inputs decide what is made.
        size: at most this many items (a seeded random subset of a bigger set).
    """
    path = Path(path).expanduser()
    if size < 1:
        raise ExportError(f"--calibration-size must be at least 1, not {size}.")
    if path.is_file() and path.suffix.lower() in TEXT_SUFFIXES:
        data = {"text": _subset(_captions([path]), size, seed)}
    elif path.is_dir():  # a CLIP model's folder may hold images and caption files for its two towers
        data = {"image": _subset(list_files(path, IMAGE_SUFFIXES), size, seed),
                "audio": _subset(list_files(path, AUDIO_SUFFIXES), size, seed),
                "text": _subset(_captions(list_files(path, TEXT_SUFFIXES)), size, seed)}
    else:
        raise ExportError(
            f"Calibration data {path} is neither a folder of images or audio files nor a .txt file of captions."
        )
    feeds: dict[str, dict[str, Feed]] = {}
    for graph in spec.graphs:
        kind = graph_kind(graph)
        items = data.get(kind or "", [])
        if not items:
            continue
        batch, kept = _preprocess_all(items, Preprocessor(spec, kind), say)
        if kept:
            feeds[graph.name] = _match_dtypes(batch, graph, spec)
            say(f"[{graph.name}] calibration: {len(kept)} {kind} item(s) from {path}")
    if not feeds:
        wanted = sorted({graph_kind(g) or "?" for g in spec.graphs})
        other = {kind: len(items) for kind, items in data.items() if items and kind not in wanted}  # the wrong kind
        found = f" (it holds {', '.join(f'{n} {kind} item(s)' for kind, n in other.items())})" if other else ""
        raise ExportError(f"{path} holds no usable {' or '.join(wanted)} data for this model's calibration{found}; "
                          f"give --calibration a folder of {' or '.join(wanted)} files"
                          + (", or a .txt of captions" if "text" in wanted else "") + ".")
    return feeds


def _label_key(name: str) -> str:
    return re.sub(r"[\s_\-]+", " ", name).strip().lower()


@dataclass
class EvalSet:
    """Labelled inputs for one graph: feeds, the label index of each row, and the logits output."""

    feeds: dict[str, Feed]
    labels: np.ndarray
    output: str
    classes: int
    source_accuracy: float | None = None
    source_predictions: np.ndarray | None = None  # the source model's top-1 per row

    def predictions(self, outputs: dict[str, np.ndarray]) -> np.ndarray:
        return outputs[self.output].argmax(axis=-1)

    def accuracy(self, outputs: dict[str, np.ndarray]) -> float:
        return float((self.predictions(outputs) == self.labels).mean())


def evaluation_sets(path: str | Path, spec: ExportSpec, size: int | None = None, seed: int = 0,
                    say: Callable[[str], None] = lambda message: None) -> dict[str, EvalSet]:
    """{graph: EvalSet} from a folder with one sub-folder of files per class label.

    Only graphs with a logits output over the model's labels are evaluated (classifiers);
    for other tasks --eval is refused, so that it is never silently ignored.
    """
    path = Path(path).expanduser()
    if not path.is_dir():
        raise ExportError(f"--eval needs a folder with one sub-folder per class label; {path} is not a folder.")
    graphs = [g for g in spec.graphs if spec.labels and any(kind == "logits" for kind in g.compare.values())]
    if not graphs:
        raise UsageError(f"--eval measures the accuracy of classifiers, by class folder; an artifact for {spec.task} has "
                         "none to measure, so leave --eval out (its int8 files are gated on parity alone).")
    index = {_label_key(label): i for i, label in enumerate(spec.labels)}
    folders = sorted(p for p in path.iterdir() if p.is_dir())
    unknown = [p.name for p in folders if _label_key(p.name) not in index]
    if unknown or not folders:
        shown = ", ".join(spec.labels[:10]) + (" ..." if len(spec.labels) > 10 else "")
        named = ", ".join(unknown[:5]) + (f" and {len(unknown) - 5} more" if len(unknown) > 5 else "")
        raise ExportError(
            f"--eval {path}: " + (f"the folders {named} name no label of this model" if unknown
                                  else "there are no class folders")
            + f"; make one folder per label (labels: {shown})."
        )
    sets: dict[str, EvalSet] = {}
    for graph in graphs:
        kind = graph_kind(graph)
        suffixes = {"image": IMAGE_SUFFIXES, "audio": AUDIO_SUFFIXES}.get(kind or "")
        if suffixes is None:
            continue
        items = [(f, index[_label_key(folder.name)]) for folder in folders for f in list_files(folder, suffixes)]
        items = _subset(items, size, seed)
        if not items:
            raise ExportError(f"--eval {path}: the class folders hold no {kind} files.")
        batch, kept = _preprocess_all([f for f, _ in items], Preprocessor(spec, kind), say)
        if not kept:  # else the missing batch reads as preprocessing that makes no model input
            raise ExportError(f"--eval {path}: all {len(items)} {kind} file(s) in its class folders were unreadable "
                              f"and skipped; put readable {kind} files there.")
        output = next(name for name, kind_ in graph.compare.items() if kind_ == "logits")
        sets[graph.name] = EvalSet(_match_dtypes(batch, graph, spec), np.array([items[i][1] for i in kept]),
                                   output, len(folders))
        say(f"[{graph.name}] evaluation: {len(kept)} labelled {kind} file(s) in {len(folders)} classes from {path}")
    return sets


def rows(feeds: dict[str, Feed]) -> Iterable[dict[str, np.ndarray]]:
    """Batch-1 feed dicts, one per row: what ORT's CalibrationDataReader and NNCF's Dataset take."""
    return feed_batches(feeds, 1)
