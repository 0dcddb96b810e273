"""Open Inference Protocol v2 through KServe's own Python SDK against a live server on
127.0.0.1: its REST client (kserve.InferenceRESTClient, protocol "v2") checks server liveness
and readiness and model readiness, and runs inference with images as BYTES (binary tensor
data and JSON) and CLIP captions and labels; every answer equals the Python API's
(probabilities within 1e-6, the same labels). The REST client has no model-metadata call, so
metadata is read over HTTP and validated with the SDK's own V2 data models
(kserve.protocol.rest.v2_datamodels).

The SDK is installed with --no-deps, its REST client's imports beside it (the README's test
command): its pins (protobuf<7, psutil<6, pandas<3, python-dateutil<3) would downgrade
packages that Ray and ONNX use here, and the client works with the newer ones."""

from __future__ import annotations

import asyncio
import base64

import numpy as np
import pytest

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")
kserve = pytest.importorskip("kserve", reason="needs the kserve SDK and its imports (the README's test command: "
                                              "pip install --no-deps kserve, then cloudevents<2 kubernetes ...)")
from kserve import InferenceRESTClient, InferInput, InferRequest, RESTConfig  # noqa: E402
from kserve.protocol.infer_type import RequestedOutput  # noqa: E402
from kserve.protocol.rest.v2_datamodels import (ModelMetadataResponse, ModelReadyResponse,  # noqa: E402
                                                ServerMetadataResponse)

from tests.serve_support import IMAGES, running, serve_artifact  # noqa: E402
from vlmedge.serve import BatchConfig, create_app  # noqa: E402
from vlmedge.tasks import load  # noqa: E402

PROB_ATOL = 1e-6


@pytest.fixture(scope="module")
def pipelines(vit_artifact, tmp_path_factory):
    paths = {"vit": vit_artifact, "clip": serve_artifact("clip", tmp_path_factory)}
    return {name: load(path, backend="onnxruntime") for name, path in paths.items()}


@pytest.fixture(scope="module")
def server(pipelines):
    served = {name: load(p.model.artifact.root, backend="onnxruntime") for name, p in pipelines.items()}
    with running(create_app(served, BatchConfig(max_batch=8, max_delay_ms=5))) as url:
        yield url


def with_client(work):
    """Runs `work(client)` with a fresh V2 REST client (the SDK's client is asynchronous)."""
    async def go():
        async with InferenceRESTClient(RESTConfig(protocol="v2", timeout=60)) as client:
            return await work(client)

    return asyncio.run(go())


def bytes_input(name: str, items: list[bytes], binary: bool) -> InferInput:
    tensor = InferInput(name, [len(items)], "BYTES")
    tensor.set_data_from_numpy(np.array(items, dtype=object), binary_data=binary)
    return tensor


def texts(output) -> list[list[str]]:
    return [[x.decode() if isinstance(x, bytes) else str(x) for x in row] for row in output.as_numpy()]


def assert_ranked(response, expected: list[list]) -> None:
    labels, indices, scores = (response.get_output_by_name(n) for n in ("labels", "indices", "scores"))
    assert texts(labels) == [[p.label for p in row] for row in expected]
    assert indices.as_numpy().tolist() == [[p.index for p in row] for row in expected]
    np.testing.assert_allclose(scores.as_numpy(), [[p.score for p in row] for row in expected], atol=PROB_ATOL, rtol=0)


def test_health_readiness_and_metadata(server):
    async def work(client):
        return (await client.is_server_live(server), await client.is_server_ready(server),
                await client.is_model_ready(server, "vit"), await client.is_model_ready(server, "nope"))

    assert with_client(work) == (True, True, True, False)
    meta = ServerMetadataResponse.model_validate(httpx.get(f"{server}/v2").json())
    assert meta.name == "vlmedge" and "binary_tensor_data" in meta.extensions
    vit = ModelMetadataResponse.model_validate(httpx.get(f"{server}/v2/models/vit").json())
    assert vit.name == "vit" and vit.versions == ["1"]
    assert ("image", "BYTES", [-1]) in [(t.name, t.datatype, t.shape) for t in vit.inputs]
    assert {"labels", "scores", "indices"} <= {t.name for t in vit.outputs}
    clip = ModelMetadataResponse.model_validate(httpx.get(f"{server}/v2/models/clip/versions/1").json())
    assert {"image", "text", "labels", "templates"} <= {t.name for t in clip.inputs}
    ready = ModelReadyResponse.model_validate(httpx.get(f"{server}/v2/models/clip/ready").json())
    assert ready.ready and ready.name == "clip"


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_images_as_bytes_answer_as_the_python_api(server, pipelines, binary):
    # JSON carries BYTES as UTF-8 strings, so the files go base64 there (as the protocol says)
    files = [p.read_bytes() if binary else base64.b64encode(p.read_bytes()) for p in IMAGES]
    labels = ["circle", "square", "star"]

    async def work(client):
        request = InferRequest(model_name="vit", infer_inputs=[bytes_input("image", files, binary)],
                               request_id="kserve-1", parameters={"top_k": 3, "binary_data_output": binary})
        classified = await client.infer(server, request, model_name="vit")
        zero_shot = await client.infer(server, InferRequest(
            model_name="clip", infer_inputs=[bytes_input("image", files[:3], binary),
                                             bytes_input("labels", [label.encode() for label in labels], binary)],
            parameters={"top_k": 2}, request_outputs=[RequestedOutput("labels"), RequestedOutput(
                "scores", parameters={"binary_data": True}), RequestedOutput("indices")]), model_name="clip")
        return classified, zero_shot

    classified, zero_shot = with_client(work)
    assert classified.id == "kserve-1" and classified.model_name == "vit"
    assert_ranked(classified, pipelines["vit"].classify(IMAGES, top_k=3))
    assert_ranked(zero_shot, pipelines["clip"].zero_shot(IMAGES[:3], labels, top_k=2))


def test_captions_embed_as_the_python_api(server, pipelines):
    captions = ["a red circle", "a yellow star"]

    async def work(client):
        text = bytes_input("text", [c.encode() for c in captions], binary=False)
        return await client.infer(server, InferRequest(model_name="clip", infer_inputs=[text]), model_name="clip")

    got = np.asarray(with_client(work).get_output_by_name("embedding").as_numpy(), np.float64)
    want = np.asarray(pipelines["clip"].embed_texts(captions), np.float64)
    cosines = (got * want).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(want, axis=1)
    assert got.shape == want.shape and cosines.min() >= 0.999999, cosines


def test_errors_reach_the_client_as_their_status_and_message(server):
    async def work(client):
        errors = []
        for model, item in (("nope", IMAGES[0].read_bytes()), ("vit", b"not an image at all")):
            request = InferRequest(model_name=model, infer_inputs=[bytes_input("image", [item], True)])
            try:
                await client.infer(server, request, model_name=model)
                errors.append(None)
            except httpx.HTTPStatusError as exc:
                errors.append(exc)
        return errors

    unknown, unreadable = with_client(work)
    assert unknown is not None and unknown.response.status_code == 404, unknown
    assert "There is no model 'nope'" in str(unknown)
    assert unreadable is not None and unreadable.response.status_code == 400, unreadable
    assert "not a readable image" in str(unreadable)
