"""Every image processor class of transformers' image-classification and zero-shot
image-classification mappings is either reproduced bit for bit by vlmedge's preprocessing
(read from the processor's saved configuration, as an export reads it) or refused by name.

The reference is the class's Pillow processor (``processor(load_image(path))``), run on
files of every mode (L, LA, P, RGBA, CMYK, I;16, EXIF orientation) and of small, wide and
tall sizes; the comparison is exact (float32 equality). DINOv3's processor, which exists only
for torchvision and resizes the float image, is reproduced to float32 rounding (its tests below).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from tests.test_preprocess_image import MODES, _mode_image, _pattern
from vlmedge.errors import UnsupportedModelError
from vlmedge.preprocess.image import ImagePreprocessSpec, load_image, preprocess_images

transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.filterwarnings("ignore:Palette images with Transparency:UserWarning")

# Small settings per class (the class defaults resize to up to 2560 pixels), plus variants
# that switch on the class's own steps; name -> (class kind, kwargs).
VARIANTS = {
    "Beit": {"size": {"height": 40, "width": 36}, "do_center_crop": True, "crop_size": {"height": 30, "width": 30}},
    "Bit": {"size": {"shortest_edge": 40}, "crop_size": {"height": 32, "width": 32}},
    "CLIP": {"size": {"shortest_edge": 40}, "crop_size": {"height": 32, "width": 28}},
    "ConvNext": {"size": {"shortest_edge": 48}, "crop_pct": 0.8},
    "ConvNext-warp": {"size": {"shortest_edge": 400}},
    "DeiT": {"size": {"height": 40, "width": 40}, "crop_size": {"height": 32, "width": 32}},
    "ViT": {"size": {"height": 31, "width": 45}},
    "Donut": {"size": {"height": 64, "width": 48}},
    "Donut-align-nearest": {"size": {"height": 48, "width": 64}, "do_align_long_axis": True, "resample": 0},
    "EfficientNet": {"size": {"height": 40, "width": 40}},
    "EfficientNet-offset-crop": {"size": {"height": 40, "width": 40}, "rescale_offset": True, "do_center_crop": True,
                                 "crop_size": {"height": 33, "width": 33}},
    "Levit": {"size": {"shortest_edge": 40}, "crop_size": {"height": 36, "width": 36}},
    "MobileNetV1": {"size": {"shortest_edge": 40}, "crop_size": {"height": 36, "width": 36}},
    "MobileNetV2": {"size": {"shortest_edge": 40}, "crop_size": {"height": 36, "width": 36}},
    "MobileViT": {"size": {"shortest_edge": 40}, "crop_size": {"height": 44, "width": 44}},
    "MobileViT-normalize-rgb": {"size": {"shortest_edge": 40}, "crop_size": {"height": 32, "width": 32},
                                "do_flip_channel_order": False, "do_normalize": True},
    "Perceiver": {"size": {"height": 40, "width": 40}, "crop_size": {"height": 48, "width": 44}},
    "PoolFormer": {"size": {"shortest_edge": 40}, "crop_size": {"height": 40, "width": 40}},
    "PoolFormer-hw": {"size": {"height": 40, "width": 32}, "crop_size": {"height": 36, "width": 30}},
    "Pvt": {"size": {"height": 40, "width": 36}},
    "Segformer": {"size": {"height": 40, "width": 36}},
    "Gemma3": {"size": {"height": 40, "width": 36}},
    "Siglip": {"size": {"height": 40, "width": 36}},
    "TextNet-crop": {"size": {"shortest_edge": 40}, "do_center_crop": True, "crop_size": {"height": 32, "width": 32}},
    "Blip": {"size": {"height": 40, "width": 36}},
    "ChineseCLIP": {"size": {"shortest_edge": 40}, "crop_size": {"height": 32, "width": 32}},
    # the pixels ImageGPT's processor clusters (the exported graph does the clustering)
    "ImageGPT": {"size": {"height": 40, "width": 36}, "do_color_quantize": False},
}
# Classes refused whatever their settings, and the words of the reason.
REFUSED = {"Siglip2": "depends on the image", "TimmWrapper": "timm",
           "PPLCNet": "torchvision", "Tipsv2": "torchvision", "Sapiens2": "torchvision"}
# Default settings refused because the output size would depend on the image.
REFUSED_DEFAULTS = {"TextNet": "depend on each image"}


def mapped_processor_classes() -> set[str]:
    """Processor classes (without backend suffix) of the two mappings' model types."""
    from transformers.models.auto.image_processing_auto import IMAGE_PROCESSOR_MAPPING_NAMES
    from transformers.models.auto.modeling_auto import (MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES,
                                                        MODEL_FOR_ZERO_SHOT_IMAGE_CLASSIFICATION_MAPPING_NAMES)

    kinds = set()
    for mapping in (MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES, MODEL_FOR_ZERO_SHOT_IMAGE_CLASSIFICATION_MAPPING_NAMES):
        for model_type in mapping:
            for name in (IMAGE_PROCESSOR_MAPPING_NAMES.get(model_type) or {}).values():
                kinds.add(name.removesuffix("Pil").removesuffix("ImageProcessor"))
    return kinds


