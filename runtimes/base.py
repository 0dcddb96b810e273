"""The Session protocol every backend implements, and the registry that finds them."""

from __future__ import annotations

import ctypes
import importlib
import importlib.util
import os
import re
import threading
import weakref
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from vlmedge.environment import requirement
from vlmedge.errors import (ArtifactError, BackendUnavailableError, InputError, NonFiniteOutputError, UsageError,
                            cut_at_word, one_line)


@dataclass(frozen=True)
class SessionOption:
    """A session option a caller may pass a backend (vlmedge.load(..., name=value))."""

    name: str
    meaning: str  # what it sets, and its values
    kind: type = str  # the type of its value: the CLI's --session-option NAME=VALUE converts to it


@dataclass(frozen=True)
class Backend:
    """A backend vlmedge can run model files on: declared once here, looked up everywhere."""

    name: str          # what users pass as --backend
    target: str        # the artifact folder (and manifest "target") whose files it reads
    package: str       # the Python package it imports
    extra: str         # the pip requirement that brings the package
    module: str | None  # the vlmedge module implementing it; None: no runtime in this vlmedge yet
    file_suffix: str   # the suffix of the model files it reads ("model.fp32.onnx": ".onnx")
    needs: str = ""    # hardware beyond a CPU, said when it is chosen
    options: tuple[SessionOption, ...] = ()  # what a caller may set on its sessions
    lacks: tuple[tuple[str, str], ...] = ()  # (precision, why) it never runs

    def why_not(self, precision: str) -> str | None:
        """Why this backend never runs `precision`, or None when it may."""
        return dict(self.lacks).get(precision)

    def install_hint(self) -> str:
        # "vlmedge": a core requirement, named with the version vlmedge declares for it
        return f"pip install '{(self.extra == 'vlmedge' and requirement(self.package)) or self.extra}'"

    def option_names(self) -> list[str]:
        return [o.name for o in self.options]


_THREADS = SessionOption("threads", "the threads one call runs on (default: one per physical core this process may use)", int)


BACKENDS: dict[str, Backend] = {b.name: b for b in (
    Backend("onnxruntime", "onnx", "onnxruntime", "vlmedge", "vlmedge.runtimes.onnxruntime", ".onnx", options=(
        _THREADS,
        SessionOption("optimization", "ONNX Runtime's graph optimisation level: all (default), basic or none"),
    ), lacks=(("bf16", "ONNX Runtime has no bf16 CPU kernels; bf16 is an OpenVINO inference precision"),)),
    Backend("openvino", "openvino", "openvino", "vlmedge[openvino]", "vlmedge.runtimes.openvino", ".xml", options=(
        _THREADS,
        SessionOption("performance_hint", "latency (default), throughput or cumulative_throughput"),
        SessionOption("inference_precision", "fp32, bf16 or fp16: what the float parts compute in (default: what "
                                             "the file's parity gate verified)"),
    )),
    # Kept so that artifacts and the CLI can name it; selecting it says what it needs.
    Backend("tensorrt", "tensorrt", "tensorrt", "vlmedge[tensorrt]", None, ".plan", needs="an NVIDIA GPU with CUDA"),
)}


def declared_session_options() -> dict[str, SessionOption]:
    """Every backend's session options by name, in BACKENDS order (threads, which two take, once)."""
    return {option.name: option for backend in BACKENDS.values() for option in backend.options}


def backend_for_file(path: Path) -> Backend | None:
    """The backend that reads a model file with this suffix (an IR .xml: OpenVINO), or None."""
    return next((b for b in BACKENDS.values() if b.file_suffix == path.suffix), None)


def backend_named(name: str, *, also: tuple[str, ...] = ()) -> Backend:
    """The backend called `name`; otherwise a clear error listing the known ones, after
    `also`: the other values the caller takes in its place (such as "auto")."""
    if name not in BACKENDS:
        raise UsageError(f"Unknown backend '{name}'; choose one of {', '.join((*also, *BACKENDS))}.")
    return BACKENDS[name]


