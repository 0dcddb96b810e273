"""Tensor-level inference for users who preprocess themselves: a request feeds one of the
artifact's own graphs (pipeline.model.sessions) by its input names, checked as Session.run
checks them (Session.check_feeds), and gets the graph's raw outputs. Requests with the same
graph and the same non-batch shapes run as one batched session call."""

from __future__ import annotations

import itertools
from typing import Any, Hashable

import numpy as np

from vlmedge.errors import InputError
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
    _check_shared_axes(pipeline.model.artifact.manifest["graphs"][graph]["inputs"], feeds)
    pipeline.check_graph_feeds(graph, feeds)
    first = session.inputs[0]
    rows = int(feeds[first.name].shape[0]) if feeds[first.name].ndim else 1
    static = any(not i.shape or isinstance(i.shape[0], int) for i in session.inputs)
    shapes = tuple((name, feeds[name].shape[1:]) for name in sorted(feeds))
    key: Hashable = ("graph", graph, next(_solo) if static else shapes)
    return Job(key, max(rows, 1), feeds)


def _check_shared_axes(declared: list[dict[str, Any]], feeds: dict[str, np.ndarray]) -> None:
    """Inputs that share a dynamic axis (the export named it: "sequence" of input_ids and
    attention_mask) agree on its size, and only a batch may be empty: the backends fail on
    such feeds with a dump of their internals. The manifest's names, not the session's:
    OpenVINO's files keep no names for their dynamic axes."""
    seen: dict[str, tuple[str, int]] = {}
    for info in declared:
        for axis, dim in enumerate(info["shape"]):
            if isinstance(dim, int):
                continue
            name, size = info["name"], int(feeds[info["name"]].shape[axis])
            if axis and not size:
                raise InputError(f"Input '{name}' is empty on its '{dim}' axis ({axis}); give it at least one element.")
            first = seen.setdefault(dim, (name, size))
            if first[1] != size:
                raise InputError(f"Input '{name}' has {size} on its '{dim}' axis ({axis}), but input '{first[0]}' has "
                                 f"{first[1]}; inputs that share an axis must agree on its size.")


def run_graph(pipeline: Any, key: Hashable, payloads: list[dict[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
    """In the model's worker thread: the batch's rows in session calls of at most the
    pipeline's batch_size (serve's --max-batch), outputs split by rows.
    A graph's outputs go back as the model gave them, NaN included, as Triton answers: the
    codec refuses what JSON cannot carry and sends it as binary data (a task's answers, ranked
    from such outputs, would hide them: the pipelines refuse them)."""
    session = graphs(pipeline)[key[1]]
    names = [i.name for i in session.inputs]
    counts = [len(p[names[0]]) for p in payloads]
    # one request within the batch size, or of a graph whose batch axis is static: as it is
    if len(payloads) == 1 and (isinstance(key[2], int) or counts[0] <= pipeline.batch_size):
        return [session.run(payloads[0], non_finite_outputs=True)]
    outputs = _run_in_chunks(session, {n: np.concatenate([p[n] for p in payloads]) for n in names},
                             pipeline.batch_size)
    bounds = np.cumsum([0] + counts)
    for name, array in outputs.items():
        if array.ndim == 0 or array.shape[0] != bounds[-1]:
            raise RuntimeError(f"output {name} has no batch axis; cannot split it per request")
    return [{name: array[bounds[i]:bounds[i + 1]] for name, array in outputs.items()} for i in range(len(payloads))]


def _run_in_chunks(session: Any, feeds: dict[str, np.ndarray], size: int) -> dict[str, np.ndarray]:
    """The session on at most `size` rows at a time (the pipeline's batch_size: serve's
    --max-batch), outputs concatenated."""
    rows = len(next(iter(feeds.values())))
    parts = [session.run({name: value[start:start + size] for name, value in feeds.items()}, non_finite_outputs=True)
             for start in range(0, max(rows, 1), size)]  # an empty batch: one empty call, as tasks.base.chunks
    return {name: np.concatenate([part[name] for part in parts]) for name in parts[0]}


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
