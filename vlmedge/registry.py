"""The task registry: every task vlmedge runs, declared once.

Each entry says which pipeline class runs the task (and which adapter serves it), which
graphs and preprocessing sections its artifact holds, and which public pipeline methods
users call (with the other names the CLI and the bulk engines accept for them). The artifact check, `load`, the CLI,
serve, bulk and bench all look tasks up here; adding a task family means adding an entry,
its pipeline module and its source module.

This module imports nothing of vlmedge but its errors, so the lowest layers (the artifact
check) can read it.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Mapping

from vlmedge.errors import ArtifactError, UsageError

# What one input of a method is.
INPUT_KINDS = ("image", "audio", "text")


@dataclass(frozen=True)
class Method:
    """A public pipeline method that takes a batch of one kind of input."""

    name: str    # the pipeline's method, e.g. "classify"
    input: str   # one of INPUT_KINDS
    graph: str   # the graph it runs
    result: str  # "ranked" (labels with scores), "tags" (ranked per clip and window) or "embedding"
    summary: str
    options: tuple[str, ...] = ()  # the keyword options it takes besides its inputs


@dataclass(frozen=True)
class Task:
    name: str
    summary: str
    pipeline: str                   # "module:Class" of the pipeline, imported on use
    served: str                     # "module:Class" of its `vlmedge serve` adapter, imported on use
    graphs: tuple[str, ...]         # the graphs its artifacts hold
    preprocess: tuple[str, ...]     # the manifest's preprocessing sections its pipeline reads
    methods: tuple[Method, ...]     # the first is what bulk runs when no method is named
    # other names for a method: the CLI's verbs ("predict", "embed") and older names
    aliases: Mapping[str, str] = field(default_factory=dict)
    # whether the manifest's labels name its graph's scores, one per class of the first output
    scores_labels: bool = False
    # other manifest sections its pipeline reads, with the keys each must hold
    sections: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    @property
    def input_kinds(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(m.input for m in self.methods))

    def pipeline_class(self) -> type:
        return _import(self.pipeline)

    def served_class(self) -> type:
        return _import(self.served)

    def method(self, name: str | None = None) -> Method:
        """The method called `name` (or one of its aliases); the default method for None."""
        if name is None:
            return self.methods[0]
        wanted = self.aliases.get(name, name)
        for method in self.methods:
            if method.name == wanted:
                return method
        raise UsageError(f"An artifact for {self.name} runs {', '.join(m.name for m in self.methods)}, not {name!r}.")

    def method_for_graph(self, graph: str) -> Method:
        """The first method that runs `graph` (what `vlmedge bench` times end to end)."""
        return next(m for m in self.methods if m.graph == graph)


def _import(reference: str) -> type:
    module, name = reference.split(":")
    return getattr(importlib.import_module(module), name)


TASKS: dict[str, Task] = {t.name: t for t in (
    Task(
        name="image-classification",
        summary="images -> ranked labels",
        pipeline="vlmedge.tasks.classifier:ImageClassifier",
        served="vlmedge.serve.models:ClassifierModel",
        graphs=("model",), preprocess=("image",),
        methods=(Method("classify", "image", "model", "ranked", "ranked labels per image", ("top_k",)),),
        aliases={"predict": "classify"}, scores_labels=True,
    ),
    Task(
        name="image-embedding",
        summary="images -> embeddings, patch tokens, attention maps",
        pipeline="vlmedge.tasks.encoder:ImageEncoder",
        served="vlmedge.serve.models:EncoderModel",
        graphs=("model",), preprocess=("image",),
        methods=(Method("embed", "image", "model", "embedding", "one pooled vector per image",
                         ("pooling", "normalize")),),
        aliases={"predict": "embed"}, sections={"embedding": ("default_pooling",)},
    ),
    Task(
        name="clip",
        summary="images and captions -> one embedding space; zero-shot classification",
        pipeline="vlmedge.tasks.clip:Clip",
        served="vlmedge.serve.models:ClipModel",
        graphs=("image", "text"), preprocess=("image", "text"),
        methods=(
            Method("embed_images", "image", "image", "embedding",
                   "one vector per image (BLIP-2 retrieval: one per query token)"),
            Method("embed_texts", "text", "text", "embedding", "one vector per caption"),
            Method("zero_shot", "image", "image", "ranked", "each image ranked against the labels you give",
                   ("top_k", "labels", "templates")),
        ),
        aliases={"predict": "zero_shot", "classify": "zero_shot", "embed": "embed_images"},
    ),
    Task(
        name="audio-classification",
        summary="audio clips -> ranked tags, per clip and per window",
        pipeline="vlmedge.tasks.audio:AudioTagger",
        served="vlmedge.serve.models:AudioModel",
        graphs=("model",), preprocess=("audio",),
        methods=(Method("tag", "audio", "model", "tags", "ranked tags per clip and per window",
                         ("top_k", "threshold", "aggregate", "window_hop")),),
        aliases={"predict": "tag", "classify": "tag"}, scores_labels=True,
    ),
)}


def task_named(name: Any, where: Any = "This artifact") -> Task:
    """The registered task called `name`; an ArtifactError naming `where` otherwise."""
    if not isinstance(name, str) or name not in TASKS:
        raise ArtifactError(f"{where} has task {name!r}, which this vlmedge cannot run "
                            f"(it runs {', '.join(TASKS)}); upgrade vlmedge.")
    return TASKS[name]
