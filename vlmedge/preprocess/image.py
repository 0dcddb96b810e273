"""Image preprocessing: decode, convert to RGB, resize, crop, rescale, normalise.

Reproduces the Pillow backend of Hugging Face image processors (``PilBackend`` and
``image_transforms``) with numpy and Pillow only, step for step and dtype for dtype, so
the runtime matches the source model's processor to float noise without torch.
"""

from __future__ import annotations

import dataclasses
import io
import math
import os
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageOps

from vlmedge.errors import ArtifactError, InputError, UnsupportedModelError

# Pillow's decompression-bomb limit, checked by vlmedge itself before decoding.
MAX_IMAGE_PIXELS: int = Image.MAX_IMAGE_PIXELS or 89_478_485
FORMATS = ("JPEG", "PNG", "BMP", "GIF", "TIFF", "WEBP", "PPM")
# What one image may be when a pipeline is given a single input rather than a list
# (a uint8 numpy array of up to 3 dimensions is one image too: see tasks.base.as_list).
IMAGE_TYPES = (str, bytes, os.PathLike, Image.Image)
_RESAMPLE = {"nearest": 0, "lanczos": 1, "bilinear": 2, "bicubic": 3, "box": 4, "hamming": 5}
_RESAMPLE_NAMES = {v: k for k, v in _RESAMPLE.items()}  # PIL's int codes, as HF configs store them
_SIZE_KEYS = ({"height", "width"}, {"shortest_edge"}, {"shortest_edge", "longest_edge"})

_CLIP_MEAN, _CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
_SQUARE_224 = {"height": 224, "width": 224}
# The class defaults HF gives a key a config leaves out, per processor family (over the ViT
# row). Families whose processors resize or preprocess in other ways are refused.
_HF_DEFAULTS: dict[str, dict[str, Any]] = {
    "ViT": {"do_resize": True, "size": _SQUARE_224, "resample": 2, "do_center_crop": False, "crop_size": None,
            "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True, "image_mean": (0.5,) * 3,
            "image_std": (0.5,) * 3, "do_convert_rgb": None, "default_to_square": True},
    "DeiT": {"resample": 3, "size": {"height": 256, "width": 256}, "do_center_crop": True, "crop_size": _SQUARE_224},
    "Beit": {"resample": 3, "crop_size": _SQUARE_224},
    "Siglip": {"resample": 3, "do_convert_rgb": True},
    "CLIP": {"resample": 3, "size": {"shortest_edge": 224}, "default_to_square": False, "do_center_crop": True,
             "crop_size": _SQUARE_224, "image_mean": _CLIP_MEAN, "image_std": _CLIP_STD, "do_convert_rgb": True},
    "ConvNext": {"resample": 3, "size": {"shortest_edge": 384}, "default_to_square": False, "crop_pct": 224 / 256},
    "Levit": {"resample": 3, "size": {"shortest_edge": 224}, "default_to_square": False, "do_center_crop": True,
              "crop_size": _SQUARE_224, "image_mean": (0.485, 0.456, 0.406), "image_std": (0.229, 0.224, 0.225)},
}
_HF_DEFAULTS["Bit"] = _HF_DEFAULTS["ChineseCLIP"] = _HF_DEFAULTS["CLIP"]


