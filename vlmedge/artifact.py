"""The artifact: a folder of model files plus manifest.json, written atomically and
verified before anything parses it.

Manifest schema v1 (JSON):
    schema_version  1
    task            "image-classification" | "image-embedding" | "clip" | "audio-classification"
    source          {"reference", "architecture", "config_sha256", ...}
    graphs          {graph: {"inputs": [TensorInfo], "outputs": [TensorInfo], "dynamic_axes": {...}}}
    files           [{"path", "sha256", "size", "role", ...}]; role "model" entries also carry
                    "graph", "target", "precision" and "parity" (a ParityReport as a dict)
    preprocess      {"image": {...}} | {"text": {...}} | {"audio": {...}}
    labels          [str] or null
    postprocess     {"activation": "softmax" | "sigmoid" | null, ...}
    versions        {"vlmedge", "torch", "onnx", "onnxruntime", ...}
    created         ISO 8601 UTC time
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import hashlib
import json
import os
import re
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from vlmedge.errors import ArtifactError, ExportError
from vlmedge.registry import TASKS
from vlmedge.user_cache import VerifiedFiles

SCHEMA_VERSION = 1
MANIFEST_NAME = "manifest.json"
_TMP_MARKER = ".vlmedge-tmp-"
# Real manifests are a few hundred KB at most (parity reports, thousands of labels).
MAX_MANIFEST_BYTES = 64 * 1024**2
# Session options a model entry may carry to its backend (plain values only, no paths).
MANIFEST_SESSION_OPTIONS = frozenset({"inference_precision", "performance_hint", "optimization", "precision"})


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    # 64 KB blocks, under glibc's mmap threshold: freed 1 MB blocks raise it and fragment the
    # backend's later buffers on the heap (ONNX Runtime ViT-B/16 peaks: fp32 cache=False 1.66x
    # -> 1.40x the file, int8 cold 1.48x -> 1.37x; hashing is as fast).
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 16), b""):
            digest.update(block)
    return digest.hexdigest()


def safe_join(root: Path, relpath: str) -> Path:
    """Resolves a manifest path inside root, refusing anything that could escape it.

    Absolute paths, '..' components, symlinks and hard-linked files are refused before any
    parser sees the file, because model parsers follow paths they are given.
    """
    where = f"artifact {root}"
    if not isinstance(relpath, str) or not relpath or "\x00" in relpath:
        raise ArtifactError(f"{where} names an invalid file path {relpath!r}; re-export the artifact.")
    pure = Path(relpath)
    if pure.is_absolute() or relpath.startswith(("/", "\\")) or ".." in pure.parts or "\\" in relpath:
        raise ArtifactError(f"{where} names the path {relpath!r}, which leaves the artifact folder; refusing to load it.")
    path = root / pure
    current = root
    for part in pure.parts:
        current = current / part
        if current.is_symlink():
            raise ArtifactError(f"{where}: {relpath} is a symbolic link; artifacts must hold plain files. Re-export it.")
    resolved_root = root.resolve()
    if resolved_root not in path.resolve().parents:
        raise ArtifactError(f"{where} names the path {relpath!r}, which leaves the artifact folder; refusing to load it.")
    return path


@dataclass
class Artifact:
    """A verified artifact folder and its manifest."""

    root: Path
    manifest: dict[str, Any]

    @classmethod
    def open(cls, path: str | os.PathLike, verify: bool = True, cache: bool | None = None) -> "Artifact":
        """Reads manifest.json and (by default) verifies every file's size and sha256; files
        unchanged since an earlier verification are not hashed again unless cache=False
        (vlmedge.user_cache)."""
        root = Path(path)
        if not root.is_dir():
            raise ArtifactError(f"No artifact folder at {root}; pass the folder that `vlmedge export -o` wrote.")
        manifest_path = root / MANIFEST_NAME
        if manifest_path.is_symlink():
            raise ArtifactError(f"{manifest_path} is a symbolic link; artifacts must hold plain files. Re-export it.")
        if not manifest_path.is_file():
            raise ArtifactError(f"{root} has no {MANIFEST_NAME}; it is not a vlmedge artifact (or its export did not finish).")
        info = manifest_path.stat()
        if info.st_nlink > 1:
            raise ArtifactError(f"{manifest_path} is hard-linked elsewhere; copy the artifact without links.")
        if info.st_size > MAX_MANIFEST_BYTES:
            raise ArtifactError(f"{manifest_path} is {info.st_size:,} bytes, more than any manifest vlmedge writes "
                                f"({MAX_MANIFEST_BYTES:,}); the artifact is corrupt, re-export it.")
        try:
            manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ArtifactError(f"{manifest_path} is not valid JSON ({exc}); the artifact is corrupt, re-export it.") from None
        except RecursionError:  # "[[[[..." nested deeper than the parser's stack
            raise ArtifactError(f"{manifest_path} is nested too deeply to be a manifest; the artifact is corrupt, "
                                "re-export it.") from None
        _check_manifest_shape(manifest, manifest_path)
        artifact = cls(root=root, manifest=manifest)
        if verify:
            artifact.verify(cache=cache)
        return artifact

    @property
    def task(self) -> str:
        return self.manifest["task"]

    @property
    def files(self) -> list[dict[str, Any]]:
        return self.manifest["files"]

    def path_of(self, entry: dict[str, Any] | str) -> Path:
        relpath = entry if isinstance(entry, str) else entry["path"]
        return safe_join(self.root, relpath)

    def verify(self, entries: Iterable[dict[str, Any]] | None = None, cache: bool | None = None) -> None:
        """Refuses missing, extra, linked, truncated or altered files, naming the file.
        cache: whether the memo of files already verified may spare hashing unchanged ones."""
        listed = {entry["path"] for entry in self.files}
        for relpath in listed:
            self.path_of(relpath)  # refuses escaping paths before anything else is looked at
        if entries is None:
            entries = self.files
            for extra in _walk_files(self.root):
                if extra != MANIFEST_NAME and extra not in listed:
                    raise ArtifactError(
                        f"Artifact {self.root} holds {extra}, which its manifest does not list; "
                        "it may have been tampered with. Re-export it or remove the file."
                    )
        hashes = VerifiedFiles(sha256_file, enabled=cache)
        for entry in entries:
            path = self.path_of(entry)
            if not path.is_file():
                if path.exists():  # a folder, FIFO or device: never opened, reading one may block forever
                    raise ArtifactError(f"{entry['path']} in {self.root} is not a regular file; re-export the artifact.")
                raise ArtifactError(f"Artifact {self.root} is missing {entry['path']}; re-export it.")
            info = path.stat()
            if info.st_nlink > 1:
                raise ArtifactError(
                    f"{entry['path']} in {self.root} is hard-linked elsewhere; copy the artifact without links."
                )
            if info.st_size != entry["size"] or hashes.sha256(path, info) != entry["sha256"]:
                hashes.save()
                raise ArtifactError(
                    f"{entry['path']} in {self.root} does not match the sha256 in its manifest: "
                    "the file was altered or truncated. Re-export the artifact."
                )
        hashes.save()

    def model_entries(self, graph: str | None = None, target: str | None = None,
                      precision: str | None = None) -> list[dict[str, Any]]:
        """The model files, filtered by graph, target and precision."""
        return [
            e for e in self.files
            if e.get("role") == "model"
            and (graph is None or e.get("graph") == graph)
            and (target is None or e.get("target") == target)
            and (precision is None or e.get("precision") == precision)
        ]

    def entry(self, role: str) -> dict[str, Any] | None:
        return next((e for e in self.files if e.get("role") == role), None)


def _walk_files(root: Path) -> list[str]:
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        for name in filenames + [d for d in dirnames if (Path(dirpath) / d).is_symlink()]:
            found.append(Path(dirpath, name).relative_to(root).as_posix())
    return found


def _check_manifest_shape(manifest: Any, where: Path) -> None:
    if not isinstance(manifest, dict):
        raise ArtifactError(f"{where} is not a manifest object; re-export the artifact.")
    version = manifest.get("schema_version")
    if version != SCHEMA_VERSION:
        raise ArtifactError(
            f"{where} has schema version {version!r}, but this vlmedge reads version {SCHEMA_VERSION}; "
            "re-export the artifact with this version of vlmedge or install the version that wrote it."
        )
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
    _check_task_shape(manifest, where)
    labels = manifest.get("labels")
    if labels is not None and not (isinstance(labels, list) and all(isinstance(x, str) for x in labels)):
        raise _malformed(where, "labels must be a list of strings or null")
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


@dataclass
class ArtifactWriter:
    """Builds an artifact in a temporary sibling folder and swaps it into place on commit.

    Use as a context manager: an exception (or Ctrl-C) inside the block removes the
    temporary folder, so a failed export leaves nothing behind and never touches an
    artifact already at the destination.
    """

    destination: Path
    files: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.destination = Path(self.destination).absolute()
        if self.destination.exists() and not (self.destination / MANIFEST_NAME).is_file():
            if not self.destination.is_dir() or any(self.destination.iterdir()):
                raise ExportError(
                    f"{self.destination} exists and is not a vlmedge artifact; choose another output path."
                )
        self.destination.parent.mkdir(parents=True, exist_ok=True)
        _remove_abandoned_builds(self.destination)
        # The pid in the name lets a later export tell an abandoned build from a running one.
        name = f"{_TMP_MARKER}{self.destination.name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.tmp = self.destination.parent / name
        try:
            self.tmp.mkdir()
        except OSError as exc:
            _raise_if_disk_full(exc, self.destination)
            raise

    def __enter__(self) -> "ArtifactWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()
            _raise_if_disk_full(exc, self.destination)

    def path(self, relpath: str) -> Path:
        """Where to write a file that add() will register; parent folders are created."""
        target = self.tmp / relpath
        target.parent.mkdir(parents=True, exist_ok=True)
        return target

    def add(self, relpath: str, role: str, **meta: Any) -> dict[str, Any]:
        """Registers a file already written at path(relpath); returns its manifest entry."""
        path = self.tmp / relpath
        if not path.is_file():
            raise ExportError(f"internal: {relpath} was registered but never written")
        _fsync(path)
        entry = {"path": relpath, "role": role, "size": path.stat().st_size, "sha256": sha256_file(path), **meta}
        self.files = [e for e in self.files if e["path"] != relpath] + [entry]
        return entry

    def copy_from(self, artifact: Artifact) -> None:
        """Starts from an existing artifact's files (for adding a target in place)."""
        for entry in artifact.files:
            target = self.path(entry["path"])
            shutil.copyfile(artifact.path_of(entry), target)
            self.files.append(dict(entry))

    def commit(self, manifest: dict[str, Any]) -> Artifact:
        """Writes the manifest last, fsyncs, and swaps the folder into place."""
        manifest = {**manifest, "schema_version": SCHEMA_VERSION, "files": self.files}
        manifest_path = self.tmp / MANIFEST_NAME
        manifest_path.write_text(json.dumps(manifest, indent=2, sort_keys=False) + "\n", encoding="utf-8")
        _fsync(manifest_path)
        for folder, _, _ in os.walk(self.tmp, topdown=False):  # every entry of every folder is durable
            _fsync_dir(Path(folder))
        _swap_into_place(self.tmp, self.destination)
        _fsync_dir(self.destination.parent)
        return Artifact(root=self.destination, manifest=manifest)

    def abort(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)


