"""torch -> ONNX: TorchScript-based export, checker, shape inference, ORT graph optimisation."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import onnx
import torch

from vlmedge.errors import ExportError
from vlmedge.exporters.spec import GraphSpec

DEFAULT_OPSET = 18
# Protobuf cannot hold more than 2 GB; bigger models keep their weights in a side file.
_PROTOBUF_LIMIT = 2 * 1024**3 - 64 * 1024**2


def parameter_bytes(module: torch.nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in list(module.parameters()) + list(module.buffers()))


def export_onnx(graph: GraphSpec, path: Path, opset: int = DEFAULT_OPSET) -> list[Path]:
    """Exports one graph to `path`; returns every file written (model, external data).

    dynamo=False: the TorchScript exporter handles ViT, Swin and CLIP, where the dynamo
    exporter fails on Swin; the example batch is >= 2 so no batch dim gets specialised.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    args = tuple(graph.example_inputs[name] for name in graph.input_names)
    large = parameter_bytes(graph.module) > _PROTOBUF_LIMIT
    graph.module.eval()
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                graph.module, args, str(path),
                input_names=graph.input_names, output_names=graph.output_names,
                dynamic_axes=graph.dynamic_axes, opset_version=opset,
                do_constant_folding=True, dynamo=False,
            )
    except Exception as exc:  # the exporter raises many unrelated types
        raise ExportError(f"torch.onnx.export failed for graph '{graph.name}': {exc}") from exc
    data_name = f"{path.name}.data"
    if large:
        model = onnx.load(str(path), load_external_data=True)
        _remove_side_files(path)
        onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=data_name, size_threshold=1024)
    onnx.checker.check_model(str(path))
    onnx.shape_inference.infer_shapes_path(str(path), str(path))
    if not large:
        _optimize_basic(path)
        onnx.checker.check_model(str(path))
    return [path] + ([path.parent / data_name] if large else [])


def _remove_side_files(path: Path) -> None:
    for other in path.parent.iterdir():
        if other != path and other.is_file():
            other.unlink()


def _optimize_basic(path: Path) -> None:
    """Applies ONNX Runtime's basic (standard-op) graph optimisations in place.

    Only the basic level is saved: the extended levels insert ORT-only fused operators
    that OpenVINO, TensorRT and the quantizer cannot read. ORT applies all levels when
    it loads the file anyway.
    """
    import onnxruntime as ort

    optimized = path.with_suffix(".opt.onnx")
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.optimized_model_filepath = str(optimized)
    options.log_severity_level = 3
    ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
    os.replace(optimized, path)
