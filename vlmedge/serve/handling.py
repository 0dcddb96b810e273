"""What every protocol's routes share: reading a body within the limits, running parsing
off the event loop, and answering one inference request with the same errors, metrics and
timeouts whichever protocol it came in by."""

from __future__ import annotations

import asyncio
import functools
import logging
import time
import zlib
from typing import Any, Awaitable, Callable

import anyio
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response

from vlmedge.errors import VlmedgeError
from vlmedge.serve.config import Limits
from vlmedge.serve.problems import Problem, from_vlmedge_error, queue_full, shutting_down

log = logging.getLogger("vlmedge.serve")

# Request bodies up to this size are parsed and checked on the event loop itself.
INLINE_BYTES = 256 * 1024


def error_response(problem: Problem) -> JSONResponse:
    return JSONResponse(problem.body(), status_code=problem.status, headers=problem.headers)


# Content-Encoding -> zlib's wbits: 47 reads a gzip or a zlib header alike (HTTP's "deflate"
# is zlib; Triton's and KServe's clients compress requests with either when asked to)
ENCODINGS = {"gzip": 47, "deflate": 47, "x-gzip": 47}
GZIP_MAGIC = b"\x1f\x8b"


async def read_body(request: Request, limits: Limits, started: float) -> bytes:
    """The whole body, refusing more than max_body_bytes (declared, sent or decompressed) and
    senders slower than body_timeout_s or the request's time limit (from `started`, its
    arrival); a gzip or deflate body (Content-Encoding) comes back decompressed."""
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    try:
        if encoding not in ("identity", "", *ENCODINGS):
            raise Problem(415, "unsupported_encoding", f"Content-Encoding {encoding} is not supported; send the body "
                                                       f"uncompressed, or compressed with {' or '.join(ENCODINGS)}.")
        body = await _read_raw(request, limits, started)
    except Problem as problem:  # answered before the body was read to its end: uvicorn would read and drop
        # the rest, a client dripping it holding the connection. `vlmedge serve`'s protocol closes such a
        # connection itself (serve.command); the header says so to a client, and to Ray Serve's proxy
        problem.headers.setdefault("connection", "close")
        raise
    return body if encoding in ("identity", "") else await off_loop(len(body), _decompress, body, encoding, limits)


def _decompress(body: bytes, encoding: str, limits: Limits) -> bytes:
    """The body decompressed, never more than max_body_bytes of it (a small bomb stays small)."""
    out, rest = b"", body
    while True:  # a gzip body may be several members, one after another (RFC 1952)
        unpacker = zlib.decompressobj(ENCODINGS[encoding])
        try:
            out += unpacker.decompress(rest, limits.max_body_bytes + 1 - len(out))
        except zlib.error as exc:
            raise Problem(400, "bad_request", f"The body is not valid {encoding} data ({exc}).") from None
        if len(out) > limits.max_body_bytes or unpacker.unconsumed_tail:
            raise Problem(413, "body_too_large", f"The request body decompresses to more than the limit of "
                                                 f"{limits.max_body_bytes:,} bytes; send fewer or smaller files.")
        if not unpacker.eof:
            raise Problem(400, "bad_request", f"The {encoding} body ends before its compressed data does; the body "
                                              "was cut short.")
        rest = unpacker.unused_data
        if not rest:
            return out
        if not rest.startswith(GZIP_MAGIC):
            raise Problem(400, "bad_request", f"The {encoding} body has {len(rest)} bytes after its compressed data; "
                                              "send the compressed data alone.")


async def _read_raw(request: Request, limits: Limits, started: float) -> bytes:
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

    limit = min(limits.body_timeout_s, limits.request_timeout_s)  # from the request's arrival
    try:
        await asyncio.wait_for(read(), max(0.0, limit - (time.perf_counter() - started)))
    except (asyncio.TimeoutError, TimeoutError):
        raise Problem(408, "body_timeout", f"The request body did not arrive within {limit:g} s of the request; "
                                           "send it faster, or smaller.") from None
    except ClientDisconnect:
        raise Problem(499, "client_disconnected", "The client went away while sending the body.") from None  # as a client that leaves later
    return b"".join(chunks)


async def off_loop(size: int, fn: Any, *args: Any) -> Any:
    """Runs fn inline for small bodies (a thread hop costs more than parsing them), in a
    request thread for large ones, so the event loop never stalls on a big upload."""
    if size <= INLINE_BYTES:
        return fn(*args)
    return await anyio.to_thread.run_sync(fn, *args)


def remaining_s(state: Any, started: float, timeout_ms: int | None = None) -> float:
    """Seconds the request has left (the server's limit, or the request's own smaller
    timeout_ms, from its arrival); a 408 if none are left."""
    limit = _limit_s(state, timeout_ms)
    spent = time.perf_counter() - started
    if spent >= limit:
        raise _out_of_time(limit)
    return limit - spent


def _limit_s(state: Any, timeout_ms: int | None) -> float:
    return state.limits.request_timeout_s if timeout_ms is None else min(state.limits.request_timeout_s,
                                                                          timeout_ms / 1000)


def _out_of_time(timeout: float) -> Problem:
    return Problem(408, "timeout", f"The request's inputs were not received and prepared (decoded, preprocessed) "
                                   f"within its time limit of {timeout:.3g} s, before reaching the model; send fewer "
                                   "or shorter inputs, or allow a longer timeout_ms.")


