"""What every task pipeline shares: turning inputs into lists and batches, and the
activations over a model's scores."""

from __future__ import annotations

import contextlib
import functools
import inspect
import numbers
import os
from pathlib import Path
from typing import IO, Any, Callable, Iterator, NamedTuple, Sequence, TypeVar, Union

import numpy as np
from PIL import Image

from vlmedge.errors import ArtifactError, InputError, NonFiniteOutputError, UsageError
from vlmedge.preprocess.image import ImagePreprocessSpec, load_image, preprocess_images
from vlmedge.preprocess.parallel import Deferred, in_batches, prepare_ordered

# The largest batch handed to a backend at once unless vlmedge.load's batch_size says
# otherwise (a pipeline's `batch_size`); longer lists are run in chunks.
MAX_BATCH = 32
MAX_BATCH_SIZE = 1 << 20  # beyond any batch a machine holds; a larger number is a mistake
# One image given alone (a result for it alone); a list of them gives a list of results.
# For type checkers (the pipelines' overloads): the runtime checks are as_list's.
OneImage = Union[str, "os.PathLike[str]", bytes, bytearray, memoryview, IO[bytes], Image.Image, np.ndarray]
# Several inputs of any kind (a list or tuple, as as_list and the audio tagger take them; not
# any Sequence: a str is one too, of str)
Several = Union[list[Any], tuple[Any, ...]]


P = TypeVar("P", bound="Pipeline")


class Pipeline:
    """What every task's pipeline shares: its `model` (a ModelSessions: the loaded sessions),
    a one-line repr, and `close()` / `with`, which free the model's memory at once instead of
    when the pipeline is collected (a process that loads one model after another)."""

    model: Any  # runtimes.select.ModelSessions; not imported here, so that no backend loads with this module
    _batch_size: int = MAX_BATCH

    def __repr__(self) -> str:
        closed = ", closed" if all(s.closed for s in self.model.sessions.values()) else ""
        return f"{type(self).__name__}({self.model!r}{closed})"

    def __reduce__(self) -> Any:
        """A pipeline does not travel to another process (pickle, multiprocessing, deepcopy):
        its backend's session lives in this one. Said in one sentence, not as the backend's
        TypeError; a worker loads the artifact itself."""
        raise UsageError(f"A loaded {type(self).__name__} cannot be pickled or copied to another process (its "
                         f"{self.model.backend} session lives in this one); pass the artifact path and call "
                         "vlmedge.load in each worker.")

    def __copy__(self) -> "Pipeline":
        """A second pipeline object sharing this one's loaded model (copy.copy)."""
        copied = object.__new__(type(self))
        copied.__dict__.update(self.__dict__)
        return copied

    def check_graph_feeds(self, graph: str, feeds: dict[str, np.ndarray]) -> None:
        """What the task checks of raw feeds for one of its graphs beyond Session.check_feeds
        (serve's tensor route, where users preprocess themselves): nothing unless a task says."""

    def close(self) -> None:
        """Frees the backend's compiled models; a later call raises UsageError. A model call
        running on another thread ends with its answer first (close waits for it); a call
        over a list that still needs more model calls raises UsageError at the next one.
        Closing twice does nothing."""
        self.model.close()

    @property
    def batch_size(self) -> int:
        """The most inputs (images, captions, audio windows) handed to the backend in one call;
        longer lists run in chunks of this many (vlmedge.load's batch_size; default 32)."""
        return self._batch_size

    @batch_size.setter
    def batch_size(self, value: int) -> None:
        self._batch_size = check_batch_size(value)

    def __enter__(self: P) -> P:
        return self

    def __exit__(self, *_: Any) -> None:
        self.close()


class Prediction(NamedTuple):
    """One ranked label: a class of an image classifier, a zero-shot label, an audio tag."""

    label: str
    index: int
    score: float


def option_default(method: Callable[..., Any], option: str) -> Any:
    """The default of `option` in a pipeline method's own signature (top_k: 5 for classify and
    tag, every label for zero_shot): where the CLI, bulk and serve are given no value, they
    take this one, so that every surface answers as the Python call does."""
    return inspect.signature(method).parameters[option].default


def check_top_k(top_k: Any) -> int | None:
    """The one top_k rule: a positive integer (not a bool), or None for every label."""
    if top_k is None:
        return None
    if isinstance(top_k, bool) or not isinstance(top_k, numbers.Integral) or top_k < 1:
        raise UsageError(f"top_k must be a positive integer (or None for all labels), not {top_k!r}.")
    return int(top_k)


def check_distinct_labels(labels: Sequence[str], noun: str, error: type[Exception]) -> None:
    """No label blank or given twice (`noun`: what a label names, a class or a candidate):
    answers are keyed by label, so two alike, or a blank one, could not be told apart."""
    first: dict[str, int] = {}
    for i, label in enumerate(labels):
        name = label.strip()
        if not name:
            raise error(f"Label {i} is empty; give every {noun} a name.")
        if name in first and labels[first[name]] == label:
            raise error(f"Label {label!r} is given twice (labels {first[name]} and {i}); give each {noun} its "
                        "own name.")
        if name in first:
            raise error(f"Labels {labels[first[name]]!r} and {label!r} (labels {first[name]} and {i}) differ only "
                        f"in the spaces around them; give each {noun} its own name.")
        first[name] = i


