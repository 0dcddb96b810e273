"""The shipped `builtin:shapes-clip` folder loads with plain transformers and does zero-shot.

Fast (a few seconds on 2 CPU cores): 100 fresh images, 8 shape prompts, one forward pass.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

REPO = Path(__file__).resolve().parents[1]
MODEL_DIR = REPO / "exporters" / "builtin" / "models" / "shapes-clip"

try:
    from vlmedge.exporters.builtin import shapes
except ImportError:
    sys.path.insert(0, str(REPO / "exporters" / "builtin"))
    import shapes  # type: ignore[no-redef]

pytestmark = pytest.mark.skipif(not (MODEL_DIR / "model.safetensors").exists(), reason="shapes-clip not trained yet")

SHAPE_PROMPT = "a photo of a {shape}."  # as in zero_shot_eval.SHAPE_PROMPT
EVAL_SEED = 20_240_611  # not a training seed


@pytest.fixture(scope="module")
def loaded():
    from transformers import CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    torch.set_num_threads(min(2, torch.get_num_threads()))
    model = CLIPModel.from_pretrained(MODEL_DIR).eval()
    processor = CLIPProcessor.from_pretrained(MODEL_DIR)
    # the parts load on their own too
    CLIPTokenizer.from_pretrained(MODEL_DIR)
    CLIPImageProcessor.from_pretrained(MODEL_DIR)
    return model, processor


def test_folder_contents_and_size():
    names = {p.name for p in MODEL_DIR.iterdir()}
    for required in ("config.json", "model.safetensors", "tokenizer.json", "vocab.json", "merges.txt", "MODEL_CARD.md"):
        assert required in names, required
    assert names & {"preprocessor_config.json", "processor_config.json"}
    total = sum(p.stat().st_size for p in MODEL_DIR.iterdir() if p.is_file())
    assert total < 8 * 1024 * 1024


def test_tokenizer_is_clip_like(loaded):
    _, processor = loaded
    tok = processor.tokenizer
    assert tok.bos_token == "<|startoftext|>" and tok.eos_token == "<|endoftext|>" and tok.pad_token == "<|endoftext|>"
    ids = tok("A Photo of a HEXAGON.")["input_ids"]
    assert ids == tok("a photo of a hexagon.")["input_ids"]  # lower-cases
    assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id
    for word in shapes.SHAPES + tuple(shapes.COLORS) + tuple(shapes.SIZES):
        assert len(tok.tokenize(word)) == 1, word
    # any text tokenizes through byte-level pieces, never to unk
    odd = tok("Ünïcödé ✓ — zebra?")["input_ids"]
    assert tok.unk_token_id not in odd[1:-1]
    config = json.loads((MODEL_DIR / "config.json").read_text())
    assert config["text_config"]["eos_token_id"] == tok.eos_token_id
    assert config["text_config"]["vocab_size"] == len(tok)


def test_towers_load_on_their_own(loaded):
    """Exporters split CLIP into its towers: the *WithProjection classes must build the same embeddings."""
    from transformers import CLIPTextModelWithProjection, CLIPVisionModelWithProjection

    model, processor = loaded
    image, *_ = shapes.random_example(np.random.default_rng(1), 64)
    inputs = processor(text=["a photo of a star."], images=[image], return_tensors="pt", padding=True)
    with torch.no_grad():
        full = model(**inputs)
        vision = CLIPVisionModelWithProjection.from_pretrained(MODEL_DIR).eval()(pixel_values=inputs["pixel_values"])
        text = CLIPTextModelWithProjection.from_pretrained(MODEL_DIR).eval()(
            input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]
        )
    norm = lambda t: t / t.norm(dim=-1, keepdim=True)  # noqa: E731
    torch.testing.assert_close(norm(vision.image_embeds), full.image_embeds, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(norm(text.text_embeds), full.text_embeds, atol=1e-5, rtol=1e-4)


def test_shape_zero_shot_accuracy(loaded):
    model, processor = loaded
    rng = np.random.default_rng(EVAL_SEED)
    images, labels = [], []
    for _ in range(100):
        image, shape, _color, _size = shapes.random_example(rng, 64)
        images.append(image)
        labels.append(shapes.SHAPES.index(shape))
    prompts = [SHAPE_PROMPT.format(shape=s) for s in shapes.SHAPES]
    inputs = processor(text=prompts, images=images, return_tensors="pt", padding=True)
    with torch.no_grad():
        probs = model(**inputs).logits_per_image.softmax(dim=-1)
    assert probs.shape == (100, 8)
    accuracy = float((probs.argmax(-1).numpy() == np.array(labels)).mean())
    assert accuracy >= 0.9, f"shape zero-shot accuracy {accuracy:.2f} (chance 0.125; the model card: 0.962)"


# Through the exported artifact (ONNX Runtime, torch-free preprocessing and tokenizer), as a user
# runs it: the README's demos are `vlmedge predict out/shapes-clip IMAGE --labels red,green,...`
# (the colours; also what `vlmedge export` suggests next) and `--labels circle,square,...`.
SAMPLES = REPO / "exporters" / "sample_data"
COLOR_LABELS = ",".join(shapes.COLORS)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    import vlmedge

    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("shapes-clip") / "shapes-clip"
    vlmedge.export("builtin:shapes-clip", out)
    return out


def test_colour_zero_shot_accuracy_through_the_exported_artifact(exported):
    """>= 95% colour and >= 90% shape on 300 fresh images (the model card: 100.0% and 96.2%
    through the saved folder), with the CLI's default template."""
    import vlmedge

    clip = vlmedge.load(exported)
    assert clip.model.backend == "onnxruntime"
    rng = np.random.default_rng(EVAL_SEED)
    examples = [shapes.random_example(rng, 64) for _ in range(300)]
    images = [e[0] for e in examples]
    colours = clip.zero_shot(images, list(shapes.COLORS), ["a photo of a {}."], top_k=1)
    colour_accuracy = float(np.mean([p[0].label == e[2] for p, e in zip(colours, examples)]))
    assert colour_accuracy >= 0.95, f"colour zero-shot accuracy through the artifact {colour_accuracy:.3f}"
    shapes_ = clip.zero_shot(images, list(shapes.SHAPES), ["a photo of a {}."], top_k=1)
    shape_accuracy = float(np.mean([p[0].label == e[1] for p, e in zip(shapes_, examples)]))
    assert shape_accuracy >= 0.9, f"shape zero-shot accuracy through the artifact {shape_accuracy:.3f}"


@pytest.mark.parametrize("labels, word, least_score", [(COLOR_LABELS, 0, 0.9), (",".join(shapes.SHAPES), 1, 0.8)],
                         ids=["colour", "shape"])
def test_cli_names_the_colour_and_the_shape_of_every_bundled_sample(exported, labels, word, least_score):
    """`vlmedge predict ARTIFACT IMAGE... --labels red,green,...` names each bundled image's
    colour, the first word of its file name; `--labels circle,square,...` its shape, the second."""
    from tests.test_cli import vlmedge_cli

    images = sorted(p for p in SAMPLES.iterdir() if p.suffix in (".jpg", ".png"))
    assert len(images) >= 5
    result = vlmedge_cli("predict", exported, *images, "--labels", labels, "--top-k", "1", "--json")
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    answers = {Path(r["input"]).name: r["predictions"][0] for r in rows}
    assert {name: p["label"] for name, p in answers.items()} == {p.name: p.stem.split("-")[word] for p in images}
    assert min(p["score"] for p in answers.values()) >= least_score, answers
