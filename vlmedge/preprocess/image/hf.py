"""Hugging Face image processor configurations -> ImagePreprocessSpec.

One interpreter of the operations transformers' image processors are built from (resize by
size dict, ``crop_pct``, centre crop, thumbnail and pad, rescale with offset, channel flip,
normalise, resample filter, convert-to-RGB). Each processor class maps to the operations
its ``_preprocess`` runs; a class this module cannot reproduce is refused by name, with why.
"""

from __future__ import annotations

from typing import Any

from vlmedge.errors import InputError, UnsupportedModelError
from vlmedge.preprocess.image.values import RESAMPLE, is_number

_RESAMPLE_NAMES = {v: k for k, v in RESAMPLE.items()}  # PIL's int codes, as HF configs store them
_CLIP_MEAN, _CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
_SQUARE_224 = {"height": 224, "width": 224}
# The class defaults HF gives a key a config leaves out, for the processor classes whose
# older configs may omit keys (over the ViT row). Configs of the other supported classes are
# read as transformers writes them (processor.to_dict(), save_pretrained): a key left out is off.
_HF_DEFAULTS: dict[str, dict[str, Any]] = {
    "ViT": {"do_resize": True, "size": _SQUARE_224, "resample": 2, "do_center_crop": False, "crop_size": None,
            "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True, "image_mean": (0.5,) * 3,
            "image_std": (0.5,) * 3, "do_convert_rgb": None, "default_to_square": True},
    "DeiT": {"resample": 3, "size": {"height": 256, "width": 256}, "do_center_crop": True, "crop_size": _SQUARE_224},
    "Beit": {"resample": 3, "crop_size": _SQUARE_224},
    "Siglip": {"resample": 3, "do_convert_rgb": True},
    "CLIP": {"resample": 3, "size": {"shortest_edge": 224}, "default_to_square": False, "do_center_crop": True,
             "crop_size": _SQUARE_224, "image_mean": _CLIP_MEAN, "image_std": _CLIP_STD, "do_convert_rgb": True},
    "ConvNext": {"resample": 3, "size": {"shortest_edge": 384}, "default_to_square": False, "crop_pct": 224 / 256},
    "Levit": {"resample": 3, "size": {"shortest_edge": 224}, "default_to_square": False, "do_center_crop": True,
              "crop_size": _SQUARE_224, "image_mean": (0.485, 0.456, 0.406), "image_std": (0.229, 0.224, 0.225)},
}
# DINOv3's processor exists only for torchvision, and rescales before it resizes: the float
# image is resized (ImagePreprocessSpec.resize_after_rescale), so no uint8 rounding is left for
# Pillow to match, only float32 sums (see the spec).
_HF_DEFAULTS["DINOv3ViT"] = {"image_mean": (0.485, 0.456, 0.406), "image_std": (0.229, 0.224, 0.225)}
# ImageGPT's processor then maps each pixel to its nearest colour cluster (input_ids): the
# exported graph does that step (vlmedge.exporters.sources.hf.classifier.ColourClusters), the runtime
# feeds it these normalised pixels.
_HF_DEFAULTS["ImageGPT"] = {"size": {"height": 256, "width": 256}}
_HF_DEFAULTS["Bit"] = _HF_DEFAULTS["ChineseCLIP"] = _HF_DEFAULTS["CLIP"]
# Classes whose _preprocess is the base resize -> crop -> rescale -> normalise, plus the
# steps of their own configuration keys read below.
_READ_AS_WRITTEN = {"MobileNetV1", "MobileNetV2", "MobileViT", "PoolFormer", "Pvt", "Segformer", "Perceiver",
                    "TextNet", "Donut", "EfficientNet", "Blip", "Gemma3"}
SUPPORTED = frozenset(_HF_DEFAULTS) | _READ_AS_WRITTEN
# Classes whose own _preprocess never pads: do_pad and pad_size in their configs do nothing
# (the base one and PoolFormer's pad after normalising; Donut pads to its canvas, below).
_NEVER_PADS = {"Beit", "ConvNext", "DINOv3ViT", "EfficientNet", "Gemma3", "ImageGPT", "MobileNetV2", "MobileViT",
               "Perceiver", "Segformer", "TextNet"}
# Processors that resize uint8 tensors with torchvision's own kernel, which rounds 0.2% of the
# pixels one step away from Pillow's (DINOv3 resizes the float image instead: reproduced above).
_TORCHVISION_ONLY = ("it exists only as a torchvision processor (tensor resizing), which Pillow does not reproduce "
                     "bit for bit")