def check_session_options(backend: Backend, options: Mapping[str, Any]) -> None:
    """A caller's session options must be ones the backend takes (an option of another
    backend is named as such: with backend="auto" the caller may not know which one runs),
    and threads a whole number from 1 up."""
    unknown = [name for name in options if name not in backend.option_names()]
    if unknown:
        whose = {name: [b.name for b in BACKENDS.values() if name in b.option_names()] for name in unknown}
        said = ", ".join(f"'{name}'" + (f" (an option of {' and '.join(whose[name])})" if whose[name] else "")
                         for name in unknown)
        advice = "leave it out or choose that backend" if any(whose.values()) else "leave it out"
        raise UsageError(f"The {backend.name} backend takes no session option {said}; its options are "
                         f"{', '.join(backend.option_names()) or 'none'}: {advice}.")
    threads = options.get("threads")
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise UsageError(f"threads must be a whole number of at least 1, not {threads!r}.")


def backend_of_target(target: str) -> Backend | None:
    """The backend that reads an artifact target's files, or None for a target this vlmedge does not know."""
    return next((b for b in BACKENDS.values() if b.target == target), None)


@dataclass(frozen=True)
class TensorInfo:
    """Name, shape (ints for static dims, strings for dynamic ones) and numpy dtype name."""

    name: str
    shape: tuple[int | str, ...]
    dtype: str

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TensorInfo":
        return cls(name=d["name"], shape=tuple(d["shape"]), dtype=d["dtype"])


# Every open session of this process, for the fork hook below.
_SESSIONS: "weakref.WeakSet[Session]" = weakref.WeakSet()


def _sessions_in_forked_child() -> None:
    for session in list(_SESSIONS):
        session._in_forked_child()


os.register_at_fork(after_in_child=_sessions_in_forked_child)


# -- trailing padding ----------------------------------------------------------------------
#
# Token graphs exported with a dynamic sequence axis (CLIP-style text towers pooled at EOS or
# CLS, with an attention mask and right padding; the exporter checks that on the source) give
# the same output for a caption however many padding positions follow it, so a session drops
# the positions that are padding in every caption of its call: the work scales with the longest
# caption, not the context. Callers still tokenize to the full context, so batches from several
# requests or workers concatenate as they are; only the graph's call is shortened.

def takes_trimmed_padding(inputs, outputs) -> bool:
    """Whether a graph (its ``TensorInfo``-like inputs and outputs: ``name`` and ``shape``) takes
    captions of any length and pools them: an ``input_ids`` and an ``attention_mask`` whose
    second axis is dynamic, and outputs of fixed sizes past the batch (a per-token output would
    come out shorter). A graph exported with a fixed context (SigLIP pools its last position)
    keeps its padding."""
    by_name = {i.name: tuple(i.shape) for i in inputs}
    return (all(name in by_name and len(by_name[name]) == 2 and isinstance(by_name[name][1], str)
                for name in ("input_ids", "attention_mask"))
            and all(all(isinstance(d, int) for d in tuple(o.shape)[1:]) for o in outputs))


