"""Reduced-precision files: fp16 and int8 ONNX for ONNX Runtime, and the int8 retry
ladder that ONNX Runtime and OpenVINO (exporters/openvino.py) share.

fp16: ONNX Runtime's float16 converter, inputs and outputs kept fp32 so the runtime feeds
the same arrays. int8: ONNX Runtime's quantize_static (Q/DQ, calibrated) and
quantize_dynamic, both on the un-fused fp32 graph after quant_pre_process; ONNX Runtime
fuses the Q/DQ pairs into integer kernels when it loads the file.

The int8 ladder tries recipes by level, each keeping more of the model in float: level 0
quantizes what each method quantizes for transformers by default; the next levels keep
the first and last layers, then LayerNorm, GELU, Softmax, residual Adds and the
attention's activation x activation MatMuls in float (as Optimum's ViT recipe does);
OpenVINO's last level quantizes the weights only. Within a level every recipe that passes
the gate is timed and the fastest is kept, except that files timed within LATENCY_TIE of the
fastest are a tie (timing noise on a small graph) that the most accurate wins; the first
level with a passing recipe wins.
What was tried and what was kept in float is in the report's "quantization" section. Only if
no recipe passes does the export fail, naming the best cosine reached.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import onnx

from vlmedge.errors import ExportError, ParityError
from vlmedge.exporters.budget import add_accuracy, measure_latencies
from vlmedge.exporters.calibration import rows
from vlmedge.exporters.onnx import raise_if_out_of_room
from vlmedge.exporters.pipeline import quiet_progress_bars
from vlmedge.manifest import DYNAMIC_INT8_METHOD
from vlmedge.parity import GATES, Gate, parity_report, run_in_batches
from vlmedge.runtimes.base import backend_of_target, open_session

# Ops whose weights make the first and last layers (patch / token embedding, classifier or projection head).
WEIGHT_OPS = ("Conv", "MatMul", "Gemm")
# What the most careful level keeps in float, in the words of the report.
SENSITIVE = ["LayerNormalization", "Gelu/Erf", "Softmax", "residual Add", "attention (activation x activation MatMul)",
             "first layer", "last layer"]
# Passing files of one level timed within 5% of the fastest (each by its fastest call) are a tie
# that the highest cosine wins:
# on a small graph the timings differ by noise while the cosines do not (the built-in CLIP's
# text files of one level pass at 0.9906-0.9965 and lose 0-1.3 points of zero-shot accuracy).
LATENCY_TIE = 1.05
# What makes a file int8: ONNX Runtime's quantized operators (Q/DQ pairs, integer kernels);
# in an OpenVINO IR, NNCF's FakeQuantize layers and weights stored in 8 (or 4) bits.
ONNX_INT8_OPS = ("QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "MatMulInteger", "ConvInteger",
                 "QLinearConv", "QLinearMatMul", "DynamicQuantizeMatMul", "MatMulIntegerToFloat")
IR_INT8_TYPES = ("i8", "u8", "i4", "u4")


@dataclass
class Recipe:
    """One way to make an int8 file: `build(folder, name)` writes folder/name (and any side
    files named after it) and returns (files, session options)."""

    method: str
    level: int
    kept_in_float: dict[str, Any]
    build: Callable[[Path, str], tuple[list[Path], dict[str, Any]]]
    notes: dict[str, Any] = field(default_factory=dict)
    # further session options to try on the same built file, each judged as its own attempt
    # (OpenVINO: the float parts in bf16 on CPUs that compute in it)
    alternatives: tuple[dict[str, Any], ...] = ()


def variant_gate(context: Any, precision: str) -> Gate:
    return getattr(context, "gate", None) or GATES[precision]


# Every HOLD_OUT_EVERY-th input of the user's calibration data (of at least HOLD_OUT_FROM)
# judges each int8 file beside the parity inputs instead of fitting its scales: inputs of
# the model's own domain that its scales never saw (the parity set is a few bundled samples
# and generated inputs, which a file can pass while missing on a few percent of real ones).
HOLD_OUT_EVERY, HOLD_OUT_FROM = 4, 8


def _split_calibration(feeds: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """The user's calibration feeds as (fitted, held out); None held out below HOLD_OUT_FROM."""
    n = len(next(iter(feeds.values())))
    if n < HOLD_OUT_FROM:
        return feeds, None

    def take(value: Any, held: bool) -> Any:
        index = [i for i in range(n) if (i % HOLD_OUT_EVERY == HOLD_OUT_EVERY - 1) == held]
        return [value[i] for i in index] if isinstance(value, list) else value[index]

    return ({name: take(value, False) for name, value in feeds.items()},
            {name: take(value, True) for name, value in feeds.items()})


