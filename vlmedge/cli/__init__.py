"""The `vlmedge` command: export, predict, embed, info, check, bench, serve, formats.

User errors (VlmedgeError) print as one sentence, never a traceback, and exit with their class's code
(vlmedge.errors.EXIT_CODES): 1 a runtime failure, 2 bad usage (every option is checked before a model is
loaded), 3 a parity gate failure; warnings print as one line too. Tables turn into key: value blocks when
the terminal (or a log: 80 columns) is too narrow; a line of text is never wrapped, to stay one line in a log.
"""

from __future__ import annotations

import contextlib
import json
import re
import sys
import warnings
from pathlib import Path
from typing import Any, Optional

import typer
import typer.core
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from vlmedge import choices, formats
from vlmedge.cli.rows import ROWS, TABLES, check_summary, ranked_table, windows_table
from vlmedge.errors import BackendUnavailableError, ParityError, UsageError, VlmedgeError
from vlmedge.signals import sigterm_as_interrupt
from vlmedge.version import __version__


class _Command(typer.core.TyperCommand):
    """Help that reads `ARTIFACT INPUTS...`, not typer's `{ARTIFACT} {INPUTS}...` with
    `<list[str]>` type labels beside each argument."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for param in self.params:
            if isinstance(param, typer.core.TyperArgument):
                param.display_type = lambda ctx: None  # the metavar and help say what it is

    def collect_usage_pieces(self, ctx: Any) -> list[str]:
        return [re.sub(r"\{([^{}]+)\}", r"\1", piece) for piece in super().collect_usage_pieces(ctx)]

    def invoke(self, ctx: Any) -> Any:
        """A VlmedgeError ends the command with one line and its class's exit code, however the app is run
        (the console script, `python -m`, typer's test runner); a warning is one line, not Python's two."""
        with warnings.catch_warnings():
            warnings.showwarning = lambda message, *_, **__: err_console.print(
                f"[yellow]warning:[/yellow] {escape(str(message))}", highlight=False)
            try:
                return super().invoke(ctx)
            except VlmedgeError as exc:
                print_error(exc)
                raise typer.Exit(exc.exit_code) from None


app = typer.Typer(
    help="Export, verify and run vision, vision-language and audio transformers on edge hardware.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # plain help: "pip install 'vlmedge[ray]'" keeps its [ray]
)
# Soft wrap: a line of text stays one line however narrow the terminal or a log (rich would wrap at 80).
console = Console(soft_wrap=True)
err_console = Console(stderr=True, soft_wrap=True)
BACKEND_CHOICES = ["auto", *choices.backend_names()]


def _version(value: bool) -> None:
    if value:
        print(f"vlmedge {__version__}")
        raise typer.Exit()


@app.callback()
def _main(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="Print the version and exit.")) -> None:
    """Export, verify and run vision, vision-language and audio transformers on edge hardware."""


def show(rows: list[dict[str, str]], title: str, right: tuple[str, ...] = ()) -> None:
    """Rows (column -> text with rich markup) as a table when it fits the console, else (a
    narrow terminal, a log: 80 columns) as blocks: the first column, then the others as
    `column: value` pairs, as many to a line as fit."""
    if not rows:
        return
    columns = list(rows[0])
    table = Table(title=title, title_justify="left")
    for column in columns:
        table.add_column(column, justify="right" if column in right else "left", overflow="fold")
    for row in rows:
        table.add_row(*(row.get(c, "") for c in columns))
    if console.measure(table, options=console.options.update(width=10_000)).maximum <= console.width:
        console.print(table)
        return
    console.print(f"[bold]{escape(title)}[/bold]")
    for row in rows:
        if row[columns[0]]:
            console.print(row[columns[0]], highlight=False)
        lines: list[str] = []
        for pair in (f"{column}: {row[column]}" for column in columns[1:] if row.get(column)):
            joined = f"{lines[-1]}, {pair}" if lines else pair
            if lines and len(Text.from_markup("  " + joined)) <= console.width:
                lines[-1] = joined
            else:
                lines.append(pair)
        for line in lines:
            console.print(f"  {line}", highlight=False)


@app.command(cls=_Command)
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
    from vlmedge.exporters.pipeline import export as run_export

    out = err_console if as_json else console
    with contextlib.nullcontext() if quiet else out.status("exporting") as status:
        def progress(message: str) -> None:
            if not quiet:
                out.print(f"  {message}", markup=False, highlight=False)  # "[image]" is a graph name
                status.update(f"exporting: {message}")

        with sigterm_as_interrupt():  # a killed export leaves no build folder or quantizer scratch behind
            artifact = run_export(model, output, to=targets, precision=precisions, task=task, opset=opset,
                                  progress=progress, calibration=calibration, calibration_size=calibration_size,
                                  evaluation=evaluation, strict=strict, **source_options)
    dropped = artifact.manifest.get("export", {}).get("dropped", [])
    if as_json:
        files = [{k: e.get(k) for k in ("path", "graph", "target", "precision")} for e in artifact.files
                 if e["role"] == "model"]
        print(json.dumps({"artifact": str(artifact.root), "task": artifact.task, "files": files, "dropped": dropped},
                         indent=2))
    elif not quiet:
        console.print((f"[yellow]export partial[/yellow] ({len(dropped)} variant(s) left out, below)" if dropped else "[green]export success[/green]") + f": {escape(str(artifact.root))}", highlight=False)
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


@app.command(cls=_Command)
def predict(
    ctx: typer.Context,
    artifact: Path = typer.Argument(..., metavar="ARTIFACT", help="Artifact folder."),
    inputs: list[str] = typer.Argument(..., metavar="INPUTS", help="Input files (images or audio); folders and "
                                       "tables of paths go with --out results.parquet."),
    top_k: int = typer.Option(5, "--top-k", min=1, metavar="K", help="How many labels to show per input."),
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
    engine: str = typer.Option("local", "--engine", metavar="ENGINE", help="Bulk engine: local (this process) or ray (Ray Data; pip install 'vlmedge[ray]')."),
    address: Optional[str] = typer.Option(None, "--address", metavar="ADDRESS", help="--engine ray: cluster address (auto, ray://head:10001); default: start a local Ray."),
    batch_size: int = typer.Option(32, "--batch-size", min=1, metavar="N", help="Bulk: inputs per model call."),
    concurrency: Optional[int] = typer.Option(None, "--concurrency", min=1, metavar="N", help="--engine ray: inference actors (default: one, or one per GPU)."),
    gpus_per_worker: float = typer.Option(0, "--gpus-per-worker", min=0, metavar="N", help="--engine ray: GPUs per inference actor."),
    decode_workers: Optional[int] = typer.Option(None, "--decode-workers", min=1, metavar="N", help="Threads that decode and preprocess inputs while the model runs (default: min(4, CPUs); 1: serially)."),
    threads: Optional[int] = typer.Option(None, "--threads", min=1, metavar="N", help="Threads one model call runs on (the backend's session option; default: the backend's, one per core)."),
    session_option: Optional[list[str]] = typer.Option(None, "--session-option", metavar="NAME=VALUE", help=choices.SESSION_OPTION_HELP),
) -> None:
    """Run ARTIFACT on input files and print the results."""
    from vlmedge.bulk import command as bulk

    choices.check_run_options(backend, precision)
    session = choices.session_options(threads, session_option)
    bulk_run = bulk.wants_bulk(engine, out, address, concurrency, gpus_per_worker)
    bulk.check_predict_out(engine, out, list(inputs), as_json)
    method = _check_predict_options(ctx, artifact, aggregate, attention)
    bulk.check_method_values(artifact, template, window_hop, labels)
    options = dict(top_k=top_k, labels=labels, templates=template, window_hop=window_hop, aggregate=aggregate, threshold=threshold, attention=attention)
    if bulk_run:
        return bulk.predict(artifact, list(inputs), out, engine, address, batch_size, concurrency, gpus_per_worker,
                            backend, precision, options, console, err_console, device=device,
                            decode_workers=decode_workers, session_options=session)
    from vlmedge.tasks import load

    pipeline = load(artifact, backend=backend, device=device, precision=precision, decode_workers=decode_workers,
                    **session)
    rows = ROWS[method.result](pipeline, method, list(inputs), **options)
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    title = f"{artifact} ({pipeline.model.backend}, {pipeline.model.precision}, {pipeline.model.provider})"
    show(TABLES.get(method.result, ranked_table)(rows), title, right=("rank", "score", "dim", "norm", "start s", "end s"))
    if any(len(row.get("windows") or []) > 1 for row in rows):
        show(windows_table(rows), "windows", right=("start s", "end s", "score"))


def _check_predict_options(ctx: typer.Context, artifact: Path, aggregate: Optional[str], attention: Optional[Path]) -> Any:
    """The artifact task's "predict" method; refuses options it does not take (exit 2)."""
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
    if attention is not None and not (method.result == "embedding" and method.input == "image"):
        raise UsageError(f"--attention draws an image encoder's attention; an artifact for {task.name} has none to draw.")
    return method


@app.command(cls=_Command)
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
    engine: str = typer.Option("local", "--engine", metavar="ENGINE", help="local (this process) or ray (Ray Data; pip install 'vlmedge[ray]'); --out may be a .parquet."),
    address: Optional[str] = typer.Option(None, "--address", metavar="ADDRESS", help="--engine ray: cluster address (auto, ray://head:10001); default: start a local Ray."),
    concurrency: Optional[int] = typer.Option(None, "--concurrency", min=1, metavar="N", help="--engine ray: inference actors (default: one, or one per GPU)."),
    gpus_per_worker: float = typer.Option(0, "--gpus-per-worker", min=0, metavar="N", help="--engine ray: GPUs per inference actor."),
    decode_workers: Optional[int] = typer.Option(None, "--decode-workers", min=1, metavar="N", help="Threads that decode and preprocess inputs while the model runs (default: min(4, CPUs); 1: serially)."),
    threads: Optional[int] = typer.Option(None, "--threads", min=1, metavar="N", help="Threads one model call runs on (the backend's session option; default: the backend's, one per core)."),
    session_option: Optional[list[str]] = typer.Option(None, "--session-option", metavar="NAME=VALUE", help=choices.SESSION_OPTION_HELP),
) -> None:
    """Embed many images (and, for CLIP, texts) into one (N, D) .npy, skipping unreadable files."""
    from vlmedge.bulk import command as bulk

    choices.check_run_options(backend, precision)
    session = choices.session_options(threads, session_option)
    bulk.embed(artifact, inputs, out, engine, address, batch_size, concurrency, gpus_per_worker, backend, precision,
               pooling, normalize, list(text or []), console, err_console, device=device, decode_workers=decode_workers,
               session_options=session)


