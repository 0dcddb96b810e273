"""vlmedge.preprocess.image: decoding, RGB conversion and HF-identical preprocessing.

Golden tests build Hugging Face Pillow-backend image processors, save them with
save_pretrained, read the JSON back through ``ImagePreprocessSpec.from_hf`` and compare with
``processor(image, return_tensors="np")``; they skip when transformers is absent. The
implementation follows HF's operations and dtypes step for step (measured difference: 0.0),
so the 1e-5 gate only leaves room for float noise.
"""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from vlmedge.errors import ArtifactError, InputError, UnsupportedModelError
from vlmedge.preprocess import image as image_module
import vlmedge.preprocess.image.decode  # noqa: F401  (image_module.decode)
from vlmedge.preprocess.image import ImagePreprocessSpec, load_image, preprocess_images

ATOL = 1e-5
pytestmark = pytest.mark.filterwarnings("ignore:Palette images with Transparency:UserWarning")  # HF's load_image
REPO = Path(__file__).resolve().parent.parent
SIZES = {"tiny-7x5": (5, 7), "landscape-640x480": (480, 640), "portrait-300x1000": (1000, 300)}

# name -> (Pil processor class, kwargs): resize-only, resize + crop, shortest edge + crop, crop_pct, ...
PROCESSORS = {
    "vit-bilinear": ("ViTImageProcessorPil", {}),
    "vit-nearest": ("ViTImageProcessorPil", {"resample": 0, "size": {"height": 97, "width": 131}}),
    "vit-lanczos": ("ViTImageProcessorPil", {"resample": 1}),
    "vit-box": ("ViTImageProcessorPil", {"resample": 4, "size": {"height": 64, "width": 48}}),
    "vit-hamming": ("ViTImageProcessorPil", {"resample": 5}),
    "vit-scalar-mean-zero": ("ViTImageProcessorPil", {"image_mean": 0.0, "image_std": 1.0}),  # 0.0 is not "unset"
    "deit-resize-crop": ("DeiTImageProcessorPil", {}),
    "deit-crop-pads": ("DeiTImageProcessorPil", {"do_resize": False, "crop_size": {"height": 33, "width": 500}}),
    "beit-bicubic": ("BeitImageProcessorPil", {}),
    "bit-shortest-edge": ("BitImageProcessorPil", {}),
    "clip-shortest-edge": ("CLIPImageProcessorPil", {}),
    "clip-longest-edge": ("CLIPImageProcessorPil", {"size": {"shortest_edge": 200, "longest_edge": 250},
                                                    "crop_size": {"height": 190, "width": 230}}),
    "clip-no-normalize": ("CLIPImageProcessorPil", {"do_normalize": False}),
    "clip-no-rescale": ("CLIPImageProcessorPil", {"do_rescale": False}),
    "siglip": ("SiglipImageProcessorPil", {}),
    "convnext-crop-pct": ("ConvNextImageProcessorPil", {"size": {"shortest_edge": 224}}),
    "convnext-384-warp": ("ConvNextImageProcessorPil", {}),
    "levit": ("LevitImageProcessorPil", {}),
    # do_pad with a pad_size: zeros below and right after normalising; classes whose own
    # _preprocess never pads (BEiT) ignore it
    "vit-pad-size": ("ViTImageProcessorPil", {"size": {"height": 64, "width": 48}, "do_pad": True,
                                              "pad_size": {"height": 72, "width": 64}}),
    "clip-longest-edge-pad": ("CLIPImageProcessorPil", {"size": {"shortest_edge": 48, "longest_edge": 64},
                                                        "do_center_crop": False, "do_pad": True,
                                                        "pad_size": {"height": 64, "width": 64}}),
    "poolformer-pad": ("PoolFormerImageProcessorPil", {"size": {"shortest_edge": 48}, "crop_size": {"height": 48, "width": 48},
                                                       "do_pad": True, "pad_size": {"height": 50, "width": 56}}),
    "beit-pad-ignored": ("BeitImageProcessorPil", {"do_pad": True, "pad_size": {"height": 300, "width": 300}}),
}


