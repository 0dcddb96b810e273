"""Model sources: a model reference -> ExportSpec. One module per family of sources."""

from __future__ import annotations

from typing import Any

from vlmedge.errors import UnsupportedModelError
from vlmedge.exporters.sources.support import ArchitectureSupport, supported_architectures
from vlmedge.exporters.spec import ExportSpec

__all__ = ["ArchitectureSupport", "resolve", "supported_architectures"]


def resolve(model: Any, task: str | None = None, **options: Any) -> ExportSpec:
    """Turns a reference into an ExportSpec.

    `model` is a torch.nn.Module (with preprocess= and labels=), "builtin:NAME",
    "timm:NAME", "open_clip:NAME", a Hugging Face folder saved with save_pretrained, or a
    Hugging Face model id already in the local cache.
    """
    import torch

    if isinstance(model, torch.nn.Module):
        from vlmedge.exporters.sources.module import from_module

        return from_module(model, task=task, **options)
    if not isinstance(model, str):
        raise UnsupportedModelError(
            f"Cannot export a {type(model).__name__}; pass a torch.nn.Module, a folder, a model id or builtin:NAME."
        )
    scheme, _, name = model.partition(":")
    if scheme == "builtin" and name:
        from vlmedge.exporters.sources.builtin import builtin_folder

        from vlmedge.exporters.sources.hf import from_hf

        return from_hf(str(builtin_folder(name)), task=task, reference=model, **options)
    if scheme in ("timm", "open_clip") and name:
        raise UnsupportedModelError(
            f"{scheme}: sources are not available in this version of vlmedge; export the Hugging Face version of the model."
        )
    from vlmedge.exporters.sources.hf import from_hf

    return from_hf(model, task=task, **options)
