"""Issue 11: schemathesis fuzzes every operation of the server's OpenAPI document over HTTP
(schema-valid and schema-invalid requests): no answer is a 5xx, every status code and
content type is one the document declares, and 200 bodies match their schemas. The document
covers vlmedge's /v1 routes, the Open Inference Protocol v2 routes and OpenAI's
/v1/embeddings (issue 18)."""

from __future__ import annotations

import pytest

schemathesis = pytest.importorskip("schemathesis")
pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis.errors import Unsatisfiable  # noqa: E402

import vlmedge  # noqa: E402
from tests.serve_support import running, serve_artifact  # noqa: E402
from vlmedge.serve import BatchConfig, Limits, create_app  # noqa: E402

MAX_EXAMPLES = 12  # per operation and generation mode: ~500 requests, several seconds


def test_fuzzing_the_openapi_schema_finds_no_server_error(vit_artifact, tmp_path_factory):
    from schemathesis import GenerationMode
    from schemathesis.checks import not_a_server_error
    from schemathesis.specs.openapi.checks import (content_type_conformance, negative_data_rejection,
                                                   response_schema_conformance, status_code_conformance)

    paths = {"vit": vit_artifact, **{k: serve_artifact(k, tmp_path_factory) for k in ("dino", "clip", "ast")}}
    pipelines = {name: vlmedge.load(path, backend="onnxruntime") for name, path in paths.items()}
    limits = Limits(max_inputs=4, max_labels=8, max_caption_chars=200, request_timeout_s=20)
    checks = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
    # multipart carries every field as text, so "texts": 5 and "texts": "5" look the same there:
    # schema-invalid data must be refused only where the wire format can tell
    json_checks = checks + [negative_data_rejection]
    with running(create_app(pipelines, BatchConfig(max_batch=8, max_delay_ms=2), limits)) as url:
        schema = schemathesis.openapi.from_dict(httpx.get(f"{url}/openapi.json").json())
        operations = [result.ok() for result in schema.get_all_operations()]
        # /v1: 5 shared + 5 model endpoints; V2: 3 server + 3 x (model, model/versions/1); OpenAI embeddings
        assert len(operations) == 20
        assert {"/v2/models/{model}/infer", "/v2/models/{model}/versions/{version}/ready", "/v1/embeddings"} <= \
            {operation.path for operation in operations}
        for operation in operations:
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
                @settings(max_examples=MAX_EXAMPLES, deadline=None, database=None, derandomize=True,
                          suppress_health_check=list(HealthCheck))
                @given(case=operation.as_strategy(generation_mode=mode))
                def fuzz(case):
                    response = case.call(base_url=url, timeout=30)
                    case.validate_response(response, checks=json_checks if case.media_type == "application/json"
                                           else checks)

                try:
                    fuzz()
                except Unsatisfiable:
                    # an operation without parameters or body has no invalid form (GET /healthz)
                    assert mode == GenerationMode.NEGATIVE and not operation.path_parameters, operation.label