@dataclass(frozen=True, kw_only=True)
class ImagePreprocessSpec:
    """How to turn an RGB image into model input, as Hugging Face's Pillow backend does.

    Images are always RGB; ``do_convert_rgb`` says whether the processor's convert_to_rgb
    step runs, which composites a transparency colour that HF's load_image leaves on a
    P, L or RGB file onto white. Then, in HF's order: resize, centre crop, rescale, normalise.
    """

    do_resize: bool = True
    size: dict
    resample: str = "bilinear"
    do_center_crop: bool = False
    crop_size: dict | None = None
    do_rescale: bool = True
    rescale_factor: float = 1 / 255
    do_normalize: bool = True
    image_mean: tuple[float, ...] = (0.5, 0.5, 0.5)
    image_std: tuple[float, ...] = (0.5, 0.5, 0.5)
    do_convert_rgb: bool = True
    channel_order: str = "RGB"
    layout: str = "NCHW"

    def __post_init__(self) -> None:
        set_ = object.__setattr__  # the dataclass is frozen; normalise copies of the inputs once here
        set_(self, "size", _check_size("size", self.size))
        if self.crop_size is not None:
            set_(self, "crop_size", _check_size("crop_size", self.crop_size, square=True))
        for name in ("image_mean", "image_std"):
            values = getattr(self, name)
            if not isinstance(values, (list, tuple)) or len(values) != 3 or not all(_is_number(v) for v in values):
                raise InputError(f"{name} must be three numbers, one per RGB channel, not {values!r}.")
            set_(self, name, tuple(float(v) for v in values))
        for name in ("do_resize", "do_center_crop", "do_rescale", "do_normalize", "do_convert_rgb"):
            if not isinstance(getattr(self, name), bool):
                raise InputError(f"{name} must be true or false, not {getattr(self, name)!r}.")
        if 0.0 in self.image_std:
            raise InputError(f"image_std must not contain 0 (it divides), got {self.image_std}.")
        if self.resample not in _RESAMPLE:
            raise InputError(f"resample must be one of {sorted(_RESAMPLE)}, not {self.resample!r}.")
        if self.channel_order not in ("RGB", "BGR") or self.layout not in ("NCHW", "NHWC"):
            raise InputError(f"channel_order must be RGB or BGR and layout NCHW or NHWC, not "
                             f"{self.channel_order!r} and {self.layout!r}.")
        if not _is_number(self.rescale_factor):
            raise InputError(f"rescale_factor must be a number, not {self.rescale_factor!r}.")
        if self.do_center_crop and self.crop_size is None:
            raise InputError("do_center_crop is set but crop_size is missing; "
                             "give crop_size={'height': H, 'width': W}.")
        if not self.do_center_crop and not (self.do_resize and "height" in self.size):
            raise InputError(f"The output size would depend on each image (size={self.size}, do_center_crop="
                             f"{self.do_center_crop}); resize to a fixed height and width or add a centre crop.")

    @property
    def output_size(self) -> tuple[int, int]:
        """(height, width) of every image in the produced tensor."""
        box = self.crop_size if self.do_center_crop else self.size
        return box["height"], box["width"]

    def to_dict(self) -> dict:
        """A JSON-safe dict for the artifact manifest; ``from_dict`` reverses it."""
        d = dataclasses.asdict(self)
        d["image_mean"], d["image_std"] = list(self.image_mean), list(self.image_std)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> ImagePreprocessSpec:
        """Reads a spec written by ``to_dict``; raises ArtifactError if it is not one."""
        names = {f.name for f in dataclasses.fields(cls)}
        if not isinstance(d, dict) or set(d) - names or "size" not in d:
            keys = sorted(set(d) - names) if isinstance(d, dict) else type(d).__name__
            raise ArtifactError(f"The image preprocessing spec is malformed (unknown keys or no size: {keys}); "
                                "re-export the artifact with this version of vlmedge.")
        try:
            return cls(**d)
        except InputError as e:
            raise ArtifactError(f"The image preprocessing spec is invalid: {e} Re-export the artifact.") from None

    @classmethod
    def from_hf(cls, processor_config: dict) -> ImagePreprocessSpec:
        """Builds the spec from a ``preprocessor_config.json`` dict (or ``processor.to_dict()``).

        Missing keys take the processor class's defaults and null ones mean "off", as
        ``from_pretrained`` does; ConvNeXt's ``crop_pct`` and LeViT's 256/224 resize become
        an equivalent resize + crop.

        Raises:
            UnsupportedModelError: for a processor family or setting this module cannot reproduce.
        """
        family = _hf_family(processor_config)
        c = {**_HF_DEFAULTS["ViT"], **_HF_DEFAULTS[family], **processor_config}
        if c.get("do_pad") and c.get("pad_size") is not None:
            raise UnsupportedModelError(f"vlmedge cannot reproduce the padding to pad_size={c['pad_size']} of this "
                                        f"{family} processor.")
        for flag, keys in (("do_resize", ("size", "resample")), ("do_center_crop", ("crop_size",)),
                           ("do_rescale", ("rescale_factor",)), ("do_normalize", ("image_mean", "image_std"))):
            if c[flag] and any(c[k] is None for k in keys):
                raise UnsupportedModelError(f"This {family} processor sets {flag} but no {' or '.join(keys)}.")
        crop = None if c["crop_size"] is None else _hf_size(c["crop_size"], True)
        size = _hf_size(c["size"], c["default_to_square"]) if c["size"] is not None else crop
        do_crop = bool(c["do_center_crop"])
        if family == "CLIP" and c.get("use_square_size"):
            size = {"height": size["shortest_edge"], "width": size["shortest_edge"]}
        if c["do_resize"] and family == "Levit" and "shortest_edge" in size:
            size = {"shortest_edge": int((256 / 224) * size["shortest_edge"])}
        if c["do_resize"] and family == "ConvNext":
            size, do_crop, crop = _convnext_resize(size, float(c["crop_pct"] or 224 / 256), do_crop, crop)
        mean, std = c["image_mean"] or (0.5,) * 3, c["image_std"] or (0.5,) * 3  # unused when null
        resample = 2 if c["resample"] is None else c["resample"]  # null and unused
        try:
            return cls(do_resize=bool(c["do_resize"]), size=size, do_center_crop=do_crop, crop_size=crop,
                       resample=_RESAMPLE_NAMES.get(resample, str(resample).lower()),
                       do_rescale=bool(c["do_rescale"]), rescale_factor=c["rescale_factor"] or 1 / 255,
                       do_normalize=bool(c["do_normalize"]), image_mean=[mean] * 3 if _is_number(mean) else mean,
                       image_std=[std] * 3 if _is_number(std) else std, do_convert_rgb=bool(c["do_convert_rgb"]))
        except InputError as e:
            raise UnsupportedModelError(f"vlmedge cannot reproduce this {family} image processor: {e}") from None


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check_size(name: str, size: Any, square: bool = False) -> dict:
    """A copy of an HF size dict with positive int values and a supported set of keys."""
    allowed = _SIZE_KEYS[:1] if square else _SIZE_KEYS
    if not isinstance(size, dict) or set(size) not in allowed or not all(
            isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in size.values()):
        raise InputError(f"{name} must be a dict with positive integer values and keys "
                         f"{' or '.join(str(sorted(k)) for k in allowed)}, not {size!r}.")
    return dict(size)


