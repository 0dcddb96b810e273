"""A Hugging Face model folder: found (a folder saved with save_pretrained, or a model id
already in the local cache, never downloaded: vlmedge runs where there may be no network), its
config read, its model class built and its weights loaded without unrestricted unpickling."""

from __future__ import annotations

import functools
import hashlib
import json
import os
import pickle
import re
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import torch

from vlmedge.errors import ModelNotFoundError, UnsupportedModelError, first_line
from vlmedge.exporters.spec import GraphSpec

_MODEL_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*(/[\w.\-]+)?$")
# Set by a source on each parameter its weights left unset (from_pretrained's random values):
# (the parameter's name, the function of the names that matter giving the refusal).
UNSET_WEIGHT = "vlmedge_unset_weight"


def resolve_folder(reference: str) -> Path:
    """A local folder, or the cached snapshot of a hub id, without touching the network."""
    path = Path(reference).expanduser()
    if os.path.isdir(path):  # False where Path.is_dir raises: a name longer than the file system takes
        _check_not_other_folder(path)
        if not (path / "config.json").is_file():
            raise UnsupportedModelError(
                f"{path} has no config.json; pass a folder written by save_pretrained()."
            )
        return path
    if os.path.exists(path):
        raise UnsupportedModelError(f"{path} is a file; pass the folder written by save_pretrained(), or load the model "
                                    "in Python and pass the module to vlmedge.export().")
    if not _MODEL_ID.match(reference):
        raise ModelNotFoundError(f"No model folder at {reference}; check the path.")
    from huggingface_hub import snapshot_download
    from huggingface_hub.constants import HF_HUB_CACHE

    try:
        return Path(snapshot_download(reference, local_files_only=True))
    except Exception:  # LocalEntryNotFoundError, HFValidationError, OfflineModeIsEnabled ...
        raise ModelNotFoundError(
            f"'{reference}' is neither a local folder nor a model in the Hugging Face cache ({HF_HUB_CACHE}); "
            f"download it where there is network (`hf download {reference}`) or pass a folder saved with save_pretrained()."
        ) from None


def _check_not_other_folder(path: Path) -> None:
    """Folders that are not a model's, said as what they are: a PEFT adapter (beside its base
    model, transformers would load the base model alone without a word), a vlmedge artifact,
    a Trainer run whose checkpoints are in subfolders."""
    if (path / "adapter_config.json").is_file():
        raise UnsupportedModelError(
            f"{path} holds a PEFT adapter (adapter_config.json), which vlmedge does not apply: exporting the folder "
            "would export the model without it; merge it (PeftModel.merge_and_unload()) and save the merged model "
            "with save_pretrained() into a folder of its own.")
    if (path / "manifest.json").is_file() and not (path / "config.json").is_file():
        raise UnsupportedModelError(f"{path} is a vlmedge artifact, not a model folder; export from the model it was "
                                    "made from (`vlmedge info` names it).")
    checkpoints = sorted(p.name for p in path.glob("checkpoint-*") if (p / "config.json").is_file())
    if checkpoints and not (path / "config.json").is_file():
        raise UnsupportedModelError(f"{path} is a training run whose models are in its checkpoint folders "
                                    f"({', '.join(checkpoints[:3])}{' ...' if len(checkpoints) > 3 else ''}); "
                                    "pass one of them.")


def read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UnsupportedModelError(f"Cannot read {path}: {exc}") from None


def architecture(config: Any, folder: Path) -> str:
    architectures = getattr(config, "architectures", None) or []
    if not architectures:
        raise UnsupportedModelError(
            f"{folder}/config.json names no architecture; save the model with save_pretrained() from its model class."
        )
    return architectures[0]


def model_class(arch: str) -> type:
    import transformers

    cls = getattr(transformers, arch, None)
    # Only model classes: config.json is data, and must not name any other attribute to call.
    if not (isinstance(cls, type) and issubclass(cls, transformers.PreTrainedModel)):
        raise UnsupportedModelError(f"Architecture {arch} is not in this version of transformers; vlmedge cannot export it.")
    return cls


