"""Request bodies -> checked inputs: JSON (base64 bytes, captions) or multipart uploads.

Both forms carry the same fields; an endpoint declares which it takes. Every problem is a
Problem with a 4xx status that names the field and the limit. Nothing is fetched from a URL.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import math
import re
from dataclasses import dataclass, field
from typing import Any

from vlmedge.preprocess import AUDIO_FORMATS
from vlmedge.serve.config import Limits
from vlmedge.serve.problems import MALFORMED_JSON, Problem

FILE_FIELDS = ("images", "audio")
TEXT_FIELDS = ("texts", "labels", "templates")

# option -> JSON Schema; the parser below follows the schema, so the OpenAPI document and
# the checks cannot drift apart.
OPTIONS: dict[str, dict[str, Any]] = {
    "top_k": {"type": "integer", "minimum": 1, "description": "How many ranked labels to return per input."},
    "threshold": {"type": "number", "minimum": 0, "maximum": 1,
                  "description": "Keep only labels scoring at least this."},
    "window_hop": {"type": "number", "exclusiveMinimum": 0,
                   "description": "Seconds between the starts of analysis windows of long clips."},
    "aggregate": {"type": "string", "enum": ["max", "mean"],
                  "description": "Clip-level score: max or mean of the windows' scores; default: max for a "
                                 "multi-label (sigmoid) model, else mean."},
    "pooling": {"type": "string", "enum": ["cls", "mean", "cls+mean", "pooled"],
                "description": "How patch tokens become one embedding; default: the model's own."},
    "normalize": {"type": "boolean", "description": "L2-normalise each embedding (default true)."},
    "attention": {"type": "boolean",
                  "description": "Also return the CLS attention heat maps as PNG data URLs (models with attention)."},
    "timeout_ms": {"type": "integer", "minimum": 1,
                   "description": "Answer 408 if no result within this many milliseconds (at most the server's limit)."},
}


@dataclass
class Inputs:
    """One request's inputs and options, checked against the limits."""

    images: list[bytes] = field(default_factory=list)
    audio: list[bytes] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)
    templates: list[str] = field(default_factory=list)
    options: dict[str, Any] = field(default_factory=dict)
    present: set[str] = field(default_factory=set)

    @property
    def count(self) -> int:
        """Inputs that go through the model: images, clips or captions."""
        return len(self.images) + len(self.audio) + len(self.texts)


def invalid(code: str, message: str, status: int = 422) -> Problem:
    return Problem(status, code, message)


def _allowed(fields: tuple[str, ...], endpoint: str) -> str:
    return f"'{endpoint}' takes {', '.join(fields)}"


# -- JSON ------------------------------------------------------------------------------------


def decode_base64(value: Any, where: str) -> bytes:
    if not isinstance(value, str):
        raise invalid("invalid_field", f"{where} must be a base64 string, not {type(value).__name__}.")
    if re.match(r"[a-zA-Z][a-zA-Z0-9+.-]*://", value):  # README: no URL is ever fetched
        raise invalid("invalid_base64", f"{where} is a URL ({value[:60]}); this server never fetches one: send the "
                                        "file's bytes as base64 or a data: URL.")
    text = value.split(",", 1)[1] if value.startswith("data:") and "," in value else value
    text = "".join(text.split())  # MIME base64 (the base64 tool's, encodebytes') wraps its lines
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise invalid("invalid_base64", f"{where} is not valid base64; encode the file's bytes with base64 "
                                        "(a data: URL is accepted too).") from None


