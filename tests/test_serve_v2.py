"""Open Inference Protocol v2 (KServe V2 / Triton HTTP) beside the /v1 routes, driven by
Triton's own client (tritonclient.http) against a live server on 127.0.0.1: health and
metadata, task-level BYTES inputs (files, captions, labels) and the artifacts' own graph
inputs, as JSON and as binary tensor data; every answer equals the Python API's answer for
the same input; bad requests are {"error": ...} with the right status, and the server keeps
serving. KServe's own SDK drives the same routes in test_serve_kserve.py."""

from __future__ import annotations

import base64
import json
import struct
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")
httpclient = pytest.importorskip("tritonclient.http", reason="needs tritonclient[http] (the test extra)")
from tritonclient.utils import InferenceServerException  # noqa: E402

from tests.serve_support import AUDIO, IMAGES, metric, running, serve_artifact, wait_for  # noqa: E402
from vlmedge.serve import BatchConfig, Limits, create_app  # noqa: E402
from vlmedge.tasks import load  # noqa: E402

PROB_ATOL = 1e-6
LIMIT = 2_000_000


@pytest.fixture(scope="module")
def pipelines(vit_artifact, tmp_path_factory):
    paths = {"vit": vit_artifact, **{k: serve_artifact(k, tmp_path_factory) for k in ("dino", "clip", "ast")}}
    return {name: load(path, backend="onnxruntime") for name, path in paths.items()}


@pytest.fixture(scope="module")
def server(pipelines):
    served = {name: load(p.model.artifact.root, backend="onnxruntime") for name, p in pipelines.items()}
    app = create_app(served, BatchConfig(max_batch=8, max_delay_ms=5), Limits(max_body_bytes=LIMIT))
    with running(app) as url:
        yield url


@pytest.fixture(scope="module")
def client(server):
    c = httpclient.InferenceServerClient(url=server.removeprefix("http://"), network_timeout=60)
    yield c
    c.close()


def bytes_input(name: str, items: list[bytes], binary: bool = True):
    tensor = httpclient.InferInput(name, [len(items)], "BYTES")
    tensor.set_data_from_numpy(np.array(items, dtype=object), binary_data=binary)
    return tensor


def array_input(name: str, array: np.ndarray, binary: bool = True):
    datatype = {np.float32: "FP32", np.float64: "FP64", np.int64: "INT64", np.int32: "INT32"}[array.dtype.type]
    tensor = httpclient.InferInput(name, list(array.shape), datatype)
    tensor.set_data_from_numpy(array, binary_data=binary)
    return tensor


def b64(path) -> bytes:
    return base64.b64encode(path.read_bytes())


