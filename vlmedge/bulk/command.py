"""`vlmedge predict ... --out x.parquet` and `vlmedge embed ...`: the CLI's bulk runs.

The local engine runs in this process; the Ray engine (--engine ray) on a local Ray
instance (every CPU of this machine) or on the cluster at --address, showing Ray Data's
progress. Results go to one Parquet file, or (embed) to a .npy with its .files.json.
`vlmedge embed --out x.npy` on the local engine keeps its own report, and lists the paths
as they were given.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time
from pathlib import Path
from typing import Any, Iterable, Optional

import typer
from rich.console import Console

from vlmedge.bulk.inputs import TABLE_SUFFIXES, batches, collect, holds_captions
from vlmedge.bulk.job import BulkJob, make_job
from vlmedge.bulk.table import column, column_names
from vlmedge.bulk.writers import NpyWriter, ParquetWriter, out_format, side_file
from vlmedge.choices import ENGINES, split
from vlmedge.errors import InputError, UsageError, VlmedgeError, printable
from vlmedge.signals import sigterm_as_interrupt
from vlmedge.tables import failure_line

SHOWN_ERRORS = 20


# what a stopped bulk run says (the writers remove their temporary files on the way out)
STOPPED = "nothing was written (an earlier file of that name is left as it was)."


def wants_bulk(engine: str, out: Optional[Path], address: Optional[str] = None, concurrency: Optional[int] = None,
               gpus_per_worker: float = 0) -> bool:
    """Whether a predict/embed call goes through the bulk engines (--engine ray, or a
    Parquet --out); refuses Ray options without --engine ray."""
    if engine not in ENGINES:
        raise typer.BadParameter(f"choose one of {', '.join(ENGINES)}, not {engine!r}", param_hint="--engine")
    if engine == "local" and (address or concurrency or gpus_per_worker):
        raise typer.BadParameter("--address, --concurrency and --gpus-per-worker need --engine ray",
                                 param_hint="--engine")
    return engine == "ray" or (out is not None and out_format(out) == "parquet")


def check_predict_out(engine: str, out: Optional[Path], inputs: list[str], as_json: bool) -> None:
    """`predict` writes bulk results to a Parquet file only: an --out of another suffix (or
    --engine ray without --out) is refused before anything runs, as are folders and tables
    without one (they are bulk inputs) and --json with one (the results go to the file)."""
    if (out is not None or engine == "ray") and (out is None or out_format(out) != "parquet"):
        given = f"not {out.name}" if out is not None else "and --engine ray needs one"
        raise UsageError(f"vlmedge predict writes its results to a .parquet file ({given}); pass e.g. "
                         "--out results.parquet, or drop --out to print the results.")
    # os.path.isdir: a name too long to stat is no folder (Path.is_dir raises); it fails as an input, the others run
    bulk_inputs = [name for name in inputs if os.path.isdir(name) or Path(name).suffix.lower() in TABLE_SUFFIXES]
    if bulk_inputs and out is None:
        kind = "folder" if os.path.isdir(bulk_inputs[0]) else "table"
        raise UsageError(f"{bulk_inputs[0]} is a {kind}; {kind}s of inputs go with --out results.parquet (bulk), "
                         "or pass the files themselves.")
    if as_json and out is not None:
        raise UsageError(f"--json prints the results, which --out writes to {out.name}; drop one of them.")
    _check_out_is_no_input(out, inputs)


def check_embed_out(out: Path, inputs: Optional[list[str]]) -> None:
    """`embed` writes a .npy (a name without a suffix gets one, as numpy.save gives it) and its
    .files.json, or a .parquet: another suffix, a folder or '-' is refused (they were written
    as x.csv.npy, folder.npy beside the folder, and a file named -.npy)."""
    if str(out) == "-":
        raise UsageError("vlmedge embed writes files (a .npy and its .files.json, or a .parquet), not standard "
                         "output; pass e.g. --out embeddings.npy.")
    if out.is_dir():
        raise UsageError(f"--out {out} is a folder; pass a file in it, e.g. --out {out / 'embeddings.npy'}.")
    if out.suffix and out_format(out) is None:
        raise UsageError(f"vlmedge embed writes a .npy (and its .files.json) or a .parquet, not {out.name}; pass "
                         "e.g. --out embeddings.npy.")
    _check_out_is_no_input(out, inputs)


def _check_out_is_no_input(out: Optional[Path], inputs: Optional[list[str]]) -> None:
    """An --out that names one of the inputs (a table of paths) would replace it."""
    if out is None or not out.exists():
        return
    if any(Path(name).exists() and out.samefile(name) for name in inputs or []):
        raise UsageError(f"--out {out} is one of the inputs; write the results to another file.")


def check_method_values(artifact: Path, templates: Optional[list[str]], window_hop: Optional[float],
                        labels: Optional[str] = None) -> None:
    """Values the task's own checks would refuse once the model is loaded (a template without
    '{}', a label given twice, a window hop outside one frame to one window), refused before as
    usage errors (exit 2)."""
    from vlmedge.artifact import Artifact
    from vlmedge.preprocess.audio import AudioPreprocessSpec
    from vlmedge.tasks.audio import AudioTagger
    from vlmedge.tasks.clip import Clip

    try:
        if templates:
            Clip.check_templates(templates)
        if labels:
            Clip.check_labels(split(labels))  # --labels "a,b"
        if window_hop is not None:
            spec = AudioPreprocessSpec.from_dict(Artifact.open(artifact).manifest["preprocess"]["audio"])
            AudioTagger.check_window_hop(window_hop, spec)
    except InputError as exc:
        raise UsageError(str(exc)) from None


def check_column(column: Optional[str], inputs: Optional[list[str]]) -> None:
    """--column names the column of file paths in the input tables: without a table among the
    inputs it would pick nothing, and is refused."""
    if column is not None and not any(Path(name).suffix.lower() in TABLE_SUFFIXES for name in inputs or []):
        raise UsageError(f"--column {column} names the column of file paths in a .parquet or .csv input table, "
                         "and no table is given; pass the table, or drop --column.")


def check_decode_workers(engine: str, decode_workers: Optional[int]) -> None:
    """--decode-workers sets the local engine's threads; Ray runs preprocessing in its own tasks."""
    if engine == "ray" and decode_workers is not None:
        raise typer.BadParameter("--decode-workers sets the threads of the local engine; with --engine ray "
                                 "preprocessing runs in Ray tasks, one per CPU", param_hint="--decode-workers")