def test_every_mapped_class_is_reproduced_or_refused():
    covered = {name.split("-")[0] for name in VARIANTS} | set(REFUSED)
    assert mapped_processor_classes() <= covered, sorted(mapped_processor_classes() - covered)


def _saved_spec(kind: str, kwargs: dict, folder):
    from vlmedge.exporters.sources.hf.processor import image_preprocess

    processor = getattr(transformers, f"{kind}ImageProcessorPil")(**kwargs)
    processor.save_pretrained(folder)
    return processor, image_preprocess(folder)


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> list:
    folder = tmp_path_factory.mktemp("class-images")
    paths = []
    for mode in MODES:
        image, fmt, kwargs = _mode_image(mode)
        paths.append(folder / f"{mode.replace(';', '_')}.{'jpg' if fmt == 'JPEG' else 'png'}")
        image.save(paths[-1], fmt, **kwargs)
    for h, w in ((5, 7), (90, 200), (300, 70), (64, 48)):
        paths.append(folder / f"{h}x{w}.png")
        Image.fromarray(_pattern(h, w, seed=h)).save(paths[-1])
    return paths


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_processor_class_is_reproduced_bit_for_bit(name, files, tmp_path):
    from transformers.image_utils import load_image as hf_load_image

    processor, spec = _saved_spec(name.split("-")[0], VARIANTS[name], tmp_path)
    spec = ImagePreprocessSpec.from_dict(json.loads(json.dumps(spec.to_dict())))  # as an artifact stores it
    for path in files:
        expected = np.asarray(processor(hf_load_image(str(path)), return_tensors="np")["pixel_values"])
        ours = preprocess_images([load_image(path)], spec)
        assert ours.dtype == np.float32 and ours.shape == expected.shape, (name, path.name)
        assert np.array_equal(ours, expected), (name, path.name, float(np.abs(ours - expected).max()))


@pytest.mark.parametrize("name", ["Donut", "Donut-align-nearest"])
def test_an_image_too_thin_for_donuts_thumbnail_is_an_input_error_naming_its_size(name, tmp_path):
    """A 2x500 image shrinks to under one pixel in Donut's thumbnail (transformers fails on it
    too): it was Pillow's ValueError, a traceback in the command line; it is an InputError
    naming the image's size as given, not as the resize before the thumbnail made it."""
    from vlmedge.errors import InputError

    _, spec = _saved_spec("Donut", VARIANTS[name], tmp_path)
    thin = Image.fromarray(np.full((2, 500, 3), 128, np.uint8))
    with pytest.raises(InputError, match=r"^The image is 500x2 pixels: fitted into this model's size .* its short "
                                         r"side would be under 1 pixel; crop it to a less extreme aspect ratio\.$"):
        preprocess_images([thin], spec)


# DINOv3's processor exists only for torchvision (no Pillow class) and rescales before resizing:
# name -> the preprocessor_config.json it is saved with (as the Hub's DINOv3 checkpoints ship it).
DINOV3 = {
    "bilinear": {"image_processor_type": "DINOv3ViTImageProcessorFast", "do_resize": True, "resample": 2,
                 "size": {"height": 40, "width": 36}, "do_rescale": True, "rescale_factor": 1 / 255,
                 "do_normalize": True, "image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225],
                 "do_center_crop": None, "crop_size": None, "do_convert_rgb": None},
    "bicubic-defaults": {"image_processor_type": "DINOv3ViTImageProcessor", "resample": 3,
                         "size": {"height": 33, "width": 47}},
}


