"""Coverage of vision backbones saved as their base model, exported for image embeddings:
each is made tiny from its own config class with seeded weights, saved with an image
processor, exported (the task inferred from the architecture) and checked from the bundled
sample images against processor -> model: the default embedding (the authors' pooling) and
the patch-token grid at cosine >= 0.99999; or it is refused with a named UnsupportedModelError.
SigLIP2's NaFlex tower is refused without image_size and checked at the one it is given.

The table (architecture, result, worst cosine or the refusal) is printed at the end.
"""

from __future__ import annotations

import numpy as np
import pytest

from tests.clip_models import NAFLEX_SIZE, naflex_images, naflex_inputs, naflex_processor
from tests.test_coverage_image_classification import PROCESSOR, TINY
from vlmedge.errors import UnsupportedModelError

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.filterwarnings("ignore")

_VIT = TINY["vit"]
_CONV = dict(num_stages=2, depths=[1, 1], hidden_sizes=[16, 32])
# architecture -> (model type, config overrides, processor kind, default pooling, what precedes the patches:
#                  a count of prefix tokens, "map" for an (N, D, h, w) feature map, "reroll" for Hiera)
ENCODERS: dict[str, tuple] = {
    "DINOv3ViTModel": ("dinov3_vit", dict(_VIT, num_register_tokens=2), "ViT", "cls", 1 + 2),
    "DINOv3ConvNextModel": ("dinov3_convnext", dict(hidden_sizes=[16, 32], depths=[1, 1]), "ViT", "cls", 1),
    "IJepaModel": ("ijepa", _VIT, "ViT", "mean", 0),
    "ViTMSNModel": ("vit_msn", _VIT, "ViT", "cls", 1),
    "HieraModel": ("hiera", TINY["hiera"], "Bit64", "pooled", "reroll"),
    "Data2VecVisionModel": ("data2vec-vision", dict(_VIT, use_mean_pooling=True), "Beit", "mean", 1),
    "SiglipVisionModel": ("siglip_vision_model", _VIT, "Siglip", "pooled", 0),
    "Siglip2VisionModel": ("siglip2_vision_model", dict(_VIT, num_patches=16), "Siglip2", "pooled", 0),
    "ConvNextModel": ("convnext", _CONV, "ConvNext", "pooled", "map"),
    "ConvNextV2Model": ("convnextv2", _CONV, "ConvNext", "pooled", "map"),
    "Swinv2Model": ("swinv2", TINY["swinv2"], "ViT", "pooled", 0),
    "BitModel": ("bit", TINY["bit"], "Bit", "pooled", "map"),
    "ResNetModel": ("resnet", TINY["resnet"], "ConvNext", "pooled", "map"),
    "CLIPVisionModel": ("clip_vision_model", _VIT, "CLIP", "pooled", 1),
}
# architecture -> words of the expected refusal, exported without options
REFUSED = {"Siglip2VisionModel": "--image-size"}
RESULTS: dict[str, str] = {}


def processor(kind: str):
    if kind == "Siglip2":
        return naflex_processor()
    if kind == "Bit64":
        return transformers.BitImageProcessorPil(size={"shortest_edge": 72}, crop_size={"height": 64, "width": 64})
    return getattr(transformers, f"{kind}ImageProcessorPil")(**PROCESSOR[kind])


def tiny_encoder(arch: str):
    from transformers import CONFIG_MAPPING

    model_type, overrides = ENCODERS[arch][:2]
    torch.manual_seed(0)
    config = CONFIG_MAPPING[model_type](**{"initializer_range": 0.2, **overrides})
    config.architectures = [arch]
    return getattr(transformers, arch)(config).eval()