def parse_json(body: bytes, endpoint: str, fields: tuple[str, ...]) -> Inputs:
    """A JSON object with list fields (images and audio as base64) and options."""
    try:
        data = json.loads(body)
    except MALFORMED_JSON as exc:
        raise invalid("invalid_json", f"The body is not valid JSON ({str(exc)[:80]}).", 400) from None
    if not isinstance(data, dict):
        raise invalid("invalid_json", f"The body must be a JSON object, not {type(data).__name__}; "
                                      f"{_allowed(fields, endpoint)}.", 400)
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise invalid("unknown_field", f"Unknown field(s) {', '.join(map(repr, unknown))}; {_allowed(fields, endpoint)}.")
    out = Inputs(present=set(data))
    for name, value in data.items():
        if name in FILE_FIELDS or name in TEXT_FIELDS:
            if not isinstance(value, list):
                raise invalid("invalid_field", f"'{name}' must be a list, not {type(value).__name__}.")
            if name in FILE_FIELDS:
                setattr(out, name, [decode_base64(v, f"{name}[{i}]") for i, v in enumerate(value)])
            else:
                for i, v in enumerate(value):
                    if not isinstance(v, str):
                        raise invalid("invalid_field", f"{name}[{i}] must be a string, not {type(v).__name__}.")
                    try:
                        v.encode("utf-8")
                    except UnicodeEncodeError:  # a lone surrogate such as "\ud800": JSON allows it, UTF-8 does not
                        raise invalid("invalid_field", f"{name}[{i}] is not valid Unicode text.") from None
                setattr(out, name, list(value))
        else:
            out.options[name] = check_option(name, value)
    return out


def check_option(name: str, value: Any) -> Any:
    """A JSON value checked against the option's schema."""
    schema = OPTIONS[name]
    kind = schema["type"]
    if kind == "boolean":
        ok = isinstance(value, bool)
    elif kind == "integer":  # JSON Schema: 3.0 is an integer too
        if isinstance(value, float) and math.isfinite(value) and value.is_integer():
            value = int(value)
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif kind == "number":
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    else:
        ok = isinstance(value, str)
    if not ok:
        what = {"number": "a finite number", "integer": "an integer", "boolean": "true or false"}.get(kind, "a " + kind)
        raise invalid("invalid_field", f"'{name}' must be {what}, "
                                       f"not {json.dumps(value)[:40]}.")
    if "enum" in schema and value not in schema["enum"]:
        raise invalid("invalid_field", f"'{name}' must be one of {', '.join(schema['enum'])}, not {value!r}.")
    if "minimum" in schema and value < schema["minimum"] or "maximum" in schema and value > schema["maximum"]:
        low, high = schema.get("minimum"), schema.get("maximum")
        bounds = f"from {low} to {high}" if None not in (low, high) else f"at least {low}" if high is None else \
            f"at most {high}"
        raise invalid("invalid_field", f"'{name}' must be {bounds}, not {value!r}.")
    if "exclusiveMinimum" in schema and value <= schema["exclusiveMinimum"]:
        raise invalid("invalid_field", f"'{name}' must be more than {schema['exclusiveMinimum']}, not {value!r}.")
    return value


# -- multipart -------------------------------------------------------------------------------

_TRUE, _FALSE = {"true", "1", "yes", "on"}, {"false", "0", "no", "off"}


def _option_from_text(name: str, text: str) -> Any:
    kind = OPTIONS[name]["type"]
    text = text.strip()
    try:
        if kind == "integer":
            value: Any = int(text)
        elif kind == "number":
            value = float(text)
        elif kind == "boolean":
            if text.lower() not in _TRUE | _FALSE:
                raise ValueError(text)
            value = text.lower() in _TRUE
        else:
            value = text
    except ValueError:
        what = {"number": "a number", "integer": "an integer", "boolean": "true or false"}.get(kind, "a " + kind)
        raise invalid("invalid_field", f"'{name}' must be {what}, not {text[:40]!r}.") from None
    return check_option(name, value)


async def parse_multipart(form: Any, endpoint: str, fields: tuple[str, ...]) -> Inputs:
    """A multipart form (starlette FormData): files under images/audio, repeated text fields
    (labels may also be comma-separated in one field), options as text."""
    out = Inputs()
    for name, value in form.multi_items():
        if name not in fields:
            raise invalid("unknown_field", f"Unknown form field {name!r}; {_allowed(fields, endpoint)}.")
        out.present.add(name)
        is_file = not isinstance(value, str)
        if name in FILE_FIELDS:
            if not is_file:
                raise invalid("invalid_field", f"Form field '{name}' must be a file upload, not text.")
            getattr(out, name).append(await value.read())
        elif is_file:
            raise invalid("invalid_field", f"Form field '{name}' must be text, not a file upload.")
        elif name == "labels":
            out.labels.extend(part.strip() for part in value.split(",") if part.strip())
        elif name in TEXT_FIELDS:
            getattr(out, name).append(value)
        else:
            out.options[name] = _option_from_text(name, value)
    return out