def predict(artifact: Path, inputs: list[str], out: Optional[Path], engine: str, address: Optional[str],
            batch_size: int, concurrency: Optional[int], gpus_per_worker: float, backend: str,
            precision: Optional[str], options: dict[str, Any], console: Console, err_console: Console,
            device: str = "cpu", decode_workers: Optional[int] = None,
            session_options: Optional[dict[str, Any]] = None, column: Optional[str] = None) -> None:
    """`vlmedge predict` in bulk: the task's "predict" method on every input, into a Parquet file
    (the command has checked --out with check_predict_out already); ``column``: the input
    tables' column of paths, when it is not "path"."""
    check_decode_workers(engine, decode_workers)
    if options.pop("attention", None) is not None:
        raise typer.BadParameter("--attention writes images per input; run it without --out/--engine ray",
                                 param_hint="--attention")
    method = _task(artifact).method("predict")
    labels = [part.strip() for part in (options.pop("labels") or "").split(",") if part.strip()]
    options.update(labels=labels or None, templates=options.pop("templates") or None)
    takes = method.options
    if "labels" in takes and not labels:
        raise typer.BadParameter("a CLIP artifact classifies zero-shot against labels you give; pass them, "
                                 "e.g. --labels \"cat,dog,car\"", param_hint="--labels")
    job = make_job(artifact, method.name, backend=backend, precision=precision,
                   device=_device(device, gpus_per_worker), session_options=session_options, column=column,
                   **{k: v for k, v in options.items() if k in takes})
    _run(job, artifact, inputs, out, engine, address, batch_size, concurrency, gpus_per_worker, console, err_console,
         decode_workers)


