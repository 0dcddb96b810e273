"""OpenVINO backend: IR files (.xml + .bin) on CPU, GPU or NPU, with a performance hint.

A compiled model is shared; infer requests are not thread-safe, so each thread gets its
own (threading.local). The inference precision is set explicitly when the artifact says
so: OpenVINO's CPU plugin otherwise runs fp32 models in bf16 on CPUs that support it.
`provider` reports the device and the precision the compiled model actually uses.
The weights (or the cached blob) are read through vlmedge's own mapping of the file, whose
pages the load and the first call hand back as the plugin packs them (runtimes/mapped.py).
"""

from __future__ import annotations

import re
import threading
from pathlib import Path
from typing import Any

import numpy as np

from vlmedge.environment import openvino_telemetry_off
from vlmedge.errors import ArtifactError, BackendUnavailableError, InputError
from vlmedge.runtimes.base import Session, TensorInfo, backend_message, backend_named, resources_exhausted
from vlmedge.runtimes.cache import CacheEntry, files_digest
from vlmedge.runtimes.cache import cache_entry
from vlmedge.runtimes.mapped import MappedFile

with openvino_telemetry_off():
    import openvino as ov

# vlmedge precision names and OpenVINO's own -> the INFERENCE_PRECISION_HINT value
INFERENCE_PRECISIONS = {"fp32": "f32", "f32": "f32", "bf16": "bf16", "fp16": "f16", "f16": "f16"}
PERFORMANCE_HINTS = {"latency": "LATENCY", "throughput": "THROUGHPUT", "cumulative_throughput": "CUMULATIVE_THROUGHPUT"}
# Virtual devices that pick or combine real ones; any other name must be present.
_VIRTUAL_DEVICES = ("AUTO", "HETERO", "MULTI", "BATCH")

# A blob in OpenVINO's CACHE_DIR: one XML header line, then what the plugin exported. Only
# the form written by this OpenVINO (its version, no alignment padding) is read directly;
# any other is an entry to build again.
_CACHE_BLOB_HEADER = re.compile(
    rb'<\?xml version="1\.0"\?><compiled_blob ie_version="([^"\n]*)"[^\n]* header_size_alignment="0"/>\n')

_core: ov.Core | None = None
_core_lock = threading.Lock()


def core() -> ov.Core:
    """The process-wide OpenVINO Core (device discovery is slow; compile_model is thread-safe)."""
    global _core
    with _core_lock:
        if _core is None:
            _core = ov.Core()
        return _core


def device_name(device: str) -> str:
    """vlmedge's device ("cpu", "gpu.1", "npu") as OpenVINO names it, checked against the present ones."""
    name = device.strip().upper()
    present = core().available_devices
    if not present:
        raise _cpu_plugin_failed()
    family = name.split(".")[0].split(":")[0]
    if family not in _VIRTUAL_DEVICES and name not in present and family not in {d.split(".")[0] for d in present}:
        raise BackendUnavailableError(
            f"OpenVINO has no device '{device}' on this machine (it has: {', '.join(present) or 'none'}); "
            "choose one of those or device='cpu'."
        )
    return name


def _cpu_plugin_failed() -> BackendUnavailableError:
    """Why an OpenVINO that lists no device at all has none: not even its CPU plugin started,
    which a memory or thread limit causes. The plugin, asked for again, raises why."""
    try:
        core().get_property("CPU", "FULL_DEVICE_NAME")
        why = ""
    except (RuntimeError, MemoryError) as exc:
        exhausted = _exhausted("while starting its CPU plugin", exc)
        if exhausted is not None:
            return exhausted
        why = f" ({backend_message(exc)})"
    return BackendUnavailableError(f"OpenVINO lists no device: its CPU plugin could not start{why}, as under a memory "
                                   "or thread limit (ulimit -v, ulimit -u); raise the limit, or use --backend "
                                   "onnxruntime.")


def supports_precision(precision: str, device: str = "cpu") -> bool:
    """Whether `device` computes natively in `precision` (bf16 needs AVX512-BF16/AMX on CPUs)."""
    hint = INFERENCE_PRECISIONS[precision]
    if hint == "f32":
        return True
    try:
        capabilities = core().get_property(device_name(device), "OPTIMIZATION_CAPABILITIES")
    except (RuntimeError, BackendUnavailableError):
        return False
    return {"bf16": "BF16", "f16": "FP16"}[hint] in capabilities


def _type_name(value: Any) -> str:
    return value.get_type_name() if isinstance(value, ov.Type) else str(value).lower()


def port_name(port: Any) -> str:
    """A port's name. Compiling can merge an input's tensor with a folded op's output (CLIP
    text's Reshape of input_ids), so a port may carry several names: the graph's own name
    is the one that is not an internal "/op/..._output_0" path."""
    names = sorted(port.get_names())
    return min(names, key=lambda n: (n.startswith("/") or n.endswith("_output_0"), n)) if names else port.get_any_name()


def _infos(ports) -> list[TensorInfo]:
    infos = []
    for port in ports:
        shape = tuple(
            dim.get_length() if dim.is_static else ("batch" if axis == 0 else f"dim{axis}")
            for axis, dim in enumerate(port.get_partial_shape())
        )
        infos.append(TensorInfo(port_name(port), shape, np.dtype(port.get_element_type().to_dtype()).name))
    return infos


