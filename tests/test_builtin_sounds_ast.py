"""The shipped built-in audio tagger ``builtin:sounds-ast`` loads with transformers and
classifies held-out generated sounds."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
MODEL_DIR = ROOT / "exporters" / "builtin" / "models" / "sounds-ast"

try:
    from vlmedge.exporters.builtin import sounds
except ImportError:
    sys.path.insert(0, str(ROOT / "exporters" / "builtin"))
    import sounds  # type: ignore[no-redef]

# must match train_sounds_ast.held_out_seed(0): training used default_rng(0), held-out default_rng(10000)
HELD_OUT_SEED = 10_000


def test_sounds_generator_is_seeded_and_well_formed():
    assert len(sounds.CLASSES) == 10 and len(set(sounds.CLASSES)) == 10
    for name in sounds.CLASSES:
        a = sounds.synthesize(name, np.random.default_rng(1))
        b = sounds.synthesize(name, np.random.default_rng(1))
        assert a.dtype == np.float32 and a.ndim == 1
        assert 16000 <= len(a) <= 32000
        assert np.array_equal(a, b)
        assert np.all(np.isfinite(a)) and np.abs(a).max() <= 1.0
    wave, label = sounds.random_example(np.random.default_rng(2), seconds=1.5)
    assert label in sounds.CLASSES and len(wave) == 24000
    with pytest.raises(ValueError):
        sounds.synthesize("trumpet", np.random.default_rng(0))


def test_shipped_folder_is_small_and_complete():
    names = {p.name for p in MODEL_DIR.iterdir()}
    assert {"config.json", "model.safetensors", "preprocessor_config.json", "MODEL_CARD.md"} <= names
    assert sum(p.stat().st_size for p in MODEL_DIR.iterdir()) < 5 * 1024 * 1024
    cfg = json.loads((MODEL_DIR / "config.json").read_text())
    assert cfg["architectures"] == ["ASTForAudioClassification"]
    assert cfg["problem_type"] == "single_label_classification"
    assert [cfg["id2label"][str(i)] for i in range(len(sounds.CLASSES))] == list(sounds.CLASSES)


def test_shipped_model_classifies_held_out_sounds():
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    torch.set_num_threads(2)

    extractor = transformers.ASTFeatureExtractor.from_pretrained(MODEL_DIR)
    model = transformers.ASTForAudioClassification.from_pretrained(MODEL_DIR).eval()
    assert extractor.sampling_rate == 16000

    rng = np.random.default_rng(HELD_OUT_SEED)
    labels = np.arange(100) % len(sounds.CLASSES)
    rng.shuffle(labels)
    waves = [sounds.synthesize(sounds.CLASSES[i], rng) for i in labels]

    feats = extractor(waves, sampling_rate=16000, return_tensors="pt")
    with torch.no_grad():
        pred = model(**feats).logits.argmax(-1).numpy()
    names = [model.config.id2label[int(i)] for i in pred]
    acc = float(np.mean([n == sounds.CLASSES[t] for n, t in zip(names, labels)]))
    assert acc >= 0.93, f"held-out accuracy {acc:.3f}"
