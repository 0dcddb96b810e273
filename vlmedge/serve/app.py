"""The Starlette app: routes, request reading with limits, JSON errors, startup and warm-up."""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import re
import time
from contextlib import asynccontextmanager
from importlib import resources
from pathlib import Path
from typing import Any, Iterable

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from vlmedge.environment import available_cores
from vlmedge.errors import ArtifactError, UsageError
from vlmedge.serve.batcher import DynamicBatcher
from vlmedge.serve.config import BatchConfig, Limits
from vlmedge.serve.handling import error_response, instrumented, off_loop, prepare_in_time, read_body, submit
from vlmedge.serve.inputs import check_limits, parse_json, parse_multipart
from vlmedge.serve.metrics import Metrics
from vlmedge.serve.models import ServedModel, serve_pipeline
from vlmedge.serve.openapi import build_openapi
from vlmedge.serve.problems import Problem, retry_after, shutting_down
from vlmedge.serve.protocols import openai
from vlmedge.serve.protocols import routes as protocol_routes
from vlmedge.serve.protocols.graph import batch_runner
from vlmedge.serve.protocols.v2 import error as v2_error

log = logging.getLogger("vlmedge.serve")
# what a model's name may be: one URL path segment that needs no escaping
SERVED_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def named_artifacts(artifacts: Iterable[str | os.PathLike]) -> dict[str, str]:
    """name -> artifact path: each named by its folder ("name=path" names one explicitly)."""
    named: dict[str, str] = {}
    for item in artifacts:
        text = os.fspath(item)
        name, _, path = text.partition("=") if "=" in text and not Path(text).exists() else ("", "", text)
        name = name or Path(path).resolve().name
        if not SERVED_NAME.fullmatch(name):
            raise UsageError(f"'{name}' cannot name a served model: a name is part of every URL, so it is letters, "
                             f"digits, '.', '_' and '-', starting with a letter or digit; name it, e.g. model={path}.")
        if name in named:
            raise ArtifactError(f"Two artifacts are named '{name}'; name one explicitly, e.g. other-{name}={path}.")
        named[name] = path
    return named


