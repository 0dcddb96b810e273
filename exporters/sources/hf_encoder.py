"""Image embeddings from Hugging Face vision encoders: DINO (ViTModel), DINOv2 with and
without registers, MAE used as a feature encoder, Swin, DeiT and BEiT.

One graph, "model": pixel_values (N, 3, H, W) ->
    cls           (N, D)        the CLS token of the last hidden state (not for Swin)
    patch_tokens  (N, h, w, D)  the patch tokens as a grid, CLS / distillation / register tokens left out
    pooled        (N, D)        the model's own pooling (Swin's average pool, BEiT's mean-pool + LayerNorm)
    attentions    (N, heads, h, w)  last layer, CLS query -> patch keys, per head (attention=True, not Swin)

The graph is static in resolution: the position embeddings are interpolated once, by
the source's own code, for the export resolution and enter the graph as constants, so
the antialiased bicubic resize of DINOv2 with registers never has to be exported.
How the source's authors pool (DINOv2's linear probe: CLS + mean of patches; DINO: CLS;
MAE: mean of patches; Swin and BEiT: the pooler) is recorded in the manifest.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from vlmedge.errors import ExportError, UnsupportedModelError
from vlmedge.exporters.samples import image_parity_feeds
from vlmedge.exporters.sources.hf import FrozenPositions, image_preprocess, load_model, source_info
from vlmedge.exporters.spec import ExportSpec, GraphSpec
from vlmedge.preprocess.image import ImagePreprocessSpec

POOLINGS = ("cls", "mean", "cls+mean", "pooled")


@dataclass(frozen=True)
class Family:
    """How one architecture lays out its tokens and how its authors pool them."""

    name: str
    default_pooling: str
    extra_prefix_tokens: int = 0       # tokens between CLS and the patches (DeiT's distillation token)
    has_cls: bool = True
    pos_flag: bool = True              # forward() takes interpolate_pos_encoding
    attention: bool = True             # has a CLS query to read attention maps from
    use_pooler: bool = False           # export the model's pooler_output as `pooled`


FAMILIES: dict[str, Family] = {
    # DINO v1 checkpoints are ViT encoders; their HF pooler (dense + tanh) is not trained by DINO.
    "ViTModel": Family("dino", "cls"),
    "DeiTModel": Family("deit", "cls", extra_prefix_tokens=1),
    "BeitModel": Family("beit", "pooled", use_pooler=True),
    "Dinov2Model": Family("dinov2", "cls+mean", pos_flag=False),
    "Dinov2WithRegistersModel": Family("dinov2", "cls+mean", pos_flag=False),
    "ViTMAEModel": Family("mae", "mean"),
    "SwinModel": Family("swin", "pooled", has_cls=False, attention=False, use_pooler=True),
}


def parse_image_size(image_size: Any) -> tuple[int, int] | None:
    """None, an int, "448", "448x336" (height x width) or (height, width) -> (height, width)."""
    if image_size is None:
        return None
    value = image_size
    if isinstance(value, str):
        parts = value.lower().replace(",", "x").split("x")
        try:
            value = [int(p) for p in parts] if len(parts) in (1, 2) else None
        except ValueError:
            value = None
        if value is not None and len(value) == 1:
            value = value[0]
    if isinstance(value, int) and not isinstance(value, bool):
        value = (value, value)
    if (isinstance(value, (list, tuple)) and len(value) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value)):
        return int(value[0]), int(value[1])
    raise ExportError(f"image_size must be a positive int or (height, width), e.g. 448 or 448x336, not {image_size!r}.")


def preprocess_at(spec: ImagePreprocessSpec, size: tuple[int, int]) -> ImagePreprocessSpec:
    """The processor's preprocessing moved to output (height, width) = size.

    A centre crop becomes the new size and the resize before it is scaled by the same
    factor, so the crop keeps the processor's crop fraction (DINOv2: shortest edge
    256 -> crop 224 becomes 512 -> 448); without a crop the image is resized to the size.
    """
    height, width = size
    if spec.output_size == (height, width):
        return spec
    if not spec.do_center_crop:
        return dataclasses.replace(spec, do_resize=True, size={"height": height, "width": width})
    crop = spec.crop_size
    resize = spec.size
    if spec.do_resize:
        if "height" in resize:
            resize = {"height": max(height, round(resize["height"] * height / crop["height"])),
                      "width": max(width, round(resize["width"] * width / crop["width"]))}
        else:
            ratio = resize["shortest_edge"] / min(crop["height"], crop["width"])
            edge = max(height, width, round(max(height, width) * ratio))
            scaled = {"shortest_edge": edge}
            if "longest_edge" in resize:
                scaled["longest_edge"] = max(edge, round(resize["longest_edge"] * edge / resize["shortest_edge"]))
            resize = scaled
    return dataclasses.replace(spec, size=resize, crop_size={"height": height, "width": width})


def _keep_every_patch(sequence: torch.Tensor, noise: torch.Tensor | None = None):
    """ViTMAE's random_masking with mask_ratio 0 and noise = arange: every patch kept, in
    order. argsort(arange) is the identity, so the HF code would gather each token onto
    itself; this returns the same tensors without the argsort and gathers."""
    batch, length, _ = sequence.shape
    mask = torch.zeros(batch, length, dtype=sequence.dtype, device=sequence.device)
    ids_restore = torch.arange(length, device=sequence.device).unsqueeze(0).expand(batch, length)
    return sequence, mask, ids_restore


class EncoderOutputs(torch.nn.Module):
    """A Hugging Face encoder as a graph of plain tensors: cls, patch_tokens, pooled, attentions."""

    def __init__(self, model: torch.nn.Module, family: Family, prefix: int, grid: tuple[int, int],
                 interpolate: bool, attention: bool, pooled: bool) -> None:
        super().__init__()
        self.model = model
        self.family = family
        self.prefix = prefix
        self.grid = grid
        self.interpolate = interpolate
        self.attention = attention
        self.pooled = pooled
        # Filled in after a first eager run so the traced reshapes have static shapes.
        self.hidden_size: int = -1
        self.heads: int = -1

    @property
    def output_names(self) -> list[str]:
        names = ["cls"] if self.family.has_cls else []
        names.append("patch_tokens")
        if self.pooled:
            names.append("pooled")
        if self.attention:
            names.append("attentions")
        return names

    def forward(self, pixel_values: torch.Tensor):
        kwargs: dict[str, Any] = {"output_attentions": True} if self.attention else {}
        if self.family.pos_flag and self.interpolate:
            kwargs["interpolate_pos_encoding"] = True
        out = self.model(pixel_values=pixel_values, **kwargs)
        hidden = out.last_hidden_state
        h, w = self.grid
        results = [hidden[:, 0]] if self.family.has_cls else []
        dim = self.hidden_size if self.hidden_size > 0 else hidden.shape[-1]
        results.append(hidden[:, self.prefix:].reshape(-1, h, w, dim))
        if self.pooled:
            results.append(out.pooler_output)
        if self.attention:
            last = out.attentions[-1]  # (N, heads, tokens, tokens)
            heads = self.heads if self.heads > 0 else last.shape[1]
            results.append(last[:, :, 0, self.prefix:].reshape(-1, heads, h, w))
        return tuple(results)


def _pair(value: Any) -> tuple[int, int]:
    return (int(value[0]), int(value[1])) if isinstance(value, (list, tuple)) else (int(value), int(value))


def _grid(config: Any, arch: str, height: int, width: int) -> tuple[int, int]:
    ph, pw = _pair(config.patch_size)
    if height % ph or width % pw:
        raise ExportError(
            f"The export resolution {height}x{width} is not a multiple of {arch}'s patch size {ph}x{pw}; "
            f"choose e.g. image_size={max(ph, height // ph * ph)}x{max(pw, width // pw * pw)}."
        )
    h, w = height // ph, width // pw
    if arch == "SwinModel":  # every stage after the first merges 2x2 patches, padding odd sizes
        for _ in range(len(config.depths) - 1):
            h, w = math.ceil(h / 2), math.ceil(w / 2)
    return h, w


def image_encoder(folder: Path, config: Any, arch: str, reference: str, image_size: Any = None,
                  attention: bool = True, **_: Any) -> ExportSpec:
    """The ExportSpec of a self-supervised (or any) image encoder, for image embeddings.

    Args:
        image_size: export resolution, an int or (height, width); default: the processor's.
            Position embeddings are interpolated as the source does it, and the
            preprocessing's resize and crop are moved to that size.
        attention: also output the last layer's CLS-to-patch attention per head.
    """
    family = FAMILIES.get(arch)
    if family is None:
        raise UnsupportedModelError(
            f"vlmedge cannot export {arch} for image embeddings; supported: {', '.join(sorted(FAMILIES))}."
        )
    base = image_preprocess(folder)
    size = parse_image_size(image_size) or base.output_size
    preprocess = preprocess_at(base, size)
    height, width = preprocess.output_size
    model = load_model(folder, arch)
    grid = _grid(config, arch, height, width)
    native = _pair(getattr(config, "image_size", (height, width)))
    interpolate = (height, width) != native

    embeddings = getattr(model, "embeddings", None)
    if embeddings is not None and hasattr(embeddings, "interpolate_pos_encoding"):
        embeddings.interpolate_pos_encoding = FrozenPositions(embeddings.interpolate_pos_encoding)
    if arch == "ViTMAEModel":
        model.config.mask_ratio = 0.0
        model.embeddings.random_masking = _keep_every_patch

    registers = int(getattr(config, "num_register_tokens", 0) or 0) if arch == "Dinov2WithRegistersModel" else 0
    prefix = (1 if family.has_cls else 0) + family.extra_prefix_tokens + registers
    pooled = family.use_pooler and getattr(model, "pooler", None) is not None
    if arch == "BeitModel" and not getattr(config, "use_mean_pooling", False):
        pooled = False  # its pooler would be the CLS token again
    with_attention = bool(attention) and family.attention
    module = EncoderOutputs(model, family, prefix, grid, interpolate, with_attention, pooled).eval()

    # One eager run at the export resolution prepares the position embeddings and checks the layout.
    with torch.no_grad():
        probe = module(torch.zeros(1, 3, height, width))
    outputs = dict(zip(module.output_names, probe))
    hidden_size = module.hidden_size = int(outputs["patch_tokens"].shape[-1])
    heads = int(outputs["attentions"].shape[1]) if with_attention else None
    module.heads = heads or -1

    default_pooling = family.default_pooling
    if default_pooling == "pooled" and not pooled:
        default_pooling = "cls" if family.has_cls else "mean"
    poolings = [p for p in POOLINGS if (family.has_cls or "cls" not in p) and (p != "pooled" or pooled)]

    names = module.output_names
    dynamic = {name: {0: "batch"} for name in ["pixel_values", *names]}
    pixels, sample_files = image_parity_feeds(preprocess)
    graph = GraphSpec(
        name="model",
        module=module,
        input_names=["pixel_values"],
        output_names=names,
        example_inputs={"pixel_values": torch.randn(2, 3, height, width)},
        dynamic_axes=dynamic,
        compare={name: "embedding" for name in names},
    )
    embedding = {
        "family": family.name,
        "default_pooling": default_pooling,
        "poolings": poolings,
        "hidden_size": hidden_size,
        "grid": list(grid),
        "image_size": [height, width],
        "native_image_size": list(native),
        "position_embeddings_interpolated": interpolate and (
            arch != "SwinModel" or bool(getattr(config, "use_absolute_embeddings", False))),
        "static_resolution": True,
        "patch_size": list(_pair(config.patch_size)),
        "num_prefix_tokens": prefix,
        "num_register_tokens": registers,
        "attention": {"heads": heads, "layer": "last", "query": "cls"} if with_attention else None,
    }
    if arch == "ViTMAEModel":
        embedding["mae_masking"] = "none (mask_ratio 0, identity patch order)"
    source = source_info(reference, folder, arch, config)
    if image_size is not None:
        source["image_size"] = [height, width]
    return ExportSpec(
        task="image-embedding",
        graphs=[graph],
        preprocess={"image": preprocess.to_dict()},
        labels=None,
        postprocess={"normalize": True, "pooling": default_pooling},
        source=source,
        parity_feeds={"model": {"pixel_values": pixels}},
        extra_files=sample_files,
        manifest_extra={"embedding": embedding},
    )
