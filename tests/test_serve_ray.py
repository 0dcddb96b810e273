"""Item 3: the served models as a Ray Serve application (vlmedge.serve.ray_serve.build):
one deployment per artifact with two replicas on a local Ray, Ray Serve's @serve.batch, the
same routes through Ray Serve's HTTP proxy on 127.0.0.1; every answer equals the
single-process server's answer for the same request. A replica killed under a steady load
costs no wrong and no hung answer: each request is answered as the Python API answers it or
refused with 503 + Retry-After, and Ray Serve replaces the replica."""

from __future__ import annotations

import base64
import socket
import threading
import time

import numpy as np
import pytest

pytest.importorskip("starlette")
httpx = pytest.importorskip("httpx")
pytest.importorskip("ray.serve", reason="Ray Serve is not installed (pip install 'vlmedge[ray]')")

from tests.serve_support import IMAGES, metric, running, serve_artifact  # noqa: E402
from vlmedge.serve import BatchConfig, create_app  # noqa: E402
from vlmedge.tasks import load  # noqa: E402


@pytest.fixture(scope="module")
def paths(vit_artifact, tmp_path_factory):
    return {"vit": vit_artifact, "clip": serve_artifact("clip", tmp_path_factory)}


@pytest.fixture(scope="module")
def ray_serve_url(paths):
    import ray
    from ray import serve

    from vlmedge.serve.ray_serve import build

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        app = build([f"{name}={path}" for name, path in paths.items()], replicas=2, backend="onnxruntime",
                    batch=BatchConfig(max_batch=8, max_delay_ms=5), replica_cpus=0)
        serve.run(app, name="vlmedge", route_prefix="/")
        url = f"http://127.0.0.1:{port}"
        for _ in range(600):
            if httpx.get(f"{url}/readyz", timeout=10).status_code == 200:
                break
            time.sleep(0.1)
        yield url, serve
    finally:
        serve.shutdown()
        ray.shutdown()


@pytest.fixture(scope="module")
def local_url(paths):
    with running(create_app({n: load(p, backend="onnxruntime") for n, p in paths.items()})) as url:
        yield url


def b64(path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def test_two_replicas_answer_as_the_single_process_server(ray_serve_url, local_url):
    url, serve = ray_serve_url
    status = serve.status().applications["vlmedge"].deployments
    for name in ("model-vit", "model-clip"):
        assert status[name].replica_states.get("RUNNING") == 2, status[name]

    def same(path: str, **kwargs) -> dict:
        remote, local = httpx.post(url + path, timeout=60, **kwargs), httpx.post(local_url + path, timeout=60, **kwargs)
        assert remote.status_code == local.status_code == 200, (remote.text, local.text)
        return remote.json(), local.json()

    # /v1: each image on its own request, so that both replicas serve some
    for image in IMAGES:
        remote, local = same("/v1/models/vit/classify", files=[("images", (image.name, image.read_bytes()))])
        assert remote["results"] == local["results"]
    remote, local = same("/v1/models/clip/zero-shot", json={"images": [b64(p) for p in IMAGES[:3]],
                                                            "labels": ["circle", "star", "cross"], "top_k": 3})
    for r, l in zip(remote["results"], local["results"]):
        assert [p["label"] for p in r["predictions"]] == [p["label"] for p in l["predictions"]]
        np.testing.assert_allclose([p["score"] for p in r["predictions"]], [p["score"] for p in l["predictions"]],
                                   atol=1e-6)
    # V2 and the OpenAI embeddings route, through the same proxy
    body = {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [2], "data": [b64(p) for p in IMAGES[:2]]}],
            "parameters": {"top_k": 2}}
    remote, local = same("/v2/models/vit/infer", json=body)
    assert remote["outputs"] == local["outputs"]
    remote, local = same("/v1/embeddings", json={"model": "clip", "input": ["a red circle", "a star"]})
    np.testing.assert_allclose([d["embedding"] for d in remote["data"]], [d["embedding"] for d in local["data"]],
                               atol=1e-6)
    # errors are the same too
    bad = httpx.post(f"{url}/v1/models/vit/classify", json={"images": [base64.b64encode(b"junk").decode()]})
    assert bad.status_code == 422 and bad.json()["error"]["code"] == "invalid_input"
    assert httpx.get(f"{url}/v1/models").json()["models"] == httpx.get(f"{local_url}/v1/models").json()["models"]


