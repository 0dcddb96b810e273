"""A plain torch.nn.Module from Python, with the preprocessing and labels it was trained with."""

from __future__ import annotations

import contextlib
import dataclasses
import os
from typing import Any, Iterator

import torch

from vlmedge.errors import UnsupportedModelError, UsageError, exception_line
from vlmedge.exporters.samples import image_parity_feeds
from vlmedge.exporters.spec import ExportSpec, GraphSpec, read_labels
from vlmedge.preprocess.image import ImagePreprocessSpec


def from_module(module: torch.nn.Module, task: str | None = None, preprocess: ImagePreprocessSpec | dict | None = None,
                labels: list[str] | str | os.PathLike | None = None, name: str | None = None,
                **_: Any) -> ExportSpec:
    """An image classifier module: (N, 3, H, W) float pixels -> (N, num_labels) logits.

    labels: the class names, a list or a file with one a line.
    """
    if (task or "image-classification") != "image-classification":
        raise UnsupportedModelError(f"A plain torch module can be exported for image-classification only, not '{task}'.")
    if preprocess is None or labels is None:
        raise UnsupportedModelError(
            "A plain torch module needs preprocess= (an ImagePreprocessSpec or its dict) and labels= to be exported."
        )
    labels = read_labels(labels)
    if not labels:
        raise UsageError("labels= is empty; give the class names, one per output of the module.")
    spec = preprocess if isinstance(preprocess, ImagePreprocessSpec) else _preprocess_spec(preprocess)
    if spec.layout != "NCHW":  # what the module is traced, and its parity inputs made, in
        raise UsageError(f"A plain torch module takes (N, 3, H, W) pixels: give preprocess= with layout 'NCHW', "
                         f"not {spec.layout!r}.")
    height, width = spec.output_size
    pixels, sample_files = image_parity_feeds(spec)
    module = module.eval()
    try:
        with torch.no_grad():
            out = module(torch.from_numpy(pixels[:2].copy()))
    except Exception as exc:  # the module's own forward: any type
        raise UnsupportedModelError(f"The module failed on two (2, 3, {height}, {width}) float32 images on the CPU "
                                    f"({exception_line(exc)}); it must take a batch of float32 pixels alone, as "
                                    "preprocess= makes them.") from exc
    if not isinstance(out, torch.Tensor) or out.ndim != 2 or out.shape[1] != len(labels):
        shape = list(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise UnsupportedModelError(
            f"The module must return one (N, {len(labels)}) logits tensor for {len(labels)} labels, but it returned {shape}."
        )
    graph = GraphSpec(
        name="model", module=module, input_names=["pixel_values"], output_names=["logits"],
        example_inputs={"pixel_values": torch.randn(2, 3, height, width)},
        dynamic_axes={"pixel_values": {0: "batch"}, "logits": {0: "batch"}},
        compare={"logits": "logits"},
    )
    return ExportSpec(
        task="image-classification", graphs=[graph], preprocess={"image": spec.to_dict()},
        # one label is a yes/no score: a softmax over one logit is always 1 (as for transformers' models)
        labels=[str(label) for label in labels], postprocess={"activation": "sigmoid" if len(labels) == 1 else "softmax"},
        source={"kind": "module", "reference": name or type(module).__name__, "architecture": type(module).__name__},
        parity_feeds={"model": {"pixel_values": pixels}}, extra_files=sample_files,
    )


def _preprocess_spec(preprocess: Any) -> ImagePreprocessSpec:
    """preprocess= as a dict: the spec's own fields (an invalid value is the spec's InputError;
    from_dict would blame an artifact, and there is none yet)."""
    fields = [f.name for f in dataclasses.fields(ImagePreprocessSpec)]
    if not isinstance(preprocess, dict) or "size" not in preprocess or set(preprocess) - set(fields):
        raise UsageError(f"preprocess= must be an ImagePreprocessSpec or a dict of its fields, with size "
                         f"({', '.join(fields)}), not {preprocess!r}.")
    return ImagePreprocessSpec(**preprocess)


@contextlib.contextmanager
def training_modes_kept(model: Any) -> Iterator[None]:
    """A torch module passed to export comes back in the train or eval mode each of its
    submodules had (the export runs it in eval mode): a training loop that exports a
    checkpoint half way carries on with its dropout and batch statistics."""
    modes = [(m, m.training) for m in model.modules()] if isinstance(model, torch.nn.Module) else []
    try:
        yield
    finally:
        for submodule, training in modes:
            submodule.training = training
