"""AudioPreprocessSpec: every number the runtime needs to turn a waveform into model input."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np

from vlmedge.errors import ArtifactError, UnsupportedModelError
from vlmedge.preprocess import spec_from_dict
from vlmedge.preprocess.audio.io import MAX_SAMPLE_RATE, MIN_SAMPLE_RATE

# The model input each front end makes, per window: (frames, mels), (samples,), (mels, frames),
# (frames / stack_frames, mels * stack_frames).
FRONT_ENDS = ("kaldi-fbank", "waveform", "whisper-log-mel", "seamless-fbank")
# Front ends whose model input follows the clip's length; their max_length counts samples.
VARIABLE_LENGTH = ("waveform", "seamless-fbank")
WINDOWS = {
    # Symmetric windows, as Kaldi and the AST extractor use (Kaldi "hanning" == numpy hanning).
    "hann": np.hanning,
    "hamming": np.hamming,
    "povey": lambda n: np.hanning(n) ** 0.85,
    # Periodic Hann (torch.hann_window, transformers' window_function default), as Whisper uses.
    "hann-periodic": lambda n: np.hanning(n + 1)[:-1],
}
DEFAULT_WAVEFORM_WINDOW_SECONDS = 10.0


def _field_value(name: str, kind: str, value):
    """Checks one spec field against its annotated type and returns it as a plain Python value."""
    is_bool = isinstance(value, (bool, np.bool_))
    if kind == "int" and isinstance(value, (int, np.integer)) and not is_bool:
        return int(value)
    if kind == "float" and isinstance(value, (int, float, np.integer, np.floating)) and not is_bool:
        if math.isfinite(value):
            return float(value)
    if (kind == "bool" and isinstance(value, bool)) or (kind == "str" and isinstance(value, str)):
        return value
    raise ArtifactError(f"Audio spec field '{name}' is {value!r}, not a valid {kind}; re-export the artifact.")


@dataclass(frozen=True)
class AudioPreprocessSpec:
    """Everything needed to turn a waveform into model input features.

    ``front_end`` picks the feature extractor reproduced (see ``FRONT_ENDS``); it defaults to
    AST's Kaldi fbank, so artifacts written before the field existed load unchanged.

    - ``kaldi-fbank``: frame, window and filter-bank fields follow Kaldi's ``fbank`` options;
      their defaults are the ones ``ASTFeatureExtractor`` fixes. ``high_freq <= 0`` means an
      offset below Nyquist, as in Kaldi. ``max_length`` is frames per model window.
    - ``waveform``: ``max_length`` is samples per model window; ``do_normalize`` scales each
      window to zero mean and unit variance; clips shorter than ``min_samples`` (the shortest the
      model takes: its convolutional receptive field, for two frames or more where it pools
      frames) are padded with ``padding_value`` after normalising.
    - ``whisper-log-mel``: ``max_length`` frames of ``frame_shift_ms`` (3000 = 30 s), an FFT of
      one frame, a Slaney mel bank from ``low_freq`` to ``high_freq``, log10 floored at
      ``mel_floor``, clamped to 8 below the maximum and scaled as ``(x + 4) / 4``.
    - ``seamless-fbank`` (Wav2Vec2-BERT's SeamlessM4TFeatureExtractor): the Kaldi fbank of the
      window (``max_length`` samples) scaled to 16-bit range, each mel bin normalised over time
      when ``do_normalize``, then ``stack_frames`` frames stacked into one; clips shorter than
      ``min_samples`` (two frames) are zero-padded first.
    """

    sampling_rate: int = 16000
    num_mel_bins: int = 128
    max_length: int = 1024
    do_normalize: bool = True
    mean: float = -4.2677393
    std: float = 4.5689974
    frame_length_ms: float = 25.0
    frame_shift_ms: float = 10.0
    window: str = "hann"
    preemphasis: float = 0.97
    remove_dc_offset: bool = True
    low_freq: float = 20.0
    high_freq: float = 0.0
    dither: float = 0.0
    mel_floor: float = 1.192092955078125e-07  # float32 epsilon, as the extractor uses
    front_end: str = "kaldi-fbank"
    padding_value: float = 0.0
    min_samples: int = 1
    stack_frames: int = 1

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            # Stored as plain Python values, so to_dict() is always JSON-serialisable.
            object.__setattr__(self, f.name, _field_value(f.name, f.type, getattr(self, f.name)))
        checks = [
            (self.front_end in FRONT_ENDS, f"front_end must be one of {', '.join(FRONT_ENDS)}"),
            (MIN_SAMPLE_RATE <= self.sampling_rate <= MAX_SAMPLE_RATE,
             f"sampling_rate must be from {MIN_SAMPLE_RATE} to {MAX_SAMPLE_RATE} Hz, not {self.sampling_rate}"),
            (self.num_mel_bins >= 1 and self.max_length >= 1, "num_mel_bins and max_length must be at least 1"),
            (self.std > 0 and self.mel_floor > 0, "std and mel_floor must be positive"),
            (self.frame_length >= 2 and self.frame_shift >= 1, "frames must span 2 samples and shift by 1"),
            (self.window in WINDOWS, f"window must be one of {sorted(WINDOWS)}"),
            (0.0 <= self.preemphasis < 1.0, "preemphasis must be in [0, 1)"),
            # Whisper's extractor draws its mel bank up to 8 kHz whatever the rate: at 8 kHz the
            # filters above Nyquist are all zero, and transformers warns and runs it, as this does.
            (0.0 <= self.low_freq < self.nyquist_cutoff and (self.nyquist_cutoff <= self.nyquist
                                                             or self.front_end == "whisper-log-mel"),
             f"need 0 <= low_freq < high_freq <= Nyquist, not low_freq {self.low_freq:g} Hz, "
             f"high_freq {self.nyquist_cutoff:g} Hz and Nyquist {self.nyquist:g} Hz"),
            # Dither adds random noise; vlmedge promises the same features on every run.
            (self.dither == 0.0, "dither must be 0 so features are deterministic"),
            (1 <= self.min_samples <= self.window_samples, "min_samples must be from 1 to one window"),
            (self.stack_frames >= 1, "stack_frames must be at least 1"),
        ]
        for ok, why in checks:
            if not ok:
                raise ArtifactError(f"Invalid audio spec: {why}; fix the spec or re-export the artifact.")

    @property
    def frame_length(self) -> int:
        """Samples per analysis frame (400 at 16 kHz)."""
        return round(self.sampling_rate * self.frame_length_ms / 1000)

    @property
    def frame_shift(self) -> int:
        """Samples between frame starts (160 at 16 kHz)."""
        return round(self.sampling_rate * self.frame_shift_ms / 1000)

    @property
    def fft_length(self) -> int:
        """FFT size: Kaldi rounds the frame length up to a power of two; Whisper uses one frame."""
        if self.front_end == "whisper-log-mel":
            return self.frame_length
        return 1 << (self.frame_length - 1).bit_length()

    @property
    def nyquist(self) -> float:
        """Half the sampling rate in Hz: the highest frequency the FFT sees."""
        return self.sampling_rate / 2

    @property
    def nyquist_cutoff(self) -> float:
        """Upper edge of the mel filter bank in Hz."""
        return self.high_freq if self.high_freq > 0 else self.nyquist + self.high_freq

    @property
    def window_samples(self) -> int:
        """Samples of audio one model window covers."""
        if self.front_end in VARIABLE_LENGTH:
            return self.max_length
        if self.front_end == "whisper-log-mel":
            return self.max_length * self.frame_shift
        return (self.max_length - 1) * self.frame_shift + self.frame_length

    @property
    def window_seconds(self) -> float:
        """Seconds of audio one model window covers (10.255 s for AST's defaults, 30 s for Whisper)."""
        return self.window_samples / self.sampling_rate

    @property
    def hop_samples(self) -> int:
        """Default samples between window starts: half a window (whole frames for frame-based front ends)."""
        if self.front_end in VARIABLE_LENGTH:
            return max(1, self.max_length // 2)
        return max(1, self.max_length // 2) * self.frame_shift

    @property
    def variable_length(self) -> bool:
        """Whether the model input follows the clip's length (raw-waveform and Wav2Vec2-BERT models)."""
        return self.front_end in VARIABLE_LENGTH

    @property
    def feature_shape(self) -> tuple[int | None, ...]:
        """The model input of one window; None where it follows the clip's length."""
        if self.front_end == "waveform":
            return (None,)
        if self.front_end == "whisper-log-mel":
            return (self.num_mel_bins, self.max_length)
        if self.front_end == "seamless-fbank":
            return (None, self.num_mel_bins * self.stack_frames)
        return (self.max_length, self.num_mel_bins)

    def to_dict(self) -> dict:
        """Returns the spec as a JSON-ready dict of plain Python values."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, d: dict) -> AudioPreprocessSpec:
        """Reads a dict written by ``to_dict``; missing fields take their defaults.

        Raises:
            ArtifactError: ``d`` is not a dict, has unknown fields, or has invalid values.
        """
        return spec_from_dict(cls, d, "audio")

    @classmethod
    def from_hf(cls, feature_extractor_config: dict, window_seconds: float | None = None,
                min_samples: int = 1) -> AudioPreprocessSpec:
        """Builds the spec from a feature extractor config (preprocessor_config.json).

        Args:
            feature_extractor_config: an AST, Wav2Vec2, Whisper or SeamlessM4T feature extractor's config.
            window_seconds: variable-length front ends only: seconds per model window (default 10).
            min_samples: raw-waveform models only: the shortest input the model takes.

        Raises:
            UnsupportedModelError: another feature extractor, or one vlmedge cannot reproduce.
        """
        cfg = feature_extractor_config
        if not isinstance(cfg, dict):
            raise ArtifactError(
                f"The feature extractor config is a {type(cfg).__name__}, not a dict; pass the parsed JSON."
            )
        kind = cfg.get("feature_extractor_type", "ASTFeatureExtractor")
        sr = cfg.get("sampling_rate", 16000)
        if kind == "ASTFeatureExtractor":
            # The extractor computes Kaldi's fbank with torchaudio where it is installed: frames of
            # 25 ms every 10 ms, truncated to whole samples, and a mel bank up to Nyquist. Without
            # torchaudio it takes 400 samples every 160 whatever the rate: the same at 16 kHz, AST's
            # rate, and other features at any other, where a model trained with transformers was
            # most likely fed torchaudio's (the extractor's first choice, and the audio pipeline's
            # resampler): those are followed (FORMAT_REVISION 3; 400-sample frames before).
            keys = ("num_mel_bins", "max_length", "do_normalize", "mean", "std")
            frame, shift = int(sr * 25.0 * 0.001), int(sr * 10.0 * 0.001)  # as torchaudio.compliance.kaldi
            fixed = {"frame_length_ms": frame * 1000 / sr, "frame_shift_ms": shift * 1000 / sr, "high_freq": sr / 2}
            return cls(sampling_rate=sr, **{k: cfg[k] for k in keys if k in cfg}, **fixed)
        if kind == "Wav2Vec2FeatureExtractor":
            seconds = DEFAULT_WAVEFORM_WINDOW_SECONDS if window_seconds is None else window_seconds
            return cls(sampling_rate=sr, front_end="waveform", max_length=round(seconds * sr),
                       do_normalize=cfg.get("do_normalize", True), padding_value=cfg.get("padding_value", 0.0),
                       min_samples=min_samples)
        if kind == "WhisperFeatureExtractor":
            if cfg.get("dither", 0.0):
                raise UnsupportedModelError("The WhisperFeatureExtractor adds random dither; save it with dither=0.0 "
                                            "so vlmedge can reproduce its features exactly.")
            n_fft, hop = cfg.get("n_fft", 400), cfg.get("hop_length", 160)
            frames = cfg.get("chunk_length", 30) * sr // hop
            return cls(sampling_rate=sr, front_end="whisper-log-mel", num_mel_bins=cfg.get("feature_size", 80),
                       max_length=frames, do_normalize=False, frame_length_ms=n_fft * 1000 / sr,
                       frame_shift_ms=hop * 1000 / sr, window="hann-periodic", preemphasis=0.0,
                       remove_dc_offset=False, low_freq=0.0, high_freq=8000.0, mel_floor=1e-10)
        if kind == "SeamlessM4TFeatureExtractor":
            # Kaldi fbank with fixed 400-sample frames, a 160-sample hop and a 512-point FFT.
            seconds = DEFAULT_WAVEFORM_WINDOW_SECONDS if window_seconds is None else window_seconds
            return cls(sampling_rate=sr, front_end="seamless-fbank", max_length=round(seconds * sr),
                       num_mel_bins=cfg.get("num_mel_bins", 80), window="povey", stack_frames=cfg.get("stride", 2),
                       frame_length_ms=400_000 / sr, frame_shift_ms=160_000 / sr, high_freq=float(sr // 2),
                       min_samples=400 + 160 * (cfg.get("stride", 2) - 1))
        raise UnsupportedModelError(f"Audio models need an AST, Wav2Vec2, Whisper or SeamlessM4T feature extractor, "
                                    f"not {kind}; export one of those audio classifiers.")
