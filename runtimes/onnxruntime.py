"""ONNX Runtime backend: CPU, CUDA, TensorRT and OpenVINO execution providers."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from vlmedge.errors import ArtifactError, BackendUnavailableError, InputError
from vlmedge.runtimes.base import Session, TensorInfo

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
# derive from Exception directly).
_ORT_ERRORS = tuple(getattr(ort.capi.onnxruntime_pybind11_state, name) for name in (
    "Fail", "InvalidArgument", "NoSuchFile", "NoModel", "EngineError", "RuntimeException", "InvalidProtobuf",
    "ModelLoaded", "NotImplemented", "InvalidGraph", "EPFail") if hasattr(ort.capi.onnxruntime_pybind11_state, name)
) + (RuntimeError,)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:300]


def _infos(args) -> list[TensorInfo]:
    return [
        TensorInfo(a.name, tuple(d if isinstance(d, int) else str(d) for d in a.shape), _ORT_TYPES.get(a.type, a.type))
        for a in args
    ]


class OnnxRuntimeSession(Session):
    backend = "onnxruntime"

    def __init__(self, model_path: Path, device: str = "cpu", threads: int | None = None,
                 optimization: str = "all") -> None:
        if device not in PROVIDERS:
            raise BackendUnavailableError(
                f"ONNX Runtime has no device '{device}'; choose one of {', '.join(PROVIDERS)}."
            )
        wanted = PROVIDERS[device]
        present = ort.get_available_providers()
        if wanted[0] not in present:
            raise BackendUnavailableError(
                f"ONNX Runtime's {wanted[0]} is not available here (this build has {', '.join(present)}); "
                "install the onnxruntime build for that device or choose device='cpu'."
            )
        options = ort.SessionOptions()
        options.graph_optimization_level = {
            "none": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        }[optimization]
        if threads:
            options.intra_op_num_threads = threads
        options.log_severity_level = 3
        providers = [p for p in wanted if p in present]
        if device != "cpu":
            providers.append("CPUExecutionProvider")
        try:
            self._session = ort.InferenceSession(str(model_path), sess_options=options, providers=providers)
        except _ORT_ERRORS as exc:
            raise ArtifactError(f"ONNX Runtime cannot load {Path(model_path).name}: {_first_line(exc)}; the file is "
                                "corrupt or not a model this onnxruntime reads. Re-export it.") from None
        self.device = device
        # Report what actually runs the model: a silent fallback to CPU is the complaint users have most.
        self.provider = self._session.get_providers()[0]
        if self.provider != wanted[0]:
            warnings.warn(f"ONNX Runtime fell back to {self.provider} instead of {wanted[0]}.", stacklevel=2)
        self.inputs = _infos(self._session.get_inputs())
        self.outputs = _infos(self._session.get_outputs())
        self._output_names = [o.name for o in self.outputs]

    def _run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        try:
            results = self._session.run(self._output_names, feeds)
        except _ORT_ERRORS as exc:
            shapes = {name: list(array.shape) for name, array in feeds.items()}
            raise InputError(f"ONNX Runtime could not run the model on inputs of shapes {shapes}: "
                             f"{_first_line(exc)}") from None
        return dict(zip(self._output_names, results))


def open_session(model_path: Path, device: str = "cpu", **options: Any) -> OnnxRuntimeSession:
    return OnnxRuntimeSession(model_path, device=device, **options)