# Processor classes of transformers' image-classification and zero-shot mappings that are refused.
REFUSED = {
    "Siglip2": "its NaFlex resizing gives each image its own number of patches, so the input shape depends "
               "on the image",
    # Exporting the model folder reproduces it (exporters/sources/timm.py: timm resolves the data config, the
    # artifact carries the result as data); its config alone is not enough here, where timm is never imported.
    "TimmWrapper": "it runs timm's eval transform of the data config timm resolves from its pretrained_cfg, which "
                   "vlmedge reads when it exports the model folder (with timm installed), not from this config alone",
    **dict.fromkeys(["PPLCNet", "Tipsv2", "Sapiens2"], _TORCHVISION_ONLY),
}
_OFF = ("do_resize", "size", "resample", "do_center_crop", "crop_size", "do_rescale", "rescale_factor",
        "do_normalize", "image_mean", "image_std", "do_convert_rgb")


def processor_kind(config: dict) -> str:
    """The processor class of a config without its backend suffix: 'ViT', 'MobileViT' ..."""
    if not isinstance(config, dict):
        raise UnsupportedModelError(f"An image processor config must be a dict, not {type(config).__name__}.")
    kind = str(config.get("image_processor_type") or config.get("feature_extractor_type") or "")
    for suffix in ("Pil", "Fast", "ImageProcessor", "FeatureExtractor"):
        kind = kind.removesuffix(suffix)
    return kind


def refusal(kind: str) -> str | None:
    """Why vlmedge cannot reproduce the processor class `kind`, or None when it can."""
    if kind in SUPPORTED:
        return None
    if kind in REFUSED:
        return f"vlmedge cannot reproduce the {kind} image processor: {REFUSED[kind]}."
    if not kind:
        return ("The image processor config names no class (image_processor_type) and the model's type does not "
                "imply one; save the processor with processor.save_pretrained(folder), which records it.")
    return (f"vlmedge cannot reproduce the image processor {kind!r}; supported: "
            f"{', '.join(sorted(SUPPORTED))} image processors.")


def spec_fields(cls: type, processor_config: dict) -> Any:
    """``cls(**fields)`` for the operations of `processor_config` (see ImagePreprocessSpec.from_hf)."""
    family = processor_kind(processor_config)
    reason = refusal(family)
    if reason:
        raise UnsupportedModelError(reason)
    base = _HF_DEFAULTS["ViT"] if family in _HF_DEFAULTS else {**_HF_DEFAULTS["ViT"], **dict.fromkeys(_OFF)}
    c = {**base, **_HF_DEFAULTS.get(family, {}), **processor_config}
    if family == "Gemma3" and c.get("do_pan_and_scan"):
        raise UnsupportedModelError("vlmedge cannot reproduce Gemma3's pan-and-scan (a varying number of crops "
                                    "per image); save the processor with do_pan_and_scan=False.")
    if family == "MobileViT":  # its _preprocess never normalises, whatever do_normalize says
        c["do_normalize"] = False
    for flag, keys in (("do_resize", ("size", "resample")), ("do_center_crop", ("crop_size",)),
                       ("do_rescale", ("rescale_factor",)), ("do_normalize", ("image_mean", "image_std"))):
        if c[flag] and any(c[k] is None for k in keys):
            raise UnsupportedModelError(f"This {family} processor sets {flag} but no {' or '.join(keys)}.")
    crop = None if c["crop_size"] is None else _hf_size(c["crop_size"], True)
    size = _hf_size(c["size"], c["default_to_square"]) if c["size"] is not None else crop
    extra: dict[str, Any] = {}
    do_crop = bool(c["do_center_crop"])
    if family == "CLIP" and c.get("use_square_size"):
        size = {"height": size["shortest_edge"], "width": size["shortest_edge"]}
    if c["do_resize"] and family == "Levit" and "shortest_edge" in size:
        size = {"shortest_edge": int((256 / 224) * size["shortest_edge"])}
    if c["do_resize"] and family == "ConvNext":
        size, do_crop, crop = _convnext_resize(size, c["crop_pct"], do_crop, crop)
    if c["do_resize"] and family == "PoolFormer" and c.get("crop_pct") is not None:
        size = _poolformer_resize(size, float(c["crop_pct"]))
    if family == "Perceiver" and do_crop:  # crop a share of the shortest side first, then resize
        if "height" not in (size or {}):
            raise UnsupportedModelError(f"Perceiver image processors need size={{'height', 'width'}}, not {size!r}.")
        extra["pre_crop"] = (size["height"] / crop["height"], size["width"] / crop["width"])
        do_crop, crop = False, None
    if family == "TextNet":
        extra["size_divisor"] = int(c.get("size_divisor") or 1)
    if family == "Donut":
        size, extra = _donut(size, c)
    elif c.get("do_pad") and c.get("pad_size") is not None and family not in _NEVER_PADS:
        extra["pad_size"] = _hf_size(c["pad_size"], True)  # without one it pads to the batch's largest: a no-op here
    if family == "EfficientNet":
        extra.update(rescale_offset=bool(c.get("rescale_offset")), normalize_std_again=bool(c.get("include_top")))
        if extra["normalize_std_again"] and c["image_std"] is None:
            raise UnsupportedModelError("This EfficientNet processor sets include_top but no image_std.")
    if family == "DINOv3ViT":
        if do_crop:
            raise UnsupportedModelError("vlmedge reproduces DINOv3's image processor without its centre crop; save it "
                                        "with do_center_crop=False.")
        extra["resize_after_rescale"] = True
    if family == "MobileViT" and c.get("do_flip_channel_order"):
        extra["channel_order"] = "BGR"
    # null only when unused; a scalar 0.0 is a mean, not a missing one
    mean, std = ((0.5,) * 3 if c[k] is None else c[k] for k in ("image_mean", "image_std"))
    resample = 2 if c["resample"] is None else c["resample"]  # null and unused
    if isinstance(resample, str):  # transformers' resize takes Pillow's numbers: any other value is bilinear
        named = resample.strip().lower()
        number = (f" ({RESAMPLE[named]} for {named})" if named in RESAMPLE
                  else f" ({int(named)}, not a string)" if named.isdigit() else "")
        raise UnsupportedModelError(f"This {family} processor gives resample as the string {resample!r}, which "
                                    f"transformers' image processors run as bilinear whatever it names; write Pillow's "
                                    f"number for the filter meant{number} in preprocessor_config.json.")
    try:
        return cls(do_resize=bool(c["do_resize"]), size=size, do_center_crop=do_crop, crop_size=crop,
                   resample=_RESAMPLE_NAMES.get(resample, str(resample).lower()),
                   do_rescale=bool(c["do_rescale"]), rescale_factor=1 / 255 if c["rescale_factor"] is None else c["rescale_factor"],
                   do_normalize=bool(c["do_normalize"]), image_mean=[mean] * 3 if is_number(mean) else mean,
                   image_std=[std] * 3 if is_number(std) else std, do_convert_rgb=bool(c["do_convert_rgb"]), **extra)
    except InputError as e:
        raise UnsupportedModelError(f"vlmedge cannot reproduce this {family} image processor: {e}") from None


