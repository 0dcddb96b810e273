"""Issue 11: `vlmedge serve` over real HTTP on 127.0.0.1: every endpoint answers what the
Python runtime answers on the same inputs; concurrent requests are batched; a full queue
answers 503 with Retry-After; limits and timeouts answer 4xx JSON; the CLI serves."""

from __future__ import annotations

import asyncio
import base64
import gzip
import io
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
pytest.importorskip("multipart")
pytest.importorskip("prometheus_client")
httpx = pytest.importorskip("httpx")

import vlmedge  # noqa: E402
from tests.serve_support import AUDIO, IMAGES, metric, running, serve_artifact, wait_for  # noqa: E402
from vlmedge.serve import BatchConfig, Limits, create_app  # noqa: E402

ATOL = 1e-5


@pytest.fixture(scope="module")
def artifacts(vit_artifact, tmp_path_factory):
    return {"vit": vit_artifact, **{kind: serve_artifact(kind, tmp_path_factory) for kind in ("dino", "clip", "ast")}}


@pytest.fixture(scope="module")
def pipelines(artifacts):
    return {kind: vlmedge.load(path, backend="onnxruntime") for kind, path in artifacts.items()}


@pytest.fixture(scope="module")
def server(pipelines):
    """All four models, served by pipelines of their own (the tests compare with `pipelines`)."""
    served = {kind: vlmedge.load(p.model.artifact.root, backend="onnxruntime") for kind, p in pipelines.items()}
    with running(create_app(served, BatchConfig(max_batch=8, max_delay_ms=20))) as url:
        yield url


def b64(path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def files(field: str, paths) -> list:
    return [(field, (p.name, p.read_bytes())) for p in paths]


def assert_ranked(got: list[dict], expected: list) -> None:
    assert [p["label"] for p in got] == [p.label for p in expected]
    assert [p["index"] for p in got] == [p.index for p in expected]
    np.testing.assert_allclose([p["score"] for p in got], [p.score for p in expected], atol=ATOL, rtol=1e-4)


# -- the API answers what the runtime answers ------------------------------------------------


def test_models_health_and_openapi(server):
    assert httpx.get(f"{server}/healthz").json() == {"status": "ok"}
    assert httpx.get(f"{server}/readyz").status_code == 200
    models = {m["name"]: m for m in httpx.get(f"{server}/v1/models").json()["models"]}
    assert {n: m["task"] for n, m in models.items()} == {
        "vit": "image-classification", "dino": "image-embedding", "clip": "clip", "ast": "audio-classification"}
    assert models["vit"]["backend"] == "onnxruntime" and models["vit"]["precision"] == "fp32"
    assert models["vit"]["labels"][:2] == ["class_0", "class_1"] and len(models["vit"]["labels"]) == 12
    assert len(models["ast"]["labels"]) == 9 and models["dino"]["labels"] is None and models["dino"]["attention"] is True
    one = httpx.get(f"{server}/v1/models/vit").json()
    assert one["label_names"][:2] == ["class_0", "class_1"]
    schema = httpx.get(f"{server}/openapi.json").json()
    assert schema["openapi"].startswith("3.")
    assert {"/v1/models/vit/classify", "/v1/models/dino/embed", "/v1/models/clip/embed", "/v1/models/clip/zero-shot",
            "/v1/models/ast/tag", "/metrics", "/readyz"} <= set(schema["paths"])
    page = httpx.get(f"{server}/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"] and "vlmedge" in page.text


def test_classify_multipart_and_json_match_the_runtime(server, pipelines):
    expected = pipelines["vit"].classify(IMAGES, top_k=3)
    r = httpx.post(f"{server}/v1/models/vit/classify", files=files("images", IMAGES), data={"top_k": "3"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == "vit" and body["inputs"] == len(IMAGES) and body["latency_ms"]["total"] > 0
    assert "Server-Timing" in r.headers
    for got, want in zip(body["results"], expected):
        assert_ranked(got["predictions"], want)
    # base64 in one line, and as MIME writes it (the base64 tool, base64.encodebytes: lines of 76)
    encoded = [b64(IMAGES[0]), base64.encodebytes(IMAGES[1].read_bytes()).decode()]
    r = httpx.post(f"{server}/v1/models/vit/classify", json={"images": encoded, "top_k": 3})
    assert r.status_code == 200, r.text
    for got, want in zip(r.json()["results"], expected[:2]):
        assert_ranked(got["predictions"], want)


def test_embed_with_attention_matches_the_runtime(server, pipelines, tmp_path):
    encoder = pipelines["dino"]
    r = httpx.post(f"{server}/v1/models/dino/embed", files=files("images", IMAGES[:2]), data={"attention": "true"})
    assert r.status_code == 200, r.text
    body = r.json()
    np.testing.assert_allclose(np.array(body["embeddings"]), encoder.embed(IMAGES[:2]), atol=ATOL)
    assert body["dim"] == 32 and body["pooling"] == "cls" and body["normalized"] is True
    url = body["attention"][0]
    assert url.startswith("data:image/png;base64,")
    served = np.asarray(Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))))
    local = np.asarray(Image.open(encoder.render_attention(IMAGES[0], tmp_path / "a.png", panel_size=160)))
    assert served.shape == local.shape and np.abs(served.astype(int) - local.astype(int)).max() <= 1

    r = httpx.post(f"{server}/v1/models/dino/embed", json={"images": [b64(IMAGES[2])], "pooling": "mean",
                                                           "normalize": False})
    assert r.status_code == 200, r.text
    np.testing.assert_allclose(r.json()["embeddings"], encoder.embed(IMAGES[2], pooling="mean", normalize=False),
                               atol=ATOL)
    r = httpx.post(f"{server}/v1/models/dino/embed", json={"images": [b64(IMAGES[2])], "pooling": "pooled"})
    assert r.status_code == 422 and "pooled" in r.json()["error"]["message"]  # the runtime's own InputError