def assert_ranked(result, expected: list[list]) -> None:
    labels = result.as_numpy("labels")
    assert [[x.decode() for x in row] for row in labels] == [[p.label for p in row] for row in expected]
    assert result.as_numpy("indices").tolist() == [[p.index for p in row] for row in expected]
    np.testing.assert_allclose(result.as_numpy("scores"), [[p.score for p in row] for row in expected],
                               atol=PROB_ATOL, rtol=0)


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def test_health_and_metadata(client, server, pipelines):
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("vit") and client.is_model_ready("clip", "1")
    assert client.get_server_metadata()["name"] == "vlmedge"
    assert "binary_tensor_data" in client.get_server_metadata()["extensions"]
    vit = client.get_model_metadata("vit")
    inputs = {i["name"]: (i["datatype"], i["shape"]) for i in vit["inputs"]}
    assert inputs["image"] == ("BYTES", [-1])
    session = pipelines["vit"].model.sessions["model"]
    graph_input = session.inputs[0]
    assert inputs[graph_input.name][0] == "FP32"
    assert inputs[graph_input.name][1][1:] == list(graph_input.shape[1:])
    assert {"labels", "scores", "indices"} <= {o["name"] for o in vit["outputs"]}
    assert vit["versions"] == ["1"] and vit["parameters"]["labels"] == pipelines["vit"].labels
    clip = client.get_model_metadata("clip", "1")
    assert clip["parameters"]["input_sets"]["task"] == ["image", "text", "labels", "templates"]
    # labels and templates may come as request parameters too, which the metadata says
    assert {"labels", "templates", "top_k", "timeout_ms"} <= set(clip["parameters"]["task_parameters"])
    assert "labels" not in vit["parameters"]["task_parameters"]
    assert clip["parameters"]["input_sets"]["graph:text"] == ["input_ids", "attention_mask"] or \
        set(clip["parameters"]["input_sets"]["graph:text"]) == {"input_ids", "attention_mask"}
    assert httpx.get(f"{server}/v2/models/clip/versions/1/ready").json() == {"name": "clip", "ready": True}


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_task_level_answers_equal_the_python_api(client, pipelines, binary):
    files = [p.read_bytes() if binary else b64(p) for p in IMAGES]
    result = client.infer("vit", [bytes_input("image", files, binary)], parameters={"top_k": 3},
                          request_id="req-1")
    assert result.get_response()["id"] == "req-1" and result.get_response()["model_name"] == "vit"
    assert_ranked(result, pipelines["vit"].classify(IMAGES, top_k=3))

    result = client.infer("dino", [bytes_input("image", files[:2], binary)], parameters={"pooling": "mean"})
    embedding = result.as_numpy("embedding")
    assert embedding.dtype == np.float32
    assert cosines(embedding, pipelines["dino"].embed(IMAGES[:2], pooling="mean")).min() >= 0.999999

    clip = pipelines["clip"]
    captions = ["a red circle", "a yellow star"]
    result = client.infer("clip", [bytes_input("text", [c.encode() for c in captions], binary)])
    assert cosines(result.as_numpy("embedding"), clip.embed_texts(captions)).min() >= 0.999999
    result = client.infer("clip", [bytes_input("image", files[:3], binary)])
    assert cosines(result.as_numpy("embedding"), clip.embed_images(IMAGES[:3])).min() >= 0.999999

    labels = ["circle", "square", "star"]
    expected = clip.zero_shot(IMAGES[:3], labels, top_k=2)
    as_input = client.infer("clip", [bytes_input("image", files[:3], binary),
                                     bytes_input("labels", [label.encode() for label in labels], binary)],
                            parameters={"top_k": 2})
    assert_ranked(as_input, expected)
    as_parameter = client.infer("clip", [bytes_input("image", files[:3], binary)],
                                parameters={"labels": ",".join(labels), "top_k": 2})
    assert_ranked(as_parameter, expected)

    clips = [p.read_bytes() if binary else base64.b64encode(p.read_bytes()) for p in AUDIO]
    result = client.infer("ast", [bytes_input("audio", clips, binary)], parameters={"top_k": 4, "aggregate": "mean"})
    assert_ranked(result, [c.tags for c in pipelines["ast"].tag(AUDIO, top_k=4, aggregate="mean")])


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_tensor_level_inputs_run_the_graph(client, pipelines, binary):
    from vlmedge.preprocess.image import load_image, preprocess_images

    vit = pipelines["vit"]
    session = vit.model.sessions["model"]
    pixels = preprocess_images([load_image(p) for p in IMAGES[:3]], vit.spec)
    result = client.infer("vit", [array_input(session.inputs[0].name, pixels, binary)])
    expected = session.run({session.inputs[0].name: pixels})
    for name, array in expected.items():
        np.testing.assert_allclose(result.as_numpy(name), array, atol=1e-5)
    np.testing.assert_allclose(vit.classify_prepared(pixels, top_k=1)[0][0].score,
                               np.exp(result.as_numpy(session.outputs[0].name)[0]).max()
                               / np.exp(result.as_numpy(session.outputs[0].name)[0]).sum(), atol=PROB_ATOL)

    clip = pipelines["clip"]
    tokens = clip.tokenizer.encode(["a red circle", "a cross"])
    text = clip.model.sessions["text"]
    requested = [httpclient.InferRequestedOutput(text.outputs[0].name, binary_data=binary)]
    result = client.infer("clip", [array_input(n, tokens[n], binary) for n in ("input_ids", "attention_mask")],
                          outputs=requested)
    assert [o["name"] for o in result.get_response()["outputs"]] == [text.outputs[0].name]
    np.testing.assert_allclose(result.as_numpy(text.outputs[0].name), text.run(tokens)[text.outputs[0].name],
                               atol=1e-5)