@pytest.fixture(scope="module")
def hf():
    return pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def processors(hf, tmp_path_factory):
    """name -> (HF processor, spec read back from its saved preprocessor_config.json)."""
    made = {}

    def get(name: str):
        if name not in made:
            cls, kwargs = PROCESSORS[name]
            processor = getattr(hf, cls)(**kwargs)
            folder = tmp_path_factory.mktemp(name)
            processor.save_pretrained(folder)
            config = json.loads((folder / "preprocessor_config.json").read_text())
            made[name] = processor, ImagePreprocessSpec.from_hf(config)
        return made[name]

    return get


def _pattern(h: int, w: int, channels: int = 3, seed: int = 0) -> np.ndarray:
    """Gradients with 30% noise pixels: every resample filter and rounding rule shows in it."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([x * 255 // max(w - 1, 1), y * 255 // max(h - 1, 1), (x + y) % 256, (x * y) % 256], -1)
    noise = rng.integers(0, 256, (h, w, 4))
    return np.where(rng.random((h, w, 1)) < 0.3, noise, base)[..., :channels].astype(np.uint8)


def _mode_image(mode: str) -> tuple[Image.Image, str, dict]:
    """(image, format, save kwargs) for each mode worth checking; 61x47 so nothing is square."""
    rgba = Image.fromarray(_pattern(47, 61, 4))
    if mode == "P-transparency":
        image = rgba.convert("RGB").convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
        return image, "PNG", {"transparency": 3}
    if mode == "I;16":
        return Image.fromarray((_pattern(47, 61, 1)[..., 0].astype(np.uint16) * 300)), "PNG", {}
    if mode == "exif6":
        exif = Image.Exif()
        exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display
        return rgba.convert("RGB"), "JPEG", {"exif": exif, "quality": 90}
    if mode == "CMYK":
        return rgba.convert("CMYK"), "JPEG", {"quality": 90}
    return rgba.convert(mode), "PNG", {}


MODES = ["RGB", "L", "LA", "P", "P-transparency", "RGBA", "CMYK", "I;16", "exif6"]


@pytest.fixture(scope="module")
def mode_files(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("modes")
    files = {}
    for mode in MODES:
        image, fmt, kwargs = _mode_image(mode)
        files[mode] = folder / f"{mode.replace(';', '_')}.{'jpg' if fmt == 'JPEG' else 'png'}"
        image.save(files[mode], fmt, **kwargs)
    return files


@pytest.fixture(scope="module")
def size_files(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("sizes")
    files = {}
    for name, (h, w) in SIZES.items():
        files[name] = folder / f"{name}.png"
        Image.fromarray(_pattern(h, w, seed=h)).save(files[name])
    return files


def _assert_close(ours: np.ndarray, ref: np.ndarray) -> float:
    assert ours.dtype == np.float32 and ours.shape == ref.shape
    diff = float(np.abs(ours.astype(np.float64) - ref).max())
    assert diff <= ATOL
    return diff


# --- HF parity ---------------------------------------------------------------------------


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("name", PROCESSORS)
def test_matches_hf_processor(name, size, processors, size_files, hf):
    processor, spec = processors(name)
    ref = processor(hf.image_utils.load_image(str(size_files[size])), return_tensors="np")["pixel_values"]
    ours = preprocess_images([load_image(size_files[size])], spec)
    _assert_close(ours, ref)
    assert ours.shape[2:] == spec.output_size


@pytest.mark.parametrize("name", ["clip-shortest-edge", "vit-bilinear"])  # do_convert_rgb True / unset
@pytest.mark.parametrize("mode", MODES)
def test_files_and_bytes_follow_hf_load_image(mode, name, mode_files, processors, hf):
    """Files take HF load_image's path: EXIF transpose, then convert("RGB") (alpha dropped)."""
    processor, spec = processors(name)
    path = mode_files[mode]
    hf_image = hf.image_utils.load_image(str(path))
    assert np.array_equal(np.asarray(load_image(path)), np.asarray(hf_image))
    assert np.array_equal(np.asarray(load_image(path.read_bytes())), np.asarray(hf_image))
    with open(path, "rb") as file:  # a binary file object, as PIL.Image.open takes one
        assert np.array_equal(np.asarray(load_image(file)), np.asarray(hf_image))
    assert np.array_equal(np.asarray(load_image(io.BytesIO(path.read_bytes()))), np.asarray(hf_image))
    ref = processor(hf_image, return_tensors="np")["pixel_values"]
    _assert_close(preprocess_images([load_image(str(path))], spec), ref)