def test_clip_embeddings_and_zero_shot_match_the_runtime(server, pipelines):
    clip = pipelines["clip"]
    captions = ["a red circle", "a yellow star", ""]
    r = httpx.post(f"{server}/v1/models/clip/embed", json={"texts": captions})
    assert r.status_code == 200, r.text
    assert r.json()["kind"] == "text"
    np.testing.assert_allclose(r.json()["embeddings"], clip.embed_texts(captions), atol=ATOL)
    r = httpx.post(f"{server}/v1/models/clip/embed", files=files("images", IMAGES[:3]))
    assert r.status_code == 200, r.text
    np.testing.assert_allclose(r.json()["embeddings"], clip.embed_images(IMAGES[:3]), atol=ATOL)
    r = httpx.post(f"{server}/v1/models/clip/embed", json={"texts": ["x"], "images": [b64(IMAGES[0])]})
    assert r.status_code == 422

    labels, templates = ["circle", "square", "star", "cross"], ["a photo of a {}.", "a drawing of a {}."]
    expected = clip.zero_shot(IMAGES, labels, templates, top_k=3)
    # a multipart labels field may hold several labels, comma-separated; fields may repeat
    r = httpx.post(f"{server}/v1/models/clip/zero-shot", files=files("images", IMAGES)
                   + [("labels", (None, "circle, square,star")), ("labels", (None, "cross")),
                      ("templates", (None, templates[0])), ("templates", (None, templates[1])), ("top_k", (None, "3"))])
    assert r.status_code == 200, r.text
    for got, want in zip(r.json()["results"], expected):
        assert_ranked(got["predictions"], want)
    r = httpx.post(f"{server}/v1/models/clip/zero-shot",
                   json={"images": [b64(IMAGES[1])], "labels": labels, "templates": templates, "top_k": 2})
    assert_ranked(r.json()["results"][0]["predictions"], expected[1][:2])
    # without top_k every label, as the pipeline's zero_shot (it was 5 of them)
    six = labels + ["hexagon", "triangle"]
    r = httpx.post(f"{server}/v1/models/clip/zero-shot", json={"images": [b64(IMAGES[1])], "labels": six})
    assert_ranked(r.json()["results"][0]["predictions"], clip.zero_shot(IMAGES[1], six))
    assert len(r.json()["results"][0]["predictions"]) == 6
    r = httpx.post(f"{server}/v1/models/clip/zero-shot", json={"images": [b64(IMAGES[1])]})
    assert r.status_code == 422 and r.json()["error"]["code"] == "missing_input"


def test_tag_matches_the_runtime(server, pipelines):
    tagger = pipelines["ast"]
    expected = tagger.tag(AUDIO, top_k=3, threshold=0.2, aggregate="mean")
    r = httpx.post(f"{server}/v1/models/ast/tag", files=files("audio", AUDIO),
                   data={"top_k": "3", "threshold": "0.2", "aggregate": "mean"})
    assert r.status_code == 200, r.text
    for got, want in zip(r.json()["results"], expected):
        assert got["duration"] == pytest.approx(want.duration)
        assert_ranked(got["predictions"], want.tags)
        assert len(got["windows"]) == len(want.windows)
        for gw, ww in zip(got["windows"], want.windows):
            assert (gw["start"], gw["end"]) == pytest.approx((ww.start, ww.end))
            assert_ranked(gw["predictions"], ww.tags)
    r = httpx.post(f"{server}/v1/models/ast/tag", json={"audio": [b64(AUDIO[0])], "window_hop": 0.25})
    assert r.status_code == 200, r.text
    assert_ranked(r.json()["results"][0]["predictions"], tagger.tag(AUDIO[0], window_hop=0.25).tags)


