"""Scale-out: bulk classification, embedding and tagging on Ray Data (extra "ray").

    files / folders  -> ray.data.from_items (rows of paths)             ┐
    .parquet / .csv  -> ray.data.read_parquet / read_csv (paths or captions) ├-> map_batches(preprocess)  CPU tasks
    .txt captions    -> ray.data.read_text                              ┘         decode, resize, fbank, tokenize
                     -> map_batches(inference actor, ActorPoolStrategy)  each actor loads the artifact once
                     -> columns: path / text, labels + indices + scores | embedding, error

Rows keep the input order: files as named, folders expanded recursively in sorted order (as
``vlmedge embed`` does), table rows in table order; named files that do not exist come
last, with their error. Each row equals the single-process pipeline's result for that
input on the same backend and precision. An input that cannot be read or decoded gets a
message in ``error`` (and nulls for its results) instead of failing the job.

The two stages are the local engine's (vlmedge.bulk.prepare, vlmedge.bulk.predict); this
module only lays them out on Ray Data. ``import ray`` below is the absolute import of the Ray
package (Python 3 has no implicit relative imports), so nothing is shadowed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import os
import signal
import tarfile
import tempfile
import threading
from pathlib import Path
from typing import Any

from vlmedge.bulk.inputs import (Inputs, collect, csv_convert_options, is_uri, source_column,
                                  rows_of, table_columns)
from vlmedge.bulk.job import DEFAULTS, BulkJob, make_job
from vlmedge.bulk.predict import Predictor
from vlmedge.bulk.prepare import prepare_batch
from vlmedge.bulk.table import to_arrow
from vlmedge.errors import BackendUnavailableError, InputError, UsageError, VlmedgeError, exception_line
from vlmedge.tasks.base import check_batch_size

INSTALL_HINT = "pip install 'vlmedge[ray]'"


def require_ray():
    """Imports Ray Data, or says how to install it."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as exc:
        raise VlmedgeError(f"The Ray engine needs Ray Data, which is not installed ({exc}); "
                           f"install it with: {INSTALL_HINT}") from None
    return ray


def run(artifact: str | os.PathLike, dataset_or_paths: Any, task_method: str | None = None, *,
        batch_size: int = 32, concurrency: int | tuple[int, int] | None = None, num_gpus_per_worker: float = 0,
        cpus_per_worker: float = 1, preprocess_cpus: float = 0.5, backend: str = "auto",
        precision: str | None = None, column: str | None = None, ship_artifact: bool = False,
        session_options: dict[str, Any] | None = None, **options: Any):
    """Runs an artifact over many inputs with Ray Data and returns the (lazy) result Dataset.

    Args:
        artifact: the artifact folder. Every worker node needs it at this path (a shared
            file system) unless ``ship_artifact`` is set.
        dataset_or_paths: image or audio files and folders; Parquet or CSV files with a
            ``path`` column (or, for ``embed_texts``, a ``text`` or ``caption`` column);
            ``.txt`` files of captions, one per line; or a ``ray.data.Dataset`` with a
            ``bytes`` (+ ``path``), ``path``, ``image`` (HWC uint8) or ``text`` column.
        task_method: "classify" (image classifiers; CLIP zero-shot with ``labels=``, also
            "zero_shot"), "embed" (image encoders; CLIP images), "embed_images",
            "embed_texts" (CLIP) or "tag" (audio): a method of the task in vlmedge.registry
            or one of its aliases; None for the task's default.
        batch_size: inputs per preprocessing task call and per model call.
        concurrency: inference actors: a number, or (min, max) to autoscale. Default: one
            per GPU with ``num_gpus_per_worker``, else one.
        num_gpus_per_worker: GPUs per inference actor (the model then runs on "cuda").
        cpus_per_worker: CPUs reserved per inference actor.
        preprocess_cpus: CPUs reserved per preprocessing task. Keeping it different from
            ``cpus_per_worker`` keeps Ray from fusing preprocessing into the actors, so it
            scales on its own tasks.
        backend, precision: as for ``vlmedge.load``; pass the same ones to compare with a
            single-process run.
        column: the input column of a table or Dataset when it is not the usual name.
        ship_artifact: send the artifact through Ray's object store; each node unpacks
            it once into its temp folder (for clusters without a shared file system).
        session_options: backend session options passed to ``vlmedge.load``.
        **options: the task method's options: ``top_k`` (default 5), ``pooling``,
            ``normalize``, ``labels``, ``templates``, ``window_hop``, ``aggregate``,
            ``threshold``.

    Returns:
        A ``ray.data.Dataset``: the input's columns (``path``, ``text`` or a table's own;
        ``bytes`` and ``image`` are dropped), then ``labels``/``indices``/``scores``
        (+ ``duration`` for audio) or ``embedding``, then ``error`` (null when fine).
    """
    require_ray()
    unknown = sorted(set(options) - set(DEFAULTS))
    if unknown:
        raise UsageError(f"run() takes no option {unknown[0]!r}; a task method's options are {', '.join(DEFAULTS)}.")
    device = "cuda" if num_gpus_per_worker else "cpu"
    job = make_job(artifact, task_method, backend=backend, precision=precision, device=device, column=column,
                   session_options=session_options, **options)
    return run_job(job, dataset_or_paths, batch_size=batch_size, concurrency=concurrency,
                   num_gpus_per_worker=num_gpus_per_worker, cpus_per_worker=cpus_per_worker,
                   preprocess_cpus=preprocess_cpus, ship_artifact=ship_artifact)


