"""vlmedge.preprocess.audio: decoding, resampling and the front ends (AST fbank, Whisper log-mel,
Wav2Vec2 waveform, Wav2Vec2-BERT stacked fbank).

Golden tests compare against transformers' AST, Whisper, Wav2Vec2 and SeamlessM4T feature
extractors (skipped when transformers is absent); everything else needs only numpy and soundfile.
"""

from __future__ import annotations

import functools
import json
import math
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from hypothesis import given, settings
from hypothesis import strategies as st

from vlmedge.errors import ArtifactError, InputError, UnsupportedModelError
from vlmedge.preprocess import audio as A
from vlmedge.preprocess.audio import io as audio_io
from vlmedge.preprocess.audio.features import check_clip_length
from vlmedge.preprocess.audio import (
    AudioPreprocessSpec,
    fbank,
    load_audio,
    preprocess_audio,
    resample,
    split_windows,
)

SR = 16000
# Golden gate: the brief allows 1e-3; the implementation follows the extractor's exact order of
# operations (measured 0.0), so anything above float32 noise means the algorithm drifted.
GOLDEN_ATOL = 1e-5
CONFIGS = {
    "default": {},
    "small": {"num_mel_bins": 32, "max_length": 100},
    "unnormalized": {"num_mel_bins": 64, "max_length": 300, "do_normalize": False},
}


def _t(seconds: float, sr: int = SR) -> np.ndarray:
    return np.arange(int(round(seconds * sr))) / sr


def _speech_like(seconds: float = 2.0) -> np.ndarray:
    """Harmonics of a gliding ~120 Hz voice, shaped by three formants and a 4 Hz syllable envelope."""
    t = _t(seconds)
    phase = 2 * np.pi * np.cumsum(120 + 15 * np.sin(2 * np.pi * 3 * t)) / SR
    wave = np.zeros_like(t)
    for k in range(1, 40):
        f = 120.0 * k
        gain = sum(np.exp(-(((f - fc) / bw) ** 2)) for fc, bw in ((500, 150), (1500, 200), (2500, 300)))
        wave += gain * np.sin(k * phase) / k
    envelope = np.clip(np.sin(2 * np.pi * 4 * t), 0, None) ** 2
    return (0.3 * wave * envelope).astype(np.float32)


def _signals() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1234)
    t = _t(2.0)
    return {
        "speech": _speech_like(),
        "tonal": (0.2 * sum(np.sin(2 * np.pi * f * t) for f in (440, 1000, 3000))).astype(np.float32),
        "noise": (0.1 * rng.standard_normal(t.size)).astype(np.float32),
        "silence": np.zeros(SR, dtype=np.float32),
        "clipped": np.clip(3 * np.sin(2 * np.pi * 200 * t), -1, 1).astype(np.float32),
        "short": (0.1 * rng.standard_normal(1600) + 0.3 * np.sin(2 * np.pi * 700 * _t(0.1))).astype(np.float32),
        # 11 s: longer than max_length frames for every config (default covers 10.255 s).
        "long": np.tile(_speech_like(), 6)[: 11 * SR] + (0.01 * rng.standard_normal(11 * SR)).astype(np.float32),
    }


SIGNALS = _signals()


@functools.lru_cache(maxsize=None)
def _extractor(config: str):
    transformers = pytest.importorskip("transformers")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return transformers.ASTFeatureExtractor(**CONFIGS[config])


def _reference(config: str, wave: np.ndarray) -> np.ndarray:
    return _extractor(config)(wave, sampling_rate=SR, return_tensors="np")["input_values"][0]


def _spec(config: str) -> AudioPreprocessSpec:
    return AudioPreprocessSpec.from_hf(_extractor(config).to_dict())


# --- golden comparisons -------------------------------------------------------------------


@pytest.mark.parametrize("config", list(CONFIGS))
@pytest.mark.parametrize("signal", list(SIGNALS))
def test_fbank_matches_ast_feature_extractor(config, signal):
    spec, wave = _spec(config), SIGNALS[signal]
    ref, out = _reference(config, wave), fbank(wave, spec)
    assert out.shape == ref.shape == (spec.max_length, spec.num_mel_bins)
    assert out.dtype == np.float32
    assert np.abs(out - ref).max() <= GOLDEN_ATOL


