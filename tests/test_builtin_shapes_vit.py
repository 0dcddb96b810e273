"""The shipped built-in classifier `builtin:shapes-vit` is a plain Hugging Face model
folder that names the colour of the shape in held-out generated images, and exports."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from vlmedge.exporters.builtin import train_shapes_vit  # noqa: E402

MODEL_DIR = Path(train_shapes_vit.DEFAULT_OUT)


def test_folder_is_a_small_hf_model_folder():
    names = {p.name for p in MODEL_DIR.iterdir()}
    assert {"config.json", "model.safetensors", "preprocessor_config.json", "MODEL_CARD.md"} <= names
    assert sum(p.stat().st_size for p in MODEL_DIR.iterdir()) < 5_000_000
    config = json.loads((MODEL_DIR / "config.json").read_text())
    assert config["architectures"] == ["ViTForImageClassification"]
    assert [config["id2label"][str(i)] for i in range(len(train_shapes_vit.LABELS))] == list(train_shapes_vit.LABELS)


def test_heldout_accuracy_through_the_saved_folder():
    accuracy, per_class = train_shapes_vit.evaluate_saved(MODEL_DIR, 400)
    assert accuracy >= 0.95, per_class


def test_builtin_exports_and_names_the_bundled_samples(tmp_path):
    import vlmedge

    vlmedge.export("builtin:shapes-vit", tmp_path / "art")
    classifier = vlmedge.load(tmp_path / "art")
    samples = Path(__file__).resolve().parents[1] / "exporters" / "sample_data"
    predicted = [classifier.classify(samples / name, top_k=1)[0].label
                 for name in ("red-circle.jpg", "yellow-star.png", "purple-cross-portrait.jpg")]
    assert predicted == ["red", "yellow", "purple"]
