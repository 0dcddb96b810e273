"""Coverage of vision backbones saved as their base model, exported for image embeddings,
parametrized over transformers' auto mappings: the base model of every model type in the
image-classification and backbone mappings (the vision tower of the two-tower types, and the
Backbone class of types that have no base model), plus the AIMv2 and MLCD vision towers.
Each is made tiny from its own config class with seeded weights, saved with an image
processor, exported (the task inferred from the architecture) and checked from the bundled
sample images against processor -> model: the default embedding (its authors' pooling, as
POOLING states it) and the patch-token grid at cosine >= 0.99999; or it is refused with a
named UnsupportedModelError whose words REFUSED states. An entry in neither fails, so a new
transformers model type shows up here. SigLIP2's NaFlex tower is refused without image_size
and checked at the one it is given.

The table (architecture, result, worst cosine or the refusal) is printed at the end.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.clip_models import NAFLEX_SIZE, naflex_images, naflex_inputs, naflex_processor
from tests.test_coverage_image_classification import (HIERA_LIKE, SQUARE, TINY, processor_for, spread_activations,
                                                      tiny_model)
from vlmedge.errors import UnsupportedModelError

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.filterwarnings("ignore")

_VIT = TINY["vit"]
# Two-tower model types: their image encoder is the vision tower.
VISION_TOWERS = {"clip": "CLIPVisionModel", "siglip": "SiglipVisionModel", "siglip2": "Siglip2VisionModel",
                 "metaclip_2": "MetaClip2VisionModel", "tipsv2": "Tipsv2VisionModel"}
NAMED = {"Aimv2VisionModel": "aimv2", "MLCDVisionModel": "mlcd"}  # vision towers issue 16 names besides the mappings
# architecture -> config overrides, where TINY (by model type) has none for its config class
ENCODER_TINY: dict[str, dict] = {
    "DINOv3ViTModel": dict(_VIT, num_register_tokens=2),
    "DINOv3ConvNextModel": dict(hidden_sizes=[16, 32], depths=[1, 1]),
    "Siglip2VisionModel": dict(_VIT, num_patches=16),
    "Aimv2VisionModel": _VIT, "MLCDVisionModel": _VIT,
    "PixioModel": dict(_VIT, mlp_ratio=2, n_cls_tokens=2),
    "VitDetModel": dict(_VIT, mlp_ratio=2, pretrain_image_size=32),
    "Sapiens2Model": dict(_VIT, num_register_tokens=2),
    "Tipsv2VisionModel": dict(_VIT, mlp_ratio=2, num_register_tokens=1),
    "MaskFormerSwinModel": TINY["swin"],
    # models at sizes where their grid (read from a first run) is 2x2 rather than 1x1; PoolFormer and
    # SegFormer have no image_size, only their processors below are sized
    "LevitModel": dict(TINY["levit"], image_size=128), "PvtModel": dict(TINY["pvt"], image_size=64),
    "EfficientNetModel": dict(TINY["efficientnet"], image_size=64),
    "MobileNetV1Model": dict(TINY["mobilenet_v1"], image_size=64),
    "MobileNetV2Model": dict(TINY["mobilenet_v2"], image_size=64),
    "PvtV2Model": dict(TINY["pvt_v2"], image_size=64), "SwiftFormerModel": dict(TINY["swiftformer"], image_size=64),
    "TextNetModel": dict(TINY["textnet"], image_size=[64, 64]),
}
# sized models that tiny_model would build: their weights and batch-norm statistics spread as it does, at their
# size (seeded as above, EfficientNet's features fade to 1e-22 and TextNet's grow to 1e4)
SPREAD = {"EfficientNetModel", "MobileNetV1Model", "MobileNetV2Model", "PvtV2Model", "SwiftFormerModel",
          "TextNetModel"}
_64 = {"height": 64, "width": 64}
# model type -> its own processor at the size of ENCODER_TINY above
SIZED_PROCESSOR = {"levit": ("Levit", dict(size={"shortest_edge": 128}, crop_size={"height": 128, "width": 128})),
                   "pvt": ("Pvt", dict(size=_64)), "pvt_v2": ("Pvt", dict(size=_64)),
                   "efficientnet": ("EfficientNet", dict(size=_64, rescale_offset=True)),
                   "mobilenet_v1": ("MobileNetV1", dict(size={"shortest_edge": 72}, crop_size=_64)),
                   "mobilenet_v2": ("MobileNetV2", dict(size={"shortest_edge": 72}, crop_size=_64)),
                   "poolformer": ("PoolFormer", dict(size={"shortest_edge": 64}, crop_size=_64)),
                   "segformer": ("Segformer", dict(size=_64)), "swiftformer": ("ViT", dict(size=_64)),
                   "textnet": ("TextNet", dict(size={"shortest_edge": 64}, do_center_crop=True, crop_size=_64))}
# Model types whose processor has no PIL class (torchvision is not installed here) or none at all:
# saved with a ViT processor at the tiny model's 32x32, as are those whose processor needs torchvision.
VIT_PROCESSED = {"dinov3_vit", "dinov3_convnext", "vitdet", "sapiens2", "tipsv2", "tipsv2_vision_model",
                 "maskformer-swin"}
# architecture -> its authors' pooling: what its image classifier pools, or its model card's embedding
POOLING = {
    **dict.fromkeys(["BeitModel", "BitModel", "CLIPVisionModel", "ConvNextModel", "ConvNextV2Model", "DonutSwinModel",
                     "EfficientNetModel", "FocalNetModel", "HieraModel", "LevitModel", "MaskFormerSwinModel",
                     "MetaClip2VisionModel", "MobileNetV1Model", "MobileNetV2Model", "MobileViTModel",
                     "MobileViTV2Model", "PixioModel", "RegNetModel", "ResNetModel", "SiglipVisionModel", "SwinModel",
                     "Swinv2Model", "Aimv2VisionModel", "MLCDVisionModel"], "pooled"),
    **dict.fromkeys(["CvtModel", "DeiTModel", "DINOv3ConvNextModel", "DINOv3ViTModel", "PvtModel", "Sapiens2Model",
                     "Tipsv2VisionModel", "ViTModel", "ViTMSNModel"], "cls"),
    **dict.fromkeys(["Data2VecVisionModel", "IJepaModel", "PoolFormerModel", "PvtV2Model", "SegformerModel",
                     "SwiftFormerModel", "TextNetModel", "VitDetModel"], "mean"),
    **dict.fromkeys(["Dinov2Model", "Dinov2WithRegistersModel"], "cls+mean"),
}
# architecture -> words of the expected refusal, exported without options
REFUSED = {
    **dict.fromkeys(["HGNetV2Backbone", "LwDetrViTBackbone", "PPLCNetBackbone", "PPLCNetV3Backbone",
                     "PPLCNetV4Backbone", "RfDetrDinov2Backbone", "RTDetrResNetBackbone", "UVDocBackbone",
                     "VitPoseBackbone", "TimmBackbone"], "no base model"),
    "DinatModel": "natten", "TimmWrapperModel": "timm", "Siglip2VisionModel": "--image-size",
    "ImageGPTModel": "colour-cluster ids", "PerceiverModel": "Perceiver preprocessor",
    "ShieldGemma2ForImageClassification": "text prompt",
}
RESULTS: dict[str, str] = {}


def encoders() -> list[tuple[str, str]]:
    """(model type, architecture) of every entry of the image-classification and backbone mappings."""
    from transformers.models.auto.modeling_auto import (MODEL_FOR_BACKBONE_MAPPING_NAMES,
                                                        MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES, MODEL_MAPPING_NAMES)

    found: dict[str, str] = {}
    for model_type in [*MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES, *MODEL_FOR_BACKBONE_MAPPING_NAMES]:
        classifier = MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES.get(model_type)
        arch = (VISION_TOWERS.get(model_type) or MODEL_MAPPING_NAMES.get(model_type)
                or MODEL_FOR_BACKBONE_MAPPING_NAMES.get(model_type)
                or (classifier[0] if isinstance(classifier, (tuple, list)) else classifier))
        found.setdefault(arch, model_type)
    for arch, model_type in NAMED.items():
        found.setdefault(arch, model_type)
    return sorted(((model_type, arch) for arch, model_type in found.items()), key=lambda pair: pair[1])


def processor(model_type: str):
    if model_type == "siglip2":
        return naflex_processor()
    if model_type in SIZED_PROCESSOR:
        kind, settings = SIZED_PROCESSOR[model_type]
        return getattr(transformers, f"{kind}ImageProcessorPil")(**settings)
    if model_type not in VIT_PROCESSED:
        cls, settings = processor_for(model_type)
        try:
            return cls(**settings)
        except ImportError:  # a processor class that needs torchvision (PPLCNet)
            pass
    return transformers.ViTImageProcessorPil(size=SQUARE)


def tiny_encoder(model_type: str, arch: str):
    """The tiny seeded model; ImportError where its class needs a package missing here."""
    cls = getattr(transformers, arch)
    if arch not in ENCODER_TINY and cls.config_class.model_type == model_type:
        return tiny_model(model_type, arch, 64 if model_type in HIERA_LIKE else 32)
    torch.manual_seed(0)
    overrides = ENCODER_TINY.get(arch) or TINY[model_type]["vision_config"]
    config = cls.config_class(**{"initializer_range": 0.2, **overrides})
    config.architectures = [arch]
    model = cls(config).eval()
    if arch in SPREAD:
        side = config.image_size if isinstance(config.image_size, int) else config.image_size[0]
        spread_activations(model, side)
    return model


def hf_reference(model, image_processor, paths, pooling: str, grid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(embeddings, patch tokens as (N, tokens, D)) from processor -> model, as the authors pool."""
    from transformers.image_utils import load_image

    pixels = image_processor([load_image(str(p)) for p in paths], return_tensors="pt")["pixel_values"]
    reroll = type(model).__name__ == "HieraModel"  # its tokens are in mask-unit order; the rerolled grid is not
    with torch.no_grad():
        out = model(pixel_values=pixels, **({"output_hidden_states": True} if reroll else {}))
    hidden = out.last_hidden_state
    _, h, w, dim = grid.shape
    if reroll:
        tokens = out.reshaped_hidden_states[-1].flatten(1, 2)
    elif hidden.ndim == 4 and hidden.shape[1] == dim and tuple(hidden.shape[2:]) == (h, w):  # (N, D, h, w)
        tokens = hidden.flatten(2).transpose(1, 2)
    elif hidden.ndim == 4:  # channels last
        tokens = hidden.flatten(1, 2)
    else:  # CLS, registers and other prefix tokens come first
        tokens = hidden[:, hidden.shape[1] - h * w:]
    cls = out.cls_token_value[:, 0] if getattr(out, "cls_token_value", None) is not None else hidden[:, 0]
    embedding = {"cls": lambda: cls, "pooled": lambda: out.pooler_output.flatten(1), "mean": lambda: tokens.mean(1),
                 "cls+mean": lambda: torch.cat([cls, tokens.mean(1)], 1)}[pooling]()
    return embedding.numpy(), tokens.numpy()


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.reshape(len(a), -1).astype(np.float64), b.reshape(len(b), -1).astype(np.float64)
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def saved(model_type: str, arch: str, folder):
    """Saves the tiny model and its processor into `folder`; returns both, or (None, None)
    where the model cannot be built here (then only its config and a processor are saved,
    as for a checkpoint whose class needs a missing package)."""
    try:
        model = tiny_encoder(model_type, arch) if model_type in TINY or arch in ENCODER_TINY else None
    except ImportError:
        model = None
    if model is None:
        folder.mkdir()
        (folder / "config.json").write_text(json.dumps({"model_type": model_type, "architectures": [arch]}))
        transformers.ViTImageProcessorPil(size=SQUARE).save_pretrained(folder)
        return None, None
    image_processor = processor(model_type)
    model.save_pretrained(folder)
    image_processor.save_pretrained(folder)
    return model, image_processor


