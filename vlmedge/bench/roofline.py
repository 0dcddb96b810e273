"""How far each `vlmedge bench` row is from what the machine can do: the work of one call
counted from the model graph, its achieved rate against the measured peak of the precision
it computes in (vlmedge.bench.peak), and whether it is compute- or memory-bound.

Counting (count_onnx, count_openvino), with the shapes of the feeds the row ran:
    operations  2 x the multiply-accumulates (MACs) of MatMul, Gemm, Conv, ConvTranspose,
                Einsum, their integer and QLinear forms and ONNX Runtime's own (FusedMatMul,
                DynamicQuantizeMatMul, MatMulIntegerToFloat); nothing else counts as operations;
    bytes       a stated simple model: every weight (initializer, Constant) read once, plus
                every input and output of the other nodes read or written once; nodes
                folded at load (all inputs constant) and views (Reshape, Squeeze, Flatten
                ...) move nothing; GEMM activations are counted at their producers/consumers,
                and a graph input or output only GEMMs touch once.
An ONNX graph whose shapes ONNX shape inference cannot follow is counted by OpenVINO where it
is installed, whatever backends the run timed.
The count comes from the artifact's fp32 ONNX file of the same graph whatever the variant
(an int8 graph does the same MACs), a --peer's too (another tool's file of the same model,
judged against the same outputs: its quantize/dequantize nodes would count as traffic the
artifact's int8 file of the same model is not charged), else from the variant's own file. Bytes per element are
those of the variant: weights 1 (int8) or the float width it computes in, activations that
float width (bf16 and fp16: 2, else 4).

Per row: ops, achieved GOP/s (ops / p50), % of the peak of its compute precision (an
OpenVINO fp32 file that runs in bf16 -- its `provider` says so -- against the bf16 peak),
arithmetic intensity (ops / byte) against the ridge point (peak / bandwidth): below it the
row is memory-bound. The `onnx` package is imported only here, lazily.
"""

from __future__ import annotations

import importlib.util
import math
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Sequence

import numpy as np

from vlmedge.bench.peak import MachinePeaks, machine_peaks
from vlmedge.bench.result import BASELINE, Roofline, Row, threads_text
from vlmedge.errors import VlmedgeError, exception_line
from vlmedge.runtimes.base import backend_for_file

if TYPE_CHECKING:
    from vlmedge.bench.plan import Plan

# op type -> (index of the input whose last axis is K, index of the weight for convolutions)
MATMULS = {"MatMul": 0, "MatMulInteger": 0, "QLinearMatMul": 0,
           # ONNX Runtime's own (com.microsoft), in a graph its optimiser saved: an Optimum or ORT int8 file
           "DynamicQuantizeMatMul": 0, "MatMulIntegerToFloat": 0, "FusedMatMul": 0}
CONVS = {"Conv": 1, "ConvInteger": 1, "QLinearConv": 3, "ConvTranspose": 1}
VIEWS = {"Reshape", "Squeeze", "Unsqueeze", "Flatten", "Identity", "Shape", "Size", "Constant", "Dropout",
         "ShapeOf", "Parameter", "Result", "Convert"}  # (Convert: OpenVINO's decompression of weights)
FLOAT_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}
OPENVINO_PRECISIONS = {"f32": "fp32", "bf16": "bf16", "f16": "fp16"}


@dataclass
class OpCount:
    """The work of one call of a graph at fixed input shapes (see the module docstring)."""

    macs: int
    by_op: dict[str, int]
    weight_elements: int
    weight_bytes: int  # at the counted graph's own element types
    activation_elements: int
    activation_bytes: int
    source: str
    unknown: list[str] = field(default_factory=list)  # GEMM nodes whose shapes could not be inferred

    @property
    def ops(self) -> int:
        return 2 * self.macs


def _prod(values: Iterable[int]) -> int:
    return math.prod(int(v) for v in values)


