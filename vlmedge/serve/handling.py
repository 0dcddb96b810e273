"""What every protocol's routes share: reading a body within the limits, running parsing
off the event loop, and answering one inference request with the same errors, metrics and
timeouts whichever protocol it came in by."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Awaitable, Callable

import anyio
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response

from vlmedge.errors import VlmedgeError
from vlmedge.serve.config import Limits
from vlmedge.serve.problems import Problem, from_vlmedge_error

log = logging.getLogger("vlmedge.serve")

# Request bodies up to this size are parsed and checked on the event loop itself.
INLINE_BYTES = 256 * 1024


def error_response(problem: Problem) -> JSONResponse:
    return JSONResponse(problem.body(), status_code=problem.status, headers=problem.headers)


async def read_body(request: Request, limits: Limits) -> bytes:
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


async def off_loop(size: int, fn: Any, *args: Any) -> Any:
    """Runs fn inline for small bodies (a thread hop costs more than parsing them), in a
    request thread for large ones, so the event loop never stalls on a big upload."""
    if size <= INLINE_BYTES:
        return fn(*args)
    return await anyio.to_thread.run_sync(fn, *args)


async def in_thread(fn: Any, *args: Any) -> Any:
    """Runs fn in a request thread of its own: decoding and preprocessing (item: a request's
    inputs are prepared in parallel with the other requests and the running batch)."""
    return await anyio.to_thread.run_sync(fn, *args)


async def submit(state: Any, name: str, job: Any, started: float, timeout_ms: int | None = None) -> tuple[Any, Any]:
    """Queues a model job on the model's batcher, within the request's remaining time."""
    timeout = state.limits.request_timeout_s
    if timeout_ms is not None:
        timeout = min(timeout, timeout_ms / 1000)
    timeout = max(0.001, timeout - (time.perf_counter() - started))
    return await state.batchers[name].submit(job.key, job.inputs, job.payload, timeout)


async def instrumented(state: Any, name: str | Callable[[], str], endpoint: str,
                       work: Callable[[float], Awaitable[Response]],
                       render: Callable[[Problem], Response] = error_response, known: bool | None = None) -> Response:
    """Runs one inference request: every failure becomes `render(problem)` (never a
    traceback), and the request, error and latency metrics are counted under (model,
    endpoint); `name` may be a function, for protocols that name the model in the body."""
    started = time.perf_counter()
    state.metrics.in_flight.inc()
    code = None
    try:
        response = await work(started)
    except Problem as problem:
        response, code = render(problem), problem.code
    except VlmedgeError as exc:
        problem = from_vlmedge_error(exc)
        response, code = render(problem), problem.code
    except Exception:  # noqa: BLE001 - a bug: log it, answer 500 as JSON
        log.exception("request to %s/%s failed", name, endpoint)
        response = render(Problem(500, "internal_error", "The server failed on this request; see its log."))
        code = "internal_error"
    finally:
        state.metrics.in_flight.dec()
    model = name() if callable(name) else name
    known = model in state.models if known is None else known
    labels = (model, endpoint) if known else ("-", "-")
    if code is not None:
        state.metrics.errors.labels(*labels, code).inc()
    state.metrics.requests.labels(*labels, str(response.status_code)).inc()
    if known:
        state.metrics.latency.labels(*labels).observe(time.perf_counter() - started)
    return response
