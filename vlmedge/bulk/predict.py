"""The second stage of a bulk run: one loaded pipeline turns prepared batches into result
columns (Ray runs it in actors, the local engine in its own thread).

Each task method ``m`` of the registry has a pipeline method ``m_prepared`` that takes what
the first stage made (pixels, tokens or prepared clips) and returns what ``m`` returns for
the same inputs, so each row equals the single-process pipeline's result.
"""

from __future__ import annotations

import copy
import functools
from typing import Any

import numpy as np

from vlmedge.bulk.job import BulkJob
from vlmedge.bulk.prepare import WORK_COLUMNS, prepared_inputs
from vlmedge.bulk.table import written_by
from vlmedge.errors import NonFiniteOutputError


def load_pipeline(job: BulkJob, artifact: str | None = None):
    """The job's pipeline, from ``artifact`` (a local copy) or the job's artifact folder."""
    from vlmedge.tasks import load

    return load(artifact or job.artifact, backend=job.backend, device=job.device, precision=job.precision,
                        **job.session_options)


def _ranked(predictions: list[list[Any]]) -> dict[str, list[Any]]:
    return {"labels": [[p.label for p in ranked] for ranked in predictions],
            "indices": [[p.index for p in ranked] for ranked in predictions],
            "scores": [[p.score for p in ranked] for ranked in predictions]}


def _tags(clips: list[Any]) -> dict[str, list[Any]]:
    return {**_ranked([clip.tags for clip in clips]), "duration": [clip.duration for clip in clips]}


def _embedding(matrix: np.ndarray) -> dict[str, list[Any]]:
    return {"embedding": list(matrix)}


# the method's result kind -> (what `<method>_prepared` returned) -> result columns
COLUMNS_OF = {"ranked": _ranked, "tags": _tags, "embedding": _embedding}


class Predictor:
    """Loads the artifact once (or takes a loaded pipeline) and turns prepared batches into
    result columns: the batch's own columns, then the result's, then ``error``."""

    def __init__(self, job: BulkJob, artifact: str | None = None, pipeline: Any = None,
                 batch_size: int | None = None) -> None:
        self.job = job
        self.pipeline = pipeline if pipeline is not None else load_pipeline(job, artifact)
        if batch_size is not None:  # the job's batch is one model call (a copy: a given pipeline keeps its own)
            self.pipeline = copy.copy(self.pipeline)
            self.pipeline.batch_size = batch_size
        self.outputs = written_by(job.result)
        options = dict(job.options)
        if "labels" in options:  # zero-shot: the label embeddings once, not per batch
            options["text_embeddings"] = self.pipeline.text_embeddings(options["labels"], options.pop("templates"))
        self._run = functools.partial(getattr(self.pipeline, f"{job.method}_prepared"), **options)

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        errors = [str(e) if e else None for e in batch["_error"]]
        ok = np.array([e is None for e in errors], dtype=bool)
        results = self._results(batch, ok, errors) if ok.any() else {}
        out = {k: v for k, v in batch.items() if k not in WORK_COLUMNS and k not in self.outputs}
        rows = np.flatnonzero(ok)
        for name in self.outputs:
            if name == "error":
                out[name] = errors
                continue
            column: list[Any] = [None] * len(ok)
            for row, value in zip(rows, results.get(name, [])):
                column[row] = value
            out[name] = column
        return out

    def _results(self, batch: dict[str, Any], ok: np.ndarray, errors: list[Any]) -> dict[str, list[Any]]:
        """The result columns of the rows `ok` marks. Where the model overflows (NaN or infinite
        outputs) on some of them, each row runs alone: those that overflow get the error and
        leave `ok`, the others keep their results."""
        def columns(rows: np.ndarray) -> dict[str, list[Any]]:
            return COLUMNS_OF[self.job.result](self._run(prepared_inputs(batch, rows, self.job.kind)))

        try:
            return columns(ok)
        except NonFiniteOutputError as exc:
            if ok.sum() == 1:
                errors[int(np.flatnonzero(ok)[0])], ok[:] = str(exc), False
                return {}
        parts = []
        for row in np.flatnonzero(ok):
            alone = np.zeros_like(ok)
            alone[row] = True
            try:
                parts.append(columns(alone))
            except NonFiniteOutputError as exc:
                errors[row], ok[row] = str(exc), False
        return {name: [value for part in parts for value in part[name]] for name in parts[0]} if parts else {}
