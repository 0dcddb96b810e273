"""The manifest: what manifest.json holds, and what Artifact.open refuses in one before it
trusts any field, so that a malformed or tampered manifest is one ArtifactError rather than a
KeyError or TypeError somewhere later.

Manifest schema v1 (JSON):
    schema_version  1
    format_revision 3 (FORMAT_REVISION; absent: 1)
    task            "image-classification" | "image-embedding" | "clip" | "audio-classification"
    source          {"reference", "architecture", "config_sha256", ...}
    graphs          {graph: {"inputs": [TensorInfo], "outputs": [TensorInfo], "dynamic_axes": {...}}}
    files           [{"path", "sha256", "size", "role", ...}]; role "model" entries also carry
                    "graph", "target", "precision" and "parity" (a ParityReport as a dict)
    preprocess      {"image": {...}} | {"text": {...}} | {"audio": {...}}
    labels          [str] or null
    postprocess     {"activation": "softmax" | "sigmoid" | "none" | null, ...} (vlmedge.tasks.base.ACTIVATIONS)
    versions        {"vlmedge", "torch", "onnx", "onnxruntime", ...}
    created         ISO 8601 UTC time
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vlmedge.errors import ArtifactError
from vlmedge.registry import TASKS

SCHEMA_VERSION = 1
# Raised whenever an export starts writing a field otherwise for the same model (a fix), so that
# the runtime and the user (vlmedge info) can tell an artifact written before it. 2: one-output
# heads a sigmoid and regression heads raw (were a softmax), dynamic int8 files one_item_per_call.
# 3: AST features at rates other than 16 kHz framed as torchaudio's Kaldi fbank, 25 ms every 10 ms
# (were 400 samples every 160, transformers' path without torchaudio).
FORMAT_REVISION = 3
MANIFEST_NAME = "manifest.json"
# Session options a model entry may carry to its backend (plain values only, no paths).
MANIFEST_SESSION_OPTIONS = frozenset({"inference_precision", "performance_hint", "optimization", "one_item_per_call"})
# The quantization method (an entry's parity["quantization"]["method"]) of ONNX Runtime's dynamic
# int8, whose activation scales are taken per call: its files run each item alone.
DYNAMIC_INT8_METHOD = "ort-dynamic"


def check_manifest_shape(manifest: Any, where: Path) -> None:
    """Refuses a manifest of another schema version or whose fields the runtime reads have
    the wrong types, naming what is wrong (ArtifactError)."""
    if not isinstance(manifest, dict):
        raise ArtifactError(f"{where} is not a manifest object; re-export the artifact.")
    version = manifest.get("schema_version")
    if isinstance(version, bool) or not isinstance(version, int):  # "1" is a damaged field, not another version
        raise ArtifactError(f"{where} has a schema_version of {version!r}, not a whole number; the artifact is "
                            "corrupt, re-export it.")
    if version != SCHEMA_VERSION:
        raise ArtifactError(
            f"{where} has schema version {version!r}, but this vlmedge reads version {SCHEMA_VERSION}; "
            "re-export the artifact with this version of vlmedge or install the version that wrote it."
        )
    revision = manifest.get("format_revision", 1)
    if isinstance(revision, bool) or not isinstance(revision, int) or revision < 1:
        raise ArtifactError(f"{where} has a format_revision of {revision!r}, not a whole number from 1; the artifact "
                            "is corrupt, re-export it.")
    if revision > FORMAT_REVISION:
        raise ArtifactError(f"{where} has format revision {revision}, written by a newer vlmedge than this one (which "
                            f"reads up to {FORMAT_REVISION}); upgrade vlmedge or re-export the artifact with this one.")
    for key, kind in (("task", str), ("files", list), ("graphs", dict), ("preprocess", dict)):
        if not isinstance(manifest.get(key), kind):
            raise ArtifactError(f"{where} lacks a valid '{key}' field; the artifact is corrupt, re-export it.")
    _check_fields_shape(manifest, where)


def _malformed(where: Path, what: str) -> ArtifactError:
    return ArtifactError(f"{where} is malformed: {what}; the artifact is corrupt or tampered with, re-export it.")


def _check_tensor_infos(value: Any, where: Path, graph: str, kind: str) -> None:
    if not isinstance(value, list) or not value:
        raise _malformed(where, f"graph '{graph}' has no list of {kind}")
    for info in value:
        if not (isinstance(info, dict) and isinstance(info.get("name"), str) and isinstance(info.get("dtype"), str)
                and isinstance(info.get("shape"), list)
                and all(isinstance(d, str) or (isinstance(d, int) and not isinstance(d, bool)) for d in info["shape"])):
            raise _malformed(where, f"graph '{graph}' has a malformed entry in its {kind}: {info!r:.200}")


def _check_fields_shape(manifest: dict[str, Any], where: Path) -> None:
    """Types of every field the runtime reads, so a bad manifest is an ArtifactError
    here rather than a KeyError or TypeError somewhere later."""
    graphs = manifest["graphs"]
    if not graphs:
        raise _malformed(where, "it lists no graphs")
    for name, graph in graphs.items():
        if not isinstance(graph, dict):
            raise _malformed(where, f"graph '{name}' is a {type(graph).__name__}, not an object")
        _check_tensor_infos(graph.get("inputs"), where, name, "inputs")
        _check_tensor_infos(graph.get("outputs"), where, name, "outputs")
    for kind, spec in manifest["preprocess"].items():
        if not isinstance(spec, dict):
            raise _malformed(where, f"preprocess['{kind}'] is a {type(spec).__name__}, not an object")
    labels = manifest.get("labels")
    if labels is not None and not (isinstance(labels, list) and all(isinstance(x, str) for x in labels)):
        raise _malformed(where, "labels must be a list of strings or null")
    _check_task_shape(manifest, where)
    if not isinstance(manifest.get("postprocess") or {}, dict):
        raise _malformed(where, "postprocess must be an object or null")
    for key in ("source", "versions", "export"):
        if not isinstance(manifest.get(key, {}), dict):
            raise _malformed(where, f"{key} must be an object")
    seen: set[str] = set()
    modelled: set[str] = set()
    for entry in manifest["files"]:
        if not isinstance(entry, dict) or not all(
            isinstance(entry.get(k), t) for k, t in (("path", str), ("sha256", str), ("size", int), ("role", str))
        ) or isinstance(entry["size"], bool) or entry["size"] < 0:
            what = entry.get("path") if isinstance(entry, dict) else entry
            raise _malformed(where, f"the file entry {what!r:.100} needs path, sha256 and role strings and a "
                                    "non-negative integer size")
        if entry["path"] in seen or entry["path"] == MANIFEST_NAME:
            raise _malformed(where, f"it lists {entry['path']!r} twice")
        seen.add(entry["path"])
        if entry["role"] != "model":
            continue
        if not all(isinstance(entry.get(k), str) for k in ("graph", "target", "precision")):
            raise _malformed(where, f"model file {entry['path']!r} lacks its graph, target or precision")
        if entry["graph"] not in graphs:
            raise _malformed(where, f"model file {entry['path']!r} is of graph '{entry['graph']}', which it does not describe")
        modelled.add(entry["graph"])
        _check_session_options(entry, where)
        _check_parity(entry, where)
    if set(graphs) - modelled:
        raise _malformed(where, f"graph(s) {sorted(set(graphs) - modelled)} have no model file")


def _check_task_shape(manifest: dict[str, Any], where: Path) -> None:
    """A registered task's artifact holds the graphs and preprocessing sections the
    registry declares for it (an unknown task is refused later, by whoever runs it)."""
    task = TASKS.get(manifest["task"])
    if task is None:
        return
    graphs = manifest["graphs"]
    if len(graphs) != len(task.graphs):
        raise _malformed(where, f"the {task.name} task has {len(task.graphs)} graph(s), not {len(graphs)} ({sorted(graphs)})")
    missing = set(task.preprocess) - set(manifest["preprocess"])
    if missing:
        raise _malformed(where, f"the {task.name} task needs preprocess {sorted(missing)}")
    for name, keys in task.sections.items():
        section = manifest.get(name)
        if not isinstance(section, dict) or not set(keys) <= set(section):
            raise _malformed(where, f"the {task.name} task needs an '{name}' section with {', '.join(keys)}")
    labels = manifest.get("labels")
    if task.scores_labels and isinstance(labels, list):
        (graph,) = graphs.values()  # such a task has one graph (checked above)
        shape = graph["outputs"][0]["shape"]
        if shape and isinstance(shape[-1], int) and shape[-1] != len(labels):
            raise _malformed(where, f"it names {len(labels)} labels for a model that scores {shape[-1]} classes")
        # an image classifier only: transformers' audio pipeline softmaxes one logit too, and vlmedge with it
        if (task.name == "image-classification" and len(labels) == 1  # softmax is also what no activation means
                and ((manifest.get("postprocess") or {}).get("activation") or "softmax") == "softmax"):
            raise ArtifactError(f"{where} scores its one output with a softmax, which is 1.0 for every image (as an "
                                "earlier vlmedge wrote it: a one-output head is a sigmoid, a regression head its "
                                "raw value); re-export the artifact with this version of vlmedge.")


_METRICS = ("cosine_min", "cosine_mean", "max_abs", "mean_abs", "top1", "top5", "prob_max_abs")


def _gate_keys() -> tuple[set[str], set[str]]:
    """(required, allowed) keys of a stored Gate, from the dataclass itself."""
    import dataclasses

    from vlmedge.parity import Gate

    fields = dataclasses.fields(Gate)
    return ({f.name for f in fields if f.default is dataclasses.MISSING}, {f.name for f in fields})


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_parity(entry: dict[str, Any], where: Path) -> None:
    """The parity report's fields that load, info, check and bench read: a report (when not
    empty) has passed, samples and per-output metrics; the optional parts have their types."""
    report = entry.get("parity")
    if not report:
        return
    bad = f"the parity report of {entry['path']!r}"
    if not isinstance(report, dict):
        raise _malformed(where, f"{bad} is not an object")
    outputs, gate = report.get("outputs"), report.get("gate")
    accuracy, quantization = report.get("accuracy"), report.get("quantization")
    checks = {
        "passed": isinstance(report.get("passed"), bool),
        "samples": isinstance(report.get("samples"), int) and not isinstance(report.get("samples"), bool),
        "outputs": isinstance(outputs, dict) and bool(outputs) and all(
            isinstance(m, dict) and all(_number(m[k]) for k in _METRICS if k in m) for m in outputs.values()),
        "gate": gate is None or (isinstance(gate, dict) and _gate_keys()[0] <= set(gate) <= _gate_keys()[1]
                                 and all(v is None or _number(v) for v in gate.values())),
        "latency_ms": report.get("latency_ms") is None or _number(report["latency_ms"]),
        "speedup_vs_onnx_fp32": report.get("speedup_vs_onnx_fp32") is None or _number(report["speedup_vs_onnx_fp32"]),
        "accuracy": accuracy is None or (isinstance(accuracy, dict) and _number(accuracy.get("top1"))),
        "quantization": quantization is None or (isinstance(quantization, dict)
                                                 and isinstance(quantization.get("method"), str)
                                                 and _number(quantization.get("level"))),
    }
    wrong = [key for key, ok in checks.items() if not ok]
    if wrong:
        raise _malformed(where, f"{bad} has an invalid {', '.join(wrong)}")


def _check_session_options(entry: dict[str, Any], where: Path) -> None:
    """Options a manifest may pass to a backend: a small allowlist of plain values, so an
    artifact cannot point a backend at paths of its choosing (e.g. a cache_dir to write to)."""
    options = entry.get("session_options", {})
    if not isinstance(options, dict):
        raise _malformed(where, f"session_options of {entry['path']!r} is not an object")
    for key, value in options.items():
        if key not in MANIFEST_SESSION_OPTIONS or not isinstance(value, (str, int, float, bool, type(None))):
            raise ArtifactError(
                f"{where} asks the backend for session option {key}={value!r:.80} for {entry['path']}, which an artifact "
                f"may not set (allowed: {', '.join(sorted(MANIFEST_SESSION_OPTIONS))}); refusing to load it."
            )
