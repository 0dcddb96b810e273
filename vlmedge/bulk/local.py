"""The local engine: the two stages of a bulk run in this process. Threads
(vlmedge.preprocess.parallel) prepare the next batches (decode, preprocess) while the model
runs the current one; results come out as batches of columns, in input order, for a writer
(``.parquet`` or ``.npy``) to consume. Only table inputs and Parquet output need pyarrow."""

from __future__ import annotations

import contextlib
import itertools
from typing import Any, Callable, Iterable, Iterator

from vlmedge.bulk.inputs import Inputs, batches, rows_of
from vlmedge.bulk.job import BulkJob
from vlmedge.bulk.predict import Predictor
from vlmedge.bulk.prepare import prepare_batch
from vlmedge.bulk.table import is_arrow, to_arrow, written_by
from vlmedge.errors import InputError
from vlmedge.preprocess.parallel import check_workers, prepare_ordered
from vlmedge.tasks.base import check_batch_size


def run_local(job: BulkJob, inputs: Inputs, batch_size: int = 32, progress: Callable[[int], None] | None = None,
              pipeline: Any = None, workers: int | None = None):
    """Runs the job over the inputs in this process; returns one pyarrow Table (the columns
    and rows the Ray engine gives for the same job and inputs). ``workers``: as for `iter_local`."""
    import pyarrow as pa

    batches = iter_local(job, local_batches(inputs, batch_size), progress, pipeline, workers)
    tables = [to_arrow(columns, written_by(job.result)) for columns in batches]
    if not tables:
        raise InputError("The inputs hold no rows.")
    return pa.concat_tables(tables, promote_options="permissive")  # a column empty in one batch has no type there


def local_batches(inputs: Inputs, batch_size: int) -> Iterator[dict[str, list[Any]]]:
    """The input rows in batches, in the engines' order."""
    return batches(rows_of(inputs), check_batch_size(batch_size))


def iter_local(job: BulkJob, input_batches: Iterable[dict[str, list[Any]]],
               progress: Callable[[int], None] | None = None, pipeline: Any = None,
               workers: int | None = None) -> Iterator[dict[str, Any]]:
    """Result columns, one batch per input batch. ``pipeline``: one already loaded for the job's
    artifact (else it is loaded here); ``progress`` is called with each batch's row count;
    ``workers``: decode threads (None: vlmedge.preprocess.parallel.DEFAULT_WORKERS; 1: serially,
    in this thread). The rows of a batch are prepared concurrently, and those of the next two
    batches while the model runs this one."""
    workers = check_workers(workers)
    source = iter(input_batches)
    first = next(source, None)
    if first is None:
        return
    size = len(next(iter(first.values())))
    predictor = Predictor(job, pipeline=pipeline, batch_size=size)
    # one row per task, so that threads share a batch's rows evenly; captions: one tokenizer call per batch
    per_batch = 1 if job.kind == "text" else size

    def slices() -> Iterator[tuple[dict[str, list[Any]], bool]]:
        for batch in itertools.chain([first], source):
            parts = _split(batch, per_batch)
            yield from ((part, i == len(parts) - 1) for i, part in enumerate(parts))

    def prepare(item: tuple[dict[str, list[Any]], bool]) -> tuple[dict[str, Any], bool]:
        part, last = item
        return prepare_batch(part, job), last

    parts: list[dict[str, Any]] = []
    with contextlib.closing(prepare_ordered(prepare, slices(), workers, ahead=2 * per_batch)) as prepared:
        for part, last in prepared:
            parts.append(part)
            if not last:
                continue
            batch, parts = _join(parts), []
            yield predictor(batch)
            if progress is not None:
                progress(len(batch["_error"]))


def _split(batch: dict[str, list[Any]], parts: int) -> list[dict[str, list[Any]]]:
    """A batch cut into up to ``parts`` consecutive slices of rows."""
    n = len(next(iter(batch.values())))
    size = max(1, -(-n // parts))
    return [{k: v[start:start + size] for k, v in batch.items()} for start in range(0, n, size)]


def _join(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """The prepared slices of a batch as one batch again."""
    import numpy as np

    if len(parts) == 1:
        return parts[0]
    return {k: np.concatenate([p[k] for p in parts]) if isinstance(parts[0][k], np.ndarray)
            else _arrow_concat([p[k] for p in parts]) if is_arrow(parts[0][k])
            else [v for p in parts for v in p[k]] for k in parts[0]}


def _arrow_concat(arrays: list[Any]) -> Any:
    import pyarrow as pa

    return pa.concat_arrays(arrays)
