"""Finds the external-data paths an ONNX file refers to, without the onnx package.

ONNX Runtime and OpenVINO open whatever path a tensor's `external_data.location` names,
so a crafted model can make them read files outside its artifact. This walks the
protobuf just far enough to list those locations before any parser runs, and to count
the nodes its model-local functions would make once ONNX Runtime inlines them.
"""

from __future__ import annotations

import mmap
import os
from pathlib import Path
from typing import Iterable

from vlmedge.errors import ArtifactError

# Protobuf field numbers from onnx.proto3.
_MODEL_GRAPH, _MODEL_FUNCTIONS = 7, 25
_GRAPH_NODE, _GRAPH_INITIALIZER, _GRAPH_SPARSE_INITIALIZER = 1, 5, 15
_FUNCTION_NAME, _FUNCTION_NODE, _FUNCTION_DOMAIN, _FUNCTION_OVERLOAD = 1, 7, 10, 13
_NODE_OP_TYPE, _NODE_ATTRIBUTE, _NODE_DOMAIN, _NODE_OVERLOAD = 4, 5, 7, 8
_ATTR_T, _ATTR_G, _ATTR_TENSORS, _ATTR_GRAPHS, _ATTR_SPARSE, _ATTR_SPARSES = 5, 6, 10, 11, 22, 23
_SPARSE_VALUES, _SPARSE_INDICES = 1, 2
_TENSOR_EXTERNAL_DATA = 13
_ENTRY_KEY, _ENTRY_VALUE = 1, 2

# ONNX Runtime inlines every call of a model-local function before it runs anything, so a
# few functions that each call the next twice make 2^depth nodes, which it spins on for
# ever. vlmedge's own exports hold no functions, and the largest models it exports have a
# few ten thousand nodes: a file that would have more than this is refused unparsed.
MAX_INLINED_NODES = 1_000_000


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


def _locations(data: memoryview) -> list[str]:
    out: list[str] = []
    for number, payload in _fields(data):
        if number == _MODEL_GRAPH:
            _graph_locations(payload, out)
        elif number == _MODEL_FUNCTIONS:
            for field, node in _fields(payload):
                if field == _FUNCTION_NODE:
                    _node_locations(node, out)
    return out


class _RecursiveCall(Exception):
    """A model-local function that calls itself, directly or through others."""


class _InlinedNodeCounter:
    """Counts the nodes of a model's graphs once its model-local functions are inlined,
    without inlining them: each function's count is worked out once and reused for every
    call. Counts stop at MAX_INLINED_NODES + 1, all that matters past the bound."""

    def __init__(self, functions: dict[tuple[str, str, str], list[memoryview]]) -> None:
        self.functions = functions  # (domain, name, overload) -> the function's nodes
        self.inlined: dict[tuple[str, str, str], int] = {}
        self.inlining: set[tuple[str, str, str]] = set()

    def graph(self, buf: memoryview) -> int:
        return self.nodes(node for number, node in _fields(buf) if number == _GRAPH_NODE)

    def nodes(self, nodes) -> int:
        total = 0
        for node in nodes:
            total = min(total + self.node(node), MAX_INLINED_NODES + 1)
        return total

    def node(self, buf: memoryview) -> int:
        """1, or the called function's count; plus the nodes of its subgraphs (If, Loop, Scan)."""
        call, subgraphs = _node_call(buf)
        count = self.function(call) if call in self.functions else 1
        return count + sum(self.graph(subgraph) for subgraph in subgraphs)

    def function(self, key: tuple[str, str, str]) -> int:
        if key not in self.inlined:
            if key in self.inlining:
                raise _RecursiveCall(".".join(part for part in key if part))
            self.inlining.add(key)
            self.inlined[key] = self.nodes(self.functions[key])
            self.inlining.discard(key)
        return self.inlined[key]


def _text(payload: memoryview) -> str:
    return bytes(payload).decode("utf-8", "replace")


