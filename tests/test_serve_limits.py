"""`vlmedge serve` within its limits: it raises its own limit on open files (one per
connection) so a burst of clients is answered, not reset, and says so when it cannot; and
--max-queue holds for a request between its preparation and its place in the queue."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")
resource = pytest.importorskip("resource")

import vlmedge  # noqa: E402
from tests.serve_support import IMAGES, wait_for  # noqa: E402
from tests.test_serve_v2 import Gated  # noqa: E402
from vlmedge.serve import BatchConfig, create_app  # noqa: E402
from vlmedge.serve.handling import prepare_in_time, submit  # noqa: E402
from vlmedge.serve.inputs import parse_json  # noqa: E402
from vlmedge.serve.problems import Problem  # noqa: E402

_, HARD_OPEN_FILES = resource.getrlimit(resource.RLIMIT_NOFILE)


def serve_with_open_files(artifact, soft: int, hard: int) -> tuple[subprocess.Popen, str | None, str]:
    """`vlmedge serve ARTIFACT --port 0` started with these limits on open files; its URL once
    it prints it (None if it stopped first) and what it printed up to then."""
    def limited() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))

    proc = subprocess.Popen([sys.executable, "-m", "vlmedge", "serve", str(artifact), "--backend", "onnxruntime",
                             "--port", "0"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"}, preexec_fn=limited)
    printed, deadline = "", time.monotonic() + 90
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            return proc, None, printed
        printed += line
        if line.startswith("serving "):
            return proc, line.split(" on ", 1)[1].split()[0], printed
    return proc, None, printed


def open_files_limit(pid: int) -> tuple[int, int]:
    """The process's (soft, hard) limit on open files, as /proc reports it."""
    line = next(line for line in open(f"/proc/{pid}/limits") if line.startswith("Max open files"))
    soft, hard = line.split()[3:5]
    return int(soft), int(hard)


@pytest.mark.skipif(HARD_OPEN_FILES == resource.RLIM_INFINITY or HARD_OPEN_FILES < 256 or
                    not os.path.isdir("/proc/self"), reason="needs a hard limit of 256 open files or more, and /proc")
def test_serve_raises_its_open_files_limit_and_answers_a_burst(vit_artifact):
    """Started with a soft limit of 32 open files, 50 clients at once got 16 answers and 34
    connection resets, and nothing in the log."""
    proc, url, printed = serve_with_open_files(vit_artifact, 32, HARD_OPEN_FILES)
    try:
        assert url is not None, printed
        assert open_files_limit(proc.pid) == (HARD_OPEN_FILES, HARD_OPEN_FILES)
        wait_for(lambda: httpx.get(f"{url}/readyz").status_code == 200, timeout=60, what="readiness")
        body = {"images": [base64.b64encode(IMAGES[0].read_bytes()).decode()]}
        with ThreadPoolExecutor(50) as pool:
            answers = list(pool.map(lambda _: httpx.post(f"{url}/v1/models/vit/classify", json=body, timeout=60),
                                    range(50)))
        assert [a.status_code for a in answers] == [200] * 50
    finally:
        proc.terminate()
        rest, _ = proc.communicate(timeout=30)
    assert "warning" not in printed + rest


def test_serve_warns_when_it_may_open_few_files(vit_artifact):
    proc, url, printed = serve_with_open_files(vit_artifact, 64, 64)
    proc.terminate()
    rest, _ = proc.communicate(timeout=30)
    assert url is not None, printed + rest
    assert ("warning: this process may open only 64 files, one per connection, so clients past that many at once "
            "get a connection reset; raise the limit (ulimit -n) to at least 256.") in printed


def test_a_request_on_its_way_to_the_queue_counts_toward_max_queue(vit_artifact):
    """A prepared request's job is queued by a task of its own, a loop step after its
    preparation ended; another request admitted in between found it counted nowhere and went
    past --max-queue (a flood of 200 at --max-queue 64 was told "has 65 requests waiting").
    Here the other request's turn comes in that step, as in the server under a flood."""
    gated = Gated(vlmedge.load(vit_artifact, backend="onnxruntime"))
    app = create_app({"vit": gated}, BatchConfig(max_batch=1, max_delay_ms=0, max_queue=2), warm_up=False)
    state = app.state.vlmedge
    served, batcher = state.models["vit"], state.batchers["vit"]
    endpoint = served.endpoints["classify"]
    body = json.dumps({"images": [base64.b64encode(IMAGES[0].read_bytes()).decode()]}).encode()

    def prepare():  # what the server does with a request's body, in the request's thread
        return served.prepare(endpoint, parse_json(body, endpoint.name, endpoint.fields), state.limits)

    async def until(condition) -> None:
        while not condition():
            await asyncio.sleep(0.01)

    async def scenario():
        from starlette.requests import Request

        stays = asyncio.Event()  # a client that never leaves

        async def receive():
            await stays.wait()
            return {"type": "http.disconnect"}

        request = Request({"type": "http", "method": "POST", "path": "/", "headers": []}, receive)
        started = time.perf_counter()
        batcher.start()
        running = asyncio.ensure_future(submit(state, "vit", prepare(), started))
        await until(lambda: len(gated.calls) == 1)
        queued = asyncio.ensure_future(submit(state, "vit", prepare(), started))
        await until(lambda: batcher.depth == 1)
        other: list[asyncio.Future] = []

        async def handler():  # the server's: prepare, then submit at once
            job = await prepare_in_time(state, "vit", started, None, prepare)
            other.append(asyncio.ensure_future(prepare_in_time(state, "vit", started, None, prepare)))
            return await submit(state, "vit", job, started, None, request)

        answered = asyncio.ensure_future(handler())
        await until(lambda: other and other[0].done())
        refused = other[0].exception()
        waiting = batcher.depth + state.preparing["vit"]
        gated.gate.set()
        results = await asyncio.gather(running, queued, answered)
        stays.set()
        await batcher.stop()
        return refused, waiting, results

    refused, waiting, results = asyncio.run(asyncio.wait_for(scenario(), 60))
    assert isinstance(refused, Problem) and refused.status == 503, refused
    assert refused.message.startswith("Model 'vit' has 2 requests waiting, its limit (--max-queue 2)")
    assert waiting == 2 and len(results) == 3 and state.preparing["vit"] == 0
