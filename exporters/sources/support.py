"""Which architectures of transformers' image-classification mapping vlmedge exports, and
why not the others: the same checks an export runs, without weights or an export."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from vlmedge.errors import UnsupportedModelError


@dataclass(frozen=True)
class ArchitectureSupport:
    """One architecture: whether vlmedge exports it and, if not, the refusal's sentence."""

    architecture: str
    model_type: str
    supported: bool
    reason: str | None = None
    processor: str | None = None  # the processor class transformers pairs with the model type


def supported_architectures() -> list[ArchitectureSupport]:
    """Every architecture of ``MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES`` (in its order),
    supported or with the reason an export refuses it. Support means an export with default
    options: SigLIP2 (NaFlex) exports only with image_size=, which its reason says.

    Runs the export's own checks, in its order: the image processor is one
    ``vlmedge.preprocess.image`` reproduces, the class exists in this transformers and its
    forward takes pixel values alone, and its config and model build here (on the meta
    device: no memory, no weights; a missing package such as natten or timm shows). What
    only tracing shows (an operator torch.onnx cannot export) is not predicted here; such an
    export is refused, by name, when it runs.
    """
    import transformers
    from transformers.models.auto.image_processing_auto import IMAGE_PROCESSOR_MAPPING_NAMES
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES

    rows: list[ArchitectureSupport] = []
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()  # default configs warn about their own token ids
    try:
        for model_type, names in MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES.items():
            processors = IMAGE_PROCESSOR_MAPPING_NAMES.get(model_type) or {}
            processor = processors.get("pil") or processors.get("torchvision")
            for arch in names if isinstance(names, (tuple, list)) else [names]:
                reason = _refusal(model_type, arch, processor)
                rows.append(ArchitectureSupport(arch, model_type, reason is None, reason, processor))
    finally:
        transformers.logging.set_verbosity(verbosity)
    return rows


def _refusal(model_type: str, arch: str, processor: str | None) -> str | None:
    import torch
    from transformers import CONFIG_MAPPING

    from vlmedge.exporters.sources.hf import check_pixel_values_only, first_line, model_class
    from vlmedge.exporters.sources.hf_naflex import MODEL_TYPES, needs_image_size
    from vlmedge.preprocess.image.hf import refusal

    if model_type in MODEL_TYPES:  # SigLIP2 (NaFlex) exports only at the resolution image_size= chooses
        return needs_image_size(arch, CONFIG_MAPPING[model_type]())
    if processor is not None:  # model types without one are exported with the processor saved beside them
        reason = refusal(processor.removesuffix("Pil").removesuffix("ImageProcessor"))
        if reason:
            return reason
    try:
        cls: Any = model_class(arch)
        check_pixel_values_only(cls, arch)
        config = CONFIG_MAPPING[model_type]()
        with torch.device("meta"):
            cls(config)
    except UnsupportedModelError as exc:
        return str(exc)
    except ImportError as exc:
        return f"{arch} needs a package that is not installed: {first_line(exc)}"
    except Exception:  # noqa: BLE001 - a default config that does not build on meta says nothing more
        return None
    return None