class OpenVinoSession(Session):
    """One IR file compiled for one device, with one infer request per calling thread."""

    backend = "openvino"

    def __init__(self, model_path: Path, device: str = "cpu", inference_precision: str | None = None,
                 performance_hint: str = "latency", threads: int | None = None,
                 cache: bool = False, model_digest: str | None = None) -> None:
        super().__init__()
        if performance_hint not in PERFORMANCE_HINTS:
            raise InputError(f"Unknown performance hint '{performance_hint}'; choose one of {', '.join(PERFORMANCE_HINTS)}.")
        if inference_precision is not None and inference_precision not in INFERENCE_PRECISIONS:
            raise InputError(
                f"Unknown inference precision '{inference_precision}'; choose one of fp32, bf16, fp16."
            )
        name = device_name(device)
        config: dict[str, Any] = {"PERFORMANCE_HINT": PERFORMANCE_HINTS[performance_hint]}
        wanted = INFERENCE_PRECISIONS[inference_precision] if inference_precision else None
        if wanted:
            config["INFERENCE_PRECISION_HINT"] = wanted
        if threads:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        model_path = Path(model_path)
        suffix = backend_named(self.backend).file_suffix
        if model_path.suffix != suffix:
            raise BackendUnavailableError(f"The OpenVINO backend reads IR {suffix} files, not {model_path.name}.")
        # Each vlmedge entry, keyed by the files' content, is a CACHE_DIR of its own holding
        # one blob: OpenVINO writes it while compiling, and a hit imports it without asking
        # OpenVINO to look it up (its lookup hashes the whole model, or keys a file by path).
        entry = None
        if cache and name.split(":")[0] not in _VIRTUAL_DEVICES:  # a virtual device cannot import a blob
            entry = cache_entry(self.backend, ov.get_version(),
                               model_digest or files_digest([model_path, model_path.with_suffix(".bin")]),
                               name, {k: str(v) for k, v in config.items()}, source=model_path)
        # The file OpenVINO reads the weights from, through vlmedge's own mapping, kept as long
        # as the compiled model; None where there is none (an IR without weights).
        self._mapped: MappedFile | None = None
        self._first_call_done = False
        self._compiled = self._compile(model_path, name, config, entry)
        self.cache_status = entry.status if entry is not None else "off"
        self.cache_path = entry.folder if entry is not None else None
        self.device = device
        self.performance_hint = performance_hint
        try:
            self.inference_precision = _type_name(self._compiled.get_property("INFERENCE_PRECISION_HINT"))
        except RuntimeError:  # devices that do not report it
            self.inference_precision = wanted or "default"
        try:
            executing = ",".join(self._compiled.get_property("EXECUTION_DEVICES"))
        except RuntimeError:
            executing = name
        # what runs, precision included: an f16 hint runs in bf16 (or f32) on CPUs without f16,
        # which open_entry compares with what the file's parity gate verified
        self.provider = f"OpenVINO {executing} {self.inference_precision}"
        # Compiling may merge names onto a port; port_name picks the graph's own. The
        # ov.Model is never held: the compiled model reads the weights from the mapping.
        self.inputs = _infos(self._compiled.inputs)
        self.outputs = _infos(self._compiled.outputs)
        self._input_index = {info.name: i for i, info in enumerate(self.inputs)}
        self._output_ports = list(zip((o.name for o in self.outputs), self._compiled.outputs))
        self._local = threading.local()

    def _compile(self, model_path: Path, name: str, config: dict[str, Any],
                 entry: CacheEntry | None) -> ov.CompiledModel:
        """The compiled model: imported from the cache entry on a hit, else compiled from the
        file (and saved in a new entry when there is one)."""
        if entry is not None and entry.lookup():
            try:
                compiled = self._import_blob(entry.folder, name, config)
                entry.status = "hit"
                return compiled
            except (RuntimeError, OSError, ValueError, MemoryError) as exc:
                exhausted = _exhausted(f"while importing its compiled {model_path.name}", exc)
                if exhausted is not None:  # the entry is not at fault: kept
                    raise exhausted from None
                entry.discard()  # an entry this OpenVINO cannot import or read: built again below
        built = None if entry is None else entry.start_build()
        try:
            compiled = self._compile_mapped(model_path, name,
                                            {**config, **({"CACHE_DIR": str(built)} if built else {})})
        except BaseException:
            if built is not None:
                entry.abandon(built)
            raise
        if built is not None and not any(built.iterdir()):  # OpenVINO skips its blob without a word (a full disk)
            entry.abandon(built, "OpenVINO wrote no compiled blob: a full disk, or a device that exports none")
            entry.warn_unsaved()
        elif built is not None:
            entry.commit(built)
        return compiled

    def _compile_mapped(self, model_path: Path, name: str, config: dict[str, Any]) -> ov.CompiledModel:
        """compile_model on the IR read with its weights through vlmedge's mapping of the .bin,
        handing the pages back as the plugin packs them (see vlmedge.runtimes.mapped)."""
        weights = model_path.with_suffix(".bin")
        if not weights.is_file() or weights.stat().st_size == 0:  # no weights to map
            return self._compile_file(model_path, name, config)
        try:
            mapped = MappedFile(weights)
        except OSError as exc:
            raise ArtifactError(f"OpenVINO's weights file {weights} could not be read ({exc.strerror or exc}); "
                                "check its permissions.") from None
        try:
            with mapped.handing_back_pages():
                model = _read(model_path, ov.Tensor(mapped.array(), shared_memory=True))
                compiled = _compiled(model, model_path, name, config)
                del model
        except RuntimeError as exc:  # the thread that hands the pages back could not start
            raise _exhausted(f"while reading {model_path.name}", exc) or exc from None
        self._mapped = mapped
        return compiled

    def _compile_file(self, model_path: Path, name: str, config: dict[str, Any]) -> ov.CompiledModel:
        return _compiled(_read(model_path), model_path, name, config)

    def _import_blob(self, folder: Path, name: str, config: dict[str, Any]) -> ov.CompiledModel:
        """import_model on the entry's blob, read through vlmedge's mapping of it (the weights
        are in it); RuntimeError when the entry holds no blob of this OpenVINO's form."""
        blobs = sorted(folder.glob("*.blob"))
        if len(blobs) != 1:
            raise RuntimeError(f"{len(blobs)} blobs in {folder}")
        mapped = MappedFile(blobs[0])
        header = _CACHE_BLOB_HEADER.match(mapped.head(4096))
        if header is None or header.group(1).decode("utf-8", "replace") != ov.get_version():
            raise RuntimeError(f"{blobs[0].name} is not a blob of OpenVINO {ov.get_version()}")
        with mapped.handing_back_pages():
            compiled = core().import_model(ov.Tensor(mapped.array(header.end()), shared_memory=True), name, config)
        self._mapped = mapped
        return compiled

    def _request(self) -> ov.InferRequest:
        request = getattr(self._local, "request", None)
        if request is None:
            request = self._local.request = self._compiled.create_infer_request()
        return request

    def _infer(self, inputs: dict[int, np.ndarray]) -> Any:
        """One inference; the first one hands back the mapped pages the plugin reads as it
        packs the weights it left for then (dynamic shapes pack at the first call)."""
        request, mapped = self._request(), self._mapped
        if self._first_call_done or mapped is None:
            return request.infer(inputs, share_outputs=False)
        with mapped.handing_back_pages():
            results = request.infer(inputs, share_outputs=False)
        self._first_call_done = True
        return results

    def _release(self) -> None:
        self._local = threading.local()  # every thread's infer request
        self._output_ports = []
        self._compiled = None
        self._mapped = None

    def _run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        inputs = {self._input_index[name]: np.ascontiguousarray(value) for name, value in feeds.items()}
        ports = self._output_ports
        try:
            results = self._infer(inputs)
        except (RuntimeError, MemoryError) as exc:  # e.g. a dynamic axis longer than the model takes
            shapes = {name: list(array.shape) for name, array in feeds.items()}
            raise _exhausted(f"while running {self.model_file} on inputs of shapes {shapes}", exc) or InputError(
                f"OpenVINO could not run the model on inputs of shapes {shapes}: {backend_message(exc)}") from None
        return {name: np.array(results[port], copy=True) for name, port in ports}


