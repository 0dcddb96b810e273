"""Image preprocessing: decode, convert to RGB, then the operations of the source's Hugging
Face image processor (resize, crop, pad, rescale, normalise ...), read from its configuration.

Reproduces the Pillow backend of Hugging Face image processors (``PilBackend`` and
``image_transforms``) with numpy and Pillow only, step for step and dtype for dtype, so
the runtime matches the source model's processor to float noise without torch.
"""

from __future__ import annotations

from PIL import Image

from vlmedge.preprocess.image.decode import FORMATS, IMAGE_TYPES, MAX_IMAGE_PIXELS, load_image
from vlmedge.preprocess.image.ops import center_crop, preprocess_images, resize_output_size
from vlmedge.preprocess.image.spec import ImagePreprocessSpec

__all__ = ["FORMATS", "IMAGE_TYPES", "MAX_IMAGE_PIXELS", "ImagePreprocessSpec", "center_crop", "image_suffixes",
           "load_image", "preprocess_images", "resize_output_size"]


def image_suffixes() -> set[str]:
    """File suffixes of the image formats vlmedge decodes (.jpg, .png, .webp, .tif ...)."""
    return {ext.lower() for ext, fmt in Image.registered_extensions().items() if fmt in FORMATS}
