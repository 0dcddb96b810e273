"""OpenVINO backend: IR files (.xml + .bin) on CPU, GPU or NPU, with a performance hint.

A compiled model is shared; infer requests are not thread-safe, so each thread gets its
own (threading.local). The inference precision is set explicitly when the artifact says
so: OpenVINO's CPU plugin otherwise runs fp32 models in bf16 on CPUs that support it.
`provider` reports the device and the precision the compiled model actually uses.
"""

from __future__ import annotations

import threading
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import openvino as ov

from vlmedge.errors import BackendUnavailableError, InputError
from vlmedge.runtimes.base import Session, TensorInfo
from vlmedge.runtimes.cache import CacheEntry, files_digest
from vlmedge.runtimes.cache import cache_entry

# vlmedge precision names and OpenVINO's own -> the INFERENCE_PRECISION_HINT value
INFERENCE_PRECISIONS = {"fp32": "f32", "f32": "f32", "bf16": "bf16", "fp16": "f16", "f16": "f16"}
PERFORMANCE_HINTS = {"latency": "LATENCY", "throughput": "THROUGHPUT", "cumulative_throughput": "CUMULATIVE_THROUGHPUT"}
# Virtual devices that pick or combine real ones; any other name must be present.
_VIRTUAL_DEVICES = ("AUTO", "HETERO", "MULTI", "BATCH")

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
    family = name.split(".")[0].split(":")[0]
    if family not in _VIRTUAL_DEVICES and name not in present and family not in {d.split(".")[0] for d in present}:
        raise BackendUnavailableError(
            f"OpenVINO has no device '{device}' on this machine (it has: {', '.join(present) or 'none'}); "
            "choose one of those or device='cpu'."
        )
    return name


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
                 cache_dir: str | None = None, cache: bool = False, model_digest: str | None = None) -> None:
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
        if model_path.suffix != ".xml":
            raise BackendUnavailableError(f"The OpenVINO backend reads IR .xml files, not {model_path.name}.")
        # OpenVINO's own cache names its blobs by the model's path and options, not its
        # content (a rewritten .bin at the same path would reuse a stale blob), so each
        # vlmedge entry, keyed by content, is a CACHE_DIR of its own.
        entry = None
        if cache_dir:  # the caller's own OpenVINO cache folder, managed by the caller
            config["CACHE_DIR"] = str(cache_dir)
        elif cache:
            entry = cache_entry(self.backend, ov.get_version(),
                               model_digest or files_digest([model_path, model_path.with_suffix(".bin")]),
                               name, {k: str(v) for k, v in config.items()})
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
        self.provider = f"OpenVINO {executing} {self.inference_precision}"
        if wanted and self.inference_precision not in (wanted, "default"):
            # The precision the file was verified in is not what runs here: say so.
            warnings.warn(f"OpenVINO on {executing} runs in {self.inference_precision}, not the requested {wanted}.",
                          stacklevel=2)
        # Compiling may merge names onto a port; port_name picks the graph's own. The
        # ov.Model is never held: compile_model reads the file itself (weights mapped, not
        # copied) and drops it once compiled, or imports the cached blob without it.
        self.inputs = _infos(self._compiled.inputs)
        self.outputs = _infos(self._compiled.outputs)
        self._input_index = {info.name: i for i, info in enumerate(self.inputs)}
        self._output_ports = list(zip((o.name for o in self.outputs), self._compiled.outputs))
        self._local = threading.local()

    @staticmethod
    def _compile(model_path: Path, name: str, config: dict[str, Any], entry: CacheEntry | None) -> ov.CompiledModel:
        """compile_model on the file's path, through the cache entry when there is one."""
        hit = entry is not None and entry.lookup()
        if hit:
            try:
                compiled = core().compile_model(str(model_path), name, {**config, "CACHE_DIR": str(entry.folder)})
            except RuntimeError:
                entry.discard()  # an entry OpenVINO cannot use: built again below
                hit = False
        built = None if entry is None or hit else entry.start_build()
        try:
            if not hit:
                compiled = core().compile_model(str(model_path), name,
                                                {**config, **({"CACHE_DIR": str(built)} if built else {})})
        except RuntimeError as exc:
            if built is not None:
                entry.abandon(built)
            raise BackendUnavailableError(f"OpenVINO could not compile {model_path.name} for {name}: {exc}") from None
        if built is not None:
            entry.commit(built)
        elif hit:
            entry.status = "hit"
            try:
                loaded = bool(compiled.get_property("LOADED_FROM_CACHE"))
            except RuntimeError:
                loaded = True
            if not loaded:  # OpenVINO compiled anyway (e.g. the artifact moved) and added a blob
                entry.status = "miss"
                entry.relist()
        return compiled

    def _request(self) -> ov.InferRequest:
        request = getattr(self._local, "request", None)
        if request is None:
            request = self._local.request = self._compiled.create_infer_request()
        return request

    def _run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        inputs = {self._input_index[name]: np.ascontiguousarray(value) for name, value in feeds.items()}
        try:
            results = self._request().infer(inputs, share_outputs=False)
        except RuntimeError as exc:  # e.g. a dynamic axis longer than the model takes (a text past its positions)
            shapes = {name: list(array.shape) for name, array in feeds.items()}
            # OpenVINO's message is a stack of "Exception from <source file>" lines around the one that says why
            why = " ".join(line.strip() for line in str(exc).splitlines()
                           if line.strip() and not line.startswith("Exception from")) or str(exc).strip()
            raise InputError(f"OpenVINO could not run the model on inputs of shapes {shapes}: {why}") from None
        return {name: np.array(results[port], copy=True) for name, port in self._output_ports}


def open_session(model_path: Path, device: str = "cpu", **options: Any) -> OpenVinoSession:
    return OpenVinoSession(model_path, device=device, **options)
