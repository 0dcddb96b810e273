"""A minimal stand-in for the torchvision modules that timm and open_clip import at load
time, for the tests of the timm: and open_clip: sources only.

Why: no torchvision release installs beside this CPU torch build, and both libraries
import torchvision when they load, although the models' forward passes never call it.
Everything a test compares is computed by timm's and open_clip's own code; the stand-in
only lets their modules load. It is put into ``sys.modules`` by ``standin()`` (a context
manager the test fixtures use) and taken out again afterwards, with every module imported
meanwhile, so no other test sees it.

Stubbed names, exactly (each class refuses to be constructed, so any use fails loudly):

* ``torchvision.transforms``: ``InterpolationMode`` (an Enum with torchvision's member names
  and values: timm and open_clip build interpolation tables from it at import time) and the
  classes ``Normalize``, ``Compose``, ``RandomResizedCrop``, ``ToTensor``, ``Resize``,
  ``CenterCrop``, ``ColorJitter``, ``Grayscale`` (imported by name; timm and open_clip
  subclass ``ToTensor``); ``transforms.functional`` is the module below.
* ``torchvision.transforms.functional``: ``InterpolationMode`` only; any other name raises
  AttributeError naming this file.
* ``torchvision.ops.misc``: ``FrozenBatchNorm2d`` (timm's norm-layer table and
  ``freeze_batch_norm_2d`` name it; no model built in the tests uses it).
* ``torchvision.datasets``: ``CIFAR100``, ``CIFAR10``, ``MNIST``, ``KMNIST``, ``FashionMNIST``,
  ``ImageFolder`` (imported by timm.data.dataset_factory at load time).

Not stubbed: ``torchvision.models`` (timm imports its feature extraction in a try block and
does without it). The image transforms themselves are not reproduced here: the tests compare
vlmedge's pixels with a Hugging Face Pillow image processor configured the same way.
"""

from __future__ import annotations

import contextlib
import enum
import importlib.machinery
import sys
import types
from typing import Iterator

PREFIXES = ("torchvision", "timm", "open_clip")  # what standin() removes again afterwards


class InterpolationMode(enum.Enum):
    """torchvision.transforms.InterpolationMode's members and values."""

    NEAREST = "nearest"
    NEAREST_EXACT = "nearest-exact"
    BILINEAR = "bilinear"
    BICUBIC = "bicubic"
    BOX = "box"
    HAMMING = "hamming"
    LANCZOS = "lanczos"


def _unavailable(qualname: str) -> type:
    def __init__(self, *args, **kwargs):
        raise RuntimeError(f"{qualname} is a test stand-in (tests/torchvision_standin.py); torchvision is not "
                           "installed, so no test may construct it.")

    return type(qualname.rpartition(".")[2], (), {"__init__": __init__, "__module__": qualname.rpartition(".")[0]})


def _module(name: str, names: dict, package: bool = False) -> types.ModuleType:
    module = types.ModuleType(name, f"Test stand-in for {name}: see tests/torchvision_standin.py.")
    module.__spec__ = importlib.machinery.ModuleSpec(name, None, is_package=package)
    if package:
        module.__path__ = []  # a package, so submodules not stubbed here fail as ModuleNotFoundError
    for key, value in names.items():
        setattr(module, key, value)

    def __getattr__(attr: str):
        raise AttributeError(f"{name}.{attr} is not part of the torchvision test stand-in (tests/torchvision_standin.py)")

    module.__getattr__ = __getattr__  # type: ignore[attr-defined]
    return module


def _modules() -> dict[str, types.ModuleType]:
    functional = _module("torchvision.transforms.functional", {"InterpolationMode": InterpolationMode})
    transforms = _module("torchvision.transforms", {
        "InterpolationMode": InterpolationMode, "functional": functional,
        **{n: _unavailable(f"torchvision.transforms.{n}") for n in (
            "Normalize", "Compose", "RandomResizedCrop", "ToTensor", "Resize", "CenterCrop", "ColorJitter", "Grayscale")},
    }, package=True)
    misc = _module("torchvision.ops.misc", {"FrozenBatchNorm2d": _unavailable("torchvision.ops.misc.FrozenBatchNorm2d")})
    ops = _module("torchvision.ops", {"misc": misc}, package=True)
    datasets = _module("torchvision.datasets", {
        n: _unavailable(f"torchvision.datasets.{n}") for n in (
            "CIFAR100", "CIFAR10", "MNIST", "KMNIST", "FashionMNIST", "ImageFolder")})
    root = _module("torchvision", {"transforms": transforms, "ops": ops, "datasets": datasets}, package=True)
    return {m.__name__: m for m in (root, transforms, functional, ops, misc, datasets)}


@contextlib.contextmanager
def standin() -> Iterator[None]:
    """The stand-in in sys.modules (unless a real torchvision is importable) for the block;
    afterwards torchvision, timm and open_clip modules imported meanwhile are removed again."""
    import importlib.util

    import transformers.utils.import_utils  # noqa: F401 - its package checks run before the stand-in exists

    before = set(sys.modules)
    real = False
    try:
        real = importlib.util.find_spec("torchvision") is not None
        if real:
            import torchvision  # noqa: F401 - a working one needs no stand-in
    except Exception:  # noqa: BLE001 - installed but broken beside this torch: use the stand-in
        real = False
        for name in [m for m in sys.modules if m.split(".")[0] == "torchvision"]:
            del sys.modules[name]
    if not real:
        sys.modules.update(_modules())
    try:
        yield
    finally:
        for name in [m for m in sys.modules if m not in before and m.split(".")[0] in PREFIXES]:
            del sys.modules[name]
