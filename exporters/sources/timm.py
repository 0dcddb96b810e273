"""timm:NAME — an image model built by timm's own ``create_model`` from a local checkpoint
(never downloaded), exported as an image classifier (the checkpoint has a classifier) or,
with ``task="image-embedding"``, as an image encoder giving timm's own pooled features
(``forward_head(pre_logits=True)``: the features the classifier reads).

Preprocessing is timm's eval transform for the model's data config
(``timm.data.resolve_data_config({}, model=model)``), as ``transforms_imagenet_eval`` builds it:
resize the shortest edge to ``floor(size / crop_pct)`` (crop_mode "center") or both edges
(crop_mode "squash"), torchvision's centre crop to the input size, ``/ 255``, normalise by
mean and std. What it cannot express is refused by name: crop_mode "border" (resize the
longest edge, pad with the mean colour), a non-square input in crop_mode "center"
(ResizeKeepRatio), interpolation "random".

The same transform serves Hugging Face folders saved from transformers' TimmWrapper classes
(TimmWrapperImageProcessor runs timm's eval transform of its saved pretrained_cfg): see
timm_wrapper_preprocess; their model is exported by the Hugging Face source.

Also here, for both timm: and open_clip: sources: importing the library (timm and open_clip
import torchvision at load time) with a one-sentence refusal when that fails, and the
checks on a checkpoint path.
"""

from __future__ import annotations

import importlib
import math
import os
import sys
import traceback
from pathlib import Path
from typing import Any

import torch

from vlmedge.artifact import sha256_file
from vlmedge.errors import ModelNotFoundError, UnsupportedModelError, exception_line, first_line
from vlmedge.exporters.samples import image_parity_feeds
from vlmedge.exporters.spec import ExportSpec, GraphSpec, read_labels
from vlmedge.preprocess.image import ImagePreprocessSpec
from vlmedge.preprocess.image.values import RESAMPLE

TASKS = ("image-classification", "image-embedding")


def import_library(name: str, needed_by: str | None = None) -> Any:
    """Imports timm or open_clip, or refuses with what is missing and what to do (each is
    installed by the vlmedge extra of its own name). `needed_by` names what needs the library
    (default: the NAME: sources, which could export the Hugging Face version instead).

    Both import torchvision at load time; a torchvision missing, or built for another
    torch, fails here (as an ImportError, or as a RuntimeError from its operators). The
    library's modules a failed import leaves half-loaded are dropped, so a later import
    (another export in the same process) starts afresh."""
    loaded = set(sys.modules)
    try:
        return importlib.import_module(name)
    except Exception as exc:  # noqa: BLE001 - ImportError, or a broken torchvision's RuntimeError/AttributeError
        for module in [m for m in sys.modules if m not in loaded and m.split(".")[0] == name]:
            del sys.modules[module]
        culprit = _failing_package(exc)
        if culprit == name:
            raise UnsupportedModelError(
                f"{needed_by or f'{name}: sources'} need the {name} package, which is not installed; install it with "
                f"pip install 'vlmedge[{name}]'."
            ) from None
        todo = (f"install the torchvision release built for torch {torch.__version__.split('+')[0]}"
                if culprit == "torchvision" else f"install {culprit} (pip install {culprit})")
        lead = f"{needed_by} need {name}, which" if needed_by else name
        alternative = "" if needed_by else ", or export the Hugging Face version of the model"
        raise UnsupportedModelError(
            f"{lead} cannot be imported because {culprit} failed to load ({type(exc).__name__}: "
            f"{first_line(exc, 160)}); {todo}{alternative}."
        ) from None


def _failing_package(exc: BaseException) -> str:
    """The top-level package whose import failed: the missing module's, else the innermost
    installed package in the traceback other than torch (a torchvision built for another torch
    fails in torch's operator registry, called from torchvision's own files)."""
    missing = getattr(exc, "name", None) if isinstance(exc, ImportError) else None
    if missing:
        return missing.split(".")[0]
    for frame in reversed(traceback.extract_tb(exc.__traceback__)):
        parts = Path(frame.filename).parts
        if "site-packages" in parts and parts.index("site-packages") + 1 < len(parts):
            package = parts[parts.index("site-packages") + 1].removesuffix(".py")
            if package != "torch":
                return package
    return "a dependency"


def checkpoint_file(checkpoint: Any, scheme: str) -> Path:
    """The checkpoint as an absolute path to an existing file, or a refusal."""
    if checkpoint is None or checkpoint is False:
        raise UnsupportedModelError(
            f"{scheme}: models are built from a local checkpoint file; pass checkpoint=PATH "
            "(CLI: --checkpoint PATH), a .safetensors, .pth or .bin file."
        )
    if not isinstance(checkpoint, (str, os.PathLike)):
        raise UnsupportedModelError(f"checkpoint must be a path to a file, not {type(checkpoint).__name__}.")
    path = Path(checkpoint).expanduser()
    if not path.is_file():
        raise ModelNotFoundError(
            f"The checkpoint {path} does not exist or is not a file; pass the path of a .safetensors, .pth or .bin file."
        )
    return path.resolve()


