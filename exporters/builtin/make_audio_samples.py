"""Writes exporters/sample_data/audio/: the real audio files every audio export runs parity
on and bundles in its artifact. Varied sample rate, channel count, format and length on
purpose, so decoding, downmixing and resampling are all exercised.

    python -m vlmedge.exporters.builtin.make_audio_samples   (or python exporters/builtin/make_audio_samples.py)
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import soundfile as sf

try:
    from vlmedge.exporters.builtin import sounds
except ImportError:  # run as a script from the repository
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import sounds  # type: ignore[no-redef]

OUT = Path(__file__).resolve().parent.parent / "sample_data" / "audio"


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(2025)
    # 16 kHz mono 16-bit WAV: the rate AST models expect, so no resampling.
    chirp = sounds.synthesize("chirp_up", rng, 16000, seconds=1.5)
    sf.write(OUT / "chirp-up-16k-mono.wav", chirp, 16000, subtype="PCM_16")
    # 22.05 kHz stereo FLAC: resampled and downmixed; the channels differ (tone left, tone + clicks right).
    left = sounds.synthesize("am_tone", rng, 22050, seconds=1.2)
    right = 0.7 * left + 0.3 * sounds.synthesize("click_train", rng, 22050, seconds=1.2)
    sf.write(OUT / "am-tone-22k-stereo.flac", np.stack([left, right], axis=1), 22050, subtype="PCM_16")
    # 8 kHz mono 24-bit WAV: upsampled. (Not float WAV: libsndfile stamps its PEAK chunk with
    # the time of writing, so the file would differ on every run.)
    noise = sounds.synthesize("pink_noise", rng, 8000, seconds=2.0)
    sf.write(OUT / "pink-noise-8k-24bit.wav", noise, 8000, subtype="PCM_24")


if __name__ == "__main__":
    main()