def test_requested_outputs_mix_json_and_binary(client, pipelines):
    outputs = [httpclient.InferRequestedOutput("scores", binary_data=False),
               httpclient.InferRequestedOutput("labels", binary_data=True)]
    result = client.infer("vit", [bytes_input("image", [IMAGES[0].read_bytes()])], outputs=outputs,
                          parameters={"top_k": 2})
    response = result.get_response()
    assert [o["name"] for o in response["outputs"]] == ["scores", "labels"]
    assert "data" in response["outputs"][0] and response["outputs"][1]["parameters"]["binary_data_size"] > 0
    assert result.as_numpy("indices") is None
    expected = pipelines["vit"].classify(IMAGES[0], top_k=2)
    assert [x.decode() for x in result.as_numpy("labels")[0]] == [p.label for p in expected]



def test_requested_outputs_each_once_and_an_empty_list_asks_for_all(server):
    image = {"name": "image", "datatype": "BYTES", "shape": [1], "data": [b64(IMAGES[0]).decode()]}
    twice = _raw(server, "vit", {"inputs": [image], "outputs": [{"name": "labels"}, {"name": "labels"}]})
    assert twice.status_code == 400 and "asks for 'labels' again" in twice.json()["error"]
    every = _raw(server, "vit", {"inputs": [image], "outputs": []})
    assert every.status_code == 200 and [o["name"] for o in every.json()["outputs"]] == ["labels", "scores", "indices"]


def _raw(server: str, model: str, head: dict, binary: bytes = b"", header_length: int | None = None,
         path: str = "infer") -> httpx.Response:
    body = json.dumps(head).encode()
    given = binary or header_length is not None
    headers = {"Inference-Header-Content-Length": str(len(body) if header_length is None else header_length)} if given \
        else {}
    return httpx.post(f"{server}/v2/models/{model}/{path}", content=body + binary, headers=headers, timeout=30)