def load_model(folder: Path, arch: str) -> torch.nn.Module:
    """Loads weights (safetensors, or torch.load(weights_only=True) for .bin) in eval mode.

    Eager attention keeps the exported graph to standard ONNX operators and lets
    encoders return attention maps.

    Weights are never unpickled without restriction: safetensors holds no code, and a
    pickle checkpoint (pytorch_model.bin) goes through torch.load(weights_only=True), which
    refuses any object but tensors and plain containers. There is deliberately no opt-in
    to unrestricted unpickling; convert such a checkpoint to safetensors where you trust it.
    """
    cls = model_class(arch)
    _check_buildable(cls, folder, arch)
    try:
        # float32 whatever the weights or config.json's dtype say: transformers' "auto" would trace
        # a bf16/fp16 checkpoint in that precision, and the fp32 file and its reference with it.
        # Its loading report is left unprinted: what it would report refuses the export below.
        with _transformers_quiet():
            model, loading = cls.from_pretrained(str(folder), local_files_only=True, attn_implementation="eager",
                                                 weights_only=True, dtype=torch.float32, output_loading_info=True)
    except pickle.UnpicklingError as exc:
        named = re.search(r"GLOBAL (\S+)", str(exc))
        reason = f"it calls {named.group(1)}" if named else "torch.load(weights_only=True) refused it"
        raise UnsupportedModelError(
            f"The weights in {folder} are a pickle that would run code or build objects other than tensors when "
            f"loaded ({reason}); vlmedge loads pickles only with torch.load(weights_only=True) and never unpickles "
            "them unrestricted. Save the model as safetensors (save_pretrained) from a source you trust."
        ) from None
    except ImportError as exc:  # a model class that needs a package this environment lacks (natten, timm ...)
        raise UnsupportedModelError(f"{arch} needs a package that is not installed: {first_line(exc)}") from None
    except (OSError, ValueError, RuntimeError, EOFError) as exc:
        if "ignore_mismatched_sizes" in str(exc):  # transformers points at its (unprinted) loading report
            raise _mismatch_error(cls, folder) from None
        raise UnsupportedModelError(f"Cannot load the weights in {folder} ({str(exc).strip()[:400].rstrip('.')}); save "
                                    "the model there again with save_pretrained().") from None
    except Exception as exc:  # safetensors raises its own SafetensorError for corrupt files
        if type(exc).__name__ != "SafetensorError":
            raise
        raise UnsupportedModelError(
            f"The safetensors weights in {folder} are corrupt or truncated ({exc}); save the model again."
        ) from None
    missing = set(loading.get("missing_keys") or ())
    refusal = functools.partial(_missing_error, folder, arch, unexpected=sorted(loading.get("unexpected_keys") or []))
    for name, parameter in model.named_parameters():
        if name in missing:  # judged by what the export's graphs use of them: refuse_unset_weights
            setattr(parameter, UNSET_WEIGHT, (name, refusal))
    # Of the buffers, only normalisation statistics are learned (num_batches_tracked only counts
    # batches, the rest are made from the config): they are marked on the module that reads them.
    statistics: dict[str, list[str]] = {}
    for name in sorted(missing):
        owner, _, buffer = name.rpartition(".")
        if buffer in ("running_mean", "running_var"):
            statistics.setdefault(owner, []).append(name)
    for owner, names in statistics.items():
        setattr(model.get_submodule(owner), UNSET_WEIGHT, (", ".join(names), refusal))
    return model.eval()


def refuse_if_unset(*parameters: Any) -> None:
    """Refuses parameters a source reads as values (a two-tower model's logit scale) that its
    weights left unset."""
    unset = [getattr(p, UNSET_WEIGHT) for p in parameters if hasattr(p, UNSET_WEIGHT)]
    if unset:
        raise unset[0][1](sorted(name for name, _ in unset))


def refuse_unset_weights(graph: GraphSpec) -> None:
    """Refuses a graph whose outputs depend on weights the source's files left unset: parity,
    run on that same model, cannot see them. Which parameters matter is asked of autograd on
    one pass over the example inputs (a pooler the graph leaves unused, or an embedding used
    only in training, does not); normalisation statistics matter where their module runs."""
    unset = [p for p in graph.module.parameters() if hasattr(p, UNSET_WEIGHT)]
    statistics = [m for m in graph.module.modules() if hasattr(m, UNSET_WEIGHT)]
    if not unset and not statistics:
        return
    graph.module.eval()  # as it is exported: a weight used only in training is then unused
    ran: list[torch.nn.Module] = []
    hooks = [m.register_forward_hook(lambda module, *_: ran.append(module)) for m in statistics]
    flags = [p.requires_grad for p in unset]
    try:
        for p in unset:
            p.requires_grad_(True)
        with torch.enable_grad():
            outputs = graph.module(*(graph.example_inputs[name] for name in graph.input_names))
            refuse_if_unset(*ran)
            refuse_reached((outputs,) if isinstance(outputs, torch.Tensor) else outputs, unset)
    finally:
        for hook in hooks:
            hook.remove()
        for p, flag in zip(unset, flags):
            p.requires_grad_(flag)


