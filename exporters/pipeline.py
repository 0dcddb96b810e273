"""export(): source -> graphs -> files per target and precision -> parity -> artifact.

Nothing half-written: everything is written into a temporary folder that replaces the
destination only at the end. A variant that misses its parity gate is left out and recorded
in the manifest (export.dropped) with the figure that failed, unless strict=True asks for
all or nothing; the fp32 ONNX reference must always pass, and at least one requested
variant must, or nothing is written.

The steps, in order: `plan_variants` (which files to build), `prepare_data` (calibration
and labelled data through the source's preprocessing), then per graph `run_reference`
(the source model's outputs), `export_graph` (the fp32 ONNX file and each variant, every
one through `verify_variant`), and `build_manifest`.
"""

from __future__ import annotations

import contextlib
import datetime
import importlib
import os
import platform
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

from vlmedge.artifact import Artifact, ArtifactWriter
from vlmedge.check import PARITY_FILE
from vlmedge.environment import export_extra_missing, package_versions
from vlmedge.errors import (BackendUnavailableError, ExportError, InputError, ParityError, UnsupportedModelError,
                            UsageError, VlmedgeError, exception_line)
from vlmedge.exporters.budget import add_accuracy, measure_latency, speed_fields
from vlmedge.exporters.onnx import DEFAULT_OPSET, MAX_OPSET, MIN_OPSET, export_onnx
from vlmedge.exporters.reference import reference_outputs
from vlmedge.exporters.sources.hf.folder import refuse_unset_weights
from vlmedge.exporters.sources.module import training_modes_kept
from vlmedge.exporters.spec import ExportSpec, GraphSpec
from vlmedge.parity import GATES, PRECISIONS, Gate, parity_report, run_in_batches
from vlmedge.registry import TASKS
from vlmedge.runtimes.base import BACKENDS, backend_of_target, open_session, unavailable_reason
from vlmedge.tasks.base import check_flag, check_progress

TARGETS = tuple(b.target for b in BACKENDS.values())
# (target, precision) -> (module, function(writer, context) -> (relpath, files, session_options));
# ("onnx", "fp32") is the exported graph itself.
VARIANT_BUILDERS: dict[tuple[str, str], tuple[str, str] | None] = {("onnx", "fp32"): None}
VARIANT_BUILDERS.update({
    ("onnx", "fp16"): ("vlmedge.exporters.quantize", "build_onnx_fp16"),
    ("onnx", "int8"): ("vlmedge.exporters.quantize", "build_onnx_int8"),
    **{("openvino", p): ("vlmedge.exporters.openvino", f"build_openvino_{p}") for p in PRECISIONS},
})
# Combinations that are no file type of their target: skipped when another requested target
# builds that precision, refused when none does.
SKIPPED_VARIANTS = {(b.target, precision): why for b in BACKENDS.values() for precision, why in b.lacks}


@dataclass
class VariantContext:
    """What a variant builder gets: the graph, its fp32 ONNX file, the parity feeds and
    source outputs, and calibration inputs when the user gave some."""

    graph: GraphSpec
    base: Path
    feeds: dict[str, np.ndarray]
    references: dict[str, np.ndarray]
    calibration: dict[str, np.ndarray] | None
    say: Callable[[str], None]
    gate: Gate | None = None
    evaluation: Any = None  # exporters.calibration.EvalSet: labelled inputs (--eval)
    report_extra: dict[str, Any] = field(default_factory=dict)  # merged into the parity report


def build_variant(target: str, precision: str, writer: ArtifactWriter,
                  context: VariantContext) -> tuple[str, list[Path], dict[str, Any]]:
    module_name, function_name = VARIANT_BUILDERS[(target, precision)]
    builder = getattr(importlib.import_module(module_name), function_name)
    return builder(writer, context)
Progress = Callable[[str], None]