def _exhausted(doing: str, exc: BaseException) -> BackendUnavailableError | None:
    """resources_exhausted for OpenVINO, whose CPU plugin starts threads whatever --threads says."""
    return resources_exhausted("OpenVINO", doing, exc, fewer_threads="use --backend onnxruntime --threads 1")


def _read(model_path: Path, weights: ov.Tensor | None = None) -> ov.Model:
    """The IR, with these weights (else its .bin, if any). What OpenVINO raises reading it is a
    file it cannot read (its hash matched the manifest: the artifact itself is bad), unless
    memory or threads ran out."""
    try:
        if weights is None:
            return core().read_model(str(model_path))
        return core().read_model(model_path.read_text(encoding="utf-8"), weights)
    except (RuntimeError, MemoryError) as exc:
        raise _exhausted(f"while reading {model_path.name}", exc) or ArtifactError(
            f"OpenVINO cannot read {model_path.name}: {backend_message(exc)}; the file is corrupt or not an IR this "
            "OpenVINO reads. Re-export it.") from None


def _compiled(model: ov.Model, model_path: Path, device_name: str, config: dict[str, Any]) -> ov.CompiledModel:
    """The model, read from model_path, compiled for the device."""
    try:
        return core().compile_model(model, device_name, config)
    except (RuntimeError, MemoryError) as exc:
        doing = f"while compiling {model_path.name} for {device_name}"
        raise _exhausted(doing, exc) or BackendUnavailableError(
            f"OpenVINO could not compile {model_path.name} for {device_name}: {backend_message(exc)}; choose another "
            "device, or --backend onnxruntime.") from None


def open_session(model_path: Path, device: str = "cpu", **options: Any) -> OpenVinoSession:
    return OpenVinoSession(model_path, device=device, **options)
