"""Tensor-level inference for users who preprocess themselves: a request feeds one of the
artifact's own graphs (pipeline.model.sessions) by its input names, checked as Session.run
checks them (Session.check_feeds), and gets the graph's raw outputs. Requests with the same
graph and the same non-batch shapes run as one batched session call."""

from __future__ import annotations

import itertools
from typing import Any, Hashable

import numpy as np

from vlmedge.serve.models import Job

_solo = itertools.count()  # keys for graphs whose batch axis is static: never merged


def graphs(pipeline: Any) -> dict[str, Any]:
    """graph name -> session of a loaded pipeline."""
    return dict(pipeline.model.sessions)


def graph_for(pipeline: Any, names: set[str]) -> str | None:
    """The graph whose inputs are exactly these names, or None."""
    return next((g for g, s in graphs(pipeline).items() if {i.name for i in s.inputs} == names), None)


def graph_job(pipeline: Any, graph: str, feeds: dict[str, np.ndarray]) -> Job:
    """Checks the feeds exactly as Session.run will (an InputError names the input) and makes
    the batchable job."""
    session = graphs(pipeline)[graph]
    session.check_feeds(feeds)
    pipeline.check_graph_feeds(graph, feeds)
    first = session.inputs[0]
    rows = int(feeds[first.name].shape[0]) if feeds[first.name].ndim else 1
    static = any(not i.shape or isinstance(i.shape[0], int) for i in session.inputs)
    shapes = tuple((name, feeds[name].shape[1:]) for name in sorted(feeds))
    key: Hashable = ("graph", graph, next(_solo) if static else shapes)
    return Job(key, max(rows, 1), feeds)


def run_graph(pipeline: Any, key: Hashable, payloads: list[dict[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
    """In the model's worker thread: one session call for the batch, outputs split by rows.
    A graph's outputs go back as the model gave them, NaN included, as Triton answers: the
    codec refuses what JSON cannot carry and sends it as binary data (a task's answers, ranked
    from such outputs, would hide them: the pipelines refuse them)."""
    session = graphs(pipeline)[key[1]]
    if len(payloads) == 1:
        return [session.run(payloads[0], non_finite_outputs=True)]
    names = [i.name for i in session.inputs]
    counts = [len(p[names[0]]) for p in payloads]
    outputs = session.run({n: np.concatenate([p[n] for p in payloads]) for n in names}, non_finite_outputs=True)
    bounds = np.cumsum([0] + counts)
    for name, array in outputs.items():
        if array.ndim == 0 or array.shape[0] != bounds[-1]:
            raise RuntimeError(f"output {name} has no batch axis; cannot split it per request")
    return [{name: array[bounds[i]:bounds[i + 1]] for name, array in outputs.items()} for i in range(len(payloads))]


def batch_runner(served: Any) -> Any:
    """What a model's batcher calls: the served task's run for task jobs, run_graph for
    graph jobs (keys starting with "graph")."""
    def run(key: Hashable, payloads: list[Any]) -> list[Any]:
        if key[0] == "graph":
            return run_graph(served.pipeline, key, payloads)
        return served.run(key, payloads)

    return run


def tensor_metadata(infos: list[Any]) -> list[dict[str, Any]]:
    """A session's TensorInfo list as V2 metadata (dynamic dimensions as -1)."""
    from vlmedge.serve.protocols.v2_codec import datatype_of

    return [{"name": i.name, "datatype": _datatype(i.dtype, datatype_of),
             "shape": [d if isinstance(d, int) and d >= 0 else -1 for d in i.shape]} for i in infos]


def _datatype(dtype: str, datatype_of: Any) -> str:
    try:
        return datatype_of(np.dtype(dtype))
    except TypeError:
        return "BYTES"
