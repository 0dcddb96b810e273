"""Hugging Face models: a folder saved with save_pretrained, or a model id already in the
local cache (never downloaded: vlmedge runs where there may be no network)."""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import pickle
import re
from pathlib import Path
from typing import Any

import torch

from vlmedge.errors import ModelNotFoundError, UnsupportedModelError
from vlmedge.exporters.samples import image_parity_feeds
from vlmedge.exporters.spec import ExportSpec, GraphSpec
from vlmedge.preprocess.image import ImagePreprocessSpec

_MODEL_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*(/[\w.\-]+)?$")


def resolve_folder(reference: str) -> Path:
    """A local folder, or the cached snapshot of a hub id, without touching the network."""
    path = Path(reference).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise UnsupportedModelError(
                f"{path} has no config.json; pass a folder written by save_pretrained()."
            )
        return path
    if path.exists():
        raise UnsupportedModelError(f"{path} is a file; pass the folder written by save_pretrained().")
    if not _MODEL_ID.match(reference):
        raise ModelNotFoundError(f"No model folder at {reference}; check the path.")
    from huggingface_hub import snapshot_download
    from huggingface_hub.constants import HF_HUB_CACHE

    try:
        return Path(snapshot_download(reference, local_files_only=True))
    except Exception:  # LocalEntryNotFoundError, HFValidationError, OfflineModeIsEnabled ...
        raise ModelNotFoundError(
            f"'{reference}' is neither a local folder nor a model in the Hugging Face cache ({HF_HUB_CACHE}); "
            f"download it where there is network (`hf download {reference}`) or pass a folder saved with save_pretrained()."
        ) from None


def read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UnsupportedModelError(f"Cannot read {path}: {exc}") from None


def architecture(config: Any, folder: Path) -> str:
    architectures = getattr(config, "architectures", None) or []
    if not architectures:
        raise UnsupportedModelError(
            f"{folder}/config.json names no architecture; save the model with save_pretrained() from its model class."
        )
    return architectures[0]


def model_class(arch: str) -> type:
    import transformers

    cls = getattr(transformers, arch, None)
    # Only model classes: config.json is data, and must not name any other attribute to call.
    if not (isinstance(cls, type) and issubclass(cls, transformers.PreTrainedModel)):
        raise UnsupportedModelError(f"Architecture {arch} is not in this version of transformers; vlmedge cannot export it.")
    return cls


def load_model(folder: Path, arch: str) -> torch.nn.Module:
    """Loads weights (safetensors, or torch.load(weights_only=True) for .bin) in eval mode.

    Eager attention keeps the exported graph to standard ONNX operators and lets
    encoders return attention maps.

    Weights are never unpickled without restriction: safetensors holds no code, and a
    pickle checkpoint (pytorch_model.bin) goes through torch.load(weights_only=True), which
    refuses any object but tensors and plain containers. There is deliberately no opt-in
    to unrestricted unpickling; convert such a checkpoint to safetensors where you trust it.
    """
    try:
        model = model_class(arch).from_pretrained(str(folder), local_files_only=True, attn_implementation="eager",
                                                  weights_only=True)
    except pickle.UnpicklingError as exc:
        named = re.search(r"GLOBAL (\S+)", str(exc))
        reason = f"it calls {named.group(1)}" if named else "torch.load(weights_only=True) refused it"
        raise UnsupportedModelError(
            f"The weights in {folder} are a pickle that would run code or build objects other than tensors when "
            f"loaded ({reason}); vlmedge loads pickles only with torch.load(weights_only=True) and never unpickles "
            "them unrestricted. Save the model as safetensors (save_pretrained) from a source you trust."
        ) from None
    except (OSError, ValueError, RuntimeError, EOFError) as exc:
        raise UnsupportedModelError(f"Cannot load the weights in {folder}: {str(exc).strip()[:400]}") from None
    except Exception as exc:  # safetensors raises its own SafetensorError for corrupt files
        if type(exc).__name__ != "SafetensorError":
            raise
        raise UnsupportedModelError(
            f"The safetensors weights in {folder} are corrupt or truncated ({exc}); save the model again."
        ) from None
    return model.eval()


def source_info(reference: str, folder: Path, arch: str, config: Any) -> dict[str, Any]:
    config_bytes = (folder / "config.json").read_bytes()
    return {
        "kind": "huggingface",
        "reference": reference,
        "folder": str(folder.resolve()),
        "architecture": arch,
        "model_type": getattr(config, "model_type", None),
        "config_sha256": hashlib.sha256(config_bytes).hexdigest(),
    }


def _image_classification_archs() -> set[str]:
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES

    names: set[str] = set()
    for value in MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES.values():
        names.update(value if isinstance(value, (tuple, list)) else [value])
    return names