@pytest.mark.parametrize("name", ["clip-shortest-edge", "vit-bilinear"])
@pytest.mark.parametrize("mode", MODES)
def test_pil_images_follow_the_pipelines_load_image(mode, name, mode_files, processors, hf):
    """A transformers pipeline passes a PIL image through load_image too (EXIF orientation,
    convert("RGB")), so a file gives one answer whether passed by path or opened."""
    processor, spec = processors(name)
    with Image.open(mode_files[mode]) as opened:
        ours = preprocess_images([load_image(opened)], spec)
        ref = processor(hf.image_utils.load_image(opened), return_tensors="np")["pixel_values"]
    _assert_close(ours, ref)
    _assert_close(ours, preprocess_images([load_image(mode_files[mode])], spec))


def test_exif_orientation_is_applied(mode_files):
    with Image.open(mode_files["exif6"]) as raw:
        assert raw.size == (61, 47)
    assert load_image(mode_files["exif6"]).size == (47, 61)
    plain = Image.new("RGB", (5, 4))
    assert load_image(plain) is plain  # nothing to turn or convert: read as it is, not copied whole per call


def test_alpha_dropped_for_files_and_pil_but_composited_for_arrays(mode_files):
    """load_image (every pipeline's) drops alpha; an RGBA array, which pipelines do not take,
    follows the processor's convert_to_rgb and is composited on white."""
    path = mode_files["RGBA"]
    rgba = np.asarray(Image.open(path))
    assert np.array_equal(np.asarray(load_image(path)), rgba[..., :3])
    assert np.array_equal(np.asarray(load_image(Image.open(path))), rgba[..., :3])
    alpha = rgba[..., 3:] / 255
    composited = alpha * rgba[..., :3] + (1 - alpha) * 255
    assert np.abs(np.asarray(load_image(rgba)).astype(np.float64) - composited).max() <= 1


@pytest.mark.parametrize("channels", [3, 4, 1])
def test_numpy_arrays_match_hf(channels, processors):
    processor, spec = processors("clip-shortest-edge")
    array = _pattern(37, 53, max(channels, 3) if channels != 1 else 1, seed=channels)
    if channels == 4:
        array[..., 3] = np.linspace(0, 255, array.shape[1]).astype(np.uint8)  # every alpha level
    ref = processor(array, return_tensors="np")["pixel_values"]
    _assert_close(preprocess_images([load_image(array)], spec), ref)


def test_numpy_gray_2d_matches_hf_mode_l(processors):
    """HF refuses 2-D arrays; vlmedge reads them as the mode L image they are."""
    processor, spec = processors("vit-bilinear")
    gray = _pattern(40, 30, 1)[..., 0]
    ref = processor(Image.fromarray(gray).convert("RGB"), return_tensors="np")["pixel_values"]
    _assert_close(preprocess_images([load_image(gray)], spec), ref)


@pytest.mark.parametrize("fmt", image_module.FORMATS)
def test_every_allowed_format_decodes_like_hf(fmt, tmp_path, hf):
    path = tmp_path / f"image.{fmt.lower()}"
    Image.fromarray(_pattern(30, 40)).save(path, fmt)
    assert np.array_equal(np.asarray(load_image(path)), np.asarray(hf.image_utils.load_image(str(path))))


def test_old_style_configs_resolve_like_hf(hf, tmp_path, size_files):
    """Int sizes and missing keys get the processor class's defaults, as from_pretrained does."""
    configs = {
        "ViTImageProcessorPil": {"feature_extractor_type": "ViTFeatureExtractor", "size": 96, "resample": 3},
        "CLIPImageProcessorPil": {"image_processor_type": "CLIPImageProcessor", "size": 100, "crop_size": 90},
        "BeitImageProcessorPil": {"image_processor_type": "BeitImageProcessor", "do_center_crop": None,
                                  "do_normalize": None, "image_mean": None},  # null means off
        "DeiTImageProcessorPil": {"image_processor_type": "DeiTImageProcessorFast", "crop_size": [80, 70]},
    }
    for cls, config in configs.items():
        (tmp_path / "preprocessor_config.json").write_text(json.dumps(config))
        processor = getattr(hf, cls).from_pretrained(tmp_path)
        spec = ImagePreprocessSpec.from_hf(config)
        image = load_image(size_files["landscape-640x480"])
        _assert_close(preprocess_images([image], spec), processor(image, return_tensors="np")["pixel_values"])
    assert ImagePreprocessSpec.from_hf(configs["ViTImageProcessorPil"]).size == {"height": 96, "width": 96}
    assert ImagePreprocessSpec.from_hf(configs["CLIPImageProcessorPil"]).size == {"shortest_edge": 100}


