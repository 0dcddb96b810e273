"""Image classification: images -> preprocessing -> logits -> ranked labels."""

from __future__ import annotations

import os
from typing import Any, NamedTuple

import numpy as np
from PIL import Image

from vlmedge.errors import ArtifactError, InputError
from vlmedge.preprocess.image import ImagePreprocessSpec, load_image, preprocess_images
from vlmedge.tasks.base import ModelSessions, as_list, chunks, sigmoid, softmax

IMAGE_TYPES = (str, bytes, os.PathLike, Image.Image)


class Prediction(NamedTuple):
    label: str
    index: int
    score: float


class ImageClassifier:
    """Classifies images with an image-classification artifact."""

    task = "image-classification"

    def __init__(self, model: ModelSessions) -> None:
        self.model = model
        manifest = model.artifact.manifest
        self.spec = ImagePreprocessSpec.from_dict(manifest["preprocess"]["image"])
        self.labels: list[str] = manifest.get("labels") or []
        self.activation = (manifest.get("postprocess") or {}).get("activation") or "softmax"
        if self.activation not in ("softmax", "sigmoid"):
            raise ArtifactError(f"Artifact {model.artifact.root} asks for the activation {self.activation!r}; "
                                "this vlmedge knows softmax and sigmoid. Re-export it or upgrade vlmedge.")
        (self._graph, self._session), = model.sessions.items()
        self._input = self._session.inputs[0].name
        self._output = manifest["graphs"][self._graph]["outputs"][0]["name"]
        width = next((o.shape[-1] for o in self._session.outputs if o.name == self._output and o.shape), None)
        if not self.labels or (isinstance(width, int) and width >= 0 and width != len(self.labels)):
            raise ArtifactError(f"Artifact {model.artifact.root} has {len(self.labels)} labels but its model "
                                f"scores {width} classes; re-export the artifact.")

    def logits(self, images: Any) -> np.ndarray:
        """Raw model outputs, (N, num_labels) float32."""
        items, _ = as_list(images, IMAGE_TYPES)
        outputs = []
        for batch in chunks(items):
            pixels = preprocess_images([load_image(i) for i in batch], self.spec)
            outputs.append(self._session.run({self._input: pixels})[self._output])
        return np.concatenate(outputs).astype(np.float32, copy=False)

    def probabilities(self, images: Any) -> np.ndarray:
        """Softmax (or sigmoid, for multi-label models) of the logits."""
        logits = self.logits(images)
        return sigmoid(logits) if self.activation == "sigmoid" else softmax(logits)

    def classify(self, images: Any, top_k: int = 5) -> list[Prediction] | list[list[Prediction]]:
        """Ranked (label, index, score) per image; one list for one image, a list of lists for a list."""
        if not isinstance(top_k, int) or top_k < 1:
            raise InputError(f"top_k must be a positive integer, not {top_k!r}.")
        _, single = as_list(images, IMAGE_TYPES)
        probs = self.probabilities(images)
        if probs.ndim != 2 or probs.shape[1] != len(self.labels):
            raise ArtifactError(f"The model scored {list(probs.shape)} classes for {len(self.labels)} labels; "
                                "its artifact is inconsistent, re-export it.")
        k = min(top_k, probs.shape[1])
        results = []
        for row in probs:
            order = np.argsort(-row, kind="stable")[:k]
            results.append([Prediction(self.labels[i], int(i), float(row[i])) for i in order])
        return results[0] if single else results
