"""What a bulk run runs: the artifact, the task method (as the registry names it) and its
options, checked against the artifact's manifest before any model is opened.

A ``BulkJob`` is plain data, so Ray ships it to every preprocessing task and inference
actor. The option checks are the pipelines' own (``check_top_k``, ``Clip.check_labels``,
``ImageEncoder.check_pooling``, ``AudioTagger.check_window_hop`` ...).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from types import EllipsisType
from typing import Any, Callable

from vlmedge.choices import current_folder
from vlmedge.errors import ArtifactError, InputError, UsageError

# The options a task method takes are the registry's (Method.options). All but
# PREPARE_OPTIONS are keyword arguments of the pipeline's `<method>_prepared`; those are
# for the first stage.
PREPARE_OPTIONS = ("window_hop",)
# options left at these values count as not given
# (top_k's `...`: the method's own default, as its Python call has it; None: every label)
DEFAULTS: dict[str, Any] = {"top_k": ..., "pooling": None, "normalize": True, "labels": None, "templates": None,
                            "window_hop": None, "aggregate": None, "threshold": None}
# what to say when an option is given to a method that does not take it
NOT_TAKEN = (
    (("top_k",), "top_k applies to methods that rank labels (classify, zero-shot, tag), not to embeddings."),
    (("pooling", "normalize"), "pooling and normalize apply to image-embedding artifacts only."),
    (("labels", "templates"), "labels and templates are for zero-shot classification with a CLIP artifact "
                              "(task method 'classify')."),
    (("window_hop", "aggregate", "threshold"), "window_hop, aggregate and threshold apply to audio-classification "
                                               "artifacts only."),
)


@dataclasses.dataclass(frozen=True)
class BulkJob:
    """What to run: plain data, shipped to every preprocessing task and inference worker."""

    artifact: str
    task: str
    method: str                     # the registry's name: classify, embed, embed_images, embed_texts, zero_shot, tag
    kind: str                       # "image", "audio" or "text": what one input is (the method's input)
    result: str                     # "ranked", "tags" or "embedding" (the method's result)
    preprocess: dict[str, Any]      # the manifest's preprocess section
    backend: str = "auto"
    precision: str | None = None
    device: str = "cpu"
    options: dict[str, Any] = dataclasses.field(default_factory=dict)          # of `<method>_prepared`
    prepare_options: dict[str, Any] = dataclasses.field(default_factory=dict)  # of the first stage
    session_options: dict[str, Any] = dataclasses.field(default_factory=dict)
    tokenizer_json: str | None = None  # captions: the tokenizer travels with the job
    column: str | None = None           # the input column of a table: "path", "text", ...
    cwd: str = ""                       # relative paths are relative to this ("": the reader's own)


def make_job(artifact: str | os.PathLike, method: str | None = None, *, backend: str = "auto",
             precision: str | None = None, device: str = "cpu", top_k: int | None | EllipsisType = ...,
             pooling: str | None = None, normalize: bool = True, labels: Any = None, templates: Any = None,
             window_hop: float | None = None, aggregate: str | None = None, threshold: float | None = None,
             column: str | None = None, session_options: dict[str, Any] | None = None) -> BulkJob:
    """Checks the method (a registry name or alias; None: the task's default) and its
    options against the artifact's manifest, without opening a model, so that a mistake is
    reported before any worker starts, and returns the job. top_k: as the method's Python
    call takes it (None: every label); left out, the method's own default (5; zero-shot: every
    label)."""
    from vlmedge.artifact import Artifact
    from vlmedge.registry import task_named

    art = Artifact.open(artifact, verify=False)  # each worker verifies the files it loads
    manifest = art.manifest
    task = task_named(art.task, f"Artifact {artifact}")
    chosen = task.method(method)
    if not hasattr(task.pipeline_class(), f"{chosen.name}_prepared"):
        raise ArtifactError(f"Bulk inference cannot run {chosen.name} of a {task.name} artifact; upgrade vlmedge.")
    given = dict(top_k=top_k, pooling=pooling, normalize=normalize, labels=labels, templates=templates,
                 window_hop=window_hop, aggregate=aggregate, threshold=threshold)
    takes = chosen.options
    for names, message in NOT_TAKEN:
        if any(given[n] != DEFAULTS[n] for n in names if n not in takes):
            raise UsageError(message)
    if chosen.name == "embed_images":
        from vlmedge.tasks.clip import image_embedding_refusal

        refusal = image_embedding_refusal((manifest.get("postprocess") or {}).get("image_reduction"))
        if refusal:
            raise InputError(refusal)
    _check_model_files(art, backend, device, precision, session_options or {})
    checks = _checks(manifest, art.root)
    if "top_k" in takes and top_k is ...:  # the method's own default, as its Python call has it
        from vlmedge.tasks.base import option_default

        given["top_k"] = option_default(getattr(task.pipeline_class(), chosen.name), "top_k")
    values = {name: checks[name](given[name]) for name in takes}
    tokenizer_json = None
    if chosen.input == "text":
        text = manifest["preprocess"].get("text") or {}
        tokenizer_json = art.path_of(text.get("tokenizer_file", "tokenizer.json")).read_text(encoding="utf-8")
    return BulkJob(artifact=str(Path(artifact).resolve()), task=task.name, method=chosen.name, kind=chosen.input,
                   result=chosen.result, preprocess=dict(manifest["preprocess"]), backend=backend,
                   precision=precision, device=device,
                   options={k: v for k, v in values.items() if k not in PREPARE_OPTIONS},
                   prepare_options={k: v for k, v in values.items() if k in PREPARE_OPTIONS},
                   session_options=dict(session_options or {}), tokenizer_json=tokenizer_json, column=column,
                   cwd=current_folder())


def _check_model_files(art: Any, backend: str, device: str, precision: str | None,
                       session_options: dict[str, Any]) -> None:
    """The files a worker's load would open (vlmedge.runtimes.select's own lookup) are in the
    artifact, of their listed size, and their backend takes the session options; hashing
    them is left to each worker's load."""
    from vlmedge.runtimes.select import check_load_options, entries_to_open

    check_load_options(art, backend, device, session_options)
    _, _, entries = entries_to_open(art, backend, device, precision)
    art.verify([f for entry in entries.values() for f in art.model_files(entry)], defer_models=True)


def _checks(manifest: dict[str, Any], root: Path) -> dict[str, Callable[[Any], Any]]:
    """Option name -> the pipeline's check of it, from the manifest alone."""
    from vlmedge.preprocess.audio import AudioPreprocessSpec
    from vlmedge.tasks.audio import AudioTagger
    from vlmedge.tasks.base import check_flag, check_threshold, check_top_k, manifest_activation
    from vlmedge.tasks.clip import Clip
    from vlmedge.tasks.encoder import ImageEncoder

    return {
        "top_k": check_top_k,
        "pooling": lambda v: ImageEncoder.check_pooling(manifest, v),
        "normalize": lambda v: check_flag("normalize", v),
        "labels": Clip.check_labels,
        "templates": Clip.check_templates,
        "threshold": lambda v: check_threshold(v, manifest_activation(manifest, root)),
        "aggregate": AudioTagger.check_aggregate,
        "window_hop": lambda v: AudioTagger.check_window_hop(
            v, AudioPreprocessSpec.from_dict(manifest["preprocess"]["audio"])),
    }