def calibration_rows(context: Any) -> tuple[list[dict[str, np.ndarray]], str]:
    """Batch-1 calibration feeds and where they came from. Without the user's data, every other
    parity input: the gate then judges each file on inputs half of which its scales never saw,
    so a file fitted to its calibration inputs alone (it passed on them, and missed by far on
    fresh ones) fails its gate instead of shipping. With it, all but the held-out inputs."""
    if context.calibration:
        _note_thin_calibration(context, list(rows(context.calibration)))  # of the data as given
        fitted, held = _split_calibration(context.calibration)
        held_out = f" (every {HOLD_OUT_EVERY}th input held out for the gate)" if held else ""
        return list(rows(fitted)), "user data" + held_out
    context.say(f"[{context.graph.name}] no --calibration data: calibrating int8 on half of the bundled samples "
                "and generated inputs, the other half held out for the gate; real data from the model's domain "
                "gives better int8 accuracy")
    return list(rows(context.feeds))[::2], "every other bundled sample and generated input (the rest held out)"


# Fewer calibration inputs than this rarely stand for a model's real inputs.
FEW_CALIBRATION_INPUTS = 20


def _note_thin_calibration(context: Any, feeds: list[dict[str, np.ndarray]]) -> None:
    """Says so when the user's calibration data is too little or too uniform to fit int8 scales
    that hold on real inputs (one image, one solid colour): the gate still judges the file, on
    inputs that may be as narrow, so the user should know before trusting it."""
    first = [np.asarray(next(iter(feed.values()))) for feed in feeds]
    where = f"[{context.graph.name}] note: "
    if first and all(_uniform(x) for x in first):
        context.say(where + "every calibration input is uniform (a solid colour, silence): int8 scales fitted on "
                    "such inputs hold for no real one; give real data from the model's domain")
    elif len(feeds) < FEW_CALIBRATION_INPUTS:
        context.say(where + f"only {len(feeds)} calibration input(s): int8 scales fitted on so few may not hold on "
                    f"other inputs; give {FEW_CALIBRATION_INPUTS} or more from the model's domain")


def _uniform(x: np.ndarray) -> bool:
    """One value per channel (an image: (1, C, H, W)); any other input, at most two values: a
    silent clip is one value, and shorter than the window, also the padding it is filled to."""
    if x.ndim == 4:
        values = x.reshape(x.shape[0], x.shape[1], -1)
        return values.size > 0 and float(np.ptp(values, axis=-1).max()) == 0.0
    return x.size > 0 and len(np.unique(x)) <= 2


