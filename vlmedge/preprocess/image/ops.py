"""The preprocessing steps, in Hugging Face's order and dtypes (numpy and Pillow only)."""

from __future__ import annotations

import math

import numpy as np
from PIL import Image

from vlmedge.errors import InputError
from vlmedge.preprocess.image.decode import MAX_IMAGE_PIXELS, convert_to_rgb, load_image
from vlmedge.preprocess.image.spec import ImagePreprocessSpec
from vlmedge.preprocess.image.values import RESAMPLE


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
    pixels = [_pixels(image, spec) for image in images]
    if spec.resize_after_rescale:
        batch = np.stack([_resized_after_rescale(array, spec) for array in pixels])
        return batch if spec.layout == "NCHW" else np.ascontiguousarray(batch.transpose(0, 2, 3, 1))
    table = _value_table(spec)
    # channel c of the output is channel sources[c] of the image (BGR models flip after normalizing)
    sources = (2, 1, 0) if spec.channel_order == "BGR" else (0, 1, 2)
    if spec.pad_size is None:
        batch = np.empty((len(pixels), 3) + pixels[0].shape[:2], dtype=np.float32)
    else:  # zeros below and right of each normalised image
        batch = np.zeros((len(pixels), 3) + spec.output_size, dtype=np.float32)
    for out, array in zip(batch, pixels):
        height, width = array.shape[:2]
        for channel, source in enumerate(sources):  # uint8: never out of range
            np.take(table[source], array[..., source], out=out[channel, :height, :width], mode="clip")
    return batch if spec.layout == "NCHW" else np.ascontiguousarray(batch.transpose(0, 2, 3, 1))


def _value_table(spec: ImagePreprocessSpec) -> np.ndarray:
    """(3, 256) float32: the value the rescale and normalize steps make of byte v in channel c.

    Those steps are elementwise, so running them once on every byte value and looking the
    image's bytes up gives the very float32 bits running them on the image gives, for a
    fraction of the cost (one gather per channel, no float64 image, no transposed copy)."""
    every_byte = np.repeat(np.arange(256, dtype=np.uint8)[:, None], 3, axis=1)
    return np.ascontiguousarray(_rescale_and_normalize(every_byte, spec).T)


