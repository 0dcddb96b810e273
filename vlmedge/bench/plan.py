"""What one `vlmedge bench` run measures and on which inputs, and what it has found so far:
the Plan that vlmedge.bench.measure fills with rows, skips and warnings.

Inputs are the first real sample stored in samples/parity.npz (exporters/samples.py writes
the bundled files first), repeated to the batch size: every batch size does the same work per
item (the first rows tiled gave batch 1 an 8-token caption and batch 8 a 46-token one);
settings.inputs "random" uses seeded noise of the same shapes. A text graph that takes
captions of any length gets them without the padding they end with, as the runtime runs it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from vlmedge.artifact import Artifact
from vlmedge.bench.result import Row, Settings, Skip
from vlmedge.bench.timing import Memory
from vlmedge.errors import VlmedgeError
from vlmedge.registry import Method, task_named
from vlmedge.runtimes.base import TensorInfo, takes_trimmed_padding, trim_padding


def _sample_items(artifact: Artifact) -> dict[str, list[Any]]:
    """The artifact's bundled sample inputs by kind: image and audio paths, text lines."""
    from vlmedge.preprocess.audio import AUDIO_SUFFIXES
    from vlmedge.preprocess.image import image_suffixes

    image = image_suffixes()
    items: dict[str, list[Any]] = {"image": [], "audio": [], "text": []}
    for entry in artifact.files:
        if entry.get("role") != "sample":
            continue
        path = artifact.path_of(entry)
        suffix = path.suffix.lower()
        if suffix in image:
            items["image"].append(str(path))
        elif suffix in AUDIO_SUFFIXES:
            items["audio"].append(str(path))
        elif suffix == ".txt":
            items["text"] += [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return items


@dataclass
class Plan:
    artifact: Artifact
    settings: Settings
    say: Callable[[str], None]
    memory: Memory
    stored: dict[str, dict[str, dict[str, np.ndarray]]]  # graph -> "input"/"reference" -> name -> array
    samples: dict[str, list[Any]]  # _sample_items()
    rows: list[Row] = field(default_factory=list)
    skipped: list[Skip] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    torch_cache: dict[str, Any] = field(default_factory=dict)
    primed: set[str] = field(default_factory=set)
    # with settings.rounds: (a row's fields but its latency, its timed call), opened and warmed up,
    # to be timed together at the end (measure.time_round_robin)
    waiting: list[tuple[dict[str, Any], Callable[[], Any]]] = field(default_factory=list)
    asked_precisions: bool = False  # given explicitly: a backend without them is reported, not passed over

    @classmethod
    def create(cls, artifact: Artifact, settings: Settings, say: Callable[[str], None], memory: Memory,
               asked_precisions: bool) -> "Plan":
        """A plan with the artifact's stored parity inputs (none when it has no readable ones)
        and its bundled sample files."""
        from vlmedge.check import stored_parity_inputs

        try:
            stored = stored_parity_inputs(artifact)
        except VlmedgeError:
            stored = {}
        return cls(artifact, settings, say, memory, stored, _sample_items(artifact), asked_precisions=asked_precisions)

    @property
    def task(self) -> str:
        return self.artifact.task

    def graphs(self) -> list[str]:
        return list(self.artifact.manifest["graphs"])

    def method(self, graph: str) -> Method:
        """The pipeline method timed end to end on a graph, and the kind of sample it takes."""
        return task_named(self.task).method_for_graph(graph)

    def compare_kinds(self, graph: str) -> dict[str, str]:
        for entry in self.artifact.model_entries(graph=graph):
            outputs = (entry.get("parity") or {}).get("outputs", {})
            if outputs:
                return {n: "logits" if "top1" in m else "embedding" for n, m in outputs.items()}
        return {}

    def feeds(self, graph: str, batch: int, session: Any) -> tuple[dict[str, np.ndarray], str]:
        """The model inputs for one batch, in the session's dtypes, and what they are."""
        feeds, described = self._feeds(graph, batch)
        dtypes = {info.name: info.dtype for info in session.inputs}
        feeds = {k: v if v.dtype == np.dtype(dtypes.get(k, v.dtype)) else v.astype(dtypes[k]) for k, v in feeds.items()}
        return feeds, described

    def feed_shapes(self, graph: str, batch: int) -> dict[str, tuple[int, ...]]:
        """The shapes of the inputs `feeds` gives for one batch: what the roofline counts the work at."""
        return {name: array.shape for name, array in self._feeds(graph, batch)[0].items()}

    def _feeds(self, graph: str, batch: int) -> tuple[dict[str, np.ndarray], str]:
        stored = self.stored.get(graph, {}).get("input")
        if not stored:
            raise VlmedgeError(f"the artifact stores no parity inputs for graph '{graph}'")
        n = len(next(iter(stored.values())))
        if self.settings.inputs == "random":
            rng = np.random.default_rng(0)
            feeds = {}
            for name, array in stored.items():
                shape = (batch, *array.shape[1:])
                if array.dtype.kind == "f":
                    feeds[name] = rng.standard_normal(shape).astype(array.dtype)
                elif set(np.unique(array).tolist()) <= {0, 1}:
                    feeds[name] = np.ones(shape, array.dtype)  # masks
                else:
                    feeds[name] = rng.integers(array.min(), array.max() + 1, size=shape).astype(array.dtype)
            described = f"seeded random inputs, batch {batch}"
        else:
            real = 0 < len(self.samples.get(self.method(graph).input, [])) <= n
            feeds = {name: np.ascontiguousarray(np.repeat(array[:1], batch, axis=0)) for name, array in stored.items()}
            described = f"the first {'real sample' if real else 'stored parity input'} repeated to {batch}"
        declared = self.artifact.manifest["graphs"][graph]
        inputs, outputs = ([TensorInfo.from_dict(t) for t in declared.get(kind, [])] for kind in ("inputs", "outputs"))
        if takes_trimmed_padding(inputs, outputs):  # as the runtime runs it: at the longest caption of the batch
            feeds = trim_padding(feeds)
            described += f", {feeds['input_ids'].shape[1]} tokens"
        return feeds, described
