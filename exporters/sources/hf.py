"""Hugging Face models: a folder saved with save_pretrained, or a model id already in the
local cache (never downloaded: vlmedge runs where there may be no network)."""

from __future__ import annotations

import hashlib
import importlib
import inspect
import json
import os
import pickle
import re
import warnings
from pathlib import Path
from typing import Any

import torch

from vlmedge.errors import (ExportError, ModelNotFoundError, UnsupportedModelError, UsageError, exception_line,
                            first_line)
from vlmedge.exporters.samples import image_parity_feeds
from vlmedge.exporters.sources.hf_heads import label_names, pipeline_activation
from vlmedge.exporters.sources.hf_naflex import NaFlex, is_naflex, naflex_setup
from vlmedge.exporters.spec import ExportSpec, GraphSpec, parse_image_size
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
    cls = model_class(arch)
    _check_buildable(cls, folder, arch)
    try:
        model = cls.from_pretrained(str(folder), local_files_only=True, attn_implementation="eager",
                                                  weights_only=True)
    except pickle.UnpicklingError as exc:
        named = re.search(r"GLOBAL (\S+)", str(exc))
        reason = f"it calls {named.group(1)}" if named else "torch.load(weights_only=True) refused it"
        raise UnsupportedModelError(
            f"The weights in {folder} are a pickle that would run code or build objects other than tensors when "
            f"loaded ({reason}); vlmedge loads pickles only with torch.load(weights_only=True) and never unpickles "
            "them unrestricted. Save the model as safetensors (save_pretrained) from a source you trust."
        ) from None
    except ImportError as exc:  # a model class that needs a package this environment lacks (natten, timm ...)
        raise UnsupportedModelError(f"{arch} needs a package that is not installed: {first_line(exc)}") from None
    except (OSError, ValueError, RuntimeError, EOFError) as exc:
        if "ignore_mismatched_sizes" in str(exc):  # transformers points at a report it printed above
            raise _mismatch_error(cls, folder) from None
        raise UnsupportedModelError(f"Cannot load the weights in {folder} ({str(exc).strip()[:400].rstrip('.')}); save "
                                    "the model there again with save_pretrained().") from None
    except Exception as exc:  # safetensors raises its own SafetensorError for corrupt files
        if type(exc).__name__ != "SafetensorError":
            raise
        raise UnsupportedModelError(
            f"The safetensors weights in {folder} are corrupt or truncated ({exc}); save the model again."
        ) from None
    return model.eval()


def _mismatch_error(cls: Any, folder: Path) -> UnsupportedModelError:
    """The weights that do not fit the config, in one sentence (loaded again, quietly, to list them)."""
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        model, info = cls.from_pretrained(str(folder), local_files_only=True, ignore_mismatched_sizes=True,
                                          output_loading_info=True, weights_only=True)
    finally:
        hf_logging.set_verbosity(verbosity)
    found = sorted(info["mismatched_keys"], key=lambda item: item[0])
    listed = ", ".join(f"{key} is {list(saved)} in the weights but {list(made)} by config.json" for key, saved, made in found[:3])
    labels = len(getattr(model.config, "id2label", None) or {})
    hint = (f" (its id2label names {labels} labels: make id2label and num_labels match the classifier's outputs)"
            if any(labels and list(made)[:1] == [labels] for _, _, made in found) else "")
    return UnsupportedModelError(f"The weights in {folder} do not fit its config.json: {listed}{hint}.")


# Classifiers whose processor turns pixels into input_ids of colour clusters: their graph
# does that step first (ColourClusters), so they too take pixel_values.
COLOUR_CLUSTERED = frozenset({"ImageGPTForImageClassification"})