def test_errors_are_json_with_4xx_codes(server):
    post = lambda path, **kw: httpx.post(f"{server}{path}", **kw)  # noqa: E731
    cases = [
        (post("/v1/models/nope/classify", json={"images": []}), 404, "unknown_model"),
        (post("/v1/models/vit/tag", json={"audio": []}), 404, "unknown_endpoint"),
        (post("/v1/models/vit/classify", content=b"{not json", headers={"content-type": "application/json"}), 400,
         "invalid_json"),
        (post("/v1/models/vit/classify", content=b"x", headers={"content-type": "text/plain"}), 415,
         "unsupported_media_type"),
        (post("/v1/models/vit/classify", json={"images": ["%%%"]}), 422, "invalid_base64"),
        (post("/v1/models/vit/classify", json={"images": [b64(IMAGES[0])], "top_k": 0}), 422, "invalid_field"),
        (post("/v1/models/vit/classify", json={"images": [b64(IMAGES[0])], "top_k": True}), 422, "invalid_field"),
        (post("/v1/models/vit/classify", files=files("images", IMAGES[:1]), data={"top_k": "many"}), 422,
         "invalid_field"),
        (post("/v1/models/vit/classify", json={"images": [b64(IMAGES[0])], "labels": ["x"]}), 422, "unknown_field"),
        (post("/v1/models/vit/classify", json={}), 422, "missing_input"),
        (post("/v1/models/vit/classify", json={"images": [base64.b64encode(b"not an image").decode()]}), 422,
         "invalid_input"),
        (post("/v1/models/ast/tag", files=files("audio", IMAGES[:1])), 422, "invalid_input"),
        (post("/v1/models/clip/embed", content=b'{"texts": ["\\ud800"]}', headers={"content-type": "application/json"}),
         422, "invalid_field"),  # a lone surrogate: valid JSON, not valid text
        (post("/v1/models/ast/tag", json={"audio": [b64(AUDIO[0])], "window_hop": 99.0}), 422, "invalid_field"),
        (httpx.get(f"{server}/v1/models/nope"), 404, "unknown_model"),
        (httpx.delete(f"{server}/v1/models"), 405, "method_not_allowed"),
        # an integer longer than Python converts (4,300 digits) is malformed JSON too (it was a 500)
        (post("/v1/models/vit/classify", content=b'{"images": [], "top_k": 1' + b"0" * 5000 + b"}",
              headers={"content-type": "application/json"}), 400, "invalid_json"),
    ]
    for response, status, code in cases:
        assert response.status_code == status, (status, code, response.text)
        error = response.json()["error"]
        assert error["status"] == status and error["code"] == code and error["message"].endswith((".", ")"))


def test_no_model_call_holds_more_inputs_than_max_batch(vit_artifact):
    """A request of 5 images with --max-batch 2 ran as one model call of 5 (a task request and
    a V2 graph request alike); the caller's pipeline keeps its own batch size."""
    from tests.hardening_support import model_calls

    pipeline = vlmedge.load(vit_artifact, backend="onnxruntime")
    calls = model_calls(pipeline)
    images = (IMAGES * 2)[:5]
    with running(create_app({"vit": pipeline}, BatchConfig(max_batch=2, max_delay_ms=1), warm_up=False)) as url:
        answer = httpx.post(f"{url}/v1/models/vit/classify", files=files("images", images), timeout=60)
        pixels = np.zeros((5, 3, *pipeline.spec.output_size), np.float32)
        name = pipeline.model.sessions["model"].inputs[0].name
        graph = httpx.post(f"{url}/v2/models/vit/infer", timeout=60, json={"inputs": [
            {"name": name, "datatype": "FP32", "shape": list(pixels.shape), "data": pixels.ravel().tolist()}]})
    assert answer.status_code == 200 and graph.status_code == 200, (answer.text, graph.text)
    assert calls == [2, 2, 1, 2, 2, 1] and pipeline.batch_size == 32
    for got, expected in zip(answer.json()["results"], pipeline.classify(images)):
        assert_ranked(got["predictions"], expected)
    assert len(graph.json()["outputs"][0]["data"]) == 5 * len(pipeline.labels)
    # and a --max-batch above the pipelines' default of 32 is the size of a model call too
    calls.clear()
    with running(create_app({"vit": pipeline}, BatchConfig(max_batch=40, max_delay_ms=1), warm_up=False,
                            limits=Limits(max_inputs=64))) as url:
        answer = httpx.post(f"{url}/v1/models/vit/classify", files=files("images", (IMAGES * 12)[:36]), timeout=60)
    assert answer.status_code == 200 and calls == [36], (answer.text, calls)


# -- batching, the queue bound, timeouts -----------------------------------------------------


