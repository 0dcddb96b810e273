"""Open Inference Protocol v2 tensors on the wire: JSON ("data", row-major, nested or flat)
and Triton's binary tensor data extension (the JSON header's length in the
Inference-Header-Content-Length header, then each binary tensor's bytes in order; BYTES
elements as a 4-byte little-endian length and the bytes). Every malformed request is a
Problem(400) naming the input."""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np

from vlmedge.serve.problems import MALFORMED_JSON, Problem

# V2 datatype -> numpy dtype (BYTES: an object array of bytes)
DATATYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype(bool), "UINT8": np.dtype(np.uint8), "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32), "UINT64": np.dtype(np.uint64), "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16), "INT32": np.dtype(np.int32), "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16), "FP32": np.dtype(np.float32), "FP64": np.dtype(np.float64),
    "BYTES": np.dtype(object),
}
# More elements than a request body of any allowed size holds (each takes at least a byte).
MAX_ELEMENTS = 1 << 40


def datatype_of(dtype: Any) -> str:
    """The V2 datatype of a numpy dtype (or its name); BYTES for strings and objects."""
    dtype = np.dtype(dtype) if not isinstance(dtype, np.dtype) else dtype
    if dtype.kind in "OSU":
        return "BYTES"
    return next((name for name, d in DATATYPES.items() if d == dtype), "BYTES")


def bad(message: str) -> Problem:
    return Problem(400, "invalid_request", message)


@dataclass
class Tensor:
    name: str
    datatype: str
    shape: tuple[int, ...]
    data: np.ndarray   # BYTES: object array of bytes (JSON strings as UTF-8)
    binary: bool       # sent as binary data (BYTES elements are raw), not JSON


def _flatten(data: Any) -> list[Any]:
    flat, stack = [], [data]
    while stack:
        item = stack.pop()
        if isinstance(item, list):
            stack.extend(reversed(item))
        else:
            flat.append(item)
    return flat


def _from_json(name: str, datatype: str, shape: tuple[int, ...], data: Any) -> np.ndarray:
    flat = _flatten(data) if isinstance(data, list) else [data]
    count = math.prod(shape)
    if len(flat) != count:
        raise bad(f"Input '{name}' has shape {list(shape)} ({count} elements) but its data holds {len(flat)}.")
    if datatype == "BYTES":
        out = np.empty(count, dtype=object)
        for i, value in enumerate(flat):
            if not isinstance(value, str):
                raise bad(f"Input '{name}' is BYTES: every element must be a JSON string, not {type(value).__name__}.")
            try:
                out[i] = value.encode("utf-8")
            except UnicodeEncodeError:
                raise bad(f"Input '{name}' element {i} is not valid Unicode text.") from None
        return out.reshape(shape)
    kinds = {"BOOL": (bool,), "FP16": (int, float), "FP32": (int, float), "FP64": (int, float)}.get(datatype, (int,))
    for value in flat:
        if not isinstance(value, kinds) or (isinstance(value, bool) and datatype != "BOOL"):
            raise bad(f"Input '{name}' is {datatype}, but its data holds {json.dumps(value)[:40]}.")
    try:
        return np.array(flat, dtype=DATATYPES[datatype]).reshape(shape)
    except (OverflowError, ValueError):
        raise bad(f"Input '{name}' holds values out of the range of {datatype}.") from None


def _bytes_elements(name: str, raw: bytes, count: int) -> np.ndarray:
    if 4 * count > len(raw):  # each element takes at least its 4-byte length: refuse before allocating
        raise bad(f"Input '{name}' has fewer BYTES elements in its binary data than its shape says ({count}).")
    out, offset = np.empty(count, dtype=object), 0
    for i in range(count):
        if offset + 4 > len(raw):
            raise bad(f"Input '{name}' has fewer BYTES elements in its binary data than its shape says ({count}).")
        (size,) = struct.unpack_from("<I", raw, offset)
        if offset + 4 + size > len(raw):
            raise bad(f"Input '{name}' element {i} declares {size} bytes but its binary data ends first.")
        out[i] = raw[offset + 4:offset + 4 + size]
        offset += 4 + size
    if offset != len(raw):
        raise bad(f"Input '{name}' has {len(raw) - offset} bytes of binary data beyond its {count} BYTES elements.")
    return out