def check_flag(name: str, value: Any) -> bool:
    """A yes/no option must be True or False: a string such as "no" is true to Python, so
    it would silently do the opposite of what it says."""
    if not isinstance(value, (bool, np.bool_)):
        raise UsageError(f"{name} must be True or False, not {value!r}.")
    return bool(value)


def check_progress(progress: Any) -> None:
    """A progress option is None or a function that takes each line of text."""
    if not (progress is None or callable(progress)):
        raise UsageError(f"progress must be a function taking a line of text, not {type(progress).__name__}.")


def check_threshold(threshold: Any, activation: str = "softmax") -> float | None:
    """A score from 0 to 1, or None for no threshold. A model scored with the activation
    "none" (regression) gives raw values, not scores from 0 to 1, so it takes no threshold."""
    if threshold is not None and (isinstance(threshold, bool) or not isinstance(threshold, numbers.Real)
                                  or not 0.0 <= threshold <= 1.0):
        raise UsageError(f"threshold must be a score from 0 to 1 (or None), not {threshold!r}.")
    if threshold is not None and activation == "none":
        raise UsageError("threshold applies to scores from 0 to 1, but this model's scores are raw regression "
                         "outputs (activation none); leave threshold out and use top_k.")
    return None if threshold is None else float(threshold)


def rank(scores: np.ndarray, labels: Sequence[str], top_k: int | None = None,
         threshold: float | None = None) -> list[Prediction]:
    """One row of scores as predictions, best first (ties keep label order), at most
    top_k of them (None: all) and only those scoring at least threshold."""
    order = np.argsort(-scores, kind="stable")
    if threshold is not None:
        order = order[scores[order] >= threshold]
    if top_k is not None:
        order = order[:top_k]
    return [Prediction(labels[i], int(i), float(scores[i])) for i in order]


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """Rows divided by their L2 norm, computed in float64, returned as float32 (a zero row stays zero)."""
    x64 = np.asarray(x, dtype=np.float64)
    norms = np.linalg.norm(x64, axis=-1, keepdims=True)
    return (x64 / np.maximum(norms, 1e-300)).astype(np.float32)


def as_list(inputs: Any, single_types: tuple[type, ...]) -> tuple[list[Any], bool]:
    """Turns one input or a list of them into a list; says whether it was a single one."""
    if isinstance(inputs, single_types) or (isinstance(inputs, np.ndarray) and inputs.ndim <= 3):
        return [inputs], True
    if isinstance(inputs, (list, tuple)):
        if not inputs:
            raise InputError("Got an empty list; pass at least one input.")
        return list(inputs), False
    if isinstance(inputs, np.ndarray):
        raise InputError(
            f"Got an array of shape {list(inputs.shape)}; pass one HWC image array or a list of them."
        )
    raise InputError(f"Unsupported input type {type(inputs).__name__}; pass a path, bytes, an image, or a list of them.")


def _image_name(item: Any, i: int) -> str:
    return str(item) if isinstance(item, (str, os.PathLike)) else f"image {i} of the list"


@contextlib.contextmanager
def naming_overflows(items: Sequence[Any], start: int, name: Callable[[Any, int], str] = _image_name):
    """Among several inputs, the ones a model call overflowed on (NonFiniteOutputError's rows,
    counted from `start` in `items`) are named: files by path, others by place in the list."""
    try:
        yield
    except NonFiniteOutputError as exc:
        if len(items) < 2 or not exc.rows:
            raise
        rows = [start + row for row in exc.rows if start + row < len(items)]
        names = [name(items[row], row) for row in rows]
        raise NonFiniteOutputError(f"{', '.join(names[:3])}{' ...' if len(names) > 3 else ''}: {exc}", rows) from None


@contextlib.contextmanager
def overflow_rows_as(rows: Sequence[int]):
    """A NonFiniteOutputError raised inside, whose rows index a part of a larger call, comes
    out with rows[i] for its row i (windows become their clips, a chunk its place in a batch)."""
    try:
        yield
    except NonFiniteOutputError as exc:
        raise NonFiniteOutputError(str(exc), sorted({rows[row] for row in exc.rows if row < len(rows)})) from None


def check_batch_size(batch_size: Any) -> int:
    """A pipeline's batch_size: a positive integer up to MAX_BATCH_SIZE, else UsageError."""
    if (isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral)
            or not 1 <= batch_size <= MAX_BATCH_SIZE):
        raise UsageError(f"batch_size must be a positive integer up to {MAX_BATCH_SIZE:,} (the most inputs per model "
                         f"call), not {batch_size!r}.")
    return int(batch_size)


def chunks(items: Sequence[Any], size: int):
    """Consecutive slices of `size` items; an empty batch is one empty slice, which the
    backend's Session.run answers with empty outputs of the right shapes."""
    for start in range(0, max(len(items), 1), size):
        yield items[start:start + size]


