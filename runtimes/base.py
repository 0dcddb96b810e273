"""The Session protocol every backend implements, and the registry that finds them."""

from __future__ import annotations

import importlib
import importlib.util
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vlmedge.errors import BackendUnavailableError, InputError

# backend name -> (module implementing it, the package it needs, the pip extra that brings it)
BACKENDS: dict[str, tuple[str, str, str]] = {
    "onnxruntime": ("vlmedge.runtimes.onnxruntime", "onnxruntime", "vlmedge"),
    "openvino": ("vlmedge.runtimes.openvino", "openvino", "vlmedge[openvino]"),
    "tensorrt": ("vlmedge.runtimes.tensorrt", "tensorrt", "vlmedge[tensorrt]"),
}

# The artifact target each backend reads.
TARGET_OF_BACKEND = {"onnxruntime": "onnx", "openvino": "openvino", "tensorrt": "tensorrt"}


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


class Session(ABC):
    """One loaded model file on one backend and device.

    `run` checks the feeds against `inputs` (names, dtypes, ranks, static dims) before the
    backend sees them, so a wrong array gives a clear InputError instead of a backend crash.
    """

    backend: str = ""
    device: str = "cpu"
    provider: str = ""  # what actually runs the model, e.g. "CPUExecutionProvider"
    inputs: list[TensorInfo]
    outputs: list[TensorInfo]

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self._check_feeds(feeds)
        return self._run(feeds)

    @abstractmethod
    def _run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Runs the model; feeds are already checked."""

    def _check_feeds(self, feeds: dict[str, np.ndarray]) -> None:
        expected = {i.name for i in self.inputs}
        if set(feeds) != expected:
            raise InputError(f"The model takes inputs {sorted(expected)} but got {sorted(feeds)}.")
        for info in self.inputs:
            array = feeds[info.name]
            if not isinstance(array, np.ndarray):
                raise InputError(f"Input '{info.name}' must be a numpy array, not {type(array).__name__}.")
            if array.dtype != np.dtype(info.dtype):
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
            if array.dtype.kind == "f" and not np.isfinite(array).all():
                raise InputError(f"Input '{info.name}' contains NaN or infinite values.")


def available_backends() -> list[str]:
    """Backends whose package is installed, without importing any of them."""
    return [name for name, (_, package, _) in BACKENDS.items() if importlib.util.find_spec(package) is not None]


def open_session(model_path: str | Path, backend: str = "onnxruntime", device: str = "cpu", **options: Any) -> Session:
    """Opens a model file on a backend; the backend's package is imported only now."""
    if backend not in BACKENDS:
        raise BackendUnavailableError(f"Unknown backend '{backend}'; choose one of {', '.join(BACKENDS)}.")
    module_name, package, extra = BACKENDS[backend]
    if importlib.util.find_spec(package) is None:
        raise BackendUnavailableError(
            f"The {backend} backend needs the '{package}' package, which is not installed; "
            f"install it with: pip install '{extra}'."
        )
    module = importlib.import_module(module_name)
    return module.open_session(Path(model_path), device=device, **options)