def test_bad_requests_are_clear_errors_and_the_server_keeps_serving(client, server, pipelines):
    session = pipelines["vit"].model.sessions["model"]
    name, shape = session.inputs[0].name, [d if isinstance(d, int) else 1 for d in session.inputs[0].shape]
    good = np.zeros(shape, np.float32)

    def refused(status: str, *words: str, **kwargs) -> None:
        with pytest.raises(InferenceServerException) as caught:
            client.infer(**kwargs)
        assert caught.value.status() == status, caught.value
        message = caught.value.message()
        assert all(w in message for w in words) and "Traceback" not in message, message

    refused("400", name, "FP32", "FP64", model_name="vit", inputs=[array_input(name, good.astype(np.float64))])
    refused("400", name, "is FP32", "not BYTES", model_name="vit", inputs=[bytes_input(name, [b"\x00" * 4])])
    refused("400", "image", "shape [1, 1]", "shape [N]", model_name="vit",
            inputs=[bytes_input("image", [IMAGES[0].read_bytes()]).set_shape([1, 1])])
    wrong = np.zeros([shape[0], shape[1] + 1] + shape[2:], np.float32)
    refused("400", name, "shape", model_name="vit", inputs=[array_input(name, wrong)])
    refused("404", "nope", model_name="nope", inputs=[array_input(name, good)])
    refused("404", "version", model_name="vit", model_version="7", inputs=[array_input(name, good)])
    refused("400", "image[0]", "not a readable image", model_name="vit",  # named as this request names it
            inputs=[bytes_input("image", [b"not an image at all"])])
    refused("400", "BYTES", model_name="vit", inputs=[array_input("image", np.zeros(3, np.float32))])
    refused("400", "top_k", model_name="vit", inputs=[bytes_input("image", [IMAGES[0].read_bytes()])],
            parameters={"top_k": 0})
    refused("400", "Unknown parameter", model_name="vit", inputs=[bytes_input("image", [IMAGES[0].read_bytes()])],
            parameters={"colour": "red"})
    refused("400", "zero-shot", "image", model_name="clip", inputs=[bytes_input("labels", [b"cat"])])  # no image
    # raw token ids: outside the vocabulary OpenVINO's gather answered garbage (ONNX Runtime: an internal error),
    # past the positions both backends failed deep inside; the pipeline's own checks refuse them first
    tokens = pipelines["clip"].tokenizer.encode(["a cross"])
    vocab, length = pipelines["clip"].tokenizer.vocab_size, pipelines["clip"].context_length
    for ids, words in ((np.where(tokens["input_ids"] > 0, vocab, 0), ("outside the tokenizer's", str(vocab - 1))),
                       (np.full_like(tokens["input_ids"], -5), ("outside the tokenizer's",)),
                       (np.zeros((1, length + 1), np.int64), (f"{length + 1} tokens", f"at most {length}"))):
        mask = np.ones_like(ids)
        refused("400", *words, model_name="clip",
                inputs=[array_input("input_ids", ids.astype(np.int64)), array_input("attention_mask", mask)])
    # inputs that share an axis disagree on it, or leave it empty: one sentence, not the backend's internals
    for ids, mask, words in ((tokens["input_ids"][:, :3], tokens["attention_mask"][:, :4],
                              ("'attention_mask' has 4 on its 'sequence' axis (1), but input 'input_ids' has 3",)),
                             (tokens["input_ids"][:, :0], tokens["attention_mask"][:, :0],
                              ("'input_ids' is empty on its 'sequence' axis (1)",))):
        refused("400", *words, model_name="clip", inputs=[array_input("input_ids", ids.astype(np.int64)),
                                                          array_input("attention_mask", mask.astype(np.int64))])
    refused("400", "Unknown parameter 'labels'", model_name="vit", inputs=[bytes_input("image", [IMAGES[0].read_bytes()])],
            parameters={"labels": "cat,dog"})
    refused("400", "takes the inputs {image} or {" + name, model_name="vit",
            inputs=[array_input("pixels", good)])  # neither the task's inputs nor the graph's
    refused("413", "limit", model_name="vit", inputs=[bytes_input("image", [b"x" * (LIMIT + 10)])])
    # tritonclient reads the message of a V2 error of a route vlmedge does not serve
    with pytest.raises(InferenceServerException) as caught:
        client.get_model_config("vit")
    assert caught.value.status() == "404" and "No route" in str(caught.value)

    # raw requests a client library would never send
    head = {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1],
                        "parameters": {"binary_data_size": 5000}}]}
    many = [base64.b64encode(path.read_bytes()).decode() for path in IMAGES] * 4
    image_tensor = {"name": "image", "datatype": "BYTES", "shape": [len(many)], "data": many}
    cases = [
        (_raw(server, "vit", head, binary=b"\x00" * 10), 400, "cut short"),  # binary data cut short
        (_raw(server, "vit", {"inputs": []}), 400, "inputs"),  # missing input
        (_raw(server, "vit", {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [2], "data": ["aGk="]}]}),
         400, "2 elements"),
        (_raw(server, "vit", {"inputs": [{"name": name, "datatype": "FP32", "shape": [1]}]}), 400, "neither"),
        (_raw(server, "vit", {"inputs": [{"name": "image", "datatype": "STRING", "shape": [1], "data": ["x"]}]}),
         400, "datatype"),
        (httpx.post(f"{server}/v2/models/vit/infer", content=b'{"inputs": [', timeout=30), 400, "JSON"),
        (httpx.post(f"{server}/v2/models/vit/infer", content=b'{"id": ' + b"1" * 5000 + b', "inputs": []}', timeout=30),
         400, "not valid JSON"),  # an integer longer than Python converts: it was a 500
        # binary data after the JSON without the header that says where the JSON ends
        (httpx.post(f"{server}/v2/models/vit/infer", content=json.dumps(head).encode() + b"\xf6\x00\x01", timeout=30),
         400, "needs the Inference-Header-Content-Length header"),
        (_raw(server, "vit", {"inputs": [{"name": "x"}]}, header_length=99999), 400, "cut short"),
        (_raw(server, "vit", {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [10 ** 12],
                                          "parameters": {"binary_data_size": 8}}]}, binary=b"\x00" * 8), 400,
         "fewer BYTES elements"),  # a huge shape with a small body: refused before anything is allocated
        (httpx.get(f"{server}/v2/models/nope"), 404, "nope"),
        (httpx.get(f"{server}/v2/models/vit/versions/2/ready"), 404, "version"),
        # routes vlmedge does not have, and wrong methods, answer in V2's error form too
        (httpx.get(f"{server}/v2/models/vit/config"), 404, "No route"),
        (httpx.get(f"{server}/v2/models/vit/infer"), 405, "GET is not allowed"),
        # a graph input of the wrong rank is named as such, not counted as rows
        (_raw(server, "vit", {"inputs": [{"name": name, "datatype": "FP32", "shape": [3 * 32 * 32],
                                          "data": [0.0] * (3 * 32 * 32)}]}), 400, "4 dimensions"),
        (_raw(server, "vit", {"inputs": [{"name": "x"}]}, header_length=0), 400, "at least 1, not 0"),
        (httpx.post(f"{server}/v2/models/vit/infer", content=b"{}", headers={"content-encoding": "br"}), 415,
         "Content-Encoding br"),
        # the request's own limit (timeout_ms wins over Triton's microseconds) bounds its decoding, as the queue
        (_raw(server, "vit", {"inputs": [image_tensor], "parameters": {"timeout": 10 ** 9, "timeout_ms": 1}}), 408,
         "within its time limit of 0.001 s"),
        (_raw(server, "vit", {"inputs": [image_tensor], "parameters": {"timeout": 0}}), 400,
         "'timeout' must be a positive number of microseconds"),
        (_raw(server, "vit", {"inputs": [image_tensor], "parameters": {"timeout": 1.5}}), 408,
         "within its time limit of 0.001 s"),  # a JSON number with a fraction: whole milliseconds, rounded up
        (_raw(server, "vit", {"inputs": [image_tensor], "parameters": {"timeout_ms": "soon"}}), 400,
         "'timeout_ms' must be an integer"),
        # an empty tensor too wide for numpy to shape (it was a 500)
        (_raw(server, "vit", {"inputs": [{"name": name, "datatype": "FP32", "shape": [0, 10 ** 12, 10 ** 12],
                                          "parameters": {"binary_data_size": 0}}]}, binary=b""), 400,
         "more elements than any request can hold"),
        # Triton's classification extension is refused by name, not ignored
        (_raw(server, "vit", {"inputs": [image_tensor], "outputs": [{"name": "labels", "parameters": {"class_count": 3}}]}),
         400, "classification extension"),
        # no labels is not a zero-shot request quietly answered with embeddings
        (_raw(server, "clip", {"inputs": [image_tensor], "parameters": {"labels": " , "}}), 400, "holds no labels"),
        (_raw(server, "clip", {"inputs": [image_tensor, {"name": "labels", "datatype": "BYTES", "shape": [0],
                                                         "data": []}]}), 400, "holds no labels"),
        (_raw(server, "clip", {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["a cat"]}],
                               "parameters": {"labels": "cat,dog"}}), 400, "cannot take labels and text"),
    ]
    for response, status, words in cases:
        assert response.status_code == status, (words, response.text)
        assert set(response.json()) == {"error"} and words in response.json()["error"], response.text
    # a graph-level request takes timeout_ms, as the README says
    graph_tensor = {"name": name, "datatype": "FP32", "shape": shape, "data": [0.0] * int(np.prod(shape))}
    assert _raw(server, "vit", {"inputs": [graph_tensor], "parameters": {"timeout_ms": 30000}}).status_code == 200
    # outputs JSON cannot carry are refused with the way out; as binary data they are answered
    huge = {**graph_tensor, "data": [3e38] * int(np.prod(shape))}
    nan = _raw(server, "vit", {"inputs": [huge]})  # the test model makes NaN logits of such pixels
    assert nan.status_code == 400 and "binary_data: true" in nan.json()["error"], nan.text
    assert _raw(server, "vit", {"inputs": [huge], "parameters": {"binary_data_output": True}}).status_code == 200
    # still serving
    assert client.is_server_live() and client.is_model_ready("vit")
    result = client.infer("vit", [bytes_input("image", [IMAGES[1].read_bytes()])])
    assert result.as_numpy("labels").shape == (1, 5)
    text = httpx.get(f"{server}/metrics").text
    assert metric(text, "vlmedge_requests_total", model="vit", endpoint="v2-infer", code="200") >= 1
    assert metric(text, "vlmedge_requests_total", model="vit", endpoint="v2-infer", code="400") >= 1


