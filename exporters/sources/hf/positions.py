"""Position embeddings interpolated once by the source's own code and traced as constants."""

from __future__ import annotations

import inspect
import warnings
from typing import Any

import torch

from vlmedge.errors import ExportError
from vlmedge.exporters.sources.hf.folder import refuse_reached


class FrozenPositions:
    """Stands in for an embeddings module's interpolate_pos_encoding: runs the source's own
    method once per resolution, eagerly, and returns that tensor from then on (a constant
    when traced), so the exported graph carries exactly the source's position embeddings."""

    def __init__(self, method: Any) -> None:
        self.method = method
        self.cache: dict[tuple[int, ...], torch.Tensor] = {}

    def __call__(self, embeddings: torch.Tensor, height: Any, width: Any) -> torch.Tensor:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # int() of traced sizes
            key = (int(height), int(width), int(embeddings.shape[1]))
        if key not in self.cache:
            if torch.jit.is_tracing():
                raise ExportError("internal: position embeddings were not prepared for the export resolution")
            if torch.is_inference_mode_enabled():  # autograd cannot look: computed, kept once it can
                return self.method(embeddings, height, width)
            with torch.enable_grad():  # for autograd to say whether they read a weight the source left unset
                positions = self.method(embeddings, height, width)
            refuse_reached([positions], self.method.__self__.parameters())
            self.cache[key] = positions.detach().clone()
        return self.cache[key]


def freeze_position_embeddings(model: torch.nn.Module) -> None:
    """Position embeddings interpolated by the source's own code once, eagerly, and traced
    as constants (as the encoder path does), so an antialiased bicubic resize (DINOv2 with
    registers) never has to be exported."""
    for module in model.modules():
        method = getattr(module, "interpolate_pos_encoding", None)
        if not (callable(method) and inspect.ismethod(method)):
            continue
        if list(inspect.signature(method).parameters)[:3] == ["embeddings", "height", "width"]:
            module.interpolate_pos_encoding = FrozenPositions(method)