def _hf_family(config: dict) -> str:
    if not isinstance(config, dict):
        raise UnsupportedModelError(f"An image processor config must be a dict, not {type(config).__name__}.")
    kind = str(config.get("image_processor_type") or config.get("feature_extractor_type") or "")
    for suffix in ("Pil", "Fast", "ImageProcessor", "FeatureExtractor"):
        kind = kind.removesuffix(suffix)
    if kind not in _HF_DEFAULTS:
        raise UnsupportedModelError(f"vlmedge cannot reproduce the image processor {kind or 'of unknown type'!r}; "
                                    f"supported: {', '.join(sorted(_HF_DEFAULTS))} image processors.")
    return kind


def _hf_size(size: Any, default_to_square: bool) -> Any:
    """HF's get_size_dict for the int and (height, width) forms of old configs."""
    if isinstance(size, int) and not isinstance(size, bool):
        return {"height": size, "width": size} if default_to_square else {"shortest_edge": size}
    if isinstance(size, (list, tuple)) and len(size) == 2:
        return {"height": size[0], "width": size[1]}
    return size


def _convnext_resize(size: dict, crop_pct: float, do_crop: bool, crop: dict | None) -> tuple[dict, bool, dict | None]:
    """ConvNeXt resizes the shortest edge to edge/crop_pct and crops edge x edge below 384, else warps."""
    edge = size.get("shortest_edge") if isinstance(size, dict) else None
    if edge is None:
        raise UnsupportedModelError(f"ConvNeXt image processors need size={{'shortest_edge': N}}, not {size!r}.")
    square = {"height": edge, "width": edge}
    if edge >= 384:
        return square, do_crop, crop
    if do_crop and crop != square:
        raise UnsupportedModelError(f"vlmedge cannot reproduce ConvNeXt's crop_pct crop followed by a second "
                                    f"centre crop to {crop}.")
    return {"shortest_edge": int(edge / crop_pct)}, True, square


def image_suffixes() -> set[str]:
    """File suffixes of the image formats vlmedge decodes (.jpg, .png, .webp, .tif ...)."""
    return {ext.lower() for ext, fmt in Image.registered_extensions().items() if fmt in FORMATS}