def hf_reference(model, image_processor, paths, pooling: str, prefix) -> tuple[np.ndarray, np.ndarray]:
    """(embeddings, patch tokens as (N, tokens, D)) from processor -> model, as the authors pool."""
    from transformers.image_utils import load_image

    pixels = image_processor([load_image(str(p)) for p in paths], return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        out = model(pixel_values=pixels, output_hidden_states=prefix == "reroll")
    hidden = out.last_hidden_state
    if prefix == "map":
        tokens = hidden.flatten(2).transpose(1, 2)
    elif prefix == "reroll":
        tokens = out.reshaped_hidden_states[-1].flatten(1, 2)
    else:
        tokens = hidden[:, prefix:]
    embedding = {"cls": lambda: hidden[:, 0], "pooled": lambda: out.pooler_output.flatten(1),
                 "mean": lambda: tokens.mean(1)}[pooling]()
    return embedding.numpy(), tokens.numpy()


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.reshape(len(a), -1).astype(np.float64), b.reshape(len(b), -1).astype(np.float64)
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


@pytest.mark.parametrize("arch", sorted(ENCODERS))
def test_encoder_exports_with_parity_or_is_refused(arch, tmp_path):
    import vlmedge
    from vlmedge.exporters.pipeline import export
    from vlmedge.exporters.samples import sample_images

    torch.set_num_threads(1)
    _, _, kind, pooling, prefix = ENCODERS[arch]
    model, image_processor = tiny_encoder(arch), processor(kind)
    model.save_pretrained(tmp_path / "hf")
    image_processor.save_pretrained(tmp_path / "hf")
    if arch in REFUSED:  # one sentence naming the reason, nothing written
        with pytest.raises(UnsupportedModelError, match=REFUSED[arch]) as info:
            export(str(tmp_path / "hf"), tmp_path / "artifact")
        assert "\n" not in str(info.value).strip() and not (tmp_path / "artifact").exists()
        RESULTS[arch] = f"refused: {info.value}"
        return
    export(str(tmp_path / "hf"), tmp_path / "artifact")
    encoder = vlmedge.load(tmp_path / "artifact")
    assert encoder.task == "image-embedding" and encoder.default_pooling == pooling
    paths = sample_images()
    embeddings, grid = encoder.embed([str(p) for p in paths], patch_tokens=True)
    expected, tokens = hf_reference(model, image_processor, paths, pooling, prefix)
    assert embeddings.shape == expected.shape and grid.shape[0] == len(paths)
    assert cosine(expected, np.roll(expected, 1, axis=0)).min() < 0.9999, f"{arch}: the images embed alike"
    assert grid.reshape(len(paths), -1, grid.shape[-1]).shape == tokens.shape
    worst = min(cosine(embeddings, expected).min(), cosine(grid, tokens).min())
    assert worst >= 0.99999, f"{arch}: cosine {worst:.7f}"
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-5)
    RESULTS[arch] = f"exported: {pooling}, grid {'x'.join(map(str, grid.shape[1:3]))}, min cosine {worst:.7f}"


def test_siglip2_vision_tower_exports_at_the_chosen_resolution(tmp_path):
    """Siglip2VisionModel at image_size=NAFLEX_SIZE against the Siglip2 processor's own output for
    images it resizes to exactly that size: the attention-pooled embedding and the patch grid."""
    import vlmedge
    from vlmedge.exporters.pipeline import export
    from vlmedge.exporters.samples import sample_images

    torch.set_num_threads(1)
    arch = "Siglip2VisionModel"
    model, image_processor = tiny_encoder(arch), processor("Siglip2")
    model.save_pretrained(tmp_path / "hf")
    image_processor.save_pretrained(tmp_path / "hf")
    height, width = NAFLEX_SIZE
    export(str(tmp_path / "hf"), tmp_path / "artifact", image_size=f"{height}x{width}")
    encoder = vlmedge.load(tmp_path / "artifact")
    embedding = encoder.model.artifact.manifest["embedding"]
    assert embedding["image_size"] == [height, width] and embedding["position_embeddings_interpolated"]
    images = naflex_images(sample_images())
    with torch.no_grad():
        out = model(**naflex_inputs(image_processor, images))
    expected, tokens = out.pooler_output.numpy(), out.last_hidden_state.numpy()
    embeddings, grid = encoder.embed(images, patch_tokens=True)
    assert grid.shape[1:3] == (height // 8, width // 8) and embeddings.shape == expected.shape
    assert cosine(expected, np.roll(expected, 1, axis=0)).min() < 0.9999, "the images embed alike"
    worst = min(cosine(embeddings, expected).min(), cosine(grid.reshape(tokens.shape), tokens).min())
    assert worst >= 0.99999, f"{arch}: cosine {worst:.7f}"
    RESULTS[f"{arch} at {height}x{width}"] = f"exported: pooled, grid {height // 8}x{width // 8}, min cosine {worst:.7f}"


def test_counts(capsys):
    """Prints the table and the counts of the runs above (it runs last in this file)."""
    if not RESULTS:
        pytest.skip("no architecture ran")
    exported = sorted(a for a, r in RESULTS.items() if r.startswith("exported"))
    with capsys.disabled():
        print(f"\nimage-encoder coverage: {len(exported)} exported with parity, {len(RESULTS) - len(exported)} refused")
        for arch in sorted(RESULTS):
            print(f"  {arch:30s} {RESULTS[arch][:200]}")
