"""timm:NAME exports against timm itself: tiny models of timm's own classes (a ViT
classifier, a ResNet encoder) with seeded weights saved to safetensors, exported from the
file, compared with timm's own forward on the same pixels; the preprocessing against a
Hugging Face Pillow processor configured as timm's eval transform; refusals by name.

timm imports torchvision when it loads, which does not install beside this CPU torch: the
fixture puts tests/torchvision_standin.py's stand-in in sys.modules for this module only
(names the models' forward never runs; every compared value comes from timm's code).
timm_for_transformers and TimmEvalTransform serve the same way for transformers' TimmWrapper
classes (tests/test_coverage_image_classification.py).
"""

from __future__ import annotations

import contextlib
import importlib.util
import math
from typing import Any, Iterator

import numpy as np
import pytest

from tests.torchvision_standin import standin

TIMM_MISSING = "timm is not installed; install it with `pip install --no-deps timm` (see the README's test command)"


@pytest.fixture(scope="module")
def timm():
    if importlib.util.find_spec("timm") is None:
        pytest.skip(TIMM_MISSING)
    with standin():
        try:
            import timm
        except ImportError as exc:
            pytest.skip(f"timm cannot be imported here ({exc})")
        yield timm


def torchvision_eval_pixels(image, shortest_edge: int, crop: int, resample: int, mean, std) -> np.ndarray:
    """What timm's and open_clip's eval transforms give for an RGB image, from a Hugging Face
    Pillow processor: CLIPImageProcessorPil resizes the shortest edge (int truncation of the
    long one, as torchvision), rescales and normalises, its own crop off; then the crop
    torchvision's CenterCrop makes, at offsets int(round(d / 2.0)), where HF's floors."""
    from transformers import CLIPImageProcessorPil

    processor = CLIPImageProcessorPil(size={"shortest_edge": shortest_edge}, resample=resample, do_center_crop=False,
                                      image_mean=list(mean), image_std=list(std), do_convert_rgb=False)
    full = processor(images=image, return_tensors="np")["pixel_values"][0]
    height, width = full.shape[1:]
    top, left = int(round((height - crop) / 2.0)), int(round((width - crop) / 2.0))
    return full[:, top:top + crop, left:left + crop]


@contextlib.contextmanager
def timm_for_transformers() -> Iterator[Any]:
    """timm loaded beside the stand-in (None where it cannot be), with transformers' TimmWrapper
    classes told so for the block: transformers decides at import, from package metadata the
    stand-in lacks, that timm is unavailable, so its backend check is answered True and its
    timm_wrapper model module gets the loaded timm (both restored afterwards)."""
    if importlib.util.find_spec("timm") is None:
        yield None
        return
    from transformers.models.timm_wrapper import modeling_timm_wrapper
    from transformers.utils import import_utils

    with standin(), pytest.MonkeyPatch.context() as patch:
        try:
            import timm
        except ImportError:
            yield None
            return
        patch.setitem(import_utils.BACKENDS_MAPPING, "timm", (lambda: True, import_utils.BACKENDS_MAPPING["timm"][1]))
        patch.setattr(modeling_timm_wrapper, "timm", timm, raising=False)
        yield timm


class TimmEvalTransform:
    """TimmWrapperImageProcessor's pixels where it cannot run (it builds torchvision transforms):
    the data config timm resolves from the pretrained_cfg, as the processor does, through
    transforms_imagenet_eval (crop_mode center) as torchvision_eval_pixels reproduces it."""

    def __init__(self, timm: Any, pretrained_cfg: dict) -> None:
        self.config = timm.data.resolve_data_config(pretrained_cfg, model=None, verbose=False)

    def __call__(self, image: Any, return_tensors: str = "pt") -> dict:
        import torch
        from PIL import Image

        config, size = self.config, self.config["input_size"][-1]
        resample = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR}[config["interpolation"]]
        pixels = torchvision_eval_pixels(image, math.floor(size / config["crop_pct"]), size, resample,
                                         config["mean"], config["std"])
        return {"pixel_values": torch.from_numpy(np.ascontiguousarray(pixels))[None]}


def odd_images():
    """Noise images whose resized long side leaves an odd margin where round and floor differ."""
    from PIL import Image

    rng = np.random.default_rng(3)
    sizes = ((32, 71), (50, 55), (35, 39), (83, 40))  # margin 39 at 32 (open_clip), 7 at 50 (resnet), 7 at 35 (vit)
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in sizes]


VIT = ("vit_tiny_patch16_224", {"img_size": 32, "depth": 1, "pretrained_cfg_overlay": {"input_size": (3, 32, 32)}})
RESNET = ("resnet18", {"layers": [1, 1, 1, 1], "pretrained_cfg_overlay": {"input_size": (3, 48, 48)}})


