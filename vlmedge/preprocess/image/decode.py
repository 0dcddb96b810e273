"""Decoding: files, bytes, PIL images and arrays to RGB PIL images, as Hugging Face's
``load_image`` and ``convert_to_rgb`` do."""

from __future__ import annotations

import io
import os
import re
import threading
import warnings
from typing import Any

import numpy as np
from PIL import ExifTags, Image, ImageOps

from vlmedge.errors import InputError
from vlmedge.preprocess import check_input_file, read_file_object

# Pillow's decompression-bomb limit, checked by vlmedge itself before decoding.
MAX_IMAGE_PIXELS: int = Image.MAX_IMAGE_PIXELS or 89_478_485
FORMATS = ("JPEG", "PNG", "BMP", "GIF", "TIFF", "WEBP", "PPM")
# The image arrays load_image takes (uint8).
ARRAY_SHAPES = "(H, W), (H, W, 1), (H, W, 3) RGB or (H, W, 4) RGBA"
# What one image may be when a pipeline is given a single input rather than a list
# (a uint8 numpy array of up to 3 dimensions is one image too: see tasks.base.as_list).
IMAGE_TYPES = (str, bytes, bytearray, memoryview, os.PathLike, io.IOBase, Image.Image)
# held around every warnings.catch_warnings() of the decoders (see _decode)
_WARNINGS = threading.Lock()



def load_image(image: Any) -> Image.Image:
    """Decodes or converts one image to an RGB PIL image, as Hugging Face does.

    Files, bytes and PIL images follow ``transformers.image_utils.load_image``, which every
    transformers pipeline applies to each input: EXIF orientation is applied, then
    ``convert("RGB")`` (so alpha is dropped, not composited; a palette's transparency colour
    stays in ``info`` for ``preprocess_images``). Arrays, which pipelines do not take, follow
    the processor: uint8 (H, W), (H, W, 1), (H, W, 3) RGB or (H, W, 4) RGBA, RGBA composited on
    white with its numpy rounding.

    Args:
        image: a path (str or os.PathLike), encoded bytes, a binary file object (read from
            where it stands), a PIL image or a numpy array.

    Raises:
        InputError: naming the file or object, if it cannot be read as an image.
    """
    if isinstance(image, (str, os.PathLike)):
        return _open_file(image)
    if isinstance(image, (bytes, bytearray, memoryview)):
        return _decode(io.BytesIO(image), "The image given as bytes")
    if isinstance(image, io.IOBase):
        data, what = read_file_object(image, "image")
        return _decode(io.BytesIO(data), what)
    if isinstance(image, Image.Image):
        return _pil_to_rgb(image)
    if isinstance(image, np.ndarray):
        return _array_to_rgb(image)
    raise InputError(f"Cannot read an image from a {type(image).__name__}; pass a file path, encoded bytes, "
                     f"a PIL image or a uint8 numpy array of shape {ARRAY_SHAPES}.")


def _open_file(path: str | os.PathLike) -> Image.Image:
    name = os.fspath(path)
    check_input_file(str(name), "image")
    try:
        handle = open(name, "rb")  # ours to close, so the decoded image stays usable (see _decode)
    except OSError as e:
        raise InputError(f"Image file {name!s} could not be opened ({e.strerror or e}); check its permissions.") from None
    with handle:
        try:
            return _decode(handle, f"Image file {name!s}")
        except InputError:
            kind = _not_an_image(str(name))
            if kind is None:
                raise
            raise InputError(f"{name!s} is {kind}, not an image; this model takes image files.") from None


def _not_an_image(name: str) -> str | None:
    """What a file that did not decode as an image is by its suffix: it said "convert it to PNG"
    of a .txt of captions or a .wav (None: nothing known, the decoder's message stands)."""
    from vlmedge.preprocess.audio.io import AUDIO_SUFFIXES

    suffix = os.path.splitext(name)[1].lower()
    if suffix in AUDIO_SUFFIXES:
        return "an audio file"
    return {".txt": "a text file (captions, one a line, are for a CLIP artifact's embed_texts)",
            ".csv": "a table (a bulk run reads its paths: add --out results.parquet)",
            ".parquet": "a table (a bulk run reads its paths: add --out results.parquet)"}.get(suffix)


def _too_many_pixels(what: str, error: Exception) -> InputError:
    """One sentence with one limit, vlmedge's: Pillow's own message names its twice as high one."""
    found = re.search(r"(\d+) pixels", str(error))  # Pillow's "Image size (N pixels) exceeds ...", or ours
    size = f"{int(found.group(1)):,} pixels; " if found else ""
    limit = min(MAX_IMAGE_PIXELS, Image.MAX_IMAGE_PIXELS or MAX_IMAGE_PIXELS)  # a program may lower Pillow's
    return InputError(f"{what} is too large to decode safely ({size}the limit is {limit:,} pixels); "
                      "downscale it first.")