async def prepare_in_time(state: Any, name: str, started: float, timeout_ms: int | None, fn: Any, *args: Any) -> Any:
    """Runs fn, a request's decoding and preprocessing for model `name`, in a request thread of
    its own (so requests are prepared in parallel with each other and with the running batch),
    and answers 408 once the request's time is up: the thread, which cannot be stopped, then
    finishes unobserved and its result is dropped.

    A request being prepared waits for the model as a queued one does: past --max-queue of
    both it is refused at once (503), and at most one request per core is prepared at a time,
    a thread cut off by its 408 keeping its slot until it ends. Else an overload decodes every
    request at once, each too slowly to make its time (all 408), and the CPU keeps working on
    answers already given."""
    timeout = remaining_s(state, started, timeout_ms)
    batcher = state.batchers[name]
    waiting = batcher.depth + state.preparing[name]
    if waiting >= state.batch.max_queue:
        state.metrics.rejected.labels(name).inc()
        raise queue_full(name, waiting, state.batch.max_queue, batcher.retry_after_s())

    async def prepare() -> Any:
        await state.prepare_slots.acquire()
        work = asyncio.ensure_future(anyio.to_thread.run_sync(fn, *args))
        work.add_done_callback(functools.partial(_release, state.prepare_slots))
        return await asyncio.shield(work)

    state.preparing[name] += 1
    try:
        return await asyncio.wait_for(prepare(), timeout)
    except (asyncio.TimeoutError, TimeoutError):
        raise _out_of_time(_limit_s(state, timeout_ms)) from None
    finally:
        state.preparing[name] -= 1


def _release(slots: asyncio.Semaphore, work: asyncio.Future) -> None:
    slots.release()
    if not work.cancelled():
        work.exception()  # retrieved: the error of a request already answered 408 is nobody's


async def submit(state: Any, name: str, job: Any, started: float, timeout_ms: int | None = None,
                 request: Request | None = None) -> tuple[Any, Any]:
    """Queues a model job on the model's batcher, within the request's remaining time. Given
    the request (its body read), a client that leaves first takes its job out of the queue.

    Watching the client, the job is queued by a task of its own, a loop step later: until then
    the request still counts among those being prepared, since one counted nowhere let another
    request past --max-queue (prepare_in_time's check)."""
    batcher, timeout_s = state.batchers[name], remaining_s(state, started, timeout_ms)
    if request is None or not state.cancel_on_disconnect:
        return await batcher.submit(job.key, job.inputs, job.payload, timeout_s)
    state.preparing[name] += 1
    counted = True

    def uncount() -> None:
        nonlocal counted
        if counted:
            counted = False
            state.preparing[name] -= 1

    async def queue_and_wait() -> tuple[Any, Any]:
        uncount()  # in the step that queues the job: the batcher's check and append come next
        return await batcher.submit(job.key, job.inputs, job.payload, timeout_s)

    try:
        return await _unless_the_client_leaves(asyncio.ensure_future(queue_and_wait()), request)
    finally:
        uncount()  # its task, cancelled before it started, never queued the job


async def _unless_the_client_leaves(work: asyncio.Future, request: Request) -> Any:
    """The work's result, or, when the client disconnects first, the work cancelled (a queued
    job never runs: the batcher skips it) and 499 for the log and the metrics. uvicorn does
    not cancel a handler whose client left; once the body is read, its receive channel
    answers only http.disconnect, at a disconnect or when the response is complete."""
    gone = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait((work, gone), return_when=asyncio.FIRST_COMPLETED)
    except BaseException:  # this handler was cancelled (a drain): so is its work
        work.cancel()
        raise
    finally:
        gone.cancel()
    if not work.done():  # the client left first
        work.cancel()
        raise Problem(499, "client_closed_request", "The client closed the connection before its answer was ready.")
    return work.result()


async def _disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def instrumented(state: Any, name: str | Callable[[], str], endpoint: str,
                       work: Callable[[float], Awaitable[Response]],
                       render: Callable[[Problem], Response] = error_response, known: bool | None = None) -> Response:
    """Runs one inference request: every failure becomes `render(problem)` (never a
    traceback), and the request, error and latency metrics are counted under (model,
    endpoint); `name` may be a function, for protocols that name the model in the body."""
    started = time.perf_counter()
    state.metrics.in_flight.inc()
    code = None
    task = asyncio.current_task()
    state.answering.add(task)  # what a drain waits for, then cancels
    try:
        if state.draining:
            raise shutting_down()
        response = await work(started)
    except Problem as problem:
        response, code = render(problem), problem.code
    except asyncio.CancelledError:  # the server's shutdown grace ran out before this request's answer
        problem = shutting_down()
        response, code = render(problem), problem.code
    except VlmedgeError as exc:
        problem = from_vlmedge_error(exc)
        response, code = render(problem), problem.code
    except Exception:  # noqa: BLE001 - a bug: log it, answer 500 as JSON
        log.exception("request to %s/%s failed", name() if callable(name) else name, endpoint)
        response = render(Problem(500, "internal_error", "The server failed on this request; see its log."))
        code = "internal_error"
    finally:
        state.metrics.in_flight.dec()
        state.answering.discard(task)
    model = name() if callable(name) else name
    known = model in state.models if known is None else known
    labels = (model, endpoint) if known else ("-", "-")
    if code is not None:
        state.metrics.errors.labels(*labels, code).inc()
    state.metrics.requests.labels(*labels, str(response.status_code)).inc()
    if known:
        state.metrics.latency.labels(*labels).observe(time.perf_counter() - started)
    return response