def run_ladder(writer: Any, context: Any, target: str, relpath: str, recipes: list[Recipe],
               precision: str = "int8") -> tuple[str, list[Path], dict[str, Any]]:
    """Builds recipes level by level until one passes the gate; copies the fastest passing
    one of that level to `relpath` in the artifact and records the attempts."""
    backend = backend_of_target(target).name
    gate = variant_gate(context, precision)
    graph = context.graph
    name = Path(relpath).name
    attempts: list[dict[str, Any]] = []
    held_out = _held_out_references(context)
    # inside the build folder, which the next export to this destination removes after a SIGKILL
    with tempfile.TemporaryDirectory(prefix=".quantize-", dir=writer.tmp) as work:
        for level in sorted({r.level for r in recipes}):
            passing = []
            candidates = [r for r in recipes if r.level == level]
            timed = len(candidates) > 1 or any(r.alternatives for r in candidates)
            for index, recipe in enumerate(candidates):
                folder = Path(work) / f"{recipe.method}-{level}-{index}"  # one level may try a method twice
                folder.mkdir()
                described = {"method": recipe.method, "level": level, "kept_in_float": recipe.kept_in_float,
                             **recipe.notes}
                try:
                    with quiet_progress_bars():
                        files, options = recipe.build(folder, name)
                except Exception as exc:  # quantizers raise many unrelated types
                    # a full disk is no accuracy verdict: counted as a miss, it wrote an artifact without the file
                    raise_if_out_of_room(exc, Path(context.base), f"building {target} {precision} ({recipe.method})")
                    attempts.append({**described, "passed": False, "error": f"{type(exc).__name__}: {exc}"[:500]})
                    context.say(f"[{graph.name}] {target} {precision} {recipe.method} (level {level}) failed to build: {exc}")
                    continue
                if not int8_operations(files[0]):  # the fp32 graph again: it would pass its gate as "int8"
                    nothing = ("it quantizes nothing: every operation it would quantize is kept in float in this "
                               "model")
                    attempts.append({**described, "passed": False, "error": nothing})
                    context.say(f"[{graph.name}] {target} {precision} {recipe.method} (level {level}) left out: {nothing}")
                    continue
                for extra in ({}, *recipe.alternatives):
                    attempt: dict[str, Any] = {**described, **({"session_options": extra} if extra else {})}
                    attempts.append(attempt)
                    run_options = {**options, **extra}
                    # one level may try a method twice (e.g. with and without smoothing): number them
                    repeat = [r for r in candidates if r.method == recipe.method]
                    nth = f", try {repeat.index(recipe) + 1} of {len(repeat)}" if len(repeat) > 1 else ""
                    options_text = "".join(f", {name}={value}" for name, value in extra.items())
                    label = f"{recipe.method} (level {level}{nth}{options_text})"
                    try:
                        session = open_session(files[0], backend=backend, **run_options)
                    except Exception as exc:  # a backend may refuse an option on this machine
                        attempt.update(passed=False, error=f"{type(exc).__name__}: {exc}"[:500])
                        context.say(f"[{graph.name}] {target} {precision} {label} failed to load: {exc}")
                        continue
                    try:
                        actual = run_in_batches(session, context.feeds)
                    except Exception as exc:  # a backend that computes the file wrongly: no verdict on accuracy
                        attempt.update(passed=False, error=f"{type(exc).__name__}: {exc}"[:500])
                        context.say(f"[{graph.name}] {target} {precision} {label} failed to run: {exc}")
                        continue
                    report = parity_report(context.references, actual, graph.compare, gate)
                    if held_out is not None:
                        _judge_held_out(report, session, held_out, graph.compare, gate)
                    add_accuracy(report, session, getattr(context, "evaluation", None), gate)
                    attempt.update(_summary(report))
                    context.say(f"[{graph.name}] {target} {precision} {label}: "
                                + ("passed" if report["passed"] else "failed: " + "; ".join(report["failures"]))
                                + (f" ({report['held_out']['samples']} held-out calibration inputs judged too)"
                                   if report.get("held_out") and report["passed"] else ""))
                    if report["passed"]:  # kept open, to be timed beside the level's other passing files
                        passing.append((attempt, recipe, files, run_options, extra, session))
                    del session
            if passing and timed:
                latencies = measure_latencies([p[-1] for p in passing], context.feeds)
                for (attempt, *_), latency in zip(passing, latencies):
                    attempt.update(latency_ms=latency["median_ms"], fastest_ms=latency["min_ms"])
            passing = [p[:-1] for p in passing]  # closes the sessions
            if passing:
                _, recipe, files, options, extra = _keep(passing)
                written = []
                for path in files:
                    destination = writer.path(str(Path(relpath).parent / path.name))
                    shutil.copyfile(path, destination)
                    written.append(destination)
                report_extra = getattr(context, "report_extra", None)
                if report_extra is not None:
                    report_extra["quantization"] = {"method": recipe.method, "level": recipe.level,
                                                    "kept_in_float": recipe.kept_in_float, **recipe.notes,
                                                    **({"session_options": extra} if extra else {}),
                                                    "attempts": attempts}
                return relpath, written, options
    tried = [a for a in attempts if "cosine_min" in a]
    best = max(tried, key=lambda a: a["cosine_min"], default=None)
    best_text = (f"the best reached cosine {best['cosine_min']:.6f}" + (f", top-1 {best['top1']:.0%}" if "top1" in best else "")
                 + f" ({best['method']}, level {best['level']})") if best else "none could be built"
    unjudged = [a["error"] for a in attempts if "cosine_min" not in a and "error" in a]
    if unjudged and best:  # a candidate the backend could not build or run has no cosine to compare
        best_text += f"; {len(unjudged)} could not be built or run ({unjudged[0][:160]})"
    error = ParityError(
        f"No {target} {precision} file of graph '{graph.name}' passed its gate (min cosine {gate.min_cosine}, "
        f"top-1 {gate.min_top1:.0%}) after {len(attempts)} attempt(s), the later ones keeping "
        f"{', '.join(SENSITIVE)} in float: {best_text}. Loosen the gate explicitly (Python: "
        f"vlmedge.export(..., gates={{'{precision}': vlmedge.parity.Gate(...)}})), "
        + ("" if context.calibration else "give real --calibration data, ")  # given, it was used
        + "or export without int8. No artifact was written."
    )
    error.attempts = attempts  # what each recipe reached, for callers that want to show or test it
    raise error


