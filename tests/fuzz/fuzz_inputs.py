"""Coverage-guided fuzzing of vlmedge's input parsers with atheris (libFuzzer for Python).

    python tests/fuzz/fuzz_inputs.py TARGET [libFuzzer flags] [CORPUS_DIR]

TARGET is one of: image, audio, caption, manifest, onnx. Every input must end in a
VlmedgeError or a well-formed result; any other exception is reported by libFuzzer as a
crash (with the input saved under -artifact_prefix), a hang past -timeout as a timeout.
An empty CORPUS_DIR is filled with real seed files first. See tests/fuzz/README.md.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

import atheris

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
TARGETS = ("image", "audio", "caption", "manifest", "onnx")

with atheris.instrument_imports(include=["vlmedge"]):
    import numpy as np

    import vlmedge
    from vlmedge.errors import VlmedgeError
    from vlmedge.preprocess.audio import AudioPreprocessSpec, fbank, load_audio, resample
    from vlmedge.preprocess.image import ImagePreprocessSpec, load_image, preprocess_images
    from vlmedge.preprocess.text import TextTokenizer, clean_text
    from vlmedge.runtimes.onnx_external import check_external_data

WORK = Path(tempfile.mkdtemp(prefix="vlmedge-atheris-"))
IMAGE_SPEC = ImagePreprocessSpec(size={"height": 32, "width": 32})
AUDIO_SPEC = AudioPreprocessSpec(num_mel_bins=16, max_length=32)


def seeds(target: str) -> list[bytes]:
    """Real files to start from: the fuzz tests' seeds (every image format, WAV/FLAC
    variants), captions, a real manifest and a real ONNX file."""
    if target == "image":
        from tests.hardening_support import image_seeds

        return image_seeds()
    if target == "audio":
        from tests.hardening_support import audio_seeds

        return audio_seeds()
    if target == "caption":
        lines = (REPO / "exporters" / "sample_data" / "captions.txt").read_text(encoding="utf-8").splitlines()
        return [line.encode("utf-8") for line in lines if line] + ["\ud800x".encode("utf-8", "surrogatepass")]
    if target == "manifest":
        return [(_artifact() / "manifest.json").read_bytes()]
    return [(_artifact() / "onnx" / "model.fp32.onnx").read_bytes()]


_ARTIFACT: list[Path] = []


def _artifact() -> Path:
    if not _ARTIFACT:
        from tests.hardening_support import tiny_classifier_artifact

        _ARTIFACT.append(tiny_classifier_artifact(WORK / "pristine"))
    return _ARTIFACT[0]


def fuzz_image(data: bytes) -> None:
    try:
        pixels = preprocess_images([load_image(data)], IMAGE_SPEC)
    except VlmedgeError:
        return
    assert pixels.shape == (1, 3, 32, 32) and np.isfinite(pixels).all()


def fuzz_audio(data: bytes) -> None:
    try:
        wave, rate = load_audio(data)
        features = fbank(resample(wave, rate, AUDIO_SPEC.sampling_rate), AUDIO_SPEC)
    except VlmedgeError:
        return
    assert wave.ndim == 1 and np.isfinite(wave).all() and np.isfinite(features).all()


_TOKENIZER: list = []


def fuzz_caption(data: bytes) -> None:
    if not _TOKENIZER:
        from tests.hardening_support import write_tokenizer

        spec = write_tokenizer(WORK / "tokenizer", context_length=8)
        tokenizer = TextTokenizer(WORK / "tokenizer" / "tokenizer.json", spec)
        _TOKENIZER.extend([tokenizer, tokenizer._new_slot().tok])
    tokenizer, reference = _TOKENIZER
    provider = atheris.FuzzedDataProvider(data)
    texts = [provider.ConsumeUnicode(provider.ConsumeIntInRange(0, 4000)) for _ in range(provider.ConsumeIntInRange(1, 3))]
    try:
        encoded = tokenizer.encode(texts)
    except VlmedgeError:
        return
    expected = reference.encode_batch([clean_text(t) for t in texts])
    assert encoded["input_ids"].tolist() == [e.ids for e in expected]


def fuzz_manifest(data: bytes) -> None:
    root = WORK / "playground"
    if not root.exists():
        shutil.copytree(_artifact(), root)
    (root / "manifest.json").write_bytes(data)
    try:
        pipeline = vlmedge.load(root)
        if pipeline.task == "image-classification":
            pipeline.classify(np.zeros((8, 8, 3), np.uint8))
    except VlmedgeError:
        return


def fuzz_onnx(data: bytes) -> None:
    folder = WORK / "onnx-model" / "onnx"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.onnx").write_bytes(data)
    try:
        check_external_data(folder / "model.onnx", folder.parent)
    except VlmedgeError:
        return


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] not in TARGETS:
        sys.exit(f"usage: {sys.argv[0]} {{{'|'.join(TARGETS)}}} [libFuzzer flags] [CORPUS_DIR]")
    target = sys.argv.pop(1)
    corpora = [Path(a) for a in sys.argv[1:] if not a.startswith("-")]
    for corpus in corpora:
        corpus.mkdir(parents=True, exist_ok=True)
        if not any(corpus.iterdir()):
            for i, seed in enumerate(seeds(target)):
                (corpus / f"seed-{i:02d}").write_bytes(seed)
    atheris.Setup(sys.argv, globals()[f"fuzz_{target}"])
    try:
        atheris.Fuzz()
    finally:
        shutil.rmtree(WORK, ignore_errors=True)


if __name__ == "__main__":
    main()