class GatedClassifier:
    """A classifier whose model calls wait for a gate, so tests can hold a batch running."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.gate = threading.Event()
        self.calls: list[int] = []

    def __getattr__(self, name):
        if name == "inner":  # not set yet: a copy being made (the server serves a copy)
            raise AttributeError(name)
        return getattr(self.inner, name)

    def classify_prepared(self, pixels, top_k=5):  # what the server's batches call
        self.calls.append(len(pixels))
        assert self.gate.wait(30), "the test never opened the gate"
        return self.inner.classify_prepared(pixels, top_k=top_k)


@pytest.fixture
def gated(vit_artifact):
    return GatedClassifier(vlmedge.load(vit_artifact, backend="onnxruntime"))


def _post_all(url: str, bodies: list[dict]) -> list[httpx.Response]:
    with ThreadPoolExecutor(len(bodies)) as pool:
        return list(pool.map(lambda body: httpx.post(url, json=body, timeout=60), bodies))


def test_concurrent_requests_run_as_one_batch(gated):
    app = create_app({"vit": gated}, BatchConfig(max_batch=16, max_delay_ms=10, max_queue=32), warm_up=False)
    batcher = app.state.vlmedge.batchers["vit"]
    with running(app) as url, ThreadPoolExecutor(8) as pool:
        first = pool.submit(httpx.post, f"{url}/v1/models/vit/classify", json={"images": [b64(IMAGES[0])]}, timeout=60)
        wait_for(lambda: len(gated.calls) == 1, what="the first batch to start")
        bodies = [{"images": [b64(p)], "top_k": 2} for p in IMAGES] + [{"images": [b64(p) for p in IMAGES[:2]]}]
        rest = [pool.submit(httpx.post, f"{url}/v1/models/vit/classify", json=b, timeout=60) for b in bodies]
        wait_for(lambda: batcher.depth == len(bodies), what="the requests to queue")
        gated.gate.set()
        responses = [first.result()] + [f.result() for f in rest]
        text = httpx.get(f"{url}/metrics").text
    assert [r.status_code for r in responses] == [200] * len(responses)
    assert gated.calls == [1, len(IMAGES) + 2]  # the queued requests ran as one model call
    assert all(r.json()["batch"] == {"inputs": len(IMAGES) + 2, "requests": len(bodies)} for r in responses[1:])
    assert metric(text, "vlmedge_batch_size_count", model="vit") == 2
    assert metric(text, "vlmedge_batch_size_sum", model="vit") == len(IMAGES) + 3
    assert metric(text, "vlmedge_batch_size_bucket", model="vit", le="1.0") == 1  # one batch of > 1
    reference = gated.inner  # the same pipeline, called directly, one image at a time
    for response, path in zip(responses[1:], IMAGES):  # batched answers = unbatched runtime answers
        assert_ranked(response.json()["results"][0]["predictions"], reference.classify(path, top_k=2))
    last = responses[-1].json()["results"]
    assert len(last) == 2 and len(last[0]["predictions"]) == 5


def test_a_full_queue_answers_503_with_retry_after(gated):
    app = create_app({"vit": gated}, BatchConfig(max_batch=1, max_delay_ms=0, max_queue=2), warm_up=False)
    batcher = app.state.vlmedge.batchers["vit"]
    body = {"images": [b64(IMAGES[0])]}
    with running(app) as url, ThreadPoolExecutor(4) as pool:
        held = [pool.submit(httpx.post, f"{url}/v1/models/vit/classify", json=body, timeout=60)]
        wait_for(lambda: len(gated.calls) == 1, what="the first batch to start")
        held += [pool.submit(httpx.post, f"{url}/v1/models/vit/classify", json=body, timeout=60) for _ in range(2)]
        wait_for(lambda: batcher.depth == 2, what="the queue to fill")
        refused = httpx.post(f"{url}/v1/models/vit/classify", json=body)
        # the model's thread is busy; the event loop is not
        assert httpx.get(f"{url}/healthz", timeout=5).status_code == 200
        assert metric(httpx.get(f"{url}/metrics", timeout=5).text, "vlmedge_queue_depth", model="vit") == 2
        gated.gate.set()
        assert [f.result().status_code for f in held] == [200, 200, 200]
        text = httpx.get(f"{url}/metrics").text
    assert refused.status_code == 503
    assert int(refused.headers["Retry-After"]) >= 1
    assert refused.json()["error"]["code"] == "queue_full" and "--max-queue 2" in refused.json()["error"]["message"]
    assert metric(text, "vlmedge_queue_rejected_total", model="vit") == 1
    assert metric(text, "vlmedge_requests_total", model="vit", endpoint="classify", code="503") == 1
    assert metric(text, "vlmedge_queue_depth", model="vit") == 0


class SlowToPrepare:
    """A classifier whose requests' preprocessing waits for a gate (in their request threads)."""

    def __init__(self, inner) -> None:
        self.inner, self.gate, self.prepared = inner, threading.Event(), []

    def __getattr__(self, name):
        if name == "inner":  # not set yet: a copy being made (the server serves a copy)
            raise AttributeError(name)
        return getattr(self.inner, name)

    @property
    def spec(self):  # what a request's preprocessing reads first
        self.prepared.append(threading.current_thread().name)
        assert self.gate.wait(30), "the test never opened the gate"
        return self.inner.spec


def test_requests_being_prepared_count_toward_the_queue_and_wait_for_a_slot(vit_artifact):
    """An overload was all 408s: every request decoded at once, each too slowly, and --max-queue
    only counted requests already decoded. Now those being prepared count, and one request
    per slot is prepared at a time; one that waits past its time never starts."""
    slow = SlowToPrepare(vlmedge.load(vit_artifact, backend="onnxruntime"))
    app = create_app({"vit": slow}, BatchConfig(max_queue=3), warm_up=False)
    state = app.state.vlmedge
    state.prepare_slots = asyncio.Semaphore(1)  # one core's worth
    body = {"images": [b64(IMAGES[0])]}
    post = lambda **extra: httpx.post(f"{url}/v1/models/vit/classify", json={**body, **extra}, timeout=60)  # noqa: E731
    with running(app) as url, ThreadPoolExecutor(4) as pool:
        held = [pool.submit(post)]
        wait_for(lambda: len(slow.prepared) == 1, what="the first request to be prepared")
        late = post(timeout_ms=300)  # waits for the slot past its time: 408, never prepared
        assert late.status_code == 408 and len(slow.prepared) == 1
        held += [pool.submit(post) for _ in range(2)]
        wait_for(lambda: state.preparing["vit"] == 3, what="three requests to be preparing")
        refused = post()
        slow.gate.set()
        assert [f.result().status_code for f in held] == [200, 200, 200]
    assert refused.status_code == 503 and "has 3 requests waiting" in refused.json()["error"]["message"]
    assert int(refused.headers["Retry-After"]) >= 1


