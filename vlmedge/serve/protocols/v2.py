"""Open Inference Protocol v2 (KServe V2, Triton's HTTP/REST API) for every served model.

    GET  /v2                                 server metadata
    GET  /v2/health/live, /v2/health/ready   server liveness and readiness
    GET  /v2/models/{m}[/versions/1]         model metadata: inputs and outputs
    GET  /v2/models/{m}[/versions/1]/ready   model readiness
    POST /v2/models/{m}[/versions/1]/infer   inference (JSON or binary tensor data)

An inference request takes either task-level inputs, BYTES tensors (image / audio: encoded
files, base64 in JSON and raw as binary data; text, labels, templates: UTF-8) answered as
the /v1 endpoints answer (labels, scores, indices or embedding), or exactly the inputs of
one of the artifact's graphs (graph.py), answered with its raw outputs. Both go through the
model's batcher, limits and metrics. Errors are {"error": "<one sentence>"}.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from vlmedge.errors import VlmedgeError
from vlmedge.serve.handling import instrumented, off_loop, prepare_in_time, read_body, submit
from vlmedge.serve.inputs import Inputs, check_limits, check_option, decode_base64
from vlmedge.serve.models import Job
from vlmedge.serve.problems import Problem, inputs_renamed
from vlmedge.serve.protocols import graph as graphs
from vlmedge.serve.protocols.v2_codec import Tensor, bad, encode_response, parse_request, requested_outputs

VERSION = "1"
# task-level V2 input -> the Inputs field it fills (image, audio, text: the registry's input kinds)
FIELDS = {"image": "images", "audio": "audio", "text": "texts", "labels": "labels", "templates": "templates"}
FILES = ("image", "audio")
RANKED_OUTPUTS = (("labels", "BYTES"), ("scores", "FP32"), ("indices", "INT64"))
# /v1 options the V2 answers cannot carry as dense tensors (ragged rows, PNG images)
NOT_OFFERED = ("threshold", "attention")
# request parameters of the protocol itself (Triton's), not options of the task
PROTOCOL_PARAMETERS = ("binary_data_output", "timeout", "priority")


def error(problem: Problem) -> Response:
    """{"error": message}; an input the request gets wrong is 400, as KServe and Triton answer."""
    status = 400 if problem.status == 422 else problem.status
    return JSONResponse({"error": problem.message}, status_code=status, headers=problem.headers)


def _field_of(endpoint_input: str) -> str:
    return next(name for name, field in FIELDS.items() if field == endpoint_input)


def task_inputs(served: Any) -> list[str]:
    """The task-level input names the model's endpoints take."""
    return list(dict.fromkeys(_field_of(i) for e in served.endpoints.values() for i in e.inputs))


def task_outputs(served: Any) -> list[tuple[str, str, list[int]]]:
    outs: dict[str, tuple[str, list[int]]] = {}
    for name in served.endpoints:
        if name == "embed":
            outs["embedding"] = ("FP32", [-1, -1])
        else:
            outs.update({n: (t, [-1, -1]) for n, t in RANKED_OUTPUTS})
    return [(n, t, s) for n, (t, s) in outs.items()]


def parameters_of(served: Any) -> list[str]:
    """The request parameters a model takes: its endpoints' options, and the CLIP inputs that
    may come as parameters instead (plan() reads labels and templates either way)."""
    options = [o for e in served.endpoints.values() for o in e.options + ("timeout_ms",) if o not in NOT_OFFERED]
    return list(dict.fromkeys(options + [n for n in ("labels", "templates") if n in task_inputs(served)]))


def metadata(served: Any) -> dict[str, Any]:
    model = served.pipeline.model
    inputs = [{"name": n, "datatype": "BYTES", "shape": [-1]} for n in task_inputs(served)]
    outputs = [{"name": n, "datatype": t, "shape": s} for n, t, s in task_outputs(served)]
    sets = {"task": [i["name"] for i in inputs]}
    for graph, session in graphs.graphs(served.pipeline).items():
        inputs += graphs.tensor_metadata(session.inputs)
        outputs += graphs.tensor_metadata(session.outputs)
        sets[f"graph:{graph}"] = [i.name for i in session.inputs]
    return {"name": served.name, "versions": [VERSION], "platform": f"vlmedge_{model.backend}",
            "inputs": inputs, "outputs": outputs,
            "parameters": {"task": served.task, "input_sets": sets, "task_parameters": parameters_of(served),
                           "labels": list(getattr(served.pipeline, "labels", None) or [])}}


@dataclass
class Call:
    job: Job
    outputs: Callable[[Any], dict[str, np.ndarray]]