def _from_binary(name: str, datatype: str, shape: tuple[int, ...], raw: bytes) -> np.ndarray:
    count = math.prod(shape)
    if datatype == "BYTES":
        return _bytes_elements(name, raw, count).reshape(shape)
    dtype = DATATYPES[datatype]
    if len(raw) != count * dtype.itemsize:
        raise bad(f"Input '{name}' has shape {list(shape)} of {datatype} ({count * dtype.itemsize} bytes) but "
                  f"binary_data_size {len(raw)}.")
    return np.frombuffer(raw, dtype=dtype.newbyteorder("<")).astype(dtype).reshape(shape)


def parse_request(body: bytes, header_length: str | None) -> tuple[dict[str, Any], list[Tensor]]:
    """An inference request body -> its JSON header and its input tensors."""
    rest = b""
    if header_length is not None:
        try:
            size = int(header_length)
        except ValueError:
            raise bad("The Inference-Header-Content-Length header is not a number.") from None
        if size < 1:
            raise bad(f"Inference-Header-Content-Length must be the JSON header's length in bytes, at least 1, "
                      f"not {size}.")
        if size > len(body):
            raise bad(f"Inference-Header-Content-Length is {size} but the body has {len(body)} bytes; "
                      "the body was cut short.")
        body, rest = body[:size], body[size:]
    try:
        head = json.loads(body)
    except MALFORMED_JSON as exc:
        # bytes after a JSON object: binary tensor data sent without the header that says where the JSON ends
        binary = header_length is None and (isinstance(exc, UnicodeDecodeError) or str(exc).startswith("Extra data"))
        raise bad(f"The inference request is not valid JSON ({str(exc)[:80]})"
                  + ("; binary tensor data after the JSON needs the Inference-Header-Content-Length header, the "
                     "JSON's length in bytes." if binary else ".")) from None
    if not isinstance(head, dict):
        raise bad("The inference request must be a JSON object with an 'inputs' list.")
    inputs = head.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise bad("The inference request needs a non-empty 'inputs' list.")
    for key in ("parameters",):
        if not isinstance(head.get(key, {}), dict):
            raise bad(f"'{key}' must be a JSON object.")
    if "id" in head and not isinstance(head["id"], str):
        raise bad("'id' must be a string.")
    tensors, offset, seen = [], 0, set()
    for i, spec in enumerate(inputs):
        if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
            raise bad(f"inputs[{i}] must be an object with a 'name'.")
        name, datatype, shape = spec["name"], spec.get("datatype"), spec.get("shape")
        if name in seen:
            raise bad(f"Input '{name}' is given twice.")
        seen.add(name)
        if datatype not in DATATYPES:
            raise bad(f"Input '{name}' has datatype {datatype!r}; use one of {', '.join(DATATYPES)}.")
        if (not isinstance(shape, list) or len(shape) > 8
                or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)):
            raise bad(f"Input '{name}' needs a 'shape': a list of non-negative integers.")
        if math.prod(d for d in shape if d) > MAX_ELEMENTS:  # numpy cannot even make an empty array that wide
            raise bad(f"Input '{name}' has shape {shape}, more elements than any request can hold.")
        params = spec.get("parameters", {})
        if not isinstance(params, dict):
            raise bad(f"Input '{name}': 'parameters' must be a JSON object.")
        size = params.get("binary_data_size")
        if size is not None:
            if not isinstance(size, int) or isinstance(size, bool) or size < 0:
                raise bad(f"Input '{name}': binary_data_size must be a non-negative integer.")
            if header_length is None:
                raise bad(f"Input '{name}' has binary data but the request has no Inference-Header-Content-Length.")
            if offset + size > len(rest):
                raise bad(f"Input '{name}' declares {size} bytes of binary data but only {len(rest) - offset} "
                          "remain; the body was cut short.")
            data = _from_binary(name, datatype, tuple(shape), rest[offset:offset + size])
            offset += size
        elif "data" in spec:
            data = _from_json(name, datatype, tuple(shape), spec["data"])
        else:
            raise bad(f"Input '{name}' has neither 'data' nor a binary_data_size parameter.")
        tensors.append(Tensor(name, datatype, tuple(shape), data, size is not None))
    if offset != len(rest):
        raise bad(f"The body has {len(rest) - offset} bytes of binary data that no input declares.")
    return head, tensors