@pytest.mark.parametrize("sr, frame, shift, fft", [(8000, 200, 80, 256), (11025, 275, 110, 512), (44100, 1102, 441, 2048)])
def test_ast_features_at_another_rate_than_16_khz_are_kaldis_25_ms_frames_every_10_ms(sr, frame, shift, fft):
    """transformers' ASTFeatureExtractor computes Kaldi's fbank with torchaudio where it is
    installed: 25 ms frames every 10 ms (truncated to whole samples), a mel bank up to Nyquist.
    Without torchaudio it takes 400 samples every 160 at any rate, which vlmedge followed: at
    8 kHz a model fed torchaudio's features answered another top-1 (0.97 off). The reference is
    transformers' own spectrogram with torchaudio's framing (torchaudio does not install beside
    this torch; at 16 kHz both paths are test_fbank_matches_ast_feature_extractor's reference);
    against torchaudio 2.11's kaldi.fbank at 8 to 48 kHz vlmedge measured within 2.1e-5."""
    transformers = pytest.importorskip("transformers")
    from transformers.audio_utils import mel_filter_bank, spectrogram, window_function

    wave = (0.3 * np.random.default_rng(sr).standard_normal(int(sr * 1.3))).astype(np.float32)
    frames = 1 + (wave.size - frame) // shift
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        extractor = transformers.ASTFeatureExtractor(sampling_rate=sr, num_mel_bins=64, max_length=frames,
                                                     do_normalize=False)
    spec = AudioPreprocessSpec.from_hf(extractor.to_dict())
    assert (spec.frame_length, spec.frame_shift, spec.fft_length, spec.nyquist_cutoff) == (frame, shift, fft, sr / 2)
    mel = mel_filter_bank(num_frequency_bins=fft // 2 + 1, num_mel_filters=64, min_frequency=20, max_frequency=sr / 2,
                          sampling_rate=sr, norm=None, mel_scale="kaldi", triangularize_in_mel_space=True)
    reference = spectrogram(wave, window_function(frame, "hann", periodic=False), frame_length=frame, hop_length=shift,
                            fft_length=fft, power=2.0, center=False, preemphasis=0.97, mel_filters=mel, log_mel="log",
                            mel_floor=1.192092955078125e-07, remove_dc_offset=True).T
    assert reference.shape == (frames, 64)
    assert np.abs(fbank(wave, spec) - reference).max() <= GOLDEN_ATOL


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(min_value=400, max_value=4000),
    amplitude=st.floats(min_value=1e-6, max_value=4.0),
    seed=st.integers(min_value=0, max_value=2**16),
)
def test_fbank_matches_extractor_on_random_clips(n, amplitude, seed):
    wave = (amplitude * np.random.default_rng(seed).standard_normal(n)).astype(np.float32)
    assert np.abs(fbank(wave, _spec("small")) - _reference("small", wave)).max() <= GOLDEN_ATOL


# --- the other front ends: Whisper's log-mel and Wav2Vec2's normalised waveform ---------------

# The brief's gate for front ends computed in another order than the extractor (Whisper's runs
# torch.stft in float32; measured about 2.5e-5 on the tonal signals).
FRONT_END_ATOL = 1e-4
WHISPER_CONFIGS = {"whisper-80": {"feature_size": 80}, "whisper-128": {"feature_size": 128}}
WAVEFORM_CONFIGS = {
    "normalized": {},
    "attention-mask": {"return_attention_mask": True, "padding_value": 0.5},
    "raw": {"do_normalize": False},
}
# 35 s: longer than Whisper's 30 s window, so the extractor truncates.
LONG_35S = np.tile(SIGNALS["speech"], 18)[: 35 * SR]


def _hf_extractor(kind: str, config: str):
    transformers = pytest.importorskip("transformers")
    if kind == "whisper":
        return transformers.WhisperFeatureExtractor(**WHISPER_CONFIGS[config])
    return transformers.Wav2Vec2FeatureExtractor(**WAVEFORM_CONFIGS[config])


@pytest.mark.parametrize("config", list(WHISPER_CONFIGS))
@pytest.mark.parametrize("signal", [*SIGNALS, "long-35s"])
def test_whisper_log_mel_matches_whisper_feature_extractor(config, signal):
    wave = LONG_35S if signal == "long-35s" else SIGNALS[signal]
    extractor = _hf_extractor("whisper", config)
    spec = AudioPreprocessSpec.from_hf(extractor.to_dict())
    ref = extractor(wave, sampling_rate=SR, return_tensors="np")["input_features"][0]
    out = fbank(wave, spec)
    assert spec.front_end == "whisper-log-mel" and spec.window_seconds == 30.0
    assert out.shape == ref.shape == spec.feature_shape and out.dtype == np.float32
    assert np.abs(out - ref).max() <= FRONT_END_ATOL


@pytest.mark.parametrize("config", list(WAVEFORM_CONFIGS))
@pytest.mark.parametrize("signal", list(SIGNALS))
def test_waveform_matches_wav2vec2_feature_extractor(config, signal):
    wave = SIGNALS[signal]
    extractor = _hf_extractor("waveform", config)
    spec = AudioPreprocessSpec.from_hf(extractor.to_dict(), window_seconds=12.0)
    ref = extractor(wave, sampling_rate=SR, return_tensors="np")["input_values"][0]
    out = fbank(wave, spec)
    assert spec.front_end == "waveform" and spec.window_seconds == 12.0
    assert out.shape == ref.shape and out.dtype == np.float32
    assert np.abs(out - ref).max() <= FRONT_END_ATOL


SEAMLESS_CONFIGS = {"seamless-80": {}, "seamless-40-stride-3": {"feature_size": 40, "num_mel_bins": 40, "stride": 3}}


