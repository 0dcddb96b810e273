"""The Starlette app: routes, request reading with limits, JSON errors, startup and warm-up."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from contextlib import asynccontextmanager
from importlib import resources
from pathlib import Path
from typing import Any, Iterable

import anyio
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from vlmedge.errors import ArtifactError, VlmedgeError
from vlmedge.serve.batcher import DynamicBatcher
from vlmedge.serve.config import BatchConfig, Limits
from vlmedge.serve.inputs import check_limits, parse_json, parse_multipart
from vlmedge.serve.metrics import Metrics
from vlmedge.serve.models import ServedModel, serve_pipeline
from vlmedge.serve.openapi import build_openapi
from vlmedge.serve.problems import Problem, from_vlmedge_error, retry_after

log = logging.getLogger("vlmedge.serve")

# Request bodies up to this size are parsed and checked on the event loop itself.
INLINE_BYTES = 256 * 1024


def load_models(artifacts: Iterable[str | os.PathLike], backend: str = "auto", precision: str | None = None,
                device: str = "cpu") -> dict[str, Any]:
    """Loads artifacts into pipelines named by their folder ("name=path" names one explicitly)."""
    from vlmedge.tasks import load

    pipelines: dict[str, Any] = {}
    for item in artifacts:
        text = os.fspath(item)
        name, _, path = text.partition("=") if "=" in text and not Path(text).exists() else ("", "", text)
        name = name or Path(path).resolve().name
        if name in pipelines:
            raise ArtifactError(f"Two artifacts are named '{name}'; name one explicitly, e.g. other-{name}={path}.")
        pipelines[name] = load(path, backend=backend, device=device, precision=precision)
    return pipelines


class _State:
    """What the routes share: served models, their batchers, limits and metrics."""

    def __init__(self, pipelines: dict[str, Any], batch: BatchConfig, limits: Limits) -> None:
        self.models: dict[str, ServedModel] = {name: serve_pipeline(name, p) for name, p in pipelines.items()}
        self.batch = batch
        self.limits = limits
        self.metrics = Metrics()
        self.batchers = {name: DynamicBatcher(name, m.run, batch, self.metrics) for name, m in self.models.items()}
        self.ready = False
        self.warmup_error: str | None = None
        self.openapi = build_openapi(self.models, limits)
        for name, m in self.models.items():
            info = m.describe()
            self.metrics.model_info.labels(name, m.task, info["backend"], info["precision"]).set(1)


def _error_response(problem: Problem) -> JSONResponse:
    return JSONResponse(problem.body(), status_code=problem.status, headers=problem.headers)


async def _read_body(request: Request, limits: Limits) -> bytes:
    """The whole body, refusing more than max_body_bytes (declared or sent) and slow senders."""
    declared = request.headers.get("content-length")
    too_big = Problem(413, "body_too_large", f"The request body is larger than the limit of "
                                             f"{limits.max_body_bytes:,} bytes; send fewer or smaller files.")
    if declared is not None:
        try:
            if int(declared) > limits.max_body_bytes:
                raise too_big
        except ValueError:
            raise Problem(400, "bad_request", "The Content-Length header is not a number.") from None
    chunks, size = [], 0

    async def read() -> None:
        nonlocal size
        async for chunk in request.stream():
            size += len(chunk)
            if size > limits.max_body_bytes:
                raise too_big
            chunks.append(chunk)

    try:
        await asyncio.wait_for(read(), limits.body_timeout_s)
    except (asyncio.TimeoutError, TimeoutError):
        raise Problem(408, "body_timeout", f"The request body did not arrive within {limits.body_timeout_s:g} s.") from None
    except ClientDisconnect:
        raise Problem(400, "client_disconnected", "The client went away while sending the body.") from None
    return b"".join(chunks)


async def _off_loop(size: int, fn: Any, *args: Any) -> Any:
    """Runs fn inline for small bodies (a thread hop costs more than parsing them), in a
    request thread for large ones, so the event loop never stalls on a big upload."""
    if size <= INLINE_BYTES:
        return fn(*args)
    return await anyio.to_thread.run_sync(fn, *args)


async def _prepare(request: Request, body: bytes, served: ServedModel, endpoint: Any, limits: Limits) -> Any:
    """Body -> checked inputs -> the model's job (JSON decoding, base64 and the image/audio
    header checks; the files themselves are decoded in the batch)."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "application/json":
        def from_json() -> Any:
            inputs = parse_json(body, endpoint.name, endpoint.fields)
            check_limits(inputs, limits)
            return inputs, served.prepare(endpoint, inputs, limits)

        return await _off_loop(len(body), from_json)
    if content_type == "multipart/form-data":
        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": body, "more_body": False}

        try:
            async with Request(request.scope, receive).form(max_files=limits.max_inputs,
                                                            max_fields=limits.max_labels + 64,
                                                            max_part_size=limits.max_body_bytes) as form:
                inputs = await parse_multipart(form, endpoint.name, endpoint.fields)
        except HTTPException as exc:  # the multipart parser's own limits and syntax errors
            raise Problem(400, "invalid_multipart",
                          f"The multipart body could not be read: {exc.detail}") from None
        check_limits(inputs, limits)
        return inputs, await _off_loop(len(body), served.prepare, endpoint, inputs, limits)
    raise Problem(415, "unsupported_media_type",
                  f"Content-Type {content_type or '(none)'} is not supported; send application/json "
                  "(base64 files) or multipart/form-data (file uploads).")