def load_image(image: Any) -> Image.Image:
    """Decodes or converts one image to an RGB PIL image, as Hugging Face does.

    Files and bytes follow ``transformers.image_utils.load_image``: EXIF orientation is
    applied, then ``convert("RGB")`` (so alpha is dropped, not composited; a palette's
    transparency colour stays in ``info`` for ``preprocess_images``). PIL images get
    the EXIF orientation too, then the processor's ``convert_to_rgb``: transparency is
    composited on white. Arrays must be uint8 (H, W), (H, W, 1), (H, W, 3) RGB or (H, W, 4)
    RGBA; RGBA is composited on white with the processor's numpy rounding.

    Args:
        image: a path (str or os.PathLike), encoded bytes, a PIL image or a numpy array.

    Raises:
        InputError: naming the file or object, if it cannot be read as an image.
    """
    if isinstance(image, (str, os.PathLike)):
        return _open_file(image)
    if isinstance(image, (bytes, bytearray, memoryview)):
        return _decode(io.BytesIO(image), "The image given as bytes")
    if isinstance(image, Image.Image):
        return _pil_to_rgb(image)
    if isinstance(image, np.ndarray):
        return _array_to_rgb(image)
    raise InputError(f"Cannot read an image from a {type(image).__name__}; pass a file path, encoded bytes, "
                     "a PIL image or a uint8 numpy array of shape (H, W, 3).")


def _open_file(path: str | os.PathLike) -> Image.Image:
    name = os.fspath(path)
    if isinstance(name, str) and name.startswith(("http://", "https://")):
        raise InputError(f"{name} is a URL; vlmedge does not download images, so download it and pass the file path.")
    if os.path.isdir(name):
        raise InputError(f"{name!s} is a directory, not an image file; pass the path of an image file inside it.")
    if not os.path.isfile(name):
        raise InputError(f"Image file {name!s} does not exist; check the path.")
    return _decode(name, f"Image file {name!s}")


def _decode(source: Any, what: str) -> Image.Image:
    """Opens (allowed formats only), fully decodes and converts, turning every failure into InputError."""
    try:
        # Pillow warns between 1x and 2x its limit; make that an error here too. The explicit
        # size check below holds even if another thread's catch_warnings races with this one.
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            warnings.filterwarnings("ignore", "Palette images with Transparency", UserWarning)  # HF's path too
            with Image.open(source, formats=FORMATS) as opened:
                if opened.width * opened.height > MAX_IMAGE_PIXELS:
                    raise Image.DecompressionBombError(f"{opened.width}x{opened.height} pixels")
                opened.load()  # decode everything now, so truncation is caught here
                return ImageOps.exif_transpose(opened).convert("RGB")
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise InputError(f"{what} is too large to decode safely ({e}; the limit is {MAX_IMAGE_PIXELS:,} "
                         "pixels); downscale it first.") from None
    except Image.UnidentifiedImageError:
        raise InputError(f"{what} is not a readable {', '.join(FORMATS)} image; convert it to PNG or JPEG.") from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        raise InputError(f"{what} could not be decoded ({e}); the file may be truncated or corrupt.") from None
    except Exception as e:  # noqa: BLE001 - decoders of untrusted bytes raise struct.error, IndexError, ...
        raise InputError(f"{what} could not be decoded ({type(e).__name__}: {e}); the file may be truncated or "
                         "corrupt.") from None


def _convert_to_rgb(image: Image.Image) -> Image.Image:
    """HF's convert_to_rgb: alpha or a transparency colour composited on white."""
    if "A" in image.getbands() or image.info.get("transparency") is not None:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image if image.mode == "RGB" else image.convert("RGB")


def _pil_to_rgb(image: Image.Image) -> Image.Image:
    """EXIF orientation, then HF's convert_to_rgb."""
    try:
        return _convert_to_rgb(ImageOps.exif_transpose(image))
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        raise InputError(f"The {image.mode} PIL image {image.size} could not be decoded or converted to RGB "
                         f"({e}); open the file with load_image(path) to see why.") from None


def _array_to_rgb(array: np.ndarray) -> Image.Image:
    shapes = "(H, W), (H, W, 1), (H, W, 3) RGB or (H, W, 4) RGBA"
    if array.dtype != np.uint8:
        raise InputError(f"Image arrays must have dtype uint8 (0-255), not {array.dtype}; for 0-1 floats pass "
                         "(array * 255).round().astype(np.uint8).")
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[..., 0]
    if not (array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (3, 4))):
        raise InputError(f"An image array must have shape {shapes}, not {array.shape}; pass a batch as a list.")
    if array.size == 0:
        raise InputError(f"The image array is empty (shape {array.shape}); pass an image of at least 1x1 pixel.")
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=2)
    elif array.shape[2] == 4:  # HF convert_to_rgb's numpy path, in float64
        alpha = array[..., 3:4] / 255
        array = np.round(alpha * array[..., :3] + (1 - alpha) * 255).astype(np.uint8)
    return Image.fromarray(np.ascontiguousarray(array))