def replica_actors(deployment: str) -> list[str]:
    """The live replica actors of a deployment of the "vlmedge" application (Ray Serve names
    them SERVE_REPLICA::<app>#<deployment>#<id> in the "serve" namespace)."""
    import ray

    prefix = f"SERVE_REPLICA::vlmedge#{deployment}#"
    return sorted(a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
                  if a["namespace"] == "serve" and a["name"].startswith(prefix))


@pytest.mark.slow
def test_a_replica_killed_mid_load_costs_no_wrong_or_hung_answer(ray_serve_url, paths):
    import ray

    url, serve = ray_serve_url
    expected = dict(zip((p.name for p in IMAGES), load(paths["vit"], backend="onnxruntime").classify(IMAGES, top_k=3)))
    # every image in each request (in turn first), so that the replicas hold jobs long enough
    # for the kill to catch some
    orders = [[p.name for p in IMAGES[i:] + IMAGES[:i]] for i in range(len(IMAGES))]
    encoded = {p.name: b64(p) for p in IMAGES}
    bodies = [(names, {"images": [encoded[n] for n in names], "top_k": 3}) for names in orders]
    total, threads, kill_after = 240, 4, 60
    counts = {"answered": 0, "refused": 0, "wrong": 0, "other": 0, "hung": 0}
    lock, sent = threading.Lock(), [0]
    others: list[str] = []

    def client() -> None:
        with httpx.Client(timeout=30) as http:
            while True:
                with lock:
                    if sent[0] >= total:
                        return
                    names, body = bodies[sent[0] % len(bodies)]
                    sent[0] += 1
                try:
                    response = http.post(f"{url}/v1/models/vit/classify", json=body)
                except httpx.TimeoutException:
                    outcome = "hung"
                else:
                    if response.status_code == 200:
                        results = response.json()["results"]
                        same = len(results) == len(names) and all(
                            [p["label"] for p in got["predictions"]] == [p.label for p in expected[name]] and all(
                                abs(p["score"] - w.score) <= 1e-6 for p, w in zip(got["predictions"], expected[name]))
                            for got, name in zip(results, names))
                        outcome = "answered" if same else "wrong"
                    elif response.status_code == 503 and int(response.headers.get("Retry-After", "0")) >= 1:
                        outcome = "refused"
                    else:
                        outcome = "other"
                        others.append(f"{response.status_code}: {response.text[:200]}")
                with lock:
                    counts[outcome] += 1

    before = replica_actors("model-vit")
    assert len(before) == 2, before
    workers = [threading.Thread(target=client, daemon=True) for _ in range(threads)]
    started = time.monotonic()
    for worker in workers:
        worker.start()
    while sum(counts.values()) < kill_after and any(w.is_alive() for w in workers):
        time.sleep(0.005)
    victim = before[0]
    ray.kill(ray.get_actor(victim, namespace="serve"), no_restart=True)
    killed_at = sum(counts.values())
    for worker in workers:
        worker.join(120)
    load_s = time.monotonic() - started

    def replaced() -> bool:
        now = replica_actors("model-vit")
        status = serve.status().applications["vlmedge"].deployments["model-vit"]
        return len(now) == 2 and victim not in now and status.replica_states.get("RUNNING") == 2

    deadline = time.monotonic() + 60
    while not replaced():
        assert time.monotonic() < deadline, (replica_actors("model-vit"), serve.status())
        time.sleep(0.2)
    replaced_s = time.monotonic() - started - load_s
    text = httpx.get(f"{url}/metrics", timeout=10).text
    retried = metric(text, "vlmedge_replica_failures_total", model="vit", outcome="retried")
    refused = metric(text, "vlmedge_replica_failures_total", model="vit", outcome="refused")
    print(f"\nkill trial: {total} requests from {threads} threads in {load_s:.1f} s; replica {victim} killed after "
          f"{killed_at} answers; {counts}; jobs retried on the other replica: {retried:g}, refused: {refused:g}; "
          f"replaced {replaced_s:.1f} s after the load ended")
    assert not any(w.is_alive() for w in workers)
    assert counts["wrong"] == counts["hung"] == counts["other"] == 0, (counts, others[:5])
    assert counts["answered"] + counts["refused"] == total and counts["answered"] >= total // 2, counts
    # and the replaced deployment answers
    response = httpx.post(f"{url}/v1/models/vit/classify", json=bodies[0][1], timeout=30)
    assert response.status_code == 200
    assert [[p["label"] for p in r["predictions"]] for r in response.json()["results"]] == \
        [[p.label for p in expected[name]] for name in bodies[0][0]]


