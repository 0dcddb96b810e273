"""Issue 9: property-based fuzzing of every input vlmedge parses.

Targets: image bytes (mutated real JPEG, PNG, GIF, TIFF, BMP, WEBP, PPM files), WAV/FLAC
bytes (mutated real headers and data), manifest JSON (structurally and byte-wise mutated
real manifests) and captions (any Python string, lone surrogates included). Each case may
end in a VlmedgeError or in a correct result, nothing else: another exception, a hang
past the case's time limit, or a wrong result fails the test (a crash fails the run).

Examples per target: VLMEDGE_FUZZ_EXAMPLES (200 by default); e.g.
    VLMEDGE_FUZZ_EXAMPLES=5000 pytest tests/test_hardening_fuzz.py
Coverage-guided runs of the same targets: tests/fuzz/README.md (atheris).
"""

from __future__ import annotations

import copy
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import vlmedge
from vlmedge.errors import VlmedgeError
from vlmedge.preprocess.audio import MAX_SAMPLE_RATE, MIN_SAMPLE_RATE, AudioPreprocessSpec, fbank, load_audio, resample
from vlmedge.preprocess.image import ImagePreprocessSpec, load_image, preprocess_images
from vlmedge.preprocess.text import TextTokenizer, clean_text
from tests.hardening_support import (FUZZ_EXAMPLES, REPO, audio_seeds, image_seeds, mutate_bytes, time_limit,
                                     write_tokenizer)

SAMPLES = REPO / "exporters" / "sample_data"
FUZZ = settings(max_examples=FUZZ_EXAMPLES, deadline=None, database=None, derandomize=False,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                       HealthCheck.data_too_large, HealthCheck.filter_too_much])
CASE_SECONDS = 30
RAN: dict[str, int] = {}


def _count(target: str) -> None:
    RAN[target] = RAN.get(target, 0) + 1


# Mutations: up to 6 (kind, position, value) edits; half the positions fall in the first 96
# bytes, where headers, chunk sizes and dimensions live.
_position = st.one_of(st.integers(0, 95), st.integers(0, 1 << 20))
MUTATIONS = st.lists(st.tuples(st.integers(0, 5), _position, st.integers(0, 255)), min_size=1, max_size=6)


# -- images -------------------------------------------------------------------------------------

IMAGE_SEEDS = image_seeds()
IMAGE_SPEC = ImagePreprocessSpec(size={"height": 32, "width": 32}, do_center_crop=True, crop_size={"height": 24, "width": 24})


@FUZZ
@given(seed=st.sampled_from(range(len(IMAGE_SEEDS))), ops=MUTATIONS)
def test_mutated_image_bytes(seed, ops):
    data = mutate_bytes(IMAGE_SEEDS[seed], ops)
    _count("image")
    try:
        with time_limit(CASE_SECONDS):
            image = load_image(data)
            pixels = preprocess_images([image], IMAGE_SPEC)
    except VlmedgeError:
        return
    assert image.mode == "RGB" and image.width >= 1 and image.height >= 1
    assert pixels.shape == (1, 3, 24, 24) and pixels.dtype == np.float32 and np.isfinite(pixels).all()


def test_unmutated_image_seeds_decode():
    for data in IMAGE_SEEDS:
        assert load_image(data).mode == "RGB"


# -- audio --------------------------------------------------------------------------------------

AUDIO_SEEDS = audio_seeds()
AUDIO_SPEC = AudioPreprocessSpec(num_mel_bins=16, max_length=32)


@FUZZ
@given(seed=st.sampled_from(range(len(AUDIO_SEEDS))), ops=MUTATIONS)
def test_mutated_audio_bytes(seed, ops):
    data = mutate_bytes(AUDIO_SEEDS[seed], ops)
    _count("audio")
    try:
        with time_limit(CASE_SECONDS):
            wave, rate = load_audio(data)
            features = fbank(resample(wave, rate, AUDIO_SPEC.sampling_rate), AUDIO_SPEC)
    except VlmedgeError:
        return
    assert wave.ndim == 1 and wave.dtype == np.float32 and wave.size > 0 and np.isfinite(wave).all()
    assert MIN_SAMPLE_RATE <= rate <= MAX_SAMPLE_RATE  # the loader's own bounds (a mutated header named 7,808 Hz)
    assert features.shape == (32, 16) and np.isfinite(features).all()


def test_unmutated_audio_seeds_decode():
    for data in AUDIO_SEEDS:
        wave, rate = load_audio(data)
        assert wave.size > 0


# -- manifests ----------------------------------------------------------------------------------

_STRINGS = st.sampled_from(["", "/etc/passwd", "../outside.onnx", "onnx/../../x", "onnx/model.fp32.onnx",
                            "samples/parity.npz", "manifest.json", "\x00", "onnx", "model", "fp32", "openvino",
                            "image-classification", "clip", "audio-classification", "softmax", "sigmoid", "batch"])
_SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-2, 2 ** 40), st.floats(allow_nan=True, allow_infinity=True),
                     st.text(max_size=12), _STRINGS)
JSON_VALUES = st.recursive(_SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                            st.dictionaries(st.one_of(_STRINGS, st.text(max_size=6)),
                                                                            inner, max_size=3)), max_leaves=6)


