"""CLIP-style models (CLIP, SigLIP): image and text embeddings in one space, and
zero-shot classification of images against any set of labels.

    images   -> image preprocessing -> "image" graph -> projected embedding -> L2-normalised
    captions -> tokenizer.json      -> "text" graph  -> projected embedding -> L2-normalised
    zero-shot: probabilities = softmax(logit_scale * cos)               (CLIP)
                               sigmoid(logit_scale * cos + logit_bias)  (SigLIP)

Captions are tokenized to the context length; a text graph exported with a dynamic sequence
axis (towers pooled at EOS or CLS) runs each batch of at most batch_size captions without the
padding they all end with (runtimes.base.trim_padding), which gives the same embeddings.

BLIP-2 retrieval (``postprocess["image_reduction"] == "max"``) embeds an image as one vector
per Q-Former query token, (N, Q, D); a caption's cosine with the image is the largest over
its Q vectors, as the source's contrastive score is.

A ``Clip`` holds no mutable state: several threads may call one instance at once (ONNX
Runtime sessions are thread-safe and the tokenizer gives each call its own tokenizer).
"""

from __future__ import annotations

import string
from typing import Any, Mapping, Sequence, overload

import numpy as np

from vlmedge.errors import ArtifactError, InputError
from vlmedge.preprocess.image import IMAGE_TYPES
from vlmedge.preprocess.text import TextPreprocessSpec, TextTokenizer
from vlmedge.runtimes.select import ModelSessions
from vlmedge.tasks.base import (OneImage, Pipeline, Prediction, Several, as_list, check_distinct_labels, check_top_k,
                                chunks, image_spec_for, l2_normalize, rank, run_pixel_batches, sigmoid, softmax)

DEFAULT_TEMPLATES = ("a photo of a {}.",)
SCORINGS = ("softmax", "sigmoid")
IMAGE_REDUCTIONS = (None, "max")  # how an image's several vectors score against a caption (None: it has one)


def image_embedding_refusal(image_reduction: str | None) -> str | None:
    """Why the images of a model with this image_reduction cannot be served or written one
    embedding each (BLIP-2 retrieval), or None; what serve and bulk answer instead."""
    if image_reduction is None:
        return None
    return ("This model represents an image by several vectors (BLIP-2 retrieval), which no single embedding "
            "stands for; use zero-shot for images, or embed captions.")


def _label_fields(template: Any) -> int | None:
    """How many places for the label a template has, or None unless it is a str.format string
    whose fields are all plain '{}', '{0}' or '{label}': no format spec, conversion or
    attribute, which a request could use to make a huge caption ('{:>999999999}')."""
    if not isinstance(template, str):
        return None
    try:
        fields = [(name, spec, conversion) for _, name, spec, conversion in string.Formatter().parse(template)
                  if name is not None]
    except ValueError:  # an unmatched brace
        return None
    if any(name not in ("", "0", "label") or spec or conversion for name, spec, conversion in fields):
        return None
    names = [name for name, _, _ in fields]
    if names.count("") > 1 or {"", "0"} <= set(names):  # one label to fill: str.format would raise
        return None
    return len(fields)


def _fill(template: str, label: str) -> str:
    """str.format, as transformers' zero-shot pipeline fills its hypothesis_template ('{}',
    '{0}', '{{' for a brace), with '{label}' too."""
    return template.format(label, label=label)


