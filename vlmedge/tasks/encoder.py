"""Image embeddings: images -> preprocessing -> encoder -> pooled, L2-normalised vectors,
patch-token grids and CLS attention maps."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Iterable, Literal, Sequence, overload

import numpy as np
from PIL import Image, ImageDraw

from vlmedge.choices import check_not_special, written_path
from vlmedge.errors import ArtifactError, InputError, OutputError, UsageError
from vlmedge.preprocess.image import IMAGE_TYPES, load_image, preprocess_images
from vlmedge.runtimes.select import ModelSessions
from vlmedge.tasks.base import (Pipeline, as_list, check_flag, chunks, image_spec_for, l2_normalize,
                                naming_overflows, pixel_batches)

# pooling -> the model outputs it reads
POOLING_OUTPUTS: dict[str, tuple[str, ...]] = {
    "cls": ("cls",), "mean": ("patch_tokens",), "cls+mean": ("cls", "patch_tokens"), "pooled": ("pooled",),
}
POOLINGS = tuple(POOLING_OUTPUTS)


class ImageEncoder(Pipeline):
    """Embeds images with an image-embedding artifact (DINO, DINOv2, MAE, Swin, DeiT, BEiT).

    The manifest's "embedding" section says how the source's authors pool (DINOv2: CLS
    concatenated with the mean of the patch tokens; DINO: CLS; MAE: mean of patches;
    Swin: its pooler), which `embed` uses unless told otherwise.

    ``decode_workers``: threads that decode and preprocess the images of a list call while
    the model runs (None: vlmedge.preprocess.parallel.DEFAULT_WORKERS; 1: serially).
    """

    task = "image-embedding"
    decode_workers: int | None = None

    def __init__(self, model: ModelSessions) -> None:
        self.model = model
        manifest = model.artifact.manifest
        (self._graph, self._session), = model.sessions.items()
        self.spec = image_spec_for(manifest, self._session, model.artifact.root)
        info = manifest["embedding"]  # with its default pooling: the manifest check (registry) requires them
        self.info: dict[str, Any] = info
        self._input = self._session.inputs[0].name
        self.outputs = [o["name"] for o in manifest["graphs"][self._graph]["outputs"]]
        self.default_pooling: str = info["default_pooling"]
        self.poolings: list[str] = _poolings_of(self.outputs)

    # -- model outputs --------------------------------------------------------------------

    @property
    def grid(self) -> tuple[int, int]:
        """(h, w) of the patch-token grid."""
        return tuple(self.info["grid"])  # type: ignore[return-value]

    @property
    def has_attention(self) -> bool:
        return "attentions" in self.outputs

    def _run(self, images: Any, names: list[str]) -> dict[str, np.ndarray]:
        """The named outputs for every image, batched."""
        items, _ = as_list(images, IMAGE_TYPES)
        return self._outputs(pixel_batches(items, self.spec, self.decode_workers, self.batch_size), names, items)

    def _outputs(self, pixel_batches: Iterable[np.ndarray], names: list[str],
                 items: Sequence[Any] = ()) -> dict[str, np.ndarray]:
        """The named outputs for batches of preprocessed images (made of `items`, which an
        overflow names), concatenated."""
        parts: dict[str, list[np.ndarray]] = {name: [] for name in names}
        start = 0
        for pixels in pixel_batches:
            with naming_overflows(items, start):
                out = self._session.run({self._input: pixels})
            start += len(pixels)
            for name in names:
                parts[name].append(out[name])
        return {name: np.concatenate(values).astype(np.float32, copy=False) for name, values in parts.items()}

    def resolve_pooling(self, pooling: str | None) -> str:
        """The pooling to use (None: the manifest default), refusing one this model lacks."""
        return self.check_pooling(self.model.artifact.manifest, pooling)

    @staticmethod
    def check_pooling(manifest: dict[str, Any], pooling: str | None) -> str:
        """`resolve_pooling` from an image-embedding artifact's manifest alone, without
        opening its model: what a bulk job checks before any worker starts."""
        info = manifest["embedding"]
        outputs = [o["name"] for graph in manifest["graphs"].values() for o in graph["outputs"]]
        pooling = info.get("default_pooling") if pooling is None else pooling
        poolings = _poolings_of(outputs)
        if pooling not in POOLINGS:  # the choices this model has, not every model's
            raise UsageError(f"Unknown pooling {pooling!r}; choose one of {', '.join(poolings)}.")
        if pooling not in poolings:
            family = info.get("family", "this model")
            raise UsageError(f"Pooling {pooling!r} is not available for {family} (it has "
                             f"{', '.join(outputs)}); choose one of {', '.join(poolings)}.")
        return pooling

    @staticmethod
    def _pool(outputs: dict[str, np.ndarray], pooling: str) -> np.ndarray:
        if pooling == "cls":
            return outputs["cls"]
        if pooling == "pooled":
            return outputs["pooled"]
        tokens = outputs["patch_tokens"]
        grid = int(np.prod(tokens.shape[1:-1]))  # not -1: an empty batch has no size to infer it from
        mean = tokens.reshape(len(tokens), grid, tokens.shape[-1]).mean(axis=1, dtype=np.float64).astype(np.float32)
        return mean if pooling == "mean" else np.concatenate([outputs["cls"], mean], axis=1)

    @overload
    def embed(self, images: Any, pooling: str | None = None, normalize: bool = True,
              patch_tokens: Literal[False] = False) -> np.ndarray: ...
    @overload
    def embed(self, images: Any, pooling: str | None = None, normalize: bool = True, *,
              patch_tokens: Literal[True]) -> tuple[np.ndarray, np.ndarray]: ...
    @overload
    def embed(self, images: Any, pooling: str | None = None, normalize: bool = True,
              patch_tokens: bool = False) -> np.ndarray | tuple[np.ndarray, np.ndarray]: ...

    def embed(self, images: Any, pooling: str | None = None, normalize: bool = True,
              patch_tokens: bool = False) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        """Embeddings, (N, D) float32, one row per image (a single image gives N = 1).

        Args:
            images: a path, bytes, PIL image or HWC uint8 array, or a list of them.
            pooling: "cls", "mean" (of the patch tokens), "cls+mean" (concatenated, as the
                DINOv2 linear probe), "pooled" (the model's pooler, Swin/BEiT), or None for the
                manifest's default.
            normalize: divide each embedding by its L2 norm.
            patch_tokens: also return the (N, h, w, D) patch-token grid (never normalised).
        """
        return self._embed(lambda names: self._run(images, names), pooling, normalize, patch_tokens)

    def embed_prepared(self, pixels: np.ndarray, pooling: str | None = None, normalize: bool = True) -> np.ndarray:
        """`embed` for images already preprocessed: ``pixels`` is what
        ``preprocess_images(images, encoder.spec)`` returns for them, (N, ...) float32.
        Returns (N, D) float32, equal to what `embed` gives for those images.

        The bulk engines decode and preprocess in one stage (CPU tasks) and call this in the
        next (where the model is loaded)."""
        return self._embed(lambda names: self._outputs(chunks(pixels, self.batch_size), names), pooling, normalize,
                           False)

    def _embed(self, run, pooling: str | None, normalize: bool, patch_tokens: bool):
        """Pooled (and normalised) embeddings of the outputs `run(names)` gives."""
        pooling = self.resolve_pooling(pooling)
        normalize = check_flag("normalize", normalize)
        patch_tokens = check_flag("patch_tokens", patch_tokens)
        names = list(POOLING_OUTPUTS[pooling])
        if patch_tokens and "patch_tokens" not in names:
            names = names + ["patch_tokens"]
        outputs = run(names)
        embeddings = self._pool(outputs, pooling)
        if normalize:
            embeddings = l2_normalize(embeddings)
        return (embeddings, outputs["patch_tokens"]) if patch_tokens else embeddings

    def attention_maps(self, images: Any) -> np.ndarray:
        """The last layer's attention from the CLS token to each patch, per head: (N, heads, h, w)."""
        if not self.has_attention:
            family = self.info.get("family", "this model")
            reason = ("it has no CLS token" if "cls" not in self.outputs
                      else "it was exported with attention=False")
            raise ArtifactError(f"Artifact {self.model.artifact.root} ({family}) has no attention maps: {reason}.")
        return self._run(images, ["attentions"])["attentions"]

    # -- visualisation --------------------------------------------------------------------

    def model_view(self, image: Any) -> Image.Image:
        """The image as the model sees it: resized and cropped, before rescaling."""
        plain = dataclasses.replace(self.spec, do_rescale=False, do_normalize=False,
                                    channel_order="RGB", layout="NHWC")
        array = preprocess_images([load_image(image)], plain)[0]
        return Image.fromarray(np.clip(np.round(array), 0, 255).astype(np.uint8), "RGB")

    def render_attention(self, image: Any, path: str | os.PathLike, panel_size: int = 224,
                         alpha: float = 0.6, columns: int | None = None) -> Path:
        """Writes a PNG: the image as the model sees it, then the head-averaged map, then one
        heat map per head over the image. Each map is scaled to its own min..max."""
        if isinstance(image, (list, tuple)):
            raise InputError("render_attention takes one image; call it once per image.")
        path = _sheet_path(path, panel_size, alpha, columns)
        maps = self.attention_maps(image)[0]
        view = self.model_view(image)
        panels = [("input", _fit(view, panel_size)),
                  ("mean of heads", overlay(view, maps.mean(axis=0), panel_size, alpha))]
        panels += [(f"head {i}", overlay(view, m, panel_size, alpha)) for i, m in enumerate(maps)]
        sheet = contact_sheet(panels, columns=columns)
        partial = path.with_name(f".{path.name}.partial")  # renamed into place: never half a PNG at `path`
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            sheet.save(partial, format="PNG")
            os.replace(partial, path)
        except OSError as exc:
            if partial.parent.is_dir():
                partial.unlink(missing_ok=True)
            raise OutputError(f"Cannot write the attention sheet {path} ({exc.strerror or exc}); choose a path in a "
                              "folder you can write.") from None
        return path


def _sheet_path(path: Any, panel_size: Any, alpha: Any, columns: Any) -> Path:
    """render_attention's options, checked before any drawing: a PNG path that is not a
    folder (nor a pipe or a device; a link is written through), a panel of some pixels, a
    blend weight in 0..1, a positive column count."""
    if not isinstance(path, (str, os.PathLike)) or Path(path).suffix.lower() != ".png":
        raise UsageError(f"render_attention writes a PNG; name the file .png, not {str(path)!r}.")
    check_not_special(Path(path), str(path))  # first, as check_writable_file: a path into /proc is not looked at
    if Path(path).is_dir():
        raise UsageError(f"{path} is a folder; name the PNG file to write inside it.")
    if isinstance(panel_size, bool) or not isinstance(panel_size, int) or panel_size < 16:
        raise UsageError(f"panel_size must be a whole number of pixels from 16 up, not {panel_size!r}.")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 <= alpha <= 1:
        raise UsageError(f"alpha must be a number from 0 (the image only) to 1 (the map only), not {alpha!r}.")
    if columns is not None and (isinstance(columns, bool) or not isinstance(columns, int) or columns < 1):
        raise UsageError(f"columns must be a positive whole number or None, not {columns!r}.")
    return written_path(Path(path))


def _poolings_of(outputs: list[str]) -> list[str]:
    """The poolings a model with these outputs can give."""
    return [p for p in POOLINGS if all(name in outputs for name in POOLING_OUTPUTS[p])]


# -- heat-map drawing (Pillow + numpy only) ------------------------------------------------

# matplotlib's "inferno", sampled at 9 points.
_INFERNO = np.array([
    (0, 0, 4), (31, 12, 72), (85, 15, 109), (136, 34, 106), (186, 54, 85),
    (227, 89, 51), (249, 140, 10), (249, 201, 50), (252, 255, 164),
], dtype=np.float64)


def colormap(values: np.ndarray) -> np.ndarray:
    """Values in [0, 1] -> uint8 RGB through the inferno colour map."""
    x = np.clip(values, 0.0, 1.0) * (len(_INFERNO) - 1)
    low = np.floor(x).astype(int)
    high = np.minimum(low + 1, len(_INFERNO) - 1)
    frac = (x - low)[..., None]
    rgb = _INFERNO[low] * (1 - frac) + _INFERNO[high] * frac
    return np.round(rgb).astype(np.uint8)


def _fit(image: Image.Image, panel_size: int) -> Image.Image:
    """Scales the image so its longer side is panel_size."""
    scale = panel_size / max(image.size)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image.resize(size, Image.BICUBIC)


def overlay(image: Image.Image, heat: np.ndarray, panel_size: int = 224, alpha: float = 0.6) -> Image.Image:
    """One (h, w) map, min-max scaled, smoothly upsampled and blended over the image."""
    base = _fit(image, panel_size)
    heat = np.asarray(heat, dtype=np.float32)
    low, high = float(heat.min()), float(heat.max())
    scaled = (heat - low) / (high - low) if high > low else np.zeros_like(heat)
    upsampled = Image.fromarray(scaled.astype(np.float32), "F").resize(base.size, Image.BICUBIC)
    colours = Image.fromarray(colormap(np.asarray(upsampled)), "RGB")
    return Image.blend(base.convert("RGB"), colours, alpha)


def contact_sheet(panels: list[tuple[str, Image.Image]], columns: int | None = None,
                  pad: int = 6, caption: int = 16) -> Image.Image:
    """Panels in a grid on white, each captioned below."""
    columns = columns or min(len(panels), 4 if len(panels) <= 8 else 6)
    rows = -(-len(panels) // columns)
    cell_w = max(p.width for _, p in panels)
    cell_h = max(p.height for _, p in panels)
    sheet = Image.new("RGB", (pad + columns * (cell_w + pad), pad + rows * (cell_h + caption + pad)), "white")
    draw = ImageDraw.Draw(sheet)
    for i, (title, panel) in enumerate(panels):
        x = pad + (i % columns) * (cell_w + pad)
        y = pad + (i // columns) * (cell_h + caption + pad)
        sheet.paste(panel, (x + (cell_w - panel.width) // 2, y + (cell_h - panel.height) // 2))
        draw.text((x + 2, y + cell_h + 2), title, fill=(0, 0, 0))
    return sheet