def _held_out_references(context: Any) -> tuple[dict[str, Any], dict[str, np.ndarray]] | None:
    """The held-out calibration inputs and the verified fp32 ONNX file's outputs on them (it
    passed its own gate against the source), or None without them."""
    _, held = _split_calibration(context.calibration) if context.calibration else (None, None)
    if held is None:
        return None
    session = open_session(Path(context.base), backend="onnxruntime")
    try:
        return held, run_in_batches(session, held)
    finally:
        session.close()


def _judge_held_out(report: dict[str, Any], session: Any, held_out: tuple[dict[str, Any], dict[str, np.ndarray]],
                    compare: dict[str, str], gate: Gate) -> None:
    """Adds the gate's verdict on the held-out calibration inputs to a file's parity report:
    it passes only if it passes on both."""
    feeds, references = held_out
    judged = parity_report(references, run_in_batches(session, feeds), compare, gate)
    report["held_out"] = {"samples": judged["samples"], "outputs": judged["outputs"], "passed": judged["passed"]}
    if not judged["passed"]:
        report["passed"] = False
        report["failures"] = report["failures"] + [f"on {judged['samples']} held-out calibration inputs: {failure}"
                                                   for failure in judged["failures"]]


def int8_operations(path: Path) -> int:
    """How many int8 operations (or 8- and 4-bit weights) a built ONNX or OpenVINO IR file holds."""
    if path.suffix == ".xml":
        import xml.etree.ElementTree as ElementTree

        layers = ElementTree.parse(path).getroot().iter("layer")
        return sum(1 for layer in layers if layer.get("type") == "FakeQuantize" or (
            layer.get("type") == "Const" and (layer.find("data") is not None)
            and layer.find("data").get("element_type") in IR_INT8_TYPES))
    graph = onnx.load(str(path), load_external_data=False).graph
    return sum(1 for node in graph.node if node.op_type in ONNX_INT8_OPS)


def _keep(passing: list[tuple]) -> tuple:
    """The most accurate of the passing files timed within LATENCY_TIE of the fastest (each
    entry starts with its attempt: fastest_ms, cosine_min). Ranked by each file's fastest
    call, not its median: another process's load only adds time, and in bursts, so on a busy
    machine the median picked one recipe or another from one export to the next (a CLIP
    image file's dynamic int8 timed 12.1 ms beside 1.3 ms in one export), where the fastest
    of the interleaved calls stays what the file costs."""
    fastest = min(p[0].get("fastest_ms", 0.0) for p in passing)
    tied = [p for p in passing if p[0].get("fastest_ms", 0.0) <= fastest * LATENCY_TIE]
    return max(tied, key=lambda p: p[0]["cosine_min"])


def _summary(report: dict[str, Any]) -> dict[str, Any]:
    """An attempt's figures for the report: its worst over the parity and held-out inputs."""
    held_out = report.get("held_out")
    outputs = [*report["outputs"].values(), *(held_out["outputs"].values() if held_out else ())]
    summary: dict[str, Any] = {
        "passed": report["passed"],
        "cosine_min": min((o.get("cosine_min", 0.0) for o in outputs), default=1.0),
    }
    if held_out:
        summary["held_out_samples"] = held_out["samples"]
    top1 = [o["top1"] for o in outputs if "top1" in o]
    if top1:
        summary["top1"] = min(top1)
    if "accuracy" in report:
        summary["accuracy"] = report["accuracy"]
    if report["failures"]:
        summary["failures"] = report["failures"]
    return summary


# --------------------------------------------------------------------------- ONNX graph facts


