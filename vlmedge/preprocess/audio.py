"""Audio preprocessing for AST-style models: decode, resample, Kaldi log-mel fbank.

Reproduces ``transformers.ASTFeatureExtractor`` (its numpy path, used when torchaudio is
absent) bit for bit with numpy only, so the runtime needs neither torch nor transformers. Decoding
uses soundfile; resampling uses soxr, or scipy when soxr is missing.
"""

from __future__ import annotations

import dataclasses
import functools
import io
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from vlmedge.errors import ArtifactError, InputError, UnsupportedModelError

try:
    import soxr
except ImportError:  # pragma: no cover - soxr is a core dependency; scipy is the fallback
    soxr = None

# File suffixes of the audio containers soundfile (libsndfile) decodes.
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aif", ".aiff")
MIN_SAMPLE_RATE = 8_000
MAX_SAMPLE_RATE = 192_000
# More channels than this is almost certainly a batch of clips passed as one 2-D array.
MAX_CHANNELS = 64
_WINDOWS = {
    # Symmetric windows, as Kaldi and the extractor use (Kaldi "hanning" == numpy hanning).
    "hann": np.hanning,
    "hamming": np.hamming,
    "povey": lambda n: np.hanning(n) ** 0.85,
}


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
    """Everything needed to turn a waveform into AST input features.

    Frame, window and filter-bank fields follow Kaldi's ``fbank`` options; their defaults
    are the ones ``ASTFeatureExtractor`` fixes. ``high_freq <= 0`` means an offset below
    Nyquist, as in Kaldi.
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

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            # Stored as plain Python values, so to_dict() is always JSON-serialisable.
            object.__setattr__(self, f.name, _field_value(f.name, f.type, getattr(self, f.name)))
        checks = [
            (self.sampling_rate > 0, "sampling_rate must be positive"),
            (self.num_mel_bins >= 1 and self.max_length >= 1, "num_mel_bins and max_length must be at least 1"),
            (self.std > 0 and self.mel_floor > 0, "std and mel_floor must be positive"),
            (self.frame_length >= 2 and self.frame_shift >= 1, "frames must span 2 samples and shift by 1"),
            (self.window in _WINDOWS, f"window must be one of {sorted(_WINDOWS)}"),
            (0.0 <= self.preemphasis < 1.0, "preemphasis must be in [0, 1)"),
            (0.0 <= self.low_freq < self.nyquist_cutoff <= self.sampling_rate / 2,
             "need 0 <= low_freq < high_freq <= Nyquist"),
            # Dither adds random noise; vlmedge promises the same features on every run.
            (self.dither == 0.0, "dither must be 0 so features are deterministic"),
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
        """FFT size: the frame length rounded up to a power of two, as Kaldi does."""
        return 1 << (self.frame_length - 1).bit_length()

    @property
    def nyquist_cutoff(self) -> float:
        """Upper edge of the mel filter bank in Hz."""
        return self.high_freq if self.high_freq > 0 else self.sampling_rate / 2 + self.high_freq

    @property
    def window_samples(self) -> int:
        """Samples covered by ``max_length`` frames."""
        return (self.max_length - 1) * self.frame_shift + self.frame_length

    @property
    def window_seconds(self) -> float:
        """Seconds of audio covered by ``max_length`` frames (10.255 s by default)."""
        return self.window_samples / self.sampling_rate

    def to_dict(self) -> dict:
        """Returns the spec as a JSON-ready dict of plain Python values."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, d: dict) -> AudioPreprocessSpec:
        """Reads a dict written by ``to_dict``; missing fields take their defaults.

        Raises:
            ArtifactError: ``d`` is not a dict, has unknown fields, or has invalid values.
        """
        if not isinstance(d, dict):
            raise ArtifactError(f"The audio spec is a {type(d).__name__}, not a dict; re-export the artifact.")
        unknown = sorted(set(d) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ArtifactError(
                f"The audio spec has unknown fields {unknown}; upgrade vlmedge or re-export the artifact."
            )
        return cls(**d)

    @classmethod
    def from_hf(cls, feature_extractor_config: dict) -> AudioPreprocessSpec:
        """Builds the spec from an ``ASTFeatureExtractor`` config (preprocessor_config.json).

        The extractor fixes 400-sample frames, a 160-sample hop and a mel bank up to
        ``sampling_rate // 2`` whatever the rate, so those are converted here.
        """
        cfg = feature_extractor_config
        if not isinstance(cfg, dict):
            raise ArtifactError(
                f"The feature extractor config is a {type(cfg).__name__}, not a dict; pass the parsed JSON."
            )
        kind = cfg.get("feature_extractor_type", "ASTFeatureExtractor")
        if kind != "ASTFeatureExtractor":
            raise UnsupportedModelError(f"Audio models need an ASTFeatureExtractor, not {kind}; export an AST model.")
        sr = cfg.get("sampling_rate", 16000)
        keys = ("num_mel_bins", "max_length", "do_normalize", "mean", "std")
        fixed = {"frame_length_ms": 400_000 / sr, "frame_shift_ms": 160_000 / sr, "high_freq": float(sr // 2)}
        return cls(sampling_rate=sr, **{k: cfg[k] for k in keys if k in cfg}, **fixed)


def _check_rate(rate, what: str = "sample rate") -> int:
    """Returns ``rate`` as an int, or raises InputError if it is not a plausible audio rate."""
    if isinstance(rate, (float, np.floating)) and float(rate).is_integer():
        rate = int(rate)
    if not isinstance(rate, (int, np.integer)) or isinstance(rate, bool):
        raise InputError(f"The {what} {rate!r} is not an integer number of Hz; pass e.g. 16000.")
    if not MIN_SAMPLE_RATE <= rate <= MAX_SAMPLE_RATE:
        raise InputError(
            f"The {what} {rate} Hz is outside {MIN_SAMPLE_RATE}..{MAX_SAMPLE_RATE} Hz; "
            "pass the clip's real sample rate."
        )
    return int(rate)


def _check_wave(wave, what: str = "waveform") -> np.ndarray:
    """Validates a 1-D, non-empty, finite float waveform and returns it as float32."""
    if not isinstance(wave, np.ndarray) or wave.ndim != 1 or wave.dtype.kind != "f":
        raise InputError(f"The {what} must be a 1-D float numpy array; decode audio with load_audio() first.")
    if wave.size == 0:
        raise InputError(f"The {what} is empty; pass a clip with at least one sample.")
    if not np.isfinite(wave).all():
        raise InputError(f"The {what} contains NaN or infinite samples; clean or re-decode the audio.")
    # The extractor works from float32 samples, so float64 input is rounded the same way.
    return np.ascontiguousarray(wave, dtype=np.float32)


def _to_mono(data: np.ndarray, channel_axis: int | None) -> np.ndarray:
    """Scales integer PCM to [-1, 1], downmixes channels by their mean, returns float32."""
    if data.dtype.kind in "iu":
        half = 2.0 ** (8 * data.dtype.itemsize - 1)
        offset = half if data.dtype.kind == "u" else 0.0  # unsigned PCM is centred on half range
        data = (data.astype(np.float64) - offset) / half
    if channel_axis is not None:
        data = data.mean(axis=channel_axis, dtype=np.float64)
    return _check_wave(np.asarray(data, dtype=np.float32), "audio")


def _decode(source, name: str) -> tuple[np.ndarray, int]:
    """Decodes a file path or file-like object with soundfile into (frames, channels)."""
    try:
        data, sr = sf.read(source, dtype="float32", always_2d=True)
    except (sf.SoundFileError, RuntimeError, OSError, ValueError) as exc:
        raise InputError(f"Cannot decode {name} ({exc}); pass a WAV, FLAC or OGG file.") from None
    except Exception as exc:  # noqa: BLE001 - a decoder given untrusted bytes may raise anything
        raise InputError(f"Cannot decode {name} ({type(exc).__name__}: {exc}); pass a WAV, FLAC or OGG file.") from None
    return data, sr


def load_audio(audio, sample_rate: int | None = None) -> tuple[np.ndarray, int]:
    """Loads a clip as float32 mono samples in [-1, 1] at its own sample rate.

    Args:
        audio: A path (WAV incl. float/24-bit/extensible, FLAC, OGG), the bytes of such a
            file, or a numpy array: 1-D mono, or 2-D with channels on the smaller axis.
            Integer arrays are scaled by their dtype's range.
        sample_rate: The array's sample rate in Hz; required for arrays, ignored for
            files and bytes, whose header is authoritative.

    Returns:
        ``(wave, sample_rate)``: a 1-D float32 array and its rate in Hz.

    Raises:
        InputError: The input is missing, empty, corrupt, non-finite, of the wrong shape
            or dtype, or its sample rate is outside 8..192 kHz.
    """
    if isinstance(audio, (str, os.PathLike)):
        path = Path(audio)
        if not path.is_file():
            raise InputError(f"Audio file {path} does not exist; check the path.")
        if path.stat().st_size == 0:
            raise InputError(f"Audio file {path} is empty (0 bytes); pass a complete audio file.")
        data, sr = _decode(str(path), f"audio file {path}")
        return _to_mono(data, channel_axis=1), _check_rate(sr, f"sample rate of {path}")
    if isinstance(audio, (bytes, bytearray, memoryview)):
        if len(audio) == 0:
            raise InputError("The audio bytes are empty; pass the full contents of an audio file.")
        data, sr = _decode(io.BytesIO(bytes(audio)), "the audio bytes")
        return _to_mono(data, channel_axis=1), _check_rate(sr, "sample rate in the audio bytes")
    if not isinstance(audio, np.ndarray):
        raise InputError(f"Cannot read audio from a {type(audio).__name__}; pass a path, bytes or a numpy array.")
    if sample_rate is None:
        raise InputError("A numpy audio array needs its sample rate; pass sample_rate=... in Hz.")
    sr = _check_rate(sample_rate)
    if audio.dtype.kind not in "iuf":
        raise InputError(f"Audio arrays must hold integer or float samples, not {audio.dtype}; convert the array.")
    if audio.ndim not in (1, 2):
        raise InputError(
            f"Audio arrays must be 1-D or 2-D (samples, channels), not {audio.ndim}-D; pass one clip at a time."
        )
    if audio.size == 0:
        raise InputError("The audio array is empty; pass a clip with at least one sample.")
    # Channels go on the smaller axis; a square array is read as (samples, channels), like soundfile.
    channel_axis = None if audio.ndim == 1 else int(audio.shape[1] <= audio.shape[0])
    if channel_axis is not None and audio.shape[channel_axis] > MAX_CHANNELS:
        raise InputError(
            f"An audio array of shape {audio.shape} has too many channels; pass a list of 1-D clips instead."
        )
    return _to_mono(audio, channel_axis), sr


def resample(wave: np.ndarray, orig_sr: int, target_sr: int) -> np.ndarray:
    """Resamples a mono float waveform with soxr's "HQ" quality (scipy if soxr is missing).

    Returns:
        A float32 array of about ``len(wave) * target_sr / orig_sr`` samples.
    """
    wave = _check_wave(wave)
    orig_sr, target_sr = _check_rate(orig_sr), _check_rate(target_sr, "target sample rate")
    if orig_sr == target_sr:
        return wave
    if soxr is not None:
        return np.asarray(soxr.resample(wave, orig_sr, target_sr, quality="HQ"), dtype=np.float32)
    from scipy.signal import resample_poly

    g = math.gcd(orig_sr, target_sr)
    return resample_poly(wave, target_sr // g, orig_sr // g).astype(np.float32)


@functools.lru_cache(maxsize=16)
def _mel_filters(spec: AudioPreprocessSpec) -> np.ndarray:
    """Kaldi mel bank, (fft_length // 2 + 1, num_mel_bins), triangles drawn in mel space."""

    def mel(hz):
        return 1127.0 * np.log(1.0 + np.asarray(hz, dtype=np.float64) / 700.0)

    centers = np.linspace(mel(spec.low_freq), mel(spec.nyquist_cutoff), spec.num_mel_bins + 2)
    bins = mel(spec.sampling_rate / spec.fft_length * np.arange(spec.fft_length // 2 + 1))
    slopes = centers[None, :] - bins[:, None]
    widths = np.diff(centers)
    rising, falling = -slopes[:, :-2] / widths[:-1], slopes[:, 2:] / widths[1:]
    filters = np.maximum(0.0, np.minimum(rising, falling))
    filters.flags.writeable = False  # shared through the cache
    return filters


def _log_mel(wave: np.ndarray, spec: AudioPreprocessSpec) -> np.ndarray:
    """Log-mel energies of at most ``max_length`` frames, in the extractor's exact order of operations."""
    length, shift = spec.frame_length, spec.frame_shift
    if wave.size < length:  # Kaldi (snip_edges) makes no frame from a clip shorter than one frame
        return np.zeros((0, spec.num_mel_bins), dtype=np.float32)
    # Frames past max_length would be truncated anyway, so an hour-long clip costs no more than 10 s.
    wave = wave[: spec.window_samples].astype(np.float64)
    frames = np.lib.stride_tricks.sliding_window_view(wave, length)[::shift]
    if spec.remove_dc_offset:
        frames = frames - frames.mean(axis=1, keepdims=True)
    if spec.preemphasis:
        p = spec.preemphasis
        frames = np.concatenate([frames[:, :1] * (1 - p), frames[:, 1:] - p * frames[:, :-1]], axis=1)
    frames = frames * _WINDOWS[spec.window](length)
    # The extractor stores the FFT as complex64; rounding the same way makes the result bit-exact.
    spectrum = np.fft.rfft(frames, n=spec.fft_length).astype(np.complex64)
    power = np.abs(spectrum, dtype=np.float64) ** 2
    return np.log(np.maximum(spec.mel_floor, power @ _mel_filters(spec))).astype(np.float32)


def fbank(wave: np.ndarray, spec: AudioPreprocessSpec) -> np.ndarray:
    """Computes AST input features for one clip already at ``spec.sampling_rate``.

    Returns:
        A ``(max_length, num_mel_bins)`` float32 array: log-mel frames, truncated or
        zero-padded (in the log domain, as the extractor does), then normalized as
        ``(x - mean) / (2 * std)`` when ``do_normalize``.
    """
    feats = _log_mel(_check_wave(wave), spec)
    feats = np.pad(feats, ((0, spec.max_length - feats.shape[0]), (0, 0)))
    if spec.do_normalize:
        # float32 arithmetic with float32 constants, exactly as numpy evaluates the extractor's formula.
        feats = (feats - np.float32(spec.mean)) / np.float32(spec.std * 2)
    return feats


def split_windows(
    wave: np.ndarray, spec: AudioPreprocessSpec, hop_seconds: float | None = None
) -> list[tuple[float, float, np.ndarray]]:
    """Cuts a clip longer than ``spec.window_seconds`` into overlapping model windows.

    Args:
        wave: Mono float waveform at ``spec.sampling_rate``.
        spec: The audio spec; its ``max_length`` frames set the window length.
        hop_seconds: Seconds between window starts; defaults to half a window, rounded to
            whole frames so windows share the clip's frame grid.

    Returns:
        ``(start_s, end_s, segment)`` tuples. The last window is aligned to the clip's end so
        every window is full; a clip that fits in one window is returned whole.
    """
    wave = _check_wave(wave)
    sr, win, n = spec.sampling_rate, spec.window_samples, wave.size
    if hop_seconds is None:
        hop = max(1, spec.max_length // 2) * spec.frame_shift
    elif isinstance(hop_seconds, bool) or not (
        isinstance(hop_seconds, (int, float)) and 0 < hop_seconds <= spec.window_seconds
    ):
        raise InputError(
            f"hop_seconds={hop_seconds!r} is not in (0, {spec.window_seconds:g}]; pass a hop no longer than a window."
        )
    else:
        hop = max(1, round(hop_seconds * sr))
    if n <= win:
        return [(0.0, n / sr, wave)]
    starts = list(range(0, n - win, hop)) + [n - win]
    return [(s / sr, (s + win) / sr, wave[s : s + win]) for s in starts]


def preprocess_audio(audio_list: list[np.ndarray], spec: AudioPreprocessSpec) -> np.ndarray:
    """Batches ``fbank`` over clips already at ``spec.sampling_rate``.

    Returns:
        A ``(N, max_length, num_mel_bins)`` float32 array.
    """
    if isinstance(audio_list, np.ndarray) and audio_list.ndim == 1:
        audio_list = [audio_list]
    if not isinstance(audio_list, (list, tuple)) or len(audio_list) == 0:
        raise InputError("preprocess_audio needs a non-empty list of 1-D waveforms; pass at least one clip.")
    return np.stack([fbank(w, spec) for w in audio_list])
