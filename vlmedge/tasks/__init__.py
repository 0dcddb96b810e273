"""Task pipelines: preprocess -> session -> postprocess, one class per task; the tasks
themselves are declared in vlmedge.registry."""

from __future__ import annotations

import os
from typing import Any


def load(path: str | os.PathLike, backend: str = "auto", device: str = "cpu",
         precision: str | None = None, decode_workers: int | None = None, cache: bool | None = None,
         batch_size: int | None = None, **options: Any):
    """Loads an artifact and returns the pipeline for its task.

    Args:
        path: the artifact folder.
        backend: "auto", "onnxruntime", "openvino" or "tensorrt"; "auto" picks the fastest
            backend present for the device (the choice is on `.model.backend`).
        device: "cpu", "cuda", or a backend-specific device name.
        precision: "fp32", "fp16", "bf16", "int8", or None for the fastest that passed its gate.
        decode_workers: threads that decode and preprocess the inputs of a list call while the
            model runs (None: min(4, CPUs); 1: serially); the pipeline's ``decode_workers``.
        cache: the compiled-model cache and the verified-file memo (vlmedge.load says more).
        batch_size: the most inputs per model call (None: 32); the pipeline's ``batch_size``.
        **options: the backend's session options, e.g. threads=4 (vlmedge.load says which).
    """
    from vlmedge.artifact import Artifact
    from vlmedge.preprocess.parallel import check_workers
    from vlmedge.runtimes.select import open_model
    from vlmedge.registry import task_named
    from vlmedge.tasks.base import check_batch_size

    _check_load_arguments(device, cache, options)
    workers = None if decode_workers is None else check_workers(decode_workers)
    size = None if batch_size is None else check_batch_size(batch_size)
    artifact = Artifact.open(path, cache=cache, defer_models=True)  # open_model verifies the files it opens
    task = task_named(artifact.task, f"Artifact {path}")
    pipeline = task.pipeline_class()(open_model(artifact, backend=backend, device=device, precision=precision,
                                                cache=cache, **options))
    pipeline.decode_workers = workers
    if size is not None:
        pipeline.batch_size = size
    return pipeline


def _check_load_arguments(device: Any, cache: Any, options: dict[str, Any]) -> None:
    """The arguments whose wrong type would otherwise surface as an AttributeError deep
    inside, or, for cache="no" (a true string), silently as its opposite (Artifact.open checks
    the path); a keyword no backend takes is a misspelling, not a session option."""
    from vlmedge.errors import UsageError
    from vlmedge.runtimes.base import declared_session_options

    declared = list(declared_session_options())
    unknown = [name for name in options if name not in declared]
    if unknown:
        raise UsageError(f"vlmedge.load takes no keyword {', '.join(map(repr, unknown))}; it takes backend, device, "
                         "precision, decode_workers, cache, batch_size and the backends' session options: "
                         f"{', '.join(declared)}.")

    if not isinstance(device, str) or not device.strip():
        raise UsageError(f"device must be a name such as 'cpu', 'cuda' or 'GPU', not {device!r}.")
    if cache is not None and not isinstance(cache, bool):
        raise UsageError(f"cache must be True, False or None (the environment decides), not {cache!r}.")