@app.command(cls=_Command)
def info(
    artifact: Path = typer.Argument(..., metavar="ARTIFACT", help="Artifact folder."),
    as_json: bool = typer.Option(False, "--json", help="Print the manifest as JSON (full paths, every figure)."),
) -> None:
    """Show an artifact's task, source, files, preprocessing, parity results and the variants left out."""
    from vlmedge.artifact import Artifact

    art = Artifact.open(artifact)
    m = art.manifest
    if as_json:
        print(json.dumps(m, indent=2))
        return
    source = m.get("source", {})
    say = lambda text: console.print(text, markup=False, highlight=False)  # noqa: E731
    console.print(f"[bold]{escape(str(artifact))}[/bold]  task: {m['task']}  schema: v{m['schema_version']}")
    say(f"source: {source.get('reference')} ({source.get('architecture')})  created: {m.get('created')}")
    labels = m.get("labels") or []
    if labels:
        say(f"labels ({len(labels)}): " + ", ".join(labels[:8]) + (" ..." if len(labels) > 8 else ""))
    for kind, spec in m["preprocess"].items():
        say(f"preprocess[{kind}]: " + ", ".join(f"{k}={v}" for k, v in spec.items()))
    show([{"path": escape(e["path"]), "role": e["role"], "target": e.get("target", ""),
           "precision": e.get("precision", ""), "size": f"{e['size'] / 1e6:.2f} MB", "parity": _parity_cell(e.get("parity")),
           "verified on": escape((e.get("parity") or {}).get("provider", "")),  # OpenVINO: what the floats ran in
           "speed (export machine)": _speed_cell(e.get("parity")),
           "runs with": escape(", ".join(f"{k}={v}" for k, v in (e.get("session_options") or {}).items()))}
          for e in art.files], "files", right=("size",))
    for entry in m.get("export", {}).get("dropped", []):
        console.print(f"[yellow]left out[/yellow] {entry['target']} {entry['precision']} (missed its gate): "
                      f"{escape(entry['reason'])}", highlight=False)
    say("made with: " + ", ".join(f"{k} {v}" for k, v in m.get("versions", {}).items()))