def test_a_request_that_waits_past_its_timeout_answers_408_and_never_runs(gated):
    app = create_app({"vit": gated}, BatchConfig(max_batch=1, max_delay_ms=0), warm_up=False)
    body = {"images": [b64(IMAGES[0])]}
    with running(app) as url, ThreadPoolExecutor(2) as pool:
        first = pool.submit(httpx.post, f"{url}/v1/models/vit/classify", json=body, timeout=60)
        wait_for(lambda: len(gated.calls) == 1, what="the first batch to start")
        late = httpx.post(f"{url}/v1/models/vit/classify", json={**body, "timeout_ms": 200})
        gated.gate.set()
        assert first.result().status_code == 200
        time.sleep(0.2)
    assert late.status_code == 408 and late.json()["error"]["code"] == "timeout"
    assert gated.calls == [1]  # the timed-out request was dropped, not run


def test_a_request_whose_client_left_leaves_the_queue_and_never_runs(gated):
    """A client that gave up (its own timeout) had its request run anyway, the model's time
    spent on an answer nobody reads; now it leaves the queue, counted as 499."""
    app = create_app({"vit": gated}, BatchConfig(max_batch=1, max_delay_ms=0), warm_up=False)
    batcher = app.state.vlmedge.batchers["vit"]
    body = {"images": [b64(IMAGES[0])]}
    with running(app) as url, ThreadPoolExecutor(2) as pool:
        first = pool.submit(httpx.post, f"{url}/v1/models/vit/classify", json=body, timeout=60)
        wait_for(lambda: len(gated.calls) == 1, what="the first batch to start")
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(f"{url}/v1/models/vit/classify", json=body, timeout=httpx.Timeout(30, read=1))
        wait_for(lambda: batcher.depth == 0, what="the request of the client that left to leave the queue")
        gated.gate.set()
        assert first.result().status_code == 200
        text = httpx.get(f"{url}/metrics").text
    assert gated.calls == [1]
    assert metric(text, "vlmedge_requests_total", model="vit", endpoint="classify", code="499") == 1


