"""Decoding, downmixing and resampling audio clips to float32 mono waveforms."""

from __future__ import annotations

import contextlib
import io
import math
import os
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import soundfile as sf
import soxr

from vlmedge.errors import InputError, VlmedgeError, warn_caller
from vlmedge.preprocess import AUDIO_FORMATS, check_input_file, read_file_object

# What holds an audio file, as load_audio takes one: a path, its bytes, a binary file object.
FILE_TYPES = (str, os.PathLike, bytes, bytearray, memoryview, io.IOBase)
# File suffixes of the audio containers soundfile (libsndfile) decodes.
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aif", ".aiff")
# Rates vlmedge reads: telephony's 8 kHz and below (6 kHz, 5.5 kHz) to studio's 192 kHz. Below
# 1 kHz a rate is a mistake (kHz for Hz) that would resample a clip into a huge one.
MIN_SAMPLE_RATE = 1_000
MAX_SAMPLE_RATE = 192_000
# An array with more channels than stereo is most likely a batch of clips passed as one 2-D
# array (N, samples), which would be averaged into one clip; files keep any channel count.
MAX_ARRAY_CHANNELS = 2
# Float samples belong in [-1, 1]; a clip a little beyond is clipped or mastered loud, but one
# beyond this peak is most likely integer PCM held as floats (up to 32767), which shifts every
# log-mel feature: answered as confidently as any clip, so it is said.
LOUDEST_FLOAT_PEAK = 8.0
# Frames a file is decoded, downmixed and resampled by at a time (1.5 s at 44.1 kHz).
STREAM_BLOCK_FRAMES = 1 << 16
# The most samples a file's header may reserve room for (1 GiB of float32, 4.6 hours at
# 16 kHz): a header is untrusted, and a longer file grows its room as it is decoded.
MAX_RESERVED_SAMPLES = 1 << 28
# libsndfile's frame count of a file whose header leaves its length out (SF_COUNT_MAX): a FLAC
# written to a pipe, as ffmpeg and recorders do, has total_samples 0 in its STREAMINFO.
UNKNOWN_LENGTH = (1 << 63) - 1


def check_rate(rate, what: str = "sample rate", advice: str = "pass the clip's real sample rate") -> int:
    """Returns ``rate`` as an int, or raises InputError, ending with `advice`, if it is not a
    plausible audio rate."""
    if isinstance(rate, (float, np.floating)) and float(rate).is_integer():
        rate = int(rate)
    if not isinstance(rate, (int, np.integer)) or isinstance(rate, bool):
        raise InputError(f"The {what} {rate!r} is not an integer number of Hz; pass e.g. 16000.")
    if not MIN_SAMPLE_RATE <= rate <= MAX_SAMPLE_RATE:
        raise InputError(f"The {what}, {rate} Hz, is outside the {MIN_SAMPLE_RATE}..{MAX_SAMPLE_RATE} Hz vlmedge "
                         f"reads; {advice}.")
    return int(rate)


def check_wave(wave, what: str = "waveform") -> np.ndarray:
    """Validates a 1-D, non-empty, finite float waveform and returns it as float32."""
    if not isinstance(wave, np.ndarray) or wave.ndim != 1 or wave.dtype.kind != "f":
        raise InputError(f"The {what} must be a 1-D float numpy array; decode audio with load_audio() first.")
    if wave.size == 0:
        raise InputError(f"The {what} is empty; pass a clip with at least one sample.")
    if not np.isfinite(wave).all():
        raise InputError(f"The {what} contains NaN or infinite samples; clean or re-decode the audio.")
    # The extractor works from float32 samples, so float64 input is rounded the same way.
    with np.errstate(over="ignore"):
        samples = np.ascontiguousarray(wave, dtype=np.float32)
    if not np.isfinite(samples).all():
        raise InputError(f"The {what} has samples beyond float32's range (up to {np.abs(wave).max():.3g}); "
                         "audio samples belong in [-1, 1], so scale it.")
    return samples