def requested_outputs(head: dict[str, Any], available: list[str]) -> list[tuple[str, bool]]:
    """(output name, as binary data) for the outputs the request asks for (all by default)."""
    default_binary = (head.get("parameters") or {}).get("binary_data_output", False)
    if not isinstance(default_binary, bool):
        raise bad("The parameter binary_data_output must be true or false.")
    wanted = head.get("outputs")
    if wanted is None or wanted == []:  # an empty list asks for no output in particular: all, as Triton answers
        return [(name, default_binary) for name in available]
    if not isinstance(wanted, list):
        raise bad("'outputs' must be a list of objects with a 'name'.")
    out = []
    for i, spec in enumerate(wanted):
        if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
            raise bad(f"outputs[{i}] must be an object with a 'name'.")
        if spec["name"] not in available:
            raise bad(f"There is no output '{spec['name']}' for this request; it gives {', '.join(available)}.")
        if any(name == spec["name"] for name, _ in out):
            raise bad(f"outputs[{i}] asks for '{spec['name']}' again; request each output once.")
        params = spec.get("parameters", {})
        if not isinstance(params, dict):
            raise bad(f"outputs[{i}]: 'parameters' must be a JSON object.")
        unknown = [key for key in params if key != "binary_data"]
        if unknown:
            extension = (" (Triton's classification extension: a classifier's labels, scores and indices outputs carry "
                         "its top classes; set the top_k parameter)" if "class_count" in unknown else "")
            raise bad(f"outputs[{i}] has the parameter '{unknown[0]}', which this server does not implement{extension}; "
                      "an output takes binary_data only.")
        binary = params.get("binary_data", default_binary)
        if not isinstance(binary, bool):
            raise bad(f"outputs[{i}]: binary_data must be true or false.")
        out.append((spec["name"], binary))
    return out


def _serialize_bytes(array: np.ndarray) -> bytes:
    parts = []
    for item in array.reshape(-1):
        data = item.encode("utf-8") if isinstance(item, str) else bytes(item)
        parts.append(struct.pack("<I", len(data)) + data)
    return b"".join(parts)


def encode_response(head: dict[str, Any], outputs: dict[str, np.ndarray],
                    wanted: list[tuple[str, bool]]) -> tuple[bytes, dict[str, str], str]:
    """(body, headers, media type) of an inference response with these outputs."""
    described, blobs = [], []
    for name, binary in wanted:
        array = outputs[name]
        datatype = datatype_of(array.dtype)
        entry: dict[str, Any] = {"name": name, "datatype": datatype, "shape": list(array.shape)}
        if binary:
            blob = _serialize_bytes(array) if datatype == "BYTES" else np.ascontiguousarray(
                array, dtype=array.dtype.newbyteorder("<")).tobytes()
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        elif datatype == "BYTES":
            entry["data"] = [item if isinstance(item, str) else bytes(item).decode("utf-8", "replace")
                             for item in array.reshape(-1)]
        else:
            if array.dtype.kind == "f" and not np.isfinite(array).all():  # JSON has no NaN or infinity
                raise bad(f"Output '{name}' holds NaN or infinite values, which JSON cannot carry; ask for it as "
                          "binary data (binary_data: true), or check the input values that made them.")
            entry["data"] = array.reshape(-1).tolist()
        described.append(entry)
    header = json.dumps({**head, "outputs": described}, separators=(",", ":"), allow_nan=False).encode("utf-8")
    if not blobs:
        return header, {}, "application/json"
    return header + b"".join(blobs), {"Inference-Header-Content-Length": str(len(header))}, "application/octet-stream"
