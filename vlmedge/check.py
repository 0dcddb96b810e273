"""`vlmedge check`: re-runs the parity inputs stored in an artifact through each of its
model files on this machine and compares with the stored source outputs. No torch needed."""

from __future__ import annotations

import warnings
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from vlmedge.artifact import Artifact
from vlmedge.errors import ArtifactError, BackendUnavailableError, UnverifiedWarning
from vlmedge.parity import GATES, parity_report, recorded_gate, run_in_batches
from vlmedge.runtimes.base import backend_named, backend_of_target, unavailable_reason
from vlmedge.runtimes.select import open_entry

PARITY_FILE = "samples/parity.npz"


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


def check_artifact(path: str | Path, device: str = "cpu", batch_size: int = 8,
                   backend: str | None = None) -> list[dict[str, Any]]:
    """One parity report per model file (of `backend`'s target only, when given) whose backend
    is installed here; files whose backend is absent, or cannot reach a device other than the
    CPU here, get a report with "skipped" set to the reason."""
    artifact = Artifact.open(path)
    stored = stored_parity_inputs(artifact)
    reports = []
    for entry in _entries_of(artifact, backend):
        backend = backend_of_target(entry["target"])  # never import a module named by the manifest
        context = {"graph": entry["graph"], "target": entry["target"], "precision": entry["precision"],
                   "backend": backend.name if backend else entry["target"], "file": entry["path"]}
        if backend is None:
            reports.append({**context, "skipped": f"this vlmedge has no backend for target '{entry['target']}'",
                            "passed": None})
            continue
        reason = unavailable_reason(backend)
        if reason:
            reports.append({**context, "skipped": reason, "passed": None})
            continue
        gate = recorded_gate(entry) or GATES.get(entry["precision"])
        if gate is None:
            raise ArtifactError(f"{entry['path']} in {artifact.root} has precision '{entry['precision']}' and no gate; "
                                "this vlmedge cannot check it. Upgrade vlmedge or re-export the artifact.")
        # the options the file was verified with (OpenVINO's inference precision, for one)
        try:
            with warnings.catch_warnings():  # this is the check that warning asks for; the report names the provider
                warnings.simplefilter("ignore", UnverifiedWarning)
                session = open_entry(artifact, entry, backend=backend.name, device=device)
        except BackendUnavailableError as exc:
            if device == "cpu":
                raise
            # one backend without the device (ONNX Runtime's CPU build) still lets the others' files be checked
            reports.append({**context, "skipped": str(exc), "passed": None})
            continue
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
        report = parity_report(data["reference"], actual, compare, gate, provider=session.provider, **context)
        if entry["precision"] in GATES and gate != GATES[entry["precision"]]:  # as the export records it
            report["gate_default"] = GATES[entry["precision"]].to_dict()
        reports.append(report)
    return reports


def _entries_of(artifact: Artifact, backend: str | None) -> list[dict[str, Any]]:
    """The model entries to check: all, or those `backend` reads."""
    entries = artifact.model_entries()
    if backend is None:
        return entries
    target = backend_named(backend).target
    if not any(e["target"] == target for e in entries):
        have = sorted({e["target"] for e in entries})
        raise BackendUnavailableError(f"Artifact {artifact.root} has no {target} files to check with {backend} "
                                      f"(it has: {', '.join(have)}); choose another backend or leave it out.")
    return [e for e in entries if e["target"] == target]