def _einsum_macs(equation: str, shapes: Sequence[Sequence[int]]) -> int | None:
    """Multiplies of a two-or-more-operand einsum: the product of every index's size."""
    inputs = equation.replace(" ", "").split("->")[0].split(",")
    if len(inputs) == 1 == len(shapes):  # a transpose, trace or sum: no multiplies
        return 0
    if len(inputs) < 2 or "..." in equation or len(inputs) != len(shapes):
        return None
    sizes: dict[str, int] = {}
    for letters, shape in zip(inputs, shapes):
        if len(letters) != len(shape):
            return None
        for letter, size in zip(letters, shape):  # an axis of 1 broadcasts against the others' size
            sizes[letter] = max(sizes.get(letter, 1), int(size))
    return _prod(sizes.values())


def gemm_macs(op: str, inputs: Sequence[Sequence[int] | None], output: Sequence[int] | None,
              attributes: dict[str, Any]) -> int | None:
    """MACs of one GEMM-like ONNX node from its input and output shapes (None: unknown)."""
    if op == "Einsum":
        if any(s is None for s in inputs):
            return None
        return _einsum_macs(str(attributes.get("equation", "")), inputs)  # type: ignore[arg-type]
    if output is None and op in MATMULS and op != "QLinearMatMul":  # ONNX shape inference skips ORT's own ops
        output = _matmul_output(inputs[0], inputs[1] if len(inputs) > 1 else None, attributes)
    if output is None:
        return None
    if op in MATMULS:
        a = inputs[MATMULS[op]]
        return None if not a else _prod(output) * int(a[-2] if attributes.get("transA") and len(a) > 1 else a[-1])
    if op == "Gemm":
        a = inputs[0]
        return None if not a or len(a) != 2 else _prod(output) * int(a[0] if attributes.get("transA") else a[1])
    w = inputs[CONVS[op]] if len(inputs) > CONVS[op] else None
    if op == "ConvTranspose":  # every input pixel meets the whole kernel: weights [C_in, C_out / groups, k...]
        return None if not w or not inputs[0] else _prod(inputs[0]) * _prod(w[1:])
    return None if not w else _prod(output) * _prod(w[1:])


def _matmul_output(a: Sequence[int] | None, b: Sequence[int] | None, attributes: dict[str, Any]) -> list[int] | None:
    """numpy.matmul's output shape of [.., M, K] x [.., K, N] (transposed as transA/transB say)."""
    if not a or not b:
        return None
    a, b = list(a), list(b)
    for shape, flag in ((a, "transA"), (b, "transB")):
        if attributes.get(flag) and len(shape) > 1:
            shape[-2], shape[-1] = shape[-1], shape[-2]
    try:
        batch = np.broadcast_shapes(tuple(a[:-2]), tuple(b[:-2]))
    except ValueError:
        return None
    return [*batch, *a[-2:-1], *(b[-1:] if len(b) > 1 else [])]