def eval_transform_spec(height: int, width: int, resize: dict, interpolation: str, mean: Any, std: Any,
                        crop: bool = True) -> ImagePreprocessSpec:
    """torchvision's PIL pipeline Resize -> CenterCrop -> ToTensor -> Normalize as a spec.

    Images arrive as RGB (vlmedge decodes every input as Hugging Face's load_image does);
    ToTensor's x / 255 in float32 equals the spec's rescale (float64 then float32) for all
    256 values, and Normalize computes (x - mean) / std in float32, as the spec does.
    """
    if interpolation not in RESAMPLE:
        raise UnsupportedModelError(
            f"vlmedge cannot reproduce the interpolation {interpolation!r}; it reproduces {', '.join(RESAMPLE)}."
        )
    mean = tuple(mean) if isinstance(mean, (list, tuple)) else (mean,) * 3
    std = tuple(std) if isinstance(std, (list, tuple)) else (std,) * 3
    return ImagePreprocessSpec(
        do_resize=True, size=resize, resample=interpolation, do_center_crop=crop,
        crop_size={"height": height, "width": width} if crop else None, crop_style="torchvision",
        do_rescale=True, rescale_factor=1 / 255, do_normalize=True, image_mean=mean, image_std=std,
        do_convert_rgb=False,
    )


def timm_preprocess(data_config: dict[str, Any]) -> ImagePreprocessSpec:
    """timm's ``transforms_imagenet_eval`` for a resolved data config, as a spec."""
    channels, height, width = (int(v) for v in data_config["input_size"])
    if channels != 3:
        raise UnsupportedModelError(f"The model takes {channels}-channel input; vlmedge exports RGB image models.")
    crop_pct = float(data_config.get("crop_pct") or 0.875)  # timm's DEFAULT_CROP_PCT
    crop_mode = data_config.get("crop_mode") or "center"
    interpolation = str(data_config.get("interpolation") or "bilinear")
    scale = (math.floor(height / crop_pct), math.floor(width / crop_pct))
    if crop_mode == "squash":
        resize = {"height": scale[0], "width": scale[1]}
    elif crop_mode == "center":
        if scale[0] != scale[1]:
            raise UnsupportedModelError(
                f"timm resizes a non-square input ({height}x{width}) with ResizeKeepRatio, which vlmedge does not "
                "reproduce; export the model at a square input_size."
            )
        resize = {"shortest_edge": scale[0]}
    else:
        raise UnsupportedModelError(
            f"vlmedge cannot reproduce timm's crop_mode {crop_mode!r} (it reproduces 'center' and 'squash'); "
            "export with pretrained_cfg_overlay=dict(crop_mode='center') in model_kwargs if that is how you evaluate."
        )
    return eval_transform_spec(height, width, resize, interpolation, data_config["mean"], data_config["std"])


# Who needs timm, in the refusals of Hugging Face folders saved from transformers' TimmWrapper classes.
TIMM_WRAPPER = "TimmWrapper models (timm models saved by transformers)"


def timm_wrapper_preprocess(config: dict[str, Any]) -> ImagePreprocessSpec:
    """TimmWrapperImageProcessor's eval transform as a spec: timm resolves the data config of
    the saved pretrained_cfg (``resolve_data_config(pretrained_cfg, model=None)``, as the
    processor does), whose ``create_transform(is_training=False)`` is transforms_imagenet_eval.
    Needs timm (the model itself is timm's code); refuses in one sentence where it cannot load."""
    pretrained_cfg = config.get("pretrained_cfg")
    if not isinstance(pretrained_cfg, dict):
        raise UnsupportedModelError("This TimmWrapper image processor config has no pretrained_cfg (timm's data "
                                    "config); save the model with save_pretrained, whose config.json holds it.")
    timm = import_library("timm", TIMM_WRAPPER)
    return timm_preprocess(timm.data.resolve_data_config(pretrained_cfg, model=None, verbose=False))


def timm_wrapper_refusal() -> str | None:
    """Why TimmWrapper models cannot be exported here (timm does not load), or None."""
    try:
        import_library("timm", TIMM_WRAPPER)
    except UnsupportedModelError as exc:
        return str(exc)
    return None


class PooledFeatures(torch.nn.Module):
    """pixel_values -> timm's pooled pre-logits features: forward_head(forward_features(x), pre_logits=True)."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model.forward_head(self.model.forward_features(pixel_values), pre_logits=True)


class TimmLogits(torch.nn.Module):
    """pixel_values -> logits, the model's own forward."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values)


