"""Task pipelines: preprocess -> session -> postprocess, one class per task; the tasks
themselves are declared in vlmedge.registry."""

from __future__ import annotations

import os
from typing import Any


def load(path: str | os.PathLike, backend: str = "auto", device: str = "cpu",
         precision: str | None = None, **options: Any):
    """Loads an artifact and returns the pipeline for its task.

    Args:
        path: the artifact folder.
        backend: "auto", "onnxruntime", "openvino" or "tensorrt"; "auto" picks the fastest
            backend present for the device (the choice is on `.model.backend`).
        device: "cpu", "cuda", or a backend-specific device name.
        precision: "fp32", "fp16", "bf16", "int8", or None for the fastest that passed its gate.
    """
    from vlmedge.artifact import Artifact
    from vlmedge.runtimes.select import open_model
    from vlmedge.registry import task_named

    artifact = Artifact.open(path)
    task = task_named(artifact.task, f"Artifact {path}")
    return task.pipeline_class()(open_model(artifact, backend=backend, device=device, precision=precision, **options))
