"""Task pipelines: preprocess -> session -> postprocess, one class per task."""

from __future__ import annotations

import os
from typing import Any

from vlmedge.artifact import Artifact
from vlmedge.errors import ArtifactError
from vlmedge.tasks.base import open_model

# task name -> (module, class); imported on use so a task's dependencies load only when needed
TASKS = {
    "image-classification": ("vlmedge.tasks.classifier", "ImageClassifier"),
    "image-embedding": ("vlmedge.tasks.encoder", "ImageEncoder"),
    "clip": ("vlmedge.tasks.clip", "Clip"),
    "audio-classification": ("vlmedge.tasks.audio", "AudioTagger"),
}


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
    import importlib

    artifact = Artifact.open(path)
    if artifact.task not in TASKS:
        raise ArtifactError(f"Artifact {path} has task '{artifact.task}', which this vlmedge cannot run; upgrade vlmedge.")
    module_name, class_name = TASKS[artifact.task]
    pipeline_class = getattr(importlib.import_module(module_name), class_name)
    return pipeline_class(open_model(artifact, backend=backend, device=device, precision=precision, **options))