def _speed_cell(report: dict[str, Any] | None) -> str:
    """Batch-1 latency measured at export, the speed-up over fp32 ONNX Runtime, the int8 recipe."""
    if not report or not report.get("latency_ms"):
        return ""
    text = f"{report['latency_ms']:.1f} ms"
    if "speedup_vs_onnx_fp32" in report:
        text += f" x{report['speedup_vs_onnx_fp32']:.2f}" + (" [yellow]not faster[/yellow]" if report.get("not_faster") else "")
    if "accuracy" in report:
        text += f" acc {report['accuracy']['top1']:.1%}"
    quantization = report.get("quantization")
    if quantization:
        text += f" {quantization['method']} L{quantization['level']}"
    return text


def _parity_cell(report: dict[str, Any] | None) -> str:
    if not report:
        return ""
    worst_cos = min(o.get("cosine_min", 1.0) for o in report["outputs"].values())
    worst_abs = max(o.get("max_abs", 0.0) for o in report["outputs"].values())
    top1 = [o["top1"] for o in report["outputs"].values() if "top1" in o]
    verdict = "[green]pass[/green]" if report["passed"] else "[red]FAIL[/red]"
    if report["passed"] and "gate_default" in report:  # judged by the exporter's own gate, not vlmedge's default
        verdict = "[yellow]pass (own gate)[/yellow]"
    text = f"{verdict} cos {worst_cos:.6f} abs {worst_abs:.1e}"
    return text + (f" top1 {min(top1):.0%}" if top1 else "") + f" (n={report['samples']})"