@st.composite
def mutated_manifests(draw, base: dict) -> dict:
    """1-3 edits at random places: replace a value, delete a key or item, add a key."""
    manifest = copy.deepcopy(base)
    for _ in range(draw(st.integers(1, 3))):
        parent, key = None, None
        node = manifest
        while isinstance(node, (dict, list)) and node and (parent is None or draw(st.booleans())):
            keys = sorted(node) if isinstance(node, dict) else list(range(len(node)))
            parent, key = node, draw(st.sampled_from(keys))
            node = parent[key]
        if parent is None:
            continue
        action = draw(st.sampled_from(["replace", "replace", "delete", "add"]))
        if action == "replace":
            parent[key] = draw(JSON_VALUES)
        elif action == "delete":
            del parent[key]
        elif isinstance(parent, dict):
            parent[draw(st.one_of(_STRINGS, st.text(max_size=6)))] = draw(JSON_VALUES)
        else:
            parent.append(draw(JSON_VALUES))
    return manifest


@pytest.fixture(scope="module")
def manifest_playground(vit_artifact, tmp_path_factory):
    """A copy of the tiny ViT artifact whose manifest.json each example rewrites, and the real manifest."""
    root = tmp_path_factory.mktemp("manifest-fuzz") / "artifact"
    shutil.copytree(vit_artifact, root)
    return root, json.loads((root / "manifest.json").read_text())


_IMAGE = np.random.default_rng(3).integers(0, 255, (20, 28, 3), dtype=np.uint8)


def _load_and_run(root: Path) -> None:
    """`vlmedge info`, `vlmedge check` and load + classify, as a user would run them."""
    from vlmedge.check import check_artifact
    from vlmedge.cli import inspection

    try:
        with time_limit(CASE_SECONDS):
            with inspection.console.capture():
                inspection.info(root, as_json=False)
            for report in check_artifact(root):
                assert report["passed"] in (True, False, None)
            pipeline = vlmedge.load(root)
            if pipeline.task != "image-classification":
                return
            predictions = pipeline.classify(_IMAGE, top_k=3)
    except VlmedgeError:
        return
    assert 1 <= len(predictions) <= 3
    for p in predictions:
        assert isinstance(p.label, str) and 0 <= p.index < len(pipeline.labels)
        assert math.isfinite(p.score) and 0.0 <= p.score <= 1.0


def test_mutated_manifests(manifest_playground):
    root, base = manifest_playground

    @FUZZ
    @given(manifest=mutated_manifests(base))
    def run(manifest):
        _count("manifest")
        (root / "manifest.json").write_text(json.dumps(manifest))
        _load_and_run(root)

    run()
    (root / "manifest.json").write_text(json.dumps(base))
    _load_and_run(root)  # the playground itself is intact


def test_mutated_manifest_bytes(manifest_playground):
    root, base = manifest_playground
    text = json.dumps(base, indent=2).encode()

    @FUZZ
    @given(ops=MUTATIONS)
    def run(ops):
        _count("manifest-bytes")
        (root / "manifest.json").write_bytes(mutate_bytes(text, ops))
        _load_and_run(root)

    run()
    (root / "manifest.json").write_text(json.dumps(base))


# -- captions -----------------------------------------------------------------------------------

# Any code point: hypothesis leaves lone surrogates out unless asked for them by category.
# (A mapped strategy, because text() merges character strategies and drops "Cs" again.)
ANY_CHAR = st.one_of(st.characters(exclude_categories=()), st.integers(0xD800, 0xDFFF).map(chr))
CAPTIONS = st.one_of(
    st.text(ANY_CHAR, max_size=120),
    st.text(st.sampled_from("a b\u0301 .日本\ud800\udc00\U0001F431\x00<eos>"), max_size=60),
    # long captions take the prefix shortcut, which must not change the result
    st.tuples(st.text(ANY_CHAR, min_size=1, max_size=40), st.integers(60, 400)).map(lambda t: t[0] * t[1]),
)


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory) -> TextTokenizer:
    folder = tmp_path_factory.mktemp("caption-fuzz")
    spec = write_tokenizer(folder, context_length=8)
    return TextTokenizer(folder / "tokenizer.json", spec)


def test_captions(tokenizer):
    reference = tokenizer._new_slot().tok  # same truncation and padding, never the prefix shortcut

    @FUZZ
    @given(texts=st.one_of(CAPTIONS, st.lists(CAPTIONS, min_size=1, max_size=4)))
    def run(texts):
        _count("caption")
        try:
            with time_limit(CASE_SECONDS):
                encoded = tokenizer.encode(texts)
        except VlmedgeError:
            return
        batch = [texts] if isinstance(texts, str) else texts
        expected = reference.encode_batch([clean_text(t) for t in batch])
        assert encoded["input_ids"].shape == (len(batch), 8) and encoded["input_ids"].dtype == np.int64
        assert encoded["input_ids"].tolist() == [e.ids for e in expected]
        assert encoded["attention_mask"].tolist() == [e.attention_mask for e in expected]

    run()


def test_surrogates_are_generated():
    """The caption strategy really produces lone surrogates (hypothesis leaves them out by default)."""
    found = []

    @settings(max_examples=300, database=None, deadline=None)
    @given(st.text(ANY_CHAR, min_size=1, max_size=20))
    def probe(text):
        if any(0xD800 <= ord(ch) <= 0xDFFF for ch in text):
            found.append(text)

    probe()
    assert found


def test_fuzz_iterations_ran():
    """Runs last in this module: every target saw its examples (the count goes in the report)."""
    ran = {k: v for k, v in RAN.items()}
    print(f"\nfuzz examples per target: {ran}")
    for target in ("image", "audio", "manifest", "manifest-bytes", "caption"):
        assert ran.get(target, 0) >= min(FUZZ_EXAMPLES, 50), (target, ran)