@pytest.fixture(scope="module")
def exported(timm, tmp_path_factory):
    """name -> (timm's own model rebuilt from the checkpoint, the loaded artifact, its folder)."""
    import torch
    from safetensors.torch import save_file

    import vlmedge

    made = {}

    def get(key: str):
        if key not in made:
            name, kwargs = VIT if key == "vit" else RESNET
            num_classes = 7 if key == "vit" else 0
            folder = tmp_path_factory.mktemp(key)
            torch.manual_seed(0)
            source = timm.create_model(name, pretrained=False, num_classes=num_classes, **kwargs)
            save_file({k: v.contiguous() for k, v in source.state_dict().items()}, folder / "model.safetensors")
            options = {}
            if key == "vit":
                (folder / "labels.txt").write_text("".join(f"class {i}\n" for i in range(num_classes)))
                options["labels"] = folder / "labels.txt"
            out = folder / "artifact"
            vlmedge.export(f"timm:{name}", out, checkpoint=folder / "model.safetensors", model_kwargs=kwargs, **options)
            reference = timm.create_model(name, pretrained=False, num_classes=num_classes,
                                          checkpoint_path=str(folder / "model.safetensors"), **kwargs).eval()
            made[key] = reference, vlmedge.load(out), out
        return made[key]

    return get


def _pixels(artifact, images):
    from vlmedge.preprocess.image import ImagePreprocessSpec, load_image, preprocess_images

    spec = ImagePreprocessSpec.from_dict(artifact.model.artifact.manifest["preprocess"]["image"])
    return preprocess_images([load_image(i) for i in images], spec)


def test_classifier_matches_timm(exported):
    import torch

    from vlmedge.exporters.samples import sample_images

    reference, classifier, out = exported("vit")
    images = sample_images()
    assert classifier.labels == [f"class {i}" for i in range(7)]
    ours = classifier.probabilities(images)
    with torch.no_grad():
        theirs = torch.softmax(reference(torch.from_numpy(_pixels(classifier, images))), -1).numpy()
    assert np.abs(ours - theirs).max() <= 1e-4
    assert (np.argsort(-ours, 1)[:, :5] == np.argsort(-theirs, 1)[:, :5]).all()
    source = classifier.model.artifact.manifest["source"]
    assert source["kind"] == "timm" and source["labels_from"] == "labels option"


def test_encoder_matches_timm_pooling(exported):
    import torch

    from vlmedge.exporters.samples import sample_images

    reference, encoder, _ = exported("resnet")
    assert encoder.task == "image-embedding" and encoder.default_pooling == "pooled"
    images = sample_images()
    ours = encoder.embed(images)
    with torch.no_grad():
        pixels = torch.from_numpy(_pixels(encoder, images))
        theirs = reference.forward_head(reference.forward_features(pixels), pre_logits=True).numpy()
    theirs /= np.linalg.norm(theirs, axis=1, keepdims=True)
    assert (ours * theirs).sum(1).min() >= 0.99999


@pytest.mark.parametrize("key", ["vit", "resnet"])
def test_pixels_are_timms_eval_transform(exported, key, timm):
    import math

    from PIL import Image

    from vlmedge.exporters.samples import sample_images
    from vlmedge.preprocess.image import load_image

    reference, pipeline, _ = exported(key)
    config = timm.data.resolve_data_config({}, model=reference)
    size = config["input_size"][-1]
    resample = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR}[config["interpolation"]]
    images = [load_image(p) for p in sample_images()] + odd_images()
    ours = _pixels(pipeline, images)
    for image, pixels in zip(images, ours):
        expected = torchvision_eval_pixels(image, math.floor(size / config["crop_pct"]), size, resample,
                                           config["mean"], config["std"])
        assert np.abs(pixels - expected).max() <= 1e-6


def test_refusals_leave_nothing(timm, tmp_path):
    import vlmedge
    from vlmedge.errors import ModelNotFoundError, UnsupportedModelError

    out = tmp_path / "out"
    cases = [
        (dict(model="timm:not_a_timm_model", checkpoint=__file__), UnsupportedModelError, "timm cannot build"),
        (dict(model="timm:resnet18", checkpoint=tmp_path / "missing.safetensors"), ModelNotFoundError, "does not exist"),
        (dict(model="timm:resnet18", pretrained=True), UnsupportedModelError, "never downloads"),
        (dict(model="timm:hf-hub:timm/resnet18.a1_in1k"), UnsupportedModelError, "never downloads"),
        (dict(model="timm:resnet18"), UnsupportedModelError, "checkpoint=PATH"),
    ]
    for options, error, words in cases:
        with pytest.raises(error, match=words) as caught:
            vlmedge.export(options.pop("model"), out, **options)
        assert "\n" not in str(caught.value)
        assert not out.exists() or not any(out.iterdir())