def count_onnx(path: str | Path, input_shapes: dict[str, Sequence[int]]) -> OpCount:
    """Counts an ONNX file's work at the given input shapes (dims of other inputs stay as
    they are), with shapes from onnx.shape_inference (data propagation on).

    At batch 1, shape inference broadcasts the batch axis against a dim it could not infer
    (a position table sliced to a length computed from the input's shape, as a text graph of
    any length has) into an unknown dim, where a batch of 2 stays 2. Such a graph is counted
    at batch 2 and halved: the items of a batch are independent (the artifact's contract), so
    every MAC and activation scales with the batch."""
    count = _count_onnx_at(path, input_shapes)
    ones = {name for name, shape in input_shapes.items() if len(shape) and shape[0] == 1}
    if count.unknown and ones:
        doubled = _count_onnx_at(path, {name: (2, *shape[1:]) if name in ones else shape
                                        for name, shape in input_shapes.items()})
        if not doubled.unknown:
            return OpCount(doubled.macs // 2, {op: macs // 2 for op, macs in doubled.by_op.items()},
                           doubled.weight_elements, doubled.weight_bytes, doubled.activation_elements // 2,
                           doubled.activation_bytes // 2, doubled.source + ", at batch 2 halved")
    return count


def _count_onnx_at(path: str | Path, input_shapes: dict[str, Sequence[int]]) -> OpCount:
    import onnx
    from onnx import helper, shape_inference

    model = onnx.load(str(path), load_external_data=False)
    initializers = {t.name: t for t in model.graph.initializer}
    for value in model.graph.input:
        if value.name in input_shapes and value.name not in initializers:
            dims = value.type.tensor_type.shape.dim
            for dim, size in zip(dims, input_shapes[value.name]):
                dim.Clear()
                dim.dim_value = int(size)
    try:
        model = shape_inference.infer_shapes(model, strict_mode=False, data_prop=True)
    except Exception:  # a graph shape inference cannot follow: count what is known
        pass
    shapes: dict[str, tuple[list[int] | None, int]] = {}
    for value in [*model.graph.value_info, *model.graph.input, *model.graph.output]:
        kind = value.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else None for d in kind.shape.dim]
        size = helper.tensor_dtype_to_np_dtype(kind.elem_type).itemsize if kind.elem_type else 4
        shapes[value.name] = (None if not kind.HasField("shape") or None in dims else dims, size)
    for name, tensor in initializers.items():
        shapes[name] = (list(tensor.dims), helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize)
    constant = set(initializers)
    touched: set[str] = set()  # tensors whose bytes the non-GEMM nodes counted
    count = OpCount(0, {}, 0, 0, 0, 0, source=f"{Path(path).name} (ONNX graph, onnx.shape_inference)")
    for tensor in initializers.values():
        count.weight_elements += _prod(tensor.dims)
        count.weight_bytes += _prod(tensor.dims) * shapes[tensor.name][1]
    for node in model.graph.node:
        if node.op_type == "Constant":
            constant.update(node.output)
            value = next((a.t for a in node.attribute if a.name == "value"), None)
            if value is not None:
                n = _prod(value.dims)
                count.weight_elements += n
                count.weight_bytes += n * helper.tensor_dtype_to_np_dtype(value.data_type).itemsize
            continue
        if node.input and all(not i or i in constant for i in node.input):
            constant.update(node.output)  # folded when the model is loaded
            continue
        ins = [shapes.get(i, (None, 4))[0] for i in node.input]
        if node.op_type in MATMULS or node.op_type in CONVS or node.op_type in ("Gemm", "Einsum"):
            attributes = {a.name: helper.get_attribute_value(a) for a in node.attribute}
            if isinstance(attributes.get("equation"), bytes):
                attributes["equation"] = attributes["equation"].decode()
            macs = gemm_macs(node.op_type, ins, shapes.get(node.output[0], (None, 4))[0], attributes)
            if macs is None:
                count.unknown.append(f"{node.op_type} {node.name or node.output[0]}")
            else:
                count.macs += macs
                count.by_op[node.op_type] = count.by_op.get(node.op_type, 0) + macs
            continue
        if node.op_type in VIEWS:  # the same bytes under another shape: counted where its input was
            if node.input and node.input[0] in touched:
                touched.update(node.output)
            continue
        for name in [*(i for i in node.input if i and i not in constant), *node.output]:
            touched.add(name)
            _add_activation(count, shapes.get(name, (None, 4)))
    # a graph input or output that only a GEMM reads or writes is still read or written once
    for value in [*model.graph.input, *model.graph.output]:
        if value.name not in touched and value.name not in constant:
            _add_activation(count, shapes.get(value.name, (None, 4)))
    return count


def _add_activation(count: OpCount, shape: tuple[list[int] | None, int]) -> None:
    dims, size = shape
    if dims is not None:
        count.activation_elements += _prod(dims)
        count.activation_bytes += _prod(dims) * size


OPENVINO_GEMMS = ("MatMul", "Convolution", "GroupConvolution", "ScaledDotProductAttention", "Einsum",
                  "ConvolutionBackpropData", "GroupConvolutionBackpropData")