def _keyed(buf: memoryview, key_fields: tuple[int, int, int],
           wanted: int) -> tuple[tuple[str, str, str], list[memoryview]]:
    """A message's key, the text of its three `key_fields` ("" where absent), and the
    payloads of its `wanted` field."""
    key = dict.fromkeys(key_fields, "")
    found = []
    for number, payload in _fields(buf):
        if number in key:
            key[number] = _text(payload)
        elif number == wanted:
            found.append(payload)
    return (key[key_fields[0]], key[key_fields[1]], key[key_fields[2]]), found


def _node_call(buf: memoryview) -> tuple[tuple[str, str, str], list[memoryview]]:
    """A node's (domain, op_type, overload), the key of the function it would call, and
    the subgraphs among its attributes."""
    call, attributes = _keyed(buf, (_NODE_DOMAIN, _NODE_OP_TYPE, _NODE_OVERLOAD), _NODE_ATTRIBUTE)
    return call, [graph for attribute in attributes for field, graph in _fields(attribute)
                  if field in (_ATTR_G, _ATTR_GRAPHS)]


def _function_entry(buf: memoryview) -> tuple[tuple[str, str, str], list[memoryview]]:
    """A FunctionProto's (domain, name, overload) and its nodes."""
    return _keyed(buf, (_FUNCTION_DOMAIN, _FUNCTION_NAME, _FUNCTION_OVERLOAD), _FUNCTION_NODE)


def _inlined_node_count(data: memoryview) -> int:
    graphs = [payload for number, payload in _fields(data) if number == _MODEL_GRAPH]
    functions = dict(_function_entry(payload) for number, payload in _fields(data) if number == _MODEL_FUNCTIONS)
    counter = _InlinedNodeCounter(functions)
    return sum(counter.graph(graph) for graph in graphs)


def _walk(model_path: Path, walker):
    """walker(the file's bytes), a malformed file refused with an ArtifactError."""
    # Mapped, not read: the walk touches only the headers of a multi-GB file's tensors.
    with open(model_path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        data = memoryview(mmap.mmap(f.fileno(), size, access=mmap.ACCESS_READ) if size else b"")
    try:
        return walker(data)
    except ValueError as exc:
        raise ArtifactError(f"{model_path.name} is not a valid ONNX file ({exc}); re-export the artifact.") from None
    except RecursionError:  # subgraphs or function calls nested deeper than any real model
        raise ArtifactError(f"{model_path.name} nests subgraphs or functions too deeply to be a real model; "
                            "refusing to load it.") from None


def external_data_locations(model_path: Path) -> list[str]:
    """Every external-data location named in an ONNX file, in order of appearance."""
    return _walk(model_path, _locations)


def check_inlined_size(model_path: Path) -> None:
    """Refuses an ONNX file whose model-local functions call themselves, or would make more
    than MAX_INLINED_NODES nodes once inlined: ONNX Runtime would spin on it for ever."""
    try:
        count = _walk(model_path, _inlined_node_count)
    except _RecursiveCall as exc:
        raise ArtifactError(f"{model_path.name} has a function that calls itself, directly or through others "
                            f"({exc}); refusing to load it.") from None
    if count > MAX_INLINED_NODES:
        raise ArtifactError(f"{model_path.name} would have more than {MAX_INLINED_NODES:,} nodes once its functions "
                            "are inlined, more than any real model; refusing to load it.")


def check_external_data(model_path: Path, root: Path, hashed: Iterable[Path] | None = None) -> None:
    """Refuses an ONNX file whose external data lies outside `root` or behind a link, or
    that ONNX Runtime would spin on for ever (check_inlined_size); called before any parser
    opens the file. `hashed`: the files just verified against the artifact's manifest, where
    every external-data file must be (another listed file would be read with its size
    checked alone)."""
    check_inlined_size(model_path)
    resolved_root = root.resolve()
    verified = None if hashed is None else {file.resolve() for file in hashed}
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
        if verified is not None and target.resolve() not in verified:
            raise ArtifactError(f"{model_path.relative_to(root).as_posix()} in {root} reads its weights from "
                                f"{location!r}, which is not one of its own weights files; the artifact was altered, "
                                "re-export it.")


def model_files(model_path: Path) -> list[Path]:
    """The ONNX file and the external-data files it names, each once."""
    return [model_path] + [model_path.parent / loc for loc in dict.fromkeys(external_data_locations(model_path))]
