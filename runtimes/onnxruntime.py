"""ONNX Runtime backend: CPU, CUDA, TensorRT and OpenVINO execution providers."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from vlmedge.environment import available_physical_cores
from vlmedge.errors import ArtifactError, BackendUnavailableError, InputError, VlmedgeError, warn_caller
from vlmedge.runtimes.base import Session, TensorInfo, backend_message, release_freed_heap, resources_exhausted
from vlmedge.runtimes.cache import CacheEntry, cache_entry, files_digest
from vlmedge.runtimes.onnx_external import check_external_data, model_files

PROVIDERS = {
    "cpu": ["CPUExecutionProvider"],
    "cuda": ["CUDAExecutionProvider"],
    "tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider"],
    "openvino": ["OpenVINOExecutionProvider"],
}

_ORT_TYPES = {
    "tensor(float)": "float32",
    "tensor(float16)": "float16",
    "tensor(double)": "float64",
    "tensor(int64)": "int64",
    "tensor(int32)": "int32",
    "tensor(uint8)": "uint8",
    "tensor(int8)": "int8",
    "tensor(bool)": "bool",
}


# What ONNX Runtime raises for a bad model file or a run that fails (its own classes
# derive from Exception directly), and for memory it could not allocate (pybind11's
# translation of std::bad_alloc).
_ORT_ERRORS = tuple(getattr(ort.capi.onnxruntime_pybind11_state, name) for name in (
    "Fail", "InvalidArgument", "NoSuchFile", "NoModel", "EngineError", "RuntimeException", "InvalidProtobuf",
    "ModelLoaded", "NotImplemented", "InvalidGraph", "EPFail") if hasattr(ort.capi.onnxruntime_pybind11_state, name)
) + (RuntimeError, MemoryError)


def _infos(args) -> list[TensorInfo]:
    return [
        TensorInfo(a.name, tuple(d if isinstance(d, int) else str(d) for d in a.shape), _ORT_TYPES.get(a.type, a.type))
        for a in args
    ]


_LEVELS = {
    "none": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}
# The cached form: ONNX Runtime's own optimised model, its weights in a side file so that a
# warm load maps them from disk instead of parsing them into memory.
_CACHED_MODEL, _CACHED_WEIGHTS = "model.onnx", "model.onnx.data"

# The ONNX Runtime sessions a fork()ed child inherited from its parent, which the child never
# destroys: ONNX Runtime's destructor joins the parent's thread-pool threads, which do not
# exist in the child (it hangs, or crashes: onnxruntime#31961). A worker forked by
# multiprocessing that loads its own model and drops the inherited one is the case. Their
# memory is the parent's, shared copy-on-write.
_INHERITED: list[Any] = []


class OnnxRuntimeSession(Session):
    """One ONNX file in an InferenceSession.

    With a cache (CPU only), the first load saves ONNX Runtime's optimised model
    (optimized_model_filepath) with the weights its kernels prepacked, and every load, the
    first included, opens that file with optimisation off, its weights and their packed
    forms mapped from the side file. The saved model may hold optimisations and packed
    layouts for this CPU only (ONNX Runtime says so for the "all" level), which is why the
    cache key names the CPU and its flags.

    Every ONNX file is checked, right before ONNX Runtime parses it, to name no external data
    outside its folder: `data_root` for the model file (the artifact's root; default its own
    folder), the entry for a cached one. A cache hit parses only the entry's file, so the
    model file itself is not read at all.
    """

    backend = "onnxruntime"

    def __init__(self, model_path: Path, device: str = "cpu", threads: int | None = None,
                 optimization: str = "all", cache: bool = False, model_digest: str | None = None,
                 data_root: Path | None = None) -> None:
        super().__init__()
        if device not in PROVIDERS:
            raise BackendUnavailableError(
                f"ONNX Runtime has no device '{device}'; choose one of {', '.join(PROVIDERS)}."
            )
        if optimization not in _LEVELS:
            raise InputError(f"Unknown ONNX Runtime optimization '{optimization}'; choose one of {', '.join(_LEVELS)}.")
        wanted = PROVIDERS[device]
        present = ort.get_available_providers()
        if wanted[0] not in present:
            raise BackendUnavailableError(
                f"ONNX Runtime's {wanted[0]} is not available here (this build has {', '.join(present)}); "
                "install the onnxruntime build for that device or choose device='cpu'."
            )
        providers = [p for p in wanted if p in present]
        if device != "cpu":
            providers.append("CPUExecutionProvider")
        model_path = Path(model_path)
        # Only CPU graphs are saved: other providers' fused nodes are theirs to cache.
        model = (model_path, Path(data_root) if data_root is not None else model_path.parent)
        entry = None
        if cache and device == "cpu" and optimization != "none":
            if model_digest is None:  # hashes the files the model names, so they are checked first
                check_external_data(*model)
                model_digest = files_digest(model_files(model_path))
            entry = cache_entry(self.backend, ort.__version__, model_digest, device,
                                {"optimization": optimization, "threads": threads or 0}, source=model_path)
        self._session = None
        if entry is not None:
            self._session = self._from_cache(entry, model, optimization, threads, providers)
        if self._session is None:
            self._session = self._open(model, optimization, threads, providers)
            if entry is not None:
                entry.warn_unsaved()
        self.cache_status = entry.status if entry is not None else "off"
        self.cache_path = entry.folder if entry is not None else None
        self.device = device
        # Report what actually runs the model: a silent fallback to CPU is the complaint users have most.
        self.provider = self._session.get_providers()[0]
        if self.provider != wanted[0]:
            warn_caller(f"ONNX Runtime fell back to {self.provider} instead of {wanted[0]}.")
        self.inputs = _infos(self._session.get_inputs())
        self.outputs = _infos(self._session.get_outputs())
        self._output_names = [o.name for o in self.outputs]

    def _in_forked_child(self) -> None:
        super()._in_forked_child()
        if getattr(self, "_session", None) is not None:  # None: closed, or forked while it was being built
            _INHERITED.append(self._session)

    @classmethod
    def _from_cache(cls, entry: CacheEntry, model: tuple[Path, Path], optimization: str, threads: int | None,
                    providers: list[str]) -> "ort.InferenceSession | None":
        """A session on the entry's saved optimised model, which is built first when the
        entry is missing or cannot be loaded; None when the cache cannot be used (the caller
        then opens the model itself). Sets entry.status."""
        for status in ("hit", "miss") if entry.lookup() else ("miss",):
            if status == "miss" and not cls._build(entry, model, optimization, threads, providers):
                return None
            try:  # its weights are its own: the entry is its data root
                session = cls._open((entry.folder / _CACHED_MODEL, entry.folder), "none", threads, providers)
            except (ArtifactError, OSError):  # not loadable after all, or removed meanwhile (cache --clear)
                entry.discard()
                entry.status = "unsaved"
                continue
            entry.status = status
            return session
        return None

    @classmethod
    def _build(cls, entry: CacheEntry, model: tuple[Path, Path], optimization: str, threads: int | None,
               providers: list[str]) -> bool:
        """Saves ONNX Runtime's optimised model into the entry, in two passes, each a session
        that only builds and is dropped at once:

        1. the graph optimised, without prepacking: prepacking there would put a second copy
           of every MatMul's weights in memory beside the parsed model (2.1x the file at the
           peak for ViT-B/16, 1.1x without);
        2. that graph opened as a load opens it, its weights mapped, and saved again with the
           packed weights (ONNX Runtime's session.save_external_prepacked_constant_initializers),
           so that a load maps them instead of packing them again: ViT-B/16 session creation
           115 -> 55 ms int8, 330 -> 175 ms fp32 (AMD EPYC, Zen 4). The packed copies about
           double the entry's size on disk.

        Whether the entry was saved."""
        built = entry.start_build()
        if built is None:
            return False
        optimised = built / "optimised"
        try:
            optimised.mkdir()
            cls._open(model, optimization, threads, providers, save_to=optimised)
            release_freed_heap()
            cls._open((optimised / _CACHED_MODEL, optimised), "none", threads, providers, save_to=built,
                      save_packed=True)
            shutil.rmtree(optimised)
        except (ArtifactError, BackendUnavailableError, OSError) as exc:
            # saving may be what failed (a full disk: the entry is about twice the model), or
            # the model itself, or the memory its two passes take beyond a plain load's: the load
            # goes on without the cache, and says why once it loaded
            entry.abandon(built, because="ONNX Runtime could not save its optimised model there; is the disk full?"
                          if isinstance(exc, ArtifactError) else str(exc))
            return False
        finally:
            # the builders' heap, freed, would otherwise stay resident under the session opened
            # next (ViT-B/16 int8: a cold load's peak 1.50x the file, 1.47x with it handed back)
            release_freed_heap()
        entry.commit(built)
        return entry.status == "miss"

    @staticmethod
    def _open(model: tuple[Path, Path], optimization: str, threads: int | None, providers: list[str],
              save_to: Path | None = None, save_packed: bool = False) -> "ort.InferenceSession":
        """A session on model = (ONNX file, the folder its external data must stay in); with
        save_to, the graph it built is saved there, with its kernels' packed weights when
        save_packed (otherwise it packs none)."""
        model_path, data_root = model
        check_external_data(model_path, data_root)
        options = ort.SessionOptions()
        options.graph_optimization_level = _LEVELS[optimization]
        # Its own default is one thread per physical core of the machine, even where the
        # process may use fewer (taskset, a container's cpuset): the extra threads then spin
        # on the same cores, at half the speed on one CPU of two.
        options.intra_op_num_threads = threads or available_physical_cores()
        # fatal only: an error comes back as an exception, which vlmedge words in one sentence; its
        # own log would print it first, in red, on stderr
        options.log_severity_level = 4
        if save_to is not None:
            options.optimized_model_filepath = str(save_to / _CACHED_MODEL)
            options.add_session_config_entry("session.optimized_model_external_initializers_file_name", _CACHED_WEIGHTS)
            options.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "1024")
            if save_packed:
                options.add_session_config_entry("session.save_external_prepacked_constant_initializers", "1")
            else:
                options.add_session_config_entry("session.disable_prepacking", "1")
        try:
            return ort.InferenceSession(str(model_path), sess_options=options, providers=providers)
        except _ORT_ERRORS as exc:
            raise _not_loaded(Path(model_path).name, exc) from None

    def _run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        try:
            results = self._session.run(self._output_names, feeds)
        except _ORT_ERRORS as exc:
            shapes = {name: list(array.shape) for name, array in feeds.items()}
            raise _exhausted(f"while running {self.model_file} on inputs of shapes {shapes}", exc) or InputError(
                f"ONNX Runtime could not run the model on inputs of shapes {shapes}: {backend_message(exc)}") from None
        return dict(zip(self._output_names, results))

    def _release(self) -> None:
        self._session = None


def _not_loaded(file_name: str, exc: BaseException) -> VlmedgeError:
    """What a failed load of a model file says: out of memory or threads, else a bad file."""
    return _exhausted(f"while loading {file_name}", exc) or ArtifactError(
        f"ONNX Runtime cannot load {file_name}: {backend_message(exc)}; the file is corrupt or not a model this "
        "onnxruntime reads. Re-export it.")


def _exhausted(doing: str, exc: BaseException) -> BackendUnavailableError | None:
    """resources_exhausted for ONNX Runtime, which starts no thread of its own with --threads 1."""
    return resources_exhausted("ONNX Runtime", doing, exc, fewer_threads="pass --threads 1")


def open_session(model_path: Path, device: str = "cpu", **options: Any) -> OnnxRuntimeSession:
    return OnnxRuntimeSession(model_path, device=device, **options)
