"""Model sources: a model reference -> ExportSpec. One module per family of sources."""

from __future__ import annotations

from typing import Any

from vlmedge.errors import UnsupportedModelError, UsageError
from vlmedge.exporters.sources.support import ArchitectureSupport, supported_architectures
from vlmedge.exporters.spec import ExportSpec

__all__ = ["ArchitectureSupport", "resolve", "supported_architectures"]

REMOTE_PREFIXES = ("hf-hub:", "hf_hub:")  # timm: and open_clip: names that open_clip/timm would download


def _unwrapped(module: Any) -> Any:
    """The module a wrapper runs, which is what is exported: torch.compile's (tracing cannot go
    through its compiled frames) and DataParallel's or DistributedDataParallel's."""
    import torch

    compiled = getattr(getattr(torch, "_dynamo", None), "eval_frame", None)
    while True:
        if isinstance(module, (torch.nn.DataParallel, torch.nn.parallel.DistributedDataParallel)):
            module = module.module
        elif compiled is not None and isinstance(module, compiled.OptimizedModule):
            module = module._orig_mod
        else:
            break
    for name, part in module.named_modules():  # compiled in place (module.compile()), or a part wrapped
        wrapped = compiled is not None and isinstance(part, compiled.OptimizedModule)
        if wrapped or getattr(part, "_compiled_call_impl", None) is not None:
            how = "is wrapped by torch.compile" if wrapped else "was compiled in place (.compile())"
            raise UnsupportedModelError(f"The module cannot be exported: {f'its part {name!r}' if name else 'it'} {how}, "
                                        "which tracing cannot go through; export the module as it was before compiling "
                                        "(only a torch.compile(module) wrapper of the whole is unwrapped).")
    return module


def resolve(model: Any, task: str | None = None, **options: Any) -> ExportSpec:
    """Turns a reference into an ExportSpec.

    `model` is a torch.nn.Module (with preprocess= and labels=), "builtin:NAME",
    "timm:NAME" or "open_clip:ARCH" (with checkpoint=PATH, a local file), a Hugging Face
    folder saved with save_pretrained, or a Hugging Face model id already in the local cache.
    """
    import torch

    if isinstance(model, torch.nn.Module):
        from vlmedge.exporters.sources.module import from_module

        check_source_options(from_module, 2, options, f"A {type(model).__name__} module")  # after module, task
        return from_module(_unwrapped(model), task=task, **options)
    if isinstance(model, dict) and ("state_dict" in model or any(isinstance(v, torch.Tensor) for v in model.values())):
        raise UnsupportedModelError("Cannot export a state dict (or a checkpoint holding one, as Lightning saves), which "
                                    "holds weights but not the model that uses them; load it into its module "
                                    "(module.load_state_dict(...)) and pass the module.")
    held = [key for key, value in model.items() if isinstance(value, torch.nn.Module)] if isinstance(model, dict) else []
    if held:
        raise UnsupportedModelError(f"Cannot export a dict; pass the module it holds under {held[0]!r}.")
    if not isinstance(model, str):
        raise UnsupportedModelError(
            f"Cannot export a {type(model).__name__}; pass a torch.nn.Module, a folder, a model id, builtin:NAME, "
            "timm:NAME or open_clip:ARCH."
        )
    scheme, _, name = model.partition(":")
    foreign = sorted({"checkpoint", "pretrained", "labels", "model_kwargs"} & set(options))
    if foreign and scheme not in ("timm", "open_clip"):
        if scheme != "builtin":
            from vlmedge.exporters.sources.hf import resolve_folder

            resolve_folder(model)  # a file or a missing path is said as such, before the options it cannot take
        raise UsageError(f"{', '.join(foreign)} (--{foreign[0]}) is for timm: and open_clip: models; a Hugging Face "
                         "model brings its weights and labels in its folder.")
    if scheme == "builtin" and name:
        from vlmedge.exporters.sources.builtin import builtin_folder

        from vlmedge.exporters.sources.hf import from_hf

        return from_hf(str(builtin_folder(name)), task=task, reference=model, **options)
    if scheme in ("timm", "open_clip") and name.lower().startswith(REMOTE_PREFIXES):
        raise UnsupportedModelError(
            f"{model} would be downloaded from the Hugging Face hub, and vlmedge never downloads; download it where "
            f"there is network (hf download REPO --local-dir FOLDER) and export {scheme}:local-dir:FOLDER."
        )
    if scheme == "timm" and name:
        from vlmedge.exporters.sources.timm import from_timm

        return from_timm(name, task=task, **options)
    if scheme == "open_clip" and name:
        from vlmedge.exporters.sources.open_clip import from_open_clip

        return from_open_clip(name, task=task, **options)
    from vlmedge.exporters.sources.hf import from_hf

    return from_hf(model, task=task, **options)


def check_source_options(builder: Any, given: int, options: dict[str, Any], what: str) -> None:
    """Refuses an option a source's builder does not take (its named parameters after the
    `given` ones): a misspelt keyword (calibraton=, imagesize=) would otherwise be dropped
    without a word by the builder's catch-all."""
    import inspect

    takes = [name for name, p in list(inspect.signature(builder).parameters.items())[given:]
             if p.kind is not inspect.Parameter.VAR_KEYWORD]
    unknown = sorted(set(options) - set(takes))
    if unknown:
        raise UsageError(f"{what} takes no option {', '.join(map(repr, unknown))}; its source takes "
                         f"{', '.join(takes) or 'none'} (not each for every model) besides vlmedge.export's own (to, "
                         "precision, calibration, ...).")
