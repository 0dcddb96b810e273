"""Hugging Face audio classifiers: the Audio Spectrogram Transformer (AST), with its
ASTFeatureExtractor turned into an AudioPreprocessSpec the runtime reproduces in numpy."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from vlmedge.errors import UnsupportedModelError
from vlmedge.exporters.samples import audio_parity_feeds
from vlmedge.exporters.sources.hf import load_model, read_json, source_info
from vlmedge.exporters.spec import ExportSpec, GraphSpec
from vlmedge.preprocess.audio import AudioPreprocessSpec


class AudioLogitsOnly(torch.nn.Module):
    """An audio classifier as a graph with one tensor in (input_values) and one out (logits)."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_values: torch.Tensor) -> torch.Tensor:
        return self.model(input_values=input_values).logits


def audio_preprocess(folder: Path, config: Any) -> AudioPreprocessSpec:
    """The feature extractor's spec, checked against the model's own input size."""
    config_path = folder / "preprocessor_config.json"
    if not config_path.is_file():
        raise UnsupportedModelError(
            f"{folder} has no preprocessor_config.json; save the model's ASTFeatureExtractor beside it "
            "(feature_extractor.save_pretrained(folder)) so vlmedge can reproduce its preprocessing."
        )
    spec = AudioPreprocessSpec.from_hf(read_json(config_path))
    expected = (getattr(config, "max_length", spec.max_length), getattr(config, "num_mel_bins", spec.num_mel_bins))
    if (spec.max_length, spec.num_mel_bins) != expected:
        raise UnsupportedModelError(
            f"{folder}: the feature extractor makes {spec.max_length} frames x {spec.num_mel_bins} mel bins, "
            f"but the model takes {expected[0]} x {expected[1]}; save the extractor that matches the model."
        )
    return spec


def audio_classifier(folder: Path, config: Any, arch: str, reference: str, **_: Any) -> ExportSpec:
    """ASTForAudioClassification: (N, max_length, num_mel_bins) log-mel features -> logits.

    Multi-label models (problem_type "multi_label_classification", as AudioSet taggers are)
    get a sigmoid; single-label ones a softmax.
    """
    preprocess = audio_preprocess(folder, config)
    model = load_model(folder, arch)
    features, sample_files = audio_parity_feeds(preprocess)
    graph = GraphSpec(
        name="model",
        module=AudioLogitsOnly(model),
        input_names=["input_values"],
        output_names=["logits"],
        example_inputs={"input_values": torch.randn(2, preprocess.max_length, preprocess.num_mel_bins)},
        dynamic_axes={"input_values": {0: "batch"}, "logits": {0: "batch"}},
        compare={"logits": "logits"},
    )
    multi_label = getattr(config, "problem_type", None) == "multi_label_classification"
    return ExportSpec(
        task="audio-classification",
        graphs=[graph],
        preprocess={"audio": preprocess.to_dict()},
        labels=[str(config.id2label[i]) for i in range(config.num_labels)],
        postprocess={"activation": "sigmoid" if multi_label else "softmax"},
        source=source_info(reference, folder, arch, config),
        parity_feeds={"model": {"input_values": features}},
        extra_files=sample_files,
    )