@app.command(cls=_Command)
def check(
    artifact: Path = typer.Argument(..., metavar="ARTIFACT", help="Artifact folder."),
    device: str = typer.Option("cpu", "--device", metavar="DEVICE", help="Device to run on."),
    backend: str = typer.Option("all", "--backend", metavar="BACKEND",
                                help=f"Check only this backend's files: {', '.join(choices.backend_names())}; "
                                     "default: every file."),
    as_json: bool = typer.Option(False, "--json", help="Print the reports as JSON."),
) -> None:
    """Re-run the artifact's stored parity inputs on this machine against the stored source outputs (exit 3 on a miss)."""
    from vlmedge.check import check_artifact

    if backend != "all":
        choices.check_backends("--backend", backend, choices.backend_names(), many=False)
    reports = check_artifact(artifact, device=device, backend=None if backend == "all" else backend)
    failed = [r for r in reports if r.get("passed") is False]
    if as_json:
        print(json.dumps(reports, indent=2))
    else:
        show([{"file": escape(r["file"]), "backend": r["backend"], "precision": r["precision"],
               "result": f"skipped: {escape(r['skipped'])}" if "skipped" in r else _parity_cell(r)} for r in reports],
             f"parity check of {artifact}")
        for r in failed:
            for failure in r["failures"]:
                err_console.print(f"[red]{escape(r['file'])}[/red]: {escape(failure)}", highlight=False)
        console.print(check_summary(reports), highlight=False)  # last: what `| tail -1` of a log shows
    if failed:
        raise typer.Exit(ParityError.exit_code)
    if all("skipped" in r for r in reports):  # a check that checked nothing must not read as passed
        raise BackendUnavailableError(f"No file of {artifact} could be checked here: every one was skipped (the reasons are above); install the backend it needs or choose another device.")