def _pixels(image: Image.Image, spec: ImagePreprocessSpec) -> np.ndarray:
    """One image to the (H, W, 3) uint8 pixels the values are made of: decoding, resizing and
    cropping, in HF's order."""
    if not isinstance(image, Image.Image):
        raise InputError(f"preprocess_images takes PIL images, not {type(image).__name__}; read it with load_image.")
    if image.mode != "RGB":
        image = load_image(image)
    elif spec.do_convert_rgb:  # HF's load_image keeps a P/L/RGB file's transparency colour for this step
        image = convert_to_rgb(image)
    given = (image.height, image.width)  # as errors name it: the steps below turn, crop and resize it
    if spec.pre_crop is not None:  # Perceiver: a share of the shortest side, before resizing
        edge = min(image.height, image.width)
        height, width = _within_pixel_limit(int(spec.pre_crop[0] * edge), int(spec.pre_crop[1] * edge), given)
        image = Image.fromarray(center_crop(np.asarray(image), height, width))
    if spec.align_long_axis:
        image = _align_long_axis(image, spec.canvas)
    if spec.do_resize and not spec.resize_after_rescale:
        height, width = resize_output_size(image.height, image.width, spec.size, given)
        if spec.size_divisor > 1:  # rounded up to a multiple (TextNet)
            height, width = (-(-side // spec.size_divisor) * spec.size_divisor for side in (height, width))
        image = image.resize(_within_pixel_limit(height, width, given)[::-1], resample=RESAMPLE[spec.resample])
    if spec.thumbnail:  # HF's thumbnail takes `resample or BICUBIC`, so nearest (0) becomes bicubic
        image = _thumbnail(image, spec.canvas, RESAMPLE[spec.resample] or RESAMPLE["bicubic"], given)
    array = np.asarray(image)
    if spec.resize_after_rescale:  # resized in float by _resized_after_rescale
        return array
    if spec.pad_to_canvas:
        array = _pad_centred(array, spec.canvas["height"], spec.canvas["width"])
    if spec.do_center_crop:
        crop = torchvision_center_crop if spec.crop_style == "torchvision" else center_crop
        array = crop(array, spec.crop_size["height"], spec.crop_size["width"])
    return array


def _resized_after_rescale(array: np.ndarray, spec: ImagePreprocessSpec) -> np.ndarray:
    """(3, H, W) float32 of (h, w, 3) uint8 in DINOv3's torchvision order: rescale (uint8 times
    the factor in float32, as a torch tensor computes it), resize each channel as a float
    image, normalise in float32, channels flipped for BGR."""
    scaled = array.astype(np.float32)
    if spec.do_rescale:
        scaled *= np.float32(spec.rescale_factor)
    planes = [np.ascontiguousarray(scaled[..., c]) for c in range(3)]
    if spec.do_resize:
        height, width = resize_output_size(array.shape[0], array.shape[1], spec.size)
        planes = [np.asarray(Image.fromarray(plane, mode="F").resize((width, height), resample=RESAMPLE[spec.resample]))
                  for plane in planes]
    image = np.stack(planes, axis=-1)
    if spec.do_normalize:
        image = (image - np.float32(spec.image_mean)) / np.float32(spec.image_std)
    if spec.channel_order == "BGR":
        image = image[..., ::-1]
    return np.ascontiguousarray(image.transpose(2, 0, 1), dtype=np.float32)


def _rescale_and_normalize(array: np.ndarray, spec: ImagePreprocessSpec) -> np.ndarray:
    """HF's rescale and normalize steps on (..., 3) uint8, in its order and dtypes."""
    if spec.do_rescale:  # HF upcasts to float64, scales, then downcasts to float32
        array = (array.astype(np.float64) * spec.rescale_factor).astype(np.float32)
        if spec.rescale_offset:
            array -= np.float32(1)
    if spec.do_normalize:  # in float32, mean and std cast to float32 first
        array = array.astype(np.float32, copy=False)
        array = (array - np.float32(spec.image_mean)) / np.float32(spec.image_std)
    if spec.normalize_std_again:  # EfficientNet's include_top: normalize(image, 0, std)
        array = array.astype(np.float32, copy=False)
        array = (array - np.float32(0)) / np.float32(spec.image_std)
    return array.astype(np.float32, copy=False)


def _align_long_axis(image: Image.Image, canvas: dict) -> Image.Image:
    """Donut: a 90-degree clockwise turn when the image's long axis is not the canvas's."""
    out_h, out_w = canvas["height"], canvas["width"]
    if (out_w < out_h and image.width > image.height) or (out_w > out_h and image.width < image.height):
        return Image.fromarray(np.ascontiguousarray(np.rot90(np.asarray(image), 3, axes=(0, 1))))
    return image


def _thumbnail(image: Image.Image, canvas: dict, resample: int, given: tuple[int, int]) -> Image.Image:
    """Donut's thumbnail: fit inside the canvas keeping the aspect, never enlarging (`given`:
    the (height, width) of the image as passed in, which a refusal names)."""
    height, width = min(image.height, canvas["height"]), min(image.width, canvas["width"])
    if height == image.height and width == image.width:
        return image
    if image.height > image.width:
        width = int(image.width * height / image.height)
    elif image.width > image.height:
        height = int(image.height * width / image.width)
    if min(height, width) < 1:
        raise _too_thin(given, canvas)
    return image.resize((width, height), resample=resample)


def _pad_centred(array: np.ndarray, height: int, width: int) -> np.ndarray:
    """Donut's pad_image: zeros around, the odd pixel at the bottom and right."""
    dh, dw = height - array.shape[0], width - array.shape[1]
    top, left = dh // 2, dw // 2
    return np.pad(array, ((top, dh - top), (left, dw - left), (0, 0)), mode="constant", constant_values=0)


def _within_pixel_limit(height: int, width: int, given: tuple[int, int]) -> tuple[int, int]:
    """(height, width) of an image a step is about to make, refused beyond the pixels vlmedge
    decodes: fitting a very long image's short side to the model's size makes its long side
    the aspect ratio times longer (an 80,000,000x1 PNG of 230 KB, resized to a short side of
    64, would be 5 billion pixels wide: Pillow overflows, or memory runs out)."""
    if height * width > MAX_IMAGE_PIXELS:
        raise InputError(f"The image is {given[1]}x{given[0]} pixels: this model's preprocessing would make it "
                         f"{width}x{height}, more than the {MAX_IMAGE_PIXELS:,} pixels vlmedge handles; crop it to a "
                         "less extreme aspect ratio.")
    return height, width


def _too_thin(given: tuple[int, int], size: dict) -> InputError:
    """An image (of `given` (height, width)) whose short side a resize to this size would
    shrink below one pixel, which transformers fails on too."""
    height, width = given
    return InputError(f"The image is {width}x{height} pixels: fitted into this model's size ({size}), its short side "
                      "would be under 1 pixel; crop it to a less extreme aspect ratio.")


def resize_output_size(height: int, width: int, size: dict, given: tuple[int, int] | None = None) -> tuple[int, int]:
    """(height, width) after resizing, with HF's int truncation and rounding; an image whose
    short side would shrink below one pixel (fitting a very long one into longest_edge)
    is refused, as transformers fails on it too, naming `given`: the image's (height, width)
    as passed in, where earlier steps turned or cropped it."""
    if "height" in size:
        return size["height"], size["width"]
    new_height, new_width = _aspect_resize(height, width, size)
    if min(new_height, new_width) < 1:
        raise _too_thin(given or (height, width), size)
    return new_height, new_width


def _aspect_resize(height: int, width: int, size: dict) -> tuple[int, int]:
    """resize_output_size of a {shortest_edge[, longest_edge]} size, which keeps the aspect ratio."""
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


def torchvision_center_crop(array: np.ndarray, height: int, width: int) -> np.ndarray:
    """torchvision's center_crop on (H, W, C), which timm's and open_clip's eval transforms
    run: zero padding where the image is smaller (the odd pixel at the bottom and right),
    then offsets int(round(d / 2.0)), Python's round (half to even), not HF's floor."""
    orig_h, orig_w = array.shape[:2]
    if height > orig_h or width > orig_w:
        dh, dw = max(height - orig_h, 0), max(width - orig_w, 0)
        array = np.pad(array, ((dh // 2, (dh + 1) // 2), (dw // 2, (dw + 1) // 2), (0, 0)), mode="constant")
        orig_h, orig_w = array.shape[:2]
    top, left = int(round((orig_h - height) / 2.0)), int(round((orig_w - width) / 2.0))
    return array[top:top + height, left:left + width]