@pytest.mark.parametrize("config", list(SEAMLESS_CONFIGS))
@pytest.mark.parametrize("signal", list(SIGNALS))
def test_seamless_fbank_matches_seamless_m4t_feature_extractor(config, signal):
    transformers = pytest.importorskip("transformers")
    extractor = transformers.SeamlessM4TFeatureExtractor(**SEAMLESS_CONFIGS[config])
    spec = AudioPreprocessSpec.from_hf(extractor.to_dict(), window_seconds=12.0)
    ref = extractor(SIGNALS[signal], sampling_rate=SR, return_tensors="np")["input_features"][0]
    out = fbank(SIGNALS[signal], spec)
    assert spec.front_end == "seamless-fbank" and spec.variable_length
    assert out.shape == ref.shape and out.shape[1] == spec.feature_shape[1] and out.dtype == np.float32
    assert np.abs(out - ref).max() <= FRONT_END_ATOL


def test_waveform_window_is_cut_and_short_clips_padded_like_the_extractor():
    extractor = _hf_extractor("waveform", "attention-mask")
    spec = AudioPreprocessSpec.from_hf(extractor.to_dict(), min_samples=400)
    assert (spec.window_seconds, spec.hop_samples, spec.feature_shape) == (10.0, 5 * SR, (None,))
    wave = SIGNALS["long"]
    ref = extractor(wave[: 10 * SR], sampling_rate=SR, return_tensors="np")["input_values"][0]
    assert np.abs(fbank(wave, spec) - ref).max() <= FRONT_END_ATOL
    tiny = SIGNALS["short"][:250]
    ref = extractor(tiny, sampling_rate=SR, padding="max_length", max_length=400,
                    return_tensors="np")["input_values"][0]
    out = fbank(tiny, spec)
    assert out.shape == (400,) and np.all(out[250:] == np.float32(0.5))
    assert np.abs(out - ref).max() <= FRONT_END_ATOL


def test_front_end_specs_round_trip_and_old_ast_specs_still_load():
    old_ast = {k: v for k, v in AudioPreprocessSpec().to_dict().items()
               if k not in ("front_end", "padding_value", "min_samples", "stack_frames")}
    assert AudioPreprocessSpec.from_dict(old_ast) == AudioPreprocessSpec()
    assert AudioPreprocessSpec().front_end == "kaldi-fbank"
    for kind, config in (("whisper", "whisper-80"), ("waveform", "normalized")):
        spec = AudioPreprocessSpec.from_hf(_hf_extractor(kind, config).to_dict())
        assert AudioPreprocessSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
    with pytest.raises(ArtifactError, match="front_end"):
        AudioPreprocessSpec(front_end="mfcc")


def test_unreproduced_extractors_are_refused_by_name():
    with pytest.raises(UnsupportedModelError, match="SpeechT5FeatureExtractor"):
        AudioPreprocessSpec.from_hf({"feature_extractor_type": "SpeechT5FeatureExtractor"})
    with pytest.raises(UnsupportedModelError, match="dither"):
        AudioPreprocessSpec.from_hf({"feature_extractor_type": "WhisperFeatureExtractor", "dither": 1.0})


def test_whisper_windows_are_30_s_with_a_15_s_hop():
    spec = AudioPreprocessSpec.from_hf(_hf_extractor("whisper", "whisper-80").to_dict())
    windows = split_windows(np.zeros(70 * SR, np.float32), spec)
    assert [(w[0], w[1]) for w in windows] == [(0.0, 30.0), (15.0, 45.0), (30.0, 60.0), (40.0, 70.0)]


def test_float64_input_is_rounded_to_float32_like_the_extractor():
    wave = SIGNALS["speech"].astype(np.float64) + 1e-9
    assert np.abs(fbank(wave, _spec("small")) - _reference("small", wave)).max() <= GOLDEN_ATOL


