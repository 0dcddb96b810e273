"""The front ends in numpy: AST's Kaldi fbank, Wav2Vec2's normalised waveform, Whisper's log-mel
and Wav2Vec2-BERT's stacked fbank, each in its feature extractor's order of operations; and long
clips cut into windows."""

from __future__ import annotations

import functools

import numpy as np

from vlmedge.errors import InputError
from vlmedge.preprocess.audio.io import check_wave
from vlmedge.preprocess.audio.spec import WINDOWS, AudioPreprocessSpec


def _triangles(points: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """(len(points), len(edges) - 2) triangular filters: filter i rises from edges[i] to
    edges[i + 1] and falls to edges[i + 2], evaluated at ``points`` (all in one scale)."""
    slopes = edges[None, :] - points[:, None]
    widths = np.diff(edges)
    rising, falling = -slopes[:, :-2] / widths[:-1], slopes[:, 2:] / widths[1:]
    return np.maximum(0.0, np.minimum(rising, falling))


@functools.lru_cache(maxsize=16)
def _mel_filters(spec: AudioPreprocessSpec) -> np.ndarray:
    """Kaldi mel bank, (fft_length // 2 + 1, num_mel_bins), triangles drawn in mel space."""

    def mel(hz):
        return 1127.0 * np.log(1.0 + np.asarray(hz, dtype=np.float64) / 700.0)

    centers = np.linspace(mel(spec.low_freq), mel(spec.nyquist_cutoff), spec.num_mel_bins + 2)
    bins = mel(spec.sampling_rate / spec.fft_length * np.arange(spec.fft_length // 2 + 1))
    filters = _triangles(bins, centers)
    filters.flags.writeable = False  # shared through the cache
    return filters


def _slaney_mel(hz: np.ndarray) -> np.ndarray:
    """Hz -> Slaney mel: linear below 1 kHz, logarithmic above."""
    hz = np.asarray(hz, dtype=np.float64)
    return np.where(hz >= 1000.0, 15.0 + np.log(np.maximum(hz, 1e-10) / 1000.0) * 27.0 / np.log(6.4), 3.0 * hz / 200.0)


def _slaney_hz(mel: np.ndarray) -> np.ndarray:
    return np.where(mel >= 15.0, 1000.0 * np.exp(np.log(6.4) / 27.0 * (mel - 15.0)), 200.0 * mel / 3.0)


@functools.lru_cache(maxsize=16)
def _slaney_filters(spec: AudioPreprocessSpec) -> np.ndarray:
    """Whisper's mel bank (librosa's Slaney scale and area normalisation), (fft_length // 2 + 1, num_mel_bins)."""
    edges = _slaney_hz(np.linspace(_slaney_mel(spec.low_freq), _slaney_mel(spec.nyquist_cutoff),
                                   spec.num_mel_bins + 2))
    bins = np.linspace(0, spec.sampling_rate // 2, spec.fft_length // 2 + 1)
    filters = _triangles(bins, edges) * (2.0 / (edges[2:] - edges[:-2]))[None, :]
    filters.flags.writeable = False  # shared through the cache
    return filters


def _log_mel(wave: np.ndarray, spec: AudioPreprocessSpec) -> np.ndarray:
    """Log-mel energies of at most ``max_length`` frames, in the extractor's exact order of operations."""
    length, shift = spec.frame_length, spec.frame_shift
    if wave.size < length:  # Kaldi (snip_edges) makes no frame of it, and the extractor raises on it
        raise _shorter_than_a_frame(wave.size, spec)
    # Frames past max_length would be truncated anyway, so an hour-long clip costs no more than 10 s.
    wave = wave[: spec.window_samples].astype(np.float64)
    frames = np.lib.stride_tricks.sliding_window_view(wave, length)[::shift]
    if spec.remove_dc_offset:
        frames = frames - frames.mean(axis=1, keepdims=True)
    if spec.preemphasis:
        p = spec.preemphasis
        frames = np.concatenate([frames[:, :1] * (1 - p), frames[:, 1:] - p * frames[:, :-1]], axis=1)
    frames = frames * WINDOWS[spec.window](length)
    # The extractor stores the FFT as complex64; rounding the same way makes the result bit-exact.
    spectrum = np.fft.rfft(frames, n=spec.fft_length).astype(np.complex64)
    power = np.abs(spectrum, dtype=np.float64) ** 2
    return np.log(np.maximum(spec.mel_floor, power @ _mel_filters(spec))).astype(np.float32)


def check_clip_length(samples: int, spec: AudioPreprocessSpec) -> None:
    """InputError for a clip (at the model's rate) too short for the front end: the Kaldi
    fbanks (AST's, Wav2Vec2-BERT's) make no frame of fewer samples than one, as their
    extractors refuse them; the other front ends pad a short clip."""
    if spec.front_end in ("kaldi-fbank", "seamless-fbank") and samples < spec.frame_length:
        raise _shorter_than_a_frame(samples, spec)


def _shorter_than_a_frame(samples: int, spec: AudioPreprocessSpec) -> InputError:
    # in milliseconds, whatever rate the clip came at (its sample count is the model's rate's)
    return InputError(f"The audio clip lasts {samples * 1000 / spec.sampling_rate:.3g} ms, shorter than one "
                      f"{spec.frame_length_ms:g} ms frame; pass a clip of at least {spec.frame_length_ms:g} ms.")


def _kaldi_fbank(wave: np.ndarray, spec: AudioPreprocessSpec) -> np.ndarray:
    feats = _log_mel(wave, spec)
    feats = np.pad(feats, ((0, spec.max_length - feats.shape[0]), (0, 0)))
    if spec.do_normalize:
        # float32 arithmetic with float32 constants, exactly as numpy evaluates the extractor's formula.
        feats = (feats - np.float32(spec.mean)) / np.float32(spec.std * 2)
    return feats


def _waveform(wave: np.ndarray, spec: AudioPreprocessSpec) -> np.ndarray:
    wave = wave[: spec.window_samples]
    if spec.do_normalize:
        # float32 throughout, the extractor's formula as it evaluates it (bit-exact).
        wave = (wave - wave.mean()) / np.sqrt(wave.var() + 1e-7)
    # A clip shorter than the model's receptive field is padded after normalising, as the
    # extractor pads with an attention mask; the model makes no frame from fewer samples.
    return np.pad(wave, (0, max(0, spec.min_samples - wave.size)), constant_values=np.float32(spec.padding_value))


def _whisper_log_mel(wave: np.ndarray, spec: AudioPreprocessSpec) -> np.ndarray:
    n_fft, hop = spec.fft_length, spec.frame_shift
    wave = np.pad(wave[: spec.window_samples], (0, max(0, spec.window_samples - wave.size))).astype(np.float64)
    padded = np.pad(wave, n_fft // 2, mode="reflect")  # centred frames, as torch.stft(center=True)
    frames = np.lib.stride_tricks.sliding_window_view(padded, n_fft)[::hop][: spec.max_length]  # the last is dropped
    power = np.abs(np.fft.rfft(frames * WINDOWS[spec.window](n_fft), n=n_fft)) ** 2
    log_spec = np.log10(np.maximum(power @ _slaney_filters(spec), spec.mel_floor)).T
    log_spec = np.maximum(log_spec, log_spec.max() - 8.0)
    return ((log_spec + 4.0) / 4.0).astype(np.float32)


def _seamless_fbank(wave: np.ndarray, spec: AudioPreprocessSpec) -> np.ndarray:
    wave = np.pad(wave[: spec.window_samples], (0, max(0, spec.min_samples - wave.size)))
    feats = _log_mel(wave * np.float32(2**15), spec)  # Kaldi's 16-bit sample range, in float32 as the extractor
    # Laid out (mels, frames) in memory, as the extractor's transposed spectrogram is, so the
    # float32 sums over time round the same way (a near-constant bin's tiny variance magnifies them).
    feats = np.ascontiguousarray(feats.T).T
    if spec.do_normalize:  # each mel bin over time, float32 as the extractor evaluates it
        feats = (feats - np.expand_dims(feats.mean(0), 0)) / np.sqrt(np.expand_dims(feats.var(0, ddof=1), 0) + 1e-7)
    frames = feats.shape[0] // spec.stack_frames * spec.stack_frames  # a frame left over is dropped
    return feats[:frames].reshape(frames // spec.stack_frames, spec.num_mel_bins * spec.stack_frames)


_FRONT_ENDS = {"kaldi-fbank": _kaldi_fbank, "waveform": _waveform, "whisper-log-mel": _whisper_log_mel,
               "seamless-fbank": _seamless_fbank}


def fbank(wave: np.ndarray, spec: AudioPreprocessSpec) -> np.ndarray:
    """Computes the model input of one clip (or window) already at ``spec.sampling_rate``,
    with the spec's front end.

    Returns:
        float32 features, shaped ``spec.feature_shape``:

        - ``kaldi-fbank``: ``(max_length, num_mel_bins)`` log-mel frames, truncated or
          zero-padded (in the log domain, as the extractor does), then normalized as
          ``(x - mean) / (2 * std)`` when ``do_normalize``.
        - ``waveform``: the clip's first window of samples, zero-mean unit-variance when
          ``do_normalize``, padded to ``min_samples``.
        - ``whisper-log-mel``: ``(num_mel_bins, max_length)`` over the clip zero-padded or cut to 30 s.
        - ``seamless-fbank``: ``(frames // stack_frames, num_mel_bins * stack_frames)`` of the
          clip's first window, each mel bin normalised over time when ``do_normalize``.
    """
    return _FRONT_ENDS[spec.front_end](check_wave(wave), spec)


def split_windows(
    wave: np.ndarray, spec: AudioPreprocessSpec, hop_seconds: float | None = None
) -> list[tuple[float, float, np.ndarray]]:
    """Cuts a clip longer than ``spec.window_seconds`` into overlapping model windows.

    Args:
        wave: Mono float waveform at ``spec.sampling_rate``.
        spec: The audio spec; its ``window_samples`` set the window length.
        hop_seconds: Seconds between window starts; defaults to ``spec.hop_samples``, half a
            window rounded to whole frames so windows share the clip's frame grid.

    Returns:
        ``(start_s, end_s, segment)`` tuples. The last window is aligned to the clip's end so
        every window is full; a clip that fits in one window is returned whole.
    """
    wave = check_wave(wave)
    sr, win, n = spec.sampling_rate, spec.window_samples, wave.size
    hop = _hop_samples(spec, hop_seconds)
    if n <= win:
        return [(0.0, n / sr, wave)]
    starts = list(range(0, n - win, hop)) + [n - win]
    return [(s / sr, (s + win) / sr, wave[s : s + win]) for s in starts]


def window_count(samples: int, spec: AudioPreprocessSpec, hop_seconds: float | None = None) -> int:
    """How many model windows ``split_windows`` cuts a clip of ``samples`` (at the model's
    rate) into, without the clip: what a server counts before computing any features."""
    hop, win = _hop_samples(spec, hop_seconds), spec.window_samples
    return 1 if samples <= win else len(range(0, samples - win, hop)) + 1


def _hop_samples(spec: AudioPreprocessSpec, hop_seconds: float | None) -> int:
    if hop_seconds is None:
        return spec.hop_samples
    if isinstance(hop_seconds, bool) or not (
        isinstance(hop_seconds, (int, float)) and 0 < hop_seconds <= spec.window_seconds
    ):
        raise InputError(
            f"hop_seconds={hop_seconds!r} is not in (0, {spec.window_seconds:g}]; pass a hop no longer than a window."
        )
    return max(1, round(hop_seconds * spec.sampling_rate))


def preprocess_audio(audio_list: list[np.ndarray], spec: AudioPreprocessSpec) -> np.ndarray:
    """Batches ``fbank`` over clips already at ``spec.sampling_rate``.

    Returns:
        A ``(N, *spec.feature_shape)`` float32 array (raw-waveform clips must be of one length).
    """
    if isinstance(audio_list, np.ndarray) and audio_list.ndim == 1:
        audio_list = [audio_list]
    if not isinstance(audio_list, (list, tuple)) or len(audio_list) == 0:
        raise InputError("preprocess_audio needs a non-empty list of 1-D waveforms; pass at least one clip.")
    return np.stack([fbank(w, spec) for w in audio_list])
