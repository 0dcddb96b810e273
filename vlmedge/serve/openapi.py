"""The server's OpenAPI 3.1 document, built from the loaded models' endpoints and the limits,
so that it lists exactly the paths, fields and bounds the server enforces: vlmedge's own
routes here, the Open Inference Protocol v2 and OpenAI routes from protocols.schema."""

from __future__ import annotations

from typing import Any

from vlmedge.version import __version__
from vlmedge.preprocess import AUDIO_FORMATS
from vlmedge.serve.config import Limits
from vlmedge.serve.inputs import OPTIONS
from vlmedge.serve.protocols import schema as protocols

ERROR_CODES = {
    "400": "Malformed request (not JSON, not an object) or a model error.",
    "404": "No such model, or the model has no such endpoint.",
    "408": "No result within the request's timeout (or the body did not arrive in time).",
    "413": "Body, image or audio clip larger than the server's limit.",
    "415": "Content-Type is neither application/json nor multipart/form-data.",
    "422": "A field is missing, unknown or out of bounds, or an input cannot be decoded.",
    "503": "The model's queue is full (see Retry-After) or the server is not ready.",
}

PREDICTION = {"type": "object", "required": ["label", "index", "score"], "properties": {
    "label": {"type": "string"}, "index": {"type": "integer"}, "score": {"type": "number"}}}
RANKED = {"type": "object", "required": ["predictions"], "properties": {
    "predictions": {"type": "array", "items": {"$ref": "#/components/schemas/Prediction"}}}}
COMMON = {"model": {"type": "string"}, "inputs": {"type": "integer"},
          "batch": {"type": "object", "properties": {"inputs": {"type": "integer"}, "requests": {"type": "integer"}}},
          "latency_ms": {"type": "object", "properties": {k: {"type": "number"} for k in ("total", "queue", "inference")}}}
RESULTS = {
    "classify": {"results": {"type": "array", "items": RANKED}},
    "zero-shot": {"results": {"type": "array", "items": RANKED}},
    "embed": {"embeddings": {"type": "array", "items": {"type": "array", "items": {"type": "number"}}},
              "dim": {"type": "integer"}, "normalized": {"type": "boolean"},
              "attention": {"type": "array", "items": {"type": "string", "description": "PNG data URL"}}},
    "tag": {"results": {"type": "array", "items": {"type": "object", "properties": {
        "duration": {"type": "number"},
        "predictions": {"type": "array", "items": {"$ref": "#/components/schemas/Prediction"}},
        "windows": {"type": "array", "items": {"type": "object", "properties": {
            "start": {"type": "number"}, "end": {"type": "number"},
            "predictions": {"type": "array", "items": {"$ref": "#/components/schemas/Prediction"}}}}}}}}},
}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*codes: str) -> dict[str, Any]:
    return {code: _json({"$ref": "#/components/schemas/Error"}, ERROR_CODES[code]) for code in codes}


def _field_schemas(endpoint: Any, limits: Limits, multipart: bool) -> dict[str, Any]:
    data = {"type": "string", "format": "binary"} if multipart else {"type": "string", "format": "byte"}
    media = {"type": "array", "items": data, "minItems": 1, "maxItems": limits.max_inputs}
    text = {"type": "string", "maxLength": limits.max_caption_chars}
    fields = {
        "images": {**media, "description": "Image files (PNG, JPEG, ...)" + ("" if multipart else ", base64")},
        "audio": {**media, "description": f"Audio files ({AUDIO_FORMATS})" + ("" if multipart else ", base64")},
        "texts": {"type": "array", "items": text, "minItems": 1, "maxItems": limits.max_inputs},
        "labels": {"type": "array", "minItems": 1, "maxItems": limits.max_labels,
                   # not blank; in a form, a comma separates labels
                   "items": {**text, "minLength": 1, "pattern": "^[^,]*\\S[^,]*$" if multipart else "\\S"},
                   "description": "Candidate labels" + (" (a field may hold several, comma-separated)" if multipart else "")},
        "templates": {"type": "array", "minItems": 1, "maxItems": limits.max_templates,
                      "items": {**text, "pattern": "\\{(label)?\\}"}, "description": "Prompt templates with {} for the label"},
    }
    options = {name: dict(OPTIONS[name]) for name in endpoint.options + ("timeout_ms",)}
    if "top_k" in options:
        options["top_k"]["maximum"] = limits.max_top_k
    options["timeout_ms"]["maximum"] = int(limits.request_timeout_s * 1000)
    return {**{name: fields[name] for name in endpoint.inputs}, **options}