def first_and_last_layers(model: onnx.ModelProto) -> list[str]:
    """Names of the first and last nodes that apply a weight (Conv/MatMul/Gemm with an
    initializer operand): the embedding and the head, the layers int8 hurts most."""
    initializers = {i.name for i in model.graph.initializer}
    weighted = [n for n in model.graph.node
                if n.op_type in WEIGHT_OPS and any(i in initializers for i in n.input[:2])]
    names = [n.name for n in weighted[:1] + weighted[-1:] if n.name]
    return list(dict.fromkeys(names))


def _prepared(base: Path, folder: Path) -> Path:
    """quant_pre_process: symbolic shape inference, ONNX shape inference and ORT's basic
    graph optimisation, as ONNX Runtime's quantizer recommends before quantizing.

    ORT's symbolic shape inference cannot follow some graphs (a text graph whose sequence
    axis is dynamic builds its causal mask from that axis); those are pre-processed without
    it. Only if that fails too is the graph quantized as exported (and ORT warns)."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    prepared = folder.parent / "prepared.onnx"
    if prepared.exists():
        return prepared
    large = (base.parent / f"{base.name}.data").exists()
    for skip_symbolic_shape in (False, True):
        try:
            # When its shape inference is incomplete, ONNX Runtime saves the model (with external
            # data) to "sym_shape_infer_temp.onnx" in the working directory: keep that in the
            # quantizer's temporary folder rather than the user's.
            with contextlib.chdir(folder.parent):
                quant_pre_process(str(base.resolve()), str(prepared.resolve()), skip_symbolic_shape=skip_symbolic_shape,
                                  save_as_external_data=large, all_tensors_to_one_file=True,
                                  external_data_location="prepared.onnx.data" if large else None)
            return prepared
        except Exception:  # noqa: BLE001 - ORT raises bare Exceptions here; the next way is tried
            prepared.unlink(missing_ok=True)
    shutil.copyfile(base, prepared)
    if large:
        shutil.copyfile(base.parent / f"{base.name}.data", prepared.parent / f"{base.name}.data")
    return prepared


def _written(folder: Path, name: str) -> list[Path]:
    main = folder / name
    return [main] + sorted(p for p in folder.iterdir() if p != main and p.name.startswith(name))


def _merge_every(samples: int) -> dict[str, int]:
    """Calibration merges activation ranges every k samples instead of holding every output
    of every sample in memory (ViT-B: gigabytes). ONNX Runtime raises "No data is collected"
    when k divides the sample count, so k never does."""
    if samples <= 16:
        return {}
    k = 16
    while samples % k == 0:
        k -= 1
    return {"CalibMaxIntermediateOutputs": k}


class _Reader:
    """ONNX Runtime's CalibrationDataReader protocol over batch-1 feed dicts."""

    def __init__(self, feeds: list[dict[str, np.ndarray]]) -> None:
        self._feeds = feeds
        self._iter = iter(feeds)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._iter, None)

    def rewind(self) -> None:
        self._iter = iter(self._feeds)