@settings(max_examples=300, deadline=None)
@given(h=st.integers(1, 3000), w=st.integers(1, 3000), edge=st.integers(1, 600), extra=st.integers(1, 900))
def test_resize_output_size_matches_hf(h, w, edge, extra):
    hf_transforms = pytest.importorskip("transformers.image_transforms")
    ref = hf_transforms.get_resize_output_image_size(np.zeros((1, h, w)), edge, default_to_square=False,
                                                     input_data_format="channels_first")
    assert image_module.resize_output_size(h, w, {"shortest_edge": edge}) == tuple(ref)
    longest = edge + extra
    ref = hf_transforms.get_size_with_aspect_ratio((h, w), edge, longest)
    if min(ref) < 1:  # transformers' resize then fails on the image; vlmedge says why
        with pytest.raises(InputError, match=rf"The image is {w}x{h} pixels: .* its short side would be under 1 pixel"):
            image_module.resize_output_size(h, w, {"shortest_edge": edge, "longest_edge": longest})
        return
    assert image_module.resize_output_size(h, w, {"shortest_edge": edge, "longest_edge": longest}) == tuple(ref)


@settings(max_examples=200, deadline=None)
@given(h=st.integers(1, 12), w=st.integers(1, 12), ch=st.integers(1, 12), cw=st.integers(1, 12))
def test_center_crop_matches_hf(h, w, ch, cw):
    hf_transforms = pytest.importorskip("transformers.image_transforms")
    array = np.arange(h * w * 3, dtype=np.uint8).reshape(h, w, 3) + 1
    ref = hf_transforms.center_crop(array.transpose(2, 0, 1), (ch, cw), input_data_format="channels_first")
    assert np.array_equal(image_module.center_crop(array, ch, cw), ref.transpose(1, 2, 0))


# --- spec -----------------------------------------------------------------------------------


def _spec(**overrides) -> ImagePreprocessSpec:
    return ImagePreprocessSpec(**{"size": {"height": 24, "width": 32}, **overrides})


def test_spec_round_trips_through_json():
    spec = _spec(do_center_crop=True, crop_size={"height": 16, "width": 16}, resample="bicubic",
                 image_mean=[0.1, 0.2, 0.3], channel_order="BGR", layout="NHWC")
    again = ImagePreprocessSpec.from_dict(json.loads(json.dumps(spec.to_dict())))
    assert again == spec and again.output_size == (16, 16)
    assert _spec().output_size == (24, 32)


def test_bgr_and_nhwc_are_views_of_the_same_values():
    image = Image.fromarray(_pattern(50, 70))
    base = preprocess_images([image, image], _spec())
    assert base.shape == (2, 3, 24, 32) and base.flags.c_contiguous
    other = preprocess_images([image], _spec(channel_order="BGR", layout="NHWC"))
    assert np.array_equal(other[0], base[0].transpose(1, 2, 0)[..., ::-1])


@pytest.mark.parametrize("bad", [{"size": {"height": 2, "width": 2}, "colour": "red"}, {"resample": "bilinear"}, []])
def test_from_dict_rejects_unknown_keys_as_artifact_error(bad):
    with pytest.raises(ArtifactError, match="spec is malformed"):
        ImagePreprocessSpec.from_dict(bad)


def test_from_dict_rejects_bad_values_as_artifact_error():
    with pytest.raises(ArtifactError, match="resample"):
        ImagePreprocessSpec.from_dict({**_spec().to_dict(), "resample": "sinc"})


