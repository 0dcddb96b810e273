"""Choosing a backend and a precision for an artifact, and opening the sessions of its
model files: the one place that turns a manifest entry into a running Session."""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vlmedge.artifact import Artifact
from vlmedge.environment import cpu_flags, cpuinfo
from vlmedge.errors import ArtifactError, BackendUnavailableError, UnverifiedWarning, UsageError, warn_caller
from vlmedge.manifest import DYNAMIC_INT8_METHOD
from vlmedge.parity import PRECISIONS
from vlmedge.runtimes.base import (BACKENDS, Session, backend_named, backend_of_target, check_session_options,
                                   open_session)
from vlmedge.runtimes.onnx_external import check_external_data
from vlmedge.user_cache import cache_enabled, file_identity


def openvino_leads_on_this_cpu() -> bool:
    """Whether this CPU is one where OpenVINO's CPU plugin was measured ahead of ONNX Runtime:
    Intel's, with AMX or without, and AMD's with AVX-512. On an AMD EPYC (Zen 4) the suite
    (benchmarks/README.md) found OpenVINO's fastest passing file at batch 1 ahead of ONNX
    Runtime's on five of its six graphs one day (0.94-3.5x), four the next (0.82-3.4x) and five
    when that day's rows were timed round-robin (0.96-3.35x), its
    bf16 running on AVX512-BF16; other CPUs were not measured."""
    fields = cpuinfo()
    vendor = fields.get("vendor_id", "")
    return vendor == "GenuineIntel" or (vendor == "AuthenticAMD" and "avx512f" in cpu_flags(fields))


def choose_backend(artifact: Artifact, device: str) -> str:
    """'auto': TensorRT files on an NVIDIA device where TensorRT is installed; OpenVINO on Intel
    CPUs, AMD CPUs with AVX-512 and OpenVINO's own devices (GPU, NPU, AUTO); else ONNX Runtime,
    whose providers also take the NVIDIA devices (cuda, tensorrt)."""
    targets = {e["target"] for e in artifact.model_entries()}
    nvidia = device.lower().startswith(("cuda", "tensorrt"))  # never OpenVINO's: it has no such device
    if "tensorrt" in targets and nvidia and importlib.util.find_spec("tensorrt"):
        return "tensorrt"
    if "openvino" in targets and importlib.util.find_spec("openvino") and not nvidia and (
        device != "cpu" or openvino_leads_on_this_cpu()
    ):
        return "openvino"
    if "onnx" in targets:
        return "onnxruntime"
    known = [b.name for b in BACKENDS.values() if b.target in targets]
    if known:
        return known[0]
    raise BackendUnavailableError(f"Artifact {artifact.root} holds no model files this vlmedge can run "
                                  f"(targets: {', '.join(sorted(targets)) or 'none'}); upgrade vlmedge or re-export it.")


# A narrower precision is taken only when it is more than this much faster than a wider one:
# the export's batch-1 timings differ by a few percent from run to run, and an int8 file 4%
# "faster" than fp32 gave up accuracy for nothing.
FASTER_BY = 1.10


def choose_precision(entries: list[dict[str, Any]]) -> str:
    """The widest precision (PRECISIONS: fp32 first) that passed its parity gate and runs
    within FASTER_BY of the fastest that passed, by the latency the export measured; fp32
    when it measured none. A narrower file the export found no faster than the fp32 ONNX file
    (not_faster) is never the default: an exact file was as fast, on ONNX Runtime."""
    from vlmedge.parity import PRECISIONS

    passed = [e for e in entries if (e.get("parity") or {}).get("passed", False)
              and not (e.get("parity") or {}).get("not_faster", False)]
    graphs = {e.get("graph") for e in entries}
    # per precision, the latency of one call of every graph (CLIP: image + text)
    totals: dict[str, dict[Any, float]] = {}
    for e in passed:
        if (e.get("parity") or {}).get("latency_ms"):
            totals.setdefault(e["precision"], {})[e.get("graph")] = e["parity"]["latency_ms"]
    complete = {p: sum(t.values()) for p, t in totals.items() if set(t) == graphs}
    if complete:
        fastest = min(complete.values())
        return next(p for p in PRECISIONS if complete.get(p, float("inf")) <= fastest * FASTER_BY)
    precisions = {e["precision"] for e in (passed or entries)}
    return "fp32" if "fp32" in precisions else sorted(precisions)[0]


@dataclass
class ModelSessions:
    """One session per graph of the artifact, all of one backend and precision."""

    artifact: Artifact
    backend: str
    precision: str
    device: str
    sessions: dict[str, Session]

    @property
    def provider(self) -> str:
        return ", ".join(sorted({s.provider for s in self.sessions.values()}))

    def close(self) -> None:
        """Closes every session (Session.close)."""
        for session in self.sessions.values():
            session.close()

    def __repr__(self) -> str:  # one line: the dataclass's own would print the whole manifest
        return (f"ModelSessions({str(self.artifact.root)!r}, backend={self.backend!r}, precision={self.precision!r}, "
                f"device={self.device!r}, provider={self.provider!r}, graphs={list(self.sessions)})")


