"""Hugging Face audio classifiers: the Audio Spectrogram Transformer (AST), Whisper's audio
classifier, Wav2Vec2-BERT and the raw-waveform sequence classifiers (Wav2Vec2, HuBERT, WavLM, ...), with their
feature extractors turned into an AudioPreprocessSpec the runtime reproduces in numpy."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from vlmedge.errors import ArtifactError, ExportError, UnsupportedModelError
from vlmedge.exporters.samples import audio_parity_feeds
from vlmedge.exporters.sources.hf.folder import load_model, read_json, source_info
from vlmedge.exporters.sources.hf.heads import label_names, pipeline_activation
from vlmedge.exporters.spec import ExportSpec, GraphSpec
from vlmedge.preprocess.audio import AudioPreprocessSpec, fbank
from vlmedge.preprocess.audio.spec import VARIABLE_LENGTH

# The front end each architecture's feature extractor must make; the others take raw waveforms.
FRONT_END = {"ASTForAudioClassification": "kaldi-fbank", "WhisperForAudioClassification": "whisper-log-mel",
             "Wav2Vec2BertForSequenceClassification": "seamless-fbank"}
# The model's own keyword for its input; the graph's input is input_values for every front end, so
# calibration and evaluation sets feed every audio artifact alike.
MODEL_INPUT = {"whisper-log-mel": "input_features", "seamless-fbank": "input_features"}
# Example lengths for tracing raw-waveform models: the ONNX graph takes any length (dynamic axis).
EXAMPLE_SECONDS = 1.0


class AudioLogitsOnly(torch.nn.Module):
    """An audio classifier as a graph with one tensor in (input_values) and one out (logits);
    ``model_input`` names the model's own keyword for it (Whisper: input_features)."""

    def __init__(self, model: torch.nn.Module, model_input: str = "input_values") -> None:
        super().__init__()
        self.model = model
        self.model_input = model_input

    def forward(self, input_values: torch.Tensor) -> torch.Tensor:
        return self.model(**{self.model_input: input_values}).logits


def shortest_input(config: Any) -> int:
    """Samples a raw-waveform model needs at least: its convolutional feature encoder's
    receptive field for one frame, or for `squeeze_factor` frames where the encoder pools
    frames by that factor (SEW, SEW-D: fewer fail in its pooling)."""
    field, stride = 1, 1
    for kernel, step in zip(getattr(config, "conv_kernel", ()), getattr(config, "conv_stride", ())):
        field += (kernel - 1) * stride
        stride *= step
    frames = getattr(config, "squeeze_factor", None) or 1
    return field + (frames - 1) * stride


def audio_preprocess(folder: Path, config: Any, arch: str = "ASTForAudioClassification",
                     window_seconds: float | None = None) -> AudioPreprocessSpec:
    """The feature extractor's spec, checked against the model's own input size."""
    if window_seconds is not None and (isinstance(window_seconds, bool) or not isinstance(window_seconds, (int, float))
                                       or not 0.1 <= window_seconds <= 600):
        raise ExportError(f"window_seconds must be a number of seconds from 0.1 to 600, not {window_seconds!r}.")
    if window_seconds is not None and FRONT_END.get(arch, "waveform") not in VARIABLE_LENGTH:
        raise ExportError(f"window_seconds applies to raw-waveform and Wav2Vec2-BERT models only; {arch}'s window "
                          "follows its feature extractor.")
    config_path = folder / "preprocessor_config.json"
    if not config_path.is_file():
        raise UnsupportedModelError(
            f"{folder} has no preprocessor_config.json; save the model's feature extractor beside it "
            "(feature_extractor.save_pretrained(folder)) so vlmedge can reproduce its preprocessing."
        )
    try:
        spec = AudioPreprocessSpec.from_hf(read_json(config_path), window_seconds, shortest_input(config))
    except ArtifactError as exc:  # the spec's own words end in advice for an artifact, which this is not yet
        raise UnsupportedModelError(f"{config_path} describes features vlmedge cannot make "
                                    f"({str(exc).split(';')[0]}); fix the feature extractor and save it again.") from None
    wanted = FRONT_END.get(arch, "waveform")
    if spec.front_end != wanted:
        raise UnsupportedModelError(f"{folder}: {arch} takes {wanted} input, but the saved feature extractor makes "
                                    f"{spec.front_end}; save the extractor that matches the model.")
    if wanted == "kaldi-fbank":
        expected = (getattr(config, "max_length", spec.max_length), getattr(config, "num_mel_bins", spec.num_mel_bins))
        made = (spec.max_length, spec.num_mel_bins)
    elif wanted == "whisper-log-mel":
        expected = (config.num_mel_bins, 2 * config.max_source_positions)  # the encoder's stride-2 conv
        made = (spec.num_mel_bins, spec.max_length)
    elif wanted == "seamless-fbank":
        expected, made = (config.feature_projection_input_dim,), spec.feature_shape[1:]
    else:
        return spec
    if made != expected:
        raise UnsupportedModelError(
            f"{folder}: the feature extractor makes {made[0]} x {made[1]} features, but the model takes "
            f"{expected[0]} x {expected[1]}; save the extractor that matches the model."
        )
    return spec


def audio_classifier(folder: Path, config: Any, arch: str, reference: str, window_seconds: float | None = None,
                     **_: Any) -> ExportSpec:
    """An audio classifier: model input of one window (AST: (N, max_length, num_mel_bins) log-mel;
    Whisper: (N, num_mel_bins, 3000) log-mel; raw-waveform models: (N, samples), any length;
    Wav2Vec2-BERT: (N, frames / 2, 2 * num_mel_bins) stacked fbank, any length) -> logits.

    ``window_seconds`` sets a raw-waveform or Wav2Vec2-BERT model's window (default 10 s); AST and Whisper windows
    follow their feature extractors. Scores as transformers' audio pipeline makes them: multi-label
    models (problem_type "multi_label_classification", as AudioSet taggers are) get a sigmoid,
    regression models their raw outputs, the others a softmax.
    """
    labels = label_names(config, folder)
    preprocess = audio_preprocess(folder, config, arch, window_seconds)
    model = load_model(folder, arch)
    features, sample_files = audio_parity_feeds(preprocess)
    input_name = "input_values"
    dynamic = {0: "batch"}
    shape = preprocess.feature_shape
    if preprocess.variable_length:
        samples = max(preprocess.min_samples, round(EXAMPLE_SECONDS * preprocess.sampling_rate))
        example = fbank(np.zeros(samples, np.float32), preprocess)
        dynamic, shape = {0: "batch", 1: "samples" if preprocess.front_end == "waveform" else "frames"}, example.shape
    graph = GraphSpec(
        name="model",
        module=AudioLogitsOnly(model, MODEL_INPUT.get(preprocess.front_end, input_name)),
        input_names=[input_name],
        output_names=["logits"],
        example_inputs={input_name: torch.randn(2, *shape)},
        dynamic_axes={input_name: dynamic, "logits": {0: "batch"}},
        compare={"logits": "logits"},
    )
    return ExportSpec(
        task="audio-classification",
        graphs=[graph],
        preprocess={"audio": preprocess.to_dict()},
        labels=labels,
        # unlike the image pipeline, transformers' audio pipeline softmaxes a single logit
        postprocess={"activation": pipeline_activation(config, one_logit_sigmoid=False)},
        source=source_info(reference, folder, arch, config),
        parity_feeds={"model": {input_name: features}},
        extra_files=sample_files,
    )