@pytest.mark.parametrize("overrides, message", [
    ({"size": {"shortest_edge": 224}}, "depend on each image"),
    ({"do_resize": False}, r"depend on each image \(do_resize=False: images keep their own size"),
    ({"do_center_crop": True}, "crop_size is missing"),
    ({"size": {"height": 0, "width": 3}}, "integer values from 1 to 8192"),
    ({"image_std": (0.5, 0.0, 0.5)}, "must not contain 0"),
    ({"image_mean": (0.5, 0.5)}, "three numbers"),
    ({"layout": "CHW"}, "layout"),
    ({"do_normalize": "yes"}, "true or false"),
])
def test_spec_validation(overrides, message):
    with pytest.raises(InputError, match=message):
        _spec(**overrides)


@pytest.mark.parametrize("config, message", [
    ({"image_processor_type": "DPTImageProcessor"}, "DPT"),
    ({"size": 224}, r"names no class \(image_processor_type\)"),
    ({"image_processor_type": "ConvNextImageProcessor", "size": 224, "do_center_crop": True, "crop_size": 200},
     "second centre crop"),
    # transformers divides by it and fails on every image; vlmedge used 224/256 without a word
    ({"image_processor_type": "ConvNextImageProcessor", "size": 224, "crop_pct": None}, "crop_pct is null"),
    ({"image_processor_type": "ConvNextImageProcessor", "size": 224, "crop_pct": 0}, "crop_pct is 0, which"),
    ({"image_processor_type": "CLIPImageProcessor", "do_center_crop": False}, "depend on each image"),
    ({"image_processor_type": "ViTImageProcessor", "resample": None}, "do_resize but no size or resample"),
    ({"image_processor_type": "ViTImageProcessor", "do_resize": False}, r"depend on each image \(do_resize=False: images keep"),
])
def test_from_hf_refuses_what_it_cannot_reproduce(config, message):
    with pytest.raises(UnsupportedModelError, match=message):
        ImagePreprocessSpec.from_hf(config)


def test_a_pad_size_that_cannot_hold_every_image_is_refused(size_files, hf):
    """Padding after a resize that keeps the aspect ratio without a longest edge (or one past
    the pad) leaves most images larger than the pad: transformers refuses them, and the
    export's own parity images with them. Refused with the processor, not image by image."""
    for size, makes in (({"shortest_edge": 64}, "images of any size"),
                        ({"shortest_edge": 64, "longest_edge": 80}, "up to 80x80 pixels")):
        processor = hf.ViTImageProcessorPil(size=size, do_pad=True, pad_size={"height": 72, "width": 64})
        with pytest.raises(UnsupportedModelError, match=rf"pad_size 64x72 does not hold every image the resize and "
                                                        rf"crop make \({makes}\), so most images would be refused"):
            ImagePreprocessSpec.from_hf(processor.to_dict())
    with pytest.raises(ValueError, match="Padding dimensions are negative"):  # transformers refuses such images
        processor(Image.open(size_files["portrait-300x1000"]), return_tensors="np")


def test_a_convnext_crop_pct_is_read_only_where_it_is_used():
    # from a shortest edge of 384 ConvNeXt warps to a square and never reads crop_pct
    spec = ImagePreprocessSpec.from_hf({"image_processor_type": "ConvNextImageProcessor", "size": 384, "crop_pct": None})
    assert spec.size == {"height": 384, "width": 384} and not spec.do_center_crop
    spec = ImagePreprocessSpec.from_hf({"image_processor_type": "ConvNextImageProcessor", "size": 224, "crop_pct": 1.25})
    assert spec.size == {"shortest_edge": 179} and spec.crop_size == {"height": 224, "width": 224}


# --- bad inputs -----------------------------------------------------------------------------


def test_missing_file(tmp_path):
    with pytest.raises(InputError, match=r"nope\.jpg does not exist"):
        load_image(tmp_path / "nope.jpg")


def test_directory(tmp_path):
    with pytest.raises(InputError, match="is a directory"):
        load_image(str(tmp_path))


def test_text_file_named_jpg(tmp_path):
    path = tmp_path / "notes.jpg"
    path.write_text("not an image")
    with pytest.raises(InputError, match=r"notes\.jpg is not a readable JPEG"):
        load_image(path)


def test_format_outside_allowlist(tmp_path):
    path = tmp_path / "icon.ico"
    Image.fromarray(_pattern(16, 16)).save(path)
    with pytest.raises(InputError, match=r"icon\.ico is not a readable"):
        load_image(path)


