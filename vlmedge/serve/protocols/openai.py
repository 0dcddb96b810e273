"""OpenAI-compatible embeddings: POST /v1/embeddings, so that OpenAI's clients (and tools
built on them) embed with a served CLIP/SigLIP or image-embedding model.

    {"model": "<served name>", "input": "a caption" | ["...", "data:image/png;base64,..."],
     "encoding_format": "float" | "base64"}

For a CLIP model a string is a caption unless it is an image data URL; {"text": ...},
{"image": "<base64 or data URL>"} and {"type": "image_url", "image_url": {"url": ...}} items
say which it is. For an image encoder every string is an image (base64 or a data URL).
Captions and images of one request run as two batched jobs of the model. Errors are OpenAI's
{"error": {"message", "type", "param", "code"}}.
"""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any

import numpy as np
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from vlmedge.errors import VlmedgeError
from vlmedge.serve.handling import instrumented, off_loop, prepare_in_time, read_body, submit
from vlmedge.serve.inputs import Inputs, check_limits, decode_base64
from vlmedge.serve.problems import MALFORMED_JSON, Problem, inputs_renamed

FORMATS = ("float", "base64")
IGNORED = ("user",)
PATH = "/v1/embeddings"


def error(problem: Problem) -> Response:
    status = 400 if problem.status == 422 else problem.status
    kind = ("invalid_request_error" if status < 500 and status not in (408, 429) else
            "timeout" if status == 408 else "server_error")
    code = "model_not_found" if problem.code == "unknown_model" else problem.code
    return JSONResponse({"error": {"message": problem.message, "type": kind, "param": None, "code": code}},
                        status_code=status, headers=problem.headers)


def _bad(message: str, code: str = "invalid_request") -> Problem:
    return Problem(400, code, message)


def _item(value: Any, i: int, clip: bool) -> tuple[str, Any]:
    """("images", bytes) or ("texts", str) for input item i."""
    where = f"input[{i}]"
    if isinstance(value, dict):
        if value.get("type") == "image_url" and isinstance(value.get("image_url"), (dict, str)):
            url = value["image_url"]  # {"url": ...} as OpenAI's chat API has it, or the URL alone, as some clients send
            value = {"image": url.get("url") if isinstance(url, dict) else url}
        elif value.get("type") == "text":
            value = {"text": value.get("text")}
        if set(value) == {"image"}:
            return "images", decode_base64(value["image"], where)
        if set(value) == {"text"} and clip:
            if not isinstance(value["text"], str):
                raise _bad(f"{where}.text must be a string.")
            return "texts", value["text"]
        raise _bad(f"{where} must be a string, {{\"text\": ...}}, {{\"image\": ...}} or "
                   f"{{\"type\": \"image_url\", \"image_url\": {{\"url\": ...}}}}.")
    if not isinstance(value, str):
        raise _bad(f"{where} must be a string, not {type(value).__name__}; token arrays are not supported.")
    if not clip or value.startswith("data:image/"):
        return "images", decode_base64(value, where)
    return "texts", value


def parse(body: bytes, models: dict[str, Any]) -> tuple[Any, dict[str, Any], list[tuple[str, Any]]]:
    """The request -> (served model, request fields, [(kind, item)] in input order)."""
    try:
        data = json.loads(body)
    except MALFORMED_JSON as exc:
        raise _bad(f"The body is not valid JSON ({str(exc)[:80]}).", "invalid_json") from None
    if not isinstance(data, dict):
        raise _bad("The body must be a JSON object with 'model' and 'input'.")
    unknown = set(data) - {"model", "input", "encoding_format", "dimensions", *IGNORED}
    if unknown:
        raise _bad(f"Unknown field(s) {', '.join(sorted(unknown))}; {PATH} takes model, input, "
                   f"encoding_format and dimensions (and {', '.join(IGNORED)}, which it ignores).")
    name = data.get("model")
    if not isinstance(name, str):
        raise _bad("'model' must name a served model (GET /v1/models).")
    if name not in models:
        raise Problem(404, "unknown_model", f"There is no model '{name}'; this server has: "
                                            f"{', '.join(sorted(models)) or 'none'}.")
    served = models[name]
    if "embed" not in served.endpoints:
        raise _bad(f"Model '{name}' is {'an' if served.task[0] in 'aeiou' else 'a'} {served.task} model, which does not embed; /v1/embeddings serves CLIP "
                   "and image-embedding models.")
    fmt = data.get("encoding_format", "float")
    if fmt not in FORMATS:
        raise _bad(f"'encoding_format' must be float or base64, not {json.dumps(fmt)[:40]}.")
    raw = data.get("input")
    items = [raw] if isinstance(raw, (str, dict)) else raw
    if not isinstance(items, list) or not items:
        raise _bad("'input' must be a string or a non-empty list.")
    clip = "texts" in served.endpoints["embed"].inputs
    return served, data, [_item(value, i, clip) for i, value in enumerate(items)]


def model_object(name: str) -> dict[str, Any]:
    """A served model as OpenAI's Model object (what models.list() and models.retrieve() read)."""
    return {"id": name, "object": "model", "created": 0, "owned_by": "vlmedge"}


def routes(state: Any) -> list[Route]:
    async def embeddings(request: Request) -> Response:
        chosen = {"model": "-"}  # for the metrics, once the body names it

        async def work(started: float) -> Response:
            body = await read_body(request, state.limits, started)
            served, data, items = await off_loop(len(body), parse, body, state.models)
            chosen["model"] = served.name
            endpoint = served.endpoints["embed"]
            groups = {kind: [i for i, (k, _) in enumerate(items) if k == kind] for kind in ("images", "texts")}
            all_inputs = Inputs(**{kind: [items[i][1] for i in rows] for kind, rows in groups.items()})
            kinds = [kind for kind, rows in groups.items() if rows]
            try:
                check_limits(all_inputs, state.limits)
                jobs = [await prepare_in_time(state, served.name, started, None, served.prepare, endpoint,
                                              Inputs(**{k: getattr(all_inputs, k)}), state.limits) for k in kinds]
            except (Problem, VlmedgeError) as exc:  # images[i] / texts[i]: the per-kind lists the items went to
                raise inputs_renamed(exc, lambda field, i: f"input[{groups[field][i]}]" if field in groups
                                     else f"{field}[{i}]") from None
            results = await asyncio.gather(*(submit(state, served.name, job, started, None, request) for job in jobs))
            vectors: list[Any] = [None] * len(items)
            tokens = 0
            for kind, job, (result, _) in zip(kinds, jobs, results):
                for row, vector in zip(groups[kind], result["embeddings"]):
                    vectors[row] = vector
                if kind == "texts":
                    tokens += int(np.asarray(job.payload["attention_mask"]).sum())
            dimensions = data.get("dimensions")
            if dimensions is not None and dimensions != len(vectors[0]):
                raise _bad(f"Model '{served.name}' embeds in {len(vectors[0])} dimensions; 'dimensions' "
                           f"{json.dumps(dimensions)[:20]} cannot be served (leave it out).")
            if data.get("encoding_format", "float") == "base64":
                vectors = [base64.b64encode(np.asarray(v, dtype="<f4").tobytes()).decode("ascii") for v in vectors]
            return JSONResponse({"object": "list", "model": served.name,
                                 "data": [{"object": "embedding", "index": i, "embedding": v}
                                          for i, v in enumerate(vectors)],
                                 "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})

        return await instrumented(state, lambda: chosen["model"], "embeddings", work, render=error)

    return [Route(PATH, embeddings, methods=["POST"])]
