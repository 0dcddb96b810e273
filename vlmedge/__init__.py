"""vlmedge: export vision, vision-language and audio transformers to ONNX, OpenVINO and
TensorRT, verify them against their source, and serve them without PyTorch."""

from __future__ import annotations

import os
from typing import Any

# `vlmedge.bench` is the function, not the subpackage: importing the subpackage first and
# binding the function after means a later `import vlmedge.bench.x` finds the package in
# sys.modules and never rebinds `vlmedge.bench`, so `vlmedge.bench(...)` stays the function.
# The package imports only the stdlib at module level; measuring loads when bench() runs.
from vlmedge.bench import bench
from vlmedge.errors import VlmedgeError
from vlmedge.version import __version__


# ONNX Runtime (1.32 on Linux) otherwise records every session it opens, with the model's
# file name, in ~/.cache/Microsoft/DeveloperTools/.onnxruntime/onnxruntime.db: loading an
# artifact must write nothing outside it. Read when onnxruntime is imported, so set here;
# an explicit ORT_DISABLE_TELEMETRY=0 from the user is kept.
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")


def load(path: Any, backend: str = "auto", device: str = "cpu", precision: str | None = None, **options: Any):
    """Loads an artifact folder and returns its task pipeline (see vlmedge.tasks.load)."""
    from vlmedge.tasks import load as _load

    return _load(path, backend=backend, device=device, precision=precision, **options)


def export(model: Any, out: Any, **kwargs: Any):
    """Exports a model to an artifact (needs the 'export' extra: torch, transformers, onnx)."""
    from vlmedge.exporters.pipeline import export as _export

    return _export(model, out, **kwargs)


__all__ = ["VlmedgeError", "__version__", "bench", "export", "load"]