def ort_int8_recipes(context: Any) -> list[Recipe]:
    """Static Q/DQ and dynamic quantization at three levels: 0, the ops each method
    quantizes for transformers (MatMul, Conv, Gemm, for Q/DQ Add; and Gather, whose embedding
    tables, a text tower's token and position embeddings, ONNX Runtime stores as int8 and
    gathers before dequantizing: CLIP B/32's text int8 file 133 -> 64 MB, cosine 0.9958
    against 0.9965);
    1, the same with the first and last layers kept in float; 2, only weight MatMuls
    quantized, so LayerNorm, GELU, Softmax, residual Adds and the attention's activation x
    activation MatMuls stay float too (Optimum's ViT recipe). A dynamic file is recorded to
    run each item of a batch alone (Session.one_item_per_call), in its gate as at load."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_dynamic, quantize_static

    base = context.base
    large = (base.parent / f"{base.name}.data").exists()
    calibration, source = calibration_rows(context)
    ends: list[str] = []  # the first and last layers, named after quant_pre_process (which may rename nodes)

    def prepare(folder: Path, keep_ends: bool) -> tuple[Path, list[str]]:
        prepared = _prepared(base, folder)
        if keep_ends and not ends:
            ends.extend(first_and_last_layers(onnx.load(str(prepared), load_external_data=False)))
        return prepared, list(ends) if keep_ends else []

    def static(op_types: list[str], keep_ends: bool, weights_only: bool = False):
        def build(folder: Path, name: str):
            prepared, exclude = prepare(folder, keep_ends)
            quantize_static(
                str(prepared), str(folder / name), _Reader(calibration),
                quant_format=QuantFormat.QDQ, op_types_to_quantize=op_types, per_channel=True,
                activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, nodes_to_exclude=exclude,
                calibrate_method=CalibrationMethod.MinMax, use_external_data_format=large,
                extra_options={"MatMulConstBOnly": weights_only, **_merge_every(len(calibration))},
            )
            return _written(folder, name), {}
        return build

    def dynamic(op_types: list[str], keep_ends: bool, weights_only: bool = False):
        def build(folder: Path, name: str):
            prepared, exclude = prepare(folder, keep_ends)
            quantize_dynamic(
                str(prepared), str(folder / name), op_types_to_quantize=op_types, per_channel=True,
                weight_type=QuantType.QInt8, nodes_to_exclude=exclude, use_external_data_format=large,
                extra_options={"MatMulConstBOnly": weights_only},
            )
            # Its activation scales are the range of the whole tensor a call gets: batched, an
            # item's answer would depend on its batchmates (a louder clip beside it moved
            # AST-base's logits to cosine 0.983 from 0.9992 alone), so each item runs alone.
            return _written(folder, name), {"one_item_per_call": True}
        return build

    norm = ["LayerNormalization", "Gelu/Erf", "Softmax"]
    calib = {"calibration": {"samples": len(calibration), "source": source}}
    static_ops, dynamic_ops = ["MatMul", "Conv", "Gemm", "Add", "Gather"], ["MatMul", "Conv", "Gemm", "Gather"]
    return [
        Recipe("ort-static-qdq", 0, {"op_types": norm, "nodes": []}, static(static_ops, False),
               {**calib, "quantized_op_types": static_ops}),
        Recipe(DYNAMIC_INT8_METHOD, 0, {"op_types": norm, "nodes": []}, dynamic(dynamic_ops, False),
               {"quantized_op_types": dynamic_ops}),
        Recipe("ort-static-qdq", 1, {"op_types": norm, "nodes": ends}, static(static_ops, True),
               {**calib, "quantized_op_types": static_ops}),
        Recipe(DYNAMIC_INT8_METHOD, 1, {"op_types": norm, "nodes": ends}, dynamic(dynamic_ops, True),
               {"quantized_op_types": dynamic_ops}),
        Recipe("ort-static-qdq", 2, {"op_types": SENSITIVE[:5], "nodes": ends}, static(["MatMul"], True, True),
               {**calib, "quantized_op_types": ["MatMul with constant weights"]}),
        Recipe(DYNAMIC_INT8_METHOD, 2, {"op_types": SENSITIVE[:5], "nodes": ends}, dynamic(["MatMul"], True, True),
               {"quantized_op_types": ["MatMul with constant weights"]}),
    ]


# --------------------------------------------------------------------------- ONNX Runtime builders


def build_onnx_int8(writer: Any, context: Any) -> tuple[str, list[Path], dict[str, Any]]:
    """onnx/<graph>.int8.onnx: the fastest passing int8 recipe of the lowest level that passes."""
    relpath = f"onnx/{context.graph.name}.int8.onnx"
    return run_ladder(writer, context, "onnx", relpath, ort_int8_recipes(context))


def build_onnx_fp16(writer: Any, context: Any) -> tuple[str, list[Path], dict[str, Any]]:
    """onnx/<graph>.fp16.onnx: weights and activations in float16, inputs and outputs fp32.

    ONNX Runtime's converter keeps the ops it has no fp16 kernels for in fp32 and adds the
    casts; on CPUs without fp16 arithmetic the file is smaller but rarely faster (the
    report's speed fields say so).
    """
    from onnxruntime.transformers.float16 import convert_float_to_float16
    from onnxruntime.transformers.onnx_model import OnnxModel

    base = context.base
    if (base.parent / f"{base.name}.data").exists():
        raise ExportError(f"The {context.graph.name} graph is over 2 GB; fp16 ONNX of such graphs is not supported yet.")
    relpath = f"onnx/{context.graph.name}.fp16.onnx"
    model = OnnxModel(convert_float_to_float16(onnx.load(str(base)), keep_io_types=True, disable_shape_infer=False))
    model.topological_sort()  # the converter appends its input casts at the end of the node list
    model = model.model
    path = writer.path(relpath)
    onnx.save_model(model, str(path))
    onnx.checker.check_model(str(path))
    return relpath, [path], {}
