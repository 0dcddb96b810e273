"""How `vlmedge bench` takes its two measures: the timing loop around one call (or around
every call in turn, round-robin), and the resident memory of a session's life (its peak, and
the anonymous memory it holds)."""

from __future__ import annotations

import gc
import resource
import sys
import time
from typing import Any, Callable, NamedTuple

from vlmedge.runtimes.base import release_freed_heap

MAX_ITERATIONS = 100_000


def first_call(call: Callable[[], Any], warmup: int) -> int:
    """The first call's time in ns, then `warmup` untimed calls."""
    start = time.perf_counter_ns()
    call()
    first = time.perf_counter_ns() - start
    for _ in range(warmup):
        call()
    return first


def timed_samples(call: Callable[[], Any], iterations: int | None, duration: float, min_iterations: int) -> list[int]:
    """The times in ns of `iterations` calls, or of calls for `duration` seconds (at least
    `min_iterations`). The garbage collector is paused while timing so its pauses land in
    no sample."""
    samples: list[int] = []
    enabled = gc.isenabled()
    gc.disable()
    try:
        deadline = time.perf_counter_ns() + int(duration * 1e9)
        while (len(samples) < iterations if iterations else
               (len(samples) < min_iterations or time.perf_counter_ns() < deadline) and len(samples) < MAX_ITERATIONS):
            t0 = time.perf_counter_ns()
            call()
            samples.append(time.perf_counter_ns() - t0)
    finally:
        if enabled:
            gc.enable()
    return samples


def round_share(total: int, rounds: int) -> int:
    """A round's share of `total` timed calls: rounded up, so the rounds time at least `total`."""
    return -(-total // rounds)


def round_robin(calls: list[Callable[[], Any]], rounds: int, iterations: int | None, duration: float,
                min_iterations: int) -> list[list[int] | Exception]:
    """Each call's timed samples (or the exception that stopped it), taken in `rounds` rounds
    that visit every call in turn, a round's share of the iterations (rounded up) or of the
    duration each, after one untimed call that warms the caches the others used: a machine
    whose speed drifts then slows every call alike, so the ratios between them hold."""
    results: list[list[int] | Exception] = [[] for _ in calls]
    for _ in range(rounds):
        for i, call in enumerate(calls):
            if isinstance(results[i], Exception):
                continue
            try:
                call()
                results[i] += timed_samples(call, round_share(iterations, rounds) if iterations else None,
                                            duration / rounds, round_share(min_iterations, rounds))
            except Exception as exc:  # reported as that row's skip by the caller
                results[i] = exc
    return results


class Memory:
    """Peak resident memory per row. Linux: VmHWM, reset through /proc/self/clear_refs
    before each session is opened; elsewhere the growth of ru_maxrss (a lower bound: it
    reads 0 for a row that stays below an earlier row's peak)."""

    def __init__(self) -> None:
        self.resettable = self._reset() and self.status("VmHWM") is not None
        self.method = ("VmHWM reset before each session is opened, minus VmRSS before it" if self.resettable
                       else "growth of getrusage ru_maxrss (a lower bound)")
        self.method += "; each backend's one-time library start-up is done before, by a throwaway session"

    @staticmethod
    def _reset() -> bool:
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            return True
        except OSError:
            return False

    @staticmethod
    def status(key: str) -> float | None:
        """A /proc/self/status figure (VmRSS, VmHWM, RssAnon ...) in MB; None where there is none."""
        try:
            with open("/proc/self/status", encoding="ascii") as f:
                for line in f:
                    if line.startswith(key + ":"):
                        return int(line.split()[1]) / 1024
        except (OSError, ValueError):
            pass
        return None

    @staticmethod
    def _maxrss_mb() -> float:
        value = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return value / 1024**2 if sys.platform == "darwin" else value / 1024

    def start(self) -> Baseline:
        """Marks the start of a session's life; returns the baseline to pass to increase()
        and anonymous_increase()."""
        gc.collect()
        release_freed_heap()
        anonymous = self.status("RssAnon")
        if self.resettable:
            self._reset()
            return Baseline(self.status("VmRSS") or 0.0, anonymous)
        return Baseline(self._maxrss_mb(), anonymous)

    def increase(self, baseline: Baseline) -> float:
        peak = self.status("VmHWM") if self.resettable else self._maxrss_mb()
        return round(max(0.0, (peak or 0.0) - baseline.rss_mb), 1)

    def anonymous_increase(self, baseline: Baseline) -> float | None:
        """The anonymous memory (RssAnon) held now more than at the baseline: what the session
        holds that the kernel cannot drop. Peak RSS also counts a model file's clean mapped
        pages, which the kernel reclaims when memory runs short. None where /proc has no RssAnon."""
        now = self.status("RssAnon")
        if now is None or baseline.anonymous_mb is None:
            return None
        return round(max(0.0, now - baseline.anonymous_mb), 1)


class Baseline(NamedTuple):
    """Memory before a session is opened, in MB."""

    rss_mb: float
    anonymous_mb: float | None
