"""`vlmedge check`: re-runs the parity inputs stored in an artifact through each of its
model files on this machine and compares with the stored source outputs. No torch needed.

The rows the bundled sample files made are made again first, from the artifact's copies of
those files, with this machine's decoders and the manifest's preprocessing as it reads now, and
run in place of the stored ones: a preprocessing section edited after the export, or a decoder
here that reads a file otherwise, shows as a parity miss rather than passing unseen."""

from __future__ import annotations

import math
import warnings
import zipfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from vlmedge.artifact import Artifact
from vlmedge.errors import ArtifactError, BackendUnavailableError, UnverifiedWarning, first_line
from vlmedge.parity import GATES, parity_report, recorded_gate, run_in_batches
from vlmedge.preprocess.samples import caption_lines, in_row_order, sample_kind, sample_rows
from vlmedge.registry import task_named
from vlmedge.runtimes.base import backend_named, backend_of_target, unavailable_reason
from vlmedge.runtimes.select import open_entry

PARITY_FILE = "samples/parity.npz"
# An export stores eleven rows per graph at most (the bundled samples and a few random ones) and
# the source's outputs for them: Donut's 2560x1920 canvas in float32 makes 619 MiB of them. A file
# declaring more than this is corrupt or a zip bomb (a few MB that inflate to GBs), and is
# refused before any array is allocated or inflated.
PARITY_MAX_BYTES = 2**30
# One array per input and per output of each graph: two graphs of a few each, a dozen at most.
PARITY_MAX_ARRAYS = 64
# What reading a hostile or damaged npz can raise: zipfile raises RuntimeError for an encrypted
# member and NotImplementedError for an unknown compression, zlib.error for corrupt deflate data.
_PARITY_READ_ERRORS = (ValueError, OSError, EOFError, KeyError, zipfile.BadZipFile, RuntimeError,
                       NotImplementedError, zlib.error)


def stored_parity_inputs(artifact: Artifact) -> dict[str, dict[str, dict[str, np.ndarray]]]:
    """{graph: {"input": {...}, "reference": {...}}} from samples/parity.npz (never unpickled)."""
    path = artifact.path_of(PARITY_FILE)
    if not any(e["path"] == PARITY_FILE for e in artifact.files):
        raise ArtifactError(f"Artifact {artifact.root} has no stored parity inputs; re-export it to check it.")
    grouped: dict[str, dict[str, dict[str, np.ndarray]]] = {}
    try:
        _check_parity_arrays(path, artifact.root)
        with np.load(path, allow_pickle=False) as data:
            for key in data.files:
                graph, kind, name = key.split(".", 2)
                grouped.setdefault(graph, {}).setdefault(kind, {})[name] = data[key]
    except MemoryError:  # the arrays are within PARITY_MAX_BYTES: it is this machine that is short
        raise ArtifactError(f"This machine ran out of memory loading {PARITY_FILE} of {artifact.root}; "
                            "free memory and run the check again.") from None
    except _PARITY_READ_ERRORS as exc:
        raise ArtifactError(f"{PARITY_FILE} in {artifact.root} cannot be read ({first_line(exc)}); "
                            "re-export the artifact.") from None
    return grouped


def _check_parity_arrays(path: Path, root: Path) -> None:
    """Refuses a parity file of too many arrays, of arrays that together declare more than
    PARITY_MAX_BYTES, or of Python objects, from each member's .npy header alone: numpy
    allocates what a header declares before it reads the data."""
    with zipfile.ZipFile(path) as archive:
        members = archive.infolist()
        if len(members) > PARITY_MAX_ARRAYS:
            raise ArtifactError(f"{PARITY_FILE} in {root} holds {len(members):,} arrays where parity samples "
                                f"need {PARITY_MAX_ARRAYS} at most; re-export the artifact.")
        declared = 0
        for member in members:
            with archive.open(member) as stream:
                shape, dtype = _npy_header(stream)
            if dtype.hasobject:
                raise ArtifactError(f"{PARITY_FILE} in {root} holds Python objects in {member.filename[:100]!r}, which "
                                    "vlmedge never unpickles; re-export the artifact.")
            declared += math.prod(shape) * dtype.itemsize
        if declared > PARITY_MAX_BYTES:
            raise ArtifactError(f"{PARITY_FILE} in {root} declares {declared / 2**20:,.0f} MiB of arrays where parity "
                                f"samples need {PARITY_MAX_BYTES // 2**20} MiB at most; re-export the artifact.")