def create_app(pipelines: dict[str, Any], batch: BatchConfig | None = None, limits: Limits | None = None,
               warm_up: bool = True) -> Starlette:
    """The ASGI app serving these pipelines (name -> vlmedge.load(...) result).

    Models are warmed up in the background after startup: /healthz answers at once, /readyz
    once every model has run one input.
    """
    state = _State(pipelines, batch or BatchConfig(), limits or Limits())

    async def index(request: Request) -> Response:
        html = resources.files("vlmedge.serve").joinpath("static/index.html").read_text(encoding="utf-8")
        return HTMLResponse(html)

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(request: Request) -> Response:
        if state.warmup_error:
            return _error_response(Problem(503, "warmup_failed", f"Warm-up failed: {state.warmup_error}"))
        if not state.ready:
            return _error_response(Problem(503, "not_ready", "Models are still warming up.", retry_after(1)))
        return JSONResponse({"status": "ready"})

    async def metrics(request: Request) -> Response:
        return Response(state.metrics.render(), media_type=state.metrics.content_type)

    async def openapi(request: Request) -> Response:
        return JSONResponse(state.openapi)

    async def list_models(request: Request) -> Response:
        return JSONResponse({"models": [state.models[n].describe() for n in sorted(state.models)]})

    def find(name: str) -> ServedModel:
        if name not in state.models:
            raise Problem(404, "unknown_model", f"There is no model '{name}'; this server has: "
                                                f"{', '.join(sorted(state.models)) or 'none'} (GET /v1/models).")
        return state.models[name]

    async def get_model(request: Request) -> Response:
        try:
            served = find(request.path_params["model"])
        except Problem as problem:
            return _error_response(problem)
        labels = getattr(served.pipeline, "labels", None)
        return JSONResponse({**served.describe(), **({"label_names": list(labels)} if labels is not None else {})})

    async def infer(request: Request) -> Response:
        started = time.perf_counter()
        name, endpoint_name = request.path_params["model"], request.path_params["endpoint"]
        known = name in state.models and endpoint_name in state.models[name].endpoints
        labels = (name, endpoint_name) if known else ("-", "-")
        state.metrics.in_flight.inc()
        try:
            answer = await _infer(request, name, endpoint_name, started)
            response = JSONResponse(answer, headers={"Server-Timing": f"total;dur={answer['latency_ms']['total']:.2f}"})
        except Problem as problem:
            response = _error_response(problem)
            state.metrics.errors.labels(*labels, problem.code).inc()
        except VlmedgeError as exc:
            problem = from_vlmedge_error(exc)
            response = _error_response(problem)
            state.metrics.errors.labels(*labels, problem.code).inc()
        except Exception:  # noqa: BLE001 - a bug: log it, answer 500 as JSON
            log.exception("request to %s/%s failed", name, endpoint_name)
            response = _error_response(Problem(500, "internal_error", "The server failed on this request; see its log."))
            state.metrics.errors.labels(*labels, "internal_error").inc()
        finally:
            state.metrics.in_flight.dec()
        state.metrics.requests.labels(*labels, str(response.status_code)).inc()
        if known:
            state.metrics.latency.labels(*labels).observe(time.perf_counter() - started)
        return response

    async def _infer(request: Request, name: str, endpoint_name: str, started: float) -> dict[str, Any]:
        served = find(name)
        endpoint = served.endpoints.get(endpoint_name)
        if endpoint is None:
            raise Problem(404, "unknown_endpoint", f"Model '{name}' ({served.task}) has no '{endpoint_name}' endpoint; "
                                                   f"it serves: {', '.join(served.endpoints)}.")
        limits = state.limits
        body = await _read_body(request, limits)
        inputs, job = await _prepare(request, body, served, endpoint, limits)
        timeout = limits.request_timeout_s
        if "timeout_ms" in inputs.options:
            timeout = min(timeout, inputs.options["timeout_ms"] / 1000)
        timeout = max(0.001, timeout - (time.perf_counter() - started))
        result, timing = await state.batchers[name].submit(job.key, job.inputs, job.payload, timeout)
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
        return _error_response(Problem(status, code, message, dict(getattr(exc, "headers", None) or {})))

    async def server_error(request: Request, exc: Exception) -> Response:
        log.exception("unhandled error on %s", request.url.path, exc_info=exc)
        return _error_response(Problem(500, "internal_error", "The server failed on this request; see its log."))

    routes = [
        Route("/", index, methods=["GET"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        Route("/openapi.json", openapi, methods=["GET"]),
        Route("/v1/models", list_models, methods=["GET"]),
        Route("/v1/models/{model}", get_model, methods=["GET"]),
        Route("/v1/models/{model}/{endpoint}", infer, methods=["POST"]),
    ]
    app = Starlette(routes=routes, lifespan=lifespan,
                    exception_handlers={HTTPException: http_error, Exception: server_error})
    app.state.vlmedge = state
    return app
