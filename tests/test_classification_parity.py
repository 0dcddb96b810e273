"""Issue 2's check: for each family, from an image file, the artifact's probabilities
equal the Hugging Face reference (load_image -> processor -> model -> softmax)."""

from __future__ import annotations

import numpy as np
import pytest

from tests.hf_models import FAMILIES

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


def hf_probabilities(folder, path) -> np.ndarray:
    from transformers.image_utils import load_image

    processor = transformers.AutoImageProcessor.from_pretrained(folder)
    config = transformers.AutoConfig.from_pretrained(folder)
    model = getattr(transformers, config.architectures[0]).from_pretrained(folder).eval()
    pixels = processor(load_image(str(path)), return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        return model(pixel_values=pixels).logits.softmax(-1).numpy()[0]


@pytest.fixture(scope="module")
def exported(hf_classifier_dir, tmp_path_factory):
    import vlmedge

    made = {}

    def make(family):
        if family not in made:
            out = tmp_path_factory.mktemp(f"artifact-{family}") / "artifact"
            vlmedge.export(str(hf_classifier_dir(family)), out)
            made[family] = out
        return made[family]

    return make


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_probabilities_match_hugging_face(family, exported, hf_classifier_dir, image_files):
    import vlmedge

    classifier = vlmedge.load(exported(family))
    folder = hf_classifier_dir(family)
    for path in image_files:
        expected = hf_probabilities(folder, path)
        got = classifier.probabilities(str(path))[0]
        np.testing.assert_allclose(got, expected, atol=1e-4, err_msg=f"{family} on {path.name}")
        top5 = [p.index for p in classifier.classify(path, top_k=5)]
        assert top5 == list(np.argsort(-expected, kind="stable")[:5]), f"{family} on {path.name}"


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_manifest_records_parity_and_passes_gate(family, exported):
    from vlmedge.artifact import Artifact

    artifact = Artifact.open(exported(family))
    (entry,) = artifact.model_entries()
    report = entry["parity"]
    assert report["passed"] and report["precision"] == "fp32"
    logits = report["outputs"]["logits"]
    assert logits["cosine_min"] >= 0.99999 and logits["max_abs"] <= 1e-3 and logits["top1"] == 1.0
    assert report["samples"] >= 8
