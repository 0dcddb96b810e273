"""torch -> ONNX: TorchScript-based export, checker, shape inference, ORT graph optimisation."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import sys
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path

import onnx
import torch

from vlmedge.errors import ExportError, UnsupportedModelError, exception_line, warn_caller
from vlmedge.exporters.spec import GraphSpec
from vlmedge.tables import stdout_written

DEFAULT_OPSET = 18
# The opsets an export may ask for: from 17, where LayerNormalization is one operator, to the
# newest that torch's TorchScript exporter (dynamo=False, see export_onnx) writes.
MIN_OPSET = 17
# (a private name of torch's: 20 where a later torch moves it, the newest torch 2.13 writes)
MAX_OPSET = getattr(getattr(torch.onnx, "_constants", None), "ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET", 20)
# The libraries whose models read only shapes when the tracer warns of a value read from a
# tensor (transformers' checks of sizes), and vlmedge's own built-in models; anywhere else (the
# user's own module), the value may be the data's, and the trace keeps the branch its input took.
_LIBRARIES = ("torch", "transformers", "timm", "open_clip")


def _library_folders() -> tuple[str, ...]:
    """The installed folders of _LIBRARIES (those imported) and of vlmedge's exporters."""
    modules = [sys.modules[name] for name in _LIBRARIES if name in sys.modules]
    return tuple(str(Path(module.__file__).resolve().parent) + os.sep for module in modules
                 if getattr(module, "__file__", None)) \
        + (str(Path(__file__).resolve().parent) + os.sep,)


class TracedBranchWarning(UserWarning):
    """The model turned a tensor into a Python value while it was traced: a branch or a loop
    on it is frozen in the exported file as the example input took it."""


# Protobuf cannot hold more than 2 GB; bigger models keep their weights in a side file.
_PROTOBUF_LIMIT = 2 * 1024**3 - 64 * 1024**2


def parameter_bytes(module: torch.nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in list(module.parameters()) + list(module.buffers()))


def _say_traced_branches(graph: str, caught: list[warnings.WarningMessage]) -> None:
    """One warning naming the user's lines where tracing read a value from a tensor (the
    tracer's own warnings are silenced: libraries' models raise dozens of them on shapes)."""
    libraries = _library_folders()
    lines = sorted({f"{Path(w.filename).name}:{w.lineno}" for w in caught if issubclass(w.category, torch.jit.TracerWarning)
                    and not str(Path(w.filename).resolve()).startswith(libraries)})
    if lines:
        warn_caller(f"Graph '{graph}' turned a tensor into a Python value while it was traced (at {', '.join(lines)}): "
                    "a branch or loop on it is frozen in the exported file as the example input took it, so inputs "
                    "that would take another get wrong answers; compute it with tensor operations (torch.where) instead.",
                    TracedBranchWarning)


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
        with torch.no_grad(), warnings.catch_warnings(record=True) as caught, _captured_output() as printed, \
                _col2im_symbolic(opset), _whole_map_pools(graph.module, args):
            warnings.simplefilter("always")
            torch.onnx.export(
                graph.module, args, str(path),
                input_names=graph.input_names, output_names=graph.output_names,
                dynamic_axes=graph.dynamic_axes, opset_version=opset,
                do_constant_folding=True, dynamo=False,
            )
    except Exception as exc:  # the exporter raises many unrelated types
        # One sentence, not the exporter's dump of the whole graph (the full exception stays
        # on __cause__ for whoever debugs it).
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()] or [type(exc).__name__]
        where = next((line.strip("(). ") for line in lines if line.startswith("(Occurred when translating")), "")
        raise UnsupportedModelError(
            f"torch.onnx.export cannot export graph '{graph.name}' of this model ({type(exc).__name__}: "
            f"{lines[0][:300]}{'; ' + where if where else ''}); vlmedge cannot export it to ONNX."
        ) from exc
    if printed.text:
        sys.stderr.write(printed.text)
    _say_traced_branches(graph.name, caught)
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


def _col2im(g, input, output_size, kernel_size, dilation, padding, stride):  # noqa: A002 - torch's names
    """torch's aten::col2im symbolic (opset 18), without its need for a static output_size
    tensor: the number of spatial axes comes from the kernel (MobileViTV2's fold computes
    its output size from the traced feature map)."""
    from torch.onnx import symbolic_helper

    sizes = symbolic_helper._get_tensor_sizes(output_size)
    axes = sizes[0] if sizes and sizes[0] is not None else len(stride or dilation or padding) or 2
    pads = [p for p in padding for _ in range(2)] or [0, 0] * axes
    return g.op("Col2Im", input, output_size, kernel_size, dilations_i=list(dilation) or [1] * axes, pads_i=pads,
                strides_i=list(stride) or [1] * axes)


