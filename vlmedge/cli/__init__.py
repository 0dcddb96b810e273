"""The `vlmedge` command: export, predict, embed here; info, check, formats, cache in
vlmedge.cli.inspection; bench and serve in their packages.

User errors (VlmedgeError) print as one sentence, never a traceback, and exit with their class's code
(vlmedge.errors.EXIT_CODES): 1 a runtime failure, 2 bad usage (every option is checked before a model is
loaded), 3 a parity gate failure; warnings print as one line too (vlmedge.cli.base.Command).
"""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path
from typing import Any, Optional

import typer
from rich.markup import escape

from vlmedge import choices, formats
from vlmedge.cli.base import BACKEND_CHOICES, Command, app, console, err_console, print_error, show
from vlmedge.cli.rows import TABLES, attention_paths, in_input_order, ranked_table, rows_of_readable, windows_table
from vlmedge.errors import InputError, ParityError, UsageError, VlmedgeError
from vlmedge.signals import sigterm_as_interrupt
from vlmedge.tables import ClosedStdout, failure_line, print_json, stdout_failed, stdout_unwritable


@app.command(cls=Command)
def export(
    model: str = typer.Argument(..., metavar="MODEL", help="builtin:NAME (" + ", ".join(formats.builtin_models())
                                + "), a Hugging Face folder or cached id, timm:NAME or open_clip:ARCH (with --checkpoint)."),
    output: Path = typer.Option(..., "-o", "--output", "--out", metavar="DIR", help="Artifact folder to write."),
    to: str = typer.Option("onnx", "--to", metavar="TARGETS",
                           help=f"Comma-separated targets: {', '.join(choices.target_names())}."),
    precision: str = typer.Option("fp32", "--precision", metavar="PRECISIONS",
                                  help=f"Comma-separated precisions: {', '.join(choices.precision_names())}."),
    task: Optional[str] = typer.Option(None, "--task", metavar="TASK", help="Task, when the architecture does not "
                                       f"imply it: {', '.join(choices.task_names())}."),
    opset: int = typer.Option(18, "--opset", metavar="N", help="ONNX opset: 17 up to the newest torch.onnx exports."),
    image_size: Optional[str] = typer.Option(
        None, "--image-size", metavar="SIZE", help="Export resolution of image encoders and of SigLIP2 (NaFlex) models, which need one: e.g. 448 or 448x336 (height x width), a multiple of the patch size."),
    checkpoint: Optional[Path] = typer.Option(
        None, "--checkpoint", metavar="FILE", help="timm: and open_clip: models: the weights file (.safetensors, .pth, .bin)."),
    labels: Optional[Path] = typer.Option(
        None, "--labels", metavar="FILE", help="timm: classifiers: class names, one a line, in class order."),
    calibration: Optional[Path] = typer.Option(
        None, "--calibration", metavar="PATH", help="int8 calibration data: a folder of images or audio files, or a .txt of captions."),
    calibration_size: int = typer.Option(300, "--calibration-size", min=1, metavar="N", help="How many calibration items to use."),
    evaluation: Optional[Path] = typer.Option(
        None, "--eval", "--evaluation", metavar="DIR", help="Labelled data (one folder per class): accuracy of every file, judged by the gate."),
    strict: bool = typer.Option(False, "--strict", help="All or nothing: fail the export (exit 3, nothing written) "
                                "when any variant misses its gate, instead of leaving that variant out."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON on stdout (progress goes to stderr)."),
    quiet: bool = typer.Option(False, "-q", "--quiet", help="No progress lines; only errors and dropped variants."),
) -> None:
    """Export MODEL to a verified artifact: files per target and precision, each checked against the source.

    A variant that misses its parity gate is left out (shown, recorded in the manifest) and
    the command exits 3; the fp32 ONNX reference must always pass.
    """
    targets = choices.choose("--to", to, choices.target_names())
    precisions = choices.choose("--precision", precision, choices.precision_names())
    if task is not None:
        choices.choose("--task", task, choices.task_names(), many=False)
    from vlmedge.exporters.spec import parse_image_size  # torch-free: a usage error before anything loads
    parse_image_size(image_size, "--image-size", UsageError)
    for flag, path, wanted in (("--calibration", calibration, "a folder of files (or a .txt of captions)"),
                               ("--eval", evaluation, "a folder with one sub-folder of files per class label")):
        if path is not None and not path.exists():
            raise UsageError(f"{flag} {path} does not exist; give {wanted}.")
    for flag, path in (("--checkpoint", checkpoint), ("--labels", labels)):
        if path is not None and not path.is_file():
            raise UsageError(f"{flag} {path} is not a file; give the path of the file.")
    source_options = {k: v for k, v in (("image_size", image_size), ("checkpoint", checkpoint), ("labels", labels))
                      if v is not None}
    from vlmedge import export as run_export

    out = err_console if as_json else console
    with contextlib.nullcontext() if quiet else out.status("exporting") as status:
        def progress(message: str) -> None:
            if not quiet:
                out.print(f"  {message}", markup=False, highlight=False)  # "[image]" is a graph name
                status.update(f"exporting: {message}")

        with sigterm_as_interrupt("nothing was written (an earlier artifact in that folder is left as it was)."):
            artifact = run_export(model, output, to=targets, precision=precisions, task=task, opset=opset,
                                  progress=progress, calibration=calibration, calibration_size=calibration_size,
                                  evaluation=evaluation, strict=strict, **source_options)
    dropped = artifact.manifest.get("export", {}).get("dropped", [])
    if as_json:
        files = [{k: e.get(k) for k in ("path", "graph", "target", "precision")} for e in artifact.files
                 if e["role"] == "model"]
        print_json({"artifact": str(artifact.root), "task": artifact.task, "files": files, "dropped": dropped})
    elif not quiet:
        console.print((f"[yellow]export partial[/yellow] ({len(dropped)} variant(s) left out, listed on stderr)" if dropped else "[green]export success[/green]") + f": {escape(str(artifact.root))}", highlight=False)
        console.print("next:\n" + "\n".join(f"  {step}" for step in _next_steps(output, artifact)),
                      markup=False, highlight=False)
    for entry in dropped:
        err_console.print(f"[yellow]left out[/yellow] {entry['target']} {entry['precision']}: {escape(entry['reason'])}",
                          highlight=False)
    if dropped:
        raise typer.Exit(ParityError.exit_code)


# Zero-shot labels for the first predict after an export: the colours the bundled sample
# images show (exporters/sample_data, each file named after its colour), which any CLIP knows.
SAMPLE_LABELS = "red,green,blue,yellow,purple,orange,white,black"


def _next_steps(output: Path, artifact: Any) -> list[str]:
    """The commands to try next, one a line (so a narrow terminal never splits one): predict
    runs on a sample file the artifact bundles (else names the input kind, IMAGE or AUDIO),
    so that it can be run as printed."""
    from vlmedge.registry import task_named

    method = task_named(artifact.task).method("predict")
    samples = sorted(e["path"] for e in artifact.files if e["role"] == "sample" and not e["path"].endswith(".txt"))
    target = output / samples[0] if samples else method.input.upper()
    labels = f' --labels "{SAMPLE_LABELS}"' if "labels" in method.options else ""
    return [f"vlmedge info {output}", f"vlmedge predict {output} {target}{labels}", f"vlmedge check {output}"]


# predict's options that only some tasks' "predict" method takes: parameter -> (flag, the
# registry's Method.options name); given to a method that does not take it, they are refused.
METHOD_OPTIONS = {"top_k": ("--top-k", "top_k"), "labels": ("--labels", "labels"),
                  "template": ("--template", "templates"), "window_hop": ("--window-hop", "window_hop"),
                  "aggregate": ("--aggregate", "aggregate"), "threshold": ("--threshold", "threshold")}


@app.command(cls=Command)
def predict(
    ctx: typer.Context,
    artifact: Path = typer.Argument(..., metavar="ARTIFACT", help="Artifact folder."),
    inputs: list[str] = typer.Argument(..., metavar="INPUTS", help="Input files (images or audio); folders and "
                                       "tables of paths go with --out results.parquet."),
    top_k: Optional[str] = typer.Option(None, "--top-k", metavar="K|all", help="How many labels to show per input, or all; default: the task's own, as in Python (5; zero-shot: every candidate label)."),
    labels: Optional[str] = typer.Option(None, "--labels", metavar="A,B,...", help="CLIP zero-shot: comma-separated candidate labels."),
    template: Optional[list[str]] = typer.Option(None, "--template", metavar="TEXT", help="CLIP zero-shot prompt template(s), e.g. 'a photo of a {}.'"),
    window_hop: Optional[float] = typer.Option(None, "--window-hop", metavar="SECONDS", help="Audio: seconds between analysis windows."),
    aggregate: Optional[str] = typer.Option(None, "--aggregate", metavar="max|mean", help="Audio: clip-level aggregate of windows, max or mean; default: max for a multi-label (sigmoid) model, else mean."),
    threshold: Optional[float] = typer.Option(None, "--threshold", min=0, max=1, metavar="SCORE", help="Audio: only the tags scoring at least this (0 to 1), clip and windows."),
    attention: Optional[Path] = typer.Option(None, "--attention", metavar="PNG", help="Image encoders: write attention heat maps to this PNG."),
    backend: str = typer.Option("auto", "--backend", metavar="BACKEND", help=f"{', '.join(BACKEND_CHOICES)}."),
    device: str = typer.Option("cpu", "--device", metavar="DEVICE", help="Device to run on: cpu, cuda, or a backend's device name (GPU, NPU)."),
    precision: Optional[str] = typer.Option(None, "--precision", metavar="PRECISION", help=f"{', '.join(choices.precision_names())}; default: fastest verified."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
    out: Optional[Path] = typer.Option(None, "--out", metavar="FILE", help="Bulk: write every result to this .parquet (folders and .parquet/.csv tables of paths allowed)."),
    column: Optional[str] = typer.Option(None, "--column", metavar="NAME", help="The column of file paths in the input tables (.parquet/.csv), when it is not 'path'."),
    engine: str = typer.Option("local", "--engine", metavar="ENGINE", help="Bulk engine: local (this process) or ray (Ray Data; pip install 'vlmedge[ray]')."),
    address: Optional[str] = typer.Option(None, "--address", metavar="ADDRESS", help="--engine ray: cluster address (auto, ray://head:10001); default: start a local Ray."),
    batch_size: int = typer.Option(32, "--batch-size", min=1, metavar="N", help="Inputs per model call (vlmedge.load's batch_size)."),
    concurrency: Optional[int] = typer.Option(None, "--concurrency", min=1, metavar="N", help="--engine ray: inference actors (default: one, or one per GPU)."),
    gpus_per_worker: float = typer.Option(0, "--gpus-per-worker", min=0, metavar="N", help="--engine ray: GPUs per inference actor."),
    decode_workers: Optional[int] = typer.Option(None, "--decode-workers", min=1, metavar="N", help="Threads that decode and preprocess inputs while the model runs (default: min(4, CPUs); 1: serially)."),
    threads: Optional[int] = typer.Option(None, "--threads", min=1, metavar="N", help="Threads one model call runs on (the backend's session option; default: one per physical core this process may use)."),
    session_option: Optional[list[str]] = typer.Option(None, "--session-option", metavar="NAME=VALUE", help=choices.SESSION_OPTION_HELP),
) -> None:
    """Run ARTIFACT on input files and print the results."""
    from vlmedge.bulk import command as bulk

    choices.check_run_options(backend, precision)
    session = choices.session_options(threads, session_option)
    bulk_run = bulk.wants_bulk(engine, out, address, concurrency, gpus_per_worker)
    bulk.check_predict_out(engine, out, list(inputs), as_json)
    bulk.check_column(column, list(inputs))
    task, method = _check_predict_options(ctx, artifact, aggregate, attention, list(inputs))
    bulk.check_method_values(artifact, template, window_hop, labels)
    options = dict(top_k=_top_k(top_k, task, method), labels=labels, templates=template, window_hop=window_hop, aggregate=aggregate, threshold=threshold, attention=attention)
    if bulk_run:
        return bulk.predict(artifact, list(inputs), out, engine, address, batch_size, concurrency, gpus_per_worker,
                            backend, precision, options, console, err_console, device=device,
                            decode_workers=decode_workers, session_options=session, column=column)
    from vlmedge.tasks import load

    pipeline = load(artifact, backend=backend, device=device, precision=precision, decode_workers=decode_workers,
                    batch_size=batch_size, **session)
    rows, failed = rows_of_readable(method.result, pipeline, method, list(inputs), **options)
    if as_json:  # in input order, a failed input as {"input", "error"} in its place
        print_json(in_input_order(list(inputs), rows, failed))
    else:
        title = f"{artifact} ({pipeline.model.backend}, {pipeline.model.precision}, {pipeline.model.provider})"
        show(TABLES.get(method.result, ranked_table)(rows), title,
             right=("rank", "score", "dim", "norm before normalising", "start s", "end s"))
        if any(len(row.get("windows") or []) > 1 for row in rows):
            show(windows_table(rows), "windows", right=("start s", "end s", "score"))
    if failed:
        for row in failed:
            err_console.print(f"  {escape(failure_line(row['input'], row['error']))}", highlight=False)
        raise InputError(f"{len(failed)} of the {len(inputs)} inputs could not be run (listed above); the others' "
                         "results are printed." if rows else f"None of the {len(inputs)} inputs could be run (listed "
                         "above).")


def _top_k(given: Optional[str], task: Any, method: Any) -> int | None:
    """--top-k: a count, or all (None: every label); not given, the method's own default, as its
    Python call has it."""
    if given is None:
        from vlmedge.tasks.base import option_default

        return option_default(getattr(task.pipeline_class(), method.name), "top_k") if "top_k" in method.options else None
    if given.strip().lower() == "all":
        return None
    if not given.strip().isdigit() or int(given) < 1:
        raise UsageError(f"--top-k takes a positive number of labels or all, not {given!r}.")
    return int(given)


def _check_predict_options(ctx: typer.Context, artifact: Path, aggregate: Optional[str], attention: Optional[Path],
                           inputs: list[str]) -> tuple[Any, Any]:
    """The artifact's task and its "predict" method; refuses options it does not take (exit 2)."""
    from vlmedge.artifact import Artifact
    from vlmedge.registry import task_named

    task = task_named(Artifact.open(artifact, verify=False).task, f"Artifact {artifact}")
    method = task.method("predict")
    takes = [flag for flag, name in METHOD_OPTIONS.values() if name in method.options]
    from vlmedge.tasks.audio import AGGREGATES

    if aggregate is not None and aggregate not in AGGREGATES:
        raise UsageError(f"--aggregate must be {' or '.join(AGGREGATES)}, not {aggregate!r}.")
    for parameter, (flag, name) in METHOD_OPTIONS.items():
        source = ctx.get_parameter_source(parameter)
        if name not in method.options and source is not None and source.name == "COMMANDLINE":
            raise UsageError(f"{flag} does not apply to {task.name} artifacts, whose predict runs {method.name} "
                             f"(it takes {', '.join(takes) or 'no such option'}); drop {flag}.")
    if attention is not None:
        if not (method.result == "embedding" and method.input == "image"):
            raise UsageError(f"--attention draws an image encoder's attention; an artifact for {task.name} has none to "
                             "draw.")
        _check_attention_sheets(attention, inputs)
    return task, method


def _check_attention_sheets(attention: Path, inputs: list[str]) -> None:
    """Every sheet --attention will write, before any work: a PNG (render_attention's check,
    said as the CLI's), a file that can be written, and none of the inputs."""
    if attention.suffix.lower() not in ("", ".png"):
        raise UsageError(f"--attention writes PNG files; name it .png, not {attention.name}.")
    given = {os.path.realpath(i) for i in inputs}
    for sheet in attention_paths(attention, inputs):
        choices.check_writable_file(sheet, f"--attention sheet {sheet}")
        if os.path.realpath(sheet) in given:
            raise UsageError(f"--attention sheet {sheet} is one of the inputs, which it would replace; name the "
                             "sheets otherwise.")


@app.command(cls=Command)
def embed(
    artifact: Path = typer.Argument(..., metavar="ARTIFACT", help="Artifact folder (image-embedding, or clip)."),
    inputs: Optional[list[str]] = typer.Argument(None, metavar="INPUTS", help="Image files, or folders searched recursively (sorted)."),
    out: Path = typer.Option(..., "--out", metavar="FILE", help="The .npy to write; the row list goes beside it as <name>.files.json."),
    text: Optional[list[str]] = typer.Option(None, "--text", metavar="TEXT", help="CLIP: a text to embed (repeatable); text rows follow the images."),
    pooling: Optional[str] = typer.Option(None, "--pooling", metavar="POOLING", help="Image encoders: cls, mean, cls+mean or pooled; default: the model's own."),
    normalize: bool = typer.Option(True, "--normalize/--no-normalize", help="L2-normalise each embedding."),
    batch_size: int = typer.Option(32, "--batch-size", min=1, metavar="N", help="Images per model call."),
    backend: str = typer.Option("auto", "--backend", metavar="BACKEND", help=f"{', '.join(BACKEND_CHOICES)}."),
    device: str = typer.Option("cpu", "--device", metavar="DEVICE", help="Device to run on: cpu, cuda, or a backend's device name (GPU, NPU)."),
    precision: Optional[str] = typer.Option(None, "--precision", metavar="PRECISION", help=f"{', '.join(choices.precision_names())}; default: fastest verified."),
    column: Optional[str] = typer.Option(None, "--column", metavar="NAME", help="The column of image paths in the input tables (.parquet/.csv), when it is not 'path'."),
    engine: str = typer.Option("local", "--engine", metavar="ENGINE", help="local (this process) or ray (Ray Data; pip install 'vlmedge[ray]'); --out may be a .parquet."),
    address: Optional[str] = typer.Option(None, "--address", metavar="ADDRESS", help="--engine ray: cluster address (auto, ray://head:10001); default: start a local Ray."),
    concurrency: Optional[int] = typer.Option(None, "--concurrency", min=1, metavar="N", help="--engine ray: inference actors (default: one, or one per GPU)."),
    gpus_per_worker: float = typer.Option(0, "--gpus-per-worker", min=0, metavar="N", help="--engine ray: GPUs per inference actor."),
    decode_workers: Optional[int] = typer.Option(None, "--decode-workers", min=1, metavar="N", help="Threads that decode and preprocess inputs while the model runs (default: min(4, CPUs); 1: serially)."),
    threads: Optional[int] = typer.Option(None, "--threads", min=1, metavar="N", help="Threads one model call runs on (the backend's session option; default: one per physical core this process may use)."),
    session_option: Optional[list[str]] = typer.Option(None, "--session-option", metavar="NAME=VALUE", help=choices.SESSION_OPTION_HELP),
) -> None:
    """Embed many images (and, for CLIP, texts) into one (N, D) .npy, skipping unreadable files."""
    from vlmedge.bulk import command as bulk

    choices.check_run_options(backend, precision)
    session = choices.session_options(threads, session_option)
    bulk.embed(artifact, inputs, out, engine, address, batch_size, concurrency, gpus_per_worker, backend, precision,
               pooling, normalize, list(text or []), console, err_console, device=device, decode_workers=decode_workers,
               session_options=session, column=column)


from vlmedge.cli import inspection  # noqa: E402,F401 - info, check, formats, cache, registered in this order

from vlmedge.bench.command import bench as _bench_command  # noqa: E402 - typer and rich only

app.command(name="bench", cls=Command)(_bench_command)

from vlmedge.serve.command import serve as _serve_command  # noqa: E402 - typer only; the server loads when run

app.command(name="serve", cls=Command)(_serve_command)


def main(argv: list[str] | None = None) -> None:
    _hold_closed_descriptors()
    for stream in (sys.stdout, sys.stderr):  # a label or path the console's encoding (ascii, cp1252) cannot hold
        if hasattr(stream, "reconfigure"):  # is written as an escape (\u65e5), not a UnicodeEncodeError
            stream.reconfigure(errors="backslashreplace")
    try:
        app(args=argv, prog_name="vlmedge")
    except VlmedgeError as exc:  # outside any command (the app's own callback)
        print_error(exc)
        sys.exit(exc.exit_code)
    except OSError as exc:  # click's own writes (--help) to a standard output that cannot take them
        if not stdout_failed(exc):
            raise
        unwritable = stdout_unwritable(exc)
        print_error(unwritable)
        sys.exit(unwritable.exit_code)


def _hold_closed_descriptors() -> None:
    """A process started with standard output or error closed (`>&-`, `2>&-`): Python makes the
    stream None, and the next file opened takes the descriptor, into which what a library
    prints (ONNX Runtime, OpenVINO) would go. Each is held on /dev/null; a result written to
    a closed standard output still fails, as coreutils' do (ClosedStdout), and what goes to
    a closed standard error is dropped."""
    for fd, name in ((1, "stdout"), (2, "stderr")):
        if getattr(sys, name) is not None:
            continue
        null = os.open(os.devnull, os.O_WRONLY)
        if null != fd:
            os.dup2(null, fd)
            os.close(null)
        os.set_inheritable(fd, True)  # a child process gets it held too
        setattr(sys, name, ClosedStdout() if fd == 1 else open(fd, "w", closefd=False))  # noqa: SIM115


