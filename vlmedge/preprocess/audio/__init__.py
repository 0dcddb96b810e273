"""Audio preprocessing: decode, resample, then one of the model families' front ends in numpy.

Front ends (``AudioPreprocessSpec.front_end``), each reproducing a transformers feature
extractor with numpy only, so the runtime needs neither torch nor transformers:

- ``kaldi-fbank``: ASTFeatureExtractor's Kaldi log-mel fbank (the default, so AST artifacts
  written before the field existed still load).
- ``waveform``: Wav2Vec2FeatureExtractor's raw samples, zero-mean unit-variance per clip
  (Wav2Vec2, HuBERT, WavLM, Data2VecAudio, UniSpeech(-Sat), SEW(-D), Wav2Vec2-Conformer).
- ``whisper-log-mel``: WhisperFeatureExtractor's 30 s log10-mel spectrogram.
- ``seamless-fbank``: SeamlessM4TFeatureExtractor's per-bin normalised, frame-stacked Kaldi
  fbank (Wav2Vec2-BERT).

Decoding uses soundfile; resampling uses soxr.
"""

from vlmedge.preprocess.audio.features import fbank, preprocess_audio, split_windows, window_count
from vlmedge.preprocess.audio.io import (
    AUDIO_SUFFIXES,
    MAX_ARRAY_CHANNELS,
    MAX_SAMPLE_RATE,
    MIN_SAMPLE_RATE,
    load_audio,
    load_audio_at,
    resample,
)
from vlmedge.preprocess.audio.spec import FRONT_ENDS, AudioPreprocessSpec

__all__ = [
    "AUDIO_SUFFIXES", "FRONT_ENDS", "MAX_ARRAY_CHANNELS", "MAX_SAMPLE_RATE", "MIN_SAMPLE_RATE", "AudioPreprocessSpec",
    "fbank", "load_audio", "load_audio_at", "preprocess_audio", "resample", "split_windows", "window_count",
]
