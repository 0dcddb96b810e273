"""Coverage: every architecture of transformers' MODEL_FOR_AUDIO_CLASSIFICATION_MAPPING_NAMES,
built tiny with seeded weights and saved with its feature extractor, exports in-process with
parity against Hugging Face (feature extractor -> model -> softmax) on the bundled sample clips
and a generated tone, or is refused with a named UnsupportedModelError."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
sf = pytest.importorskip("soundfile")

from vlmedge.errors import UnsupportedModelError  # noqa: E402
from vlmedge.exporters.samples import sample_audio_files  # noqa: E402
from vlmedge.preprocess.audio import resample  # noqa: E402

SR = 16000
ATOL = 1e-4
NUM_LABELS = 7
# Raw-waveform models: a short window keeps the parity feeds small; long clips still window.
WINDOW_SECONDS = 2.0
# A tiny conv feature encoder: receptive field 10 + 3 * 5 + 3 * 20 = 85 samples, a frame every 80 (5 ms).
CONV = dict(conv_dim=(16, 16, 16), conv_kernel=(10, 4, 4), conv_stride=(5, 4, 4), num_feat_extract_layers=3)
ENCODER = dict(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
               num_conv_pos_embeddings=8, num_conv_pos_embedding_groups=2, classifier_proj_size=8,
               hidden_dropout=0.0, attention_dropout=0.0, activation_dropout=0.0, feat_proj_dropout=0.0,
               layerdrop=0.0, mask_time_prob=0.0)
# model_type -> (config class, config overrides, extractor kind); None: refused, with the reason expected.
MODELS = {
    "wav2vec2": ("Wav2Vec2Config", dict(feat_extract_norm="group"), "waveform"),
    "wav2vec2-conformer": ("Wav2Vec2ConformerConfig", dict(feat_extract_norm="layer", conv_depthwise_kernel_size=3,
                                                           position_embeddings_type="relative"), "waveform-mask"),
    "hubert": ("HubertConfig", dict(feat_extract_norm="layer", do_stable_layer_norm=True), "waveform-mask"),
    "wavlm": ("WavLMConfig", dict(num_buckets=16, max_bucket_distance=40), "waveform"),
    "data2vec-audio": ("Data2VecAudioConfig", dict(conv_pos_kernel_size=5, num_conv_pos_embeddings=2),
                       "waveform-mask"),
    "unispeech": ("UniSpeechConfig", dict(), "waveform"),
    "unispeech-sat": ("UniSpeechSatConfig", dict(feat_extract_norm="layer", do_stable_layer_norm=True),
                      "waveform-mask"),
    "sew": ("SEWConfig", dict(squeeze_factor=2), "waveform-unnormalized"),
    "sew-d": ("SEWDConfig", dict(squeeze_factor=2, position_buckets=16, max_position_embeddings=64,
                                 share_att_key=True, pos_att_type=("p2c", "c2p")), "waveform"),
    "audio-spectrogram-transformer": ("ASTConfig", None, "ast"),
    "whisper": ("WhisperConfig", None, "whisper"),
    "wav2vec2-bert": ("Wav2Vec2BertConfig", None, "seamless"),
}
REFUSED: dict[str, str] = {}  # model_type -> the refusal's reason (none today)
COUNTS = {"exported": 0, "refused": 0}
DIFFS: dict[str, float] = {}


def _mapping() -> dict[str, str]:
    from transformers.models.auto.modeling_auto import MODEL_FOR_AUDIO_CLASSIFICATION_MAPPING_NAMES

    return dict(MODEL_FOR_AUDIO_CLASSIFICATION_MAPPING_NAMES)


def tiny_model(model_type: str):
    """(model, feature extractor): a tiny seeded classifier of the real class."""
    arch = _mapping()[model_type]
    config_name, overrides, kind = MODELS[model_type]
    torch.manual_seed(0)
    labels = {i: f"{model_type}-tag{i}" for i in range(NUM_LABELS)}
    common = dict(num_labels=NUM_LABELS, id2label=labels, label2id={v: k for k, v in labels.items()},
                  initializer_range=0.2)
    if kind == "ast":
        config = transformers.ASTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                        intermediate_size=64, num_mel_bins=32, max_length=300, frequency_stride=10,
                                        time_stride=10, patch_size=16, **common)
        extractor = transformers.ASTFeatureExtractor(num_mel_bins=32, max_length=300)
    elif kind == "whisper":
        config = transformers.WhisperConfig(vocab_size=64, num_mel_bins=80, d_model=16, encoder_layers=1,
                                            encoder_attention_heads=2, decoder_layers=1, decoder_attention_heads=2,
                                            encoder_ffn_dim=32, decoder_ffn_dim=32, max_source_positions=1500,
                                            pad_token_id=0, bos_token_id=1, eos_token_id=2, decoder_start_token_id=1,
                                            classifier_proj_size=8, **common)
        extractor = transformers.WhisperFeatureExtractor(feature_size=80)
    elif kind == "seamless":
        config = transformers.Wav2Vec2BertConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                                 intermediate_size=32, feature_projection_input_dim=80,
                                                 conv_depthwise_kernel_size=3, classifier_proj_size=8, **common)
        extractor = transformers.SeamlessM4TFeatureExtractor(feature_size=40, num_mel_bins=40)
    else:
        config = getattr(transformers, config_name)(**{**CONV, **ENCODER, **overrides, **common})
        extractor = transformers.Wav2Vec2FeatureExtractor(do_normalize=kind != "waveform-unnormalized",
                                                          return_attention_mask=kind == "waveform-mask")
    model = getattr(transformers, arch)(config)
    with torch.no_grad():  # spread the logits so the top-5 order is not decided by float noise
        for name, param in model.named_parameters():
            if name.startswith(("classifier", "projector")):
                param.mul_(2.0)
    return model.eval(), extractor


def clips() -> dict[str, np.ndarray]:
    """The bundled sample clips (soundfile, mean over channels, soxr to 16 kHz) and a generated tone."""
    out = {}
    for path in sample_audio_files():
        data, rate = sf.read(str(path), dtype="float32", always_2d=True)
        out[path.name] = resample(data.mean(axis=1).astype(np.float32), rate, SR)
    t = np.arange(int(0.8 * SR)) / SR
    out["tone"] = (0.4 * np.sin(2 * np.pi * 330 * t) * np.hanning(t.size)).astype(np.float32)
    return out


def reference(model, extractor, waves) -> np.ndarray:
    """Hugging Face, one clip at a time as a user would: extractor -> model -> softmax."""
    probs = []
    for wave in waves:
        inputs = extractor(wave, sampling_rate=SR, return_tensors="pt")
        with torch.no_grad():
            probs.append(model(**inputs).logits.softmax(-1)[0].numpy())
    return np.stack(probs)


def export(model_type: str, tmp_path):
    from vlmedge.exporters.pipeline import export as export_model

    model, extractor = tiny_model(model_type)
    folder = tmp_path / "hf"
    model.save_pretrained(folder)
    extractor.save_pretrained(folder)
    options = {"window_seconds": WINDOW_SECONDS} if MODELS[model_type][2] not in ("ast", "whisper") else {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        artifact = export_model(str(folder), tmp_path / "artifact", to=("onnx", "openvino"), **options)  # both promised
    assert {e["target"] for e in artifact.model_entries() if e["parity"]["passed"]} == {"onnx", "openvino"}, model_type
    return model, extractor, artifact


@pytest.mark.parametrize("model_type", sorted(_mapping()))
def test_audio_classifier_exports_with_parity_or_is_refused(model_type, tmp_path):
    import vlmedge

    torch.set_num_threads(1)
    assert model_type in MODELS, f"{model_type} is new in transformers' audio-classification mapping; add it here."
    if model_type in REFUSED:
        with pytest.raises(UnsupportedModelError, match=REFUSED[model_type]):
            export(model_type, tmp_path)
        COUNTS["refused"] += 1
        return
    model, extractor, artifact = export(model_type, tmp_path)
    tagger = vlmedge.load(artifact.root if hasattr(artifact, "root") else artifact)
    waves = clips()
    expected = reference(model, extractor, list(waves.values()))
    got = tagger.probabilities(list(waves.values()), sample_rate=SR)
    diff = float(np.abs(got - expected).max())
    DIFFS[model_type] = diff
    assert diff < ATOL, f"{model_type}: max prob diff {diff:.2e}"
    for row_got, row_expected in zip(got, expected):
        top = list(np.argsort(-row_expected, kind="stable")[:5])
        assert np.all(np.abs(np.diff(row_expected[top])) > ATOL), "test model's top-5 is too close to call"
        assert list(np.argsort(-row_got, kind="stable")[:5]) == top
    result = tagger.tag(list(waves.values())[0], sample_rate=SR, top_k=5)
    assert [t.index for t in result.tags] == list(np.argsort(-expected[0], kind="stable")[:5])
    if MODELS[model_type][2].startswith("waveform"):  # the shortest clip the model takes, and a shorter one
        shortest = artifact.manifest["preprocess"]["audio"]["min_samples"]  # SEW and SEW-D pool frames: it was one frame
        clip = waves["tone"][int(0.3 * SR):][:shortest]
        np.testing.assert_allclose(tagger.probabilities(clip, sample_rate=SR)[0],
                                   reference(model, extractor, [clip])[0], atol=ATOL)
        assert np.isfinite(tagger.probabilities(clip[:shortest // 3], sample_rate=SR)).all()  # padded to it
    COUNTS["exported"] += 1


@pytest.mark.parametrize("model_type", ["wav2vec2", "whisper", "wav2vec2-bert"])
def test_long_clip_windows_match_hugging_face_per_window(model_type, tmp_path):
    """A clip longer than one window is scored per window, each window as Hugging Face scores it alone."""
    import vlmedge

    torch.set_num_threads(1)
    model, extractor, artifact = export(model_type, tmp_path)
    tagger = vlmedge.load(artifact.root if hasattr(artifact, "root") else artifact)
    window = tagger.window_seconds
    assert window == pytest.approx(30.0 if model_type == "whisper" else WINDOW_SECONDS)
    rng = np.random.default_rng(3)
    t = np.arange(int((window * 1.3) * SR)) / SR
    wave = (0.3 * np.sin(2 * np.pi * (200 + 40 * t) * t) + 0.05 * rng.standard_normal(t.size)).astype(np.float32)
    (spans, scores), = tagger.window_probabilities(wave, sample_rate=SR)
    assert len(spans) == 2 and spans[-1][1] == pytest.approx(t.size / SR)
    segments = [wave[round(start * SR):round(start * SR) + round(window * SR)] for start, _ in spans]
    expected = reference(model, extractor, segments)
    np.testing.assert_allclose(scores, expected, atol=ATOL)
    clip = tagger.tag(wave, sample_rate=SR, top_k=3)
    assert [t.index for t in clip.tags] == list(np.argsort(-expected.max(axis=0), kind="stable")[:3])
    assert len(clip.windows) == 2
    # `vlmedge check` makes the bundled clips' rows again, as the export made them, each front end
    from vlmedge.check import check_artifact

    for report in check_artifact(artifact.root if hasattr(artifact, "root") else artifact):  # onnx and openvino
        assert report["passed"] and report["sample_files"]["max_input_difference"] == 0.0
        assert len(report["sample_files"]["files"]) == 3


def test_int8_calibrates_and_evaluates_on_clips_of_different_lengths(tmp_path):
    """A raw-waveform model takes a clip shorter than its window at the clip's own length, so
    a calibration or --eval folder of real-world clips gives inputs of several lengths: they
    calibrate int8 and are evaluated each at its own length (here 0.6 s, 1.3 s and clips
    longer than the 2 s window), and the accuracy matches the source's on the same files.
    (The int8 gate is loosened: a tiny random model is not what int8 accuracy is judged on.)"""
    from vlmedge.exporters.pipeline import export as export_model
    from vlmedge.parity import Gate

    torch.set_num_threads(1)
    model, extractor = tiny_model("wav2vec2")
    model.save_pretrained(tmp_path / "hf")
    extractor.save_pretrained(tmp_path / "hf")
    rng = np.random.default_rng(5)
    labels = [model.config.id2label[i] for i in range(NUM_LABELS)]
    evaluation = tmp_path / "eval"
    for i, seconds in enumerate([0.6, 1.3, 2.5, 0.6, 3.1, 1.3]):
        t = np.arange(int(seconds * SR)) / SR
        wave = 0.3 * np.sin(2 * np.pi * (150 + 70 * i) * t) + 0.05 * rng.standard_normal(t.size)
        folder = evaluation / labels[i % 3]
        folder.mkdir(parents=True, exist_ok=True)
        sf.write(str(folder / f"clip{i}.wav"), wave.astype(np.float32), SR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        artifact = export_model(str(tmp_path / "hf"), tmp_path / "artifact", precision=["fp32", "int8"],
                                calibration=evaluation, evaluation=evaluation, window_seconds=WINDOW_SECONDS,
                                gates={"int8": Gate(min_cosine=0.5, max_abs=None, min_top1=0.0)})
    (entry,) = [f for f in artifact.manifest["files"] if f.get("precision") == "int8"]
    report = entry["parity"]
    assert report["passed"], report
    static = [a for a in report["quantization"]["attempts"] if a["method"] == "ort-static-qdq"]
    assert static and "error" not in static[0], static  # calibrated on the 6 clips, each at its length
    assert static[0]["calibration"] == {"samples": 6, "source": "user data"}
    # --eval scores each file by its first model window, as the model sees one input
    window = int(WINDOW_SECONDS * SR)
    waves = [sf.read(str(p), dtype="float32")[0][:window] for p in sorted(evaluation.rglob("*.wav"))]
    truth = [labels.index(p.parent.name) for p in sorted(evaluation.rglob("*.wav"))]
    source = reference(model, extractor, waves).argmax(axis=1)
    assert report["accuracy"]["source_top1"] == pytest.approx(float(np.mean(source == np.array(truth))))


def test_whisper_at_8_khz_exports_with_parity(tmp_path):
    """An 8 kHz WhisperFeatureExtractor draws its mel bank up to 8 kHz, above Nyquist; transformers
    warns and runs it (the filters above 4 kHz are zero), and the export matches it."""
    import vlmedge
    from vlmedge.exporters.pipeline import export as export_model

    torch.set_num_threads(1)
    model, _ = tiny_model("whisper")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        extractor = transformers.WhisperFeatureExtractor(feature_size=80, sampling_rate=8000, hop_length=80, n_fft=200)
        model.save_pretrained(tmp_path / "hf")
        extractor.save_pretrained(tmp_path / "hf")
        artifact = export_model(str(tmp_path / "hf"), tmp_path / "artifact")
    tagger = vlmedge.load(artifact.root if hasattr(artifact, "root") else artifact)
    assert tagger.spec.sampling_rate == 8000
    waves = [resample(wave, SR, 8000) for wave in clips().values()]
    expected = []
    for wave in waves:
        with torch.no_grad():
            logits = model(**extractor(wave, sampling_rate=8000, return_tensors="pt")).logits
        expected.append(logits.softmax(-1)[0].numpy())
    np.testing.assert_allclose(tagger.probabilities(waves, sample_rate=8000), np.stack(expected), atol=ATOL)


def test_window_seconds_is_checked(tmp_path):
    from vlmedge.errors import ExportError

    model, extractor = tiny_model("whisper")
    model.save_pretrained(tmp_path / "hf")
    extractor.save_pretrained(tmp_path / "hf")
    from vlmedge.exporters.pipeline import export as export_model

    with pytest.raises(ExportError, match="raw-waveform and Wav2Vec2-BERT models only"):
        export_model(str(tmp_path / "hf"), tmp_path / "out", window_seconds=5)
    with pytest.raises(ExportError, match="0.1 to 600"):
        export_model(str(tmp_path / "hf"), tmp_path / "out", window_seconds="5")


def test_zz_print_counts():
    """Prints the coverage counts (runs last in this file)."""
    print(f"\naudio classification coverage: {COUNTS['exported']} exported with parity, {COUNTS['refused']} refused; "
          f"max prob diff {DIFFS}")
    assert sum(COUNTS.values()) <= len(_mapping())