def open_entry(artifact: Artifact, entry: dict[str, Any], backend: str | None = None, device: str = "cpu",
               **options: Any) -> Session:
    """Opens one model file of the artifact with the session options it was verified with
    (caller's options win; they must be ones the backend takes: runtimes.base.Backend.options),
    after hashing it and its weights files against the manifest (unless the artifact already
    did), and checks that the file's inputs and outputs are the ones the manifest describes.
    ONNX Runtime checks that a file's external data stays inside the artifact before it
    parses the file (a cache hit parses its own saved model instead).

    The backend's compiled form is cached (vlmedge.runtimes.cache) unless options has
    cache=False or VLMEDGE_NO_CACHE=1 is set; the key uses the manifest's file hashes.
    """
    if backend is None:
        known = backend_of_target(entry["target"])
        if known is None:
            raise BackendUnavailableError(f"{entry['path']} in {artifact.root} is of target '{entry['target']}', "
                                          "which this vlmedge cannot run; upgrade vlmedge.")
        backend = known.name
    check_session_options(backend_named(backend), {k: v for k, v in options.items() if k != "cache"})
    options = {**entry.get("session_options", {}), **options}
    if _dynamic_int8(entry):
        options["one_item_per_call"] = True  # also where an earlier vlmedge did not record it: batchmates moved answers
    options["cache"] = cache_enabled(options.get("cache"))
    files = [artifact.path_of(e) for e in artifact.model_files(entry)]
    before = _identities(files)
    artifact.verify_model(entry, cache=options["cache"])  # before any parser reads the file
    path = artifact.path_of(entry)
    if backend == "onnxruntime":  # it checks the external data of the files it parses, and only those
        check_external_data(path, artifact.root, hashed=files)  # ONNX Runtime reads all the data it names
        options["data_root"] = artifact.root
    if options["cache"]:
        options.setdefault("model_digest", model_digest(artifact, entry))
    session = open_session(path, backend=backend, device=device, **options)
    if _identities(files) != before:
        _forget(session)
        raise ArtifactError(f"{entry['path']} in {artifact.root} changed while it was loaded (re-exported or copied "
                            "over meanwhile), so what was read may not be what was verified; load the artifact again.")
    _check_graph_io(artifact, entry["graph"], session, entry["path"])
    _warn_if_unverified(artifact, entry, session)
    session.model_file, session.precision = entry["path"], entry.get("precision")
    return session


def _identities(files: list[Path]) -> list[Any]:
    """Each file's identity (size, times, inode): a file replaced or rewritten changes it."""
    identities: list[Any] = []
    for path in files:
        try:
            identities.append(file_identity(os.stat(path)))
        except OSError:
            identities.append(None)
    return identities


def _forget(session: Session) -> None:
    """Removes the cache entry a session compiled just now from files that changed as it read
    them: keyed by the verified content, it may hold the other content."""
    if getattr(session, "cache_status", None) == "miss" and getattr(session, "cache_path", None):
        shutil.rmtree(session.cache_path, ignore_errors=True)


def _warn_if_unverified(artifact: Artifact, entry: dict[str, Any], session: Session) -> None:
    """Says so when a file runs here on another provider or in another precision than its
    parity gate verified: an fp16 OpenVINO file exported on a CPU without fp16 was verified in
    the bf16 it falls back to, and runs so again there (no warning), but in f16 on a CPU
    that has it (unverified: a warning)."""
    if _dynamic_int8(entry) and artifact.manifest.get("format_revision", 1) < 2:
        recorded = (entry.get("session_options") or {}).get("one_item_per_call")
        verified_as = ("ran each caption with its call's padding; it now runs each without it" if recorded else
                       "ran it on whole batches; it now runs each input alone")
        if not recorded or session.trims_padding:  # else its gate ran it as it runs now
            warn_caller(f"{entry['path']} was verified by an earlier vlmedge, which {verified_as} (its answers no "
                        f"longer depend on what shares their call), which its parity gate did not check: `vlmedge "
                        f"check {artifact.root}` checks it, or re-export the artifact.", UnverifiedWarning)
    verified = (entry.get("parity") or {}).get("provider")
    if verified and session.provider != verified:
        warn_caller(f"{entry['path']} was verified on {verified} and runs here on {session.provider}, which its "
                    f"parity gate did not check; `vlmedge check {artifact.root}` checks it on this machine.",
                    UnverifiedWarning)