class Gated:
    """A classifier whose batches wait for a gate (only the batch thread waits)."""

    def __init__(self, inner) -> None:
        self.inner, self.gate, self.calls = inner, threading.Event(), []

    def __getattr__(self, name):
        if name == "inner":  # not set yet: a copy being made (the server serves a copy)
            raise AttributeError(name)
        return getattr(self.inner, name)

    def classify_prepared(self, pixels, top_k=5):
        self.calls.append(len(pixels))
        assert self.gate.wait(30)
        return self.inner.classify_prepared(pixels, top_k=top_k)


def test_a_draining_server_is_not_ready_on_any_route(vit_artifact):
    """Behind Ray Serve the app drains itself (ServerState.drain): every readiness route says
    503 meanwhile, or a KServe probe keeps sending traffic that is refused."""
    app = create_app({"vit": load(vit_artifact, backend="onnxruntime")}, BatchConfig(), warm_up=False)
    state = app.state.vlmedge
    with running(app) as url:
        routes = ("/readyz", "/v2/health/ready", "/v2/models/vit/ready", "/v2/models/vit/versions/1/ready")
        wait_for(lambda: httpx.get(f"{url}/readyz").status_code == 200, what="readiness")
        assert [httpx.get(url + r).status_code for r in routes] == [200] * 4
        state.draining = True
        assert [httpx.get(url + r).status_code for r in routes] == [503] * 4
        assert httpx.get(f"{url}/v2/health/live").status_code == 200


