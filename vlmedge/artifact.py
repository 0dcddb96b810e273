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
import hashlib
import json
import os
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from vlmedge.errors import ArtifactError, ExportError

SCHEMA_VERSION = 1
MANIFEST_NAME = "manifest.json"
_TMP_MARKER = ".vlmedge-tmp-"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
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
    def open(cls, path: str | os.PathLike, verify: bool = True) -> "Artifact":
        """Reads manifest.json and (by default) verifies every file's size and sha256."""
        root = Path(path)
        if not root.is_dir():
            raise ArtifactError(f"No artifact folder at {root}; pass the folder that `vlmedge export -o` wrote.")
        manifest_path = root / MANIFEST_NAME
        if not manifest_path.is_file() or manifest_path.is_symlink():
            raise ArtifactError(f"{root} has no {MANIFEST_NAME}; it is not a vlmedge artifact (or its export did not finish).")
        try:
            manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ArtifactError(f"{manifest_path} is not valid JSON ({exc}); the artifact is corrupt, re-export it.") from None
        _check_manifest_shape(manifest, manifest_path)
        artifact = cls(root=root, manifest=manifest)
        if verify:
            artifact.verify()
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

    def verify(self, entries: Iterable[dict[str, Any]] | None = None) -> None:
        """Refuses missing, extra, linked, truncated or altered files, naming the file."""
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
        for entry in entries:
            path = self.path_of(entry)
            if not path.is_file():
                raise ArtifactError(f"Artifact {self.root} is missing {entry['path']}; re-export it.")
            info = path.stat()
            if info.st_nlink > 1:
                raise ArtifactError(
                    f"{entry['path']} in {self.root} is hard-linked elsewhere; copy the artifact without links."
                )
            if info.st_size != entry["size"] or sha256_file(path) != entry["sha256"]:
                raise ArtifactError(
                    f"{entry['path']} in {self.root} does not match the sha256 in its manifest: "
                    "the file was altered or truncated. Re-export the artifact."
                )

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
    for entry in manifest["files"]:
        if not isinstance(entry, dict) or not all(
            isinstance(entry.get(k), t) for k, t in (("path", str), ("sha256", str), ("size", int), ("role", str))
        ):
            raise ArtifactError(f"{where} has a malformed file entry {entry!r}; re-export the artifact.")


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
        self.tmp.mkdir()

    def __enter__(self) -> "ArtifactWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()

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
        _fsync_dir(self.tmp)
        _swap_into_place(self.tmp, self.destination)
        _fsync_dir(self.destination.parent)
        return Artifact(root=self.destination, manifest=manifest)

    def abort(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)


def _remove_abandoned_builds(destination: Path) -> None:
    """Deletes temporary folders left by exports of `destination` that were killed."""
    prefix = f"{_TMP_MARKER}{destination.name}-"
    for candidate in destination.parent.glob(f"{prefix}*"):
        pid_text = candidate.name[len(prefix):].split("-", 1)[0]
        if pid_text.isdigit() and not _process_alive(int(pid_text)):
            shutil.rmtree(candidate, ignore_errors=True)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
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