# What made an artifact, recorded in its manifest.
EXPORT_PACKAGES = ("vlmedge", "torch", "transformers", "onnx", "onnxruntime", "openvino", "nncf", "tensorrt", "numpy")


def _check_choices(kind: str, chosen: str | Iterable[str], allowed: tuple[str, ...]) -> list[str]:
    """The chosen names, in order, once each: a list, one name, or names joined by commas
    (vlmedge.choices.split's forms, which the CLI passes; an API caller gets a UsageError)."""
    names = chosen.split(",") if isinstance(chosen, str) else chosen
    names = list(names) if isinstance(names, Iterable) else [names]  # once: a generator reads only once
    if not all(isinstance(name, str) for name in names):
        raise UsageError(f"The {kind} must be a name or a list of names ({', '.join(allowed)}), not {chosen!r}.")
    chosen = list(dict.fromkeys(name.strip() for name in names if name and name.strip()))
    unknown = [c for c in chosen if c not in allowed]
    if unknown or not chosen:
        raise UsageError(f"Unsupported {kind} {', '.join(unknown) or '(none)'}; choose from {', '.join(allowed)}.")
    return chosen


def _graph_io(session, graph: GraphSpec) -> dict[str, Any]:
    return {
        "inputs": [i.to_dict() for i in session.inputs],
        "outputs": [o.to_dict() for o in session.outputs],
        "dynamic_axes": {name: {str(k): v for k, v in axes.items()} for name, axes in graph.dynamic_axes.items()},
    }


def _size_mb(paths: list[Path]) -> str:
    return f"{sum(p.stat().st_size for p in paths) / 1e6:.1f} MB"


@dataclass
class VariantPlan:
    """What one export builds and how it judges it."""

    targets: list[str]
    precisions: list[str]
    variants: list[tuple[str, str]]  # (target, precision), the fp32 ONNX file first
    gates: dict[str, Gate]
    opset: int
    say: Progress
    strict: bool = False  # all or nothing: a variant missing its gate fails the export
    requested: list[tuple[str, str]] = field(default_factory=list)  # what the user asked for
    # (target, precision) -> why it was left out: {"target", "precision", "graph", "reason"}
    dropped: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    written: dict[tuple[str, str], list[str]] = field(default_factory=dict)  # relpaths per variant
    errors: dict[tuple[str, str], ParityError] = field(default_factory=dict)  # why each was dropped


@contextlib.contextmanager
def quiet_progress_bars():
    """Silences third-party progress bars while a source loads or a quantizer runs, so that
    they do not break vlmedge's progress lines: transformers' and the Hugging Face hub's
    ("Loading weights") and NNCF's ("Statistics collection", drawn on rich's global console,
    which vlmedge's own output does not use); the previous settings come back after."""
    import rich

    previous = os.environ.get("HF_HUB_DISABLE_PROGRESS_BARS")
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    shared_console, was_quiet = rich.get_console(), rich.get_console().quiet
    shared_console.quiet = True
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:
        hf_logging = None
    enabled = hf_logging is not None and hf_logging.is_progress_bar_enabled()
    if enabled:
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        shared_console.quiet = was_quiet
        if enabled:
            hf_logging.enable_progress_bar()
        if previous is None:
            os.environ.pop("HF_HUB_DISABLE_PROGRESS_BARS", None)
        else:
            os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = previous