def _name_and_weights(name: str, checkpoint: Any, pretrained: Any) -> tuple[Path | None, bool]:
    """(checkpoint file, whether timm loads its own pretrained weights from a local-dir: folder)."""
    if name.startswith("local-dir:"):
        folder = Path(name.removeprefix("local-dir:")).expanduser()
        if not (folder / "config.json").is_file():
            raise ModelNotFoundError(f"{folder} has no config.json; pass a folder written by timm's save_for_hf "
                                     "or downloaded from a timm model repository.")
        if checkpoint is not None:
            raise UnsupportedModelError("timm:local-dir: loads the weights saved in its folder; leave out checkpoint.")
        return None, True
    if pretrained not in (None, False):
        raise UnsupportedModelError(
            f"pretrained={pretrained!r} would make timm download {name}'s weights, and vlmedge never downloads; "
            "pass the downloaded file as checkpoint=PATH."
        )
    return checkpoint_file(checkpoint, "timm"), False


def _load_state(timm: Any, path: Path) -> dict[str, torch.Tensor]:
    """The checkpoint's tensors, by timm's own loader: safetensors, or torch.load(weights_only=True)."""
    if path.suffix.lower() in (".npz", ".npy"):
        raise UnsupportedModelError(f"{path.name} is a JAX/NumPy checkpoint; convert it to safetensors "
                                    "(timm's own loader reads it into the model) and export that.")
    try:
        return timm.models.load_state_dict(str(path), weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch.load refusing a pickle, a corrupt file ...
        raise UnsupportedModelError(
            f"Cannot read the checkpoint {path} with weights_only=True ({exception_line(exc, 200)}); "
            "vlmedge never unpickles checkpoints unrestricted: save the weights as safetensors."
        ) from None


def _build(timm: Any, name: str, path: Path | None, from_folder: bool, model_kwargs: dict[str, Any]) -> torch.nn.Module:
    """The model with the checkpoint's weights; its classifier sized as the checkpoint's."""
    try:
        model = timm.create_model(name, pretrained=from_folder, exportable=True, **model_kwargs)
    except Exception as exc:  # noqa: BLE001 - RuntimeError "Unknown model", TypeError for a bad kwarg ...
        raise UnsupportedModelError(
            f"timm cannot build {name!r} ({exception_line(exc, 200)}); "
            "check the name against timm.list_models() and the model_kwargs."
        ) from None
    if path is None:
        return model.eval()
    state = _load_state(timm, path)
    classifier = (model.pretrained_cfg or {}).get("classifier")
    head = classifier[0] if isinstance(classifier, (list, tuple)) else classifier
    weight = state.get(f"{head}.weight") if head else None
    num_classes = int(weight.shape[0]) if isinstance(weight, torch.Tensor) and weight.ndim >= 1 else 0
    if num_classes != getattr(model, "num_classes", num_classes):
        model.reset_classifier(num_classes)  # timm's own way to size the head as the checkpoint's
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise UnsupportedModelError(
            f"The checkpoint {path.name} does not fit timm's {name} ({first_line(exc, 240)}); pass the model_kwargs "
            "it was trained with."
        ) from None
    return model.eval()


def _labels(timm: Any, model: torch.nn.Module, num_classes: int, labels: Any) -> tuple[list[str], str]:
    """The labels and where they came from: labels= (a list or a file, one a line), the
    model's label_names, timm's ImageNet names for its number of classes, else LABEL_i."""
    labels = read_labels(labels)
    if labels is not None:
        labels = [str(label) for label in labels]
        if len(labels) != num_classes:
            raise UnsupportedModelError(f"{len(labels)} labels were given for a classifier of {num_classes} classes; "
                                        "give one label per class, in class order.")
        return labels, "labels option"
    names = (model.pretrained_cfg or {}).get("label_names")
    if names and len(names) == num_classes:
        return [str(n) for n in names], "the model's pretrained_cfg label_names"
    subset = timm.data.infer_imagenet_subset(model)
    if subset:
        info = timm.data.ImageNetInfo(subset)
        if len(info.label_names()) == num_classes:
            return info.label_descriptions(), f"timm's {subset} class names (timm.data.infer_imagenet_subset)"
    return [f"LABEL_{i}" for i in range(num_classes)], ("the checkpoint names no labels; pass labels= "
                                                        "(CLI: --labels FILE) to name them")


def from_timm(name: str, task: str | None = None, checkpoint: Any = None, pretrained: Any = None,
              labels: Any = None, model_kwargs: dict[str, Any] | None = None, image_size: Any = None,
              **options: Any) -> ExportSpec:
    """The ExportSpec of ``timm:NAME``.

    Args:
        name: a timm model name (with an optional pretrained tag, which picks the preprocessing),
            or local-dir:FOLDER (a timm model repository downloaded beforehand).
        checkpoint: the weights, a .safetensors, .pth or .bin file (loaded with weights_only=True).
        labels: class names, a list or a file with one a line (classification).
        model_kwargs: keyword arguments for timm.create_model (e.g. img_size, depth), as the
            checkpoint was trained with.
    """
    unknown = sorted(set(options) - {"reference"})
    if unknown:
        raise UnsupportedModelError(f"timm: sources take checkpoint=, labels= and model_kwargs=, not {', '.join(unknown)}.")
    if task not in (None, *TASKS):
        raise UnsupportedModelError(f"timm: models are exported for {' or '.join(TASKS)}, not '{task}'.")
    if image_size is not None:
        raise UnsupportedModelError("image_size does not apply to timm: models; pass model_kwargs=dict(img_size=...) "
                                    "and the matching pretrained_cfg_overlay=dict(input_size=(3, H, W)).")
    path, from_folder = _name_and_weights(name, checkpoint, pretrained)
    timm = import_library("timm")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # create_model of a registry name needs no network
    model = _build(timm, name, path, from_folder, dict(model_kwargs or {}))
    num_classes = int(getattr(model, "num_classes", 0) or 0)
    task = task or ("image-classification" if num_classes > 0 else "image-embedding")
    if task == "image-classification" and num_classes == 0:
        raise UnsupportedModelError(f"The checkpoint of timm:{name} has no classifier; export it with "
                                    "task='image-embedding' for its pooled features.")
    if task == "image-embedding" and not callable(getattr(model, "forward_head", None)):
        raise UnsupportedModelError(f"timm's {type(model).__name__} has no forward_head; vlmedge cannot export "
                                    "its pooled features.")
    data_config = timm.data.resolve_data_config({}, model=model)
    preprocess = timm_preprocess(data_config)
    height, width = preprocess.output_size
    module = TimmLogits(model) if task == "image-classification" else PooledFeatures(model)
    try:
        with torch.no_grad():
            probe = module(torch.zeros(1, 3, height, width))
    except Exception as exc:  # noqa: BLE001 - the model's own code, any error type
        raise UnsupportedModelError(
            f"timm's {name} fails on a {height}x{width} image, the size of its data config "
            f"({exception_line(exc, 200)}); set pretrained_cfg_overlay=dict(input_size=...) in "
            "model_kwargs to the size the model takes."
        ) from None
    output = "logits" if task == "image-classification" else "pooled"
    if probe.ndim != 2:  # global_pool="" leaves the feature map, or the tokens, unpooled
        raise UnsupportedModelError(
            f"timm's {name} gives {output} of shape {list(probe.shape)} per batch of one image, not (1, "
            f"{'classes' if output == 'logits' else 'features'}); build it with its pooling (leave out "
            "global_pool='' in model_kwargs).")
    pixels, sample_files = image_parity_feeds(preprocess)
    graph = GraphSpec(
        name="model", module=module, input_names=["pixel_values"], output_names=[output],
        example_inputs={"pixel_values": torch.randn(2, 3, height, width)},
        dynamic_axes={"pixel_values": {0: "batch"}, output: {0: "batch"}},
        compare={output: "logits" if output == "logits" else "embedding"},
    )
    source = {
        "kind": "timm", "reference": options.get("reference") or f"timm:{name}", "architecture": type(model).__name__,
        "model_name": name, "timm_version": timm.__version__, "model_kwargs": json_safe(model_kwargs or {}),
        "data_config": json_safe(data_config),
    }
    if path is not None:
        source.update(checkpoint=str(path), checkpoint_sha256=sha256_file(path))
    spec = ExportSpec(
        task=task, graphs=[graph], preprocess={"image": preprocess.to_dict()}, labels=None, postprocess={},
        source=source, parity_feeds={"model": {"pixel_values": pixels}}, extra_files=sample_files,
    )
    if task == "image-classification":
        spec.labels, source["labels_from"] = _labels(timm, model, num_classes, labels)
        spec.postprocess = {"activation": "softmax"}
    else:
        if labels is not None:
            raise UnsupportedModelError("labels= applies to classifiers; an image-embedding export has none.")
        dim = int(probe.shape[-1])
        spec.postprocess = {"normalize": True, "pooling": "pooled"}
        spec.manifest_extra = {"embedding": {
            "family": f"timm:{type(model).__name__}", "default_pooling": "pooled", "poolings": ["pooled"],
            "hidden_size": dim, "image_size": [height, width], "static_resolution": True, "attention": None,
            "pooling_source": "timm forward_head(pre_logits=True)",
        }}
    return spec


def json_safe(value: Any) -> Any:
    """JSON-safe copies of config values (tuples to lists, anything else to its str)."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)