# -- limits ----------------------------------------------------------------------------------


def check_limits(inputs: Inputs, limits: Limits) -> None:
    """Counts and lengths; the media checks are check_image / check_audio."""
    if inputs.count > limits.max_inputs:
        raise invalid("too_many_inputs", f"The request has {inputs.count} inputs; the limit is {limits.max_inputs} "
                                         "per request. Split it into several requests.")
    for name in ("texts", "labels", "templates"):
        for i, text in enumerate(getattr(inputs, name)):
            if len(text) > limits.max_caption_chars:
                raise invalid("text_too_long", f"{name}[{i}] has {len(text)} characters; the limit is "
                                               f"{limits.max_caption_chars}.")
    if len(inputs.labels) > limits.max_labels:
        raise invalid("too_many_labels", f"The request has {len(inputs.labels)} labels; the limit is {limits.max_labels}.")
    if len(inputs.templates) > limits.max_templates:
        raise invalid("too_many_templates",
                      f"The request has {len(inputs.templates)} templates; the limit is {limits.max_templates}.")
    top_k = inputs.options.get("top_k")
    if top_k is not None and top_k > limits.max_top_k:
        raise invalid("invalid_field", f"'top_k' must be at most {limits.max_top_k}, not {top_k}.")


def check_image(data: bytes, index: int, limits: Limits) -> None:
    """Reads only the header: an image format Pillow knows, within the pixel limit."""
    from PIL import Image

    from vlmedge.preprocess.image.decode import FORMATS, MAX_IMAGE_PIXELS, header_size

    where = f"images[{index}]"
    if not data:
        raise invalid("invalid_input", f"{where} is empty; send the bytes of an image file.")
    try:
        width, height = header_size(io.BytesIO(data))
        size = f"{width}x{height} = {width * height:,} pixels"
    except Image.DecompressionBombError:  # beyond what the decoder takes, so beyond the limit
        width = height = None
        size = f"larger than {MAX_IMAGE_PIXELS:,} pixels"
    except Exception:  # noqa: BLE001 - any failure to read a header means "not an image"
        raise invalid("invalid_input", f"{where} is not a readable image ({', '.join(FORMATS)}); "
                                       "send a PNG or JPEG file.") from None
    if width is None or width * height > limits.max_image_pixels:
        raise invalid("image_too_large", f"{where} is {size}; the limit is {limits.max_image_pixels:,}. "
                                         "Downscale it first.", 413)


def check_audio(data: bytes, index: int, limits: Limits) -> float:
    """Reads only the header (decoding a file whose header leaves its length out): a format soundfile
    decodes, within the duration limit; its seconds."""
    from vlmedge.preprocess.audio.io import audio_seconds

    where = f"audio[{index}]"
    if not data:
        raise invalid("invalid_input", f"{where} is empty; send the bytes of a {AUDIO_FORMATS} file.")
    try:
        seconds, whole = audio_seconds(data, most=limits.max_audio_seconds)
    except Exception:  # noqa: BLE001 - any failure to read a header means "not audio"
        raise invalid("invalid_input", f"{where} is not a readable audio file; send a {AUDIO_FORMATS} file.") from None
    if not math.isfinite(seconds) or seconds > limits.max_audio_seconds:
        lasts = f"{seconds:.1f} s" if whole else f"over {seconds:.1f} s"
        raise invalid("audio_too_long", f"{where} lasts {lasts}; the limit is {limits.max_audio_seconds:g} s. "
                                        "Cut it into shorter clips.", 413)
    return seconds
