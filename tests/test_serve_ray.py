"""Item 3: the served models as a Ray Serve application (vlmedge.serve.ray_serve.build):
one deployment per artifact with two replicas on a local Ray, Ray Serve's @serve.batch, the
same routes through Ray Serve's HTTP proxy on 127.0.0.1; every answer equals the
single-process server's answer for the same request."""

from __future__ import annotations

import base64
import socket

import numpy as np
import pytest

pytest.importorskip("starlette")
httpx = pytest.importorskip("httpx")
pytest.importorskip("ray.serve", reason="Ray Serve is not installed (pip install 'vlmedge[ray]')")

from tests.serve_support import IMAGES, running, serve_artifact  # noqa: E402
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
            import time
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


@pytest.mark.parametrize("args, words", [
    (["--engine", "ray", "--port", "0"], "fixed --port"),
    (["--engine", "bogus"], "Unknown engine 'bogus'"),
])
def test_cli_engine_errors_are_one_sentence(vit_artifact, args, words):
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-m", "vlmedge.cli", "serve", str(vit_artifact), *args],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1 and "Traceback" not in result.stderr and words in result.stderr, result.stderr
