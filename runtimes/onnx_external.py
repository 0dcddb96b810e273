"""Finds the external-data paths an ONNX file refers to, without the onnx package.

ONNX Runtime and OpenVINO open whatever path a tensor's `external_data.location` names,
so a crafted model can make them read files outside its artifact. This walks the
protobuf just far enough to list those locations before any parser runs.
"""

from __future__ import annotations

import mmap
import os
from pathlib import Path

from vlmedge.errors import ArtifactError

# Protobuf field numbers from onnx.proto3.
_MODEL_GRAPH, _MODEL_FUNCTIONS = 7, 25
_GRAPH_NODE, _GRAPH_INITIALIZER, _GRAPH_SPARSE_INITIALIZER = 1, 5, 15
_FUNCTION_NODE = 7
_NODE_ATTRIBUTE = 5
_ATTR_T, _ATTR_G, _ATTR_TENSORS, _ATTR_GRAPHS, _ATTR_SPARSE, _ATTR_SPARSES = 5, 6, 10, 11, 22, 23
_SPARSE_VALUES, _SPARSE_INDICES = 1, 2
_TENSOR_EXTERNAL_DATA = 13
_ENTRY_KEY, _ENTRY_VALUE = 1, 2


def _varint(buf: memoryview, pos: int) -> tuple[int, int]:
    result, shift = 0, 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise ValueError("truncated varint")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def _fields(buf: memoryview):
    """Yields (field number, payload) for length-delimited fields; skips the others."""
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            _, pos = _varint(buf, pos)
        elif wire == 1:
            pos += 8
        elif wire == 5:
            pos += 4
        elif wire == 2:
            length, pos = _varint(buf, pos)
            if pos + length > len(buf):
                raise ValueError("truncated field")
            yield number, buf[pos:pos + length]
            pos += length
        else:
            raise ValueError(f"unsupported wire type {wire}")
        if pos > len(buf):
            raise ValueError("truncated field")


def _tensor_locations(buf: memoryview, out: list[str]) -> None:
    for number, payload in _fields(buf):
        if number == _TENSOR_EXTERNAL_DATA:
            entry = dict(_fields(payload))
            if bytes(entry.get(_ENTRY_KEY, b"")) == b"location":
                out.append(bytes(entry.get(_ENTRY_VALUE, b"")).decode("utf-8", "replace"))


def _sparse_locations(buf: memoryview, out: list[str]) -> None:
    for number, payload in _fields(buf):
        if number in (_SPARSE_VALUES, _SPARSE_INDICES):
            _tensor_locations(payload, out)


def _node_locations(buf: memoryview, out: list[str]) -> None:
    for number, attribute in _fields(buf):
        if number != _NODE_ATTRIBUTE:
            continue
        for field, payload in _fields(attribute):
            if field in (_ATTR_T, _ATTR_TENSORS):
                _tensor_locations(payload, out)
            elif field in (_ATTR_G, _ATTR_GRAPHS):
                _graph_locations(payload, out)
            elif field in (_ATTR_SPARSE, _ATTR_SPARSES):
                _sparse_locations(payload, out)


def _graph_locations(buf: memoryview, out: list[str]) -> None:
    for number, payload in _fields(buf):
        if number == _GRAPH_INITIALIZER:
            _tensor_locations(payload, out)
        elif number == _GRAPH_SPARSE_INITIALIZER:
            _sparse_locations(payload, out)
        elif number == _GRAPH_NODE:
            _node_locations(payload, out)


def external_data_locations(model_path: Path) -> list[str]:
    """Every external-data location named in an ONNX file, in order of appearance."""
    # Mapped, not read: the walk touches only the headers of a multi-GB file's tensors.
    with open(model_path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        data = memoryview(mmap.mmap(f.fileno(), size, access=mmap.ACCESS_READ) if size else b"")
    out: list[str] = []
    try:
        for number, payload in _fields(data):
            if number == _MODEL_GRAPH:
                _graph_locations(payload, out)
            elif number == _MODEL_FUNCTIONS:
                for field, node in _fields(payload):
                    if field == _FUNCTION_NODE:
                        _node_locations(node, out)
    except ValueError as exc:
        raise ArtifactError(f"{model_path.name} is not a valid ONNX file ({exc}); re-export the artifact.") from None
    except RecursionError:  # subgraphs nested deeper than any real model
        raise ArtifactError(f"{model_path.name} nests subgraphs too deeply to be a real model; "
                            "refusing to load it.") from None
    return out


def check_external_data(model_path: Path, root: Path) -> None:
    """Refuses an ONNX file whose external data lies outside `root` or behind a link."""
    resolved_root = root.resolve()
    # each distinct location once: a saved model names its one weights file in every tensor
    for location in dict.fromkeys(external_data_locations(model_path)):
        candidate = Path(location)
        target = (model_path.parent / candidate)
        if not location or "\x00" in location or candidate.is_absolute() or ".." in candidate.parts or \
                "\\" in location or any((model_path.parent / Path(*candidate.parts[:i + 1])).is_symlink()
                                       for i in range(len(candidate.parts))) or \
                resolved_root not in target.resolve().parents:
            raise ArtifactError(
                f"{model_path.name} refers to external data at {location!r}, outside its artifact folder; "
                "refusing to load it."
            )


def model_files(model_path: Path) -> list[Path]:
    """The ONNX file and the external-data files it names, each once."""
    return [model_path] + [model_path.parent / loc for loc in dict.fromkeys(external_data_locations(model_path))]