def test_a_client_that_leaves_during_its_upload_counts_as_499_not_a_bad_request(gated):
    import socket
    from urllib.parse import urlsplit

    app = create_app({"vit": gated}, BatchConfig(), warm_up=False)
    with running(app) as url:
        where = urlsplit(url)
        with socket.create_connection((where.hostname, where.port)) as conn:
            conn.sendall(b"POST /v1/models/vit/classify HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         b"Content-Length: 1000\r\n\r\n{\"images\": [")
            conn.shutdown(socket.SHUT_WR)
        wait_for(lambda: metric(httpx.get(f"{url}/metrics").text, "vlmedge_requests_total", model="vit",
                                endpoint="classify", code="499") == 1, what="the request counted as 499")
        text = httpx.get(f"{url}/metrics").text
    assert metric(text, "vlmedge_requests_total", model="vit", endpoint="classify", code="400") == 0
    assert gated.calls == []


def test_one_bad_input_fails_only_its_own_request(gated):
    """A file whose header reads but whose body does not decode fails in its own request's
    thread (files are decoded there, not in the batch): it answers 422 at once, while the
    model is busy, and never joins a batch."""
    truncated = IMAGES[0].read_bytes()[:400]  # a JPEG header, then nothing: fails only when decoded
    app = create_app({"vit": gated}, BatchConfig(max_batch=8, max_delay_ms=10), warm_up=False)
    batcher = app.state.vlmedge.batchers["vit"]
    with running(app) as url, ThreadPoolExecutor(4) as pool:
        first = pool.submit(httpx.post, f"{url}/v1/models/vit/classify", json={"images": [b64(IMAGES[1])]}, timeout=60)
        wait_for(lambda: len(gated.calls) == 1, what="the first batch to start")
        bodies = [{"images": [b64(IMAGES[0])]}, {"images": [base64.b64encode(truncated).decode()]},
                  {"images": [b64(IMAGES[2])]}]
        rest = [pool.submit(httpx.post, f"{url}/v1/models/vit/classify", json=b, timeout=60) for b in bodies]
        assert rest[1].result().status_code == 422  # answered while the first batch still runs
        wait_for(lambda: batcher.depth == 2, what="the good requests to queue")
        gated.gate.set()
        codes = [first.result().status_code] + [f.result().status_code for f in rest]
    assert codes == [200, 200, 422, 200]
    assert rest[1].result().json()["error"]["code"] == "invalid_input"
    assert gated.calls == [1, 2]  # the bad request never reached the model


def test_limits_answer_4xx_json(artifacts, tmp_path):
    import soundfile as sf

    pipelines = {"vit": vlmedge.load(artifacts["vit"], backend="onnxruntime"),
                 "clip": vlmedge.load(artifacts["clip"], backend="onnxruntime"),
                 "ast": vlmedge.load(artifacts["ast"], backend="onnxruntime")}
    limits = Limits(max_body_bytes=300_000, max_inputs=2, max_image_pixels=150 * 150, max_audio_seconds=1.0,
                    max_caption_chars=30, max_labels=3, body_timeout_s=0.5)
    big = io.BytesIO()
    Image.new("RGB", (200, 160), "red").save(big, format="PNG")
    two_seconds = io.BytesIO()
    sf.write(two_seconds, np.zeros(32000, np.float32), 16000, format="WAV")
    one_second = io.BytesIO()
    sf.write(one_second, np.zeros(15000, np.float32), 16000, format="WAV")
    noise = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (400, 400, 3), dtype=np.uint8)).save(noise, format="PNG")
    with running(create_app(pipelines, limits=limits, warm_up=False)) as url:
        post = lambda path, **kw: httpx.post(f"{url}{path}", **kw)  # noqa: E731
        cases = [
            (post("/v1/models/vit/classify", files=[("images", ("n.png", noise.getvalue()))]), 413, "body_too_large"),
            (post("/v1/models/vit/classify", json={"images": [b64(p) for p in IMAGES[:3]]}), 422, "too_many_inputs"),
            (post("/v1/models/vit/classify", files=[("images", ("big.png", big.getvalue()))]), 413, "image_too_large"),
            (post("/v1/models/ast/tag", files=[("audio", ("2s.wav", two_seconds.getvalue()))]), 413, "audio_too_long"),
            (post("/v1/models/clip/embed", json={"texts": ["a caption much longer than thirty characters"]}), 422,
             "text_too_long"),
            (post("/v1/models/clip/zero-shot", json={"images": [b64(IMAGES[0])], "labels": list("abcd")}), 422,
             "too_many_labels"),
            # as multipart fields: beyond what labels may make, the form parser's limit (it was 400 invalid_multipart)
            (post("/v1/models/clip/zero-shot", files=files("images", IMAGES[:1]), data={"labels": ["x"] * 100}), 422,
             "too_many_labels"),
            (post("/v1/models/vit/classify", files=files("images", IMAGES[:3])), 422, "too_many_inputs"),
            (post("/v1/models/vit/classify", content=b"[" * 100_000 + b"]" * 100_000, headers=JSON), 400,
             "invalid_json"),  # nested too deep for Python's parser
            # beyond the decoder's own limit: refused from the header as too large, not as unreadable
            (post("/v1/models/vit/classify", files=[("images", ("bomb.png", png_header(20_000, 20_000)))]), 413,
             "image_too_large"),
            # clips within the duration limit, cut by a tiny hop into more windows than a request may make
            (post("/v1/models/ast/tag", files=[("audio", ("1s.wav", one_second.getvalue()))],
                  data={"window_hop": "0.01"}), 413, "too_many_windows"),
            (post("/v1/models/vit/classify", content=gzip.compress(b"\0" * 1_000_000),
                  headers={**JSON, "content-encoding": "gzip"}), 413, "body_too_large"),  # a small gzip bomb
            (post("/v1/models/vit/classify", content=b"{}", headers={**JSON, "content-encoding": "br"}), 415,
             "unsupported_encoding"),
            (post("/v1/models/ast/tag", files=[("audio", ("1s.wav", one_second.getvalue()))],
                  data={"timeout_ms": "1"}), 408, "timeout"),
        ]
        for response, status, code in cases:
            assert response.status_code == status, (status, code, response.text)
            assert response.json()["error"]["code"] == code, response.text
        # a client that announces a body and stalls gets 408 after body_timeout_s
        with socket.create_connection(("127.0.0.1", int(url.rsplit(":", 1)[1])), timeout=10) as conn:
            conn.sendall(b"POST /v1/models/vit/classify HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json"
                         b"\r\nContent-Length: 100\r\n\r\n{\"images\":")
            reply = b""
            while b"}}" not in reply and (chunk := conn.recv(4096)):
                reply += chunk
            reply = reply.decode()
        assert reply.startswith("HTTP/1.1 408") and '"body_timeout"' in reply
        assert httpx.get(f"{url}/healthz").status_code == 200
        # a compressed body is read as the plain one
        plain = post("/v1/models/vit/classify", json={"images": [b64(IMAGES[0])]}).json()["results"]
        packed = gzip.compress(json.dumps({"images": [b64(IMAGES[0])]}).encode())
        assert post("/v1/models/vit/classify", content=packed,
                    headers={**JSON, "content-encoding": "gzip"}).json()["results"] == plain
        # gzip members one after another are one body (RFC 1952); bytes after the data are refused
        text = json.dumps({"images": [b64(IMAGES[0])]}).encode()
        members = gzip.compress(text[:10]) + gzip.compress(text[10:])
        assert post("/v1/models/vit/classify", content=members,
                    headers={**JSON, "content-encoding": "gzip"}).json()["results"] == plain
        junk = post("/v1/models/vit/classify", content=packed + b"trailing junk", headers={**JSON, "content-encoding": "gzip"})
        assert junk.status_code == 400 and "after its compressed data" in junk.json()["error"]["message"]


