"""open_clip:ARCH exports against open_clip itself: tiny CLIP models from open_clip
model-config JSONs (one CLIP, one SigLIP-style with a logit bias) with seeded weights saved
to safetensors, exported from the file and compared with open_clip's own model and
tokenizer: token ids, image and text embeddings, zero-shot probabilities; the
preprocessing against a Hugging Face Pillow processor configured as open_clip's eval
transform (open_clip's transform itself needs torchvision); refusals by name.

open_clip imports torchvision (and timm) when it loads: the fixture puts
tests/torchvision_standin.py's stand-in in sys.modules for this module only (names the
models' forward never runs; every compared value comes from open_clip's code).
"""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest

from tests.test_sources_timm import odd_images, torchvision_eval_pixels
from tests.torchvision_standin import standin

TEXT = {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}
CONFIGS = {
    "vlmedge-tiny-clip": {"embed_dim": 16, "vision_cfg": {"image_size": 32, "layers": 1, "width": 32,
                                                          "patch_size": 8, "head_width": 16}, "text_cfg": TEXT},
    # a logit bias, as open_clip's SigLIP models have (sigmoid scoring); no "siglip" in the name, which
    # would make open_clip pick its SigLIP tokenizer
    "vlmedge-tiny-biased": {"embed_dim": 16, "init_logit_scale": 2.302585, "init_logit_bias": -1.0,
                            "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8,
                                           "head_width": 16}, "text_cfg": TEXT},
}
LABELS = ["red circle", "yellow star", "purple cross", "green square", "white triangle"]


@pytest.fixture(scope="module")
def open_clip():
    for package in ("open_clip", "timm", "ftfy"):
        if importlib.util.find_spec(package) is None:
            pytest.skip(f"{package} is not installed; install open_clip with `pip install --no-deps open_clip_torch "
                        "timm ftfy wcwidth` (see the README's test command)")
    with standin():
        try:
            import open_clip
        except ImportError as exc:
            pytest.skip(f"open_clip cannot be imported here ({exc})")
        yield open_clip


@pytest.fixture(scope="module")
def exported(open_clip, tmp_path_factory):
    """config name -> (open_clip's own model loaded from the checkpoint, its tokenizer, the Clip, the folder)."""
    import torch
    from safetensors.torch import save_file

    import vlmedge

    made = {}

    def get(name: str):
        if name not in made:
            folder = tmp_path_factory.mktemp(name)
            config = folder / f"{name}.json"
            config.write_text(json.dumps(CONFIGS[name]))
            open_clip.add_model_config(config)
            torch.manual_seed(0)
            source = open_clip.create_model(name)
            save_file({k: v.contiguous() for k, v in source.state_dict().items()}, folder / "model.safetensors")
            out = folder / "artifact"
            vlmedge.export(f"open_clip:{config}", out, checkpoint=folder / "model.safetensors")
            reference = open_clip.create_model(name, pretrained=str(folder / "model.safetensors")).eval()
            made[name] = reference, open_clip.get_tokenizer(name), vlmedge.load(out), out
        return made[name]

    return get


def _images():
    from vlmedge.exporters.samples import sample_images
    from vlmedge.preprocess.image import load_image

    return [load_image(p) for p in sample_images()]


def _normalized(x):
    x = x.detach().numpy().astype(np.float64)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_matches_open_clip(exported, name):
    import torch

    from vlmedge.exporters.sources.hf.clip import sample_captions
    from vlmedge.preprocess.image import preprocess_images

    model, tokenizer, clip, _ = exported(name)
    captions = sample_captions()
    ids = clip.tokenizer.encode(captions)["input_ids"]
    assert np.array_equal(ids, tokenizer(captions).numpy())

    images = _images()
    with torch.no_grad():
        image_ref = _normalized(model.encode_image(torch.from_numpy(preprocess_images(images, clip.image_spec))))
        text_ref = _normalized(model.encode_text(tokenizer(captions)))
        prompts = tokenizer([f"a photo of a {label}." for label in LABELS])
        logits, _ = model.get_logits(torch.from_numpy(preprocess_images(images, clip.image_spec)), prompts)
    assert (clip.embed_images(images) * image_ref).sum(1).min() >= 0.99999
    assert (clip.embed_texts(captions) * text_ref).sum(1).min() >= 0.99999

    sigmoid = model.logit_bias is not None
    expected = torch.sigmoid(logits) if sigmoid else torch.softmax(logits, -1)
    ours = clip.probabilities(images, LABELS, ["a photo of a {}."])
    assert np.abs(ours - expected.numpy()).max() <= 1e-4
    post = clip.model.artifact.manifest["postprocess"]
    assert post["scoring"] == ("sigmoid" if sigmoid else "softmax")
    assert post["logit_scale"] == pytest.approx(float(model.logit_scale.detach().exp()))


