"""Decoding and preprocessing in a few worker threads, overlapped with inference.

Pillow's decoders and resampling and soundfile's decoding release the GIL, so a handful of
threads decode the items of a batch at once and keep preparing the next batch while the
backend runs the current one. The pipelines' list calls, the local bulk engine and the
benchmarks all go through `prepare_ordered`, the one place that owns such threads.

What a caller sees does not change with the worker count: results come in input order,
and an item's exception is raised at its place in that order, as the serial loop raises it.
"""

from __future__ import annotations

import collections
import itertools
import numbers
from typing import Any, Callable, Iterable, Iterator, NamedTuple, TypeVar

from vlmedge.environment import available_cores
from vlmedge.errors import BackendUnavailableError, UsageError, warn_caller, warnings_held

T = TypeVar("T")
R = TypeVar("R")

# Decoding saturates a few cores; more threads than this mostly contend with the backend's own,
# and more than the cores this process may use (taskset, a container's cpuset) only take turns.
DEFAULT_WORKERS = min(4, available_cores())


class Deferred(NamedTuple):
    """What a prepare function returns for an error its caller raises later than the item's
    turn: the serial loops decode a whole batch before preprocessing any of it, so a decode
    error of a later item wins over a preprocessing error of an earlier one."""

    error: Exception


def check_workers(workers: Any) -> int:
    """The decode worker count: a positive integer, or None for DEFAULT_WORKERS; 1 decodes
    serially in the caller's thread."""
    if workers is None:
        return DEFAULT_WORKERS
    if isinstance(workers, bool) or not isinstance(workers, numbers.Integral) or workers < 1:
        raise UsageError(f"decode_workers must be a positive integer (1: decode serially), or None for the "
                         f"default of {DEFAULT_WORKERS}; not {workers!r}.")
    return int(workers)


def prepare_ordered(fn: Callable[[T], R], items: Iterable[T], workers: int | None = None,
                    ahead: int = 64, inline: Callable[[T], bool] | None = None) -> Iterator[R]:
    """``fn(item)`` for each item, in input order.

    With one worker, each item is prepared in the caller's thread when it is consumed: the
    serial path, exactly. With more, ``workers`` threads prepare up to ``ahead`` items
    beyond the last one consumed (callers pass two batches' worth: the next batches are
    decoded while the model runs this one, and memory stays bounded). An exception of
    ``fn`` is raised when its item's turn comes; the items after it are then cancelled.

    Args:
        fn: prepares one item; it must not submit work of its own to these threads.
        items: any iterable, read lazily.
        workers: threads (None: DEFAULT_WORKERS).
        ahead: most items submitted and not yet consumed.
        inline: items it holds true for are prepared in the caller's thread, in order (say,
            objects that are not safe to read from two threads at once).
    """
    workers = check_workers(workers)
    if isinstance(items, (list, tuple)):
        workers = min(workers, len(items))
    if workers <= 1:
        yield from map(fn, items)
        return
    # here, not at the top: concurrent.futures imports logging, ~4 ms of every load that never decodes in parallel
    from concurrent.futures import ThreadPoolExecutor

    source = iter(items)
    pending: collections.deque = collections.deque()
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="vlmedge-decode")

    def submit(count: int) -> None:
        for item in itertools.islice(source, count):
            pending.append((item, None) if inline is not None and inline(item) else (None, _submitted(pool, fn, item)))

    try:
        submit(max(1, ahead))
        while pending:
            item, future = pending.popleft()
            submit(1)  # keep the window full while the caller works on this item
            yield fn(item) if future is None else _given(*future.result())
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


def _submitted(pool: Any, fn: Callable[[T], R], item: T) -> Any:
    """pool.submit(fn, item) (through _holding_warnings), which starts a thread while the pool
    has fewer than its workers."""
    try:
        return pool.submit(_holding_warnings, fn, item)
    except RuntimeError as exc:
        if "can't start new thread" not in str(exc):  # Python's words for a process or thread limit (ulimit -u)
            raise
        raise BackendUnavailableError("vlmedge could not start its decode threads (a process or thread limit such as "
                                      "ulimit -u); raise the limit or pass --decode-workers 1 (decode_workers=1)."
                                      ) from None


def _holding_warnings(fn: Callable[[T], R], item: T) -> tuple[R | None, BaseException | None, list]:
    """fn(item) on a decode thread: its result or exception, and the warnings it gave, which
    the consuming thread gives (`_given`) so that they name the caller's line."""
    held: list = []
    with warnings_held(held):
        try:
            return fn(item), None, held
        except Exception as exc:  # noqa: BLE001 - raised at its item's turn, after its warnings
            return None, exc, held


def _given(result: R | None, error: BaseException | None, held: list) -> R:
    """What _holding_warnings returned, given in the consuming thread: warnings, then the result or error."""
    for message, category in held:
        warn_caller(message, category)
    if error is not None:
        raise error
    return result  # type: ignore[return-value]


def in_batches(results: Iterable[R], size: int) -> Iterator[list[R]]:
    """Consecutive lists of ``size`` results (the last may be shorter)."""
    iterator = iter(results)
    while True:
        batch = list(itertools.islice(iterator, size))
        if not batch:
            return
        yield batch
