"""OpenAI-compatible POST /v1/embeddings, driven by OpenAI's own Python client
(`openai.OpenAI(base_url=...).embeddings.create`) against a live server on 127.0.0.1:
CLIP captions and images (data URLs) and image-encoder images (base64) embed as the
Python API embeds them, in float and base64 encodings, with the usage block; bad requests
are OpenAI error objects with the right status, and the server keeps serving."""

from __future__ import annotations

import base64

import numpy as np
import pytest

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")
openai = pytest.importorskip("openai", reason="needs the openai client (the test extra)")

from tests.serve_support import IMAGES, metric, running, serve_artifact  # noqa: E402
from vlmedge.serve import Limits, create_app  # noqa: E402
from vlmedge.tasks import load  # noqa: E402

LIMIT = 2_000_000


@pytest.fixture(scope="module")
def pipelines(vit_artifact, tmp_path_factory):
    paths = {"vit": vit_artifact, **{k: serve_artifact(k, tmp_path_factory) for k in ("dino", "clip")}}
    return {name: load(path, backend="onnxruntime") for name, path in paths.items()}


@pytest.fixture(scope="module")
def server(pipelines):
    served = {name: load(p.model.artifact.root, backend="onnxruntime") for name, p in pipelines.items()}
    with running(create_app(served, limits=Limits(max_body_bytes=LIMIT, max_inputs=8))) as url:
        yield url


@pytest.fixture(scope="module")
def client(server):
    with openai.OpenAI(base_url=f"{server}/v1", api_key="not-needed", max_retries=0, timeout=60) as c:
        yield c


def data_url(path) -> str:
    kind = "png" if path.suffix.lower() == ".png" else "jpeg"
    return f"data:image/{kind};base64," + base64.b64encode(path.read_bytes()).decode()


def vectors(response) -> np.ndarray:
    """The embeddings; with encoding_format="base64" the client hands the strings over as sent
    (little-endian float32), without it the client asked for base64 and decoded them itself."""
    assert [d.index for d in response.data] == list(range(len(response.data)))
    return np.array([np.frombuffer(base64.b64decode(d.embedding), "<f4") if isinstance(d.embedding, str)
                     else d.embedding for d in response.data], dtype=np.float64)


def assert_same_directions(got: np.ndarray, expected: np.ndarray) -> None:
    expected = np.asarray(expected, np.float64)
    cos = (got * expected).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(expected, axis=1)
    assert got.shape == expected.shape and cos.min() >= 0.999999, cos


@pytest.mark.parametrize("encoding", ["float", "base64", None])
def test_clip_captions_and_images_embed_as_the_python_api(client, pipelines, encoding):
    clip = pipelines["clip"]
    kwargs = {} if encoding is None else {"encoding_format": encoding}
    captions = ["a red circle", "a yellow star", ""]
    response = client.embeddings.create(model="clip", input=captions, **kwargs)
    assert response.model == "clip" and response.object == "list"
    assert_same_directions(vectors(response), clip.embed_texts(captions))
    tokens = int(clip.tokenizer.encode(captions)["attention_mask"].sum())
    assert response.usage.prompt_tokens == response.usage.total_tokens == tokens

    one = client.embeddings.create(model="clip", input="a yellow star", **kwargs)
    assert_same_directions(vectors(one), clip.embed_texts(["a yellow star"]))

    # captions and images in one request, in order: data URLs and {"image": base64} items
    mixed = [data_url(IMAGES[0]), "a red circle", {"image": base64.b64encode(IMAGES[1].read_bytes()).decode()}]
    response = client.embeddings.create(model="clip", input=mixed, **kwargs)
    expected = np.concatenate([clip.embed_images(IMAGES[:1]), clip.embed_texts(["a red circle"]),
                               clip.embed_images(IMAGES[1:2])])
    assert_same_directions(vectors(response), expected)


def test_an_image_encoder_embeds_base64_images(client, pipelines):
    images = [base64.b64encode(p.read_bytes()).decode() for p in IMAGES[:3]]
    response = client.embeddings.create(model="dino", input=images, encoding_format="float")
    assert_same_directions(vectors(response), pipelines["dino"].embed(IMAGES[:3]))
    response = client.embeddings.create(model="dino", input=data_url(IMAGES[3]), encoding_format="base64")
    assert_same_directions(vectors(response), pipelines["dino"].embed(IMAGES[3:4]))
    assert response.usage.prompt_tokens == 0