def export(model: Any, out: str | Path, to: str | Iterable[str] = ("onnx",), precision: str | Iterable[str] = ("fp32",),
           task: str | None = None, opset: int = DEFAULT_OPSET, gates: dict[str, Gate] | None = None,
           calibration: dict[str, dict[str, np.ndarray]] | str | Path | None = None, progress: Progress | None = None,
           calibration_size: int = 300, evaluation: str | Path | None = None, strict: bool = False,
           **source_options: Any) -> Artifact:
    """Exports `model` to an artifact folder at `out` and returns it.

    Args:
        model: a Hugging Face folder or cached id, "builtin:NAME", or a torch.nn.Module
            (then pass preprocess= and labels=).
        out: the artifact folder; an existing artifact there is replaced only on success.
        to: targets ("onnx", "openvino", "tensorrt"); the fp32 ONNX file is always included.
        precision: precisions ("fp32", "fp16", "bf16", "int8").
        calibration: int8 calibration data: per graph, preprocessed inputs, or a path (a folder
            of images or audio files, or a .txt file of captions) preprocessed by the
            artifact's own preprocessing; without it the parity inputs are used.
        calibration_size: how many items of a calibration path to use (a seeded random subset).
        evaluation: a folder with one sub-folder per label: every file's accuracy, and the
            drop against the source, is measured and judged by the gate's accuracy budget.
        task: the task when the architecture does not imply it.
        opset: ONNX opset, MIN_OPSET (17: LayerNormalization is one operator) to MAX_OPSET.
        gates: parity gates per precision, replacing the defaults (tightening is safe;
            loosening is recorded in each report).
        progress: called with a line of text at every step.
        strict: all or nothing: a variant that misses its gate fails the whole export.
            Without it such a variant is left out, named with the figure that failed in
            the manifest's export.dropped, and the rest is written.
        **source_options: options of the source, e.g. image_size=448, or preprocess= and
            labels= for a torch.nn.Module.

    Raises:
        ParityError: the fp32 ONNX reference missed its gate, nothing requested passed,
            or (strict) any variant missed its gate; nothing is written then.
    """
    from vlmedge.exporters.sources import resolve

    if not isinstance(out, (str, os.PathLike)):
        raise InputError(f"out must be the artifact folder to write (a str or os.PathLike), not {type(out).__name__}.")
    if isinstance(calibration_size, bool) or not isinstance(calibration_size, int) or calibration_size < 1:
        raise InputError(f"calibration_size must be a positive integer, not {calibration_size!r}.")
    if not (calibration is None or isinstance(calibration, (dict, str, os.PathLike))):
        raise InputError(f"calibration must be a path or {{graph: {{input: array}}}}, not {type(calibration).__name__}.")
    if not (evaluation is None or isinstance(evaluation, (str, os.PathLike))):
        raise InputError(f"evaluation must be the path of a folder of labelled files, not {type(evaluation).__name__}.")
    check_progress(progress)
    if not (task is None or task in TASKS):
        raise UsageError(f"task must be one of {', '.join(TASKS)}, or None to take it from the model, not {task!r}.")
    strict = check_flag("strict", strict)
    plan = plan_variants(to, precision, opset, gates, progress or (lambda message: None))
    plan.strict = strict
    started = time.perf_counter()
    with ArtifactWriter(Path(out)) as writer, training_modes_kept(model):  # the destination checked before loading
        plan.say(f"loading {model if isinstance(model, str) else type(model).__name__}")
        with quiet_progress_bars():
            spec = resolve(model, task=task, **source_options)
        calibration_sets, eval_sets = prepare_data(spec, plan, calibration, calibration_size, evaluation)
        graphs_io: dict[str, Any] = {}
        stored: dict[str, np.ndarray] = {}
        for graph in spec.graphs:
            feeds = spec.parity_feeds[graph.name]
            references = run_reference(graph, feeds, eval_sets.get(graph.name), plan.say)
            stored.update({f"{graph.name}.input.{k}": v for k, v in feeds.items()})
            stored.update({f"{graph.name}.reference.{k}": v for k, v in references.items()})
            graphs_io[graph.name] = export_graph(writer, graph, feeds, references, plan,
                                                 calibration_sets.get(graph.name), eval_sets.get(graph.name))
        _check_something_kept(plan)
        np.savez(writer.path(PARITY_FILE), **stored)
        writer.add(PARITY_FILE, role="parity_inputs")
        for relpath, source in spec.extra_files.items():
            shutil.copyfile(source, writer.path(relpath))
            writer.add(relpath, role="sample" if relpath.startswith("samples/") else "resource")
        artifact = writer.commit(build_manifest(spec, graphs_io, plan))
    left_out = f", leaving out {len(plan.dropped)} variant(s) that missed their gate" if plan.dropped else ""
    plan.say(f"wrote {artifact.root} in {time.perf_counter() - started:.1f}s{left_out}{writer.replaced_note()}")
    return artifact