def header_size(source: Any) -> tuple[int, int]:
    """(width, height) from an image file's header, its pixels not decoded: what a server
    checks against its limit before decoding. Raises Image.DecompressionBombError for more
    than MAX_IMAGE_PIXELS (Pillow's warning made an error, as _decode does), Pillow's own
    errors for anything that is not an image of FORMATS."""
    with _WARNINGS, warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            with Image.open(source, formats=FORMATS) as image:
                return image.size
        except Image.DecompressionBombWarning as e:
            raise Image.DecompressionBombError(str(e)) from None


def _decode(source: Any, what: str) -> Image.Image:
    """Opens (allowed formats only), fully decodes and converts, turning every failure into InputError.

    ``source`` is a file object the caller closes: the image is never closed here (closing
    frees its pixels), so an RGB file's decoded image is returned as it is, not copied."""
    try:
        # Pillow warns between 1x and 2x its limit; make that an error here too (the explicit
        # size check below holds whatever the filters). Only opening (the header) and a
        # transparency conversion run under the filters, one thread at a time: catch_warnings
        # swaps process-wide state, and interleaved in threads it leaves filters behind.
        with _WARNINGS, warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            opened = Image.open(source, formats=FORMATS)
        if opened.width * opened.height > MAX_IMAGE_PIXELS:
            raise Image.DecompressionBombError(f"{opened.width * opened.height} pixels")
        opened.load()  # decode everything now, so truncation is caught here
        ImageOps.exif_transpose(opened, in_place=True)
        if "transparency" not in opened.info:
            return opened if opened.mode == "RGB" else opened.convert("RGB")
        with _WARNINGS, warnings.catch_warnings():
            warnings.filterwarnings("ignore", "Palette images with Transparency", UserWarning)  # HF's path too
            return opened.convert("RGB")
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise _too_many_pixels(what, e) from None
    except Image.UnidentifiedImageError:
        raise InputError(f"{what} is not a readable {', '.join(FORMATS)} image; convert it to PNG or JPEG.") from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        raise InputError(f"{what} could not be decoded ({e}); the file may be truncated or corrupt.") from None
    except MemoryError:  # a good file, too large for the memory this process has left
        raise InputError(f"{what} could not be decoded: this process ran out of memory; free memory or raise its "
                         "limit (ulimit -v), or downscale the image.") from None
    except Exception as e:  # noqa: BLE001 - decoders of untrusted bytes raise struct.error, IndexError, ...
        raise InputError(f"{what} could not be decoded ({type(e).__name__}: {e}); the file may be truncated or "
                         "corrupt.") from None


def convert_to_rgb(image: Image.Image) -> Image.Image:
    """HF's convert_to_rgb: alpha or a transparency colour composited on white."""
    if "A" in image.getbands() or image.info.get("transparency") is not None:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image if image.mode == "RGB" else image.convert("RGB")


def _pil_to_rgb(image: Image.Image) -> Image.Image:
    """EXIF orientation, then convert("RGB"), as load_image does (the caller's image untouched:
    turned or converted into a new image, else read as it is; exif_transpose would copy it
    whole on every call)."""
    if 0 in image.size:  # an empty crop, say: resized, it would be answered as a black image
        raise InputError(f"The PIL image is empty (size {image.size}); pass an image of at least 1x1 pixel.")
    try:
        oriented = image.getexif().get(ExifTags.Base.Orientation) in range(2, 9)  # 1: as stored
        turned = ImageOps.exif_transpose(image) if oriented else image
        if turned.mode == "RGB":
            return turned
        with _WARNINGS, warnings.catch_warnings():
            warnings.filterwarnings("ignore", "Palette images with Transparency", UserWarning)  # HF's path too
            return turned.convert("RGB")
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        raise InputError(f"The {image.mode} PIL image {image.size} could not be converted to RGB ({e}); convert "
                         "it to RGB yourself, or pass the file it came from.") from None


def _array_to_rgb(array: np.ndarray) -> Image.Image:
    if array.dtype != np.uint8:
        hint = {"f": "0-1 floats as (array * 255).round().astype(np.uint8)", "b": "a mask as array.astype(np.uint8) * 255",
                }.get(array.dtype.kind, "16-bit values as (array >> 8).astype(np.uint8)" if array.dtype.itemsize == 2
                      else "its values scaled to 0-255, then .astype(np.uint8)")
        raise InputError(f"Image arrays must have dtype uint8 (0-255), not {array.dtype}; pass {hint}.")
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[..., 0]
    if array.ndim == 3 and array.shape[0] in (1, 3, 4) and array.shape[2] not in (3, 4):
        raise InputError(f"The image array of shape {array.shape} is channels-first; pass array.transpose(1, 2, 0).")
    if not (array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (3, 4))):
        batch = "; pass a batch as a list of arrays" if array.ndim == 4 else ""
        raise InputError(f"An image array must have shape {ARRAY_SHAPES}, not {array.shape}{batch}.")
    if array.size == 0:
        raise InputError(f"The image array is empty (shape {array.shape}); pass an image of at least 1x1 pixel.")
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=2)
    elif array.shape[2] == 4:  # HF convert_to_rgb's numpy path, in float64
        alpha = array[..., 3:4] / 255
        array = np.round(alpha * array[..., :3] + (1 - alpha) * 255).astype(np.uint8)
    return Image.fromarray(np.ascontiguousarray(array))

