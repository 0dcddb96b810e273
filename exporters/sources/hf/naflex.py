"""SigLIP2's NaFlex models (Siglip2Model, Siglip2VisionModel, Siglip2ForImageClassification)
exported at one resolution the user chooses (``image_size=`` / ``--image-size``).

A NaFlex processor resizes each image to its own patch grid (the most patches up to
``max_num_patches`` that keep its aspect), flattens the patches, pads them to
``max_num_patches`` with a ``pixel_attention_mask``, and hands the grid over as
``spatial_shapes``; the model resizes its learned position embeddings to each grid. So
the input shape depends on each image, which a static graph cannot follow. vlmedge fixes
the resolution instead: the preprocessing resizes every image to exactly HxW (multiples
of the patch size) with the processor's resample filter, then rescales and normalises it
as the processor does, and the graph takes (N, 3, H, W) pixel values and does the rest of
the processor's work before calling the model:

    pixel_values          (N, H/p * W/p, p * p * 3)  the patches in the processor's order: row-major
                                                     over the grid, each patch (row, column, channel)
    pixel_attention_mask  all ones                   no padding: every image has the same grid
    spatial_shapes        (H/p, W/p) for every image

The position embeddings for that grid are computed once, by the source's own resize, and
enter the graph as a constant (no resize in the graph). The graph therefore computes what
the source computes on the processor's output for an image the processor resizes to HxW,
which it does when ``max_num_patches`` is (H/p) * (W/p) and the image has the aspect H:W;
an image of another aspect is stretched to HxW here, where the processor would pick another
grid.

This module imports no other source module: hf.encoder calls ``naflex_setup`` for its SigLIP2
architecture, hf.classifier and hf.clip through hf.processor's ``naflex_or_processor_size``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import torch

from vlmedge.errors import ExportError, UnsupportedModelError
from vlmedge.exporters.sources.hf.folder import refuse_if_unset
from vlmedge.preprocess.image import ImagePreprocessSpec
from vlmedge.preprocess.image.hf import processor_kind

MODEL_TYPES = frozenset({"siglip2", "siglip2_vision_model"})  # the config model types whose vision tower is NaFlex
PROCESSOR_KIND = "Siglip2"


def is_naflex(config: Any) -> bool:
    """Whether the model's vision tower takes NaFlex patches (SigLIP2)."""
    return getattr(config, "model_type", None) in MODEL_TYPES


def _vision(config: Any) -> Any:
    return getattr(config, "vision_config", None) or config


def _patch_size(arch: str, vision: Any) -> int:
    value = vision.patch_size
    sides = set(value) if isinstance(value, (list, tuple)) else {value}
    if len(sides) != 1:
        raise UnsupportedModelError(f"{arch} has non-square patches {value}; vlmedge exports NaFlex models with "
                                    "square patches only.")
    return int(sides.pop())


def _position_side(vision: Any) -> int:
    """The side of the learned position embeddings' square grid (num_patches of them)."""
    return math.isqrt(int(vision.num_patches))


def needs_image_size(arch: str, config: Any) -> str:
    """Why a NaFlex export needs image_size, with the model's own position grid as the example."""
    patch, side = _patch_size(arch, _vision(config)), _position_side(_vision(config))
    return (f"{arch} is a SigLIP2 NaFlex model, whose input shape depends on each image; export it at a fixed "
            f"resolution with --image-size (Python: image_size=), e.g. --image-size {side * patch} for its "
            f"{side}x{side} grid of {patch}-pixel patches.")


@dataclass(frozen=True)
class NaFlex:
    """One NaFlex export: the fixed resolution's preprocessing and patch grid."""

    preprocess: ImagePreprocessSpec
    patch_size: int
    grid: tuple[int, int]          # (H / patch_size, W / patch_size)
    position_grid: tuple[int, int]  # the learned position embeddings' grid, resized to `grid`

    def images(self, model: torch.nn.Module) -> NaFlexImages:
        """`model` taking (N, 3, H, W) pixel values, patchified in the graph."""
        return NaFlexImages(model, self.patch_size, self.grid)

    def source(self) -> dict[str, Any]:
        """What the manifest's source section records about the chosen resolution."""
        height, width = self.preprocess.output_size
        return {"image_size": [height, width],
                "naflex": {"patch_size": self.patch_size, "grid": list(self.grid),
                           "num_patches": self.grid[0] * self.grid[1], "position_grid": list(self.position_grid),
                           "pixel_attention_mask": "all ones"}}


