"""The OpenAPI description of the protocols' routes (Open Inference Protocol v2 and OpenAI
embeddings), merged into the server's /openapi.json beside the /v1 routes. Each schema
states what the route's parser enforces, so that a request the document calls invalid is
refused (the schema-fuzzing test holds the server to that)."""

from __future__ import annotations

from typing import Any

from vlmedge.serve.config import Limits
from vlmedge.serve.inputs import OPTIONS
from vlmedge.serve.protocols.v2 import PROTOCOL_PARAMETERS, VERSION, parameters_of
from vlmedge.serve.protocols.v2_codec import DATATYPES

V2_TAG, OPENAI_TAG = "Open Inference Protocol v2", "OpenAI-compatible"
REF = "#/components/schemas/"

V2_ERRORS = {
    "400": "A request the model cannot take: not JSON, a wrong datatype or shape, a missing or unknown input "
           "or parameter, an undecodable file, a body cut short.",
    "404": "No such model or version.",
    "408": "No result within the request's timeout (or the body did not arrive in time).",
    "413": "Body, image or audio clip larger than the server's limit.",
    "503": "The model's queue is full (see Retry-After) or the server is not ready.",
}
OPENAI_ERRORS = {
    "400": "Not JSON, an unknown field, a model that does not embed, an input that cannot be read.",
    "404": "No such model.",
    "408": "No result within the server's timeout (or the body did not arrive in time).",
    "413": "Body or image larger than the server's limit.",
    "503": "The model's queue is full (see Retry-After).",
}

TENSOR_META = {"type": "object", "required": ["name", "datatype", "shape"], "properties": {
    "name": {"type": "string"}, "datatype": {"type": "string", "enum": list(DATATYPES)},
    "shape": {"type": "array", "items": {"type": "integer"}, "description": "-1: any size"}}}
# the protocol's own request parameters (Triton's), accepted by every model
PROTOCOL = {"binary_data_output": {"type": "boolean", "description": "Answer every output as binary tensor data."},
            "timeout": {"type": "integer", "minimum": 1, "description": "Microseconds (Triton's); timeout_ms wins."},
            "priority": {"description": "Accepted and ignored."}}
SHAPE = {"type": "array", "maxItems": 8, "items": {"type": "integer", "minimum": 0}}

COMPONENTS: dict[str, Any] = {
    # a path no route matches gets the server's generic error object, not V2's
    "V2Error": {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}},
    "V2Tensor": TENSOR_META,
    "V2RequestInput": {
        "type": "object", "required": ["name", "datatype", "shape"],
        "description": "A task-level input (image, audio: encoded files; text, labels, templates: UTF-8; all BYTES) "
                       "or one of a graph's inputs (the model metadata's parameters.input_sets); 'data' in JSON, "
                       "or parameters.binary_data_size bytes after the JSON header (binary tensor data).",
        "properties": {
            "name": {"type": "string"}, "datatype": {"type": "string", "enum": list(DATATYPES)}, "shape": SHAPE,
            "parameters": {"type": "object", "properties": {"binary_data_size": {"type": "integer", "minimum": 0}}},
            "data": {"description": "The values in row-major order, flat or nested (BYTES: strings; files base64)."}}},
    "V2RequestOutput": {"type": "object", "required": ["name"], "properties": {
        "name": {"type": "string"},
        "parameters": {"type": "object", "properties": {"binary_data": {"type": "boolean"}}}}},
    "V2ResponseOutput": {"type": "object", "required": ["name", "datatype", "shape"], "properties": {
        "name": {"type": "string"}, "datatype": {"type": "string", "enum": list(DATATYPES)},
        "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}},
        "parameters": {"type": "object", "properties": {"binary_data_size": {"type": "integer", "minimum": 0}}},
        "data": {"type": "array"}}},
    "V2InferResponse": {"type": "object", "required": ["model_name", "outputs"], "properties": {
        "model_name": {"type": "string"}, "model_version": {"type": "string"},
        "id": {"type": "string", "description": "The request's id, echoed."},
        "outputs": {"type": "array", "items": {"$ref": REF + "V2ResponseOutput"}}}},
    "V2ModelMetadata": {"type": "object", "required": ["name", "versions", "platform", "inputs", "outputs"],
                        "properties": {
        "name": {"type": "string"}, "versions": {"type": "array", "items": {"type": "string"}},
        "platform": {"type": "string"},
        "inputs": {"type": "array", "items": {"$ref": REF + "V2Tensor"}},
        "outputs": {"type": "array", "items": {"$ref": REF + "V2Tensor"}},
        "parameters": {"type": "object", "properties": {
            "task": {"type": "string"},
            "input_sets": {"type": "object", "additionalProperties": {"type": "array", "items": {"type": "string"}},
                           "description": "task: the task-level inputs; graph:NAME: each graph's own inputs."},
            "task_parameters": {"type": "array", "items": {"type": "string"}},
            "labels": {"type": "array", "items": {"type": "string"}}}}}},
    "OpenAIError": {"type": "object", "required": ["error"], "properties": {"error": {
        "type": "object", "required": ["message", "type", "param", "code"], "properties": {
            "message": {"type": "string"}, "type": {"type": "string"}, "param": {"type": ["string", "null"]},
            "code": {"type": ["string", "null"]}}}}},
    "Embeddings": {"type": "object", "required": ["object", "model", "data", "usage"], "properties": {
        "object": {"type": "string", "enum": ["list"]}, "model": {"type": "string"},
        "data": {"type": "array", "items": {"type": "object", "required": ["object", "index", "embedding"],
                                            "properties": {
            "object": {"type": "string", "enum": ["embedding"]}, "index": {"type": "integer", "minimum": 0},
            "embedding": {"anyOf": [{"type": "array", "items": {"type": "number"}},
                                    {"type": "string", "description": "base64 of little-endian float32"}]}}}},
        "usage": {"type": "object", "required": ["prompt_tokens", "total_tokens"], "properties": {
            "prompt_tokens": {"type": "integer", "minimum": 0}, "total_tokens": {"type": "integer", "minimum": 0}}}}},
}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _v2_errors(*codes: str) -> dict[str, Any]:
    out = {code: _json({"$ref": REF + "V2Error"}, V2_ERRORS[code]) for code in codes}
    if "404" in out:
        out["404"] = _json({"anyOf": [{"$ref": REF + "V2Error"}, {"$ref": REF + "Error"}]}, V2_ERRORS["404"])
    return out