def embed(artifact: Path, inputs: Optional[list[str]], out: Path, engine: str, address: Optional[str],
          batch_size: int, concurrency: Optional[int], gpus_per_worker: float, backend: str,
          precision: Optional[str], pooling: Optional[str], normalize: bool, texts: list[str], console: Console,
          err_console: Console, device: str = "cpu", decode_workers: Optional[int] = None,
          session_options: Optional[dict[str, Any]] = None, column: Optional[str] = None) -> None:
    """`vlmedge embed`: images (or CLIP captions from .txt/.csv/.parquet inputs, or --text)
    into a Parquet file, or into a .npy + .files.json. ``decode_workers``: the local engine's
    decode threads (None: min(4, CPUs); 1: serially); ``column``: the input tables' column of
    image paths, when it is not "path" (captions are read from a text or caption column)."""
    check_embed_out(out, inputs)
    check_column(column, inputs)
    bulk = wants_bulk(engine, out, address, concurrency, gpus_per_worker)
    check_decode_workers(engine, decode_workers)
    if bulk and texts:
        raise typer.BadParameter("with --engine ray or a Parquet --out, put the captions in a .txt file (one per "
                                 "line), or a .csv/.parquet with a 'text' column, and pass that file as INPUT",
                                 param_hint="--text")
    if bulk and not inputs:
        raise typer.BadParameter("give image files or folders, or a table of paths or captions", param_hint="INPUT")
    task = _task(artifact)
    methods = {m.input: m for m in task.methods if m.result == "embedding"}
    if texts and "text" not in methods:
        raise typer.BadParameter(f"--text needs a CLIP artifact; the task of {artifact} is {task.name}, "
                                 "which embeds images only.", param_hint="--text")
    if "image" not in methods:
        from vlmedge.registry import TASKS

        embedders = [t.name for t in TASKS.values() if any(m.result == "embedding" for m in t.methods)]
        raise InputError(f"vlmedge embed works with {' and '.join(embedders)} artifacts, but this one is "
                         f"{task.name}; run it with `vlmedge predict` instead.")
    # a named column holds image paths; without one, a table of captions is told by its columns
    captions = "text" in methods and inputs and column is None and holds_captions(inputs)
    method = methods["text"] if captions else methods["image"]
    options: dict[str, Any] = {}
    if "pooling" in method.options:
        options.update(pooling=pooling, normalize=normalize)
    elif pooling is not None:
        raise UsageError("--pooling applies to image encoders; a CLIP artifact has one image embedding.")
    elif not normalize:
        raise UsageError("CLIP embeddings are always L2-normalised; drop --no-normalize.")
    job = make_job(artifact, method.name, backend=backend, precision=precision,
                   device=_device(device, gpus_per_worker), session_options=session_options, column=column,
                   **options)
    if bulk:
        if out_format(out) is None:
            out = out.with_name(out.name + ".npy")
        return _run(job, artifact, list(inputs or []), out, engine, address, batch_size, concurrency,
                    gpus_per_worker, console, err_console, decode_workers)
    text_job = (make_job(artifact, methods["text"].name, backend=backend, precision=precision,
                         device=_device(device, gpus_per_worker), session_options=session_options) if texts else None)
    _embed_to_npy(job, text_job, artifact, inputs, texts, out, batch_size, console, err_console, decode_workers)


def _device(device: str, gpus_per_worker: float) -> str:
    """--device as given; the default cpu becomes cuda when Ray workers get GPUs."""
    return "cuda" if device == "cpu" and gpus_per_worker else device


def _task(artifact: Path):
    from vlmedge.artifact import Artifact
    from vlmedge.registry import task_named

    return task_named(Artifact.open(artifact, verify=False).task, f"Artifact {artifact}")