def _openvino_macs(op: Any, kind: str) -> int | None:
    """MACs of one OpenVINO GEMM-like op with static shapes (None: unknown)."""
    ports = range(op.get_input_size())
    if not all(op.get_input_partial_shape(i).is_static for i in ports) or not op.get_output_partial_shape(0).is_static:
        return None
    shapes = [list(op.get_input_shape(i)) for i in ports]
    out, attributes = list(op.get_output_shape(0)), op.get_attributes()
    if kind == "Einsum":
        return _einsum_macs(str(attributes.get("equation", "")), shapes)
    a, w = shapes[0], shapes[1]
    if kind == "MatMul":
        return _prod(out) * int(a[-2] if attributes.get("transpose_a") and len(a) > 1 else a[-1])
    if kind == "ScaledDotProductAttention":  # Q K^T, then (softmax) V: [.., L, E] x [.., S, E] and [.., S, Ev]
        return (_prod(a) + _prod(out)) * int(w[-2])
    if kind.endswith("BackpropData"):  # transposed convolution: each input pixel meets the whole kernel
        return _prod(a) * _prod(w[2:] if kind.startswith("Group") else w[1:])
    return _prod(out) * _prod(w[2:] if kind == "GroupConvolution" else w[1:])


def count_openvino(path: str | Path, input_shapes: dict[str, Sequence[int]]) -> OpCount:
    """Counts an OpenVINO model file's work (MatMul, Convolution, GroupConvolution, Einsum
    and the two products of ScaledDotProductAttention) after reshaping its inputs to the
    given shapes."""
    from vlmedge.runtimes.openvino import core, ov  # ov: openvino, imported without its telemetry

    model = core().read_model(str(path))
    wanted = {port: ov.PartialShape(list(input_shapes[name])) for port in model.inputs
              for name in port.get_names() if name in input_shapes}
    if wanted:
        model.reshape(wanted)
    count = OpCount(0, {}, 0, 0, 0, 0, source=f"{Path(path).name} (OpenVINO model, reshaped)")
    constant: set[str] = set()
    for op in model.get_ordered_ops():
        kind = op.get_type_name()
        if kind == "Constant":
            constant.add(op.get_friendly_name())
            n = _prod(op.get_output_shape(0)) if op.get_output_partial_shape(0).is_static else 0
            count.weight_elements += n
            count.weight_bytes += n * op.get_output_element_type(0).size
            continue
        sources = [op.input_value(i).get_node().get_friendly_name() for i in range(op.get_input_size())]
        if sources and all(s in constant for s in sources):
            constant.add(op.get_friendly_name())
            continue
        if kind in OPENVINO_GEMMS:
            macs = _openvino_macs(op, kind)
            if macs is None:
                count.unknown.append(f"{kind} {op.get_friendly_name()}")
            else:
                count.macs += macs
                count.by_op[kind] = count.by_op.get(kind, 0) + macs
            continue
        if kind in VIEWS:
            continue
        ports = [(op.get_input_partial_shape(i), op.get_input_element_type(i)) for i in range(op.get_input_size())
                 if sources[i] not in constant]
        ports += [(op.get_output_partial_shape(i), op.get_output_element_type(i)) for i in range(op.get_output_size())]
        for shape, kind_type in ports:
            if shape.is_static:
                n = _prod(shape.to_shape())
                count.activation_elements += n
                count.activation_bytes += n * kind_type.size
    return count


def compute_precision(row: Row) -> str:
    """The precision the row's GEMMs run in: int8 for int8 files; for OpenVINO the float
    precision its provider reports (fp32 files run in bf16 where the CPU does); else the file's."""
    if row.precision == "int8":
        return "int8"
    return float_precision(row)


def float_precision(row: Row) -> str:
    """The width the row's float tensors have while it runs."""
    if row.backend == "openvino":
        return OPENVINO_PRECISIONS.get(row.provider.split()[-1], "fp32") if row.provider else "fp32"
    if row.backend == "onnxruntime" and row.precision == "fp16" and row.device == "cpu" and \
            platform.machine().lower() in ("x86_64", "amd64"):
        return "fp32"  # its CPU provider has no fp16 GEMM on x86: it casts around each one (InsertedPrecisionFreeCast)
    return row.precision if row.precision in FLOAT_BYTES and row.backend != BASELINE else "fp32"


