"""The shipped built-in classifier `builtin:shapes-vit` loads as a plain Hugging Face
model folder and still names the shapes of held-out generated images."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

try:
    from vlmedge.exporters.builtin import shapes
except ImportError:  # not installed: use the checkout's copy
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "exporters" / "builtin"))
    import shapes  # type: ignore[no-redef]

MODEL_DIR = Path(__file__).resolve().parents[1] / "exporters" / "builtin" / "models" / "shapes-vit"
HELDOUT_SEED = 20_000_101  # train_shapes_vit.HELDOUT_SEED; training data uses other seeds
N = 200


@pytest.fixture(scope="module")
def model_and_processor():
    torch.set_num_threads(min(2, torch.get_num_threads()))
    model = transformers.ViTForImageClassification.from_pretrained(MODEL_DIR).eval()
    processor = transformers.AutoImageProcessor.from_pretrained(MODEL_DIR)
    return model, processor


def test_folder_is_a_small_hf_model_folder():
    names = {p.name for p in MODEL_DIR.iterdir()}
    assert {"config.json", "model.safetensors", "preprocessor_config.json", "MODEL_CARD.md"} <= names
    assert sum(p.stat().st_size for p in MODEL_DIR.iterdir()) < 5_000_000
    config = json.loads((MODEL_DIR / "config.json").read_text())
    assert config["model_type"] == "vit"
    assert [config["id2label"][str(i)] for i in range(len(shapes.SHAPES))] == list(shapes.SHAPES)
    pre = json.loads((MODEL_DIR / "preprocessor_config.json").read_text())
    assert pre["size"] == {"height": 64, "width": 64}
    assert pre["image_mean"] == [0.5] * 3 and pre["image_std"] == [0.5] * 3


def test_heldout_accuracy(model_and_processor):
    model, processor = model_and_processor
    rng = np.random.default_rng(HELDOUT_SEED)
    examples = [shapes.random_example(rng, 64) for _ in range(N)]
    inputs = processor(images=[e[0] for e in examples], return_tensors="pt")
    with torch.inference_mode():
        logits = model(**inputs).logits
    preds = [model.config.id2label[int(i)] for i in logits.argmax(-1)]
    accuracy = float(np.mean([p == e[1] for p, e in zip(preds, examples)]))
    assert accuracy >= 0.95, f"held-out accuracy {accuracy:.3f} < 0.95"