def _v2_parameters(models: dict[str, Any], limits: Limits) -> dict[str, Any]:
    """The request-level parameters: the task options of any served model, CLIP's labels and
    templates, and the protocol's own; any other is refused."""
    names = sorted({name for served in models.values() for name in parameters_of(served)})
    properties: dict[str, Any] = {name: dict(OPTIONS[name]) for name in names if name in OPTIONS}
    if "top_k" in properties:
        properties["top_k"]["maximum"] = limits.max_top_k
    for name in ("labels", "templates"):
        if any(name in e.inputs for served in models.values() for e in served.endpoints.values()):
            properties[name] = {"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}],
                                "description": f"CLIP: the {name}, as a list or one comma-separated string."}
    properties.update({name: PROTOCOL[name] for name in PROTOCOL_PARAMETERS})
    return {"type": "object", "additionalProperties": False, "properties": properties,
            "description": "Task options (each model takes those of its task: GET /v2/models/{model}, "
                           "parameters.task_parameters); a graph-level request takes none."}


def v2_paths(models: dict[str, Any], limits: Limits) -> dict[str, Any]:
    """GET /v2, /v2/health/{live,ready}, and /v2/models/{model}[/versions/{version}][/ready|/infer]."""
    names = sorted(models)
    model = {"name": "model", "in": "path", "required": True, "description": "A served model's name.",
             "schema": {"type": "string", "enum": names} if names else {"type": "string"}}
    version = {"name": "version", "in": "path", "required": True, "description": "The model version: always 1.",
               "schema": {"type": "string", "enum": [VERSION]}}
    header = {"name": "Inference-Header-Content-Length", "in": "header", "required": False,
              "description": "Binary tensor data: the length of the JSON header that the binary data follows.",
              "schema": {"type": "integer", "minimum": 1}}
    request = {"type": "object", "required": ["inputs"], "properties": {
        "id": {"type": "string"}, "parameters": _v2_parameters(models, limits),
        "inputs": {"type": "array", "minItems": 1, "items": {"$ref": REF + "V2RequestInput"}},
        "outputs": {"type": "array", "items": {"$ref": REF + "V2RequestOutput"},
                    "description": "The outputs to answer (default: all), each as JSON or binary data."}}}
    ready = {"type": "object", "required": ["ready"], "properties": {"ready": {"type": "boolean"}}}
    model_ready = {"type": "object", "required": ["name", "ready"],
                   "properties": {"name": {"type": "string"}, "ready": {"type": "boolean"}}}

    def op(summary: str, op_id: str, responses: dict[str, Any], **more: Any) -> dict[str, Any]:
        return {"tags": [V2_TAG], "summary": summary, "operationId": op_id, "responses": responses, **more}

    paths: dict[str, Any] = {
        "/v2": {"get": op("Server metadata: name, version, protocol extensions.", "v2-server-metadata", {
            "200": _json({"type": "object", "required": ["name", "version", "extensions"], "properties": {
                "name": {"type": "string"}, "version": {"type": "string"},
                "extensions": {"type": "array", "items": {"type": "string"}}}}, "The server.")})},
        "/v2/health/live": {"get": op("Liveness: the server answers.", "v2-live", {
            "200": _json({"type": "object", "required": ["live"], "properties": {"live": {"type": "boolean"}}},
                         "Alive.")})},
        "/v2/health/ready": {"get": op("Readiness: every model is warmed up.", "v2-ready", {
            "200": _json(ready, "Ready."), "503": _json(ready, "Still warming up.")})},
    }
    for prefix, params, suffix in (("/v2/models/{model}", [model], ""),
                                   ("/v2/models/{model}/versions/{version}", [model, version], "-version")):
        paths[prefix] = {"get": op("Model metadata: input and output tensors.", f"v2-model-metadata{suffix}", {
            "200": _json({"$ref": REF + "V2ModelMetadata"}, "The model."), **_v2_errors("404")}, parameters=params)}
        paths[prefix + "/ready"] = {"get": op("Model readiness.", f"v2-model-ready{suffix}", {
            "200": _json(model_ready, "Ready."), "503": _json(model_ready, "Still warming up."),
            **_v2_errors("404")}, parameters=params)}
        paths[prefix + "/infer"] = {"post": op(
            "Inference: task-level BYTES inputs or a graph's own tensors, as JSON or binary tensor data.",
            f"v2-infer{suffix}", {
                "200": {"description": "The outputs: JSON, or (asked for as binary data) the JSON header, whose "
                                       "length is in Inference-Header-Content-Length, then the binary data.",
                        "content": {"application/json": {"schema": {"$ref": REF + "V2InferResponse"}},
                                    "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}},
                **_v2_errors("400", "404", "408", "413", "503")},
            parameters=[*params, header],
            requestBody={"required": True, "content": {
                "application/json": {"schema": request},
                "application/octet-stream": {"schema": {"type": "string", "format": "binary",
                                                        "description": "The JSON header, then the binary data."}}}})}
    return paths


def openai_paths(models: dict[str, Any], limits: Limits) -> dict[str, Any]:
    """POST /v1/embeddings (GET /v1/models, shared with /v1, carries OpenAI's list form too)."""
    embedders = sorted(n for n, served in models.items() if "embed" in served.endpoints)
    text = {"type": "string", "maxLength": limits.max_caption_chars}
    image = {"type": "string", "description": "An image file, base64 or a data: URL."}
    item = {"anyOf": [
        {"type": "string", "description": "CLIP: a caption, or an image as a data:image/... URL; "
                                          "image encoders: an image, base64 or a data URL."},
        {"type": "object", "required": ["text"], "additionalProperties": False, "properties": {"text": text}},
        {"type": "object", "required": ["image"], "additionalProperties": False, "properties": {"image": image}},
        {"type": "object", "required": ["type", "text"], "properties": {
            "type": {"type": "string", "enum": ["text"]}, "text": text}},
        {"type": "object", "required": ["type", "image_url"], "properties": {
            "type": {"type": "string", "enum": ["image_url"]},
            "image_url": {"type": "object", "required": ["url"], "properties": {"url": image}}}}]}
    request = {"type": "object", "required": ["model", "input"], "additionalProperties": False, "properties": {
        "model": {"type": "string", "enum": embedders} if embedders else {"type": "string"},
        "input": {"anyOf": [item, {"type": "array", "minItems": 1, "maxItems": limits.max_inputs, "items": item}],
                  "description": "One input or a list: captions (CLIP) and images, embedded in order."},
        "encoding_format": {"type": "string", "enum": ["float", "base64"]},
        "dimensions": {"type": ["integer", "null"], "minimum": 1,
                       "description": "Must equal the model's embedding size if given (no truncation)."},
        "user": {"description": "Accepted and ignored."}}}
    errors = {code: _json({"$ref": REF + "OpenAIError"}, text) for code, text in OPENAI_ERRORS.items()}
    return {"/v1/embeddings": {"post": {
        "tags": [OPENAI_TAG], "summary": "Embeddings, as OpenAI's embeddings API (CLIP/SigLIP and image encoders).",
        "operationId": "openai-embeddings",
        "requestBody": {"required": True, "content": {"application/json": {"schema": request}}},
        "responses": {"200": _json({"$ref": REF + "Embeddings"}, "One embedding per input, in order."), **errors}}}}