def request_timeout_ms(head: dict[str, Any]) -> int | None:
    """The request's own time limit: its timeout_ms, else Triton's timeout (microseconds). Read
    before its inputs are prepared, so that it bounds their decoding too, not only the queue."""
    params = head.get("parameters") or {}
    if params.get("timeout_ms") is not None:
        return check_option("timeout_ms", params["timeout_ms"])
    timeout = params.get("timeout")
    if timeout is None:
        return None
    # an integer as tritonclient sends it, or a number a JSON writer wrote as 1.5e6
    if not isinstance(timeout, (int, float)) or isinstance(timeout, bool) or not 0 < timeout < math.inf:
        raise bad("The parameter 'timeout' must be a positive number of microseconds.")
    return -(-timeout // 1000) if isinstance(timeout, int) else math.ceil(timeout / 1000)  # whole ms, rounded up


def _texts(tensor: Tensor) -> list[str]:
    out = []
    for i, item in enumerate(tensor.data.reshape(-1)):
        try:
            out.append(bytes(item).decode("utf-8"))
        except UnicodeDecodeError:
            raise bad(f"Input '{tensor.name}' element {i} is not UTF-8 text.") from None
    return out


def _files(tensor: Tensor) -> list[bytes]:
    items = list(tensor.data.reshape(-1))
    if tensor.binary:
        return [bytes(i) for i in items]
    return [decode_base64(bytes(i).decode("utf-8"), f"{tensor.name}[{n}]") for n, i in enumerate(items)]


def _ranked(result: dict[str, Any]) -> dict[str, np.ndarray]:
    rows = [r["predictions"] for r in result["results"]]
    return {"labels": np.array([[p["label"] for p in row] for row in rows], dtype=object).reshape(len(rows), -1),
            "scores": np.array([[p["score"] for p in row] for row in rows], dtype=np.float32).reshape(len(rows), -1),
            "indices": np.array([[p["index"] for p in row] for row in rows], dtype=np.int64).reshape(len(rows), -1)}


def _embedding(result: dict[str, Any]) -> dict[str, np.ndarray]:
    return {"embedding": np.asarray(result["embeddings"], dtype=np.float32)}


def _parameter_list(name: str, value: Any) -> list[str]:
    if isinstance(value, str):
        values = [part.strip() for part in value.split(",") if part.strip()]
    elif isinstance(value, list) and all(isinstance(v, str) for v in value):
        values = list(value)
    else:
        raise bad(f"The parameter '{name}' must be a list of strings or one comma-separated string.")
    if not values:  # else a zero-shot request would quietly become an embedding one
        raise bad(f"The parameter '{name}' holds no {name}; give at least one, or leave it out.")
    return values


def plan(served: Any, head: dict[str, Any], tensors: list[Tensor], limits: Any) -> Call:
    """In the request's thread: the request's job (task-level or graph-level) and how its
    result becomes output tensors."""
    params = dict(head.get("parameters") or {})
    for name in PROTOCOL_PARAMETERS:  # timeout (request_timeout_ms read it) and those the encoder reads
        params.pop(name, None)
    names = {t.name for t in tensors}
    task_names = task_inputs(served)
    if not names <= set(task_names):
        graph = graphs.graph_for(served.pipeline, names)
        if graph is None:
            sets = metadata(served)["parameters"]["input_sets"]
            raise bad(f"Model '{served.name}' takes the inputs {' or '.join('{' + ', '.join(s) + '}' for s in sets.values())}"
                      f", not {{{', '.join(sorted(names))}}}.")
        params.pop("timeout_ms", None)  # request_timeout_ms read it
        if params:
            raise bad(f"A request to the '{graph}' graph takes no parameters but timeout_ms, not {', '.join(params)}.")
        declared = {i["name"]: i["datatype"] for i in graphs.tensor_metadata(graphs.graphs(served.pipeline)[graph].inputs)}
        for tensor in tensors:  # in the protocol's words, before Session.check_feeds says it in numpy's
            if tensor.datatype != declared[tensor.name]:
                raise bad(f"Input '{tensor.name}' is {declared[tensor.name]} (the model's metadata), not {tensor.datatype}.")
        job = graphs.graph_job(served.pipeline, graph, {t.name: t.data for t in tensors})  # checks the shapes first
        if job.inputs > limits.max_inputs:
            raise bad(f"The request has {job.inputs} rows; the limit is {limits.max_inputs} per request.")
        return Call(job, lambda result: result)
    inputs = Inputs()
    for tensor in tensors:
        if tensor.datatype != "BYTES":
            raise bad(f"Input '{tensor.name}' must be BYTES ({'encoded files' if tensor.name in FILES else 'UTF-8 text'})"
                      f", not {tensor.datatype}.")
        if len(tensor.shape) != 1:  # the metadata's [-1], as Triton checks a rank
            raise bad(f"Input '{tensor.name}' has shape {list(tensor.shape)}; it is a list of elements, shape [N].")
        if tensor.name in ("labels", "templates") and not tensor.data.size:
            raise bad(f"Input '{tensor.name}' holds no {tensor.name}; give at least one, or leave it out.")
        setattr(inputs, FIELDS[tensor.name], _files(tensor) if tensor.name in FILES else _texts(tensor))
    for name in ("labels", "templates"):
        if name in params and name in task_names:
            if getattr(inputs, name):
                raise bad(f"Give '{name}' as an input or as a parameter, not both.")
            setattr(inputs, name, _parameter_list(name, params.pop(name)))
    given = {f for f in FIELDS.values() if getattr(inputs, f)}
    endpoint = next((e for e in served.endpoints.values() if given <= set(e.inputs)), None)
    if endpoint is None:
        takes = " or ".join("{" + ", ".join(map(_field_of, e.inputs)) + "}" for e in served.endpoints.values())
        raise bad(f"Model '{served.name}' cannot take {' and '.join(sorted(map(_field_of, given)))} in one request; "
                  f"it takes {takes}.")
    allowed = [o for o in endpoint.options + ("timeout_ms",) if o not in NOT_OFFERED]
    for name, value in params.items():
        if name not in allowed:
            raise bad(f"Unknown parameter '{name}'; this request takes {', '.join(allowed) or 'none'}.")
        inputs.options[name] = check_option(name, value)
    try:
        check_limits(inputs, limits)
        job = served.prepare(endpoint, inputs, limits)
    except (Problem, VlmedgeError) as exc:  # the /v1 fields' images[i] are this request's image[i]
        raise inputs_renamed(exc, lambda field, i: f"{_field_of(field)}[{i}]") from None
    convert = _embedding if endpoint.name == "embed" else _ranked
    return Call(job, convert)


def routes(state: Any) -> list[Route]:
    def find(request: Request) -> Any:
        name, version = request.path_params["model"], request.path_params.get("version")
        if name not in state.models:
            raise Problem(404, "unknown_model", f"There is no model '{name}'; this server has: "
                                                f"{', '.join(sorted(state.models)) or 'none'}.")
        if version is not None and version != VERSION:
            raise Problem(404, "unknown_version", f"Model '{name}' has no version '{version}'; it has version {VERSION}.")
        return state.models[name]

    async def server_metadata(request: Request) -> Response:
        from vlmedge.version import __version__

        return JSONResponse({"name": "vlmedge", "version": __version__, "extensions": ["binary_tensor_data"]})

    async def live(request: Request) -> Response:
        return JSONResponse({"live": True})

    async def ready(request: Request) -> Response:
        return JSONResponse({"ready": state.accepting}, status_code=200 if state.accepting else 503)

    async def model_metadata(request: Request) -> Response:
        try:
            return JSONResponse(metadata(find(request)))
        except Problem as problem:
            return error(problem)

    async def model_ready(request: Request) -> Response:
        try:
            served = find(request)
        except Problem as problem:
            return error(problem)
        return JSONResponse({"name": served.name, "ready": state.accepting},
                            status_code=200 if state.accepting else 503)

    async def infer(request: Request) -> Response:
        name = request.path_params["model"]

        async def work(started: float) -> Response:
            served = find(request)
            body = await read_body(request, state.limits, started)
            head, tensors = await off_loop(len(body), parse_request, body,
                                           request.headers.get("inference-header-content-length"))
            timeout_ms = request_timeout_ms(head)
            call = await prepare_in_time(state, name, started, timeout_ms, plan, served, head, tensors,
                                         state.limits)
            result, _ = await submit(state, name, call.job, started, timeout_ms, request)
            outputs = call.outputs(result)
            wanted = requested_outputs(head, list(outputs))
            answer = {"model_name": name, "model_version": VERSION, **({"id": head["id"]} if "id" in head else {})}
            content, headers, media = await off_loop(len(body), encode_response, answer, outputs, wanted)
            total = (time.perf_counter() - started) * 1000
            return Response(content, media_type=media, headers={**headers, "Server-Timing": f"total;dur={total:.2f}"})

        return await instrumented(state, name, "v2-infer", work, render=error)

    routes = [Route("/v2", server_metadata, methods=["GET"]),
              Route("/v2/health/live", live, methods=["GET"]),
              Route("/v2/health/ready", ready, methods=["GET"])]
    for prefix in ("/v2/models/{model}", "/v2/models/{model}/versions/{version}"):
        routes += [Route(prefix, model_metadata, methods=["GET"]),
                   Route(prefix + "/ready", model_ready, methods=["GET"]),
                   Route(prefix + "/infer", infer, methods=["POST"])]
    return routes