def _npy_header(stream) -> tuple[tuple[int, ...], np.dtype]:
    """The shape and dtype an .npy stream declares; ValueError where it is no .npy numpy.save
    writes (np.load would return such a member's bytes whole, inflating them all)."""
    version = np.lib.format.read_magic(stream)
    if version == (1, 0):
        shape, _, dtype = np.lib.format.read_array_header_1_0(stream)
    elif version == (2, 0):
        shape, _, dtype = np.lib.format.read_array_header_2_0(stream)
    else:
        raise ValueError(f"an array of .npy format version {version[0]}.{version[1]}")
    if any(size < 0 for size in shape):
        raise ValueError(f"an array of negative shape {list(shape)}")
    return shape, dtype


def check_artifact(path: str | Path, device: str = "cpu", batch_size: int = 8,
                   backend: str | None = None) -> list[dict[str, Any]]:
    """One parity report per model file (of `backend`'s target only, when given) whose backend
    is installed here; files whose backend is absent, or cannot reach a device other than the
    CPU here, get a report with "skipped" set to the reason."""
    artifact = Artifact.open(path)
    stored = stored_parity_inputs(artifact)
    remade = remake_sample_rows(artifact, stored)
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
                # the artifact's own files, hashed whole, never a compiled model of the cache: it is
                # they that are checked, and a cache entry gone bad must not be blamed on them
                session = open_entry(artifact, entry, backend=backend.name, device=device, cache=False)
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
        if entry["graph"] in remade:
            report["sample_files"] = remade[entry["graph"]]
            difference = remade[entry["graph"]]["max_input_difference"]
            if not report["passed"] and difference > 0:  # say where the miss may come from
                report["failures"].append(
                    f"the bundled samples, decoded and preprocessed here, differ from the inputs the export verified "
                    f"by up to {difference:.3g}: the manifest's preprocessing was edited, or this machine decodes "
                    f"them otherwise (Pillow, soundfile, soxr or tokenizers versions)")
        if entry["precision"] in GATES and gate != GATES[entry["precision"]]:  # as the export records it
            report["gate_default"] = GATES[entry["precision"]].to_dict()
        reports.append(report)
    return reports


def remake_sample_rows(artifact: Artifact, stored: dict[str, dict[str, dict[str, np.ndarray]]]) -> dict[str, Any]:
    """Makes the rows of the artifact's bundled sample files again (vlmedge.preprocess.samples)
    and puts them in `stored` in place of the stored ones. Per graph: the files, and the
    largest difference between a remade input and the stored one (0 where this machine
    preprocesses as the export's did)."""
    files: dict[str, list[str]] = {}
    for entry in artifact.files:
        kind = sample_kind(entry["path"]) if entry.get("role") == "sample" else None
        if kind:
            files.setdefault(kind, []).append(entry["path"])
    task, sections = task_named(artifact.task, artifact.root), artifact.manifest.get("preprocess") or {}
    remade = {}
    for kind, paths in files.items():
        graph = next((m.graph for m in task.methods if m.input == kind), None)
        inputs = stored.get(graph, {}).get("input")
        if not inputs or not isinstance(sections.get(kind), dict):
            continue
        paths = in_row_order(paths)
        if kind == "text" and not any(caption_lines(artifact.path_of(p)) for p in paths):
            continue  # a captions file without captions makes no rows
        rows = sample_rows(kind, [artifact.path_of(p) for p in paths], sections[kind], artifact.root)
        rows = rows if isinstance(rows, dict) else {next(iter(inputs)): rows}
        difference = 0.0
        for name, new in rows.items():
            old = inputs.get(name)
            if old is None:
                continue
            if old.shape[1:] != new.shape[1:] or len(old) < len(new):
                raise ArtifactError(f"The bundled samples of {artifact.root}, preprocessed as its manifest says, make "
                                    f"{name} rows of shape {list(new.shape[1:])}, but its model was verified on "
                                    f"{list(old.shape[1:])}; its manifest was edited or is corrupt, so re-export it.")
            difference = max(difference, float(np.max(np.abs(new.astype(np.float64) - old[:len(new)]))))
            inputs[name] = np.concatenate([new.astype(old.dtype), old[len(new):]])
        remade[graph] = {"files": [Path(p).name for p in paths], "max_input_difference": difference}
    return remade


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