def _to_mono(data: np.ndarray, channel_axis: int | None) -> np.ndarray:
    """Scales integer PCM to [-1, 1], downmixes channels by their mean, returns float32."""
    if data.dtype.kind in "iu":
        half = 2.0 ** (8 * data.dtype.itemsize - 1)
        offset = half if data.dtype.kind == "u" else 0.0  # unsigned PCM is centred on half range
        data = (data.astype(np.float64) - offset) / half
    if channel_axis is not None:
        # one channel is itself (its float64 mean, rounded back, is the same samples)
        data = data[:, 0] if data.shape[1] == 1 and channel_axis == 1 else data.mean(axis=channel_axis, dtype=np.float64)
    floats = data if data.dtype.kind == "f" else np.asarray(data, dtype=np.float32)  # check_wave rounds to float32
    return check_wave(floats, "audio")


@contextlib.contextmanager
def _decoding(source: Any, name: str) -> Iterator[None]:
    """soundfile's failures while opening or reading `source` as one InputError naming it."""
    try:
        yield
    except VlmedgeError:
        raise
    except MemoryError:  # a good file, too long for the memory this process has left
        raise InputError(f"Cannot decode {name}: this process ran out of memory; free memory or raise its limit "
                         "(ulimit -v), or cut the recording into shorter files.") from None
    except (sf.SoundFileError, RuntimeError, OSError, ValueError) as exc:
        raise InputError(f"Cannot decode {name} ({_named(exc, source, name)}); pass a {AUDIO_FORMATS} file.") from None
    except Exception as exc:  # noqa: BLE001 - a decoder given untrusted bytes may raise anything
        raise InputError(f"Cannot decode {name} ({type(exc).__name__}: {_named(exc, source, name)}); pass a "
                         f"{AUDIO_FORMATS} file.") from None


def _file_source(audio: Any) -> tuple[Any, str, str]:
    """A path, the bytes of a file or a binary file object as what soundfile opens, how
    messages name it, and how they name its sample rate."""
    if isinstance(audio, (str, os.PathLike)):
        check_input_file(str(os.fspath(audio)), "audio")  # as given: Path() would turn http:// into http:/
        path = Path(audio)
        return str(path), f"audio file {path}", f"sample rate of {path}"
    if isinstance(audio, io.IOBase):
        data, what = read_file_object(audio, "audio")
        if not data:
            raise InputError(f"{what} is empty (nothing left to read); pass a complete audio file.")
        return io.BytesIO(data), what[0].lower() + what[1:], f"sample rate in {what[0].lower() + what[1:]}"
    if len(audio) == 0:
        raise InputError("The audio bytes are empty; pass the full contents of an audio file.")
    return io.BytesIO(bytes(audio)), "the audio bytes", "sample rate in the audio bytes"


