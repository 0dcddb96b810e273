"""Shared fixtures: tiny Hugging Face models of the real classes with seeded weights,
saved with save_pretrained beside image processors of different kinds, and image files
of varied size, aspect and mode."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.hf_models import FAMILIES, image_processor, tiny_classifier

# No test may reach a model hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Nor write the user's compiled-model cache (~/.cache/vlmedge): every load of the session, and
# of the subprocesses it starts, caches in a folder of its own, removed at exit.
os.environ["VLMEDGE_CACHE_DIR"] = tempfile.mkdtemp(prefix="vlmedge-test-cache-")
atexit.register(shutil.rmtree, os.environ["VLMEDGE_CACHE_DIR"], True)

REPO = Path(__file__).resolve().parent.parent
SAMPLES = REPO / "exporters" / "sample_data"


@pytest.fixture(scope="session")
def hf_classifier_dir(tmp_path_factory):
    """family -> folder with model.safetensors, config.json and preprocessor_config.json."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    made: dict[str, Path] = {}

    def make(family: str) -> Path:
        if family not in made:
            folder = tmp_path_factory.mktemp(f"hf-{family}")
            tiny_classifier(family).save_pretrained(folder)
            image_processor(FAMILIES[family], 32).save_pretrained(folder)
            made[family] = folder
        return made[family]

    return make


@pytest.fixture(scope="session")
def image_files(tmp_path_factory) -> list[Path]:
    """Images of varied size, aspect and mode, as files."""
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(7)

    def noise(h, w, c=3):
        smooth = rng.integers(0, 256, size=(max(h // 8, 2), max(w // 8, 2), c), dtype=np.uint8)
        return np.asarray(Image.fromarray(smooth.squeeze()).resize((w, h), Image.BILINEAR))

    files = []
    for name, array, mode in [
        ("wide.jpg", noise(120, 300), "RGB"),
        ("tall.png", noise(410, 90), "RGB"),
        ("tiny.png", noise(7, 5), "RGB"),
        ("gray.png", noise(64, 80, 1).squeeze(), "L"),
        ("rgba.png", noise(50, 50, 4), "RGBA"),
    ]:
        path = folder / name
        Image.fromarray(array, mode).save(path)
        files.append(path)
    palette = Image.fromarray(noise(40, 60)).convert("P", palette=Image.ADAPTIVE)
    palette.save(folder / "palette.gif")
    files.append(folder / "palette.gif")
    return files + sorted(p for p in SAMPLES.iterdir() if p.suffix.lower() in (".jpg", ".png"))


@pytest.fixture(scope="session")
def vit_artifact(hf_classifier_dir, tmp_path_factory) -> Path:
    """A tiny ViT exported once per session; copy it before changing it."""
    import vlmedge

    out = tmp_path_factory.mktemp("vit-artifact") / "vit"
    vlmedge.export(str(hf_classifier_dir("vit")), out)
    return out


@pytest.fixture(scope="session")
def two_target_artifact(hf_classifier_dir, tmp_path_factory) -> Path:
    """A tiny ViT with ONNX and (when installed) OpenVINO files; copy it before changing it."""
    import importlib.util

    import vlmedge

    targets = ["onnx"] + (["openvino"] if importlib.util.find_spec("openvino") else [])
    out = tmp_path_factory.mktemp("two-target-artifact") / "vit"
    vlmedge.export(str(hf_classifier_dir("vit")), out, to=targets)
    return out


@pytest.fixture
def artifact_copy(vit_artifact, tmp_path) -> Path:
    import shutil

    target = tmp_path / "copy"
    shutil.copytree(vit_artifact, target)
    return target


@pytest.fixture
def cache_dir(tmp_path, monkeypatch) -> Path:
    """A compiled-model cache of the test's own, turned on whatever the environment says."""
    folder = tmp_path / "cache"
    monkeypatch.setenv("VLMEDGE_CACHE_DIR", str(folder))
    monkeypatch.delenv("VLMEDGE_NO_CACHE", raising=False)
    return folder