def plan_variants(to: str | Iterable[str], precision: str | Iterable[str], opset: int, gates: dict[str, Gate] | None,
                  say: Progress) -> VariantPlan:
    """Checks the targets, precisions and opset before anything is loaded, and lists the
    (target, precision) files to build: the fp32 ONNX file always, first."""
    targets = _check_choices("target", to, TARGETS)
    precisions = _check_choices("precision", precision, PRECISIONS)
    for target in targets:  # before the model loads: a missing package failed after the ONNX files were built
        backend = backend_of_target(target)
        reason = unavailable_reason(backend)
        if reason:  # no runtime for it in this vlmedge, or its package not installed: say what it needs
            raise (ExportError if backend.module is None else BackendUnavailableError)(
                f"Cannot build {target} files here: {reason}")
    requested = [(t, p) for t in targets for p in precisions]
    for t, p in [v for v in requested if v in SKIPPED_VARIANTS]:
        if all(v in SKIPPED_VARIANTS for v in requested if v[1] == p):
            raise UsageError(f"Cannot build {t} {p}: {SKIPPED_VARIANTS[(t, p)]}; add --to openvino or choose another precision.")
        say(f"skipping {t} {p}: {SKIPPED_VARIANTS[(t, p)]}")
    requested = [v for v in requested if v not in SKIPPED_VARIANTS]
    unsupported = [f"{t} {p}" for t, p in requested if (t, p) not in VARIANT_BUILDERS]
    if unsupported:
        raise ExportError(f"This vlmedge cannot build {', '.join(unsupported)}; "
                          f"it builds: {', '.join(f'{t} {p}' for t, p in VARIANT_BUILDERS)}.")
    if isinstance(opset, bool) or not isinstance(opset, int) or not MIN_OPSET <= opset <= MAX_OPSET:
        raise UsageError(f"opset must be a whole number from {MIN_OPSET} to {MAX_OPSET} (the ONNX opsets vlmedge "
                         f"exports with), not {opset!r}.")
    variants = [("onnx", "fp32")] + [v for v in requested if v != ("onnx", "fp32")]
    return VariantPlan(targets, precisions, variants, {**GATES, **_check_gates(gates)}, opset, say, requested=requested)


def _check_gates(gates: Any) -> dict[str, Gate]:
    """The user's gates: a Gate per precision named, checked before anything is built."""
    if gates is None:
        return {}
    if not (isinstance(gates, dict) and all(p in PRECISIONS and isinstance(g, Gate) for p, g in gates.items())):
        raise UsageError(f"gates must map precisions ({', '.join(PRECISIONS)}) to vlmedge.parity.Gate thresholds, "
                         f"not {gates!r}.")
    # a threshold no file can meet failed only after the whole export (a negative accuracy drop,
    # a gain, can be met)
    for precision, gate in gates.items():
        for name, low, high in (("min_cosine", -1, 1), ("min_top1", 0, 1), ("max_abs", 0, float("inf")),
                                ("max_accuracy_drop", -1, 1), ("min_eval_agreement", 0, 1)):
            value = getattr(gate, name)
            if value is None and name not in ("min_cosine", "min_top1"):
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
                raise UsageError(f"gates[{precision!r}].{name} must be a number from {low} to {high}, not {value!r}.")
    return gates