def test_a_library_that_cannot_load_is_refused_in_one_sentence(tmp_path):
    """`vlmedge export timm:NAME --checkpoint FILE` in a fresh process, without the stand-in:
    where torchvision does not load, neither does timm, and the export says what is missing
    and what to do, before reading the checkpoint."""
    from tests.test_cli import vlmedge_cli
    from vlmedge.errors import UnsupportedModelError

    if importlib.util.find_spec("timm") is None:
        pytest.skip(TIMM_MISSING)
    checkpoint = tmp_path / "model.safetensors"
    checkpoint.write_bytes(b"not read")
    probe = "try:\n    import torchvision\nexcept Exception:\n    print('TORCHVISION:missing')"
    result = vlmedge_cli("export", "timm:resnet18", "--checkpoint", checkpoint, "-o", tmp_path / "out",
                         prelude=probe, columns=1000)
    if "TORCHVISION:missing" not in result.stdout:
        pytest.skip("torchvision loads here, so timm does too")
    assert result.returncode == UnsupportedModelError.exit_code, result.stderr
    assert "timm cannot be imported because torchvision failed to load" in result.stderr, result.stderr
    assert "install the torchvision release built for torch" in result.stderr
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_local_dir_and_imagenet_names(timm, exported, tmp_path):
    """timm:local-dir:FOLDER (written by timm's save_for_hf): its config and weights; a
    1000-class head gets timm's ImageNet names, as timm's own inference does."""
    import torch

    import vlmedge
    from vlmedge.exporters.samples import sample_images

    name, kwargs = RESNET
    torch.manual_seed(1)
    model = timm.create_model(name, pretrained=False, **kwargs).eval()
    timm.models.save_for_hf(model, tmp_path / "repo", model_args={"layers": [1, 1, 1, 1]})
    classifier = vlmedge.load(vlmedge.export(f"timm:local-dir:{tmp_path / 'repo'}", tmp_path / "out").root)
    assert classifier.labels == timm.data.ImageNetInfo("imagenet-1k").label_descriptions()
    assert "infer_imagenet_subset" in classifier.model.artifact.manifest["source"]["labels_from"]
    images = sample_images()
    with torch.no_grad():
        theirs = torch.softmax(model(torch.from_numpy(_pixels(classifier, images))), -1).numpy()
    assert np.abs(classifier.probabilities(images) - theirs).max() <= 1e-4


def test_timm_wrapper_preprocessing_is_timms_data_config(timm, tmp_path):
    """A folder saved from transformers' TimmWrapper classes: its preprocessing, read where
    transformers reads it (config.json's pretrained_cfg, else the TimmWrapperImageProcessor
    config's), is timm's eval transform of the data config timm resolves from it."""
    import json

    from vlmedge.exporters.sources.hf.processor import image_preprocess
    from vlmedge.exporters.sources.timm import timm_preprocess

    pretrained_cfg = {"input_size": [3, 40, 40], "crop_pct": 0.95, "interpolation": "bilinear",
                      "mean": [0.1, 0.2, 0.3], "std": [0.4, 0.5, 0.6]}
    expected = timm_preprocess(timm.data.resolve_data_config(pretrained_cfg, model=None, verbose=False)).to_dict()
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "timm_wrapper", "pretrained_cfg": pretrained_cfg}))
    assert image_preprocess(tmp_path).to_dict() == expected
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "timm_wrapper"}))
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(
        {"image_processor_type": "TimmWrapperImageProcessor", "pretrained_cfg": pretrained_cfg}))
    assert image_preprocess(tmp_path).to_dict() == expected
    assert expected["size"] == {"shortest_edge": 42} and expected["crop_size"] == {"height": 40, "width": 40}


def test_a_model_built_without_its_pooling_is_refused(timm, exported, tmp_path):
    """global_pool='' leaves timm's feature map unpooled: the export passed its gate, embed()
    normalised (N, 512, 2, 2) along its width, and predict and embed failed with tracebacks."""
    import vlmedge
    from vlmedge.errors import UnsupportedModelError

    _, _, artifact = exported("resnet")
    name, kwargs = RESNET
    with pytest.raises(UnsupportedModelError, match=r"^timm's resnet18 gives pooled of shape \[1, 512, 2, 2\] per "
                                                   r"batch of one image, not \(1, features\)"):
        vlmedge.export(f"timm:{name}", tmp_path / "out", checkpoint=artifact.parent / "model.safetensors",
                       model_kwargs={**kwargs, "global_pool": ""})
    assert not (tmp_path / "out").exists()
