"""Image classification: images -> preprocessing -> logits -> ranked labels."""

from __future__ import annotations

from typing import Any, overload

import numpy as np

from vlmedge.errors import ArtifactError
from vlmedge.preprocess.image import IMAGE_TYPES
from vlmedge.runtimes.select import ModelSessions
from vlmedge.tasks.base import (ACTIVATIONS, OneImage, Pipeline, Prediction, Several, as_list, check_top_k, chunks,
                                image_spec_for, manifest_activation, rank, run_pixel_batches)


class ImageClassifier(Pipeline):
    """Classifies images with an image-classification artifact.

    ``decode_workers``: threads that decode and preprocess the images of a list call while
    the model runs (None: vlmedge.preprocess.parallel.DEFAULT_WORKERS; 1: serially).
    """

    task = "image-classification"
    decode_workers: int | None = None

    def __init__(self, model: ModelSessions) -> None:
        self.model = model
        manifest = model.artifact.manifest
        (self._graph, self._session), = model.sessions.items()
        self.spec = image_spec_for(manifest, self._session, model.artifact.root)
        self.labels: list[str] = manifest.get("labels") or []
        self.activation = manifest_activation(manifest, model.artifact.root)
        self._input = self._session.inputs[0].name
        self._output = manifest["graphs"][self._graph]["outputs"][0]["name"]
        width = next((o.shape[-1] for o in self._session.outputs if o.name == self._output and o.shape), None)
        if not self.labels or (isinstance(width, int) and width >= 0 and width != len(self.labels)):
            raise ArtifactError(f"Artifact {model.artifact.root} has {len(self.labels)} labels but its model "
                                f"scores {width} classes; re-export the artifact.")

    def logits(self, images: Any) -> np.ndarray:
        """Raw model outputs, (N, num_labels) float32."""
        items, _ = as_list(images, IMAGE_TYPES)
        return run_pixel_batches(items, self.spec, self.decode_workers, self.batch_size, self._pixel_logits)

    def probabilities(self, images: Any) -> np.ndarray:
        """The logits' scores: their softmax, their sigmoid (multi-label and one-label models) or,
        for regression models (activation "none"), the logits themselves."""
        return self._activate(self.logits(images))

    @overload
    def classify(self, images: OneImage, top_k: int | None = 5) -> list[Prediction]: ...
    @overload
    def classify(self, images: Several, top_k: int | None = 5) -> list[list[Prediction]]: ...

    def classify(self, images: Any, top_k: int | None = 5) -> list[Prediction] | list[list[Prediction]]:
        """Ranked labels per image, best first.

        Args:
            images: a path, the bytes of an image file, a PIL image or an HWC uint8 array, or a
                list of them (decoded and preprocessed by `decode_workers` threads).
            top_k: the top_k best labels; None: every label (where transformers' pipeline reads
                None as its default, 5).

        Returns:
            A list of Prediction(label, index, score) for one image, a list of such lists for a
            list. Scores are the model's activation: softmax, sigmoid (multi-label and
            one-label models) or the raw outputs of a regression model.

        Raises:
            InputError: an input that cannot be read or used (its position in a list named).
            UsageError: a top_k that is not a positive integer or None.
        """
        top_k = check_top_k(top_k)
        _, single = as_list(images, IMAGE_TYPES)
        results = self._ranked(self.probabilities(images), top_k)
        return results[0] if single else results

    def classify_prepared(self, pixels: np.ndarray, top_k: int | None = 5) -> list[list[Prediction]]:
        """`classify` for images already preprocessed: ``pixels`` is what
        ``preprocess_images(images, classifier.spec)`` returns for them, (N, ...) float32.
        Returns one ranked list per row, equal to what `classify` gives for those images.

        The bulk engines decode and preprocess in one stage (CPU tasks) and call this in the
        next (where the model is loaded)."""
        top_k = check_top_k(top_k)
        return self._ranked(self._activate(self._pixel_logits(pixels)), top_k)

    def _pixel_logits(self, pixels: np.ndarray) -> np.ndarray:
        outputs = [self._session.run({self._input: part})[self._output] for part in chunks(pixels, self.batch_size)]
        return np.concatenate(outputs).astype(np.float32, copy=False)

    def _activate(self, logits: np.ndarray) -> np.ndarray:
        return ACTIVATIONS[self.activation](logits)

    def _ranked(self, probs: np.ndarray, top_k: int | None) -> list[list[Prediction]]:
        if probs.ndim != 2 or probs.shape[1] != len(self.labels):
            raise ArtifactError(f"The model scored {list(probs.shape)} classes for {len(self.labels)} labels; "
                                "its artifact is inconsistent, re-export it.")
        return [rank(row, self.labels, top_k) for row in probs]