class Clip(Pipeline):
    """Embeds images and captions and classifies images zero-shot with a "clip" artifact.

    ``decode_workers``: threads that decode and preprocess the images of a list call while
    the model runs (None: vlmedge.preprocess.parallel.DEFAULT_WORKERS; 1: serially).
    """

    task = "clip"
    decode_workers: int | None = None

    def __init__(self, model: ModelSessions) -> None:
        self.model = model
        artifact = model.artifact
        manifest = artifact.manifest
        where = f"Artifact {artifact.root}"
        preprocess = manifest["preprocess"]
        if not isinstance(preprocess.get("image"), dict) or not isinstance(preprocess.get("text"), dict):
            raise ArtifactError(f"{where} lacks image or text preprocessing; re-export it with this version of vlmedge.")
        if {"image", "text"} - set(model.sessions):
            raise ArtifactError(f"{where} needs an 'image' and a 'text' graph but has {sorted(model.sessions)}; re-export it.")
        self.image_spec = image_spec_for(manifest, model.sessions["image"], artifact.root)
        text_spec = TextPreprocessSpec.from_dict(preprocess["text"])
        self.tokenizer = TextTokenizer(artifact.path_of(text_spec.tokenizer_file), text_spec)

        post = manifest.get("postprocess") or {}
        self.scoring: str = post.get("scoring", "softmax")
        if self.scoring not in SCORINGS:
            raise ArtifactError(f"{where} has scoring {self.scoring!r}; this vlmedge knows {', '.join(SCORINGS)}.")
        scale, bias = post.get("logit_scale"), post.get("logit_bias")
        if not isinstance(scale, (int, float)) or not np.isfinite(scale) or scale <= 0:
            raise ArtifactError(f"{where} has no valid logit_scale in its postprocess section; re-export it.")
        if bias is not None and (not isinstance(bias, (int, float)) or not np.isfinite(bias)):
            raise ArtifactError(f"{where} has an invalid logit_bias {bias!r}; re-export it.")
        self.logit_scale = float(scale)
        self.logit_bias = float(bias) if bias is not None else (0.0 if self.scoring == "softmax" else None)
        if self.logit_bias is None:
            raise ArtifactError(f"{where} scores with a sigmoid but records no logit_bias; re-export it.")
        self.image_reduction: str | None = post.get("image_reduction")
        if self.image_reduction not in IMAGE_REDUCTIONS:
            raise ArtifactError(f"{where} has image_reduction {self.image_reduction!r}, which this vlmedge does not "
                                "know; upgrade vlmedge or re-export the artifact.")

        self._image = model.sessions["image"]
        self._text = model.sessions["text"]
        widths = [session.outputs[0].shape[-1] for session in (self._image, self._text)]
        if all(isinstance(w, int) for w in widths) and widths[0] != widths[1]:  # else every zero-shot call fails
            raise ArtifactError(f"{where} embeds images in {widths[0]} dimensions and text in {widths[1]}, which "
                                "cannot be compared; re-export it from a model whose towers embed alike.")
        self._image_input = self._image.inputs[0].name
        self._text_inputs = [i.name for i in self._text.inputs]
        graphs = manifest["graphs"]
        self._image_output = graphs["image"]["outputs"][0]["name"]
        self._text_output = graphs["text"]["outputs"][0]["name"]
        unknown = set(self._text_inputs) - {"input_ids", "attention_mask"}
        if unknown:
            raise ArtifactError(f"{where}: the text graph takes {sorted(unknown)}, which the tokenizer does not make.")

    @property
    def context_length(self) -> int:
        return self.tokenizer.spec.context_length

    # -- embeddings -------------------------------------------------------------------------

    def image_features(self, images: Any) -> np.ndarray:
        """The projected image embeddings as the model gives them, (N, D) float32, not normalised;
        (N, Q, D) for BLIP-2, one vector per query token."""
        items, _ = as_list(images, IMAGE_TYPES)
        return run_pixel_batches(items, self.image_spec, self.decode_workers, self.batch_size, self._image_features)

    def text_features(self, texts: str | Sequence[str]) -> np.ndarray:
        """The projected text embeddings as the model gives them, (N, D) float32, not normalised.

        Captions longer than the context are truncated (the EOS token is kept)."""
        batch, size = self._texts(texts), self.batch_size  # read once: another thread may set it meanwhile
        return np.concatenate([self._text_features(self.tokenizer.encode(part), size) for part in chunks(batch, size)])

    def embed_images(self, images: Any) -> np.ndarray:
        """L2-normalised image embeddings, (N, D) float32; one image gives N = 1.

        BLIP-2 (``image_reduction == "max"``) gives (N, Q, D): each query token's vector
        normalised; its score with a caption is the largest of their cosines, which no single
        vector reproduces. Images may be paths, bytes, PIL images or HWC uint8 arrays, or a
        list of them."""
        return l2_normalize(self.image_features(images))

    def embed_texts(self, texts: str | Sequence[str]) -> np.ndarray:
        """L2-normalised caption embeddings, (N, D) float32; one caption gives N = 1."""
        return l2_normalize(self.text_features(texts))

    # -- on prepared inputs (the bulk engines preprocess in one stage, run the model in the next)

    def embed_images_prepared(self, pixels: np.ndarray) -> np.ndarray:
        """`embed_images` for images already preprocessed: ``pixels`` is what
        ``preprocess_images(images, clip.image_spec)`` returns for them, (N, ...) float32."""
        return l2_normalize(self._image_features(pixels))

    def embed_texts_prepared(self, tokens: Mapping[str, np.ndarray]) -> np.ndarray:
        """`embed_texts` for captions already tokenized: ``tokens`` is what
        ``clip.tokenizer.encode(captions)`` returns for them (``input_ids`` and ``attention_mask``)."""
        missing = [name for name in self._text_inputs if name not in tokens]
        if missing:
            raise InputError(f"The tokenized captions lack {', '.join(missing)}; pass what tokenizer.encode returns.")
        if any(np.ndim(tokens[name]) != 2 or np.shape(tokens[name])[1] != self.context_length
               for name in self._text_inputs):
            raise InputError(f"The tokenized captions must be (N, {self.context_length}) arrays; pass what "
                             "tokenizer.encode returns.")
        self._check_token_ids(np.asarray(tokens.get("input_ids", [])), "pass what tokenizer.encode returns")
        return l2_normalize(self._text_features(tokens, self.batch_size))

    def check_graph_feeds(self, graph: str, feeds: dict[str, np.ndarray]) -> None:
        """The text graph's input_ids: at most context_length tokens each, inside the vocabulary."""
        ids = feeds.get("input_ids") if graph == "text" else None
        if ids is None:
            return
        if ids.ndim == 2 and ids.shape[1] > self.context_length:  # past the model's positions
            raise InputError(f"input_ids holds {ids.shape[1]} tokens per caption; this model takes at most "
                             f"{self.context_length}.")
        self._check_token_ids(ids, "tokenize with the artifact's tokenizer.json")

    def _check_token_ids(self, ids: np.ndarray, advice: str) -> None:
        """Every id inside the tokenizer's vocabulary: outside it the model's embedding gather
        fails on ONNX Runtime, and on OpenVINO reads past the table and answers garbage."""
        vocab = self.tokenizer.vocab_size
        if ids.size and (ids.min() < 0 or ids.max() >= vocab):
            raise InputError(f"The tokenized captions hold ids outside the tokenizer's 0..{vocab - 1}; {advice}.")

    def zero_shot_prepared(self, pixels: np.ndarray, labels: Sequence[str],
                           templates: Sequence[str] | None = None, top_k: int | None = None,
                           text_embeddings: np.ndarray | None = None) -> list[list[Prediction]]:
        """`zero_shot` for images already preprocessed (``pixels`` as for
        `embed_images_prepared`); always one ranked list per row."""
        top_k = check_top_k(top_k)
        labels = self.check_labels(labels)
        matrix = self._label_matrix(labels, templates, text_embeddings)
        probs = self._scores(self._logits(self.embed_images_prepared(pixels), matrix))
        return [rank(row, labels, top_k) for row in probs]

    def _image_features(self, pixels: np.ndarray) -> np.ndarray:
        parts = [self._image.run({self._image_input: part})[self._image_output]
                 for part in chunks(pixels, self.batch_size)]
        return np.concatenate(parts).astype(np.float32, copy=False)

    def _text_features(self, tokens: Mapping[str, np.ndarray], size: int) -> np.ndarray:
        """The text tower on tokenized captions, in model calls of at most `size` captions."""
        parts = []
        for rows in chunks(range(len(tokens[self._text_inputs[0]])), size):
            feeds = {name: np.asarray(tokens[name][rows.start:rows.stop]) for name in self._text_inputs}
            parts.append(self._text.run(feeds)[self._text_output])
        return np.concatenate(parts).astype(np.float32, copy=False)

    # -- zero-shot --------------------------------------------------------------------------

    def text_embeddings(self, labels: Sequence[str], templates: Sequence[str] = DEFAULT_TEMPLATES) -> np.ndarray:
        """One normalised embedding per label, (L, D) float32, to reuse across zero_shot calls.

        With several templates, the label's normalised caption embeddings are averaged and
        the mean renormalised (the CLIP paper's prompt ensembling)."""
        labels = self.check_labels(labels)
        templates = self.check_templates(templates)
        captions = [_fill(t, label) for label in labels for t in templates]
        embeddings = self.embed_texts(captions).astype(np.float64).reshape(len(labels), len(templates), -1)
        return l2_normalize(embeddings.mean(axis=1))

    def logits(self, images: Any, labels: Sequence[str], templates: Sequence[str] | None = None,
               text_embeddings: np.ndarray | None = None) -> np.ndarray:
        """logit_scale * cosine (+ logit_bias for SigLIP), (N images, L labels) float32."""
        labels = self.check_labels(labels)
        matrix = self._label_matrix(labels, templates, text_embeddings)
        return self._logits(self.embed_images(images), matrix)

    def probabilities(self, images: Any, labels: Sequence[str], templates: Sequence[str] | None = None,
                      text_embeddings: np.ndarray | None = None) -> np.ndarray:
        """Softmax over the labels (CLIP) or an independent sigmoid per label (SigLIP), (N, L)."""
        return self._scores(self.logits(images, labels, templates, text_embeddings))

    @overload
    def zero_shot(self, images: OneImage, labels: Sequence[str], templates: Sequence[str] | None = None,
                  top_k: int | None = None, text_embeddings: np.ndarray | None = None) -> list[Prediction]: ...
    @overload
    def zero_shot(self, images: Several, labels: Sequence[str], templates: Sequence[str] | None = None,
                  top_k: int | None = None, text_embeddings: np.ndarray | None = None) -> list[list[Prediction]]: ...

    def zero_shot(self, images: Any, labels: Sequence[str], templates: Sequence[str] | None = None,
                  top_k: int | None = None, text_embeddings: np.ndarray | None = None) -> list[Prediction] | list[list[Prediction]]:
        """Ranks candidate labels per image, best first, as transformers' zero-shot pipeline.

        Args:
            images: a path, the bytes of an image file, a PIL image or an HWC uint8 array, or a
                list of them.
            labels: the candidate labels (at least one, none twice).
            templates: prompts with one "{}" for the label, e.g. "a photo of a {}."; several
                are averaged (prompt ensembling); None: DEFAULT_TEMPLATES.
            top_k: the top_k best labels; None: every label.
            text_embeddings: ``clip.text_embeddings(labels, templates)``, to reuse the label
                embeddings across calls (then leave templates out).

        Returns:
            A list of Prediction(label, index, score) for one image, a list of such lists for a
            list; scores are a softmax over the labels (CLIP) or a sigmoid per label (SigLIP).

        Raises:
            InputError: an unreadable input, empty or repeated labels, a template without
                "{}", or templates given with text_embeddings.
            UsageError: a top_k that is not a positive integer or None.
        """
        top_k = check_top_k(top_k)
        labels = self.check_labels(labels)
        _, single = as_list(images, IMAGE_TYPES)
        probs = self.probabilities(images, labels, templates, text_embeddings)
        results = [rank(row, labels, top_k) for row in probs]
        return results[0] if single else results

    def _label_matrix(self, labels: list[str], templates: Sequence[str] | None, text_embeddings: Any) -> np.ndarray:
        """The checked (L, D) float64 label embeddings: the given ones, or computed from the
        templates (None: DEFAULT_TEMPLATES). Both at once is refused: the given embeddings
        already hold the templates they were computed with, and others would be ignored."""
        if text_embeddings is None:
            text_embeddings = self.text_embeddings(labels, templates)  # it checks them (None: the default)
        elif templates is not None:
            raise InputError("templates and text_embeddings were both given, but the templates only make the label "
                             "embeddings; pass them to text_embeddings(labels, templates) and leave templates out here.")
        return self._check_text_embeddings(text_embeddings, len(labels))

    def _logits(self, image_embeddings: np.ndarray, label_matrix: np.ndarray) -> np.ndarray:
        cosine = image_embeddings.astype(np.float64) @ label_matrix.T  # (N, L); (N, Q, L) with several vectors
        if self.image_reduction == "max":
            cosine = cosine.max(axis=1)
        return (self.logit_scale * cosine + self.logit_bias).astype(np.float32)

    def _scores(self, logits: np.ndarray) -> np.ndarray:
        logits = logits.astype(np.float64)
        probs = softmax(logits) if self.scoring == "softmax" else sigmoid(logits)
        return probs.astype(np.float32)

    # -- input checks -----------------------------------------------------------------------

    @staticmethod
    def _texts(texts: Any) -> list[str]:
        if texts is None:
            raise InputError("Got None instead of captions; pass a string or a list of strings.")
        if isinstance(texts, str):
            return [texts]
        if isinstance(texts, (bytes, bytearray)):
            raise InputError("Captions must be str, not bytes; decode them first, e.g. text.decode('utf-8').")
        if isinstance(texts, np.ndarray) and texts.ndim == 1 and texts.dtype.kind == "U":
            texts = texts.tolist()
        if not isinstance(texts, (list, tuple)):
            raise InputError(f"Captions must be a str or a list of str, not {type(texts).__name__}.")
        if not texts:
            raise InputError("The list of captions is empty; pass at least one caption (an empty string is fine).")
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise InputError(f"Caption {i} is a {type(t).__name__}, not a str; pass every caption as text.")
        return list(texts)

    @staticmethod
    def check_labels(labels: Any) -> list[str]:
        """The candidate labels of a zero-shot call as a list; raises InputError unless they
        are a non-empty list of distinct non-empty strings (a label given twice would split
        its score between the two). Needs no model, so a bulk job is checked before any
        worker starts."""
        if isinstance(labels, str):
            raise InputError(f"labels must be a list of strings, not one string ({labels[:40]!r}); "
                             "e.g. labels=['cat', 'dog'].")
        if isinstance(labels, np.ndarray) and labels.ndim == 1:  # a column of labels from numpy or pandas
            labels = labels.tolist()
        if labels is None or not isinstance(labels, (list, tuple)) or not labels:
            raise InputError("Zero-shot needs a non-empty list of candidate labels, e.g. labels=['cat', 'dog'].")
        for i, label in enumerate(labels):
            if not isinstance(label, str):
                raise InputError(f"Label {i} is {label!r}; every label must be a non-empty string.")
        check_distinct_labels(labels, "candidate", InputError)
        return list(labels)

    @staticmethod
    def check_templates(templates: Any) -> list[str]:
        """The prompt templates of a zero-shot call as a list (None: the default, 'a photo
        of a {}.'; one string: a list of it); raises InputError unless each has a '{}'."""
        if templates is None:
            return list(DEFAULT_TEMPLATES)
        if isinstance(templates, str):
            templates = [templates]
        if not isinstance(templates, (list, tuple)) or not templates:
            raise InputError("templates must be a non-empty list of strings such as 'a photo of a {}.'.")
        for t in templates:
            fields = _label_fields(t)
            if fields is None:
                raise InputError(f"Template {t!r} is not a template of one label: put '{{}}' (or '{{0}}', '{{label}}') "
                                 "where the label goes, with no format spec, and write a brace as '{{'.")
            if not fields:
                raise InputError(f"Template {t!r} has no '{{}}' where the label goes; e.g. 'a photo of a {{}}.'.")
        return list(templates)

    def _check_text_embeddings(self, matrix: Any, n_labels: int) -> np.ndarray:
        if not isinstance(matrix, np.ndarray) or matrix.ndim != 2:
            raise InputError("text_embeddings must be the (labels, D) array that text_embeddings() returns.")
        dim = self.model.artifact.manifest.get("postprocess", {}).get("embedding_dim")
        if matrix.shape[0] != n_labels or (isinstance(dim, int) and matrix.shape[1] != dim):
            raise InputError(
                f"text_embeddings has shape {list(matrix.shape)} but there are {n_labels} labels"
                + (f" and the model embeds in {dim} dimensions" if isinstance(dim, int) else "")
                + "; compute it with text_embeddings(labels, templates) for these labels."
            )
        if not np.isfinite(matrix).all():
            raise InputError("text_embeddings contains NaN or infinite values.")
        return l2_normalize(matrix).astype(np.float64)