def run_job(job: BulkJob, dataset_or_paths: Any, *, batch_size: int = 32,
            concurrency: int | tuple[int, int] | None = None, num_gpus_per_worker: float = 0,
            cpus_per_worker: float = 1, preprocess_cpus: float = 0.5, ship_artifact: bool = False):
    """`run` for a job made by ``vlmedge.bulk.job.make_job`` (with device "cuda" when the
    actors get GPUs)."""
    ray = require_ray()
    check_batch_size(batch_size)
    source, columns = _source_dataset(ray, job, dataset_or_paths, preprocess_cpus)
    source_column(job, columns)  # a table without the right column fails here, not in a worker
    size = _actor_pool_size(ray, concurrency, num_gpus_per_worker, cpus_per_worker, preprocess_cpus)

    shipped = None
    if ship_artifact:
        shipped = [ray.put(pack_artifact(job.artifact))]
    prepared = source.map_batches(prepare_batch, fn_kwargs={"job": job}, batch_size=batch_size,
                                  batch_format="numpy", num_cpus=preprocess_cpus)
    strategy = ray.data.ActorPoolStrategy(size=size) if isinstance(size, int) else \
        ray.data.ActorPoolStrategy(min_size=size[0], max_size=size[1])
    threads = None if num_gpus_per_worker else max(1, int(cpus_per_worker))
    results = prepared.map_batches(InferenceWorker,
                                   fn_constructor_kwargs={"job": job, "shipped": shipped, "threads": threads,
                                                          "batch_size": batch_size},
                                   batch_size=batch_size, batch_format="numpy", compute=strategy,
                                   num_cpus=cpus_per_worker, num_gpus=num_gpus_per_worker or None)
    results.context.execution_options.preserve_order = True
    return results


def _source_dataset(ray, job: BulkJob, dataset_or_paths: Any, cpus: float):
    """The input as a Dataset (tables read with Ray Data's own readers; files as rows of paths) and its columns."""
    if isinstance(dataset_or_paths, ray.data.Dataset):
        return dataset_or_paths, dataset_or_paths.columns()
    inputs: Inputs = collect(dataset_or_paths, job.kind)
    if inputs.tables:
        fmt = inputs.table_format
        for table in inputs.tables:
            if fmt != "text" and not is_uri(table):
                table_columns(table)  # a corrupt or empty table is said here, not in a Ray task
        if fmt == "parquet":
            ds = ray.data.read_parquet(inputs.tables, num_cpus=cpus)
        elif fmt == "csv":
            ds = ray.data.read_csv(inputs.tables, num_cpus=cpus, convert_options=csv_convert_options())
        else:
            ds = ray.data.read_text(inputs.tables, encoding="utf-8-sig", drop_empty_lines=True, num_cpus=cpus)
        return ds, ds.columns()
    # Files are rows of paths that the preprocessing tasks decode as the local engine does
    # (load_image / load_audio of the path): an unreadable, vanished or missing file gets the
    # same message in its row, where Ray's read_binary_files would fail the whole job.
    paths = rows_of(inputs)["path"]
    ds = ray.data.from_items([{"path": path} for path in paths])  # in blocks of rows, one task each
    return ds, ["path"]


def _check_reachable(address: str) -> None:
    """A "host:port" or "ray://host:port" nothing answers on: ConnectionError at once, where
    Ray retries its control server for minutes ("auto" is Ray's own to find)."""
    import socket

    host, _, port = address.removeprefix("ray://").rpartition(":")
    if address == "auto" or not host or not port.isdigit():
        return
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=10).close()
    except OSError as exc:
        raise ConnectionError(f"nothing answers at {host}:{port}: {exc.strerror or exc}") from None


