"""Dynamic batching for one model, as Triton's dynamic batcher does it.

Requests wait in a bounded queue. The first one waiting opens a batch; requests with the
same batch key (the same endpoint and options that change the model call) that arrive
within ``max_delay_ms`` of it join, up to ``max_batch`` inputs. The batch runs as one
pipeline call in the model's own worker thread, so the event loop stays free, and the
results are split back per request. While a batch runs, the next one gathers; under load
batches fill up without waiting.

A full queue refuses at once (the caller answers 503 with Retry-After) instead of growing;
a request whose deadline passes while it waits is dropped without running.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Hashable

from vlmedge.serve.config import BatchConfig
from vlmedge.serve.problems import Problem, queue_full, retry_after, shutting_down

log = logging.getLogger("vlmedge.serve")

# run(key, payloads) -> one result per payload, in order; raises for the whole batch
RunBatch = Callable[[Hashable, list[Any]], list[Any]]


@dataclass
class Timing:
    """Where one request's time went, and how many inputs shared its model call."""

    queue_s: float
    inference_s: float
    batch_inputs: int
    batch_requests: int


@dataclass(eq=False)
class _Job:
    key: Hashable
    inputs: int
    payload: Any
    future: asyncio.Future
    enqueued: float
    deadline: float
    started: float | None = field(default=None)