def load_models(artifacts: Iterable[str | os.PathLike], backend: str = "auto", precision: str | None = None,
                device: str = "cpu", session_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """Loads artifacts into pipelines named by their folder ("name=path" names one explicitly);
    session_options: the backend's (vlmedge.load's **options), e.g. {"threads": 2}."""
    from vlmedge.tasks import load

    return {name: load(path, backend=backend, device=device, precision=precision, **(session_options or {}))
            for name, path in named_artifacts(artifacts).items()}


class _State:
    """What the routes share: served models, their batchers, limits and metrics."""

    def __init__(self, pipelines: dict[str, Any], batch: BatchConfig, limits: Limits, batchers: Any = None) -> None:
        self.models: dict[str, ServedModel] = {name: serve_pipeline(name, p, batch.max_batch)
                                               for name, p in pipelines.items()}
        self.batch = batch
        self.limits = limits
        self.metrics = Metrics()
        make = batchers or (lambda name, m: DynamicBatcher(name, batch_runner(m), batch, self.metrics))
        self.batchers = {name: make(name, m) for name, m in self.models.items()}
        # A request whose client left is taken out of the queue (handling.submit): uvicorn's
        # receive channel says so. Behind Ray Serve's proxy (remote batchers) that is left to Serve.
        self.cancel_on_disconnect = batchers is None
        self.ready = False
        self.warmup_error: str | None = None
        self.draining = False  # drain(): requests are answered 503 shutting_down
        self.answering: set[asyncio.Task] = set()  # the tasks answering inference requests now
        # requests admitted and not yet in their model's queue (being prepared, or on their way), per model
        self.preparing: collections.Counter[str] = collections.Counter()
        self.prepare_slots = asyncio.Semaphore(available_cores())  # requests prepared at once (handling.py)
        self.openapi = build_openapi(self.models, limits)
        for name, m in self.models.items():
            info = m.describe()
            self.metrics.model_info.labels(name, m.task, info["backend"], info["precision"]).set(1)

    @property
    def accepting(self) -> bool:
        """Warmed up and not draining: what a readiness route answers."""
        return self.ready and not self.draining

    async def drain(self, grace_s: float) -> int:
        """A server's shutdown where no web server does it for the app (Ray Serve's ingress):
        new requests are answered 503 shutting_down (and /readyz), those in flight get grace_s
        to finish, and the rest are then cancelled, to be answered 503 too. Returns how many
        were cut short."""
        self.draining = True
        deadline = time.monotonic() + grace_s
        while self.answering and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        late = list(self.answering)
        for task in late:
            task.cancel()
        while self.answering and time.monotonic() < deadline + 5:  # their 503s on their way
            await asyncio.sleep(0.05)
        return len(late)

    def find(self, name: str) -> ServedModel:
        if name not in self.models:
            raise Problem(404, "unknown_model", f"There is no model '{name}'; this server has: "
                                                f"{', '.join(sorted(self.models)) or 'none'} (GET /v1/models).")
        return self.models[name]


async def _prepare(request: Request, body: bytes, served: ServedModel, endpoint: Any, state: Any,
                   started: float) -> Any:
    """Body -> checked inputs (parsed on the loop for small bodies) -> the model's job, whose
    files are decoded and preprocessed in this request's own thread, not in the batch."""
    limits = state.limits
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "application/json":
        def from_json() -> Any:
            inputs = parse_json(body, endpoint.name, endpoint.fields)
            check_limits(inputs, limits)
            return inputs

        inputs = await off_loop(len(body), from_json)
    elif content_type == "multipart/form-data":
        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": body, "more_body": False}

        try:
            async with Request(request.scope, receive).form(max_files=limits.max_inputs,
                                                            max_fields=limits.max_labels + 64,
                                                            max_part_size=limits.max_body_bytes) as form:
                inputs = await parse_multipart(form, endpoint.name, endpoint.fields)
        except HTTPException as exc:  # the multipart parser's own limits and syntax errors
            if str(exc.detail).startswith("Too many files"):  # Starlette's words for max_files
                raise Problem(422, "too_many_inputs", f"The request has more than {limits.max_inputs} files; the "
                                                      f"limit is {limits.max_inputs} inputs per request. Split it "
                                                      "into several requests.") from None
            if str(exc.detail).startswith("Too many fields"):  # labels (and templates) are the repeated fields
                raise Problem(422, "too_many_labels", f"The request has more form fields than labels may make; "
                                                      f"the limit is {limits.max_labels} labels per request.") from None
            raise Problem(400, "invalid_multipart",
                          f"The multipart body could not be read: {exc.detail}") from None
        check_limits(inputs, limits)
    else:
        raise Problem(415, "unsupported_media_type",
                      f"Content-Type {content_type or '(none)'} is not supported; send application/json "
                      "(base64 files) or multipart/form-data (file uploads).")
    return inputs, await prepare_in_time(state, served.name, started, inputs.options.get("timeout_ms"), served.prepare,
                                         endpoint, inputs, limits)


def create_app(pipelines: dict[str, Any], batch: BatchConfig | None = None, limits: Limits | None = None,
               warm_up: bool = True, batchers: Any = None) -> Starlette:
    """The ASGI app serving these pipelines (name -> vlmedge.load(...) result).

    Models are warmed up in the background after startup: /healthz answers at once, /readyz
    once every model has run one input. ``batchers(name, served_model)`` makes each model's
    batcher (default: a DynamicBatcher in this process; Ray Serve: ray_serve.RemoteBatcher).
    """
    state = _State(pipelines, batch or BatchConfig(), limits or Limits(), batchers)

    async def index(request: Request) -> Response:
        html = resources.files("vlmedge.serve").joinpath("static/index.html").read_text(encoding="utf-8")
        return HTMLResponse(html)

    async def docs(request: Request) -> Response:
        html = resources.files("vlmedge.serve").joinpath("static/docs.html").read_text(encoding="utf-8")
        return HTMLResponse(html)

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(request: Request) -> Response:
        if state.warmup_error:
            return error_response(Problem(503, "warmup_failed", f"Warm-up failed: {state.warmup_error}"))
        if state.draining:
            return error_response(shutting_down())
        if not state.ready:
            return error_response(Problem(503, "not_ready", "Models are still warming up.", retry_after(1)))
        return JSONResponse({"status": "ready"})

    async def metrics(request: Request) -> Response:
        return Response(state.metrics.render(), media_type=state.metrics.content_type)

    async def openapi(request: Request) -> Response:
        return JSONResponse(state.openapi)

    async def list_models(request: Request) -> Response:
        names = sorted(state.models)
        # "models": vlmedge's own form; "object"/"data": what OpenAI clients read (models.list())
        return JSONResponse({"models": [state.models[n].describe() for n in names], "object": "list",
                             "data": [openai.model_object(n) for n in names]})

    async def get_model(request: Request) -> Response:
        try:
            served = state.find(request.path_params["model"])
        except Problem as problem:
            return error_response(problem)
        labels = getattr(served.pipeline, "labels", None)
        return JSONResponse({**served.describe(), **({"label_names": list(labels)} if labels is not None else {}),
                             **openai.model_object(served.name)})  # what OpenAI's models.retrieve() reads

    async def infer(request: Request) -> Response:
        name, endpoint_name = request.path_params["model"], request.path_params["endpoint"]
        known = name in state.models and endpoint_name in state.models[name].endpoints

        async def work(started: float) -> Response:
            answer = await _infer(request, name, endpoint_name, started)
            return JSONResponse(answer, headers={"Server-Timing": f"total;dur={answer['latency_ms']['total']:.2f}"})

        return await instrumented(state, name, endpoint_name if known else "-", work, known=known)

    async def _infer(request: Request, name: str, endpoint_name: str, started: float) -> dict[str, Any]:
        served = state.find(name)
        endpoint = served.endpoints.get(endpoint_name)
        if endpoint is None:
            raise Problem(404, "unknown_endpoint", f"Model '{name}' ({served.task}) has no '{endpoint_name}' endpoint; "
                                                   f"it serves: {', '.join(served.endpoints)}.")
        limits = state.limits
        body = await read_body(request, limits, started)
        inputs, job = await _prepare(request, body, served, endpoint, state, started)
        result, timing = await submit(state, name, job, started, inputs.options.get("timeout_ms"), request)
        total = (time.perf_counter() - started) * 1000
        return {"model": name, **result, "inputs": job.inputs,
                "batch": {"inputs": timing.batch_inputs, "requests": timing.batch_requests},
                "latency_ms": {"total": round(total, 3), "queue": round(timing.queue_s * 1000, 3),
                               "inference": round(timing.inference_s * 1000, 3)}}

    async def warm() -> None:
        try:
            for name, served in state.models.items():
                await state.batchers[name].call(served.warm_up)
            state.ready = True
            log.info("vlmedge serve: %d model(s) ready", len(state.models))
        except Exception as exc:  # noqa: BLE001 - reported by /readyz
            log.exception("warm-up failed")
            state.warmup_error = f"{type(exc).__name__}: {exc}"

    @asynccontextmanager
    async def lifespan(app: Starlette):
        for batcher in state.batchers.values():
            batcher.start()
        warming = asyncio.get_running_loop().create_task(warm()) if warm_up else None
        if not warm_up:
            state.ready = True
        try:
            yield
        finally:
            if warming is not None and not warming.done():
                warming.cancel()
            for batcher in state.batchers.values():
                await batcher.stop()

    async def http_error(request: Request, exc: Exception) -> Response:
        status = getattr(exc, "status_code", 500)
        code = {404: "not_found", 405: "method_not_allowed"}.get(status, "http_error")
        detail = getattr(exc, "detail", None) or "error"
        message = (f"No route for {request.method} {request.url.path}; see GET /openapi.json." if status == 404
                   else f"{request.method} is not allowed on {request.url.path}." if status == 405 else str(detail))
        return render(request, Problem(status, code, message, dict(getattr(exc, "headers", None) or {})))

    async def server_error(request: Request, exc: Exception) -> Response:
        log.exception("unhandled error on %s", request.url.path, exc_info=exc)
        return render(request, Problem(500, "internal_error", "The server failed on this request; see its log."))

    def render(request: Request, problem: Problem) -> Response:
        """A V2 client reads {"error": "<message>"} from every /v2 answer (tritonclient fails
        on vlmedge's own error body), an OpenAI client OpenAI's from /v1/embeddings, every
        other client vlmedge's."""
        path = request.url.path
        if path == "/v2" or path.startswith("/v2/"):
            return v2_error(problem)
        return openai.error(problem) if path == openai.PATH else error_response(problem)

    routes = [
        Route("/", index, methods=["GET"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        Route("/openapi.json", openapi, methods=["GET"]),
        Route("/v1/models", list_models, methods=["GET"]),
        Route("/v1/models/{model}", get_model, methods=["GET"]),
        Route("/v1/models/{model}/{endpoint}", infer, methods=["POST"]),
        Route("/docs", docs, methods=["GET"]),
        *protocol_routes(state),
    ]
    app = Starlette(routes=routes, lifespan=lifespan,
                    exception_handlers={HTTPException: http_error, Exception: server_error})
    app.state.vlmedge = state
    return app