class _Samples:
    """A float32 array filled a block at a time, its room reserved from the header's frame
    count (grown if the header undercounted, as an MP3's may, or the clip is longer than
    MAX_RESERVED_SAMPLES), so no list of blocks is ever concatenated: the clip is held once."""

    def __init__(self, expected: int) -> None:
        self._data = np.empty(min(max(expected, 1), MAX_RESERVED_SAMPLES), dtype=np.float32)
        self._size = 0

    def append(self, block: np.ndarray) -> None:
        end = self._size + block.size
        if end > self._data.size:
            grown = np.empty(max(end, self._data.size * 3 // 2), dtype=np.float32)
            grown[: self._size] = self._data[: self._size]
            self._data = grown
        self._data[self._size:end] = block
        self._size = end

    def array(self) -> np.ndarray:
        # a copy only where the header overcounted by more than a block's worth
        filled = self._data[: self._size]
        return filled if self._data.size - self._size <= STREAM_BLOCK_FRAMES else filled.copy()


def _next_read(left: int) -> int:
    """Frames to read next: a block, or all that is left when less than two blocks are, since
    libsndfile's Opus decoder gives the last samples otherwise when the last read is short."""
    return left if left < 2 * STREAM_BLOCK_FRAMES else STREAM_BLOCK_FRAMES


def _read_file(audio: Any, target_rate: int | None) -> tuple[np.ndarray, int, int]:
    """Decodes a file (path or bytes) a block of frames at a time, each block downmixed to
    mono and, with `target_rate`, resampled to it in one soxr stream, which gives exactly the
    samples resampling the whole clip does: a long recording is held only as mono at the
    rate wanted, never whole at its own rate and channel count (an hour of 44.1 kHz stereo
    would be 1.3 GB of float32 frames). The samples are those of decoding the file in one
    read, but for MP3, whose decoder in libsndfile rounds some samples 1 ulp (1.5e-7)
    differently from one split of the reads to another.

    Returns:
        ``(wave, rate, frames)``: the mono float32 wave (at `target_rate` if given), the
        file's own rate and how many frames the file held at that rate.
    """
    source, name, rate_name = _file_source(audio)
    with _decoding(source, name), sf.SoundFile(source) as file:
        rate = check_rate(file.samplerate, rate_name, "resample the file")
        out_rate = rate if target_rate is None else target_rate
        stream = None if out_rate == rate else soxr.ResampleStream(rate, out_rate, 1, dtype="float32", quality="HQ")
        samples = _Samples(math.ceil(_header_frames(file) * out_rate / rate) + 1)
        frames = 0
        file.seek(0)  # as soundfile.read does: libsndfile's MP3 decoder answers otherwise
        _read_to_end_if_length_unknown(file)
        # The frames the header counts, as soundfile.read takes them, until the decoder runs
        # short (a truncated file). Not SoundFile.blocks: it yields a short read's stale tail.
        while frames < file.frames:
            block = file.read(_next_read(file.frames - frames), dtype="float32", always_2d=True)
            if not len(block):
                break
            mono = _to_mono(block, channel_axis=1)
            frames += mono.size
            samples.append(mono if stream is None else stream.resample_chunk(mono))
        if frames == 0:
            raise InputError("The audio is empty; pass a clip with at least one sample.")
        if stream is not None:
            samples.append(stream.resample_chunk(np.empty(0, dtype=np.float32), last=True))
    return samples.array(), rate, frames


def _header_frames(file: sf.SoundFile) -> int:
    """The frames the file's header says it holds; 0 where it does not say."""
    return 0 if file.frames >= UNKNOWN_LENGTH else max(file.frames, 0)


def _read_to_end_if_length_unknown(file: sf.SoundFile) -> None:
    """soundfile seeks to where each read ended, which libsndfile cannot do at the end of a
    file of unknown length ("Internal psf_fseek() failed"): such a file is read as a stream
    is, each read giving what is left of its block, until one gives nothing."""
    if file.frames >= UNKNOWN_LENGTH:
        file.seekable = lambda: False  # what SoundFile's reads ask before seeking


def audio_seconds(data: bytes, most: float) -> tuple[float, bool]:
    """The seconds an audio file's bytes last, from its header, and whether that is all of
    them: one whose header leaves its length out is decoded, without keeping its samples,
    until it has lasted more than `most` seconds (then the seconds so far, False) or ended.
    Raises what soundfile raises for bytes it cannot read."""
    with sf.SoundFile(io.BytesIO(data)) as file:
        if file.frames < UNKNOWN_LENGTH:
            return file.frames / file.samplerate, True
        _read_to_end_if_length_unknown(file)
        frames = 0
        while frames <= most * file.samplerate:
            read = len(file.read(STREAM_BLOCK_FRAMES, dtype="float32", always_2d=True))
            if not read:
                return frames / file.samplerate, True
            frames += read
        return frames / file.samplerate, False


def _named(exc: Exception, source: Any, name: str) -> str:
    """soundfile's message, which names a file object by its repr (<_io.BytesIO object at 0x...>), naming it as we do."""
    return str(exc).replace(f"Error opening {source!r}: ", "").replace(repr(source), name)


def _unpacked(clip: dict, sample_rate: int | None) -> tuple[Any, int | None]:
    """transformers' audio-classification pipeline's {"raw": array, "sampling_rate": rate}
    (datasets' Audio feature: "array") as an array and its rate."""
    arrays = [key for key in ("raw", "array") if key in clip]
    if len(arrays) != 1 or "sampling_rate" not in clip or set(clip) - {"raw", "array", "sampling_rate", "path"}:
        raise InputError(f"An audio dict takes 'raw' (or 'array') and 'sampling_rate', as transformers' pipeline "
                         f"does, not the keys {sorted(clip)}.")
    if sample_rate is not None and sample_rate != clip["sampling_rate"]:
        raise InputError(f"sample_rate={sample_rate!r} disagrees with the clip's own sampling_rate "
                         f"{clip['sampling_rate']!r}; leave sample_rate out.")
    return clip[arrays[0]], clip["sampling_rate"]


def load_audio(audio, sample_rate: int | None = None) -> tuple[np.ndarray, int]:
    """Loads a clip as float32 mono samples in [-1, 1] at its own sample rate.

    Args:
        audio: A path (WAV incl. float/24-bit/extensible, FLAC, OGG), the bytes of such a
            file or a binary file object of it (read from where it stands), or a numpy
            array: 1-D mono, or 2-D with channels on the smaller axis; or
            {"raw": array, "sampling_rate": rate}, as transformers' pipeline takes it.
            Integer arrays are scaled by their dtype's range.
        sample_rate: The array's sample rate in Hz; required for arrays, ignored for
            files and bytes, whose header is authoritative.

    Returns:
        ``(wave, sample_rate)``: a 1-D float32 array and its rate in Hz.

    Raises:
        InputError: The input is missing, empty, corrupt, non-finite, of the wrong shape
            or dtype, or its sample rate is outside 1..192 kHz.
    """
    if isinstance(audio, dict):
        audio, sample_rate = _unpacked(audio, sample_rate)
    if isinstance(audio, FILE_TYPES):
        wave, rate, _ = _read_file(audio, None)
        return wave, rate
    if not isinstance(audio, np.ndarray):
        raise InputError(f"Cannot read audio from a {type(audio).__name__}; pass a path, bytes or a numpy array.")
    if sample_rate is None:
        raise InputError("A numpy audio array needs its sample rate; pass sample_rate=... in Hz.")
    sr = check_rate(sample_rate)
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
    if channel_axis is not None and audio.shape[channel_axis] > MAX_ARRAY_CHANNELS:
        raise InputError(
            f"An audio array of shape {audio.shape} reads as one clip of {audio.shape[channel_axis]} channels, which "
            f"would be averaged into one: too many channels for an array, most likely a batch of clips; pass a list of "
            f"1-D clips (list(array)), or mix a multi-channel recording down yourself (array.mean(axis={channel_axis}))."
        )
    wave = _to_mono(audio, channel_axis)
    if audio.dtype.kind == "f":
        _warn_if_unscaled(audio)  # each channel as given: one silent channel would halve the peak
    return wave, sr


def load_audio_at(audio, target_rate: int, sample_rate: int | None = None) -> tuple[np.ndarray, float]:
    """`load_audio`, then `resample` to `target_rate`: the same samples, but a file (path or
    bytes) is decoded, downmixed and resampled a block at a time, so that only its mono
    samples at `target_rate` are ever held whole.

    Returns:
        ``(wave, duration_seconds)``: a 1-D float32 array at `target_rate` and the clip's
        duration at its own rate.
    """
    target_rate = check_rate(target_rate, "target sample rate")
    if isinstance(audio, FILE_TYPES):
        wave, rate, frames = _read_file(audio, target_rate)
        return wave, frames / rate
    wave, rate = load_audio(audio, sample_rate)
    return resample(wave, rate, target_rate), wave.size / rate


def _warn_if_unscaled(samples: np.ndarray) -> None:
    with np.errstate(invalid="ignore"):
        peak = float(np.abs(samples).max())
    if peak > LOUDEST_FLOAT_PEAK:
        warn_caller(f"The audio array's samples reach {peak:.6g}, far outside the [-1, 1] audio models expect "
                    f"(integer PCM held as floats?); divide it by its full scale (32768 for 16-bit), or pass the "
                    f"integer array, which vlmedge scales.")


def resample(wave: np.ndarray, orig_sr: int, target_sr: int) -> np.ndarray:
    """Resamples a mono float waveform with soxr's "HQ" quality.

    Returns:
        A float32 array of about ``len(wave) * target_sr / orig_sr`` samples.
    """
    wave = check_wave(wave)
    orig_sr, target_sr = check_rate(orig_sr), check_rate(target_sr, "target sample rate")
    if orig_sr == target_sr:
        return wave
    return np.asarray(soxr.resample(wave, orig_sr, target_sr, quality="HQ"), dtype=np.float32)