def _embed_to_npy(job: BulkJob, text_job: Optional[BulkJob], artifact: Path, inputs: Optional[list[str]],
                  texts: list[str], out: Path, batch_size: int, console: Console, err_console: Console,
                  decode_workers: Optional[int] = None) -> None:
    """The plain `vlmedge embed --out x.npy`: the local engine over the inputs (paths kept as
    given), then over the --text captions, into one .npy; its own report."""
    from vlmedge.bulk.local import iter_local, local_batches
    from vlmedge.bulk.predict import load_pipeline

    writer = NpyWriter(out, artifact)  # refuses an --out it could not write before any input is read
    found = collect(inputs or [], job.kind, absolute=False, allow_empty=True)
    job = dataclasses.replace(job, cwd="")  # this process reads the paths: as given, also in messages
    if not (found.files or found.missing or found.tables or texts):
        raise typer.BadParameter("no images found; give image files or folders that contain images"
                                 + (" (or --text for CLIP)" if inputs is None else ""), param_hint="INPUT")
    _say_passed_over(found, job.kind, err_console)
    pipeline = load_pipeline(job)
    runs = [(job, local_batches(found, batch_size))]
    if text_job is not None:
        runs.append((text_job, batches({"text": texts}, batch_size)))
    total = None if found.tables else len(found.files) + len(found.missing) + len(texts)
    started = time.perf_counter()
    with sigterm_as_interrupt(STOPPED), writer, _progress(err_console, "embedding", total) as advance:
        for run_job, input_batches in runs:
            for results in iter_local(run_job, input_batches, advance, pipeline, decode_workers):
                writer.add(results, run_job)
    rate = (len(writer.files) + len(writer.texts)) / max(time.perf_counter() - started, 1e-9)
    rows, dim = writer.embeddings.shape
    model = pipeline.model
    console.print(f"wrote {writer.out} ({rows} x {dim} float32) and {writer.listing}; "
                  f"{rate:.1f} inputs/s on {model.backend} ({model.provider})")
    if writer.skipped:
        err_console.print(f"[yellow]skipped {len(writer.skipped)} file(s) that failed[/yellow] "
                          f"(listed in {writer.listing}):")
        for item in writer.skipped:
            err_console.print(f"  {failure_line(item['input'], item['error'])}", highlight=False)


def _run(job: BulkJob, artifact: Path, inputs: list[str], out: Path, engine: str, address: Optional[str],
         batch_size: int, concurrency: Optional[int], gpus_per_worker: float, console: Console,
         err_console: Console, decode_workers: Optional[int] = None) -> None:
    started = time.perf_counter()
    if engine == "ray":
        from vlmedge.bulk import ray as bulk_ray

        bulk_ray.require_ray()
    _require_pyarrow()
    summary = _Summary()
    # the writer refuses an --out it could not write before Ray starts or any input is read
    writer = ParquetWriter(out) if out_format(out) == "parquet" else NpyWriter(out, artifact)
    with sigterm_as_interrupt(STOPPED), writer:
        if engine == "ray":
            ray = bulk_ray.init(address)
            try:
                dataset = bulk_ray.run_job(job, inputs, batch_size=batch_size, concurrency=concurrency,
                                           num_gpus_per_worker=gpus_per_worker)
                _write(dataset.iter_batches(batch_format="pyarrow", batch_size=None), job, writer, summary)
                where = f"Ray ({address})" if address else f"a local Ray instance ({os.cpu_count()} CPUs)"
            finally:
                ray.shutdown()  # stops the local instance; only disconnects from a cluster
        else:
            from vlmedge.bulk.local import iter_local, local_batches

            found = collect(inputs, job.kind)
            _say_passed_over(found, job.kind, err_console)
            label = "classify" if job.result == "ranked" else job.method
            with _progress(err_console, label, len(found.files) + len(found.missing) or None) as advance:
                _write(iter_local(job, local_batches(found, batch_size), advance, workers=decode_workers), job,
                       writer, summary)
            where = "the local engine (one process)"
    _report(summary, writer.out, time.perf_counter() - started, where, console, err_console)
    if summary.rows and len(summary.errors) == summary.rows:  # a .npy of none is refused as it closes
        raise InputError(f"None of the {summary.rows} inputs could be run; the 'error' column of {writer.out} says "
                         "why (listed above).")