def roofline(row: Row, count: OpCount | None, peaks: MachinePeaks | None, why: str = "") -> Roofline:
    """The row's place under the roofline; fields it cannot give are None, `note` says why."""
    precision = compute_precision(row)
    if count is None or count.macs == 0:
        return Roofline(ops=None, macs=None, gops_per_s=None, compute_precision=precision, peak_gops=None,
                        percent_of_peak=None, bytes=None, intensity=None, bandwidth_gbs=None, ridge=None,
                        attainable_gops=None, bound=None, count_source=count.source if count else None,
                        note=why or "no MatMul, Gemm or Conv with known shapes in the graph")
    notes = [f"{len(count.unknown)} GEMM node(s) of unknown shape not counted"] if count.unknown else []
    width = FLOAT_BYTES[float_precision(row)]
    nbytes = count.weight_elements * (1 if precision == "int8" else width) + count.activation_elements * width
    gops = count.ops / (row.latency.p50_ms * 1e6)
    peak = peaks.gops(precision) if peaks else None
    bandwidth = peaks.bandwidth_gbs if peaks else None
    if peaks is None:
        notes.append(why or f"no peak is measured for {row.backend}")
    elif peak is None:
        notes.append(next((p.note for p in peaks.peaks if p.precision == precision), f"no {precision} peak"))
    intensity = count.ops / nbytes if nbytes else None
    ridge = peak / bandwidth if peak and bandwidth else None
    attainable = min(peak, intensity * bandwidth) if peak and bandwidth and intensity else None
    if row.mode == "end-to-end":
        notes.append("end-to-end: the time includes decoding, preprocessing and postprocessing")
    if peak and gops > peak and peaks.cached:
        load = f"{peaks.load_average[0]:.2f}" if peaks.load_average else "unknown"
        notes.append(f"above the {precision} peak measured {peaks.measured} at load {load}: "
                     "that peak understates this machine now; measure it on a quiet machine with --remeasure-peak")
    elif peak and gops > peak:  # measured in this run: the GEMM itself is the slower one
        notes.append(f"above the {precision} peak measured in this run: this graph's GEMMs run faster through "
                     f"{row.backend} than its chain of {peaks.gemm_size}^3 GEMMs does")
    return Roofline(
        ops=count.ops, macs=count.macs, gops_per_s=float(f"{gops:.4g}"), compute_precision=precision,
        peak_gops=peak, percent_of_peak=round(100 * gops / peak, 1) if peak else None, bytes=nbytes,
        intensity=float(f"{intensity:.4g}") if intensity else None, bandwidth_gbs=bandwidth,
        ridge=float(f"{ridge:.4g}") if ridge else None, attainable_gops=float(f"{attainable:.4g}") if attainable else None,
        bound=("compute" if intensity >= ridge else "memory") if ridge and intensity else None,
        count_source=count.source, note="; ".join(notes))


def _count_file(plan: Plan, row: Row) -> tuple[Path, str] | str:
    """The file whose graph is counted for a row and its kind ("onnx" or "openvino"): the
    artifact's fp32 ONNX file of the graph (for a peer's row too), else the row's own file,
    else its fp32 OpenVINO file (without the onnx package: the OpenVINO files only); or why
    there is none."""
    have = {kind: importlib.util.find_spec(kind) is not None for kind in ("onnx", "openvino")}
    entries = [*plan.artifact.model_entries(graph=row.graph, target="onnx", precision="fp32")]
    own = [Path(row.file) if row.peer is not None else plan.artifact.root / row.file] if row.file else []
    candidates = [plan.artifact.path_of(e) for e in entries] + own + [
        plan.artifact.path_of(e) for e in plan.artifact.model_entries(graph=row.graph, target="openvino",
                                                                      precision="fp32")]
    kinds = [(path, getattr(backend_for_file(path), "target", None)) for path in candidates]
    for path, kind in kinds:
        if have.get(kind):
            return path, kind
    if any(kind == "onnx" for _, kind in kinds) and not have["onnx"]:
        return "the onnx package counts operations and is not installed (pip install onnx)"
    return "no ONNX or OpenVINO file of this graph to count operations from"