def test_a_slow_upload_gets_408_within_the_request_time_limit(vit_artifact):
    """--timeout-s bounds the upload too: the body's own 30 s did, whatever the request's limit."""
    app = create_app({"vit": vlmedge.load(vit_artifact, backend="onnxruntime")},
                     limits=Limits(request_timeout_s=0.5), warm_up=False)
    with running(app) as url, socket.create_connection(("127.0.0.1", int(url.rsplit(":", 1)[1])), timeout=10) as conn:
        started = time.monotonic()
        conn.sendall(b"POST /v1/models/vit/classify HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json"
                     b"\r\nContent-Length: 100\r\n\r\n{\"images\":")
        reply = b""
        while b"}}" not in reply and (chunk := conn.recv(4096)):
            reply += chunk
        assert time.monotonic() - started < 9
    assert reply.decode().startswith("HTTP/1.1 408") and "within 0.5 s of the request" in reply.decode()


JSON = {"content-type": "application/json"}


def png_header(width: int, height: int) -> bytes:
    """A PNG that declares this size and holds no pixels: enough for a header check."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", b"") + chunk(b"IEND", b""))


def test_server_settings_are_checked_before_serving(vit_artifact):
    from vlmedge.errors import UsageError
    from vlmedge.preprocess.image import MAX_IMAGE_PIXELS
    from vlmedge.serve.app import named_artifacts
    from vlmedge.serve.command import bind

    with pytest.raises(UsageError, match="letters, digits"):
        named_artifacts([f"a/b={vit_artifact}"])  # a name no URL can reach
    with pytest.raises(UsageError, match=f"from 1 to {MAX_IMAGE_PIXELS:,}"):
        Limits(max_image_pixels=MAX_IMAGE_PIXELS + 1)  # more than the decoder takes
    with pytest.raises(vlmedge.VlmedgeError, match="--host"):
        bind("999.1.1.1", 0)


def _cli_server(*args: str) -> tuple[subprocess.Popen, str]:
    """`vlmedge serve ARGS --port 0` in a process of its own, and its URL once it prints it."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "vlmedge", "serve", *args, "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    url = None
    deadline = time.monotonic() + 90
    lines = []
    while url is None and time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if line.startswith("serving "):
            url = line.split(" on ", 1)[1].split()[0]
    if not (url and url.startswith("http://127.0.0.1:")):
        proc.kill()
        pytest.fail("".join(lines) + proc.communicate()[0])
    return proc, url


def test_cli_serve_runs_and_stops(vit_artifact):
    proc, url = _cli_server(str(vit_artifact), f"shapes={vit_artifact}", "--max-batch", "4")
    try:
        wait_for(lambda: httpx.get(f"{url}/readyz").status_code == 200, timeout=60, what="readiness")
        names = [m["name"] for m in httpx.get(f"{url}/v1/models").json()["models"]]
        assert names == ["shapes", "vit"]
        r = httpx.post(f"{url}/v1/models/shapes/classify", files=files("images", IMAGES[:1]))
        assert r.status_code == 200 and len(r.json()["results"][0]["predictions"]) == 5
    finally:
        proc.terminate()
        rest, _ = proc.communicate(timeout=30)
    # uvicorn shuts down cleanly, then re-raises SIGTERM so the exit status tells why it stopped
    assert proc.returncode in (0, -signal.SIGTERM)
    assert "Application shutdown complete" in rest, rest


def _answers(connection: socket.socket) -> bytes:
    """What the server sends until it closes the connection."""
    connection.settimeout(10)
    received = b""
    while chunk := connection.recv(65536):
        received += chunk
    connection.close()
    return received


def test_a_connection_that_sends_no_request_head_within_the_timeout_is_closed(vit_artifact):
    """uvicorn times out only idle keep-alive connections, and data cancels that: a client that
    connected and sent nothing, or its headers a byte at a time (slowloris), before its first
    request or after an answer on a kept-alive connection, held its connection for ever. A
    request's head must now arrive within --timeout-s of the connection or of the answer before
    it, and take at most 1 MiB (the parser took time growing with the square of a long header,
    stalling every client); a request answered before its body was read (408, 413) closes its
    connection, which a client dripping the rest held."""
    proc, url = _cli_server(str(vit_artifact), "--timeout-s", "1", "--max-body-mb", "1")
    host, port = url.removeprefix("http://").split(":")
    connect = lambda: socket.create_connection((host, int(port)))  # noqa: E731
    try:
        wait_for(lambda: httpx.get(f"{url}/readyz").status_code == 200, timeout=60, what="readiness")
        silent, slow, second = connect(), connect(), connect()
        second.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        started = time.monotonic()
        for part in (b"GET /healthz HTTP/1.1\r\n", b"Host: x\r\n"):
            for held in (slow, second):
                held.sendall(part)
            time.sleep(0.3)
        assert _answers(silent) == b"" and _answers(slow) == b""  # closed by the server, without an answer
        assert _answers(second).count(b"HTTP/1.1 200") == 1  # the first request's answer, then closed
        assert time.monotonic() - started < 5
        huge = connect()
        try:  # closed with the rest unread: the 431 arrives, or the kernel resets the connection first
            huge.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (2 << 20) + b"\r\n\r\n")
            answer = _answers(huge)
        except (ConnectionResetError, BrokenPipeError):
            answer = b"HTTP/1.1 431 reset"
            huge.close()
        assert answer.startswith(b"HTTP/1.1 431 "), answer[:200]
        for head in (b"POST /v1/models/vit/classify HTTP/1.1\r\nHost: x\r\nContent-Length: 5000000\r\n\r\n",
                     b"POST /v1/models/vit/classify HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\nabc"):
            dripping = connect()
            dripping.sendall(head)  # 413 at once, 408 after 1 s: then closed, the rest of the body unread
            status = _answers(dripping).split(b"\r\n", 1)[0]
            assert status in (b"HTTP/1.1 413 Request Entity Too Large", b"HTTP/1.1 408 Request Timeout"), status
        with httpx.Client() as client:  # a request whose head comes at once is answered, on one connection
            assert [client.get(f"{url}/healthz").status_code for _ in range(2)] == [200, 200]
            # a body left unread by an early answer (405) is not the next request's head (it got a 431)
            assert client.post(f"{url}/healthz", content=bytes(3 << 20)).status_code == 405
            assert client.get(f"{url}/v1/models").status_code == 200
        pipelined = connect()  # a huge head behind a request in flight is refused too, before it is parsed
        try:
            pipelined.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n" + b"GET /healthz HTTP/1.1\r\nHost: x\r\n"
                              b"X-Big: " + b"a" * (3 << 20) + b"\r\n\r\n")
            answer = _answers(pipelined)
        except (ConnectionResetError, BrokenPipeError):
            answer, _ = b"", pipelined.close()
        assert answer.count(b"HTTP/1.1 200") <= 1, answer[:300]
    finally:
        proc.terminate()
        proc.communicate(timeout=30)