def dinov3_reference(path, config: dict) -> np.ndarray:
    """(3, H, W) of DINOv3ViTImageProcessor._preprocess's steps on HF's load_image(path), run with
    the torch kernels torchvision calls for them (torchvision is not installed here): the uint8
    tensor times rescale_factor, `resize` = interpolate(antialias=True) on the float tensor
    (left as it is at the same size), `normalize` = (x - mean) / std in float32; the class's
    defaults where the config leaves a key out."""
    import torch
    from transformers.image_utils import load_image as hf_load_image

    c = {"size": {"height": 224, "width": 224}, "resample": 2, "rescale_factor": 1 / 255,
         "image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225], **config}
    image = torch.from_numpy(np.array(hf_load_image(str(path)))).permute(2, 0, 1)[None]
    image = image * c["rescale_factor"]
    size = [c["size"]["height"], c["size"]["width"]]
    if list(image.shape[-2:]) != size:
        mode = {2: "bilinear", 3: "bicubic"}[c["resample"]]
        image = torch.nn.functional.interpolate(image, size=size, mode=mode, align_corners=False, antialias=True)
    mean, std = (torch.tensor(c[k], dtype=torch.float32)[:, None, None] for k in ("image_mean", "image_std"))
    return ((image[0] - mean) / std).numpy()


@pytest.mark.parametrize("name", sorted(DINOV3))
def test_dinov3_torchvision_processor_is_reproduced_to_float32_rounding(name, files, tmp_path):
    """Not bit for bit: the float resize is Pillow's 32-bit float mode, which sums in double
    where torch sums in float32; every value within 1e-4 of the reference (their range is +-2.6)."""
    pytest.importorskip("torch")
    from vlmedge.exporters.sources.hf.processor import image_preprocess

    (tmp_path / "preprocessor_config.json").write_text(json.dumps(DINOV3[name]))
    spec = ImagePreprocessSpec.from_dict(json.loads(json.dumps(image_preprocess(tmp_path).to_dict())))
    assert spec.resize_after_rescale
    for path in files:
        expected = dinov3_reference(path, DINOV3[name])
        ours = preprocess_images([load_image(path)], spec)[0]
        assert ours.dtype == np.float32 and ours.shape == expected.shape, (name, path.name)
        assert float(np.abs(ours - expected).max()) <= 1e-4, (name, path.name, float(np.abs(ours - expected).max()))


def test_dinov3_with_a_centre_crop_is_refused(tmp_path):
    from vlmedge.exporters.sources.hf.processor import image_preprocess

    config = {**DINOV3["bilinear"], "do_center_crop": True, "crop_size": {"height": 32, "width": 32}}
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(config))
    with pytest.raises(UnsupportedModelError, match="do_center_crop=False"):
        image_preprocess(tmp_path)


# Classes whose value steps differ (plain, offset and std twice, BGR without normalizing, none),
# at the 16x16 size of the image below, so that resizing leaves every byte as it is.
EVERY_BYTE_VARIANTS = {
    "ViT": {}, "EfficientNet": {"rescale_offset": True}, "MobileViT": {"crop_size": {"height": 16, "width": 16}},
    "ImageGPT": {"do_color_quantize": False},
    "CLIP": {"crop_size": {"height": 16, "width": 16}, "image_mean": [0.1, 0.9, 0.4]},
}


@pytest.mark.parametrize("kind", sorted(EVERY_BYTE_VARIANTS))
def test_every_byte_value_of_every_channel_is_rescaled_and_normalized_bit_for_bit(kind, tmp_path):
    """preprocess_images looks the values of rescale and normalize up in a per-channel table of
    the 256 bytes: an image holding each byte once in each channel (in three orders) checks it."""
    size = {"shortest_edge": 16} if kind in ("MobileViT", "CLIP") else {"height": 16, "width": 16}
    processor, spec = _saved_spec(kind, {"size": size, **EVERY_BYTE_VARIANTS[kind]}, tmp_path)
    ramp = np.arange(256, dtype=np.uint8)
    rng = np.random.default_rng(1)
    image = Image.fromarray(np.stack([ramp, ramp[::-1], rng.permutation(ramp)], -1).reshape(16, 16, 3))
    expected = np.asarray(processor(image, return_tensors="np")["pixel_values"])
    ours = preprocess_images([image, image], spec)
    assert ours.shape == (2,) + expected.shape[1:]
    assert np.array_equal(ours[0], expected[0]) and np.array_equal(ours[1], expected[0])


