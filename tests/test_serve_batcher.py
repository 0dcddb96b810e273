"""Issue 11: the dynamic batcher on its own (asyncio, no HTTP, no model): batches up to
max_batch inputs of one key, splits results back in order, refuses when the queue is full,
answers 408 for requests past their deadline (never a bare cancellation), and isolates a
failing request from the rest of its batch."""

from __future__ import annotations

import asyncio
import random
import threading
import time

import pytest

from vlmedge.serve.batcher import DynamicBatcher
from vlmedge.serve.config import BatchConfig
from vlmedge.serve.problems import Problem


class Recorder:
    """A model stand-in: returns each payload doubled; records the batches it was given."""

    def __init__(self, delay: float = 0.0) -> None:
        self.batches: list[tuple] = []
        self.delay = delay
        self.gate = threading.Event()
        self.gate.set()

    def __call__(self, key, payloads):
        self.gate.wait(10)
        self.batches.append((key, list(payloads)))
        time.sleep(self.delay)
        if "bad" in payloads:
            raise ValueError("bad input")
        return [p * 2 for p in payloads]


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 30))


def test_batches_fill_up_to_max_batch_and_results_come_back_in_order():
    model = Recorder()
    model.gate.clear()

    async def main():
        batcher = DynamicBatcher("m", model, BatchConfig(max_batch=4, max_delay_ms=50, max_queue=100))
        batcher.start()
        first = asyncio.create_task(batcher.submit("k", 1, 100, 10))
        await asyncio.sleep(0.1)  # the first batch [100] is running (held by the gate)
        rest = [asyncio.create_task(batcher.submit("k", 1, i, 10)) for i in range(10)]
        await asyncio.sleep(0.05)
        model.gate.set()
        results = await asyncio.gather(first, *rest)
        await batcher.stop()
        return results

    results = run(main())
    assert [value for value, _ in results] == [200] + [2 * i for i in range(10)]
    assert [len(p) for _, p in model.batches] == [1, 4, 4, 2]
    assert [p for _, p in model.batches[1:]] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    timings = [timing for _, timing in results]
    assert timings[1].batch_inputs == 4 and timings[1].batch_requests == 4 and timings[-1].batch_inputs == 2


def test_requests_with_different_keys_never_share_a_batch():
    model = Recorder()

    async def main():
        batcher = DynamicBatcher("m", model, BatchConfig(max_batch=8, max_delay_ms=30))
        batcher.start()
        results = await asyncio.gather(*[batcher.submit(("k", i % 2), 1, i, 10) for i in range(6)])
        await batcher.stop()
        return results

    assert [v for v, _ in run(main())] == [0, 2, 4, 6, 8, 10]
    for key, payloads in model.batches:
        assert all(p % 2 == key[1] for p in payloads)


def test_a_multi_input_request_larger_than_max_batch_runs_alone():
    model = Recorder()

    async def main():
        batcher = DynamicBatcher("m", model, BatchConfig(max_batch=2, max_delay_ms=5))
        batcher.start()
        value, timing = await batcher.submit("k", 5, 1, 10)
        await batcher.stop()
        return timing

    assert run(main()).batch_inputs == 5


def test_a_full_queue_refuses_with_retry_after():
    model = Recorder()
    model.gate.clear()

    async def main():
        batcher = DynamicBatcher("m", model, BatchConfig(max_batch=1, max_delay_ms=0, max_queue=2))
        batcher.start()
        held = [asyncio.create_task(batcher.submit("k", 1, 1, 10))]
        await asyncio.sleep(0.05)
        held += [asyncio.create_task(batcher.submit("k", 1, i, 10)) for i in (2, 3)]
        await asyncio.sleep(0.05)
        with pytest.raises(Problem) as refused:
            await batcher.submit("k", 1, 4, 10)
        model.gate.set()
        values = [v for v, _ in await asyncio.gather(*held)]
        await batcher.stop()
        return refused.value, values

    problem, values = run(main())
    assert problem.status == 503 and problem.code == "queue_full" and int(problem.headers["Retry-After"]) >= 1
    assert values == [2, 4, 6]


def test_deadlines_answer_408_and_never_leak_a_cancellation():
    """Many requests with deadlines around the time the model takes (and every tenth with
    plenty of time): each one gets a result or a 408 Problem, whichever of the queue and the
    caller's timer notices the deadline first."""
    model = Recorder(delay=0.004)
    rng = random.Random(0)

    async def main():
        batcher = DynamicBatcher("m", model, BatchConfig(max_batch=4, max_delay_ms=2, max_queue=1000))
        batcher.start()
        timeouts = [10.0 if i % 10 == 0 else rng.uniform(0.0005, 0.03) for i in range(300)]
        outcomes = await asyncio.gather(*[batcher.submit("k", 1, i, t) for i, t in enumerate(timeouts)],
                                        return_exceptions=True)
        value, _ = await batcher.submit("k", 1, 7, 5)  # still serving afterwards
        await batcher.stop()
        return outcomes, value

    outcomes, value = run(main())
    assert value == 14
    errors = [o for o in outcomes if isinstance(o, BaseException)]
    assert errors and all(not isinstance(o, BaseException) for o in outcomes[::10])  # the patient ones ran
    assert all(isinstance(e, Problem) and e.status == 408 and e.code == "timeout" for e in errors), errors[:3]
    ran = {p for _, payloads in model.batches for p in payloads}
    assert all(outcome[0] == 2 * i for i, outcome in enumerate(outcomes) if not isinstance(outcome, BaseException))
    assert len(ran) < 300  # requests that expired in the queue were never run


def test_a_failing_input_fails_only_its_own_request():
    model = Recorder()
    model.gate.clear()

    async def main():
        batcher = DynamicBatcher("m", model, BatchConfig(max_batch=8, max_delay_ms=20))
        batcher.start()
        tasks = [asyncio.create_task(batcher.submit("k", 1, p, 10)) for p in ("a", "bad", "c")]
        await asyncio.sleep(0.05)
        model.gate.set()
        outcomes = await asyncio.gather(*tasks, return_exceptions=True)
        await batcher.stop()
        return outcomes

    ok_a, failed, ok_c = run(main())
    assert ok_a[0] == "aa" and ok_c[0] == "cc"
    assert isinstance(failed, ValueError)
    assert [len(p) for _, p in model.batches] == [3, 1, 1, 1]  # the batch, then each request alone