def _hf_size(size: Any, default_to_square: bool) -> Any:
    """HF's get_size_dict for the int and (height, width) forms of old configs."""
    if isinstance(size, int) and not isinstance(size, bool):
        return {"height": size, "width": size} if default_to_square else {"shortest_edge": size}
    if isinstance(size, (list, tuple)) and len(size) == 2:
        return {"height": size[0], "width": size[1]}
    if isinstance(size, dict):  # SizeDicts written with every key, unset ones null
        return {k: v for k, v in size.items() if v is not None}
    return size


def _convnext_resize(size: dict, crop_pct: Any, do_crop: bool, crop: dict | None) -> tuple[dict, bool, dict | None]:
    """ConvNeXt resizes the shortest edge to edge/crop_pct and crops edge x edge below 384, else warps."""
    edge = size.get("shortest_edge") if isinstance(size, dict) else None
    if edge is None:
        raise UnsupportedModelError(f"ConvNeXt image processors need size={{'shortest_edge': N}}, not {size!r}.")
    square = {"height": edge, "width": edge}
    if edge >= 384:
        return square, do_crop, crop
    if not (is_number(crop_pct) and crop_pct > 0):  # transformers fails on every image too
        given = "null" if crop_pct is None else repr(crop_pct)
        raise UnsupportedModelError(f"This ConvNeXt processor's crop_pct is {given}, which its resize to a "
                                    f"shortest edge of {edge} divides by; save it with a positive crop_pct "
                                    "(ConvNeXt's default is 0.875).")
    if do_crop and crop != square:
        raise UnsupportedModelError(f"vlmedge cannot reproduce ConvNeXt's crop_pct crop followed by a second "
                                    f"centre crop to {crop}.")
    return {"shortest_edge": int(edge / crop_pct)}, True, square


def _poolformer_resize(size: dict, crop_pct: float) -> dict:
    """PoolFormer's resize to size/crop_pct: a shortest edge, or both sides when they differ."""
    if "shortest_edge" in size:
        return {"shortest_edge": int(size["shortest_edge"] / crop_pct)}
    if size.get("height") and size["height"] == size.get("width"):
        return {"shortest_edge": int(size["height"] / crop_pct)}
    if size.get("height") and size.get("width"):
        return {"height": int(size["height"] / crop_pct), "width": int(size["width"] / crop_pct)}
    raise UnsupportedModelError(f"PoolFormer image processors need a shortest_edge or height and width, not {size!r}.")


def _donut(size: dict, c: dict) -> tuple[dict, dict[str, Any]]:
    """Donut: resize the shortest edge to the canvas's, thumbnail into it, pad to it."""
    if not isinstance(size, dict) or "height" not in size:
        raise UnsupportedModelError(f"Donut image processors need size={{'height', 'width'}}, not {size!r}.")
    canvas = {"height": size["height"], "width": size["width"]}
    extra = {"canvas": canvas, "align_long_axis": bool(c.get("do_align_long_axis")),
             "thumbnail": bool(c.get("do_thumbnail")), "pad_to_canvas": bool(c.get("do_pad"))}
    return {"shortest_edge": min(canvas.values())}, extra