def _dynamic_int8(entry: dict[str, Any]) -> bool:
    """Whether a model entry is ONNX Runtime dynamic int8, whose activation scales are taken per call."""
    return ((entry.get("parity") or {}).get("quantization") or {}).get("method") == DYNAMIC_INT8_METHOD


def model_digest(artifact: Artifact, entry: dict[str, Any]) -> str:
    """The content hash of a model file and its weights files (OpenVINO's .bin, ONNX
    external data), from the sha256 the manifest records: open_entry verified them, so
    nothing is hashed again here."""
    stem = entry["path"].rsplit(".", 1)[0] + "."
    parts = sorted(f"{e['path'][len(stem):]}:{e['size']}:{e['sha256']}" for e in artifact.model_files(entry))
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def resolve_backend(artifact: Artifact, backend: str, device: str) -> str:
    """The backend open_model runs the artifact on: "auto" chosen (choose_backend), a name checked."""
    if backend == "auto":
        return choose_backend(artifact, device)
    return backend_named(backend, also=("auto",)).name


def check_load_options(artifact: Artifact, backend: str, device: str, options: dict[str, Any]) -> None:
    """Checks, without opening anything, that the backend a load of the artifact would run on
    takes these session options: for callers that load it later elsewhere (bulk workers,
    Ray Serve replicas), so that a mistake is said before any of them starts."""
    check_session_options(backend_named(resolve_backend(artifact, backend, device)), options)


def entries_to_open(artifact: Artifact, backend: str = "auto", device: str = "cpu",
                    precision: str | None = None) -> tuple[str, str, dict[str, dict[str, Any]]]:
    """What open_model would open, found from the manifest alone: the backend, the precision
    and each graph's manifest entry. Callers that load the artifact later elsewhere (bulk
    workers) call it first, so that a backend or precision the artifact lacks is said before
    any of them starts."""
    backend = resolve_backend(artifact, backend, device)
    target = backend_named(backend).target
    entries = artifact.model_entries(target=target)
    if not entries:
        have = sorted({e["target"] for e in artifact.model_entries()})
        raise BackendUnavailableError(
            f"Artifact {artifact.root} has no {target} files (it has: {', '.join(have) or 'none'}); "
            f"export it with --to {target} or choose another backend."
        )
    if precision is None:
        precision = choose_precision(entries)
    elif precision not in PRECISIONS:
        raise UsageError(f"Unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}, or None for the "
                         "fastest file that passed its parity gate.")
    chosen = {}
    for graph in artifact.manifest["graphs"]:
        matches = [e for e in entries if e["graph"] == graph and e["precision"] == precision]
        if not matches:
            have = sorted({e["precision"] for e in entries if e["graph"] == graph})
            never = backend_named(backend).why_not(precision)
            dropped = next((d for d in (artifact.manifest.get("export") or {}).get("dropped") or []
                            if d.get("target") == target and d.get("precision") == precision), None)
            advice = (f"{never}: choose another backend or precision" if never else
                      f"the export left it out ({str(dropped.get('reason')).rstrip('.')}): choose another" if dropped else
                      "export that precision or choose another")
            raise BackendUnavailableError(
                f"Artifact {artifact.root} has no {precision} {target} file for graph '{graph}' "
                f"(it has: {', '.join(have)}); {advice}."
            )
        chosen[graph] = matches[0]
        parity = matches[0].get("parity") or {}
        if parity.get("passed") is False:  # an export leaves such a file out: the manifest was edited
            why = "; ".join(parity.get("failures") or []) or "no reason recorded"
            raise ArtifactError(f"{matches[0]['path']} in {artifact.root} is recorded as failing its parity gate "
                                f"({why}); an export never ships such a file, so re-export the artifact.")
    return backend, precision, chosen


def open_model(artifact: Artifact, backend: str = "auto", device: str = "cpu",
               precision: str | None = None, **options: Any) -> ModelSessions:
    """Opens every graph of the artifact on one backend, device and precision."""
    backend, precision, entries = entries_to_open(artifact, backend, device, precision)
    sessions = {graph: open_entry(artifact, entry, backend=backend, device=device, **options)
                for graph, entry in entries.items()}
    return ModelSessions(artifact, backend, precision, device, sessions)


def _check_graph_io(artifact: Artifact, graph: str, session: Session, relpath: str) -> None:
    """The manifest's input and output names must be the model file's own: the pipelines
    address the session's results by the manifest's names."""
    described = artifact.manifest["graphs"][graph]
    for kind, actual in (("inputs", session.inputs), ("outputs", session.outputs)):
        want = sorted(i["name"] for i in described[kind])
        have = sorted(i.name for i in actual)
        if want != have:
            raise ArtifactError(
                f"Artifact {artifact.root}: the manifest says graph '{graph}' has {kind} {want}, but {relpath} has "
                f"{have}; the manifest does not describe this file. Re-export the artifact."
            )