def trim_padding(tokens: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``tokens`` without the trailing positions that are padding (attention mask 0) in every
    caption; at least one position is kept. Arrays other than the (N, L) token arrays pass as they are."""
    mask = tokens["attention_mask"]
    if mask.ndim != 2 or not mask.shape[0]:
        return dict(tokens)
    used = np.flatnonzero(mask.any(axis=0))
    length, full = (int(used[-1]) + 1 if used.size else 1), mask.shape[1]
    if length >= full:
        return dict(tokens)
    return {name: value[:, :length] if value.ndim == 2 and value.shape[1] == full else value
            for name, value in tokens.items()}


class Session(ABC):
    """One loaded model file on one backend and device.

    `run` checks the feeds against `inputs` (names, dtypes, ranks, static dims, batch,
    finiteness) before the backend sees them, so a wrong array gives a clear InputError
    instead of a backend crash; a zero-length batch never reaches the backend. It refuses
    outputs holding NaN or infinity too (NonFiniteOutputError): a file that passed its gate
    may still overflow its precision on an input unlike those it was verified on.
    """

    backend: str = ""
    device: str = "cpu"
    provider: str = ""  # what actually runs the model, e.g. "CPUExecutionProvider"
    inputs: list[TensorInfo]
    outputs: list[TensorInfo]

    # What the compiled-model cache (vlmedge.runtimes.cache) did for this load: "hit" (used
    # an entry), "miss" (compiled and saved one), "unsaved" (could not save), "off"; and where.
    cache_status: str = "off"
    cache_path: Path | None = None

    # (smallest, largest) batch the loaded model accepts, for backends whose engines are
    # built for a range (TensorRT optimisation profiles); None: any batch.
    batch_range: tuple[int, int] | None = None

    # Whether each item of a batch runs in a call of its own: set by the artifact for a file
    # whose answer for one item would depend on the other items of its call (ONNX Runtime's
    # dynamic int8 takes one activation scale per tensor, the whole batch's range).
    one_item_per_call: bool = False

    # Whether calls run without the padding their captions all end with (takes_trimmed_padding;
    # set when the file is opened): each item alone, when one_item_per_call, without its own.
    trims_padding: bool = False

    closed: bool = False

    # What the file is, for messages: its path in the artifact and its precision (set by the
    # artifact that opens it; a bare file is named by its file name).
    model_file: str = "the model file"
    precision: str | None = None

    def __init__(self) -> None:
        # The runs in progress on any thread, which close() waits for: the backend's objects
        # must outlive a run that uses them (OpenVINO's crash in native code otherwise).
        self._runs = threading.Condition()
        self._running = 0
        _SESSIONS.add(self)

    def _in_forked_child(self) -> None:
        """In a fork()ed child, the session inherited from its parent: the parent's runs in
        progress are not the child's to wait for (their threads were not copied), and the lock
        may have been held when it forked. A backend adds what its own objects need."""
        self._runs = threading.Condition()
        self._running = 0

    def run(self, feeds: dict[str, np.ndarray], check: bool = True,
            non_finite_outputs: bool = False) -> dict[str, np.ndarray]:
        """Checks the feeds, runs the model and checks that its outputs are finite. A
        zero-length batch returns empty outputs of the right shapes and dtypes without
        calling the backend.

        check=False skips the feed and output checks, for callers that already checked the
        same feeds once (a benchmark timing only the backend's own call);
        non_finite_outputs=True returns NaN or infinite outputs, for a parity gate to judge.
        """
        with self._runs:
            if self.closed:
                raise UsageError(f"This {self.backend} model was closed; load the artifact again to run it.")
            self._running += 1
        try:
            return self._checked_run(feeds, check, non_finite_outputs)
        finally:
            with self._runs:
                self._running -= 1
                self._runs.notify_all()

    def _checked_run(self, feeds: dict[str, np.ndarray], check: bool,
                     non_finite_outputs: bool) -> dict[str, np.ndarray]:
        if check:
            self.check_feeds(feeds)
        if self._is_empty_batch(feeds):
            return self._empty_outputs(feeds)
        if self.trims_padding:
            feeds = trim_padding(feeds)
        outputs = self._run_items_alone(feeds) if self.one_item_per_call else self._run(feeds)
        if check:
            self._check_output_shapes(feeds, outputs)
        if check and not non_finite_outputs:
            self._check_finite(outputs)
        return outputs

    def _check_output_shapes(self, feeds: dict[str, np.ndarray], outputs: dict[str, np.ndarray]) -> None:
        """Refuses an output whose rank or fixed sizes differ from what the file declares, or
        that is not one row per input (every graph vlmedge runs answers so): a backend's
        transformations may compute a file wrongly (an NNCF int8 text tower, declared (batch, 16),
        came out of OpenVINO's conversion declared (1, ?, 16) and answered (1, batch, 16)), which
        would be read as other rows."""
        batched = self._batched_inputs()
        items = feeds[batched[0]].shape[0] if batched and batched[0] in feeds else None
        for info in self.outputs:
            value = outputs.get(info.name)
            if value is None or not info.shape:
                continue
            fixed = all(not isinstance(want, int) or want == got for want, got in zip(info.shape, value.shape))
            batch_ok = items is None or value.shape[:1] == (items,)
            if len(info.shape) != value.ndim or not fixed or not batch_ok:
                raise ArtifactError(
                    f"{self.model_file} ({self.backend}, {self.precision or 'its precision'}) answered '{info.name}' "
                    f"of shape {tuple(value.shape)} for {items} input(s), where it declares "
                    f"({', '.join(map(str, info.shape))}): {self.backend} computes this file wrongly here; load "
                    "another precision or backend.")

    def _check_finite(self, outputs: dict[str, np.ndarray]) -> None:
        """Refuses outputs holding NaN or infinity (the feeds were finite), naming how many of
        the call's items they touch and what to do."""
        bad = None
        for value in outputs.values():
            if value.dtype.kind != "f" or value.ndim == 0 or np.isfinite(value).all():
                continue
            rows = ~np.isfinite(value.reshape(len(value), -1)).all(axis=1)
            bad = rows if bad is None or len(bad) != len(rows) else bad | rows
        if bad is None:
            return
        advice = ("load the artifact with precision='fp32' (--precision fp32)" if self.precision not in (None, "fp32")
                  else "the input is outside what this model handles (check its scale and its preprocessing)")
        raise NonFiniteOutputError(
            f"{self.model_file} ({self.backend}, {self.precision or 'its precision'}) answered NaN or infinity for "
            f"{int(bad.sum())} of the {len(bad)} input(s) of one call, whose values are finite: it overflows on them; "
            f"{advice}.", tuple(int(row) for row in np.flatnonzero(bad)))

    def _batched_inputs(self) -> list[str]:
        """The inputs whose first axis is the batch: a dynamic one."""
        return [i.name for i in self.inputs if i.shape and not isinstance(i.shape[0], int)]

    def _run_items_alone(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Runs each item of the batch alone and stacks the outputs, so that an item's answer
        is the same whatever else shares its batch (inputs without a batch axis go whole). A
        caption runs without its own padding, not its call's: the padding a longer neighbour
        needs would widen the activation range a dynamic int8 file takes its scales from."""
        batched = self._batched_inputs()
        items = feeds[batched[0]].shape[0] if batched else 1
        if items <= 1:
            return self._run(feeds)
        alone = trim_padding if self.trims_padding else dict
        parts = [self._run(alone({name: value[k:k + 1] if name in batched else value for name, value in feeds.items()}))
                 for k in range(items)]
        return {name: np.concatenate([part[name] for part in parts]) for name in parts[0]}

    @abstractmethod
    def _run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Runs the model; feeds are already checked."""

    def close(self) -> None:
        """Drops the backend's model and hands the freed memory back to the system now; a
        later run raises UsageError. Runs already in progress on other threads end first."""
        with self._runs:
            if self.closed:
                return
            self.closed = True
            self._runs.wait_for(lambda: self._running == 0)
        self._release()
        release_freed_heap()

    @abstractmethod
    def _release(self) -> None:
        """Drops every reference this session holds to the backend's objects."""

    def check_feeds(self, feeds: dict[str, np.ndarray]) -> None:
        """Names, types, dtypes, ranks, static sizes, one batch size across inputs, the
        batch range and finiteness; every message names the input and says what was
        expected and what was given."""
        if not isinstance(feeds, Mapping):
            raise InputError(f"Session.run takes a dict of input name -> numpy array, not {type(feeds).__name__}.")
        expected = {i.name for i in self.inputs}
        if set(feeds) != expected:
            missing, unknown = sorted(expected - set(feeds), key=str), sorted(set(feeds) - expected, key=str)
            raise InputError(
                f"The model takes inputs {sorted(expected)} but got {sorted(feeds, key=str)}"
                + (f" (missing {missing})" if missing else "") + (f" (unknown {unknown})" if unknown else "") + "."
            )
        batch: tuple[str, int] | None = None  # the first input with a dynamic batch axis, and its size
        for info in self.inputs:
            array = feeds[info.name]
            if not isinstance(array, np.ndarray):
                raise InputError(f"Input '{info.name}' must be a numpy array, not {type(array).__name__}.")
            want_dtype = _dtype(info.dtype)
            if want_dtype is not None and array.dtype != want_dtype:
                raise InputError(f"Input '{info.name}' must have dtype {info.dtype}, but it has {array.dtype}.")
            if array.ndim != len(info.shape):
                raise InputError(
                    f"Input '{info.name}' must have {len(info.shape)} dimensions {list(info.shape)}, "
                    f"but it has shape {list(array.shape)}."
                )
            for axis, (want, got) in enumerate(zip(info.shape, array.shape)):
                if isinstance(want, int) and want >= 0 and want != got:
                    raise InputError(
                        f"Input '{info.name}' must have size {want} on axis {axis} (shape {list(info.shape)}), "
                        f"but it has shape {list(array.shape)}."
                    )
            if info.shape and not isinstance(info.shape[0], int):
                # Every input's dynamic first axis is the batch: they must agree on it.
                batch = batch or (info.name, array.shape[0])
                if batch[1] != array.shape[0]:
                    raise InputError(
                        f"Input '{info.name}' has batch size {array.shape[0]}, but input '{batch[0]}' has {batch[1]}; "
                        "every input must hold the same number of items."
                    )
            if self.batch_range is not None and array.ndim and array.shape[0] and not (
                    self.batch_range[0] <= array.shape[0] <= self.batch_range[1]):
                low, high = self.batch_range
                raise InputError(
                    f"Input '{info.name}' has batch size {array.shape[0]}, but this model accepts {low} to {high}; "
                    "split the batch or rebuild the engine for larger batches."
                )
            if array.dtype.kind in "fc" and not np.isfinite(array).all():
                raise InputError(f"Input '{info.name}' contains NaN or infinite values.")

    def _is_empty_batch(self, feeds: dict[str, np.ndarray]) -> bool:
        """Every input has a dynamic first axis of size 0."""
        return bool(self.inputs) and all(
            i.shape and not isinstance(i.shape[0], int) and feeds[i.name].shape[0] == 0 for i in self.inputs)

    def _empty_outputs(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Zero-row outputs: static dims as declared, named dims as the inputs gave them."""
        sizes = {want: got for info in self.inputs for want, got in zip(info.shape, feeds[info.name].shape)
                 if isinstance(want, str)}
        result = {}
        for info in self.outputs:
            shape = [0] + [d if isinstance(d, int) and d >= 0 else sizes.get(d, 0) for d in info.shape[1:]]
            result[info.name] = np.zeros(shape[:len(info.shape)], dtype=_dtype(info.dtype) or np.float32)
        return result


def _dtype(name: str) -> np.dtype | None:
    """The numpy dtype of a TensorInfo dtype name; None for types numpy cannot hold."""
    try:
        return np.dtype(name)
    except TypeError:
        return None


def release_freed_heap() -> None:
    """Hands the heap pages freed so far back to the system (glibc's malloc_trim). glibc keeps
    them resident for reuse, so memory a dropped session freed still counts in the process's
    RSS: a load that builds its cache entry with one session and then opens another calls this
    between them, and bench's memory probe before each baseline (a session opened after another
    one closed would otherwise grow into the first one's freed pages and look almost free).
    Elsewhere (musl, macOS) there is nothing to do."""
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):
        pass


# What a backend's exception says when the process ran out of memory (an address-space limit,
# ulimit -v, shows as any of these, a plugin library that cannot be mapped included), or could
# not start a thread (pthread_create's EAGAIN: a process or thread limit, ulimit -u; Python's
# words for it included).
_OUT_OF_MEMORY = re.compile(r"std::bad_alloc|Failed to allocate memory|Cannot allocate memory|failed to map segment")
_NO_THREADS = re.compile(r"pthread_create failed|Resource temporarily unavailable|error code: 11\b|"
                         r"can't start new thread")
# OpenVINO's source locations, each on a line of its own before the line that says why
_SOURCE_LOCATION = re.compile(r"^(?:Exception from \S+:\d+:|Check .* failed at \S+:\d+:)\s*")


def backend_message(exc: BaseException, limit: int = 300) -> str:
    """A backend exception's message for a sentence to quote: one line, without OpenVINO's
    source locations, its lines joined by "; ", cut at a word boundary (with "…") past `limit`."""
    lines = (_SOURCE_LOCATION.sub("", line.strip()) for line in str(exc).splitlines())
    return cut_at_word(one_line("; ".join(line for line in lines if line)) or type(exc).__name__, limit)


def resources_exhausted(backend: str, doing: str, exc: BaseException,
                        fewer_threads: str) -> BackendUnavailableError | None:
    """The error for a backend exception that says the process ran out of memory or could not
    start its threads `doing` ("while loading model.int8.onnx"), `fewer_threads` saying how to
    run on fewer ("pass --threads 1"); None for any other exception."""
    if isinstance(exc, MemoryError) or _OUT_OF_MEMORY.search(str(exc)):
        return BackendUnavailableError(f"{backend} ran out of memory {doing}; free memory or raise the process's "
                                       "limit (ulimit -v), or use a smaller precision.")
    if _NO_THREADS.search(str(exc)):
        return BackendUnavailableError(f"{backend} could not start its threads {doing} (a process or thread limit "
                                       "such as ulimit -u, or too little memory for their stacks); raise the limit or "
                                       f"{fewer_threads}.")
    return None


def available_backends() -> list[str]:
    """Backends this vlmedge implements whose package is installed, without importing any of them."""
    return [b.name for b in BACKENDS.values() if b.module and importlib.util.find_spec(b.package) is not None]


def unavailable_reason(backend: Backend) -> str | None:
    """Why `backend` cannot run here (one sentence with what to do), or None when it can."""
    if backend.module is None:
        return (f"The {backend.name} backend needs {backend.needs} and the '{backend.package}' package "
                f"({backend.install_hint()}); this vlmedge cannot run {backend.name} engines yet, so choose "
                f"another backend ({', '.join(b.name for b in BACKENDS.values() if b.module)}).")
    if importlib.util.find_spec(backend.package) is None:
        return (f"The {backend.name} backend needs the '{backend.package}' package, which is not installed; "
                f"install it with: {backend.install_hint()}.")
    return None


def open_session(model_path: str | Path, backend: str = "onnxruntime", device: str = "cpu",
                 one_item_per_call: bool = False, **options: Any) -> Session:
    """Opens a model file on a backend; the backend's package is imported only now.
    one_item_per_call: Session.one_item_per_call, whatever the backend (an artifact's say)."""
    chosen = backend_named(backend)
    reason = unavailable_reason(chosen)
    if reason:
        raise BackendUnavailableError(reason)
    module = importlib.import_module(chosen.module)
    session = module.open_session(Path(model_path), device=device, **options)
    session.one_item_per_call = bool(one_item_per_call)
    session.trims_padding = takes_trimmed_padding(session.inputs, session.outputs)
    session.model_file = Path(model_path).name
    return session