def refuse_reached(outputs: Any, candidates: Any) -> None:
    """Refuses the unset parameters among `candidates` that `outputs`, computed with autograd
    on, depend on."""
    unset = [p for p in candidates if hasattr(p, UNSET_WEIGHT) and p.requires_grad]
    outputs = [o for o in outputs if isinstance(o, torch.Tensor) and o.is_floating_point() and o.requires_grad]
    if not unset or not outputs:
        return
    generator = torch.Generator().manual_seed(0)  # a random projection: a plain sum is blind to what a softmax cancels
    with torch.enable_grad():
        probe = sum((o * torch.randn(o.shape, generator=generator)).sum() for o in outputs)
        if not probe.requires_grad:  # made where autograd records nothing (inference mode)
            return
        grads = torch.autograd.grad(probe, unset, allow_unused=True)
    refuse_if_unset(*(p for p, grad in zip(unset, grads) if grad is not None and bool(grad.abs().sum() > 0)))


# Prefixes that wrappers add to every parameter name of a state dict saved from them.
_WRAPPER_PREFIXES = {"module.": "DistributedDataParallel or DataParallel", "_orig_mod.": "torch.compile",
                     "base_model.model.": "a PEFT model"}


def _missing_error(folder: Path, arch: str, missing: list[str], unexpected: list[str]) -> UnsupportedModelError:
    """Weights that leave parameters of the model unset that its export uses, which
    from_pretrained fills with random values: the cause in one sentence."""
    named = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
    wrapped = [(prefix, by) for prefix, by in _WRAPPER_PREFIXES.items()
               if unexpected and sum(key.startswith(prefix) for key in unexpected) * 2 >= len(unexpected)]
    if wrapped:
        prefix, by = wrapped[0]
        fix = (f"its weights' names start with '{prefix}', which {by} adds: save the model itself (unwrapped"
               + (", merged with merge_and_unload()" if "PEFT" in by else "") + ") with save_pretrained()")
    else:
        fix = ("save the trained model with save_pretrained() from its model class"
               + (f" (the weights hold {len(unexpected)} names {arch} does not have, e.g. {unexpected[0]})"
                  if unexpected else ""))
    return UnsupportedModelError(f"The weights in {folder} leave {len(missing)} parameter(s) of {arch} unset "
                                 f"({named}), which would be exported as random values; {fix}.")


@contextmanager
def _transformers_quiet() -> Iterator[None]:
    """transformers' warnings unprinted (its loading report), errors still printed."""
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)


def _mismatch_error(cls: Any, folder: Path) -> UnsupportedModelError:
    """The weights that do not fit the config, in one sentence (loaded again, quietly, to list them)."""
    with _transformers_quiet():
        model, info = cls.from_pretrained(str(folder), local_files_only=True, ignore_mismatched_sizes=True,
                                          output_loading_info=True, weights_only=True, dtype=torch.float32)
    found = sorted(info["mismatched_keys"], key=lambda item: item[0])
    listed = ", ".join(f"{key} is {list(saved)} in the weights but {list(made)} by config.json" for key, saved, made in found[:3])
    labels = len(getattr(model.config, "id2label", None) or {})
    hint = (f" (its id2label names {labels} labels: make id2label and num_labels match the classifier's outputs)"
            if any(labels and list(made)[:1] == [labels] for _, _, made in found) else "")
    return UnsupportedModelError(f"The weights in {folder} do not fit its config.json: {listed}{hint}.")


def _check_buildable(cls: type, folder: Path, arch: str) -> None:
    """Builds the model class on the meta device (no memory, no weights read) so that a class
    needing a package this environment lacks (Dinat: natten) is refused before its weights load."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(str(folder), local_files_only=True)
        with torch.device("meta"):
            cls(config)
    except ImportError as exc:
        raise UnsupportedModelError(f"{arch} needs a package that is not installed: {first_line(exc)}") from None
    except Exception:  # noqa: BLE001 - anything else is for from_pretrained to report
        pass


def source_info(reference: str, folder: Path, arch: str, config: Any) -> dict[str, Any]:
    config_bytes = (folder / "config.json").read_bytes()
    return {
        "kind": "huggingface",
        "reference": reference,
        "folder": str(folder.resolve()),
        "architecture": arch,
        "model_type": getattr(config, "model_type", None),
        "config_sha256": hashlib.sha256(config_bytes).hexdigest(),
    }