def test_truncated_jpeg(tmp_path):
    buffer = io.BytesIO()
    Image.fromarray(_pattern(200, 300)).save(buffer, "JPEG")
    path = tmp_path / "cut.jpg"
    path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    with pytest.raises(InputError, match=r"cut\.jpg could not be decoded.*truncated"):
        load_image(path)
    with pytest.raises(InputError, match="image given as bytes could not be decoded"):
        load_image(path.read_bytes())


@pytest.mark.parametrize("side", [10_000, 20_000])  # Pillow warns between 1x and 2x its limit, raises above
def test_decompression_bomb_header(side, tmp_path):
    path = tmp_path / "bomb.ppm"
    path.write_bytes(f"P6 {side} {side} 255\n".encode() + b"\0" * 64)
    with pytest.raises(InputError, match=r"bomb\.ppm is too large"):
        load_image(path)


def test_pixel_limit_is_checked_before_decoding(tmp_path, monkeypatch):
    path = tmp_path / "big.png"
    Image.fromarray(_pattern(48, 64)).save(path)
    monkeypatch.setattr(image_module.decode, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(InputError, match=r"big\.png is too large.*1,000 pixels"):
        load_image(path)


def test_url_is_refused():
    with pytest.raises(InputError, match="does not download"):
        load_image("https://example.com/cat.jpg")


def test_a_file_object_that_cannot_give_bytes_is_one_sentence(tmp_path):
    path = tmp_path / "x.png"
    Image.new("RGB", (4, 4)).save(path)
    with open(path, encoding="latin-1") as text, pytest.raises(InputError, match=(
            rf"^The image file object of {re.escape(str(path))} was opened in text mode; open it in binary mode")):
        load_image(text)
    closed = open(path, "rb")
    closed.close()
    with pytest.raises(InputError, match=r"could not be read \(read of closed file\); pass an open binary file"):
        load_image(closed)
    with pytest.raises(InputError, match=r"^The image file object is not a readable JPEG"):
        load_image(io.BytesIO(b""))


@pytest.mark.parametrize("value", [42, None, [np.zeros((4, 4, 3), np.uint8)]])
def test_unsupported_type(value):
    with pytest.raises(InputError, match="Cannot read an image from a"):
        load_image(value)


@pytest.mark.parametrize("array, message", [
    (np.zeros((8, 8, 5), np.uint8), r"shape .*not \(8, 8, 5\)"),
    (np.zeros((2, 8, 8, 3), np.uint8), r"not \(2, 8, 8, 3\); pass a batch as a list of arrays"),
    (np.zeros((8,), np.uint8), r"not \(8,\)\.$"),
    (np.zeros((8, 8, 3), np.float32), r"dtype uint8 .*pass 0-1 floats as \(array \* 255\)"),
    (np.zeros((8, 8), np.uint16), r"dtype uint8 .*pass 16-bit values as \(array >> 8\)"),
    (np.zeros((3, 8, 9), np.uint8), r"is channels-first; pass array.transpose\(1, 2, 0\)"),
    (np.zeros((0, 8, 3), np.uint8), "empty"),
    (np.zeros((0, 0), np.uint8), "empty"),
])
def test_bad_arrays(array, message):
    with pytest.raises(InputError, match=message):
        load_image(array)


def test_preprocess_images_rejects_non_lists():
    with pytest.raises(InputError, match="non-empty list"):
        preprocess_images([], _spec())
    with pytest.raises(InputError, match="takes PIL images"):
        preprocess_images([np.zeros((4, 4, 3), np.uint8)], _spec())


def test_module_imports_neither_torch_nor_transformers():
    code = ("import sys, vlmedge.preprocess.image; "
            "print([m for m in ('torch', 'transformers') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(REPO)}).stdout
    assert out.strip() == "[]"


def test_an_image_too_long_for_longest_edge_is_an_input_error():
    """Fitted into longest_edge, a 2000x3 image's short side rounds to 0 pixels: transformers'
    resize fails on it (ValueError), vlmedge says why in one sentence (it raised Pillow's
    ValueError, a traceback in the CLI)."""
    spec = ImagePreprocessSpec(size={"shortest_edge": 32, "longest_edge": 48}, do_center_crop=True,
                               crop_size={"height": 32, "width": 32})
    for size in ((2000, 3), (3, 900)):
        with pytest.raises(InputError, match=rf"The image is {size[0]}x{size[1]} pixels: fitted into this model's size "
                                             r"\(.*\), its short side would be under 1 pixel; crop it"):
            preprocess_images([Image.new("RGB", size)], spec)
    assert preprocess_images([Image.new("RGB", (300, 20))], spec).shape == (1, 3, 32, 32)


def test_an_image_whose_resize_would_pass_the_pixel_limit_is_an_input_error():
    """Fitting a very long image's short side to the model's size makes its long side the
    aspect ratio times longer: a 2,000,000x1 image (an 80,000,000x1 PNG is 230 KB) resized to a
    short side of 64 is 128 million pixels wide, which Pillow overflowed on (a traceback) or
    memory ran out for. A Perceiver-style crop beyond the image is bounded alike."""
    spec = ImagePreprocessSpec(size={"shortest_edge": 64}, do_center_crop=True, crop_size={"height": 64, "width": 64})
    for size in ((2_000_000, 1), (1, 2_000_000)):
        with pytest.raises(InputError, match=rf"The image is {size[0]}x{size[1]} pixels: this model's preprocessing "
                                             r"would make it \d+x\d+, more than the [\d,]+ pixels vlmedge handles; crop"):
            preprocess_images([Image.new("RGB", size)], spec)
    assert preprocess_images([Image.new("RGB", (20_000, 10))], spec).shape == (1, 3, 64, 64)
    spec = ImagePreprocessSpec(size={"height": 64, "width": 64}, pre_crop=(5000.0, 5000.0))
    with pytest.raises(InputError, match=r"The image is 40x30 pixels: this model's preprocessing would make it "
                                         r"150000x150000"):
        preprocess_images([Image.new("RGB", (40, 30))], spec)


def test_a_size_beyond_any_processor_is_refused_as_the_artifacts_fault():
    """An edited size of 60,000 before a matching 32x32 crop passed the load's check of the
    output size, then took all of a 23 GB machine's memory on the first photo."""
    for field in ({"size": {"shortest_edge": 60_000}}, {"size": {"height": 32, "width": 32}, "size_divisor": 100_000},
                  {"size": {"height": 32, "width": 32}, "pad_size": {"height": 9000, "width": 9000}}):
        with pytest.raises(ArtifactError, match=r"preprocessing spec is invalid: (size|size_divisor|pad_size) must be "
                                                r".*from 1 to 8192"):
            ImagePreprocessSpec.from_dict({"do_center_crop": True, "crop_size": {"height": 32, "width": 32}, **field})
    largest = {"size": {"shortest_edge": 8192}, "do_center_crop": True, "crop_size": {"height": 32, "width": 32}}
    assert ImagePreprocessSpec.from_dict(largest).size == {"shortest_edge": 8192}


def test_an_image_the_preprocessing_refuses_is_named_among_several(tmp_path):
    """A pipeline named an unreadable file, but not one its preprocessing refused: of several
    files given to predict, which one was too long went unsaid."""
    from vlmedge.tasks.base import pixel_batches

    spec = ImagePreprocessSpec(size={"shortest_edge": 32, "longest_edge": 48}, do_center_crop=True,
                               crop_size={"height": 32, "width": 32})
    Image.new("RGB", (2000, 3)).save(tmp_path / "wide.png")
    Image.new("RGB", (40, 30)).save(tmp_path / "fine.png")
    too_long = r"The image is 2000x3 pixels: fitted into this model's size"
    with pytest.raises(InputError, match=rf"^Image file {tmp_path}/wide.png: {too_long}"):
        list(pixel_batches([str(tmp_path / "fine.png"), str(tmp_path / "wide.png")], spec, None, 32))
    with pytest.raises(InputError, match=rf"^Image 1 of the list: {too_long}"):
        list(pixel_batches([Image.new("RGB", (40, 30)), Image.new("RGB", (2000, 3))], spec, None, 32))
    with pytest.raises(InputError, match=rf"^{too_long}"):
        list(pixel_batches([Image.new("RGB", (2000, 3))], spec, None, 32))