_DISK_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def _raise_if_disk_full(exc: BaseException | None, destination: Path) -> None:
    """Turns "no space left" anywhere in an exception's chain into one clear ExportError.

    Libraries wrap the OSError (torch.onnx.export raises RuntimeError, vlmedge's own steps
    ExportError), so the chain and the message text are both searched.
    """
    seen = 0
    while exc is not None and seen < 20:
        if (isinstance(exc, OSError) and exc.errno in _DISK_FULL) or "No space left on device" in str(exc):
            raise ExportError(
                f"No space left on the disk holding {destination.parent} while writing the artifact; nothing was "
                "written and any previous artifact there is unchanged. Free some space and export again."
            ) from exc
        exc, seen = exc.__cause__ or exc.__context__, seen + 1


def _remove_abandoned_builds(destination: Path) -> None:
    """Deletes temporary folders left by exports of `destination` that were killed."""
    prefix = f"{_TMP_MARKER}{destination.name}-"
    for candidate in destination.parent.iterdir():  # not glob: the name may hold [ or *
        # Exactly "<pid>-<8 hex>" or "<pid>-old<8 hex>" after the prefix, so that the build
        # of a sibling named like "<name>-2" is never taken for one of this destination's.
        match = re.fullmatch(r"(\d+)-(?:old)?[0-9a-f]{8}", candidate.name[len(prefix):]) \
            if candidate.name.startswith(prefix) else None
        if match and not candidate.is_symlink() and not _process_alive(int(match.group(1))):
            shutil.rmtree(candidate, ignore_errors=True)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):
        return False
    except PermissionError:
        return True
    return True


def _fsync(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _swap_into_place(new: Path, destination: Path) -> None:
    """Moves `new` to `destination`; an existing artifact is replaced atomically.

    Linux's renameat2(RENAME_EXCHANGE) swaps two folders in one step, so there is no
    moment at which the destination is missing; elsewhere two renames are used.
    """
    if not destination.exists():
        os.rename(new, destination)
        return
    if not _rename_exchange(new, destination):
        backup = destination.parent / f"{_TMP_MARKER}{destination.name}-{os.getpid()}-old{uuid.uuid4().hex[:8]}"
        os.rename(destination, backup)
        os.rename(new, destination)
        new = backup
    shutil.rmtree(new, ignore_errors=True)


def _rename_exchange(a: Path, b: Path) -> bool:
    libc_name = ctypes.util.find_library("c")
    if not libc_name:
        return False
    try:
        libc = ctypes.CDLL(libc_name, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    result = renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange)
    return result == 0
