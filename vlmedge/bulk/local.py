"""The local engine: the two stages of a bulk run in this process. Threads prepare the next
batch (decode, preprocess) while the model runs the current one; results come out as
batches of columns, in input order, for a writer (``.parquet`` or ``.npy``) to consume.
Only table inputs and Parquet output need pyarrow."""

from __future__ import annotations

import os
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable, Iterable, Iterator

from vlmedge.bulk.inputs import Inputs, batches, rows_of
from vlmedge.bulk.job import BulkJob
from vlmedge.bulk.predict import Predictor
from vlmedge.bulk.prepare import prepare_batch
from vlmedge.bulk.table import to_arrow
from vlmedge.errors import InputError


def run_local(job: BulkJob, inputs: Inputs, batch_size: int = 32, progress: Callable[[int], None] | None = None,
              pipeline: Any = None):
    """Runs the job over the inputs in this process; returns one pyarrow Table (the columns
    and rows the Ray engine gives for the same job and inputs)."""
    import pyarrow as pa

    tables = [to_arrow(columns) for columns in iter_local(job, local_batches(inputs, batch_size), progress, pipeline)]
    if not tables:
        raise InputError("The inputs hold no rows.")
    return pa.concat_tables(tables)


def local_batches(inputs: Inputs, batch_size: int) -> Iterator[dict[str, list[Any]]]:
    """The input rows in batches, in the engines' order."""
    if batch_size < 1:
        raise InputError(f"batch_size must be at least 1, not {batch_size}.")
    return batches(rows_of(inputs), batch_size)


def iter_local(job: BulkJob, input_batches: Iterable[dict[str, list[Any]]],
               progress: Callable[[int], None] | None = None, pipeline: Any = None,
               workers: int | None = None) -> Iterator[dict[str, Any]]:
    """Result columns, one batch per input batch. ``pipeline``: one already loaded for the job's
    artifact (else it is loaded here); ``progress`` is called with each batch's row count."""
    predictor = Predictor(job, pipeline=pipeline)
    workers = workers or min(4, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="vlmedge-prepare") as pool:
        source = iter(input_batches)

        def submit() -> list[Future] | None:
            batch = next(source, None)
            return None if batch is None else [pool.submit(prepare_batch, part, job)
                                               for part in _split(batch, workers if job.kind != "text" else 1)]

        pending = submit()
        while pending is not None:
            parts = [future.result() for future in pending]
            pending = submit()  # the next batch is prepared while the model runs this one
            prepared = _join(parts)
            yield predictor(prepared)
            if progress is not None:
                progress(len(prepared["_error"]))


def _split(batch: dict[str, list[Any]], parts: int) -> list[dict[str, list[Any]]]:
    """A batch cut into up to ``parts`` consecutive slices of rows (one per preparing thread)."""
    n = len(next(iter(batch.values())))
    size = max(1, -(-n // parts))
    return [{k: v[start:start + size] for k, v in batch.items()} for start in range(0, n, size)]


def _join(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """The prepared slices of a batch as one batch again."""
    import numpy as np

    if len(parts) == 1:
        return parts[0]
    return {k: np.concatenate([p[k] for p in parts]) if isinstance(parts[0][k], np.ndarray)
            else [v for p in parts for v in p[k]] for k in parts[0]}