def _actor_pool_size(ray, concurrency: Any, gpus: float, cpus: float, preprocess_cpus: float) -> int | tuple[int, int]:
    """The actor pool size, checked against the cluster so that a job cannot wait forever
    for resources it will never get."""
    if concurrency is None:
        size: int | tuple[int, int] = 1
        if gpus and ray.is_initialized():
            size = max(1, int(ray.cluster_resources().get("GPU", 0) // gpus))
    elif isinstance(concurrency, int) and not isinstance(concurrency, bool) and concurrency >= 1:
        size = concurrency
    elif (isinstance(concurrency, (tuple, list)) and len(concurrency) == 2
          and all(isinstance(c, int) and not isinstance(c, bool) for c in concurrency)
          and 1 <= concurrency[0] <= concurrency[1]):
        size = (int(concurrency[0]), int(concurrency[1]))
    else:
        raise InputError(f"concurrency must be a positive number of actors or a (min, max) pair, not {concurrency!r}.")
    if ray.is_initialized():
        least = size if isinstance(size, int) else size[0]
        have = ray.cluster_resources()
        if gpus and have.get("GPU", 0) < least * gpus:
            raise InputError(f"{least} actor(s) with {gpus:g} GPU(s) each need {least * gpus:g} GPUs, but the Ray "
                             f"cluster has {have.get('GPU', 0):g}; lower --concurrency or --gpus-per-worker.")
        need = least * cpus + preprocess_cpus
        if have.get("CPU", 0) < need:
            raise InputError(f"{least} actor(s) with {cpus:g} CPU(s) each plus a preprocessing task need {need:g} "
                             f"CPUs, but the Ray cluster has {have.get('CPU', 0):g}; lower --concurrency (Python: "
                             "concurrency= or cpus_per_worker=).")
    return size


class InferenceWorker(Predictor):
    """The inference actor: loads the artifact once (from the shared path, or from the copy
    shipped through the object store) and runs preprocessed batches."""

    def __init__(self, job: BulkJob, shipped: list | None = None, threads: int | None = None,
                 batch_size: int | None = None) -> None:
        artifact = None
        if shipped:
            import ray

            artifact = unpack_artifact(ray.get(shipped[0]))
        if threads and "threads" not in job.session_options and _backend_of(job, artifact) == "onnxruntime":
            # As many ONNX Runtime threads as CPUs Ray reserved for this actor: more would
            # spin on the cores the preprocessing tasks were given (the results are the same).
            job = dataclasses.replace(job, session_options={**job.session_options, "threads": threads})
        super().__init__(job, artifact=artifact, batch_size=batch_size)

    def __call__(self, batch: dict[str, Any]):
        return to_arrow(super().__call__(batch), self.outputs)


def _backend_of(job: BulkJob, artifact: str | None) -> str:
    """The backend vlmedge.load will open ("auto" resolved as it resolves it)."""
    from vlmedge.artifact import Artifact
    from vlmedge.runtimes.select import resolve_backend

    return resolve_backend(Artifact.open(artifact or job.artifact, verify=False), job.backend, job.device)


def pack_artifact(folder: str | os.PathLike) -> bytes:
    """The artifact folder as an uncompressed tar (model files hardly compress)."""
    buffer = io.BytesIO()
    root = Path(folder)
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for path in sorted(root.rglob("*")):
            if path.is_file():
                tar.add(path, arcname=str(path.relative_to(root)), recursive=False)
    return buffer.getvalue()


def unpack_artifact(blob: bytes) -> str:
    """Unpacks a shipped artifact once per node, into <tmp>/vlmedge-artifacts/<sha256>;
    concurrent actors race safely (each extracts beside it and renames)."""
    digest = hashlib.sha256(blob).hexdigest()[:32]
    root = Path(tempfile.gettempdir()) / "vlmedge-artifacts"
    target = root / digest
    if not (target / "manifest.json").is_file():
        root.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{digest}-", dir=root))
        with tarfile.open(fileobj=io.BytesIO(blob), mode="r") as tar:
            try:
                tar.extractall(staging, filter="data")  # no links, nothing outside staging
            except TypeError:  # Python < 3.10.12 has no extraction filters; pack_artifact wrote plain files
                tar.extractall(staging)
        try:
            os.rename(staging, target)
        except OSError:  # another actor on this node was first
            import shutil

            shutil.rmtree(staging, ignore_errors=True)
    return str(target)


def init(address: str | None = None, num_cpus: int | None = None, **kwargs: Any):
    """Connects to a Ray cluster at ``address`` ("auto", "ray://host:10001", "host:6379"),
    or starts a local instance with ``num_cpus`` (default: every CPU of this machine)."""
    ray = require_ray()
    if ray.is_initialized():
        return ray
    # ray.init makes SIGTERM sys.exit(15) wherever the driver is; the caller's handler (a CLI run's
    # vlmedge.signals: unwind, remove what was half-written, end by SIGTERM) is put back after it
    main = threading.current_thread() is threading.main_thread()
    previous = signal.getsignal(signal.SIGTERM) if main else None
    try:
        if address:
            _check_reachable(address)
            ray.init(address=address, **kwargs)
        else:
            ray.init(address="local", num_cpus=num_cpus or os.cpu_count() or 1, **kwargs)
    except (ConnectionError, RuntimeError, TimeoutError) as exc:
        raise BackendUnavailableError(f"Cannot reach the Ray cluster at {address or 'a new local instance'} "
                                      f"({exception_line(exc)}); start one (ray start --head) or give another "
                                      "address, or leave the address out to run Ray on this machine.") from None
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    return ray


