"""Hugging Face image classifiers (the "image-classification" task): one graph from
pixel_values to logits, the processor's preprocessing, the pipeline's activation."""

from __future__ import annotations

import inspect
import warnings
from pathlib import Path
from typing import Any

import torch

from vlmedge.errors import UnsupportedModelError, exception_line
from vlmedge.exporters.samples import image_parity_feeds
from vlmedge.exporters.sources.hf.folder import load_model, model_class, source_info
from vlmedge.exporters.sources.hf.heads import label_names, pipeline_activation
from vlmedge.exporters.sources.hf.positions import freeze_position_embeddings
from vlmedge.exporters.sources.hf.processor import image_preprocess, naflex_or_processor_size, processor_config
from vlmedge.exporters.spec import ExportSpec, GraphSpec


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