def test_models_list_names_the_served_models(client):
    assert sorted(m.id for m in client.models.list()) == ["clip", "dino", "vit"]
    model = client.models.retrieve("dino")  # its fields were all None
    assert (model.id, model.object, model.owned_by) == ("dino", "model", "vlmedge")


def test_bad_requests_are_openai_errors(client, server):
    def refused(kind, status: int, words: str, **kwargs) -> None:
        with pytest.raises(kind) as caught:
            client.embeddings.create(**kwargs)
        assert caught.value.status_code == status
        error = caught.value.body
        assert words in error["message"] and error["type"] == "invalid_request_error", error

    refused(openai.NotFoundError, 404, "no model 'nope'", model="nope", input="x")
    refused(openai.BadRequestError, 400, "takes model, input, encoding_format and dimensions (and user, which it "
            "ignores)", model="clip", input="x", extra_body={"colour": "red"})
    refused(openai.BadRequestError, 400, "does not embed", model="vit", input=data_url(IMAGES[0]))
    refused(openai.BadRequestError, 400, "not valid base64", model="dino", input="%%% not base64")
    refused(openai.BadRequestError, 400, "not a readable image", model="dino",
            input=base64.b64encode(b"not an image").decode())
    refused(openai.BadRequestError, 400, "token arrays", model="clip", input=[[1, 2, 3]])
    refused(openai.BadRequestError, 400, "never fetches one", model="clip",
            input=[{"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}])
    refused(openai.BadRequestError, 400, '"image_url": {"url": ...}', model="clip", input=[{"picture": "x"}])
    # the image_url item with the URL alone, as some clients send it, embeds as the object form does
    url_alone = client.embeddings.create(model="clip", input=[{"type": "image_url", "image_url": data_url(IMAGES[0])}])
    as_object = client.embeddings.create(model="clip", input=[{"type": "image_url",
                                                              "image_url": {"url": data_url(IMAGES[0])}}])
    assert url_alone.data[0].embedding == as_object.data[0].embedding
    # a bad item is named by its place in `input`, not in the captions or images it was sorted into
    refused(openai.BadRequestError, 400, "input[2] is not a readable image", model="clip",
            input=["a caption", "another", "data:image/png;base64," + base64.b64encode(b"not an image").decode()])
    refused(openai.BadRequestError, 400, "input[2] has", model="clip", input=[data_url(IMAGES[0]), "short", "x" * 1200])
    refused(openai.BadRequestError, 400, "dimensions", model="clip", input="x", dimensions=3)
    refused(openai.BadRequestError, 400, "limit is 8", model="clip", input=["x"] * 9)
    refused(openai.APIStatusError, 413, "limit", model="clip", input="x" * (LIMIT + 10))
    assert client.embeddings.create(model="clip", input="x", encoding_format="float").data[0].embedding
    bad_json = httpx.post(f"{server}/v1/embeddings", content=b'{"model": "clip", "input": ',
                          headers={"content-type": "application/json"})
    assert bad_json.status_code == 400 and bad_json.json()["error"]["code"] == "invalid_json"
    too_long = httpx.post(f"{server}/v1/embeddings", content=b'{"model": "clip", "input": "x", "dimensions": '
                          + b"9" * 5000 + b"}", headers={"content-type": "application/json"})
    assert too_long.status_code == 400 and too_long.json()["error"]["code"] == "invalid_json"  # it was a 500
    wrong_method = httpx.get(f"{server}/v1/embeddings")  # OpenAI's error shape on every answer of the route
    assert wrong_method.status_code == 405 and set(wrong_method.json()["error"]) == {"message", "type", "param", "code"}
    text = httpx.get(f"{server}/metrics").text
    assert metric(text, "vlmedge_requests_total", model="clip", endpoint="embeddings", code="200") >= 1
    assert metric(text, "vlmedge_requests_total", model="dino", endpoint="embeddings", code="400") >= 1
