"""`vlmedge predict|embed ... --engine local|ray --out OUT.parquet`: bulk runs behind the CLI.

The local engine runs the single-process pipeline; the Ray engine runs vlmedge.ray on a
local Ray instance (every CPU of this machine) or on the cluster at --address, showing
Ray Data's progress. Both write the same columns to one Parquet file (or, for `embed`,
the .npy + .files.json that the plain `vlmedge embed` writes).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console

from vlmedge.errors import InputError, VlmedgeError

ENGINES = ("local", "ray")
SHOWN_ERRORS = 20


def wants_bulk(engine: str, out: Optional[Path], address: Optional[str] = None, concurrency: Optional[int] = None,
               gpus_per_worker: float = 0) -> bool:
    """Whether a predict/embed call goes through the bulk engines (--engine ray, or a
    Parquet --out); refuses Ray options without --engine ray."""
    if engine not in ENGINES:
        raise typer.BadParameter(f"choose one of {', '.join(ENGINES)}, not {engine!r}", param_hint="--engine")
    if engine == "local" and (address or concurrency or gpus_per_worker):
        raise typer.BadParameter("--address, --concurrency and --gpus-per-worker need --engine ray",
                                 param_hint="--engine")
    return engine == "ray" or (out is not None and out.suffix.lower() == ".parquet")


def predict(artifact: Path, inputs: list[str], out: Optional[Path], engine: str, address: Optional[str],
            batch_size: int, concurrency: Optional[int], gpus_per_worker: float, backend: str,
            precision: Optional[str], options: dict[str, Any], console: Console, err_console: Console) -> None:
    """`vlmedge predict` in bulk: classify, zero-shot, embed or tag every input into a Parquet file."""
    if out is None or out.suffix.lower() != ".parquet":
        raise typer.BadParameter("bulk predictions go to a Parquet file; pass e.g. --out results.parquet",
                                 param_hint="--out")
    if options.pop("attention", None) is not None:
        raise typer.BadParameter("--attention writes images per input; run it without --out/--engine ray",
                                 param_hint="--attention")
    task = _task_of(artifact)
    method = {"image-classification": "classify", "image-embedding": "embed", "clip": "classify",
              "audio-classification": "tag"}.get(task)
    labels = [part.strip() for part in (options.pop("labels") or "").split(",") if part.strip()]
    templates = options.pop("templates") or None
    job_options: dict[str, Any] = {"top_k": options["top_k"]}
    if task == "clip":
        if not labels:
            raise typer.BadParameter("a CLIP artifact classifies zero-shot against labels you give; pass them, "
                                     "e.g. --labels \"cat,dog,car\"", param_hint="--labels")
        job_options.update(labels=labels, templates=templates or ["a photo of a {}."])
    if task == "audio-classification":
        job_options.update(window_hop=options.get("window_hop"), aggregate=options.get("aggregate", "max"))
    if task == "image-embedding":
        job_options = {}
    _run(artifact, inputs, method, out, engine, address, batch_size, concurrency, gpus_per_worker, backend,
         precision, job_options, console, err_console)


def embed(artifact: Path, inputs: list[str], out: Path, engine: str, address: Optional[str], batch_size: int,
          concurrency: Optional[int], gpus_per_worker: float, backend: str, precision: Optional[str],
          pooling: Optional[str], normalize: bool, texts: list[str], console: Console, err_console: Console) -> None:
    """`vlmedge embed` in bulk: images (or CLIP captions from .txt/.csv/.parquet inputs) into a
    Parquet file, or into the .npy + .files.json of the plain command."""
    if texts:
        raise typer.BadParameter("with --engine ray or a Parquet --out, put the captions in a .txt file (one per "
                                 "line), or a .csv/.parquet with a 'text' column, and pass that file as INPUT",
                                 param_hint="--text")
    if not inputs:
        raise typer.BadParameter("give image files or folders, or a table of paths or captions", param_hint="INPUT")
    task = _task_of(artifact)
    if task not in ("image-embedding", "clip"):
        raise InputError(f"vlmedge embed works with image-embedding and clip artifacts, but this one is {task}; "
                         "run it with `vlmedge predict` instead.")
    options: dict[str, Any] = {}
    if task == "image-embedding":
        method = "embed"
        options.update(pooling=pooling, normalize=normalize)
    else:
        if pooling is not None:
            raise InputError("--pooling applies to image encoders; a CLIP artifact has one image embedding.")
        if not normalize:
            raise InputError("CLIP embeddings are always L2-normalised; drop --no-normalize.")
        method = "embed_texts" if _holds_captions(inputs) else "embed_images"
    if out.suffix.lower() not in (".parquet", ".npy"):
        out = out.with_name(out.name + ".npy")
    _run(artifact, inputs, method, out, engine, address, batch_size, concurrency, gpus_per_worker, backend,
         precision, options, console, err_console)


def _task_of(artifact: Path) -> str:
    from vlmedge.artifact import Artifact

    return Artifact.open(artifact, verify=False).task


def _holds_captions(inputs: list[str]) -> bool:
    """CLIP inputs that are captions: .txt files, or tables with a text/caption column."""
    from vlmedge.bulk import TEXT_COLUMNS

    for name in inputs:
        suffix = os.path.splitext(name)[1].lower()
        if suffix == ".txt":
            return True
        if suffix in (".parquet", ".csv") and os.path.isfile(name):
            if suffix == ".parquet":
                import pyarrow.parquet as pq

                columns = pq.read_schema(name).names
            else:
                with open(name, encoding="utf-8") as f:
                    columns = [c.strip().strip('"') for c in f.readline().split(",")]
            return any(c in columns for c in TEXT_COLUMNS) and "path" not in columns
    return False


def _run(artifact: Path, inputs: list[str], method: str, out: Path, engine: str, address: Optional[str],
         batch_size: int, concurrency: Optional[int], gpus_per_worker: float, backend: str,
         precision: Optional[str], options: dict[str, Any], console: Console, err_console: Console) -> None:
    started = time.perf_counter()
    if engine == "ray":
        import vlmedge.ray as vray

        vray.require_ray()
        _require_pyarrow()
        ray = vray.init(address)
        try:
            dataset = vray.run(artifact, inputs, method, batch_size=batch_size, concurrency=concurrency,
                               num_gpus_per_worker=gpus_per_worker, backend=backend, precision=precision, **options)
            batches = dataset.iter_batches(batch_format="pyarrow", batch_size=None)
            table = _write(batches, out, artifact, method, options)
            where = f"Ray ({address})" if address else f"a local Ray instance ({os.cpu_count()} CPUs)"
        finally:
            ray.shutdown()  # stops the local instance; only disconnects from a cluster
    else:
        from vlmedge.bulk import collect, make_job

        _require_pyarrow()
        job = make_job(artifact, method, backend=backend, precision=precision, **options)
        found = collect(inputs, job.kind)
        result = _local(job, found, batch_size, err_console)
        table = _write([result], out, artifact, method, options)
        where = "the local engine (one process)"
    seconds = time.perf_counter() - started
    _report(table, out, seconds, where, console, err_console)


def _local(job, found, batch_size: int, err_console: Console):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from vlmedge.bulk import run_local

    total = len(found.files) + len(found.missing) or None
    columns = (TextColumn(job.method), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=err_console, transient=False) as bar:
        task_id = bar.add_task(job.method, total=total)
        return run_local(job, found, batch_size=batch_size, progress=lambda n: bar.advance(task_id, n))


class _Summary:
    """Row and error counts of what was written (the table is not kept in memory)."""

    def __init__(self) -> None:
        self.rows = 0
        self.errors: list[tuple[str, str]] = []

    def add(self, table) -> None:
        self.rows += table.num_rows
        if "error" not in table.column_names:
            return
        names = table.column("path" if "path" in table.column_names else table.column_names[0]).to_pylist()
        for name, error in zip(names, table.column("error").to_pylist()):
            if error is not None:
                self.errors.append((str(name), error))


def _write(batches, out: Path, artifact: Path, method: str, options: dict[str, Any]) -> _Summary:
    import pyarrow as pa

    from vlmedge.bulk import write_parquet

    summary = _Summary()

    def counted():
        for batch in batches:
            table = batch if isinstance(batch, pa.Table) else pa.Table.from_batches([batch])
            summary.add(table)
            yield table

    if out.suffix.lower() == ".parquet":
        write_parquet(counted(), out)
        return summary
    # .npy + .files.json, as the plain `vlmedge embed` writes them
    import numpy as np

    from vlmedge.bulk import embeddings_matrix
    from vlmedge.embed_files import EmbedResult, write_embeddings

    tables = list(counted())
    table = pa.concat_tables(tables) if tables else None
    if table is None or table.num_rows == len(summary.errors):
        raise InputError("None of the inputs could be read; nothing was written."
                         + (f" First error: {summary.errors[0][1]}" if summary.errors else ""))
    ok = [e is None for e in table.column("error").to_pylist()]
    names = table.column("text" if method == "embed_texts" else "path").to_pylist()
    kept = [n for n, good in zip(names, ok) if good]
    settings = {"normalized": True} if "pooling" not in options else \
        {"pooling": _resolved_pooling(artifact, options.get("pooling")), "normalized": bool(options.get("normalize", True))}
    result = EmbedResult(np.asarray(embeddings_matrix(table), dtype=np.float32),
                         files=[] if method == "embed_texts" else kept,
                         texts=kept if method == "embed_texts" else [],
                         skipped=[{"input": str(n), "error": e} for n, e in summary.errors], settings=settings)
    from vlmedge.artifact import Artifact

    write_embeddings(result, out, artifact, Artifact.open(artifact, verify=False).task)
    return summary


def _resolved_pooling(artifact: Path, pooling: Optional[str]) -> Optional[str]:
    from vlmedge.artifact import Artifact

    return pooling or (Artifact.open(artifact, verify=False).manifest.get("embedding") or {}).get("default_pooling")


def _report(summary: _Summary, out: Path, seconds: float, where: str, console: Console, err_console: Console) -> None:
    rate = summary.rows / max(seconds, 1e-9)
    console.print(f"wrote {out} ({summary.rows} rows, {len(summary.errors)} unreadable) in {seconds:.1f} s, "
                  f"{rate:.1f} inputs/s on {where}", highlight=False)
    if summary.errors:
        err_console.print(f"[yellow]{len(summary.errors)} input(s) could not be read[/yellow] "
                          f"(their 'error' column says why):")
        for name, error in summary.errors[:SHOWN_ERRORS]:
            err_console.print(f"  {name}: {error}", highlight=False)
        if len(summary.errors) > SHOWN_ERRORS:
            err_console.print(f"  ... and {len(summary.errors) - SHOWN_ERRORS} more", highlight=False)


def _require_pyarrow() -> None:
    import importlib

    try:
        importlib.import_module("pyarrow.parquet")
    except ImportError:
        raise VlmedgeError("Parquet output needs pyarrow; install it with: pip install 'vlmedge[ray]' "
                           "(or pip install pyarrow for the local engine).") from None
