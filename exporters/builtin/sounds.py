"""Generated short sounds of ten kinds, for the built-in audio tagger.

The data the built-in audio model (``builtin:sounds-ast``) is trained and evaluated on:
1-2 second, 16 kHz, mono float32 clips. Every parameter (frequency, sweep range,
amplitude, rate, duration, fades, background noise) is drawn from a seeded numpy
Generator, so a seed reproduces the same clip exactly. numpy only.
"""

from __future__ import annotations

import numpy as np

CLASSES: tuple[str, ...] = (
    "sine_tone",
    "chirp_up",
    "chirp_down",
    "white_noise",
    "pink_noise",
    "brown_noise",
    "click_train",
    "am_tone",
    "square_wave",
    "silence",
)

SAMPLE_RATE = 16000
MIN_SECONDS = 1.0
MAX_SECONDS = 2.0


def _unit_rms(x: np.ndarray) -> np.ndarray:
    rms = float(np.sqrt(np.mean(x.astype(np.float64) ** 2)))
    return x / rms if rms > 0 else x


def _coloured_noise(rng: np.random.Generator, n: int, exponent: float) -> np.ndarray:
    """Gaussian noise whose power spectrum falls as 1/f**exponent (0 white, 1 pink, 2 brown),
    normalised to unit RMS."""
    spec = np.fft.rfft(rng.standard_normal(n))
    f = np.fft.rfftfreq(n)
    f[0] = f[1] if n > 1 else 1.0  # avoid the DC singularity
    spec = spec / f ** (exponent / 2.0)
    spec[0] = 0.0
    return _unit_rms(np.fft.irfft(spec, n))