@pytest.mark.parametrize("args, words, code", [
    (["--engine", "ray", "--port", "0"], "fixed --port", 1),
    (["--engine", "bogus"], "--engine bogus is not valid; choose one of local, ray", 2),  # usage, before loading
    # the cluster's CPUs are checked before Serve starts (it started, then refused)
    (["--engine", "ray", "--port", "18731", "--replicas", "99"], "lower --replicas or --replica-cpus", 1),
])
def test_cli_engine_errors_are_one_sentence(vit_artifact, args, words, code):
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-m", "vlmedge", "serve", str(vit_artifact), *args],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == code and "Traceback" not in result.stderr and words in result.stderr, result.stderr


def test_a_session_option_the_backend_does_not_take_is_refused_before_any_replica_starts(vit_artifact):
    from vlmedge.errors import UsageError
    from vlmedge.serve.ray_serve import build

    with pytest.raises(UsageError, match=r"onnxruntime backend takes no session option 'performance_hint'"):
        build([str(vit_artifact)], backend="onnxruntime", session_options={"performance_hint": "throughput"})
    with pytest.raises(UsageError, match="replicas must be a whole number of at least 1, not 0"):
        build([str(vit_artifact)], replicas=0)


def test_replicas_the_cluster_has_no_cpus_for_are_refused(vit_artifact):
    """They would wait for CPUs forever, /readyz answering 503, where bulk refuses such a pool."""
    import ray

    from vlmedge.errors import InputError
    from vlmedge.serve.ray_serve import build

    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        cpus = int(ray.cluster_resources()["CPU"])
        with pytest.raises(InputError, match=rf"1 model\(s\) x {cpus + 1} replica\(s\) of 1 CPU\(s\) need {cpus + 1} CPUs, "
                                             rf"but the Ray cluster has {cpus}; lower --replicas or --replica-cpus"):
            build([str(vit_artifact)], replicas=cpus + 1, backend="onnxruntime")
        # fractional replicas fit (the CLI's --replica-cpus): the check passes; nothing is deployed here
        build([str(vit_artifact)], replicas=cpus + 1, backend="onnxruntime", replica_cpus=cpus / (cpus + 1))
    finally:
        if started:
            ray.shutdown()


def test_sigterm_lets_requests_in_flight_finish_on_ray(vit_artifact):
    """`vlmedge serve --engine ray` stopped by SIGTERM drains as the local server does: the
    requests in flight are answered (they were dropped, and the process aborted), new ones get
    503 shutting_down, and the process ends."""
    import signal
    import subprocess
    import sys
    from concurrent.futures import ThreadPoolExecutor

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    # a batch waits 3 s to fill: requests are in flight when the signal comes
    server = subprocess.Popen([sys.executable, "-m", "vlmedge", "serve", f"vit={vit_artifact}", "--engine", "ray",
                               "--port", str(port), "--backend", "onnxruntime", "--max-batch", "64",
                               "--max-delay-ms", "3000", "--shutdown-grace-s", "30"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for _ in range(1200):
            try:
                if httpx.get(f"{url}/readyz", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert server.poll() is None, server.communicate()
            time.sleep(0.1)
        body = {"images": [b64(IMAGES[0])]}
        with ThreadPoolExecutor(4) as pool:
            answers = [pool.submit(httpx.post, f"{url}/v1/models/vit/classify", json=body, timeout=60) for _ in range(4)]
            for _ in range(100):
                if metric(httpx.get(f"{url}/metrics").text, "vlmedge_requests_in_flight") >= 4:
                    break
                time.sleep(0.05)
            server.send_signal(signal.SIGTERM)
            time.sleep(0.5)
            late = httpx.post(f"{url}/v1/models/vit/classify", json=body, timeout=60)
            assert [a.result().status_code for a in answers] == [200] * 4
        assert late.status_code == 503 and late.json()["error"]["code"] == "shutting_down"
        _, err = server.communicate(timeout=120)
        assert "shutting down: requests in flight have 30 s to finish" in err and "Traceback" not in err, err
    finally:
        if server.poll() is None:
            server.kill()