def naflex_setup(config: Any, arch: str, size: tuple[int, int] | None,
                 processor_config: Callable[[], dict[str, Any]]) -> NaFlex:
    """The NaFlex export of a model at size = (height, width), checked against its processor.

    Args:
        config: the model's config (its vision_config, or itself for a vision tower).
        size: the parsed image_size option; None is refused with why and an example.
        processor_config: reads the saved image processor's config (called once the size is valid).

    Raises:
        UnsupportedModelError: no size, or a processor vlmedge cannot fix to one resolution.
        ExportError: a size that is not a multiple of the patch size.
    """
    if size is None:
        raise UnsupportedModelError(needs_image_size(arch, config))
    vision = _vision(config)
    patch = _patch_size(arch, vision)
    height, width = size
    if height % patch or width % patch:
        raise ExportError(
            f"image_size {height}x{width} is not a multiple of {arch}'s patch size {patch}; choose e.g. "
            f"image_size={max(patch, height // patch * patch)}x{max(patch, width // patch * patch)}."
        )
    side = _position_side(vision)
    return NaFlex(preprocess=_preprocess(processor_config(), size, patch), patch_size=patch,
                  grid=(height // patch, width // patch), position_grid=(side, side))


def _preprocess(config: dict[str, Any], size: tuple[int, int], patch: int) -> ImagePreprocessSpec:
    """The Siglip2 processor's steps with its smart resize fixed to `size`: resize to exactly
    that size with its resample filter, rescale, normalise. These are the ViT processor's
    operations, so the one interpreter of processor configs reads them as such."""
    import transformers

    kind = processor_kind(config)
    if kind != PROCESSOR_KIND:
        raise UnsupportedModelError(
            f"vlmedge exports SigLIP2 NaFlex models with their Siglip2 image processor, not {kind or 'an unknown one'!r}; "
            "save the model's Siglip2ImageProcessor beside it."
        )
    cls = getattr(transformers, "Siglip2ImageProcessorPil", None) or transformers.Siglip2ImageProcessor
    try:  # the class's defaults for the keys the saved config leaves out, as from_pretrained does
        c = cls.from_dict(dict(config)).to_dict()
    except Exception as exc:  # noqa: BLE001 - whatever the processor class rejects
        reason = " ".join(str(exc).split())[:200]
        raise UnsupportedModelError(f"Cannot read the saved Siglip2 image processor config ({type(exc).__name__}: "
                                    f"{reason}); save the model's processor again with save_pretrained.") from None
    if int(c.get("patch_size") or patch) != patch:
        raise UnsupportedModelError(
            f"The saved Siglip2 image processor cuts {c['patch_size']}-pixel patches but the model's are {patch}; "
            "save the processor that belongs to the model."
        )
    if not c.get("do_resize", True):
        raise UnsupportedModelError("This Siglip2 image processor does not resize (do_resize=False), so no fixed "
                                    "resolution reproduces it; save it with do_resize=True.")
    resample = c.get("resample")
    height, width = size
    return ImagePreprocessSpec.from_hf({
        "image_processor_type": "ViTImageProcessor", "do_resize": True, "size": {"height": height, "width": width},
        "resample": None if resample is None else int(getattr(resample, "value", resample)),
        "do_center_crop": False, "do_rescale": bool(c.get("do_rescale")), "rescale_factor": c.get("rescale_factor"),
        "do_normalize": bool(c.get("do_normalize")), "image_mean": c.get("image_mean"),
        "image_std": c.get("image_std"), "do_convert_rgb": c.get("do_convert_rgb"),
    })


class FrozenGridPositions:
    """Stands in for a NaFlex embeddings module's resize_positional_embeddings: runs the
    source's own resize once, eagerly, for the export grid (every image has it) and returns
    that (1, patches, D) tensor from then on, a constant when traced."""

    def __init__(self, method: Any, owner: torch.nn.Module) -> None:
        self.method = method
        self.owner = owner  # the embeddings module, whose every weight the positions or the patches read
        self.cache: dict[int, torch.Tensor] = {}

    def __call__(self, positional_embeddings: torch.Tensor, spatial_shapes: torch.Tensor,
                 max_length: Any) -> torch.Tensor:
        key = int(max_length)
        if key not in self.cache:
            if torch.jit.is_tracing():
                raise ExportError("internal: the NaFlex position embeddings were not prepared for the export grid")
            refuse_if_unset(*self.owner.parameters())  # a constant from here on, out of autograd's sight
            with torch.no_grad():
                self.cache[key] = self.method(positional_embeddings, spatial_shapes[:1], max_length=key).detach().clone()
        return self.cache[key]


class NaFlexImages(torch.nn.Module):
    """A NaFlex model (or its vision tower) called with (N, 3, H, W) pixel values: forward and
    get_image_features patchify them as the processor does and pass an all-ones mask and the
    fixed grid."""

    def __init__(self, model: torch.nn.Module, patch_size: int, grid: tuple[int, int]) -> None:
        super().__init__()
        self.model = model
        self.patch_size = patch_size
        self.grid = grid
        self.register_buffer("grid_shape", torch.tensor([grid], dtype=torch.long), persistent=False)
        resizers = [m for m in model.modules() if callable(getattr(m, "resize_positional_embeddings", None))]
        if not resizers:
            raise UnsupportedModelError(f"{type(model).__name__} has no NaFlex position embeddings "
                                        "(resize_positional_embeddings); vlmedge cannot export it at a fixed resolution.")
        for module in resizers:
            module.resize_positional_embeddings = FrozenGridPositions(module.resize_positional_embeddings, module)

    def naflex_inputs(self, pixel_values: torch.Tensor) -> dict[str, torch.Tensor]:
        """The processor's pixel_values, pixel_attention_mask and spatial_shapes for these images."""
        (gh, gw), p, channels = self.grid, self.patch_size, int(pixel_values.shape[1])
        # convert_image_to_patches: (C, gh, p, gw, p) -> (gh, gw, p, p, C) -> (gh * gw, p * p * C)
        patches = (pixel_values.reshape(-1, channels, gh, p, gw, p).permute(0, 2, 4, 3, 5, 1)
                   .reshape(-1, gh * gw, p * p * channels))
        # ones_like keeps the batch axis dynamic in the traced graph
        mask = torch.ones_like(patches[:, :, 0], dtype=torch.int32)
        shapes = torch.ones_like(patches[:, :2, 0], dtype=torch.long) * self.grid_shape
        return {"pixel_values": patches, "pixel_attention_mask": mask, "spatial_shapes": shapes}

    def forward(self, pixel_values: torch.Tensor, **kwargs: Any) -> Any:
        return self.model(**self.naflex_inputs(pixel_values), **kwargs)

    def get_image_features(self, pixel_values: torch.Tensor) -> Any:
        return self.model.get_image_features(**self.naflex_inputs(pixel_values))
