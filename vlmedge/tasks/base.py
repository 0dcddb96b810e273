"""What every task pipeline shares: choosing model files from the artifact and opening
one session per graph on the chosen backend."""

from __future__ import annotations

import importlib.util
import platform
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from vlmedge.artifact import Artifact
from vlmedge.errors import ArtifactError, BackendUnavailableError, InputError
from vlmedge.runtimes.base import TARGET_OF_BACKEND, Session, open_session
from vlmedge.runtimes.onnx_external import check_external_data

# The largest batch handed to a backend at once; longer lists are run in chunks.
MAX_BATCH = 32


def _cpu_vendor() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("vendor_id"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def choose_backend(artifact: Artifact, device: str) -> str:
    """'auto': TensorRT on NVIDIA GPUs, OpenVINO on Intel hardware, else ONNX Runtime."""
    targets = {e["target"] for e in artifact.model_entries()}
    if "tensorrt" in targets and device.startswith("cuda") and importlib.util.find_spec("tensorrt"):
        return "tensorrt"
    if "openvino" in targets and importlib.util.find_spec("openvino") and (
        device != "cpu" or _cpu_vendor() == "GenuineIntel"
    ):
        return "openvino"
    if "onnx" in targets:
        return "onnxruntime"
    known = sorted(targets & set(TARGET_OF_BACKEND.values()))
    if known:
        return {v: k for k, v in TARGET_OF_BACKEND.items()}[known[0]]
    raise BackendUnavailableError(f"Artifact {artifact.root} holds no model files this vlmedge can run "
                                  f"(targets: {', '.join(sorted(targets)) or 'none'}); upgrade vlmedge or re-export it.")


def choose_precision(entries: list[dict[str, Any]]) -> str:
    """The fastest precision that passed its parity gate, by measured latency when the
    export measured it; fp32 otherwise."""
    passed = [e for e in entries if (e.get("parity") or {}).get("passed", False)]
    graphs = {e.get("graph") for e in entries}
    # per precision, the latency of one call of every graph (CLIP: image + text)
    totals: dict[str, dict[Any, float]] = {}
    for e in passed:
        if (e.get("parity") or {}).get("latency_ms"):
            totals.setdefault(e["precision"], {})[e.get("graph")] = e["parity"]["latency_ms"]
    complete = {p: sum(t.values()) for p, t in totals.items() if set(t) == graphs}
    if complete:
        return min(complete, key=complete.get)
    precisions = {e["precision"] for e in (passed or entries)}
    return "fp32" if "fp32" in precisions else sorted(precisions)[0]


@dataclass
class ModelSessions:
    """One session per graph of the artifact, all of one backend and precision."""

    artifact: Artifact
    backend: str
    precision: str
    device: str
    sessions: dict[str, Session]

    @property
    def provider(self) -> str:
        return ", ".join(sorted({s.provider for s in self.sessions.values()}))


def open_model(artifact: Artifact, backend: str = "auto", device: str = "cpu",
               precision: str | None = None, **options: Any) -> ModelSessions:
    """Opens every graph of the artifact on one backend, device and precision."""
    if backend == "auto":
        backend = choose_backend(artifact, device)
    target = TARGET_OF_BACKEND.get(backend)
    if target is None:
        raise BackendUnavailableError(
            f"Unknown backend '{backend}'; choose one of auto, {', '.join(TARGET_OF_BACKEND)}."
        )
    entries = artifact.model_entries(target=target)
    if not entries:
        have = sorted({e["target"] for e in artifact.model_entries()})
        raise BackendUnavailableError(
            f"Artifact {artifact.root} has no {target} files (it has: {', '.join(have) or 'none'}); "
            f"export it with --to {target} or choose another backend."
        )
    if precision is None:
        precision = choose_precision(entries)
    sessions = {}
    for graph in artifact.manifest["graphs"]:
        chosen = [e for e in entries if e["graph"] == graph and e["precision"] == precision]
        if not chosen:
            have = sorted({e["precision"] for e in entries if e["graph"] == graph})
            raise BackendUnavailableError(
                f"Artifact {artifact.root} has no {precision} {target} file for graph '{graph}' "
                f"(it has: {', '.join(have)}); export that precision or choose another."
            )
        entry = chosen[0]
        path = artifact.path_of(entry)
        if entry["target"] == "onnx" or path.suffix.lower() == ".onnx":  # ORT parses whatever the name
            check_external_data(path, artifact.root)
        sessions[graph] = open_session(path, backend=backend, device=device,
                                       **{**entry.get("session_options", {}), **options})
        _check_graph_io(artifact, graph, sessions[graph], entry["path"])
    return ModelSessions(artifact, backend, precision, device, sessions)


def _check_graph_io(artifact: Artifact, graph: str, session: Session, relpath: str) -> None:
    """The manifest's input and output names must be the model file's own: the pipelines
    address the session's results by the manifest's names."""
    described = artifact.manifest["graphs"][graph]
    for kind, actual in (("inputs", session.inputs), ("outputs", session.outputs)):
        want = sorted(i["name"] for i in described[kind])
        have = sorted(i.name for i in actual)
        if want != have:
            raise ArtifactError(
                f"Artifact {artifact.root}: the manifest says graph '{graph}' has {kind} {want}, but {relpath} has "
                f"{have}; the manifest does not describe this file. Re-export the artifact."
            )


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


def chunks(items: Sequence[Any], size: int = MAX_BATCH):
    for start in range(0, len(items), size):
        yield items[start:start + size]


def softmax(x: np.ndarray) -> np.ndarray:
    shifted = x - x.max(axis=-1, keepdims=True)
    e = np.exp(shifted)
    return e / e.sum(axis=-1, keepdims=True)


def sigmoid(x: np.ndarray) -> np.ndarray:
    """Logistic function without overflow for large negative logits."""
    z = np.exp(-np.abs(x))
    return np.where(x >= 0, 1.0 / (1.0 + z), z / (1.0 + z)).astype(x.dtype, copy=False)
