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


SAMPLES = Path(__file__).resolve().parents[1] / "exporters" / "sample_data"


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    import vlmedge

    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("shapes-vit") / "art"
    vlmedge.export("builtin:shapes-vit", out)
    return vlmedge.load(out)


def test_builtin_exports_and_names_the_bundled_samples(exported):
    """Every bundled image is named after its content, colour first, and the exported
    artifact names that colour (the README's first command predicts two of them)."""
    images = sorted(p for p in SAMPLES.iterdir() if p.suffix in (".jpg", ".png"))
    assert len(images) >= 5
    predicted = {p.name: exported.classify(p, top_k=1)[0] for p in images}
    assert {name: pred.label for name, pred in predicted.items()} == {p.name: p.name.split("-")[0] for p in images}
    assert min(pred.score for pred in predicted.values()) >= 0.9, predicted


def test_heldout_accuracy_through_the_exported_artifact(exported):
    """The model card's held-out seed (training drew from seed 0), through ONNX Runtime and the
    torch-free preprocessing: >= 99% of 1,000 images (the card: 99.8% of 2,000)."""
    assert exported.model.backend == "onnxruntime"
    images, labels = train_shapes_vit.make_dataset(1000, train_shapes_vit.HELDOUT_SEED)
    predicted = np.array([p[0].index for p in exported.classify(list(images), top_k=1)])
    accuracy = float((predicted == labels).mean())
    assert accuracy >= 0.99, f"held-out accuracy through the artifact {accuracy:.4f}"
