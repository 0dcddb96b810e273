"""A model folder's image processor: its saved configuration, resolved through transformers'
own Pillow class and read as the preprocessing vlmedge runs (or a SigLIP2 NaFlex export's)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vlmedge.errors import UnsupportedModelError, UsageError
from vlmedge.exporters.sources.hf.folder import read_json
from vlmedge.exporters.sources.hf.naflex import NaFlex, is_naflex, naflex_setup
from vlmedge.exporters.spec import parse_image_size
from vlmedge.preprocess.image import ImagePreprocessSpec


def processor_config(folder: Path) -> dict[str, Any]:
    """The image processor's configuration as saved in `folder`: preprocessor_config.json, or
    the image_processor section of transformers 5's combined processor_config.json. One that
    names no class takes the class of the model's type, as AutoImageProcessor does."""
    config_path = folder / "preprocessor_config.json"
    combined = folder / "processor_config.json"  # transformers 5 ProcessorMixin: {"image_processor": {...}, ...}
    if not config_path.is_file() and combined.is_file():
        section = read_json(combined).get("image_processor")
        if isinstance(section, dict):
            return _with_class(section, folder)
    if not config_path.is_file():
        raise UnsupportedModelError(
            f"{folder} has no preprocessor_config.json; save the model's image processor beside it "
            "(processor.save_pretrained(folder)) so vlmedge can reproduce its preprocessing."
        )
    return _with_class(read_json(config_path), folder)


def _with_class(config: dict[str, Any], folder: Path) -> dict[str, Any]:
    """`config`, with the image processor class of the model's type (config.json's model_type,
    looked up in transformers' own table) where it names none."""
    if not isinstance(config, dict) or config.get("image_processor_type") or config.get("feature_extractor_type"):
        return config
    from transformers.models.auto.image_processing_auto import IMAGE_PROCESSOR_MAPPING_NAMES

    model_type = (read_json(folder / "config.json") if (folder / "config.json").is_file() else {}).get("model_type")
    classes = IMAGE_PROCESSOR_MAPPING_NAMES.get(model_type) if isinstance(model_type, str) else None
    name = classes.get("pil") or classes.get("torchvision") if isinstance(classes, dict) else classes
    return {**config, "image_processor_type": name} if isinstance(name, str) else config


def naflex_or_processor_size(folder: Path, config: Any, arch: str, image_size: Any, what: str) -> NaFlex | None:
    """A SigLIP2 (NaFlex) model's export at image_size=; None for any other model, which
    `what` (a classifier, a CLIP model) exports at its processor's resolution: an
    image_size= given for it is refused."""
    if is_naflex(config):
        return naflex_setup(config, arch, parse_image_size(image_size), lambda: processor_config(folder))
    if image_size is not None:
        raise UsageError(f"--image-size applies to image encoders and SigLIP2 models; {what} is exported at its "
                         "processor's resolution.")
    return None


def image_preprocess(folder: Path) -> ImagePreprocessSpec:
    """The preprocessing of the image processor saved in `folder`, read from its configuration.

    The config is first resolved through the processor's own Pillow class (so keys it
    leaves out take that class's defaults, exactly as from_pretrained does), then interpreted
    by ImagePreprocessSpec.from_hf, which refuses a processor it cannot reproduce by name.
    A TimmWrapper processor runs timm's eval transform of its data config, which timm resolves.
    """
    from vlmedge.exporters.sources.timm import timm_wrapper_preprocess

    timm_config = timm_wrapper_config(folder)
    if timm_config is not None:
        return timm_wrapper_preprocess(timm_config)
    return ImagePreprocessSpec.from_hf(resolve_processor_config(processor_config(folder)))


def timm_wrapper_config(folder: Path) -> dict[str, Any] | None:
    """The TimmWrapperImageProcessor configuration of a folder, read where transformers'
    AutoImageProcessor reads it: config.json when it holds a pretrained_cfg (a timm
    checkpoint), else a preprocessor config of that class; None for other folders."""
    from vlmedge.preprocess.image.hf import processor_kind

    model_config = read_json(folder / "config.json") if (folder / "config.json").is_file() else {}
    if isinstance(model_config.get("pretrained_cfg"), dict):
        return model_config
    if not any((folder / name).is_file() for name in ("preprocessor_config.json", "processor_config.json")):
        return None
    processor = processor_config(folder)
    return processor if processor_kind(processor) == "TimmWrapper" else None


def resolve_processor_config(config: dict[str, Any]) -> dict[str, Any]:
    """`config` with every key its processor class reads: the class's defaults for keys it
    leaves out, None (off) for the steps the class leaves unset. A class that cannot be
    built here (unknown, refused, or needing torchvision) leaves the config as it is, for
    from_hf to refuse by name or read with its own defaults."""
    from vlmedge.preprocess.image.hf import processor_kind, refusal

    kind = processor_kind(config)
    if refusal(kind) is not None:
        return config
    import transformers

    cls = getattr(transformers, f"{kind}ImageProcessorPil", None)
    if not isinstance(cls, type):
        return config
    try:
        resolved = cls.from_dict(dict(config)).to_dict()
    except Exception:  # noqa: BLE001 - a config its class rejects is read as written, or refused, by from_hf
        return config
    unset = ("do_resize", "size", "resample", "do_center_crop", "crop_size", "do_rescale", "rescale_factor",
             "do_normalize", "image_mean", "image_std", "do_convert_rgb")
    resolved = {**dict.fromkeys(unset), **{k: _plain(v) for k, v in resolved.items()}}
    resolved["image_processor_type"] = config.get("image_processor_type") or resolved.get("image_processor_type")
    return resolved


def _plain(value: Any) -> Any:
    """JSON-like values: enums to ints, SizeDicts to dicts without null keys."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items() if v is not None}
    if hasattr(value, "value") and isinstance(getattr(value, "value"), int):
        return int(value.value)
    return value