def test_requests_running_when_the_shutdown_grace_ends_are_answered_503_json(artifacts):
    """On SIGTERM requests in flight have --shutdown-grace-s to finish; those still running
    then get a JSON 503 saying the server is shutting down, not a bare 500."""
    import soundfile as sf

    clip = io.BytesIO()  # a small body that takes seconds to tag: ~3000 windows a clip
    sf.write(clip, 0.1 * np.random.default_rng(0).standard_normal(16000 * 30), 16000, format="WAV", subtype="PCM_16")
    proc, url = _cli_server(str(artifacts["ast"]), "--max-batch", "1", "--shutdown-grace-s", "0")
    try:
        wait_for(lambda: httpx.get(f"{url}/readyz").status_code == 200, timeout=60, what="readiness")
        with ThreadPoolExecutor(3) as pool:
            sent = [pool.submit(httpx.post, f"{url}/v1/models/ast/tag", files=[("audio", ("a.wav", clip.getvalue()))] * 2,
                                data={"window_hop": "0.01"}, timeout=120) for _ in range(3)]
            wait_for(lambda: metric(httpx.get(f"{url}/metrics").text, "vlmedge_requests_in_flight") >= 3,
                     what="three requests in flight")
            # their bodies read: a server stopping while a client still uploads cannot be sure it reads the answer
            time.sleep(1.0)
            proc.terminate()
            answers = [f.result() for f in sent]
    finally:
        proc.terminate()
        rest, _ = proc.communicate(timeout=60)
    assert "Traceback" not in rest, rest
    codes = [(a.status_code, a.json()["error"]["code"] if a.status_code != 200 else "") for a in answers]
    assert set(codes) <= {(200, ""), (503, "shutting_down")} and (503, "shutting_down") in codes, codes
    assert all(a.headers["retry-after"] for a in answers if a.status_code == 503)


def test_cli_serve_errors_are_one_sentence(tmp_path):
    result = subprocess.run([sys.executable, "-m", "vlmedge", "serve", str(tmp_path / "missing")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1 and "Traceback" not in result.stderr and "error" in result.stderr


def test_a_blip2_model_refuses_image_embeddings_and_serves_the_rest(tmp_path):
    """BLIP-2 retrieval represents an image by several vectors scored by their best match with
    a caption, so no single embedding stands for it: the embed route refuses images in one
    sentence (rather than nested vectors), as bulk inference does, and still embeds captions and
    ranks images zero-shot as the Python API does."""
    pytest.importorskip("torch")
    from tests.clip_models import tiny_two_tower_folder
    from vlmedge.serve import create_app

    vlmedge.export(str(tiny_two_tower_folder("blip2-itr", tmp_path)), tmp_path / "artifact")
    blip2 = vlmedge.load(tmp_path / "artifact", backend="onnxruntime")
    with running(create_app({"blip2": blip2})) as url:
        r = httpx.post(f"{url}/v1/models/blip2/embed", json={"images": [b64(IMAGES[0])]})
        assert r.status_code == 422 and "several vectors" in r.json()["error"]["message"], r.text
        r = httpx.post(f"{url}/v1/models/blip2/embed", json={"texts": ["a red circle"]})
        assert r.status_code == 200, r.text
        np.testing.assert_allclose(r.json()["embeddings"], blip2.embed_texts(["a red circle"]), atol=ATOL)
        labels = ["circle", "square", "star"]
        r = httpx.post(f"{url}/v1/models/blip2/zero-shot", json={"images": [b64(IMAGES[0])], "labels": labels})
        assert r.status_code == 200, r.text
        assert_ranked(r.json()["results"][0]["predictions"], blip2.zero_shot(IMAGES[0], labels, top_k=3))
    from vlmedge.bulk.job import make_job
    from vlmedge.errors import InputError

    with pytest.raises(InputError, match="several vectors"):  # `vlmedge embed` / bulk: refused before any work
        make_job(tmp_path / "artifact", "embed")
    assert make_job(tmp_path / "artifact", "embed_texts").method == "embed_texts"