def add_roofline(plan: Plan, remeasure: bool = False) -> list[MachinePeaks]:
    """Fills every row's `roofline`; returns the peaks used (one per backend and thread
    count), measured now or read from the cache (`remeasure`: measured again).

    A row that ran faster than its backend's cached peak shows that peak was measured on a
    busier or slower machine than this one now: that backend's peaks are measured again,
    once, each precision keeping the higher of the two figures, and its rows placed against
    them."""
    counts: dict[tuple, OpCount | str] = {}
    peaks: dict[tuple[str, int | None], MachinePeaks] = {}
    placed: list[tuple[Row, tuple[str, int | None], OpCount | str]] = []
    for row in plan.rows:
        count = _count_of(plan, row, counts)
        key = (row.backend, row.threads)
        if key not in peaks:
            peaks[key] = _peaks(plan, key, remeasure)
        row.roofline = _place(row, count, peaks[key])
        placed.append((row, key, count))
    stale = {key for row, key, count in placed if peaks[key].cached and _above_peak(row, count, peaks[key])}
    for key in stale:
        plan.say(f"{key[0]}: a row ran above the cached peak of its precision; measuring {key[0]}'s peaks again")
        peaks[key] = _peaks(plan, key, remeasure=True, keep_higher=True)
    for row, key, count in placed:
        if key in stale:
            row.roofline = _place(row, count, peaks[key])
    return list(peaks.values())


def _above_peak(row: Row, count: OpCount | str, peaks: MachinePeaks) -> bool:
    """Whether the row ran faster than the peak of the precision it computes in (unrounded:
    100.3% is above it, though it reads 100.0)."""
    peak = peaks.gops(compute_precision(row))
    if isinstance(count, str) or not peak or not row.latency.p50_ms:
        return False
    return count.ops / (row.latency.p50_ms / 1e3) / 1e9 > peak


def _count_of(plan: Plan, row: Row, counts: dict[tuple, OpCount | str]) -> OpCount | str:
    """The row's operation count at the shapes it ran (memoised per file and shapes), or why there is none."""
    found = _count_file(plan, row)
    try:
        shapes = plan.feed_shapes(row.graph, row.batch_size)
    except VlmedgeError:  # no stored inputs: the row says why it has no roofline
        shapes = {}
    key = (found, tuple(sorted(shapes.items())))
    if key not in counts:
        if isinstance(found, str):
            counts[key] = found
        else:
            try:
                counts[key] = (count_onnx if found[1] == "onnx" else count_openvino)(found[0], shapes)
                if found[1] == "onnx" and counts[key].unknown and importlib.util.find_spec("openvino"):
                    counts[key] = _fewer_unknown(counts[key], found[0], shapes)
            except Exception as exc:  # an unreadable graph: this row has no roofline, the others do
                counts[key] = f"operations could not be counted: {exception_line(exc)}"
    return counts[key]


def _fewer_unknown(count: OpCount, path: Path, shapes: dict[str, Sequence[int]]) -> OpCount:
    """ONNX shape inference cannot follow some graphs (Swin's window partition divides a
    length computed from the input's shape, ONNX Runtime's own operators in a graph its
    optimiser saved); OpenVINO's reading of the same file, reshaped to static shapes, can.
    Used wherever OpenVINO is installed, asked for or not: a file's count must not depend on
    the run's --backend list. Counting happens after every row is timed."""
    other = count_openvino(path, shapes)
    if len(other.unknown) >= len(count.unknown):
        return count
    other.source += f"; ONNX shape inference left {len(count.unknown)} GEMM node(s) of unknown shape"
    return other


def _peaks(plan: Plan, key: tuple[str, int | None], remeasure: bool, keep_higher: bool = False) -> MachinePeaks:
    backend, threads = key
    if not keep_higher:
        plan.say(f"peak GEMM rates and memory bandwidth for {backend}, {threads_text(threads or 1)} "
                 "(measured once per machine, then read from the cache)")
    return machine_peaks(backend, threads or 1, remeasure, warnings=plan.warnings, keep_higher=keep_higher)


def _place(row: Row, count: OpCount | str, peaks: MachinePeaks) -> Roofline:
    return roofline(row, None, None, why=count) if isinstance(count, str) else roofline(row, count, peaks)