def test_pixels_are_open_clips_eval_transform(exported, open_clip):
    from PIL import Image

    from vlmedge.preprocess.image import preprocess_images

    model, _, clip, _ = exported("vlmedge-tiny-clip")
    cfg = open_clip.get_model_preprocess_cfg(model)
    assert cfg["resize_mode"] == "shortest" and cfg["interpolation"] == "bicubic"
    images = _images() + odd_images()
    for image, pixels in zip(images, preprocess_images(images, clip.image_spec)):
        size = cfg["size"][0] if isinstance(cfg["size"], (list, tuple)) else cfg["size"]
        expected = torchvision_eval_pixels(image, size, size, Image.BICUBIC, cfg["mean"], cfg["std"])
        assert np.abs(pixels - expected).max() <= 1e-6


def test_tokenizer_probes(exported, open_clip):
    """Every probe caption open_clip's text repair leaves alone gets open_clip's ids exactly."""
    from vlmedge.exporters.tokenizer import PROBE_TEXTS

    _, tokenizer, clip, _ = exported("vlmedge-tiny-clip")
    plain = [t for t in PROBE_TEXTS if open_clip.tokenizer.basic_clean(t) == t.strip()]
    assert len(plain) > len(PROBE_TEXTS) // 2
    assert np.array_equal(clip.tokenizer.encode(plain)["input_ids"], tokenizer(plain).numpy())


def test_refusals_leave_nothing(open_clip, tmp_path):
    import vlmedge
    from vlmedge.errors import ModelNotFoundError, UnsupportedModelError

    out = tmp_path / "out"
    cases = [
        (dict(model="open_clip:not-an-open-clip-model", checkpoint=__file__), UnsupportedModelError, "has no model"),
        (dict(model="open_clip:ViT-B-32", checkpoint=tmp_path / "missing.pt"), ModelNotFoundError, "does not exist"),
        (dict(model="open_clip:ViT-B-32", checkpoint="openai"), UnsupportedModelError, "never downloads"),
        (dict(model="open_clip:hf-hub:timm/ViT-B-16-SigLIP"), UnsupportedModelError, "never downloads"),
    ]
    for options, error, words in cases:
        with pytest.raises(error, match=words) as caught:
            vlmedge.export(options.pop("model"), out, **options)
        assert "\n" not in str(caught.value)
        assert not out.exists() or not any(out.iterdir())


def test_local_dir_brings_its_preprocessing(open_clip, exported, tmp_path):
    """open_clip:local-dir:FOLDER (a downloaded repository): its open_clip_config.json's
    preprocess_cfg, here squash + bilinear, as open_clip's eval transform applies it."""
    import shutil

    import torch
    from PIL import Image
    from transformers import CLIPImageProcessorPil

    import vlmedge
    from vlmedge.preprocess.image import preprocess_images

    model, _, _, out = exported("vlmedge-tiny-clip")
    folder = tmp_path / "repo"
    folder.mkdir()
    preprocess = {"mean": [0.5] * 3, "std": [0.5] * 3, "interpolation": "bilinear", "resize_mode": "squash"}
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": CONFIGS["vlmedge-tiny-clip"],
                                                              "preprocess_cfg": preprocess}))
    shutil.copyfile(out.parent / "model.safetensors", folder / "open_clip_model.safetensors")
    clip = vlmedge.load(vlmedge.export(f"open_clip:local-dir:{folder}", tmp_path / "out").root)
    images = _images() + odd_images()
    processor = CLIPImageProcessorPil(size={"height": 32, "width": 32}, resample=Image.BILINEAR, do_center_crop=False,
                                      image_mean=[0.5] * 3, image_std=[0.5] * 3, do_convert_rgb=False)
    pixels = preprocess_images(images, clip.image_spec)
    for image, ours in zip(images, pixels):
        assert np.abs(ours - processor(images=image, return_tensors="np")["pixel_values"][0]).max() <= 1e-6
    with torch.no_grad():
        reference = _normalized(model.encode_image(torch.from_numpy(pixels)))
    assert (clip.embed_images(images) * reference).sum(1).min() >= 0.99999
