"""The source model run by torch: the reference every exported file is compared with.

- `reference_outputs`: the export's parity side, the source graph on the parity feeds (the
  numpy comparison is vlmedge.parity, so `vlmedge check` needs no torch).
- `TorchSession` / `open_reference`: an artifact's source model rebuilt from the reference
  its manifest records, as a Session, so `vlmedge bench` can time it beside the exported
  files. It is not in the backend table (vlmedge.runtimes.base.BACKENDS): it reads no
  model file of the artifact, and it lives on the export side because it needs torch and
  the sources.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vlmedge.artifact import Artifact
from vlmedge.errors import BackendUnavailableError, UnsupportedModelError, exception_line
from vlmedge.exporters.spec import GraphSpec
from vlmedge.parity import feed_batches
from vlmedge.runtimes.base import Session, TensorInfo


def reference_outputs(graph: GraphSpec, feeds: dict[str, np.ndarray], batch_size: int = 16) -> dict[str, np.ndarray]:
    """Runs the source module on the parity feeds, in batches, in fp32."""
    graph.module.eval()
    collected: dict[str, list[np.ndarray]] = {name: [] for name in graph.output_names}
    with torch.no_grad():
        for batch in feed_batches(feeds, batch_size):
            # copies: a module that edits its input in place (x.div_(255)) must not change the
            # parity inputs every exported file is then run on
            args = [torch.from_numpy(np.array(batch[name])) for name in graph.input_names]
            try:
                outputs = graph.module(*args)
            except Exception as exc:  # the source's own forward: any type
                shapes = ", ".join(f"{name} {list(arg.shape)} {str(arg.dtype).removeprefix('torch.')}"
                                   for name, arg in zip(graph.input_names, args))
                raise UnsupportedModelError(f"The source model failed on a batch of its parity inputs ({shapes}): "
                                            f"{exception_line(exc)}; it must take any batch size of such inputs "
                                            "on the CPU in float32.") from exc
            if isinstance(outputs, torch.Tensor):
                outputs = (outputs,)
            for name, value in zip(graph.output_names, outputs):
                collected[name].append(value.detach().float().numpy())
    return {name: np.concatenate(parts) for name, parts in collected.items()}


class TorchSession(Session):
    """One graph of the source model in eager mode, fp32, under torch.inference_mode().

    torch's thread count is process-wide, so it is set before every run when another
    session changed it; `threads=None` leaves torch's default.
    """

    backend = "torch"

    def __init__(self, module: torch.nn.Module, inputs: list[TensorInfo], outputs: list[TensorInfo],
                 device: str = "cpu", threads: int | None = None) -> None:
        super().__init__()
        if device != "cpu":
            raise BackendUnavailableError(f"The torch reference backend runs on the CPU only, not on '{device}'.")
        self.module = module.eval()
        self.inputs = inputs
        self.outputs = outputs
        self.device = device
        self.threads = threads
        self.provider = f"torch {torch.__version__.split('+')[0]} eager (cpu)"

    def _run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.threads and torch.get_num_threads() != self.threads:
            torch.set_num_threads(self.threads)
        with torch.inference_mode():
            result = self.module(*(torch.from_numpy(feeds[info.name]) for info in self.inputs))
        if isinstance(result, torch.Tensor):
            result = (result,)
        return {info.name: tensor.detach().float().numpy() for info, tensor in zip(self.outputs, result)}

    def _release(self) -> None:
        self.module = None


def source_unavailable_reason(manifest: dict[str, Any]) -> str | None:
    """Why the source of an artifact cannot be rebuilt here, or None when it can (probably)."""
    if importlib.util.find_spec("transformers") is None:
        return "transformers is not installed (pip install 'vlmedge[export]')"
    source = manifest.get("source") or {}
    if source.get("kind") != "huggingface":
        kind = source.get("kind") or "unknown"
        return f"its source ({kind} {source.get('reference', '')!s}) cannot be rebuilt from a reference".replace(" )", ")")
    reference, folder = str(source.get("reference") or ""), source.get("folder")
    if not reference.startswith("builtin:") and not (folder and Path(folder, "config.json").is_file()):
        if not reference or Path(reference).is_absolute() or reference.startswith("."):
            return f"its source folder {folder or reference} no longer exists"
    return None


def _rebuild_spec(manifest: dict[str, Any]):
    from vlmedge.exporters.sources import resolve

    source = manifest["source"]
    reference, folder = str(source.get("reference") or ""), source.get("folder")
    options: dict[str, Any] = {"task": manifest["task"]}
    if "image_size" in source:
        options["image_size"] = tuple(source["image_size"])
    if reference.startswith("builtin:"):
        return resolve(reference, **options)
    model = folder if folder and Path(folder, "config.json").is_file() else reference
    return resolve(model, reference=reference, **options)


def open_reference(artifact: Artifact, threads: int | None = None, device: str = "cpu") -> dict[str, TorchSession]:
    """One TorchSession per graph of the artifact, from the source its manifest names.

    Refuses (BackendUnavailableError) a source that cannot be rebuilt, whose config.json
    changed since the export, or whose graphs take other inputs than the exported ones.
    """
    manifest = artifact.manifest
    reason = source_unavailable_reason(manifest)
    if reason:
        raise BackendUnavailableError(f"The torch baseline is not available: {reason}.")
    spec = _rebuild_spec(manifest)
    recorded = (manifest.get("source") or {}).get("config_sha256")
    if recorded and spec.source.get("config_sha256") != recorded:
        raise BackendUnavailableError(
            f"The torch baseline is not available: the config.json of {spec.source.get('folder')} changed since "
            "the artifact was exported, so it is not the model the artifact was made from."
        )
    by_name = {graph.name: graph for graph in spec.graphs}
    sessions = {}
    for name, io in manifest["graphs"].items():
        graph = by_name.get(name)
        inputs = [TensorInfo.from_dict(i) for i in io["inputs"]]
        if graph is None or [i.name for i in inputs] != list(graph.input_names):
            raise BackendUnavailableError(
                f"The torch baseline is not available: the rebuilt source has no graph '{name}' with inputs "
                f"{[i.name for i in inputs]}."
            )
        for info in inputs:
            example = tuple(graph.example_inputs[info.name].shape)
            if any(isinstance(w, int) and w >= 0 and w != g for w, g in list(zip(info.shape, example))[1:]):
                raise BackendUnavailableError(
                    f"The torch baseline is not available: the rebuilt source takes '{info.name}' of shape "
                    f"{list(example)}, the artifact {list(info.shape)}."
                )
        exported = {o["name"]: TensorInfo.from_dict(o) for o in io["outputs"]}
        if set(exported) != set(graph.output_names):
            raise BackendUnavailableError(
                f"The torch baseline is not available: the rebuilt source's graph '{name}' gives outputs "
                f"{list(graph.output_names)}, the artifact {sorted(exported)}."
            )
        outputs = [exported[n] for n in graph.output_names]  # in the order the module returns them
        sessions[name] = TorchSession(graph.module, inputs, outputs, device=device, threads=threads)
    return sessions