@contextlib.contextmanager
def _col2im_symbolic(opset: int) -> Iterator[None]:
    """Overrides torch's col2im symbolic while one export runs, then restores it."""
    if opset < 18:
        yield
        return
    from torch.onnx import symbolic_helper

    symbolic = symbolic_helper.parse_args("v", "v", "v", "is", "is", "is")(_col2im)
    torch.onnx.register_custom_op_symbolic("aten::col2im", symbolic, 18)
    try:
        yield
    finally:
        torch.onnx.unregister_custom_op_symbolic("aten::col2im", 18)


class _Captured:
    text = ""


@contextlib.contextmanager
def _captured_output() -> Iterator[_Captured]:
    """Captures what is written to the process's stdout and stderr (file descriptors 1 and
    2, where torch's C++ exporter prints a failed graph) while the block runs."""
    captured = _Captured()
    with stdout_written():  # progress text still buffered for a standard output that cannot take it
        sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    with tempfile.TemporaryFile() as sink:
        try:
            os.dup2(sink.fileno(), 1)
            os.dup2(sink.fileno(), 2)
            yield captured
        finally:
            for stream in (sys.stdout, sys.stderr):
                stream.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)
            sink.seek(0)
            captured.text = sink.read().decode("utf-8", "replace")


@contextlib.contextmanager
def _whole_map_pools(module: torch.nn.Module, args: tuple) -> Iterator[None]:
    """Within it, each AvgPool2d whose unpadded window covers its whole input (EfficientNet's
    and ALIGN's pooler: AvgPool2d(hidden_dim, ceil_mode=True) over a smaller map) is the
    AdaptiveAvgPool2d(1) it computes, the mean of every value, which exports as
    GlobalAveragePool: OpenVINO's ONNX frontend cannot convert a window larger than its input."""
    pools = [(parent, name, child) for parent in module.modules() for name, child in parent.named_children()
             if isinstance(child, torch.nn.AvgPool2d)]
    seen: dict[int, tuple] = {}

    def note(pool: torch.nn.Module, given: tuple, made: torch.Tensor) -> None:  # None: the output stays
        seen[id(pool)] = (tuple(given[0].shape[-2:]), tuple(made.shape[-2:]))

    hooks = [child.register_forward_hook(note) for _, _, child in pools]
    try:
        if pools:
            module(*args)  # the sizes of the maps they pool, at the export's image size
    finally:
        for hook in hooks:
            hook.remove()
    swapped = []
    for parent, name, pool in pools:
        given, made = seen.get(id(pool), ((), ()))
        kernel, padding = torch.nn.modules.utils._pair(pool.kernel_size), torch.nn.modules.utils._pair(pool.padding)
        if (made == (1, 1) and given and all(k >= d for k, d in zip(kernel, given)) and padding == (0, 0)
                and pool.divisor_override is None):
            setattr(parent, name, torch.nn.AdaptiveAvgPool2d(1))
            swapped.append((parent, name, pool))
    try:
        yield
    finally:
        for parent, name, pool in swapped:
            setattr(parent, name, pool)


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
    try:
        ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
        os.replace(optimized, path)
    except Exception as exc:  # ORT reports a full disk as InvalidProtobuf, with no errno to test
        optimized.unlink(missing_ok=True)
        raise_if_out_of_room(exc, path, f"ONNX Runtime optimised {path.name}")  # its copy is about as big
        raise ExportError(
            f"ONNX Runtime's graph optimisation of {path.name} failed ({exception_line(exc)}); "
            "check that the output folder is writable and export again."
        ) from exc


def raise_if_out_of_room(exc: BaseException, path: Path, doing: str) -> None:
    """A library's failure to write a file made from `path` (ONNX Runtime reports a full disk
    as InvalidProtobuf, OpenVINO as "basic_ios::clear: iostream error": no errno to test) as a
    full disk's ExportError when the disk holding `path` has less room left than `path` takes
    (with its external data, past 2 GB). The ENOSPC in its chain lets ArtifactWriter name the
    destination rather than its build folder."""
    data = path.with_name(f"{path.name}.data")
    size = path.stat().st_size + (data.stat().st_size if data.is_file() else 0)
    if shutil.disk_usage(path.parent).free >= size:
        return
    full = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path.parent))
    full.__cause__ = exc
    raise ExportError(f"No space left on the disk holding {path.parent} while {doing}; free some space and export "
                      "again.") from full
