"""Which architectures vlmedge exports from Hugging Face folders, task by task, and why not
the others: the same checks an export runs, without weights or an export.

The architectures of each task are those its tables and transformers' mappings name:

    image-classification   transformers' image-classification mapping
    clip                   transformers' zero-shot image-classification mapping, and the two-tower
                           models hf.clip takes or refuses (TWO_TOWERS, REFUSED)
    image-embedding        hf.encoder's FAMILIES and REFUSED, and the base model of every model type
                           of the image-classification and backbone mappings (as the coverage test
                           walks them) that no other task exports
    audio-classification   transformers' audio-classification mapping
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from vlmedge.errors import UnsupportedModelError, first_line

TASKS = ("image-classification", "clip", "image-embedding", "audio-classification")  # the listing's order
IMAGE_TASKS = ("image-classification", "clip", "image-embedding")  # exported with the folder's image processor


@dataclass(frozen=True)
class ArchitectureSupport:
    """One architecture of one task: whether vlmedge exports it and, if not, the refusal's sentence."""

    architecture: str
    model_type: str
    supported: bool
    reason: str | None = None
    processor: str | None = None  # the processor class transformers pairs with the model type
    task: str = "image-classification"


def supported_architectures(task: str | None = None) -> list[ArchitectureSupport]:
    """Every architecture of `task` (default: of every task of TASKS, in that order), supported
    or with the reason an export refuses it. Support means an export with default options:
    SigLIP2 (NaFlex) exports only with image_size=, which its reason says.

    Runs the export's own checks: the architecture is one the task's builder takes (its
    REFUSED table, or hf.infer_task's refusal), SigLIP2 needs image_size=,
    the image processor is one ``vlmedge.preprocess.image`` reproduces (timm loads, for
    TimmWrapper), a classifier's forward takes pixel values alone, and the model builds here
    (on the meta device: no memory, no weights; a missing package such as natten or timm
    shows). What only tracing shows (an operator torch.onnx cannot export) is not predicted
    here; such an export is refused, by name, when it runs.
    """
    import transformers
    from transformers.models.auto.image_processing_auto import IMAGE_PROCESSOR_MAPPING_NAMES

    if task is not None and task not in TASKS:
        raise UnsupportedModelError(f"vlmedge lists the architectures of {', '.join(TASKS)}, not of '{task}'.")
    rows: list[ArchitectureSupport] = []
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()  # default configs warn about their own token ids
    try:
        for name, model_type, arch in candidates():
            if task not in (None, name):
                continue
            model_type = model_type or _model_type(arch)
            processors = (IMAGE_PROCESSOR_MAPPING_NAMES.get(model_type) or {}) if name in IMAGE_TASKS else {}
            processor = processors.get("pil") or processors.get("torchvision")
            reason = _refusal(name, model_type, arch, processor)
            rows.append(ArchitectureSupport(arch, model_type, reason is None, reason, processor, name))
    finally:
        transformers.logging.set_verbosity(verbosity)
    return rows


def candidates() -> list[tuple[str, str | None, str]]:
    """(task, model type or None where only the class knows it, architecture) of every row, in
    the listing's order: each task's mapping order, then its builder's own architectures by name."""
    from transformers.models.auto.modeling_auto import (MODEL_FOR_AUDIO_CLASSIFICATION_MAPPING_NAMES,
                                                        MODEL_FOR_BACKBONE_MAPPING_NAMES,
                                                        MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES,
                                                        MODEL_FOR_ZERO_SHOT_IMAGE_CLASSIFICATION_MAPPING_NAMES,
                                                        MODEL_MAPPING_NAMES)

    from vlmedge.exporters.sources.hf import clip as hf_clip, encoder as hf_encoder

    rows: list[tuple[str, str | None, str]] = []
    for model_type, names in MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES.items():
        rows += [("image-classification", model_type, arch) for arch in _names(names)]
    zero_shot = MODEL_FOR_ZERO_SHOT_IMAGE_CLASSIFICATION_MAPPING_NAMES
    two_towers = {arch: model_type for model_type, names in zero_shot.items() for arch in _names(names)}
    two_towers.update({arch: None for arch in sorted(hf_clip.ARCHITECTURES) if arch not in two_towers})
    rows += [("clip", model_type, arch) for arch, model_type in two_towers.items()]
    # The base model of each vision model type, where it is no two-tower model (CLIPModel is
    # listed under clip; its vision tower, CLIPVisionModel, is one of FAMILIES).
    encoders: dict[str, str | None] = {}
    for model_type in [*MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES, *MODEL_FOR_BACKBONE_MAPPING_NAMES]:
        arch = MODEL_MAPPING_NAMES.get(model_type) or MODEL_FOR_BACKBONE_MAPPING_NAMES.get(model_type)
        if arch and arch not in two_towers:
            encoders.setdefault(arch, model_type)
    encoders.update({arch: None for arch in hf_encoder.ARCHITECTURES if arch not in encoders})
    rows += [("image-embedding", encoders[arch], arch) for arch in sorted(encoders, key=str.lower)]
    for model_type, names in MODEL_FOR_AUDIO_CLASSIFICATION_MAPPING_NAMES.items():
        rows += [("audio-classification", model_type, arch) for arch in _names(names)]
    return rows


def _names(names: Any) -> list[str]:
    return list(names) if isinstance(names, (tuple, list)) else [names]


def _model_type(arch: str) -> str:
    import transformers

    cls = getattr(transformers, arch, None)
    return str(getattr(getattr(cls, "config_class", None), "model_type", "") or "")


def _refusal(task: str, model_type: str, arch: str, processor: str | None) -> str | None:
    """The first of the export's checks that refuses `arch` for `task`, or None."""
    import torch

    from vlmedge.exporters.sources.hf import clip as hf_clip, encoder as hf_encoder
    from vlmedge.exporters.sources.hf import infer_task
    from vlmedge.exporters.sources.hf.classifier import check_pixel_values_only
    from vlmedge.exporters.sources.hf.folder import model_class
    from vlmedge.exporters.sources.hf.naflex import MODEL_TYPES, needs_image_size
    from vlmedge.preprocess.image.hf import refusal

    if model_type == "timm_wrapper":  # its config and processor need timm, which loads only with torchvision
        from vlmedge.exporters.sources.timm import timm_wrapper_refusal

        reason = timm_wrapper_refusal()
        if reason:
            return reason
    try:
        cls: Any = model_class(arch)
        infer_task(arch)  # an architecture no task takes is refused here, by the export's own sentence
        by_name = {"clip": hf_clip.refusal, "image-embedding": hf_encoder.refusal}.get(task)
        reason = by_name(arch) if by_name else None
        if reason:
            return reason
        config = cls.config_class()
        if model_type in MODEL_TYPES:  # SigLIP2 (NaFlex) exports only at the resolution image_size= chooses
            return needs_image_size(arch, config)
        if processor is not None and model_type != "timm_wrapper":
            # model types without one are exported with the processor saved beside them
            reason = refusal(processor.removesuffix("Pil").removesuffix("ImageProcessor"))
            if reason:
                return reason
        if task == "image-classification":
            check_pixel_values_only(cls, arch)
        with torch.device("meta"):
            cls(config)
    except UnsupportedModelError as exc:
        return str(exc)
    except ImportError as exc:
        return f"{arch} needs a package that is not installed: {first_line(exc)}"
    except Exception:  # noqa: BLE001 - a default config that does not build on meta says nothing more
        return None
    return None