class ColourClusters(torch.nn.Module):
    """ImageGPT's last preprocessing step in the graph: each normalised pixel becomes the
    index of its nearest colour cluster, by the processor's own squared distance
    (a^2 - 2ab + b^2), and the model classifies those input_ids."""

    def __init__(self, model: torch.nn.Module, clusters: Any) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("clusters", torch.tensor(clusters, dtype=torch.float32).reshape(-1, 3))

    def forward(self, pixel_values: torch.Tensor) -> Any:
        pixels = pixel_values.permute(0, 2, 3, 1).reshape(pixel_values.shape[0], -1, 3)
        clusters = self.clusters
        distances = ((pixels * pixels).sum(-1, keepdim=True) - 2 * pixels @ clusters.T
                     + (clusters * clusters).sum(-1))
        return self.model(input_ids=distances.argmin(-1))


def colour_clusters(folder: Path, arch: str) -> Any:
    """The colour clusters of a COLOUR_CLUSTERED classifier's processor (None for any other)."""
    if arch not in COLOUR_CLUSTERED:
        return None
    processor = processor_config(folder)
    clusters = processor.get("clusters")
    if not processor.get("do_color_quantize", True) or not clusters:
        raise UnsupportedModelError(f"{arch} classifies colour-cluster ids, but its image processor has no clusters "
                                    "(or do_color_quantize is off); save the processor it was trained with.")
    return clusters


def check_pixel_values_only(cls: type, arch: str) -> None:
    """Refuses a classifier whose forward takes no pixel_values, or a text prompt with them
    (ShieldGemma2 classifies an image against a policy prompt)."""
    if arch in COLOUR_CLUSTERED:
        return
    parameters = inspect.signature(cls.forward).parameters
    if "pixel_values" not in parameters:
        raise UnsupportedModelError(f"{arch}'s forward takes no pixel_values; vlmedge cannot export it as an image "
                                    "classifier.")
    if "input_ids" in parameters:
        raise UnsupportedModelError(f"{arch} classifies an image together with a text prompt (input_ids); vlmedge "
                                    "exports image classifiers that take the image alone.")


def _check_buildable(cls: type, folder: Path, arch: str) -> None:
    """Builds the model class on the meta device (no memory, no weights read) so that a class
    needing a package this environment lacks (Dinat: natten) is refused before its weights load."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(str(folder), local_files_only=True)
        with torch.device("meta"):
            cls(config)
    except ImportError as exc:
        raise UnsupportedModelError(f"{arch} needs a package that is not installed: {first_line(exc)}") from None
    except Exception:  # noqa: BLE001 - anything else is for from_pretrained to report
        pass


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


class LogitsOnly(torch.nn.Module):
    """A classifier as a graph with one tensor in (pixel_values) and one out: the model's
    `logits`, or the output field that holds them (PPLCNet returns them as last_hidden_state)."""

    def __init__(self, model: torch.nn.Module, output: str = "logits") -> None:
        super().__init__()
        self.model = model
        self.output = output

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return getattr(self.model(pixel_values=pixel_values), self.output)


def logits_field(model: torch.nn.Module, arch: str, num_labels: int, height: int, width: int) -> str:
    """Runs the model once on a (1, 3, height, width) input (which also fills frozen position
    embeddings) and names the output field holding (1, num_labels) logits.

    Raises:
        UnsupportedModelError: the model's own forward fails on pixel values alone, or gives no logits.
    """
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            output = model(pixel_values=torch.zeros(1, 3, height, width))
    except Exception as exc:  # noqa: BLE001 - the model's own code, any error type
        raise UnsupportedModelError(
            f"{arch}'s own forward fails on a {height}x{width} image given as pixel_values alone "
            f"({exception_line(exc, 200)}); vlmedge cannot export it."
        ) from None
    for name in ("logits", "last_hidden_state"):
        value = getattr(output, name, None)
        if isinstance(value, torch.Tensor) and tuple(value.shape) == (1, num_labels):
            return name
    raise UnsupportedModelError(f"{arch}'s forward returns no (batch, {num_labels}) logits; vlmedge cannot export it "
                                "as an image classifier.")


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
            with torch.no_grad():
                self.cache[key] = self.method(embeddings, height, width).detach().clone()
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


def processor_config(folder: Path) -> dict[str, Any]:
    """The image processor's configuration as saved in `folder`: preprocessor_config.json, or
    the image_processor section of transformers 5's combined processor_config.json."""
    config_path = folder / "preprocessor_config.json"
    combined = folder / "processor_config.json"  # transformers 5 ProcessorMixin: {"image_processor": {...}, ...}
    if not config_path.is_file() and combined.is_file():
        section = read_json(combined).get("image_processor")
        if isinstance(section, dict):
            return section
    if not config_path.is_file():
        raise UnsupportedModelError(
            f"{folder} has no preprocessor_config.json; save the model's image processor beside it "
            "(processor.save_pretrained(folder)) so vlmedge can reproduce its preprocessing."
        )
    return read_json(config_path)


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