def test_v2_requests_share_batches_and_back_pressure(vit_artifact):
    gated = Gated(load(vit_artifact, backend="onnxruntime"))
    app = create_app({"vit": gated}, BatchConfig(max_batch=8, max_delay_ms=5, max_queue=2), warm_up=False)
    batcher = app.state.vlmedge.batchers["vit"]
    body = {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": [b64(IMAGES[0]).decode()]}]}
    with running(app) as url, ThreadPoolExecutor(4) as pool:
        post = lambda: httpx.post(f"{url}/v2/models/vit/infer", json=body, timeout=60)  # noqa: E731
        first = pool.submit(post)
        wait_for(lambda: len(gated.calls) == 1, what="the first batch to start")
        queued = [pool.submit(post) for _ in range(2)]
        wait_for(lambda: batcher.depth == 2, what="two requests to queue")
        refused = post()
        gated.gate.set()
        answers = [first.result()] + [f.result() for f in queued]
    assert refused.status_code == 503 and int(refused.headers["Retry-After"]) >= 1
    assert "--max-queue 2" in refused.json()["error"]
    assert [a.status_code for a in answers] == [200, 200, 200]
    assert gated.calls == [1, 2]  # the two queued V2 requests ran as one model call
    expected = gated.inner.classify(IMAGES[0], top_k=5)
    scores = answers[2].json()["outputs"]
    assert [o["name"] for o in scores] == ["labels", "scores", "indices"]
    np.testing.assert_allclose(scores[1]["data"], [p.score for p in expected], atol=PROB_ATOL)


@pytest.mark.parametrize("algorithm", ["gzip", "deflate"])
def test_compressed_requests_are_read(client, pipelines, algorithm):
    """tritonclient compresses a request body when asked to (Content-Encoding); the answer
    is the one of the same request sent plain."""
    image = IMAGES[0].read_bytes()
    result = client.infer("vit", [bytes_input("image", [image])], request_compression_algorithm=algorithm)
    assert_ranked(result, pipelines["vit"].classify([image]))


def test_binary_bytes_elements_are_length_prefixed(server, pipelines):
    """The binary extension's BYTES layout, written by hand (4-byte little-endian lengths)."""
    image = IMAGES[2].read_bytes()
    blob = struct.pack("<I", len(image)) + image
    head = {"id": "hand-made", "inputs": [{"name": "image", "datatype": "BYTES", "shape": [1],
                                           "parameters": {"binary_data_size": len(blob)}}],
            "parameters": {"top_k": 1}}
    response = _raw(server, "vit", head, binary=blob)
    assert response.status_code == 200 and response.headers["content-type"] == "application/json"
    answer = response.json()
    assert answer["id"] == "hand-made" and answer["model_version"] == "1"
    expected = pipelines["vit"].classify(IMAGES[2], top_k=1)[0]
    outputs = {o["name"]: o for o in answer["outputs"]}
    assert outputs["labels"]["data"] == [expected.label] and outputs["labels"]["shape"] == [1, 1]
    assert abs(outputs["scores"]["data"][0] - expected.score) <= PROB_ATOL