@pytest.mark.parametrize("model_type, arch", encoders(), ids=[arch for _, arch in encoders()])
def test_encoder_exports_with_parity_or_is_refused(model_type, arch, tmp_path):
    import vlmedge
    from vlmedge.exporters.pipeline import export
    from vlmedge.exporters.samples import sample_images

    torch.set_num_threads(1)
    assert arch in POOLING or arch in REFUSED, f"{arch} ({model_type}) is neither exported nor refused in this test"
    model, image_processor = saved(model_type, arch, tmp_path / "hf")
    # ShieldGemma2 has only its classifier; asked for an image embedding it must say why not.
    task = "image-embedding" if arch.endswith("ForImageClassification") else None
    try:
        export(str(tmp_path / "hf"), tmp_path / "artifact", task=task, to=("onnx", "openvino"))  # both promised
    except UnsupportedModelError as exc:  # one sentence naming the reason, nothing written
        RESULTS[arch] = f"refused: {exc}"
        assert arch in REFUSED, f"{arch} was refused: {exc}"
        assert REFUSED[arch] in str(exc) and "\n" not in str(exc).strip(), str(exc)
        assert not (tmp_path / "artifact").exists()
        return
    assert arch not in REFUSED, f"{arch} exported but the test expects a refusal ({REFUSED[arch]})"
    pooling = POOLING[arch]
    encoder = vlmedge.load(tmp_path / "artifact")
    assert encoder.task == "image-embedding" and encoder.default_pooling == pooling
    absolute = [getattr(model.config, flag, None) for flag in ("use_absolute_position_embeddings", "use_absolute_embeddings")]
    if encoder.info["position_embeddings"] in ("learned", "relative"):  # what the config says, not the family's default
        assert (encoder.info["position_embeddings"] == "relative") == (False in absolute), arch
    assert {e["target"] for e in encoder.model.artifact.model_entries() if e["parity"]["passed"]} == \
        {"onnx", "openvino"}, f"{arch}: a target is missing"
    paths = sample_images()
    embeddings, grid = encoder.embed([str(p) for p in paths], patch_tokens=True)
    expected, tokens = hf_reference(model, image_processor, paths, pooling, grid)
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
    model, image_processor = tiny_encoder("siglip2", arch), processor("siglip2")
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
            print(f"  {arch:36s} {RESULTS[arch][:200]}")