def infer_task(arch: str) -> str:
    if arch in _image_classification_archs() or arch.endswith("ForImageClassificationWithTeacher"):
        return "image-classification"
    for task, archs in TASK_ARCHITECTURES.items():
        if arch in archs:
            return task
    raise UnsupportedModelError(f"vlmedge cannot export {arch}: it is not a supported image, CLIP or audio model.")


class LogitsOnly(torch.nn.Module):
    """A classifier as a graph with one tensor in (pixel_values) and one out (logits)."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=pixel_values).logits


def image_preprocess(folder: Path) -> ImagePreprocessSpec:
    config_path = folder / "preprocessor_config.json"
    combined = folder / "processor_config.json"  # transformers 5 ProcessorMixin: {"image_processor": {...}, ...}
    if not config_path.is_file() and combined.is_file():
        section = read_json(combined).get("image_processor")
        if isinstance(section, dict):
            return ImagePreprocessSpec.from_hf(section)
    if not config_path.is_file():
        raise UnsupportedModelError(
            f"{folder} has no preprocessor_config.json; save the model's image processor beside it "
            "(processor.save_pretrained(folder)) so vlmedge can reproduce its preprocessing."
        )
    return ImagePreprocessSpec.from_hf(read_json(config_path))


def image_classifier(folder: Path, config: Any, arch: str, reference: str, image_size: Any = None,
                     **_: Any) -> ExportSpec:
    """ViT, DeiT (with and without distillation head), BEiT, Swin, DINOv2 and any other
    Hugging Face image classifier."""
    if image_size is not None:
        raise UnsupportedModelError(
            "--image-size applies to image encoders; a classifier is exported at its processor's resolution."
        )
    preprocess = image_preprocess(folder)
    model = load_model(folder, arch)
    height, width = preprocess.output_size
    pixels, sample_files = image_parity_feeds(preprocess)
    graph = GraphSpec(
        name="model",
        module=LogitsOnly(model),
        input_names=["pixel_values"],
        output_names=["logits"],
        example_inputs={"pixel_values": torch.randn(2, 3, height, width)},
        dynamic_axes={"pixel_values": {0: "batch"}, "logits": {0: "batch"}},
        compare={"logits": "logits"},
    )
    multi_label = getattr(config, "problem_type", None) == "multi_label_classification"
    return ExportSpec(
        task="image-classification",
        graphs=[graph],
        preprocess={"image": preprocess.to_dict()},
        labels=[str(config.id2label[i]) for i in range(config.num_labels)],
        postprocess={"activation": "sigmoid" if multi_label else "softmax"},
        source=source_info(reference, folder, arch, config),
        parity_feeds={"model": {"pixel_values": pixels}},
        extra_files=sample_files,
    )


# Architectures of the other tasks; image classifiers are recognised from transformers' own mapping.
TASK_ARCHITECTURES: dict[str, set[str]] = {
    "image-embedding": {"ViTModel", "Dinov2Model", "Dinov2WithRegistersModel", "ViTMAEModel", "SwinModel",
                        "DeiTModel", "BeitModel"},
    "clip": {"CLIPModel", "SiglipModel"},
    "audio-classification": {"ASTForAudioClassification"},
}
# task -> (module, function(folder, config, arch, reference, **options) -> ExportSpec); one module per family
BUILDERS: dict[str, tuple[str, str]] = {
    "image-classification": ("vlmedge.exporters.sources.hf", "image_classifier"),
    "image-embedding": ("vlmedge.exporters.sources.hf_encoder", "image_encoder"),
    "clip": ("vlmedge.exporters.sources.hf_clip", "clip_model"),
    "audio-classification": ("vlmedge.exporters.sources.hf_audio", "audio_classifier"),
}


def from_hf(reference: str, /, task: str | None = None, **options: Any) -> ExportSpec:
    """Builds the ExportSpec of a Hugging Face model folder or cached model id.

    `reference` is positional-only so that builtin: sources can pass the name to record as
    options["reference"] beside the folder they resolved.
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    folder = resolve_folder(reference)
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(str(folder), local_files_only=True)
    except (ValueError, OSError, KeyError) as exc:
        raise UnsupportedModelError(f"Cannot read the model config in {folder}: {exc}") from None
    arch = architecture(config, folder)
    task = task or infer_task(arch)
    if task not in BUILDERS:
        raise UnsupportedModelError(
            f"vlmedge cannot export {arch} for the task '{task}'; tasks are {', '.join(BUILDERS)}."
        )
    module_name, function_name = BUILDERS[task]
    builder = getattr(importlib.import_module(module_name), function_name)
    return builder(folder, config, arch, options.pop("reference", reference), **options)
