"""Hugging Face models: which task a model folder's architecture is exported for, and the
builder of that task (one module per family: classifier, encoder, clip, audio), from a folder
saved with save_pretrained or a model id already in the local cache (never downloaded)."""

from __future__ import annotations

import importlib
import os
from typing import Any

from vlmedge.errors import UnsupportedModelError, first_line
from vlmedge.exporters.sources.hf.folder import architecture, resolve_folder
from vlmedge.exporters.spec import ExportSpec


def known_task(arch: str) -> str | None:
    """The task vlmedge exports `arch` for, or None."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES as CLASSIFIERS

    if arch.endswith("ForImageClassificationWithTeacher") or any(
            arch == value or (isinstance(value, (tuple, list)) and arch in value) for value in CLASSIFIERS.values()):
        return "image-classification"
    for task in ARCHITECTURES_IN_BUILDER:  # the builder's module holds the list (facts once)
        if arch in importlib.import_module(BUILDERS[task][0]).ARCHITECTURES:
            return task
    return next((task for task, archs in TASK_ARCHITECTURES.items() if arch in archs), None)


def infer_task(arch: str) -> str:
    """known_task, or a refusal that says what to do (export its backbone where vlmedge takes it)."""
    if (task := known_task(arch)) is None:
        backbone = arch.split("For")[0] + "Model"  # ViTForMaskedImageModeling: ViTModel
        found = known_task(backbone) if backbone != arch else None
        advice = (f"save its backbone, {backbone}, and its processor in a FOLDER (model.base_model.save_pretrained(FOLDER), processor.save_pretrained(FOLDER)) and export that ({found})"
                  if found else "`vlmedge formats --architectures` lists those it exports")
        raise UnsupportedModelError(f"vlmedge cannot export {arch}: it is not a supported image, CLIP or audio model; {advice}.")
    return task


def task_of(arch: str, asked: str | None) -> str:
    """The task its class implies; another asked for is refused here, as its builder would fail
    on a mismatch of its own (an audio feature extractor) and name the wrong cause."""
    try:
        implied = infer_task(arch)
    except UnsupportedModelError:
        if asked is None:
            raise
        return asked  # a class only the asked task's builder knows decides for itself
    known = asked in ARCHITECTURES_IN_BUILDER and arch in importlib.import_module(BUILDERS[asked][0]).ARCHITECTURES
    if asked not in (None, implied) and asked in BUILDERS and not known:  # a builder that knows it says why itself
        raise UnsupportedModelError(f"{arch} is exported for {implied}, not {asked}: leave out the task, "
                                    f"or export a model class made for {asked}.")
    return asked or implied


# Architectures of the other tasks (known_task: classifiers by transformers' mapping, these builders by their ARCHITECTURES).
ARCHITECTURES_IN_BUILDER = ("image-embedding", "clip")
TASK_ARCHITECTURES: dict[str, set[str]] = {
    "audio-classification": {"ASTForAudioClassification", "WhisperForAudioClassification"} | {
        f"{family}ForSequenceClassification" for family in ("Wav2Vec2", "Wav2Vec2Bert", "Wav2Vec2Conformer", "Hubert",
                                                            "WavLM", "Data2VecAudio", "UniSpeech", "UniSpeechSat", "SEW", "SEWD")},
}
# task -> (module, function(folder, config, arch, reference, **options) -> ExportSpec); one module per family
BUILDERS: dict[str, tuple[str, str]] = {
    "image-classification": ("vlmedge.exporters.sources.hf.classifier", "image_classifier"),
    "image-embedding": ("vlmedge.exporters.sources.hf.encoder", "image_encoder"),
    "clip": ("vlmedge.exporters.sources.hf.clip", "clip_model"),
    "audio-classification": ("vlmedge.exporters.sources.hf.audio", "audio_classifier"),
}


def from_hf(reference: str, /, task: str | None = None, **options: Any) -> ExportSpec:
    """Builds the ExportSpec of a Hugging Face model folder or cached model id. `reference` is positional-only:
    builtin: sources pass the name to record as options["reference"] beside the folder they resolved."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    folder = resolve_folder(reference)
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(str(folder), local_files_only=True)
    except ImportError as exc:  # a config class that needs a package this environment lacks (timm)
        raise UnsupportedModelError(f"The model in {folder} needs a package that is not installed: "
                                    f"{first_line(exc)}") from None
    except (ValueError, OSError, KeyError) as exc:
        raise UnsupportedModelError(f"Cannot read the model config in {folder}: {exc}") from None
    arch = architecture(config, folder)
    task = task_of(arch, task)
    if task not in BUILDERS:
        raise UnsupportedModelError(f"vlmedge cannot export {arch} for the task '{task}'; tasks are {', '.join(BUILDERS)}.")
    module_name, function_name = BUILDERS[task]
    builder = getattr(importlib.import_module(module_name), function_name)
    reference = options.pop("reference", reference)
    from vlmedge.exporters.sources import check_source_options

    check_source_options(builder, 4, options, f"{arch} ({task})")  # after folder, config, arch, reference
    return builder(folder, config, arch, reference, **options)
