"""`vlmedge check`: re-runs the parity inputs stored in an artifact through each of its
model files on this machine and compares with the stored source outputs. No torch needed."""

from __future__ import annotations

import importlib.util
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from vlmedge.artifact import Artifact
from vlmedge.errors import ArtifactError
from vlmedge.parity import GATES, Gate, parity_report, run_in_batches
from vlmedge.runtimes.base import BACKENDS, TARGET_OF_BACKEND, open_session
from vlmedge.runtimes.onnx_external import check_external_data

PARITY_FILE = "samples/parity.npz"
BACKEND_OF_TARGET = {target: backend for backend, target in TARGET_OF_BACKEND.items()}


def stored_parity_inputs(artifact: Artifact) -> dict[str, dict[str, dict[str, np.ndarray]]]:
    """{graph: {"input": {...}, "reference": {...}}} from samples/parity.npz (never unpickled)."""
    path = artifact.path_of(PARITY_FILE)
    if not any(e["path"] == PARITY_FILE for e in artifact.files):
        raise ArtifactError(f"Artifact {artifact.root} has no stored parity inputs; re-export it to check it.")
    grouped: dict[str, dict[str, dict[str, np.ndarray]]] = {}
    try:
        with np.load(path, allow_pickle=False) as data:
            for key in data.files:
                graph, kind, name = key.split(".", 2)
                grouped.setdefault(graph, {}).setdefault(kind, {})[name] = data[key]
    except (ValueError, OSError, EOFError, KeyError, zipfile.BadZipFile) as exc:
        raise ArtifactError(f"{PARITY_FILE} in {artifact.root} cannot be read ({exc}); re-export the artifact.") from None
    return grouped


def check_artifact(path: str | Path, device: str = "cpu", batch_size: int = 8) -> list[dict[str, Any]]:
    """One parity report per model file whose backend is installed here; files whose
    backend is absent get a report with "skipped" set to the reason."""
    artifact = Artifact.open(path)
    stored = stored_parity_inputs(artifact)
    reports = []
    for entry in artifact.model_entries():
        backend = BACKEND_OF_TARGET.get(entry["target"], entry["target"])
        context = {"graph": entry["graph"], "target": entry["target"], "precision": entry["precision"],
                   "backend": backend, "file": entry["path"]}
        if backend not in BACKENDS:  # never import a module named by the manifest
            reports.append({**context, "skipped": f"this vlmedge has no backend for target '{entry['target']}'",
                            "passed": None})
            continue
        package = BACKENDS[backend][1]
        if importlib.util.find_spec(package) is None:
            reports.append({**context, "skipped": f"{package} is not installed", "passed": None})
            continue
        gate_dict = (entry.get("parity") or {}).get("gate")
        if not gate_dict and entry["precision"] not in GATES:
            raise ArtifactError(f"{entry['path']} in {artifact.root} has precision '{entry['precision']}' and no gate; "
                                "this vlmedge cannot check it. Upgrade vlmedge or re-export the artifact.")
        gate = Gate(**gate_dict) if gate_dict else GATES[entry["precision"]]
        model_path = artifact.path_of(entry)
        if entry["target"] == "onnx" or model_path.suffix.lower() == ".onnx":  # ORT parses any name
            check_external_data(model_path, artifact.root)
        # the options the file was verified with (OpenVINO's inference precision, for one)
        session = open_session(model_path, backend=backend, device=device, **entry.get("session_options", {}))
        data = stored.get(entry["graph"], {})
        if not data.get("input") or not data.get("reference"):
            raise ArtifactError(f"{PARITY_FILE} in {artifact.root} holds no inputs or outputs for graph "
                                f"'{entry['graph']}'; re-export the artifact to check it.")
        compare = {name: "logits" if "top1" in metrics else "embedding"
                   for name, metrics in (entry.get("parity") or {}).get("outputs", {}).items()}
        actual = run_in_batches(session, data["input"], batch_size)
        if set(data["reference"]) - set(actual):
            raise ArtifactError(f"{entry['path']} in {artifact.root} does not produce the stored outputs "
                                f"{sorted(set(data['reference']) - set(actual))}; re-export the artifact.")
        reports.append(parity_report(data["reference"], actual, compare, gate, provider=session.provider, **context))
    return reports