def preprocess_images(images: list[Image.Image], spec: ImagePreprocessSpec) -> np.ndarray:
    """Turns RGB PIL images (``load_image`` outputs) into one float32 batch.

    Args:
        images: PIL images; one not in RGB mode is converted as ``load_image`` would.
        spec: the preprocessing to apply.

    Returns:
        (N, 3, H, W) float32 (or (N, H, W, 3) for layout NHWC), H, W = ``spec.output_size``.
    """
    if isinstance(images, Image.Image) or not isinstance(images, (list, tuple)) or not images:
        raise InputError("preprocess_images needs a non-empty list of PIL images (use load_image to read them).")
    batch = np.stack([_preprocess_one(image, spec) for image in images])
    if spec.channel_order == "BGR":
        batch = batch[..., ::-1]
    if spec.layout == "NCHW":
        batch = batch.transpose(0, 3, 1, 2)
    return np.ascontiguousarray(batch, dtype=np.float32)


def _preprocess_one(image: Image.Image, spec: ImagePreprocessSpec) -> np.ndarray:
    """One image to (H, W, 3) float32, in HF's order and dtypes."""
    if not isinstance(image, Image.Image):
        raise InputError(f"preprocess_images takes PIL images, not {type(image).__name__}; read it with load_image.")
    if image.mode != "RGB":
        image = load_image(image)
    elif spec.do_convert_rgb:  # HF's load_image keeps a P/L/RGB file's transparency colour for this step
        image = _convert_to_rgb(image)
    if spec.do_resize:
        height, width = resize_output_size(image.height, image.width, spec.size)
        image = image.resize((width, height), resample=_RESAMPLE[spec.resample])
    array = np.asarray(image)
    if spec.do_center_crop:
        array = center_crop(array, spec.crop_size["height"], spec.crop_size["width"])
    if spec.do_rescale:  # HF upcasts to float64, scales, then downcasts to float32
        array = (array.astype(np.float64) * spec.rescale_factor).astype(np.float32)
    if spec.do_normalize:  # in float32, mean and std cast to float32 first
        array = array.astype(np.float32, copy=False)
        array = (array - np.float32(spec.image_mean)) / np.float32(spec.image_std)
    return array.astype(np.float32, copy=False)


def resize_output_size(height: int, width: int, size: dict) -> tuple[int, int]:
    """(height, width) after resizing, with HF's int truncation and rounding."""
    if "height" in size:
        return size["height"], size["width"]
    edge, max_size = size["shortest_edge"], size.get("longest_edge")
    if max_size is None:  # get_resize_output_image_size(default_to_square=False)
        short, long = (width, height) if width <= height else (height, width)
        new_long = int(edge * long / short)
        return (new_long, edge) if width <= height else (edge, new_long)
    raw = None  # get_size_with_aspect_ratio
    small, large = float(min(height, width)), float(max(height, width))
    if large / small * edge > max_size:
        raw = max_size * small / large
        edge = int(round(raw))
    if (height <= width and height == edge) or (width <= height and width == edge):
        return height, width
    if width < height:
        return int((raw if raw is not None else edge) * height / width), edge
    return edge, int((raw if raw is not None else edge) * width / height)


def center_crop(array: np.ndarray, height: int, width: int) -> np.ndarray:
    """HF's center_crop on (H, W, C): floor offsets, zero padding where the image is smaller."""
    orig_h, orig_w = array.shape[:2]
    top, left = (orig_h - height) // 2, (orig_w - width) // 2
    if top >= 0 and left >= 0:
        return array[top:top + height, left:left + width]
    new_h, new_w = max(height, orig_h), max(width, orig_w)
    padded = np.zeros((new_h, new_w) + array.shape[2:], dtype=array.dtype)
    top_pad, left_pad = math.ceil((new_h - orig_h) / 2), math.ceil((new_w - orig_w) / 2)
    padded[top_pad:top_pad + orig_h, left_pad:left_pad + orig_w] = array
    top, left = top + top_pad, left + left_pad
    return padded[max(0, top):min(new_h, top + height), max(0, left):min(new_w, left + width)]