def _fade(rng: np.random.Generator, n: int, sample_rate: int) -> np.ndarray:
    """Short random linear fade-in and fade-out envelope (5-60 ms each)."""
    env = np.ones(n)
    for side in (0, 1):
        k = min(n // 4, int(rng.uniform(0.005, 0.06) * sample_rate))
        if k <= 1:
            continue
        ramp = np.linspace(0.0, 1.0, k)
        if side == 0:
            env[:k] *= ramp
        else:
            env[-k:] *= ramp[::-1]
    return env


def _sweep(rng: np.random.Generator, t: np.ndarray, f_start: float, f_end: float) -> np.ndarray:
    """Sine sweep from f_start to f_end over the clip, linear or exponential at random."""
    dur = t[-1] if len(t) > 1 else 1.0
    if rng.random() < 0.5:  # linear
        k = (f_end - f_start) / dur
        phase = 2 * np.pi * (f_start * t + 0.5 * k * t**2)
    else:  # exponential
        ratio = f_end / f_start
        phase = 2 * np.pi * f_start * dur / np.log(ratio) * (ratio ** (t / dur) - 1.0)
    return np.sin(phase + rng.uniform(0, 2 * np.pi))


def _source(name: str, rng: np.random.Generator, n: int, sample_rate: int) -> np.ndarray:
    """The clean signal of one class, unit RMS (silence excepted: returns zeros)."""
    t = np.arange(n) / sample_rate
    nyq = sample_rate / 2
    if name == "sine_tone":
        f = np.exp(rng.uniform(np.log(100), np.log(min(5000, 0.6 * nyq))))
        x = np.sin(2 * np.pi * f * t + rng.uniform(0, 2 * np.pi))
    elif name in ("chirp_up", "chirp_down"):
        lo = np.exp(rng.uniform(np.log(150), np.log(1500)))
        hi = lo * np.exp(rng.uniform(np.log(2.0), np.log(min(12.0, 0.8 * nyq / lo))))
        x = _sweep(rng, t, lo, hi) if name == "chirp_up" else _sweep(rng, t, hi, lo)
    elif name == "white_noise":
        x = _coloured_noise(rng, n, 0.0)
    elif name == "pink_noise":
        x = _coloured_noise(rng, n, 1.0)
    elif name == "brown_noise":
        x = _coloured_noise(rng, n, 2.0)
    elif name == "click_train":
        rate = rng.uniform(3.0, 30.0)
        period = sample_rate / rate
        x = np.zeros(n)
        click_len = int(rng.integers(8, 48))  # 0.5-3 ms decaying burst
        burst = rng.standard_normal(click_len) * np.exp(-np.arange(click_len) / (click_len / 4))
        pos = rng.uniform(0, period)
        while pos < n:
            i = int(pos)
            m = min(click_len, n - i)
            x[i : i + m] += burst[:m] * rng.uniform(0.7, 1.0)
            pos += period * rng.uniform(0.9, 1.1)  # a little jitter
        x = _unit_rms(x)
    elif name == "am_tone":
        # a pulsing tone: the carrier amplitude-modulated by a soft-edged square wave
        # (2-6 Hz, duty 40-60 %, 5-20 ms edges) to a depth of 90-100 %
        fc = np.exp(rng.uniform(np.log(150), np.log(4000)))
        fm = rng.uniform(2.0, 6.0)
        duty = rng.uniform(0.4, 0.6)
        depth = rng.uniform(0.9, 1.0)
        gate = (((t * fm + rng.uniform()) % 1.0) < duty).astype(np.float64)
        k = max(1, int(rng.uniform(0.005, 0.02) * sample_rate))
        gate = np.convolve(gate, np.ones(k) / k, mode="same")
        mod = 1.0 - depth * (1.0 - gate)
        x = _unit_rms(mod * np.sin(2 * np.pi * fc * t + rng.uniform(0, 2 * np.pi)))
    elif name == "square_wave":
        # band-limited square wave: odd harmonics below Nyquist, amplitude 1/k
        f = np.exp(rng.uniform(np.log(80), np.log(1200)))
        phase = 2 * np.pi * f * t + rng.uniform(0, 2 * np.pi)
        x = np.zeros(n)
        k = 1
        while k * f < 0.95 * nyq:
            x += np.sin(k * phase) / k
            k += 2
        x = _unit_rms(x)
    elif name == "silence":
        x = np.zeros(n)
    else:
        raise ValueError(f"unknown sound class {name!r}; expected one of {CLASSES}")
    return x


def synthesize(
    name: str,
    rng: np.random.Generator,
    sample_rate: int = SAMPLE_RATE,
    seconds: float | None = None,
) -> np.ndarray:
    """One clip of class ``name`` as float32 in [-1, 1].

    ``seconds`` defaults to a random duration in [1, 2] s. The signal gets a random level
    (RMS 0.02-0.3), short random fades and a little coloured background noise 18-40 dB
    below it; ``silence`` is very low-level noise only (RMS ~3e-5 to 3e-4).
    """
    if name not in CLASSES:
        raise ValueError(f"unknown sound class {name!r}; expected one of {CLASSES}")
    if seconds is None:
        seconds = float(rng.uniform(MIN_SECONDS, MAX_SECONDS))
    n = max(1, int(round(seconds * sample_rate)))
    bg = _coloured_noise(rng, n, float(rng.uniform(0.0, 2.0)))
    if name == "silence":
        wave = bg * 10 ** rng.uniform(-4.5, -3.5)
    else:
        level = 10 ** rng.uniform(np.log10(0.02), np.log10(0.3))
        snr_db = rng.uniform(18.0, 40.0)
        sig = _source(name, rng, n, sample_rate) * _fade(rng, n, sample_rate)
        wave = level * sig + level * 10 ** (-snr_db / 20) * bg
    return np.clip(wave, -1.0, 1.0).astype(np.float32)


def random_example(
    rng: np.random.Generator,
    sample_rate: int = SAMPLE_RATE,
    seconds: float | None = None,
) -> tuple[np.ndarray, str]:
    """A clip of a uniformly drawn class: ``(wave, class_name)``."""
    name = CLASSES[int(rng.integers(len(CLASSES)))]
    return synthesize(name, rng, sample_rate, seconds), name


# Rates a recording may come at. The runtime resamples every clip to the model's 16 kHz, so a
# clip recorded at 8 kHz (11.025 kHz) reaches the model band-limited to 4 kHz (5.5 kHz).
RECORDING_RATES: tuple[int, ...] = (8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000)


def recording(
    name: str,
    rng: np.random.Generator,
    seconds: float | None = None,
) -> tuple[np.ndarray, int]:
    """A clip of class ``name`` as a file would hold it: ``(samples, rate)``.

    The training-time augmentation of the built-in tagger, for files like its bundled samples
    (a 22.05 kHz stereo FLAC, an 8 kHz WAV): the clip is synthesised at a random rate of :data:`RECORDING_RATES` (16 kHz a
    third of the time), at a random gain (-10..+6 dB, clipped to [-1, 1]); half the clips
    are stereo, (samples, 2), whose channels the runtime averages; and 30 % of the non-silent
    clips carry a second, quieter sound of another class (14-30 dB below the first by RMS,
    after the downmix), in one channel when stereo. The label stays ``name``.
    Returns float32 in [-1, 1]; the caller downmixes and resamples to 16 kHz as the runtime does.
    """
    rate = SAMPLE_RATE if rng.random() < 1 / 3 else int(rng.choice([r for r in RECORDING_RATES if r != SAMPLE_RATE]))
    main = synthesize(name, rng, rate, seconds).astype(np.float64)
    n = len(main)
    other = np.zeros(n)
    if name != "silence" and rng.random() < 0.3:
        kind = CLASSES[int(rng.choice([i for i, c in enumerate(CLASSES) if c not in (name, "silence")]))]
        o = synthesize(kind, rng, rate, seconds=n / rate).astype(np.float64)[:n]
        rms_main = float(np.sqrt(np.mean(main**2))) or 1.0
        rms_o = float(np.sqrt(np.mean(o**2))) or 1.0
        other[: len(o)] = o * rms_main / rms_o * 10 ** (-rng.uniform(14.0, 30.0) / 20)
    gain = 10 ** (rng.uniform(-10.0, 6.0) / 20)
    if rng.random() < 0.5:  # stereo: the second sound in one channel only, twice as loud, so the mean is the same
        side = other * 2.0
        pair = [main, main + side] if rng.random() < 0.5 else [main + side, main]
        wave = np.stack(pair, axis=1) * gain
    else:
        wave = (main + other) * gain
    return np.clip(wave, -1.0, 1.0).astype(np.float32), rate