@app.command(name="formats", cls=_Command)
def formats_command(
    as_json: bool = typer.Option(False, "--json", help="Print everything as JSON."),
    with_architectures: bool = typer.Option(
        False, "--architectures", help="Also list the Hugging Face architectures of every task exported from a model "
                                       "folder, each with its task, exported or refused with the reason or what it "
                                       "needs (needs the export extra; some seconds)."),
) -> None:
    """What this install can export and run: tasks, targets and backends, precisions, built-in models."""
    facts = formats.describe(with_architectures)
    if as_json:
        print(json.dumps(facts, indent=2))
        return
    console.print(f"vlmedge {facts['version']}", highlight=False)
    show([{"task": t["name"], "inputs": ", ".join(t["inputs"]), "predict runs": t["cli_predict"],
           "summary": escape(t["summary"])} for t in facts["tasks"]], "tasks (--task)")
    show([{"backend": b["name"], "target (--to)": b["target"], "status": "ready" if b["runs_here"] else
           escape(b["reason"] or ""), "session options (vlmedge.load)": ", ".join(o["name"] for o in b["session_options"])
           or "none", "never runs": "; ".join(f"{p}: {why}" for p, why in b["never_runs"].items())} for b in facts["backends"]],
         "backends (--backend) and targets (--to)")
    console.print(f"precisions (--precision): {', '.join(p['name'] for p in facts['precisions'])}", highlight=False)
    console.print(f"built-in models (builtin:NAME): {', '.join(facts['builtin_models']) or 'none'}", highlight=False)
    extra = facts["export"]
    console.print("export extra: " + ("installed" if extra["installed"] else escape(
        f"not installed (missing {', '.join(extra['missing'])}); {extra['install']}")), highlight=False)
    shown = ("tasks", "backends", "precisions", "builtin_models", "export")
    for name in [n for n in facts if n not in shown and n != "version"]:
        section = facts[name]  # a section added later: a list of flat dicts shows as a table
        if isinstance(section, list) and section and isinstance(section[0], dict):
            show([{k: escape(str(v)) for k, v in row.items()} for row in section], name)
        else:
            console.print(f"{name}: {escape(str(section))}")


@app.command(name="cache", cls=_Command)
def cache_command(
    clear: bool = typer.Option(False, "--clear", help="Delete every compiled model in the cache (each is rebuilt by "
                                                      "its next load); the verified-file memo and measured peaks stay."),
    as_json: bool = typer.Option(False, "--json", help="Print the entries as JSON."),
) -> None:
    """List the compiled models vlmedge keeps (each load's OpenVINO blob or ONNX Runtime optimised model), or delete them."""
    from vlmedge.runtimes.cache import clear_entries, list_entries
    from vlmedge.user_cache import cache_enabled, cache_root

    root = cache_root()
    if clear:
        count, size = clear_entries()
        console.print(f"removed {count} compiled model(s), {size / 1e9:.2f} GB, from {escape(str(root))}", highlight=False)
        return
    entries = list_entries()
    if as_json:
        print(json.dumps(entries, indent=2))
        return
    state = "" if cache_enabled() else " (off here: VLMEDGE_NO_CACHE is set)"
    console.print(f"compiled-model cache{state}: {escape(str(root))}, {len(entries)} model(s), "
                  f"{sum(e['bytes'] for e in entries) / 1e9:.2f} GB; VLMEDGE_CACHE_DIR moves it, "
                  "`vlmedge cache --clear` empties it", highlight=False)
    show([{"model file": escape(e["source"] or "(not recorded)"), "backend": f"{e['backend']} {e['version']}",
           "device": str(e["device"]), "options": escape(", ".join(f"{k}={v}" for k, v in (e["options"] or {}).items())),
           "size": f"{e['bytes'] / 1e6:.1f} MB", "created": str(e["created"])} for e in entries],
         "compiled models, oldest first", right=("size",))


from vlmedge.bench.command import bench as _bench_command  # noqa: E402 - typer and rich only

app.command(name="bench", cls=_Command)(_bench_command)

from vlmedge.serve.command import serve as _serve_command  # noqa: E402 - typer only; the server loads when run

app.command(name="serve", cls=_Command)(_serve_command)


def main(argv: list[str] | None = None) -> None:
    try:
        app(args=argv, prog_name="vlmedge")
    except VlmedgeError as exc:  # outside any command (the app's own callback)
        print_error(exc)
        sys.exit(exc.exit_code)


def print_error(exc: VlmedgeError) -> None:
    """One line on stderr; messages name extras such as vlmedge[ray], which are not markup."""
    err_console.print(f"[red]Error:[/red] {escape(str(exc))}", highlight=False)  # as click says a usage error