def _pixels_of(numbered: tuple[int, Any], spec: ImagePreprocessSpec, among: int) -> np.ndarray | Deferred:
    """One image decoded (an error raised now) and preprocessed (an error deferred). Among
    others, an image that is not a file is named by its place in the list."""
    i, item = numbered
    try:
        image = load_image(item)
    except InputError as exc:
        if among == 1 or isinstance(item, (str, os.PathLike)):  # one input, or a file's message names it
            raise
        raise InputError(f"Image {i} of the list: {exc}") from None
    try:
        return preprocess_images([image], spec)[0]
    except InputError as exc:  # an image the preprocessing refuses (too long for longest_edge), named as above
        if isinstance(item, (str, os.PathLike)):
            return Deferred(InputError(f"Image file {item}: {exc}"))
        return Deferred(InputError(f"Image {i} of the list: {exc}") if among > 1 else exc)
    except Exception as exc:  # noqa: BLE001 - raised by pixel_batches as the serial loop raises it
        return Deferred(exc)


def pixel_batches(items: Sequence[Any], spec: ImagePreprocessSpec, workers: int | None,
                  size: int) -> Iterator[np.ndarray]:
    """``preprocess_images([load_image(i) for i in chunk], spec)`` for each chunk of ``size``
    items, equal to the array, the order and the first error of that serial loop, with the
    items decoded by up to ``workers`` threads (None: the default; 1: serially) and the next
    two chunks prepared while the caller runs the model on this one."""
    # a PIL image is converted inline: it may be lazily loaded, or the same object repeated
    rows = prepare_ordered(functools.partial(_pixels_of, spec=spec, among=len(items)), list(enumerate(items)),
                           workers, ahead=2 * size, inline=lambda numbered: isinstance(numbered[1], Image.Image))
    with contextlib.closing(rows):
        for batch in in_batches(rows, size):
            failed = next((row for row in batch if isinstance(row, Deferred)), None)
            if failed is not None:
                raise failed.error
            yield np.stack(batch)


def run_pixel_batches(items: Sequence[Any], spec: ImagePreprocessSpec, workers: int | None, size: int,
                      run: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """`run` on the pixels of `items`, batch by batch (pixel_batches), concatenated; a model
    overflow names the inputs it overflowed on (naming_overflows)."""
    parts, start = [], 0
    for pixels in pixel_batches(items, spec, workers, size):
        with naming_overflows(items, start):
            parts.append(run(pixels))
        start += len(pixels)
    return np.concatenate(parts)


def softmax(x: np.ndarray) -> np.ndarray:
    shifted = x - x.max(axis=-1, keepdims=True)
    e = np.exp(shifted)
    return e / e.sum(axis=-1, keepdims=True)


def sigmoid(x: np.ndarray) -> np.ndarray:
    """Logistic function without overflow for large negative logits."""
    z = np.exp(-np.abs(x))
    return np.where(x >= 0, 1.0 / (1.0 + z), z / (1.0 + z)).astype(x.dtype, copy=False)


# How a classifier's logits become its scores, by the name its manifest records
# (postprocess.activation), as transformers' pipelines choose: a softmax over the labels, an
# independent sigmoid per label (multi-label and one-logit models), or none: a regression
# model's raw outputs, which are not scores from 0 to 1.
ACTIVATIONS: dict[str, Callable[[np.ndarray], np.ndarray]] = {"softmax": softmax, "sigmoid": sigmoid,
                                                             "none": lambda x: x}


def image_spec_for(manifest: dict[str, Any], session: Any, root: Path) -> ImagePreprocessSpec:
    """The manifest's image preprocessing, checked against the image graph's input: a size the
    model does not take (an edited manifest) fails the load, not every call with an input error."""
    spec = ImagePreprocessSpec.from_dict(manifest["preprocess"]["image"])
    shape = session.inputs[0].shape
    dims = list(shape[2:4] if spec.layout == "NCHW" else shape[1:3])
    if len(shape) == 4 and any(isinstance(d, int) and d > 0 and d != want for d, want in zip(dims, spec.output_size)):
        height, width = spec.output_size
        raise ArtifactError(f"Artifact {root} preprocesses images to {height}x{width}, but its model takes "
                            f"{dims[0]}x{dims[1]}; its manifest was edited or is corrupt, so re-export it.")
    return spec


def manifest_activation(manifest: dict[str, Any], root: Path) -> str:
    """The activation an artifact's manifest names (softmax where it names none); ArtifactError
    unless it is one of ACTIVATIONS."""
    activation = (manifest.get("postprocess") or {}).get("activation") or "softmax"
    if not isinstance(activation, str) or activation not in ACTIVATIONS:  # a list is unhashable
        raise ArtifactError(f"Artifact {root} asks for the activation {activation!r}; this vlmedge knows "
                            f"{', '.join(ACTIVATIONS)}. Re-export it or upgrade vlmedge.")
    return activation
