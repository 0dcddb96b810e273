"""ImagePreprocessSpec: the operations Hugging Face image processors are built from, as
plain data (the artifact manifest's ``preprocess.image`` section)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from vlmedge.errors import ArtifactError, InputError
from vlmedge.preprocess.image.values import RESAMPLE, is_number
_SIZE_KEYS = ({"height", "width"}, {"shortest_edge"}, {"shortest_edge", "longest_edge"})
# The longest side a manifest may resize, crop, pad or round to: beyond any processor of the
# models vlmedge exports (Donut's canvas, 2560, is the largest), and square within the pixels
# the decoder takes, so that an edited size cannot make a normal photo take all the memory.
MAX_SIDE = 8192
CROP_STYLES = ("huggingface", "torchvision")  # whose center_crop places the crop (see ImagePreprocessSpec)


@dataclass(frozen=True, kw_only=True)
class ImagePreprocessSpec:
    """How to turn an RGB image into model input, as Hugging Face's Pillow backend does.

    Images are always RGB; ``do_convert_rgb`` says whether the processor's convert_to_rgb
    step runs, which composites a transparency colour that HF's load_image leaves on a
    P, L or RGB file onto white. Then, in this order (each step off by default unless it is
    one of the classic four):

    - ``pre_crop``: (height ratio, width ratio): a centre crop to int(ratio * shortest side)
      before resizing (Perceiver);
    - ``align_long_axis``: rotate 90 degrees clockwise when the image's long axis is not the
      ``canvas``'s (Donut);
    - resize (``do_resize``): to ``size`` — {height, width}, {shortest_edge} or
      {shortest_edge, longest_edge} — with ``resample``, each side rounded up to a multiple
      of ``size_divisor`` (TextNet);
    - ``thumbnail``: shrink to fit inside ``canvas`` keeping the aspect (Donut);
    - ``pad_to_canvas``: centred zero padding to ``canvas`` (Donut);
    - centre crop (``do_center_crop``) to ``crop_size``, zero padding where smaller, placed as
      ``crop_style`` says: "huggingface" (HF's center_crop: floor offsets, the odd padding pixel
      at the top/left) or "torchvision" (torchvision's center_crop, which timm's and open_clip's
      eval transforms run: offsets int(round(d / 2)), half to even, the odd padding pixel at
      the bottom/right);
    - rescale (``do_rescale``) by ``rescale_factor``, minus 1 when ``rescale_offset``;
      with ``resize_after_rescale`` (DINOv3's torchvision processor) the rescale comes first,
      in float32, and the resize then runs on the float image (no crop): torchvision's
      antialiased bilinear or bicubic interpolation of a float tensor, computed here with
      Pillow's 32-bit float mode (the same filter; Pillow sums in double where torch sums in
      float32, so values agree to ~1e-5, not bit for bit);
    - normalise (``do_normalize``) by ``image_mean``/``image_std``, then divide by
      ``image_std`` once more when ``normalize_std_again`` (EfficientNet's include_top);
    - ``pad_size``: zeros below and right of the normalised image up to {height, width}
      (transformers' do_pad); it must hold every image the resize and crop make;
    - ``channel_order`` BGR flips the channels (MobileViT), ``layout`` NHWC transposes.
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
    # Steps some processors add; the defaults leave them out, so older manifests still load.
    pre_crop: tuple[float, float] | None = None
    size_divisor: int = 1
    canvas: dict | None = None
    align_long_axis: bool = False
    thumbnail: bool = False
    pad_to_canvas: bool = False
    rescale_offset: bool = False
    normalize_std_again: bool = False
    crop_style: str = "huggingface"
    resize_after_rescale: bool = False
    pad_size: dict | None = None

    def __post_init__(self) -> None:
        set_ = object.__setattr__  # the dataclass is frozen; normalise copies of the inputs once here
        set_(self, "size", _check_size("size", self.size))
        if self.crop_size is not None:
            set_(self, "crop_size", _check_size("crop_size", self.crop_size, square=True))
        if self.canvas is not None:
            set_(self, "canvas", _check_size("canvas", self.canvas, square=True))
        if self.pad_size is not None:
            set_(self, "pad_size", _check_size("pad_size", self.pad_size, square=True))
        for name in ("image_mean", "image_std"):
            values = getattr(self, name)
            if not isinstance(values, (list, tuple)) or len(values) != 3 or not all(is_number(v) for v in values):
                raise InputError(f"{name} must be three numbers, one per RGB channel, not {values!r}.")
            set_(self, name, tuple(float(v) for v in values))
        for name in ("do_resize", "do_center_crop", "do_rescale", "do_normalize", "do_convert_rgb",
                     "align_long_axis", "thumbnail", "pad_to_canvas", "rescale_offset", "normalize_std_again",
                     "resize_after_rescale"):
            if not isinstance(getattr(self, name), bool):
                raise InputError(f"{name} must be true or false, not {getattr(self, name)!r}.")
        if 0.0 in self.image_std:
            raise InputError(f"image_std must not contain 0 (it divides), got {self.image_std}.")
        if not isinstance(self.resample, str) or self.resample not in RESAMPLE:  # a list would not hash
            raise InputError(f"resample must be one of {sorted(RESAMPLE)}, not {self.resample!r}.")
        if self.crop_style not in CROP_STYLES:
            raise InputError(f"crop_style must be one of {', '.join(CROP_STYLES)}, not {self.crop_style!r}.")
        if self.channel_order not in ("RGB", "BGR") or self.layout not in ("NCHW", "NHWC"):
            raise InputError(f"channel_order must be RGB or BGR and layout NCHW or NHWC, not "
                             f"{self.channel_order!r} and {self.layout!r}.")
        if not is_number(self.rescale_factor):
            raise InputError(f"rescale_factor must be a number, not {self.rescale_factor!r}.")
        if self.pre_crop is not None:
            if not (isinstance(self.pre_crop, (list, tuple)) and len(self.pre_crop) == 2
                    and all(is_number(v) and v > 0 for v in self.pre_crop)):
                raise InputError(f"pre_crop must be two positive numbers (height, width ratios), not {self.pre_crop!r}.")
            set_(self, "pre_crop", tuple(float(v) for v in self.pre_crop))
        if not (isinstance(self.size_divisor, int) and not isinstance(self.size_divisor, bool)
                and 0 < self.size_divisor <= MAX_SIDE):
            raise InputError(f"size_divisor must be an integer from 1 to {MAX_SIDE}, not {self.size_divisor!r}.")
        if (self.align_long_axis or self.thumbnail or self.pad_to_canvas) and self.canvas is None:
            raise InputError("align_long_axis, thumbnail and pad_to_canvas need canvas={'height': H, 'width': W}.")
        if self.pad_size is not None:
            if self.canvas is not None or self.resize_after_rescale:
                raise InputError("pad_size pads after normalising; it takes no canvas or resize_after_rescale.")
            self._check_pad_holds_every_image()
        if self.resize_after_rescale and (self.resample not in ("bilinear", "bicubic") or self.do_center_crop
                                          or self.pre_crop is not None or self.canvas is not None
                                          or self.size_divisor != 1 or self.rescale_offset or self.normalize_std_again):
            raise InputError("resize_after_rescale (DINOv3's order) takes a bilinear or bicubic resize, rescale and "
                             "normalise only, not a crop or the steps of other processors.")
        if self.do_center_crop and self.crop_size is None:
            raise InputError("do_center_crop is set but crop_size is missing; "
                             "give crop_size={'height': H, 'width': W}.")
        fixed = (self.do_center_crop or self.pad_to_canvas or self.pad_size is not None
                 or (self.do_resize and "height" in self.size and self.size_divisor == 1 and not self.thumbnail))
        if not fixed:
            resizing = f"size={self.size}" if self.do_resize else "do_resize=False: images keep their own size"
            raise InputError(f"The output size would depend on each image ({resizing}, do_center_crop="
                             f"{self.do_center_crop}); resize to a fixed height and width or add a centre crop.")

    def _check_pad_holds_every_image(self) -> None:
        """The padding holds what the resize and crop make of any image: else most images
        would be refused at run time (transformers refuses them too), the parity inputs of
        its export among them."""
        pad = self.pad_size
        if self.do_center_crop:
            box = (self.crop_size["height"], self.crop_size["width"])
        elif self.do_resize and "height" in self.size:
            box = (self.size["height"], self.size["width"])
        elif self.do_resize and "longest_edge" in self.size:
            box = (max(self.size.values()),) * 2  # within the longest edge (a short one too: never larger)
        else:
            box = None
        if box is None or box[0] > pad["height"] or box[1] > pad["width"]:
            makes = ("images of any size" if box is None else f"up to {box[1]}x{box[0]} pixels")
            raise InputError(f"pad_size {pad['width']}x{pad['height']} does not hold every image the resize and crop "
                             f"make ({makes}), so most images would be refused, as transformers refuses them; give "
                             "size a longest_edge within the pad, a fixed height and width, or a centre crop.")

    @property
    def output_size(self) -> tuple[int, int]:
        """(height, width) of every image in the produced tensor."""
        box = (self.pad_size or (self.crop_size if self.do_center_crop else self.canvas if self.pad_to_canvas
                                 else self.size))
        return box["height"], box["width"]

    def to_dict(self) -> dict:
        """A JSON-safe dict for the artifact manifest; ``from_dict`` reverses it."""
        d = dataclasses.asdict(self)
        d["image_mean"], d["image_std"] = list(self.image_mean), list(self.image_std)
        if self.pre_crop is not None:
            d["pre_crop"] = list(self.pre_crop)
        if self.crop_style == "huggingface":  # what specs without the field have always meant
            del d["crop_style"]
        for name in ("resize_after_rescale", "pad_size"):  # likewise: other processors' manifests stay as they were
            if not d[name]:
                del d[name]
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

        The processor's operations are read from its configuration (see
        ``vlmedge.preprocess.image.hf``); missing keys take the processor class's defaults
        and null ones mean "off", as ``from_pretrained`` does.

        Raises:
            UnsupportedModelError: for a processor class or setting this module cannot reproduce,
                naming it and why.
        """
        from vlmedge.preprocess.image.hf import spec_fields

        return spec_fields(cls, processor_config)




def _check_size(name: str, size: Any, square: bool = False) -> dict:
    """A copy of an HF size dict with positive int values and a supported set of keys."""
    allowed = _SIZE_KEYS[:1] if square else _SIZE_KEYS
    if not isinstance(size, dict) or set(size) not in allowed or not all(
            isinstance(v, int) and not isinstance(v, bool) and 0 < v <= MAX_SIDE for v in size.values()):
        raise InputError(f"{name} must be a dict with integer values from 1 to {MAX_SIDE} and keys "
                         f"{' or '.join(str(sorted(k)) for k in allowed)}, not {size!r}.")
    return dict(size)