def _say_passed_over(found: Any, kind: str, err_console: Console) -> None:
    note = found.passed_over_note(kind)
    if note:
        err_console.print(f"[yellow]{note}[/yellow]", highlight=False)


# How often a job whose stderr is no terminal (nohup, a service, CI, a file) says how far it got.
PROGRESS_LINE_EVERY_S = 10.0


@contextlib.contextmanager
def _progress(err_console: Console, label: str, total: Optional[int]):
    """A progress bar on stderr, or where stderr is no terminal (rich draws a bar there only
    once, at the end) a line every PROGRESS_LINE_EVERY_S and one at the end; yields the
    function that advances it by n inputs."""
    if not err_console.is_terminal:
        yield from _progress_lines(err_console, label, total)
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=err_console, transient=False) as bar:
        task_id = bar.add_task(label, total=total)
        yield lambda n: bar.advance(task_id, n)


def _progress_lines(err_console: Console, label: str, total: Optional[int]):
    started = said = time.monotonic()
    done = 0

    def say() -> None:
        of = f"/{total} ({100 * done / total:.0f}%)" if total else ""
        err_console.print(f"{label}: {done}{of} inputs, {time.monotonic() - started:.0f} s", highlight=False)

    def advance(n: int) -> None:
        nonlocal done, said
        done += n
        if time.monotonic() - said >= PROGRESS_LINE_EVERY_S:
            said = time.monotonic()
            say()

    try:
        yield advance
    finally:
        say()


class _Summary:
    """Row and error counts of what was written (the results are not kept in memory)."""

    def __init__(self) -> None:
        self.rows = 0
        self.errors: list[tuple[str, str]] = []

    def add(self, batch: Any) -> None:
        names = column_names(batch)
        errors = column(batch, "error")
        self.rows += len(errors)
        inputs = column(batch, "path" if "path" in names else names[0])
        self.errors.extend((printable(str(name)), printable(error)) for name, error in zip(inputs, errors)
                           if error is not None)


def _write(results: Iterable[Any], job: BulkJob, writer: Any, summary: _Summary) -> None:
    """Writes result batches with the writer, counting them in the summary."""
    for batch in results:
        summary.add(batch)
        writer.add(batch, job)


def _report(summary: _Summary, out: Path, seconds: float, where: str, console: Console, err_console: Console) -> None:
    rate = summary.rows / max(seconds, 1e-9)
    npy = out_format(out) == "npy"  # a .npy holds the embeddings alone; a table keeps a row per input, errors too
    written = summary.rows - len(summary.errors) if npy else summary.rows
    console.print(f"wrote {out} ({written} rows, {len(summary.errors)} failed{', left out' if npy else ''}) in "
                  f"{seconds:.1f} s, {rate:.1f} inputs/s on {where}", highlight=False)
    if summary.errors:
        # as plain embed says it: a .npy has no error column, its side file lists the skipped inputs
        where_listed = f"listed in {side_file(out).name}" if npy else "their 'error' column says why"
        # failed: unreadable, or a model that overflowed on them (NonFiniteOutputError)
        err_console.print(f"[yellow]{len(summary.errors)} input(s) failed[/yellow] ({where_listed}):")
        for name, error in summary.errors[:SHOWN_ERRORS]:
            err_console.print(f"  {failure_line(name, error)}", highlight=False)
        if len(summary.errors) > SHOWN_ERRORS:
            err_console.print(f"  ... and {len(summary.errors) - SHOWN_ERRORS} more", highlight=False)


def _require_pyarrow() -> None:
    import importlib

    try:
        importlib.import_module("pyarrow.parquet")
    except ImportError:
        raise VlmedgeError("Parquet output needs pyarrow; install it with: pip install 'vlmedge[ray]' "
                           "(or pip install pyarrow for the local engine).") from None