def _body(endpoint: Any, limits: Limits, multipart: bool) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "object", "additionalProperties": False,
                              "properties": _field_schemas(endpoint, limits, multipart)}
    if endpoint.exclusive:
        schema["oneOf"] = [{"required": [name], "not": {"required": [other]}}
                           for name in endpoint.required for other in endpoint.required if other != name]
    else:
        schema["required"] = list(endpoint.required) + (["labels"] if "labels" in endpoint.inputs else [])
    return schema


def build_openapi(models: dict[str, Any], limits: Limits) -> dict[str, Any]:
    """The document for these served models (name -> ServedModel)."""
    names = sorted(models)
    plain = {"type": "object", "properties": {"status": {"type": "string"}}}
    paths: dict[str, Any] = {
        "/healthz": {"get": {"summary": "Liveness: the process answers.", "operationId": "healthz",
                             "responses": {"200": _json(plain, "Alive.")}}},
        "/readyz": {"get": {"summary": "Readiness: every model is loaded and warmed up.", "operationId": "readyz",
                            "responses": {"200": _json(plain, "Ready."), **_errors("503")}}},
        "/metrics": {"get": {"summary": "Prometheus metrics (text exposition format).", "operationId": "metrics",
                             "responses": {"200": {"description": "Metrics.",
                                                   "content": {"text/plain": {"schema": {"type": "string"}}}}}}},
        "/v1/models": {"get": {"summary": "The models served.", "operationId": "listModels", "responses": {
            "200": _json({"type": "object", "properties": {
                "models": {"type": "array", "items": {"$ref": "#/components/schemas/Model"}},
                "object": {"type": "string", "description": "\"list\": the OpenAI models.list form, in data"},
                "data": {"type": "array", "items": {"type": "object", "properties": {
                    "id": {"type": "string"}, "object": {"type": "string"}}}}}}, "Models.")}}},
        "/v1/models/{model}": {"get": {
            "summary": "One model, with its labels.", "operationId": "getModel",
            "parameters": [{"name": "model", "in": "path", "required": True,
                            "schema": {"type": "string", "enum": names} if names else {"type": "string"}}],
            "responses": {"200": _json({"$ref": "#/components/schemas/Model"}, "The model."), **_errors("404")}}},
    }
    for name in names:
        served = models[name]
        for endpoint in served.endpoints.values():
            result = {"type": "object", "properties": {**COMMON, **RESULTS[endpoint.name]}}
            paths[f"/v1/models/{name}/{endpoint.name}"] = {"post": {
                "summary": f"{served.task}: {endpoint.summary}",
                "operationId": f"{name}-{endpoint.name}",
                "requestBody": {"required": True, "content": {
                    "application/json": {"schema": _body(endpoint, limits, multipart=False)},
                    "multipart/form-data": {"schema": _body(endpoint, limits, multipart=True)}}},
                "responses": {"200": _json(result, "Results, one per input, in order."),
                              **_errors("400", "404", "408", "413", "415", "422", "503")},
            }}
    paths.update(protocols.v2_paths(models, limits))
    paths.update(protocols.openai_paths(models, limits))
    return {
        "openapi": "3.1.0",
        "info": {"title": "vlmedge serve", "version": __version__,
                 "description": "Inference on exported artifacts, with dynamic batching. Inputs are uploaded "
                                "(multipart) or sent as base64 in JSON; no URL is ever fetched. The same "
                                "models also speak the Open Inference Protocol v2 (/v2) and OpenAI's "
                                "embeddings API (/v1/embeddings)."},
        "paths": paths,
        "components": {"schemas": {
            "Prediction": PREDICTION,
            "Error": {"type": "object", "required": ["error"], "properties": {"error": {
                "type": "object", "required": ["status", "code", "message"], "properties": {
                    "status": {"type": "integer"}, "code": {"type": "string"}, "message": {"type": "string"}}}}},
            "Model": {"type": "object", "required": ["name", "task", "backend", "precision"], "properties": {
                "name": {"type": "string"}, "task": {"type": "string"}, "backend": {"type": "string"},
                "precision": {"type": "string"}, "provider": {"type": "string"},
                "labels": {"type": ["array", "null"], "items": {"type": "string"},
                           "description": "The label names, in the model's index order (null: no labels)."}, "endpoints": {"type": "array", "items": {"type": "string"}}}},
            **protocols.COMPONENTS,
        }},
    }
