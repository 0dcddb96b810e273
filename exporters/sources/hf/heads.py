"""What a Hugging Face classifier's config says about its outputs: a name per logit
(id2label) and how transformers' pipelines turn the logits into scores; shared by the
image and audio classifier sources."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vlmedge.errors import UnsupportedModelError


def label_names(config: Any, folder: Path) -> list[str]:
    """The config's id2label as a list, one name per logit; UnsupportedModelError naming the
    ids it has no name for (transformers' own pipelines fail on them with a KeyError)."""
    ids = range(config.num_labels)
    missing = [i for i in ids if i not in config.id2label]
    if missing:
        shown = ", ".join(map(str, missing[:10])) + (", ..." if len(missing) > 10 else "")
        raise UnsupportedModelError(
            f"{folder / 'config.json'} names no label for id(s) {shown} of its {config.num_labels} labels (its "
            f"id2label has the ids {sorted(config.id2label)[:10]}); fix id2label in config.json to name every id "
            f"from 0 to {config.num_labels - 1}."
        )
    return [str(config.id2label[i]) for i in ids]


def pipeline_activation(config: Any, one_logit_sigmoid: bool) -> str:
    """The activation (vlmedge.tasks.base.ACTIVATIONS) transformers' classification pipeline
    applies to the logits: none for regression, a sigmoid for multi-label models (and, where
    ``one_logit_sigmoid``, as the image pipeline does, for one logit), else a softmax."""
    problem = getattr(config, "problem_type", None)
    if problem == "regression":
        return "none"
    if problem == "multi_label_classification" or (one_logit_sigmoid and config.num_labels == 1):
        return "sigmoid"
    return "softmax"