@pytest.mark.parametrize("kind", sorted(REFUSED))
def test_processor_class_is_refused_by_name(kind, tmp_path):
    from vlmedge.exporters.sources.hf.processor import image_preprocess

    (tmp_path / "preprocessor_config.json").write_text(f'{{"image_processor_type": "{kind}ImageProcessor"}}')
    with pytest.raises(UnsupportedModelError, match=f"{kind}.*{REFUSED[kind]}"):
        image_preprocess(tmp_path)


def test_a_processor_config_naming_no_class_takes_the_class_of_the_model_type(tmp_path):
    """AutoImageProcessor reads a config without image_processor_type as the class of the
    model's type (config.json's model_type); so does the export. Without either, the refusal
    says what is missing (it read "the image processor 'of unknown type'")."""
    from vlmedge.exporters.sources.hf.processor import image_preprocess

    config = {"size": {"height": 48, "width": 32}, "resample": 3, "image_mean": [0.2, 0.3, 0.4]}
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(config))
    (tmp_path / "config.json").write_text('{"model_type": "vit"}')
    named = tmp_path / "named"
    named.mkdir()
    (named / "preprocessor_config.json").write_text(json.dumps({**config, "image_processor_type": "ViTImageProcessor"}))
    assert image_preprocess(tmp_path).to_dict() == image_preprocess(named).to_dict()
    processor = transformers.ViTImageProcessorPil.from_dict(config)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 50, 3), dtype=np.uint8))
    np.testing.assert_array_equal(preprocess_images([image], image_preprocess(tmp_path)),
                                  processor(image, return_tensors="np")["pixel_values"])
    (tmp_path / "config.json").write_text('{"model_type": "no-such-type"}')
    with pytest.raises(UnsupportedModelError, match=r"^The image processor config names no class \(image_processor_type\)"
                                                    r" and the model's type does not imply one; save the processor"):
        image_preprocess(tmp_path)


@pytest.mark.parametrize("kind", sorted(REFUSED_DEFAULTS))
def test_default_settings_that_vary_per_image_are_refused(kind, tmp_path):
    with pytest.raises(UnsupportedModelError, match=f"{kind}.*{REFUSED_DEFAULTS[kind]}"):
        _saved_spec(kind, {}, tmp_path)


def test_gemma3_pan_and_scan_is_refused(tmp_path):
    with pytest.raises(UnsupportedModelError, match="pan-and-scan"):
        _saved_spec("Gemma3", {"do_pan_and_scan": True}, tmp_path)


def test_a_manifest_without_the_new_steps_still_loads():
    """Specs written before the steps some processors add (pre_crop, canvas ...) load as before."""
    old = {"do_resize": True, "size": {"height": 8, "width": 8}, "resample": "bicubic", "do_center_crop": False,
           "crop_size": None, "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
           "image_mean": [0.5] * 3, "image_std": [0.5] * 3, "do_convert_rgb": True, "channel_order": "RGB",
           "layout": "NCHW"}
    spec = ImagePreprocessSpec.from_dict(old)
    assert spec.pre_crop is None and spec.canvas is None and not (spec.thumbnail or spec.rescale_offset)


def test_a_resample_written_as_a_string_is_refused_naming_pillows_number(files, tmp_path):
    """transformers' Pil processors run any resample that is not Pillow's number as bilinear:
    "bicubic" in a hand-edited config was honoured, 0.024 off transformers' probabilities."""
    as_string, bilinear, bicubic = (transformers.ViTImageProcessorPil(size={"height": 16, "width": 16}, resample=r)
                                    for r in ("bicubic", 2, 3))
    pixels = [p(Image.open(files[0]), return_tensors="np")["pixel_values"] for p in (as_string, bilinear, bicubic)]
    np.testing.assert_array_equal(pixels[0], pixels[1])
    assert not np.allclose(pixels[0], pixels[2])
    with pytest.raises(UnsupportedModelError, match=r"gives resample as the string 'bicubic', which transformers' image "
                                                    r"processors run as bilinear .*Pillow's number .*\(3 for bicubic\)"):
        _saved_spec("ViT", {"size": {"height": 16, "width": 16}, "resample": "bicubic"}, tmp_path)
