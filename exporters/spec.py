"""ExportSpec: what a model source yields, and all that the rest of the export needs."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

import numpy as np

from vlmedge.errors import ExportError, ModelNotFoundError, UsageError
from vlmedge.tasks.base import check_distinct_labels

if TYPE_CHECKING:  # annotations only: reading the built-in list (vlmedge formats) needs no torch
    import torch


@dataclass
class GraphSpec:
    """One graph to export: a module with plain tensor inputs and outputs.

    `compare` names, per output, how parity reads it: "logits" (also compares
    probabilities and top-k agreement) or "embedding" (cosine and abs error only).
    """

    name: str
    module: torch.nn.Module
    input_names: list[str]
    output_names: list[str]
    example_inputs: dict[str, torch.Tensor]
    dynamic_axes: dict[str, dict[int, str]]
    compare: dict[str, str] = field(default_factory=dict)


@dataclass
class ExportSpec:
    """Everything a source model contributes to an artifact."""

    task: str
    graphs: list[GraphSpec]
    preprocess: dict[str, Any]
    labels: list[str] | None
    postprocess: dict[str, Any]
    source: dict[str, Any]
    # graph -> input name -> array: the inputs parity runs (bundled samples + seeded random ones)
    parity_feeds: dict[str, dict[str, np.ndarray]]
    # artifact-relative path -> file to copy in (tokenizer, sample inputs)
    extra_files: dict[str, Path] = field(default_factory=dict)
    manifest_extra: dict[str, Any] = field(default_factory=dict)


def read_labels(labels: Any) -> Any:
    """labels= as a source takes it: a file (a str or PathLike, as --labels FILE gives) becomes
    its non-empty lines, one label a line; anything else is returned as it is."""
    if isinstance(labels, (str, os.PathLike)):
        file = Path(labels).expanduser()
        if not file.is_file():
            raise ModelNotFoundError(f"The labels file {file} does not exist; give a text file with one label a line.")
        # utf-8-sig: a byte-order mark (Windows Notepad writes one) is not part of the first label
        labels = [line.strip() for line in file.read_text(encoding="utf-8-sig").splitlines() if line.strip()]
    elif isinstance(labels, dict):  # id -> name, as a config's id2label
        if set(labels) != set(range(len(labels))):
            raise UsageError("labels= as a dict maps class ids 0, 1, ... to names (as id2label does), not "
                             f"{list(labels)[:5]}; or give a list of names in class order.")
        labels = [labels[i] for i in range(len(labels))]
    elif isinstance(labels, (set, frozenset)):  # its order is the hash's: the names would go to the wrong classes
        raise UsageError("labels= is a set, which has no order; give a list of the class names in class order.")
    elif isinstance(labels, Iterable) and not isinstance(labels, (list, tuple, bytes)):  # a generator, a range ...
        labels = list(labels)
    if isinstance(labels, (list, tuple)):
        check_distinct_labels([str(label) for label in labels], "class", UsageError)
    return labels


MAX_IMAGE_SIDE = 4096  # 85,000 patches of 14 pixels: beyond, tracing would run out of memory, not fail clearly


def parse_image_size(image_size: Any, name: str = "image_size", error: type[Exception] = ExportError
                     ) -> tuple[int, int] | None:
    """None, an int, "448", "448x336" (height x width) or (height, width) -> (height, width);
    `error` (the CLI's UsageError for --image-size) naming `name` otherwise."""
    if image_size is None:
        return None
    value = image_size
    if isinstance(value, str):
        parts = value.lower().replace(",", "x").split("x")
        digits = len(parts) in (1, 2) and all(part.strip().isdigit() for part in parts)
        value = [int(part) for part in (parts * 2)[:2]] if digits else None  # "448" is 448 x 448
    if isinstance(value, int) and not isinstance(value, bool):
        value = (value, value)
    if (isinstance(value, (list, tuple)) and len(value) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) and 0 < v <= MAX_IMAGE_SIDE for v in value)):
        return int(value[0]), int(value[1])
    raise error(f"{name} must be an int or (height, width) from 1 to {MAX_IMAGE_SIDE}, e.g. 448 or 448x336, "
                f"not {image_size!r}.")