def prepare_data(spec: ExportSpec, plan: VariantPlan, calibration: Any, calibration_size: int,
                 evaluation: str | Path | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """Per graph: int8 calibration feeds (a path is read through the source's own
    preprocessing) and labelled evaluation sets (--eval)."""
    if isinstance(calibration, dict):
        _check_calibration_feeds(calibration, spec)
    if calibration is not None and "int8" not in plan.precisions:
        plan.say("no int8 requested: the calibration data is not used")
        calibration = None
    elif isinstance(calibration, (str, os.PathLike)):
        from vlmedge.exporters.calibration import calibration_feeds

        calibration = calibration_feeds(calibration, spec, size=calibration_size, say=plan.say)
    eval_sets: dict[str, Any] = {}
    if evaluation is not None:
        from vlmedge.exporters.calibration import evaluation_sets

        eval_sets = evaluation_sets(evaluation, spec, say=plan.say)
    return calibration or {}, eval_sets


def _check_calibration_feeds(calibration: dict[Any, Any], spec: ExportSpec) -> None:
    """Preprocessed calibration data names the source's graphs and their inputs: a misspelt
    name would otherwise leave that graph calibrated on the bundled samples without a word."""
    inputs = {graph.name: sorted(spec.parity_feeds[graph.name]) for graph in spec.graphs}
    unknown = [name for name in calibration if name not in inputs]
    if unknown:
        raise InputError(f"calibration names graph(s) {', '.join(map(repr, unknown))} this model does not have; "
                         f"its graphs are {', '.join(inputs)}.")
    for name, feeds in calibration.items():
        if not (isinstance(feeds, dict) and sorted(feeds) == inputs[name]
                and all(isinstance(array, np.ndarray) and array.ndim >= 1 and len(array) for array in feeds.values())):
            raise InputError(f"calibration[{name!r}] must map each of the graph's inputs ({', '.join(inputs[name])}) "
                             "to a non-empty array of preprocessed rows.")


def run_reference(graph: GraphSpec, feeds: dict[str, np.ndarray], evaluation: Any,
                  say: Progress) -> dict[str, np.ndarray]:
    """The source model's outputs on the parity feeds; with labelled data, also the
    source's accuracy and predictions on it, which the variants are judged against."""
    refuse_unset_weights(graph)  # once per graph, before its outputs are taken as the reference
    say(f"[{graph.name}] running the source model on {len(next(iter(feeds.values())))} parity inputs")
    references = reference_outputs(graph, feeds)
    for name, values in references.items():  # else every file "misses" its gate, at tolerance inf
        broken = int((~np.isfinite(values)).reshape(len(values), -1).any(axis=1).sum())
        if broken:
            raise UnsupportedModelError(f"The source model gives NaN or infinite {name} on {broken} of its "
                                        f"{len(values)} parity inputs (graph '{graph.name}'); its weights or config "
                                        "are broken, so check it with transformers before exporting it.")
    if evaluation is not None:
        source_outputs = reference_outputs(graph, evaluation.feeds)
        evaluation.source_accuracy = evaluation.accuracy(source_outputs)
        evaluation.source_predictions = evaluation.predictions(source_outputs)
        say(f"[{graph.name}] source accuracy on the labelled data: {evaluation.source_accuracy:.2%}")
        chance = 1 / max(source_outputs[evaluation.output].shape[-1], 1)  # a guess among the model's labels
        if evaluation.source_accuracy < chance:  # the model passes parity: its folders are likely misnamed
            say(f"[{graph.name}] note: the source model itself scores below chance ({chance:.2%}) on the labelled "
                "data: are the class folders named after the labels they hold?")
        if evaluation.classes == 1:
            say(f"[{graph.name}] note: the labelled data holds one class: its accuracy says little of the others")
    return references


def export_graph(writer: ArtifactWriter, graph: GraphSpec, feeds: dict[str, np.ndarray],
                 references: dict[str, np.ndarray], plan: VariantPlan, calibration: Any,
                 evaluation: Any) -> dict[str, Any]:
    """Writes the graph's fp32 ONNX file and every planned variant, each verified, and
    returns the graph's inputs and outputs for the manifest."""
    base = f"onnx/{graph.name}.fp32.onnx"
    t0 = time.perf_counter()
    base_files = export_onnx(graph, writer.path(base), opset=plan.opset)
    plan.say(f"[{graph.name}] exported {base} in {time.perf_counter() - t0:.1f}s ({_size_mb(base_files)})")
    baseline = None
    graph_io: dict[str, Any] = {}
    # The fp32 ONNX graph is always kept: every other variant is built from it, here or
    # later on the target device (vlmedge build).
    for target, prec in plan.variants:
        if (target, prec) in plan.dropped:  # missed its gate on an earlier graph: left out for every graph
            continue
        context = VariantContext(graph=graph, base=writer.path(base), feeds=feeds, references=references,
                                 calibration=calibration, say=plan.say, gate=plan.gates[prec], evaluation=evaluation)
        files: list[Path] = []
        try:
            if (target, prec) == ("onnx", "fp32"):
                relpath, files, session_options = base, base_files, {}
            else:
                t0 = time.perf_counter()
                relpath, files, session_options = build_variant(target, prec, writer, context)
                plan.say(f"[{graph.name}] built {relpath} in {time.perf_counter() - t0:.1f}s ({_size_mb(files)})")
            session = open_session(writer.path(relpath), backend=backend_of_target(target).name, **session_options)
            report = verify_variant(session, context, target, prec, relpath, plan, baseline)
        except VlmedgeError as exc:
            if isinstance(exc, ParityError) and not plan.strict and (target, prec) != ("onnx", "fp32"):
                _drop(writer, plan, graph.name, target, prec, exc, files)
                continue
            exc.variant = (target, prec)  # which file failed, for callers that retry without it
            raise
        except Exception as exc:  # converters and quantizers raise many unrelated types
            raise _build_failure(graph.name, target, prec, exc) from exc
        if (target, prec) == ("onnx", "fp32"):
            baseline = report["latency"]
        graph_io = graph_io or _graph_io(session, graph)
        written = plan.written.setdefault((target, prec), [])
        for extra in files[1:]:
            written.append(extra.relative_to(writer.tmp).as_posix())
            writer.add(written[-1], role="weights", graph=graph.name)
        entry_meta = {"session_options": session_options} if session_options else {}
        writer.add(relpath, role="model", graph=graph.name, target=target, precision=prec, parity=report, **entry_meta)
        written.append(relpath)
    return graph_io


def _build_failure(graph: str, target: str, prec: str, exc: Exception) -> VlmedgeError:
    """A converter's or quantizer's own exception as one sentence naming the variant (the
    full exception stays on __cause__), with `variant` set as for vlmedge's own errors; a
    package of the export extra its tools import (NNCF) named with the pip command; running out
    of memory said as such, since more memory, not leaving the variant out, is what it needs."""
    missing = export_extra_missing(exc) if isinstance(exc, ModuleNotFoundError) else None
    outcome = ("ran out of memory; free memory or raise this process's memory limit (ulimit -v)" if isinstance(
        exc, MemoryError) else f"failed ({exception_line(exc)}); export without {target} {prec} (--to, --precision)")
    error = missing or ExportError(f"Building the {target} {prec} file of graph '{graph}' {outcome}.")
    error.variant = (target, prec)
    return error


def _drop(writer: ArtifactWriter, plan: VariantPlan, graph: str, target: str, prec: str, error: ParityError,
          files: list[Path]) -> None:
    """Leaves a variant that missed its gate out of the artifact, for every graph: its files
    (of this graph and of the graphs before) are removed and the reason recorded."""
    reason = str(error).replace(" No artifact was written.", "").strip()
    plan.dropped[(target, prec)] = {"target": target, "precision": prec, "graph": graph, "reason": reason}
    plan.errors[(target, prec)] = error
    gone = set(plan.written.pop((target, prec), []))
    gone.update(p.relative_to(writer.tmp).as_posix() for p in files if p.is_relative_to(writer.tmp))
    writer.files = [e for e in writer.files if e["path"] not in gone]
    for relpath in gone:
        writer.path(relpath).unlink(missing_ok=True)
    plan.say(f"[{graph}] left out {target} {prec}: {reason}")


def _check_something_kept(plan: VariantPlan) -> None:
    """At least one variant the user asked for passed; otherwise nothing is written (with
    the variant's own error when only one was asked for)."""
    if plan.dropped and all(v in plan.dropped for v in plan.requested):
        if len(plan.errors) == 1:
            raise next(iter(plan.errors.values()))
        raise ParityError("No requested variant passed its parity gate: "
                          + "; ".join(d["reason"] for d in plan.dropped.values()) + " No artifact was written.")


def verify_variant(session: Any, context: VariantContext, target: str, prec: str, relpath: str,
                   plan: VariantPlan, baseline: dict[str, Any] | None) -> dict[str, Any]:
    """The file's parity report against the source (raises ParityError when it misses its
    gate), with its accuracy on labelled data and its batch-1 latency (baseline: the fp32
    ONNX file's, None while that file itself is verified)."""
    graph, gate = context.graph, plan.gates[prec]
    report = parity_report(
        context.references, run_in_batches(session, context.feeds), graph.compare, gate,
        graph=graph.name, target=target, precision=prec, backend=session.backend, provider=session.provider,
    )
    if gate != GATES[prec]:
        report["gate_default"] = GATES[prec].to_dict()
    report.update(context.report_extra)
    add_accuracy(report, session, context.evaluation, gate)
    _raise_on_failure(report, relpath)
    latency = measure_latency(session, context.feeds)
    if (target, prec) == ("onnx", "fp32"):  # the reference every other file's speed-up is against
        baseline = latency
    report.update(speed_fields(latency, prec, baseline))
    if report.get("not_faster"):
        plan.say(f"[{graph.name}] note: {relpath} ran no faster than the fp32 ONNX file here "
                 f"(its fastest call {latency['min_ms']:.1f} ms vs {baseline['min_ms']:.1f} ms at batch 1)")
    plan.say(f"[{graph.name}] parity passed for {relpath}: " + _summary(report)
             + (f"; accuracy {report['accuracy']['top1']:.2%}" if "accuracy" in report else "")
             + f"; {report['latency_ms']:.1f} ms at batch 1")
    return report


def build_manifest(spec: ExportSpec, graphs_io: dict[str, Any], plan: VariantPlan) -> dict[str, Any]:
    """Everything the manifest says besides its files (the writer adds those)."""
    return {
        "task": spec.task,
        "source": spec.source,
        "graphs": graphs_io,
        "preprocess": spec.preprocess,
        "labels": spec.labels,
        "postprocess": spec.postprocess,
        "versions": {"python": platform.python_version(), **package_versions(EXPORT_PACKAGES)},
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "export": {"opset": plan.opset, "targets": sorted({"onnx", *plan.targets}), "precisions": plan.precisions,
                   **({"dropped": list(plan.dropped.values())} if plan.dropped else {})},
        **spec.manifest_extra,
    }


def _summary(report: dict[str, Any]) -> str:
    parts = []
    for name, m in report["outputs"].items():
        text = f"{name} cosine {m['cosine_min']:.6f}, max abs {m['max_abs']:.2e}"
        if "top1" in m:
            text += f", top-1 {m['top1']:.0%}"
        parts.append(text)
    return "; ".join(parts)


def _raise_on_failure(report: dict[str, Any], relpath: str) -> None:
    if not report["passed"]:
        raise ParityError(
            f"{relpath} failed its {report['precision']} parity gate on {report['samples']} inputs: "
            + "; ".join(report["failures"]) + ". No artifact was written."
        )
