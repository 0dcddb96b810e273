"""Image embeddings from Hugging Face vision backbones saved as their base model: DINO
(ViTModel), DINOv2 with and without registers, DINOv3 (ViT and ConvNeXt), MAE used as a
feature encoder, I-JEPA, MSN, Hiera, Data2Vec vision, the Swin family, DeiT, BEiT, the
SigLIP, CLIP, MetaCLIP 2, AIMv2, MLCD and TIPSv2 vision towers, SigLIP2's NaFlex tower at a
resolution the user chooses (hf.naflex), the CNNs and hybrids of transformers'
image-classification and backbone mappings; each family's layout and its authors' pooling
(what its image classifier pools) are data in FAMILIES, and the refusals with their reasons
in REFUSED.

One graph, "model": pixel_values (N, 3, H, W) ->
    cls           (N, D)        the CLS token of the last hidden state (models that have one)
    patch_tokens  (N, h, w, D)  the patch tokens as a grid, CLS / distillation / register tokens left out
                                (a CNN's last feature map, channels last; Hiera's last stage in image order)
    pooled        (N, D)        the model's own pooler_output (Swin's average pool, BEiT's mean-pool +
                                LayerNorm, SigLIP's attention head, CLIP's post-LayerNorm CLS ...)
    attentions    (N, heads, h, w)  last layer, CLS query -> patch keys, per head (attention=True, ViTs)

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

from vlmedge.errors import ExportError, UnsupportedModelError, exception_line
from vlmedge.exporters.samples import image_parity_feeds
from vlmedge.exporters.sources.hf.folder import load_model, source_info
from vlmedge.exporters.sources.hf.naflex import naflex_setup
from vlmedge.exporters.sources.hf.positions import freeze_position_embeddings
from vlmedge.exporters.sources.hf.processor import image_preprocess, processor_config
from vlmedge.exporters.spec import ExportSpec, GraphSpec, parse_image_size
from vlmedge.preprocess.image import ImagePreprocessSpec

POOLINGS = ("cls", "mean", "cls+mean", "pooled")


@dataclass(frozen=True)
class Family:
    """How one architecture lays out its tokens and how its authors pool them."""

    name: str
    default_pooling: str
    has_cls: bool = True
    cls_output: str = ""               # the output holding the CLS where it is not token 0 (Cvt: cls_token_value)
    pos_flag: bool = True              # forward() takes interpolate_pos_encoding
    attention: bool = True             # has a CLS query to read attention maps from
    use_pooler: bool = False           # export the model's pooler_output as `pooled`
    layout: str = "tokens"             # "tokens": (N, L, D) sequence; "map": (N, D, h, w) conv feature map;
                                       # "reroll": the spatial (N, h, w, D) last reshaped_hidden_states (Hiera);
                                       # "channels_last": last_hidden_state is already (N, h, w, D) (Dinat)
    registers: bool = False            # config.num_register_tokens sit between CLS and the patches
    probe_grid: bool = False           # the token grid is read from a first run (LeViT, PVT: strides the
                                       # config does not spell out as one patch_size)
    merges: bool = False               # every stage after the first merges 2x2 patches (Swin)
    positions: str = "learned"         # "learned" (interpolated once), "rope" (from the grid), "none" (conv),
                                       # "naflex" (SigLIP2: resized once to the grid image_size= chooses)
    stem: int = 0                      # the first stage's stride where the config has no patch_size


_CONV = dict(has_cls=False, pos_flag=False, attention=False, use_pooler=True, layout="map", positions="none")
# A feature map without a pooler: the classifier averages the map ("mean").
_MAP = dict(_CONV, use_pooler=False)
_SWIN = dict(has_cls=False, attention=False, use_pooler=True, merges=True)

FAMILIES: dict[str, Family] = {
    # DINO v1 checkpoints are ViT encoders; their HF pooler (dense + tanh) is not trained by DINO.
    "ViTModel": Family("dino", "cls"),
    "DeiTModel": Family("deit", "cls"),  # CLS, then the distillation token, then the patches
    "BeitModel": Family("beit", "pooled", use_pooler=True),
    "Dinov2Model": Family("dinov2", "cls+mean", pos_flag=False),
    "Dinov2WithRegistersModel": Family("dinov2", "cls+mean", pos_flag=False, registers=True),
    "ViTMAEModel": Family("mae", "mean"),
    "SwinModel": Family("swin", "pooled", **_SWIN),
    # DINOv3: the model card's embedding is pooler_output, the CLS token after the final norm.
    "DINOv3ViTModel": Family("dinov3", "cls", pos_flag=False, registers=True, positions="rope"),
    # DINOv3 ConvNeXt: its "CLS" is the normalised mean of the last feature map, placed before the patches.
    "DINOv3ConvNextModel": Family("dinov3-convnext", "cls", pos_flag=False, attention=False, merges=True,
                                  positions="none", stem=4),
    "IJepaModel": Family("ijepa", "mean", has_cls=False, attention=False),  # no CLS: the authors average patches
    "ViTMSNModel": Family("msn", "cls"),
    "HieraModel": Family("hiera", "pooled", has_cls=False, attention=False, use_pooler=True, layout="reroll"),
    # Data2Vec vision's linear probe mean-pools the patches; HF builds the model without its pooler.
    "Data2VecVisionModel": Family("data2vec-vision", "mean", use_pooler=True),
    "SiglipVisionModel": Family("siglip", "pooled", has_cls=False, attention=False, use_pooler=True),
    # SigLIP2's NaFlex tower, exported at the resolution image_size= chooses (hf.naflex)
    "Siglip2VisionModel": Family("siglip2", "pooled", has_cls=False, pos_flag=False, attention=False, use_pooler=True,
                                 positions="naflex"),
    "CLIPVisionModel": Family("clip", "pooled", use_pooler=True),  # post-LayerNorm CLS, before the projection
    "ConvNextModel": Family("convnext", "pooled", **_CONV),
    "ConvNextV2Model": Family("convnextv2", "pooled", **_CONV),
    "Swinv2Model": Family("swinv2", "pooled", **_SWIN),
    "BitModel": Family("bit", "pooled", **_CONV),
    "ResNetModel": Family("resnet", "pooled", **_CONV),
    # The classifiers of these pool the base model's pooler_output (an average of the last stage).
    "DonutSwinModel": Family("donut-swin", "pooled", **_SWIN),
    "MaskFormerSwinModel": Family("maskformer-swin", "pooled", **_SWIN),
    "FocalNetModel": Family("focalnet", "pooled", **dict(_SWIN, pos_flag=False, positions="none")),
    # Dinat's stages stay channels last; its classifier pools pooler_output. Exported only where
    # natten is installed (load_model refuses it otherwise), so it is not checked in vlmedge's tests.
    "DinatModel": Family("dinat", "pooled", **dict(_SWIN, pos_flag=False, merges=False, layout="channels_last",
                                                    positions="none")),
    "EfficientNetModel": Family("efficientnet", "pooled", **_CONV),
    "MobileNetV1Model": Family("mobilenet_v1", "pooled", **_CONV),
    "MobileNetV2Model": Family("mobilenet_v2", "pooled", **_CONV),
    "MobileViTModel": Family("mobilevit", "pooled", **_CONV),
    "MobileViTV2Model": Family("mobilevitv2", "pooled", **_CONV),
    "RegNetModel": Family("regnet", "pooled", **_CONV),
    # TextNet's pooler is a 2x2 average; its classifier averages the whole map.
    "TextNetModel": Family("textnet", "mean", **_MAP),
    # PoolFormer and SwiftFormer classifiers normalise the map (GroupNorm, BatchNorm) before
    # averaging it; the base model has no such norm, so its embedding is the plain average.
    "PoolFormerModel": Family("poolformer", "mean", **_MAP),
    "SwiftFormerModel": Family("swiftformer", "mean", **_MAP),
    "PvtV2Model": Family("pvt_v2", "mean", **_MAP),
    "SegformerModel": Family("segformer", "mean", **_MAP),
    "VitDetModel": Family("vitdet", "mean", **dict(_MAP, positions="learned")),  # a detection backbone: no CLS
    # Cvt's classifier reads its CLS (cls_token_value) through a LayerNorm the base model lacks.
    "CvtModel": Family("cvt", "cls", **dict(_MAP, has_cls=True), cls_output="cls_token_value"),
    # LeViT: tokens without CLS, on a grid 4x smaller than patch_size says; its classifier averages them.
    "LevitModel": Family("levit", "pooled", has_cls=False, pos_flag=False, attention=False, use_pooler=True,
                         probe_grid=True),
    "PvtModel": Family("pvt", "cls", pos_flag=False, attention=False, probe_grid=True),  # CLS of the last stage
    "MetaClip2VisionModel": Family("metaclip2", "pooled", use_pooler=True),  # as CLIP
    "Aimv2VisionModel": Family("aimv2", "pooled", has_cls=False, pos_flag=False, attention=False, use_pooler=True),
    "MLCDVisionModel": Family("mlcd", "pooled", pos_flag=False, use_pooler=True, positions="rope"),
    # Pixio's pooler_output is the mean of its class tokens (n_cls_tokens before the patches).
    "PixioModel": Family("pixio", "pooled", pos_flag=False, use_pooler=True),
    "Sapiens2Model": Family("sapiens2", "cls", pos_flag=False, registers=True, positions="rope"),
    # TIPSv2: token 0 is the CLS trained on alt-text captions (the register on synthetic ones).
    "Tipsv2VisionModel": Family("tipsv2", "cls", pos_flag=False, registers=True),
}
# Backbone classes without a base model in transformers: feature maps for a detection,
# segmentation, layout or pose head, with no embedding their authors pool.
_BACKBONES_ONLY = ("HGNetV2Backbone", "LwDetrViTBackbone", "PPLCNetBackbone", "PPLCNetV3Backbone", "PPLCNetV4Backbone",
                   "RfDetrDinov2Backbone", "RTDetrResNetBackbone", "UVDocBackbone", "VitPoseBackbone", "TimmBackbone")
# Vision encoders vlmedge refuses, and why.
REFUSED: dict[str, str] = {
    **{name: "it is a backbone of feature maps for a detection, segmentation or pose head, and transformers has "
             "no base model of it to pool an image embedding from" for name in _BACKBONES_ONLY},
    "ImageGPTModel": "it is a generative model of colour-cluster ids (input_ids), not an encoder of pixels",
    "PerceiverModel": "its forward takes the output of a Perceiver preprocessor (inputs), not pixel_values",
    "ShieldGemma2ForImageClassification": "it classifies an image together with a text prompt through Gemma 3, and "
                                          "transformers has no vision base model of it",
}
ARCHITECTURES = frozenset(FAMILIES) | frozenset(REFUSED)  # what hf.infer_task sends here


def refusal(arch: str) -> str | None:
    """The sentence refusing `arch` by name (REFUSED), or None; the export and the listing
    of supported architectures both say it."""
    return f"vlmedge cannot export {arch} for image embeddings: {REFUSED[arch]}." if arch in REFUSED else None


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

    def __init__(self, model: torch.nn.Module, family: Family, prefix: int, grid: tuple[int, int] | None,
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
        if self.family.layout == "reroll":
            kwargs["output_hidden_states"] = True
        out = self.model(pixel_values=pixel_values, **kwargs)
        hidden = out.last_hidden_state
        results = []
        if self.family.has_cls:
            results.append(getattr(out, self.family.cls_output)[:, 0] if self.family.cls_output else hidden[:, 0])
        if self.family.layout == "map":  # (N, D, h, w) -> (N, h, w, D)
            results.append(hidden.permute(0, 2, 3, 1))
        elif self.family.layout == "reroll":
            results.append(out.reshaped_hidden_states[-1])
        elif self.family.layout == "channels_last":
            results.append(hidden)
        else:
            if self.grid is None:  # the first (eager) run of a probe_grid family
                self.grid = grid_of(hidden.shape[1] - self.prefix, *pixel_values.shape[-2:])
            h, w = self.grid
            dim = self.hidden_size if self.hidden_size > 0 else hidden.shape[-1]
            results.append(hidden[:, self.prefix:].reshape(-1, h, w, dim))
        if self.pooled:
            results.append(out.pooler_output.flatten(1))  # Bit, ResNet: (N, D, 1, 1)
        if self.attention:
            h, w = self.grid or (-1, -1)
            last = out.attentions[-1]  # (N, heads, tokens, tokens)
            heads = self.heads if self.heads > 0 else last.shape[1]
            results.append(last[:, :, 0, self.prefix:].reshape(-1, heads, h, w))
        return tuple(results)


def grid_of(tokens: int, height: int, width: int) -> tuple[int, int]:
    """The (h, w) grid of `tokens` patch tokens of a height x width image, for one stride
    in both directions, rounded up as strided convolutions round (LeViT, PVT)."""
    stride = math.sqrt(height * width / tokens)
    for step in sorted({math.floor(stride), math.ceil(stride), round(stride)} - {0}):
        h, w = math.ceil(height / step), math.ceil(width / step)
        if h * w == tokens:
            return h, w
    raise ExportError(f"{tokens} patch tokens do not tile a {height}x{width} image with one stride; "
                      "vlmedge cannot lay them out as a grid.")


def _pair(value: Any) -> tuple[int, int]:
    return (int(value[0]), int(value[1])) if isinstance(value, (list, tuple)) else (int(value), int(value))


def _grid(config: Any, arch: str, family: Family, height: int, width: int) -> tuple[int, int] | None:
    """The patch grid of a token layout, known before the model runs (None for the others)."""
    if family.layout != "tokens" or family.probe_grid:
        return None
    ph, pw = _pair(family.stem or config.patch_size)
    if height % ph or width % pw:
        raise ExportError(
            f"The export resolution {height}x{width} is not a multiple of {arch}'s patch size {ph}x{pw}; "
            f"choose e.g. image_size={max(ph, height // ph * ph)}x{max(pw, width // pw * pw)}."
        )
    h, w = height // ph, width // pw
    if family.merges:  # every stage after the first merges 2x2 patches, padding odd sizes
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
        raise UnsupportedModelError(refusal(arch) or
                                    f"vlmedge cannot export {arch} for image embeddings; supported: "
                                    f"{', '.join(sorted(FAMILIES))}.")
    naflex = None
    if family.positions == "naflex":
        naflex = naflex_setup(config, arch, parse_image_size(image_size), lambda: processor_config(folder))
        preprocess = naflex.preprocess
    else:
        base = image_preprocess(folder)
        preprocess = preprocess_at(base, parse_image_size(image_size) or base.output_size)
    height, width = preprocess.output_size
    model = load_model(folder, arch)
    grid = _grid(config, arch, family, height, width)
    if naflex:
        native = tuple(side * naflex.patch_size for side in naflex.position_grid)
    else:
        native = _pair(getattr(config, "image_size", (height, width)))
    resized = (height, width) != native and family.positions in ("learned", "naflex")
    interpolate = resized and family.positions == "learned"  # forward(interpolate_pos_encoding=True)

    freeze_position_embeddings(model)
    if naflex:
        model = naflex.images(model)
    if arch == "ViTMAEModel":
        model.config.mask_ratio = 0.0
        model.embeddings.random_masking = _keep_every_patch

    registers = int(getattr(config, "num_register_tokens", 0) or 0) if family.registers else 0
    with_attention = bool(attention) and family.attention
    # Eager runs at the export resolution prepare the position embeddings and check the layout.
    zeros = torch.zeros(1, 3, height, width)
    try:
        with torch.no_grad():
            flag = {"interpolate_pos_encoding": True} if family.pos_flag and interpolate else {}
            first = model(pixel_values=zeros, **flag)
            if family.cls_output and getattr(first, family.cls_output, None) is None:
                # configured without its CLS (Cvt's cls_token[-1] false): its classifier averages the map
                family = dataclasses.replace(family, has_cls=False, cls_output="", default_pooling="mean")
            # Tokens before the patches (CLS, DeiT's distillation token, registers, Pixio's class
            # tokens): what the grid leaves of the sequence, or the CLS alone where the grid is probed.
            prefix = first.last_hidden_state.shape[1] - grid[0] * grid[1] if grid else int(family.has_cls)
            pooled = family.use_pooler and getattr(first, "pooler_output", None) is not None
            if arch == "BeitModel" and not getattr(config, "use_mean_pooling", False):
                pooled = False  # its pooler would be the CLS token again
            module = EncoderOutputs(model, family, prefix, grid, interpolate, with_attention, pooled).eval()
            probe = module(zeros)
    except Exception as exc:  # noqa: BLE001 - the model's own code, any error type
        raise UnsupportedModelError(
            f"{arch}'s own forward fails on a {height}x{width} image given as pixel_values alone "
            f"({exception_line(exc, 200)}); vlmedge cannot export it for image embeddings."
        ) from None
    if prefix < int(family.has_cls) or (registers and prefix < 1 + registers):
        raise UnsupportedModelError(f"{arch} returns {prefix} tokens besides its {grid[0]}x{grid[1]} patches at "
                                    f"{height}x{width}, fewer than its CLS and registers; vlmedge cannot export it.")
    outputs = dict(zip(module.output_names, probe))
    hidden_size = module.hidden_size = int(outputs["patch_tokens"].shape[-1])
    probed = grid is None
    grid = grid or (int(outputs["patch_tokens"].shape[1]), int(outputs["patch_tokens"].shape[2]))
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
        # "relative" where the config turns absolute ones off (BEiT, Data2Vec vision, Swin: a relative bias)
        "position_embeddings": "relative" if family.positions == "learned" and False in (
            getattr(config, "use_absolute_position_embeddings", None), getattr(config, "use_absolute_embeddings", None)
        ) else family.positions,
        "position_embeddings_interpolated": resized and (
            not family.merges or bool(getattr(config, "use_absolute_embeddings", False))),
        "static_resolution": True,
        "patch_size": [height // grid[0], width // grid[1]] if probed or family.merges
        else list(_pair(family.stem or config.patch_size)),
        "num_prefix_tokens": prefix,
        "num_register_tokens": registers,
        "attention": {"heads": heads, "layer": "last", "query": "cls"} if with_attention else None,
    }
    if arch == "ViTMAEModel":
        embedding["mae_masking"] = "none (mask_ratio 0, identity patch order)"
    source = source_info(reference, folder, arch, config)
    if image_size is not None:
        source["image_size"] = [height, width]
    if naflex:
        source.update(naflex.source())
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