def test_silence_hits_the_log_mel_floor():
    spec = AudioPreprocessSpec(max_length=50, num_mel_bins=16)
    out = fbank(np.zeros(SR // 10, dtype=np.float32), spec)
    floor = (np.float32(math.log(np.finfo(np.float32).eps)) - np.float32(spec.mean)) / np.float32(2 * spec.std)
    np.testing.assert_array_equal(out[:8], np.full((8, 16), floor, dtype=np.float32))  # 1600 samples -> 8 frames
    np.testing.assert_array_equal(out[8:], np.float32(-spec.mean / (2 * spec.std)))  # padding is 0 before normalizing


def test_clip_shorter_than_one_frame_is_refused_as_the_extractor_refuses_it():
    """Kaldi makes no frame of fewer than 400 samples; the AST extractor raises on most such
    clips (from 240 samples up it returns the features of silence instead). vlmedge refuses
    every one with an InputError naming the clip's length and the frame. One frame is enough;
    Whisper's log-mel pads every clip to 30 s, so it takes any length, as its extractor does."""
    spec = _spec("small")
    with pytest.raises(ValueError):
        _reference("small", SIGNALS["speech"][:32])
    for n in (1, 32, 399):
        wave = SIGNALS["speech"][:n]
        with pytest.raises(InputError, match=rf"lasts {n * 1000 / 16000:.3g} ms, shorter than one 25 ms frame"):
            fbank(wave, spec)
    one_frame = SIGNALS["speech"][:400]
    assert np.abs(fbank(one_frame, spec) - _reference("small", one_frame)).max() <= GOLDEN_ATOL
    # Wav2Vec2-BERT's Kaldi fbank too: its extractor raises or makes no frame, and vlmedge
    # answered padded silence
    import transformers

    seamless = transformers.SeamlessM4TFeatureExtractor()
    with pytest.raises(ValueError):
        seamless(SIGNALS["speech"][:50], sampling_rate=SR, return_tensors="np")
    assert seamless(SIGNALS["speech"][:399], sampling_rate=SR, return_tensors="np")["input_features"].shape[1] == 0
    with pytest.raises(InputError, match=r"lasts 24\.9 ms, shorter than one 25 ms frame"):
        check_clip_length(399, AudioPreprocessSpec.from_hf(seamless.to_dict()))
    whisper = _hf_extractor("whisper", "whisper-80")
    tiny = SIGNALS["speech"][:5]
    ref = whisper(tiny, sampling_rate=SR, return_tensors="np")["input_features"][0]
    assert np.abs(fbank(tiny, AudioPreprocessSpec.from_hf(whisper.to_dict())) - ref).max() <= FRONT_END_ATOL


def test_whisper_log_mel_at_8_khz_matches_whisper_feature_extractor():
    """An 8 kHz WhisperFeatureExtractor still draws its mel bank up to 8 kHz, above Nyquist (4 kHz):
    transformers warns and runs it with the filters above Nyquist all zero, and so does the spec."""
    transformers = pytest.importorskip("transformers")
    with pytest.warns(UserWarning, match="mel filter has all zero values"):
        extractor = transformers.WhisperFeatureExtractor(feature_size=80, sampling_rate=8000, hop_length=80, n_fft=200)
    spec = AudioPreprocessSpec.from_hf(extractor.to_dict())
    assert (spec.sampling_rate, spec.nyquist_cutoff, spec.window_seconds) == (8000, 8000.0, 30.0)
    for name in ("speech", "noise", "short"):  # read as 8 kHz samples
        ref = extractor(SIGNALS[name], sampling_rate=8000, return_tensors="np")["input_features"][0]
        assert np.abs(fbank(SIGNALS[name], spec) - ref).max() <= FRONT_END_ATOL, name


def test_preprocess_audio_batches_fbank():
    spec = _spec("small")
    clips = [SIGNALS["speech"], SIGNALS["short"], SIGNALS["long"]]
    batch = preprocess_audio(clips, spec)
    assert batch.shape == (3, 100, 32) and batch.dtype == np.float32
    for row, clip in zip(batch, clips):
        np.testing.assert_array_equal(row, fbank(clip, spec))
    assert preprocess_audio(SIGNALS["short"], spec).shape == (1, 100, 32)
    with pytest.raises(InputError):
        preprocess_audio([], spec)


@pytest.mark.parametrize(
    "bad",
    [np.zeros((2, 800), np.float32), np.zeros(800, np.int16), np.zeros(0, np.float32),
     np.array([0.0, np.nan] * 400), [0.0] * 800],
)
def test_fbank_rejects_bad_waveforms(bad):
    with pytest.raises(InputError):
        fbank(bad, AudioPreprocessSpec())


# --- spec ---------------------------------------------------------------------------------


def test_spec_defaults_and_window_seconds():
    spec = AudioPreprocessSpec()
    assert (spec.frame_length, spec.frame_shift, spec.fft_length) == (400, 160, 512)
    assert spec.window_seconds == pytest.approx(10.255)
    assert _spec("default").window_seconds == pytest.approx(10.255)


def test_spec_round_trips_through_json():
    spec = _spec("unnormalized")
    assert (spec.num_mel_bins, spec.max_length, spec.do_normalize) == (64, 300, False)
    again = AudioPreprocessSpec.from_dict(json.loads(json.dumps(spec.to_dict())))
    assert again == spec
    assert AudioPreprocessSpec.from_dict({}) == AudioPreprocessSpec()


def test_spec_from_hf_reads_a_preprocessor_config():
    cfg = {"feature_extractor_type": "ASTFeatureExtractor", "sampling_rate": 16000, "num_mel_bins": 128,
           "max_length": 1024, "mean": -4.27, "std": 4.57, "do_normalize": True, "padding_value": 0.0}
    spec = AudioPreprocessSpec.from_hf(cfg)
    assert (spec.mean, spec.std, spec.high_freq, spec.frame_length) == (-4.27, 4.57, 8000.0, 400)
    with pytest.raises(UnsupportedModelError):
        AudioPreprocessSpec.from_hf({"feature_extractor_type": "SpeechT5FeatureExtractor"})
    with pytest.raises(ArtifactError):
        AudioPreprocessSpec.from_hf("config.json")


@pytest.mark.parametrize(
    "bad",
    [[1, 2], {"num_mel_bins": "128"}, {"max_length": 0}, {"mean": float("nan")}, {"do_normalize": 1},
     {"window": "blackman"}, {"dither": 1.0}, {"std": 0.0}, {"low_freq": 9000.0}, {"colour": "red"},
     {"sampling_rate": 100}, {"sampling_rate": 10_000_000}],
)
def test_spec_from_dict_rejects_bad_specs(bad):
    with pytest.raises(ArtifactError):
        AudioPreprocessSpec.from_dict(bad)


def test_a_bad_mel_range_is_refused_naming_its_values():
    with pytest.raises(ArtifactError, match="not low_freq 20 Hz, high_freq 9000 Hz and Nyquist 8000 Hz"):
        AudioPreprocessSpec(high_freq=9000.0)


def test_spec_normalises_numpy_scalars_to_plain_python():
    spec = AudioPreprocessSpec(sampling_rate=np.int64(16000), mean=np.float32(-4.0))
    assert type(spec.sampling_rate) is int and type(spec.mean) is float
    json.dumps(spec.to_dict())


# --- load_audio: files, bytes, arrays ------------------------------------------------------


def _sine(freq: float, sr: int, seconds: float = 1.0, amp: float = 0.5) -> np.ndarray:
    return (amp * np.sin(2 * np.pi * freq * _t(seconds, sr))).astype(np.float32)


def _dominant_hz(wave: np.ndarray, sr: int) -> float:
    spectrum = np.abs(np.fft.rfft(wave * np.hanning(wave.size)))
    return float(np.fft.rfftfreq(wave.size, 1 / sr)[spectrum.argmax()])


def _rms(wave: np.ndarray) -> float:
    return float(np.sqrt(np.mean(wave.astype(np.float64) ** 2)))


@pytest.mark.parametrize(
    "fmt,subtype,atol",
    [("WAV", "PCM_16", 1 / 32768), ("WAV", "PCM_24", 1e-6), ("WAV", "FLOAT", 0.0), ("WAVEX", "PCM_16", 1 / 32768),
     ("FLAC", "PCM_16", 1 / 32768), ("OGG", "VORBIS", None)],
)
def test_load_audio_decodes_files_and_bytes(tmp_path, fmt, subtype, atol):
    wave = _sine(440, SR)
    path = tmp_path / f"clip.{fmt.lower()}"
    sf.write(path, wave, SR, format=fmt, subtype=subtype)
    if fmt == "WAVEX":  # make sure the header really is WAVE_FORMAT_EXTENSIBLE
        assert path.read_bytes()[20:22] == b"\xfe\xff"
    got, sr = load_audio(path)
    assert sr == SR and got.dtype == np.float32 and got.ndim == 1
    if atol is None:  # lossy: check what a listener would, pitch and loudness
        assert abs(_dominant_hz(got, SR) - 440) <= 2 and _rms(got) == pytest.approx(_rms(wave), rel=0.05)
    else:
        assert got.shape == wave.shape and np.abs(got - wave).max() <= atol
    from_bytes, sr2 = load_audio(path.read_bytes())
    assert sr2 == SR and np.array_equal(from_bytes, got)
    with open(path, "rb") as file:  # a binary file object, as soundfile takes one
        assert np.array_equal(load_audio(file)[0], got)
        with pytest.raises(InputError, match=r"^The audio file object of .* is empty \(nothing left to read\)"):
            load_audio(file)  # read to its end already
    assert np.array_equal(load_audio(str(path))[0], got)


@pytest.mark.parametrize("fmt,channels", [("WAV", 2), ("WAV", 6), ("FLAC", 2)])
def test_load_audio_downmixes_multichannel_files(tmp_path, fmt, channels):
    left = _sine(440, SR)
    data = np.stack([left * (c % 2) for c in range(channels)], axis=1)  # odd channels carry the tone
    path = tmp_path / f"multi.{fmt.lower()}"
    sf.write(path, data, SR, format=fmt, subtype="PCM_24")
    got, _ = load_audio(path)
    np.testing.assert_allclose(got, left * (channels // 2) / channels, atol=1e-6)


def test_load_audio_arrays_channels_on_the_smaller_axis():
    a, b = _sine(440, SR), _sine(880, SR, amp=0.25)
    expected = ((a.astype(np.float64) + b) / 2).astype(np.float32)
    for arr in (np.stack([a, b], axis=1), np.stack([a, b], axis=0)):
        got, sr = load_audio(arr, sample_rate=SR)
        assert sr == SR and np.allclose(got, expected, atol=1e-7)
    got, _ = load_audio(a.astype(np.float64), sample_rate=np.int64(SR))
    assert got.dtype == np.float32 and np.array_equal(got, a)


def test_an_array_of_more_than_two_channels_is_refused_as_a_likely_batch():
    """Three clips stacked as a (3, 16000) array were averaged into one clip of 3 channels (one
    answer for three clips); a 2-D array is one clip of at most 2 channels, a batch a list."""
    clips = np.stack([_sine(f, SR) for f in (220, 440, 880)])
    for array, axis in ((clips, 0), (clips.T, 1)):
        with pytest.raises(InputError, match=rf"shape \({array.shape[0]}, {array.shape[1]}\) reads as one clip of 3 channels, "
                                             rf"which would be averaged .* pass a list of 1-D clips \(list\(array\)\), or "
                                             rf"mix a multi-channel recording down yourself \(array\.mean\(axis={axis}\)\)"):
            load_audio(array, sample_rate=SR)


@pytest.mark.parametrize(
    "arr,expected",
    [(np.array([-32768, 0, 16384], np.int16), [-1.0, 0.0, 0.5]), (np.array([-2**31, 2**30], np.int32), [-1.0, 0.5]),
     (np.array([0, 128, 192], np.uint8), [-1.0, 0.0, 0.5]), (np.array([-128, 64], np.int8), [-1.0, 0.5])],
)
def test_load_audio_scales_integer_arrays_by_dtype_range(arr, expected):
    got, _ = load_audio(arr, sample_rate=SR)
    np.testing.assert_array_equal(got, np.array(expected, np.float32))


def test_integer_pcm_held_as_floats_is_said_and_a_loud_float_clip_is_not(tmp_path):
    pcm = (_sine(440, SR, amp=1.0) * 20000).astype(np.int16)
    with pytest.warns(UserWarning, match=r"reach (19999|20000)(\.\d+)?, far outside the \[-1, 1\].*divide it by its full scale") as seen:
        got, _ = load_audio(pcm.astype(np.float32), sample_rate=SR)
    assert seen[0].filename == __file__  # the user's own line, not vlmedge's
    np.testing.assert_array_equal(got, pcm.astype(np.float32))  # said, not changed
    sf.write(tmp_path / "loud.wav", (_sine(440, SR) * 1.5).astype(np.float32), SR, subtype="FLOAT")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_audio(pcm, sample_rate=SR)  # integers are scaled
        load_audio((_sine(440, SR) * 1.5).astype(np.float32), sample_rate=SR)  # mastered loud, clipped later
        load_audio(tmp_path / "loud.wav")


def _whole_file_at(path: Path, rate: int) -> np.ndarray:
    """What decoding a file whole, downmixing it in float64 and resampling it in one call gives."""
    frames, file_rate = sf.read(path, dtype="float32", always_2d=True)
    mono = frames.mean(axis=1, dtype=np.float64).astype(np.float32)
    return mono if file_rate == rate else np.asarray(audio_io.soxr.resample(mono, file_rate, rate, quality="HQ"))


# (format, subtype, rate, channels, frames): three blocks and a part; one block and one frame
# (libsndfile's Opus decoder gave another last sample when the last read was that one frame);
# MP3, whose decoder rounds some samples 1 ulp differently from one split of the reads to another.
BLOCK_READ_FILES = [("WAV", "PCM_16", 44100, 2, 216_269), ("FLAC", "PCM_24", 48000, 1, 216_269),
                    ("OGG", "VORBIS", 22050, 2, 216_269), ("FLAC", "PCM_16", SR, 2, 216_269),
                    ("WAV", "FLOAT", 8000, 1, 216_269), ("OGG", "OPUS", 48000, 2, 65_537),
                    ("MP3", "MPEG_LAYER_III", 44100, 1, 140_001)]


def _same_samples(got: np.ndarray, expected: np.ndarray, fmt: str) -> bool:
    ulp = 2e-7 if fmt == "MP3" else 0.0
    return got.dtype == np.float32 and got.shape == expected.shape and float(np.abs(got - expected).max()) <= ulp


@pytest.mark.parametrize("fmt,subtype,rate,channels,frames", BLOCK_READ_FILES)
@pytest.mark.parametrize("reserve", [audio_io.MAX_RESERVED_SAMPLES, 1000])
def test_a_file_decoded_a_block_at_a_time_gives_the_samples_of_the_whole_file(tmp_path, monkeypatch, fmt, subtype,
                                                                               rate, channels, frames, reserve):
    """Files are decoded, downmixed and resampled a block at a time (a long recording is never
    held whole at its own rate and channel count): the samples are those of the whole file,
    as bytes too, and where the room a header reserves runs out and grows."""
    monkeypatch.setattr(audio_io, "MAX_RESERVED_SAMPLES", reserve)
    noise = np.random.default_rng(rate + channels).uniform(-0.5, 0.5, (frames, channels))
    path = tmp_path / f"clip.{fmt.lower()}"
    sf.write(path, noise.astype(np.float32), rate, format=fmt, subtype=subtype)
    expected = _whole_file_at(path, SR)
    for source in (path, path.read_bytes()):
        wave, duration = A.load_audio_at(source, SR)
        assert _same_samples(wave, expected, fmt)
        assert duration == sf.info(path).frames / rate
        assert _same_samples(load_audio(source)[0], _whole_file_at(path, rate), fmt)
    cut = tmp_path / f"cut.{fmt.lower()}"  # a truncated file: what the decoder gives, or one sentence
    cut.write_bytes(path.read_bytes()[: path.stat().st_size * 6 // 10])
    try:
        expected = _whole_file_at(cut, SR)
    except sf.LibsndfileError:
        with pytest.raises(InputError, match=f"^Cannot decode audio file {cut} "):
            A.load_audio_at(cut, SR)
    else:
        assert _same_samples(A.load_audio_at(cut, SR)[0], expected, fmt)


LONG_FILE_UNDER_A_LIMIT = """
import re, resource, sys
from vlmedge.errors import InputError
from vlmedge.preprocess.audio import load_audio, load_audio_at
with open("/proc/self/status") as status:
    mapped = int(re.search(r"VmSize:\\s+(\\d+) kB", status.read()).group(1)) * 1024
resource.setrlimit(resource.RLIMIT_AS, (mapped + 160 * 2**20, resource.RLIM_INFINITY))
wave, duration = load_audio_at(sys.argv[1], 16000)
print(wave.size, duration)
del wave
try:
    load_audio(sys.argv[1])  # mono at its own 48 kHz: 230 MB, beyond the limit
except InputError as exc:
    print(exc)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_a_long_recording_is_held_only_as_mono_at_the_models_rate(tmp_path):
    """Twenty minutes of 48 kHz 4-channel audio: 920 MB as float32 frames, which decoding whole
    held (and a float64 downmix beside them), where its mono samples at 16 kHz are 77 MB; and
    a clip beyond the memory left is said to be, not called undecodable."""
    path = tmp_path / "long.flac"
    with sf.SoundFile(path, "w", 48000, 4, format="FLAC") as file:
        minute = np.zeros((48000 * 60, 4), dtype=np.float32)
        minute[::480] = 0.25  # not silence alone
        for _ in range(20):
            file.write(minute)
    child = subprocess.run([sys.executable, "-c", LONG_FILE_UNDER_A_LIMIT, str(path)], capture_output=True, text=True,
                           timeout=300)
    assert child.returncode == 0, child.stderr
    first, second = child.stdout.splitlines()
    assert first.split() == [str(16000 * 60 * 20), "1200.0"]
    assert second == (f"Cannot decode audio file {path}: this process ran out of memory; free memory or raise its "
                      "limit (ulimit -v), or cut the recording into shorter files.")


def _length_left_out(flac: bytes) -> bytes:
    """The FLAC with its STREAMINFO's total_samples 0, as an encoder writing to a pipe (ffmpeg's
    `-f flac -`) leaves it, unable to seek back and write the length once known."""
    data = bytearray(flac)
    at = 4 + 4 + 10  # "fLaC", the metadata block's header, the block and frame sizes
    fields = int.from_bytes(data[at:at + 8], "big")  # rate, channels, bits, then 36 bits of total_samples
    data[at:at + 8] = (fields & ~((1 << 36) - 1)).to_bytes(8, "big")
    return bytes(data)


def test_a_flac_whose_header_leaves_its_length_out_is_read_to_its_end(tmp_path):
    """libsndfile counts such a file 2**63 - 1 frames and cannot seek to where the last read
    ended (it was refused: "Internal psf_fseek() failed"): it is read to its end, giving the
    samples of the same file with its length; serve's duration limit decodes it to learn
    its length, stopping once past the limit."""
    frames, rate = 216_269, 44100
    noise = np.random.default_rng(7).uniform(-0.5, 0.5, (frames, 2)).astype(np.float32)
    full = tmp_path / "full.flac"
    sf.write(full, noise, rate, format="FLAC")
    piped = tmp_path / "piped.flac"
    piped.write_bytes(_length_left_out(full.read_bytes()))
    assert sf.info(piped).frames == audio_io.UNKNOWN_LENGTH
    for source in (piped, piped.read_bytes()):
        wave, duration = A.load_audio_at(source, SR)
        assert np.array_equal(wave, A.load_audio_at(full, SR)[0]) and duration == frames / rate
        assert np.array_equal(load_audio(source)[0], load_audio(full)[0])
    assert audio_io.audio_seconds(piped.read_bytes(), most=60) == (frames / rate, True)
    assert audio_io.audio_seconds(full.read_bytes(), most=1) == (frames / rate, True)  # from the header
    seconds, whole = audio_io.audio_seconds(piped.read_bytes(), most=1)
    assert 1 < seconds < frames / rate and not whole
    pytest.importorskip("starlette")
    from vlmedge.serve.config import Limits
    from vlmedge.serve.inputs import check_audio
    from vlmedge.serve.problems import Problem

    assert check_audio(piped.read_bytes(), 0, Limits(max_audio_seconds=60)) == frames / rate
    with pytest.raises(Problem, match=r"^audio\[0\] lasts over 1\.5 s; the limit is 1 s\.") as refused:
        check_audio(piped.read_bytes(), 0, Limits(max_audio_seconds=1))
    assert (refused.value.status, refused.value.code) == (413, "audio_too_long")


@pytest.mark.parametrize("sr", [44100, 8000, 192000])
def test_resample_to_16k_keeps_pitch_and_energy(sr):
    wave = _sine(440, sr)
    out = resample(wave, sr, SR)
    assert out.dtype == np.float32 and abs(out.size - SR) <= 1
    assert abs(_dominant_hz(out, SR) - 440) <= 1.0
    assert _rms(out[800:-800]) == pytest.approx(0.5 / math.sqrt(2), rel=0.01)  # ignore filter edges


def test_resample_same_rate_is_identity():
    wave = _sine(440, SR)
    assert np.array_equal(resample(wave, SR, SR), wave)


def _corrupt(tmp_path):
    path = tmp_path / "corrupt.wav"
    path.write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt " + bytes(range(40)))
    return path


def _empty_file(tmp_path):
    path = tmp_path / "empty.wav"
    path.write_bytes(b"")
    return path


@pytest.mark.parametrize(
    "make_input,sample_rate",
    [
        (lambda p: p / "missing.wav", None),
        (_empty_file, None),
        (_corrupt, None),
        (lambda p: _corrupt(p).read_bytes(), None),
        (lambda p: b"", None),
        (lambda p: p, None),  # a directory
        (lambda p: np.zeros(0, np.float32), SR),
        (lambda p: np.zeros((0, 2), np.float32), SR),
        (lambda p: np.array([0.0, np.nan, 0.1], np.float32), SR),
        (lambda p: np.array([0.0, np.inf], np.float64), SR),
        (lambda p: np.zeros(100, np.float32), 0),
        (lambda p: np.zeros(100, np.float32), -16000),
        (lambda p: np.zeros(100, np.float32), 10_000_000),
        (lambda p: np.zeros(100, np.float32), 16000.5),
        (lambda p: np.zeros(100, np.float32), True),
        (lambda p: np.zeros(100, np.int16), None),
        (lambda p: np.zeros(100, np.float32), None),
        (lambda p: np.zeros((10, 2, 2), np.float32), SR),
        (lambda p: np.array(["a", "b"]), SR),
        (lambda p: np.array([0.1, None], dtype=object), SR),
        (lambda p: np.zeros(10, np.complex64), SR),
        (lambda p: np.zeros(10, bool), SR),
        (lambda p: np.zeros((100, 100), np.float32), SR),  # a batch, not channels
        (lambda p: [0.0, 0.1], SR),
    ],
)
def test_load_audio_rejects_bad_input(tmp_path, make_input, sample_rate):
    with pytest.raises(InputError) as info:
        load_audio(make_input(tmp_path), sample_rate=sample_rate)
    message = str(info.value)
    assert "\n" not in message and message.endswith(".")


def test_load_audio_rejects_file_with_out_of_range_rate(tmp_path):
    """Below 1 kHz a file is refused with what to do about the file (it was told to pass its
    "real sample rate", which it had); 6 kHz and 5.5 kHz files are legal and read."""
    path = tmp_path / "low.wav"
    sf.write(path, np.zeros(100, np.float32), 500)
    with pytest.raises(InputError, match="low.wav, 500 Hz, is outside the 1000..192000 Hz vlmedge reads; resample the file"):
        load_audio(path)
    for rate in (6000, 5512):
        sf.write(path, _sine(440, rate), rate)
        wave, got = load_audio(path)
        assert got == rate and abs(_dominant_hz(resample(wave, rate, SR), SR) - 440) <= 1.0


# --- split_windows ------------------------------------------------------------------------


def test_split_windows_short_clip_is_one_window():
    spec = _spec("small")
    wave = SIGNALS["short"]
    [(start, end, seg)] = split_windows(wave, spec)
    assert (start, end) == (0.0, wave.size / SR) and np.array_equal(seg, wave)


def test_split_windows_long_clip_overlaps_and_reaches_the_end():
    spec = AudioPreprocessSpec(max_length=100)  # 1.015 s windows, 0.5 s (50-frame) default hop
    wave = np.arange(4 * SR, dtype=np.float32) / (4 * SR)
    windows = split_windows(wave, spec)
    starts = [w[0] for w in windows]
    assert starts == pytest.approx([0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 4.0 - spec.window_seconds])
    assert windows[-1][1] == pytest.approx(4.0)
    for start, end, seg in windows:
        assert seg.size == spec.window_samples and end - start == pytest.approx(spec.window_seconds)
        assert seg[0] == wave[round(start * SR)]
    assert fbank(windows[-1][2], spec).shape == (100, 128)
    hopped = split_windows(wave, spec, hop_seconds=0.25)
    assert [w[0] for w in hopped[:3]] == [0.0, 0.25, 0.5] and hopped[-1][1] == pytest.approx(4.0)


@pytest.mark.parametrize("hop", [0.0, -1.0, 2.0, "1", True, float("nan")])
def test_split_windows_rejects_bad_hops(hop):
    with pytest.raises(InputError):
        split_windows(np.zeros(4 * SR, np.float32), AudioPreprocessSpec(max_length=100), hop_seconds=hop)


def test_module_imports_without_torch_or_transformers():
    code = (
        "import sys; sys.modules.update(torch=None, transformers=None, torchaudio=None); "
        "import vlmedge.preprocess.audio as a; import numpy as np; "
        "print(a.fbank(np.zeros(800, np.float32), a.AudioPreprocessSpec(max_length=4)).shape)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(Path(A.__file__).parents[3])})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "(4, 128)"