def image_classifier(folder: Path, config: Any, arch: str, reference: str, image_size: Any = None,
                     **_: Any) -> ExportSpec:
    """ViT, DeiT (with and without distillation head), BEiT, Swin, DINOv2 and any other
    Hugging Face image classifier; SigLIP2 (NaFlex) at the resolution image_size= chooses."""
    labels = label_names(config, folder)
    naflex = naflex_or_processor_size(folder, config, arch, image_size, "a classifier")
    preprocess = naflex.preprocess if naflex else image_preprocess(folder)
    check_pixel_values_only(model_class(arch), arch)
    clusters = colour_clusters(folder, arch)
    model = load_model(folder, arch)
    height, width = preprocess.output_size
    freeze_position_embeddings(model)
    if naflex:
        model = naflex.images(model)
    if clusters is not None:
        model = ColourClusters(model, clusters)
    output = logits_field(model, arch, config.num_labels, height, width)
    pixels, sample_files = image_parity_feeds(preprocess)
    graph = GraphSpec(
        name="model",
        module=LogitsOnly(model, output),
        input_names=["pixel_values"],
        output_names=["logits"],
        example_inputs={"pixel_values": torch.randn(2, 3, height, width)},
        dynamic_axes={"pixel_values": {0: "batch"}, "logits": {0: "batch"}},
        compare={"logits": "logits"},
    )
    return ExportSpec(
        task="image-classification",
        graphs=[graph],
        preprocess={"image": preprocess.to_dict()},
        labels=labels,
        postprocess={"activation": pipeline_activation(config, one_logit_sigmoid=True)},
        source={**source_info(reference, folder, arch, config), **(naflex.source() if naflex else {})},
        parity_feeds={"model": {"pixel_values": pixels}},
        extra_files=sample_files,
    )


# Architectures of the other tasks (known_task: classifiers by transformers' mapping, these builders by their ARCHITECTURES).
ARCHITECTURES_IN_BUILDER = ("image-embedding", "clip")
TASK_ARCHITECTURES: dict[str, set[str]] = {
    "audio-classification": {"ASTForAudioClassification", "WhisperForAudioClassification"} | {
        f"{family}ForSequenceClassification" for family in ("Wav2Vec2", "Wav2Vec2Bert", "Wav2Vec2Conformer", "Hubert",
                                                            "WavLM", "Data2VecAudio", "UniSpeech", "UniSpeechSat", "SEW", "SEWD")},
}
# task -> (module, function(folder, config, arch, reference, **options) -> ExportSpec); one module per family
BUILDERS: dict[str, tuple[str, str]] = {
    "image-classification": ("vlmedge.exporters.sources.hf", "image_classifier"),
    "image-embedding": ("vlmedge.exporters.sources.hf_encoder", "image_encoder"),
    "clip": ("vlmedge.exporters.sources.hf_clip", "clip_model"),
    "audio-classification": ("vlmedge.exporters.sources.hf_audio", "audio_classifier"),
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