class DynamicBatcher:
    """Queues requests for one model and runs them in batches in one worker thread."""

    def __init__(self, name: str, run: RunBatch, config: BatchConfig, metrics: Any = None) -> None:
        self.name = name
        self.config = config
        self._run_batch = run
        self._metrics = metrics
        self._pending: collections.deque[_Job] = collections.deque()
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"vlmedge-{name}")
        self._seconds_per_input = 0.01  # running estimate, for Retry-After

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        self._wakeup = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._loop(), name=f"batcher-{self.name}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        while self._pending:
            job = self._pending.popleft()
            if not job.future.done():
                job.future.set_exception(shutting_down())
        self._set_depth()
        # waits for a running batch off the event loop, which meanwhile answers the requests
        # the shutdown cut off (their 503s) instead of freezing until the batch ends
        await asyncio.get_running_loop().run_in_executor(
            None, functools.partial(self._executor.shutdown, wait=True, cancel_futures=True))

    def call(self, fn: Callable[[], Any]) -> "asyncio.Future[Any]":
        """Runs fn in the model's worker thread (warm-up, one-off calls), between batches."""
        return asyncio.get_running_loop().run_in_executor(self._executor, fn)

    # -- submitting ------------------------------------------------------------------------

    @property
    def depth(self) -> int:
        """Requests waiting (not counting the batch that is running)."""
        return len(self._pending)

    def retry_after_s(self) -> float:
        """A guess at when the queue will have room: the queued inputs at the measured rate."""
        queued = sum(job.inputs for job in self._pending)
        return queued * self._seconds_per_input + self.config.max_delay_ms / 1000

    async def submit(self, key: Hashable, inputs: int, payload: Any, timeout_s: float) -> tuple[Any, Timing]:
        """Queues one request and waits for its result.

        Raises:
            Problem: 503 when the queue is full, 408 when the deadline passes first, or the
                error the model call raised for this request.
        """
        if self._task is None:
            raise Problem(503, "not_ready", f"Model '{self.name}' is not running yet; retry shortly.", retry_after(1))
        if len(self._pending) >= self.config.max_queue:
            if self._metrics is not None:
                self._metrics.rejected.labels(self.name).inc()
            raise queue_full(self.name, len(self._pending), self.config.max_queue, self.retry_after_s())
        loop = asyncio.get_running_loop()
        now = loop.time()
        job = _Job(key, max(1, inputs), payload, loop.create_future(), now, now + timeout_s)
        self._pending.append(job)
        self._set_depth()
        self._wakeup.set()
        try:
            return await asyncio.wait_for(asyncio.shield(job.future), timeout_s)
        except (asyncio.TimeoutError, TimeoutError):
            if job.started is None:  # still queued: never run it (the loop skips a cancelled job)
                job.future.cancel()
                raise self._queue_timeout(timeout_s) from None
            raise Problem(408, "timeout",
                          f"Model '{self.name}' did not finish this request within {timeout_s:.3g} s; send fewer "
                          "or smaller inputs, or allow a longer timeout_ms.") from None
        finally:
            if not job.future.done():
                job.future.cancel()
            if job.started is None and job in self._pending:  # out of the queue now, not at the next batch
                self._pending.remove(job)
                self._set_depth()

    def _queue_timeout(self, waited_s: float) -> Problem:
        return Problem(408, "timeout", f"The request waited {waited_s:.3g} s in the queue of model '{self.name}' "
                                       "without being run (the server is busy); retry later or allow a longer "
                                       "timeout_ms.", retry_after(self.retry_after_s()))

    # -- the batching loop -----------------------------------------------------------------

    def _set_depth(self) -> None:
        if self._metrics is not None:
            self._metrics.queue_depth.labels(self.name).set(len(self._pending))

    def _drop_dead(self, now: float) -> None:
        """Removes requests that were cancelled or whose deadline passed while they waited."""
        alive = collections.deque()
        for job in self._pending:
            if job.future.done():
                continue
            if now >= job.deadline:  # never run it; its caller answers 408
                job.future.set_exception(self._queue_timeout(job.deadline - job.enqueued))
                continue
            alive.append(job)
        self._pending = alive
        self._set_depth()

    def _ready_inputs(self, key: Hashable) -> int:
        return sum(job.inputs for job in self._pending if job.key == key and not job.future.done())

    def _take(self, key: Hashable) -> list[_Job]:
        """The oldest requests with this key, up to max_batch inputs (at least one request)."""
        taken, kept, total = [], collections.deque(), 0
        for job in self._pending:
            if job.key == key and (not taken or total + job.inputs <= self.config.max_batch):
                taken.append(job)
                total += job.inputs
            else:
                kept.append(job)
        self._pending = kept
        self._set_depth()
        return taken

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        delay = self.config.max_delay_ms / 1000
        while True:
            self._drop_dead(loop.time())
            if not self._pending:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            first = self._pending[0]
            flush_at = first.enqueued + delay
            while self._ready_inputs(first.key) < self.config.max_batch and not first.future.done():
                remaining = flush_at - loop.time()
                if remaining <= 0:
                    break
                self._wakeup.clear()
                try:
                    await asyncio.wait_for(self._wakeup.wait(), remaining)
                except (asyncio.TimeoutError, TimeoutError):
                    break
            self._drop_dead(loop.time())
            if first.future.done() or not self._pending:
                continue
            jobs = self._take(first.key)
            try:
                await self._run(first.key, jobs)
            except Exception as exc:  # noqa: BLE001 - keep serving the other requests
                log.exception("batch of model %s failed", self.name)
                for job in jobs:
                    if not job.future.done():
                        job.future.set_exception(exc)

    async def _run(self, key: Hashable, jobs: list[_Job]) -> None:
        loop = asyncio.get_running_loop()
        started = loop.time()
        for job in jobs:
            job.started = started
        inputs = sum(job.inputs for job in jobs)
        payloads = [job.payload for job in jobs]
        clock = time.perf_counter()
        outcomes = await loop.run_in_executor(self._executor, self._call, key, payloads)
        seconds = time.perf_counter() - clock
        self._seconds_per_input = 0.8 * self._seconds_per_input + 0.2 * seconds / inputs
        if self._metrics is not None:
            self._metrics.batch_size.labels(self.name).observe(inputs)
            self._metrics.batch_requests.labels(self.name).observe(len(jobs))
            self._metrics.batch_seconds.labels(self.name).observe(seconds)
        for job, (ok, value) in zip(jobs, outcomes):
            if self._metrics is not None:
                self._metrics.queue_wait.labels(self.name).observe(started - job.enqueued)
            if job.future.done():
                continue
            if ok:
                job.future.set_result((value, Timing(started - job.enqueued, seconds, inputs, len(jobs))))
            else:
                job.future.set_exception(value)

    def _call(self, key: Hashable, payloads: list[Any]) -> list[tuple[bool, Any]]:
        """In the worker thread: the batch as one call; if it fails, each request on its own,
        so that one bad input fails only its own request."""
        try:
            results = self._run_batch(key, payloads)
            if len(results) != len(payloads):
                raise RuntimeError(f"batch of {len(payloads)} gave {len(results)} results")
            return [(True, r) for r in results]
        except Exception as exc:  # noqa: BLE001 - isolated below, per request
            if len(payloads) == 1:
                return [(False, exc)]
        outcomes = []
        for payload in payloads:
            try:
                outcomes.append((True, self._run_batch(key, [payload])[0]))
            except Exception as exc:  # noqa: BLE001 - handed to that request's caller
                outcomes.append((False, exc))
        return outcomes
