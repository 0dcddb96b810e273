"""The artifact: a folder of model files plus manifest.json (its schema: vlmedge.manifest),
written atomically and verified before anything parses it.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
import stat
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from vlmedge.build_locks import abandoned, lock_path
from vlmedge.environment import mounts
from vlmedge.errors import ArtifactError, ExportError, InputError, OutputError
from vlmedge.manifest import FORMAT_REVISION, MANIFEST_NAME, SCHEMA_VERSION, check_manifest_shape
from vlmedge.user_cache import VerifiedFiles

_TMP_MARKER = ".vlmedge-tmp-"
# Real manifests are a few hundred KB at most (parity reports, thousands of labels).
MAX_MANIFEST_BYTES = 64 * 1024**2
# The roles of the files a backend parses: a model file and the weights file beside it.
BACKEND_FILE_ROLES = frozenset({"model", "weights"})


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
        if os.path.islink(current):  # False where a folder on the path may not be entered: verify says so
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
    # the files whose sha256 this object has checked (or its writer computed)
    verified: set[str] = field(default_factory=set, repr=False, compare=False)

    def __repr__(self) -> str:  # one line, not the manifest
        source = (self.manifest.get("source") or {}).get("reference")
        return f"Artifact({str(self.root)!r}, task={self.manifest.get('task')!r}, source={source!r})"

    @classmethod
    def open(cls, path: str | os.PathLike, verify: bool = True, cache: bool | None = None,
             defer_models: bool = False) -> "Artifact":
        """Reads manifest.json and (by default) verifies every file's size and sha256; files
        unchanged since an earlier verification are not hashed again unless cache=False
        (vlmedge.user_cache).

        defer_models: the model and weights files are checked for size now and hashed only by
        verify_model(), before a backend reads one: a load reads one precision of one target,
        and hashing the others (most of a fp32 + int8, ONNX + OpenVINO artifact's bytes) would
        make up most of a cold load's time."""
        if not isinstance(path, (str, os.PathLike)):  # load, check, bench, bulk and serve all come here first
            raise InputError(f"An artifact is a folder path (a str or os.PathLike), not {type(path).__name__}.")
        root = Path(path)
        if not os.path.isdir(root):  # False where Path.is_dir raises: a name longer than the file system takes
            advice = (f"export it first (vlmedge export {path} -o out/model) and pass that folder"
                      if str(path).startswith(("builtin:", "timm:", "open_clip:")) else
                      "pass the folder that `vlmedge export -o` wrote")
            raise ArtifactError(f"No artifact folder at {path}; {advice}.")
        manifest_path = root / MANIFEST_NAME
        if manifest_path.is_symlink():
            raise ArtifactError(f"{manifest_path} is a symbolic link; artifacts must hold plain files. Re-export it.")
        if not manifest_path.is_file():
            if os.path.lexists(manifest_path):  # a folder, FIFO or device: reading one may block forever
                raise ArtifactError(f"{manifest_path} is not a regular file; the artifact is corrupt, re-export it.")
            if (root / "config.json").is_file():
                raise ArtifactError(f"{root} is a model folder, not an artifact; export it first (vlmedge export {root} "
                                    "-o out/model) and pass that folder.")
            raise ArtifactError(f"{root} has no {MANIFEST_NAME}; it is not a vlmedge artifact (or its export did not finish).")
        info = manifest_path.stat()
        if info.st_nlink > 1:
            raise ArtifactError(f"{manifest_path} is hard-linked elsewhere; copy the artifact without links.")
        if info.st_size > MAX_MANIFEST_BYTES:
            raise ArtifactError(f"{manifest_path} is {info.st_size:,} bytes, more than any manifest vlmedge writes "
                                f"({MAX_MANIFEST_BYTES:,}); the artifact is corrupt, re-export it.")
        try:
            manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise _unreadable(root, MANIFEST_NAME, exc) from None
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ArtifactError(f"{manifest_path} is not valid JSON ({exc}); the artifact is corrupt, re-export it.") from None
        except RecursionError:  # "[[[[..." nested deeper than the parser's stack
            raise ArtifactError(f"{manifest_path} is nested too deeply to be a manifest; the artifact is corrupt, "
                                "re-export it.") from None
        check_manifest_shape(manifest, manifest_path)
        artifact = cls(root=root, manifest=manifest)
        if verify:
            artifact.verify(cache=cache, defer_models=defer_models)
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

    def verify(self, entries: Iterable[dict[str, Any]] | None = None, cache: bool | None = None,
               defer_models: bool = False) -> None:
        """Refuses missing, extra, linked, truncated or altered files, naming the file.
        cache: whether the memo of files already verified may spare hashing unchanged ones.
        defer_models: leave the hashing of model and weights files to verify_model()."""
        listed = {entry["path"] for entry in self.files}
        for relpath in listed:
            self.path_of(relpath)  # refuses escaping paths before anything else is looked at
        if entries is None:
            entries = self.files
            for extra in _unlisted_files(self.root, listed)[:1]:
                raise ArtifactError(
                    f"Artifact {self.root} holds {extra}, which its manifest does not list; "
                    "it may have been tampered with. Re-export it or remove the file."
                )
        hashes = VerifiedFiles(sha256_file, enabled=cache)
        for entry in entries:
            path = self.path_of(entry)
            try:
                info = path.stat()
            except FileNotFoundError:
                raise ArtifactError(f"Artifact {self.root} is missing {entry['path']}; re-export it.") from None
            except OSError as exc:  # a folder on its path this user may not enter
                raise _unreadable(self.root, entry["path"], exc) from None
            if not stat.S_ISREG(info.st_mode):  # a folder, FIFO or device: never opened, reading one may block forever
                raise ArtifactError(f"{entry['path']} in {self.root} is not a regular file; re-export the artifact.")
            if info.st_nlink > 1:
                raise ArtifactError(  # a link from outside could change the file under a verified artifact
                    f"{entry['path']} in {self.root} is hard-linked elsewhere ({info.st_nlink} names: a backup made "
                    "with cp -al or rsync --link-dest?); remove the other links, or copy the artifact without links."
                )
            if info.st_size == entry["size"] and (entry["path"] in self.verified or (
                    defer_models and entry.get("role") in BACKEND_FILE_ROLES)):
                continue
            try:
                altered = info.st_size != entry["size"] or hashes.sha256(path, info) != entry["sha256"]
            except OSError as exc:
                raise _unreadable(self.root, entry["path"], exc) from None
            if altered:
                hashes.save()
                raise ArtifactError(
                    f"{entry['path']} in {self.root} does not match the sha256 in its manifest: "
                    "the file was altered or truncated. Re-export the artifact."
                )
            self.verified.add(entry["path"])
        hashes.save()

    def model_files(self, entry: dict[str, Any]) -> list[dict[str, Any]]:
        """A model file's entry and the entries of its weights files (OpenVINO's .bin, ONNX
        external data): the files its backend reads."""
        stem = entry["path"].rsplit(".", 1)[0] + "."
        return [e for e in self.files
                if e["path"] == entry["path"] or (e.get("role") == "weights" and e["path"].startswith(stem))]

    def verify_model(self, entry: dict[str, Any], cache: bool | None = None) -> None:
        """Verifies a model file and its weights files before a backend reads them; those
        this object already verified are not looked at again."""
        self.verify(self.model_files(entry), cache=cache)

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


def _unreadable(root: Path, relpath: str, exc: OSError) -> ArtifactError:
    return ArtifactError(f"{relpath} in artifact {root} cannot be read ({exc.strerror or exc}); check its "
                         "permissions: every file of an artifact must be readable by the user who loads it.")


def _unlisted_files(root: Path, listed: set[str]) -> list[str]:
    """The files (and links to folders) under root that are neither the manifest nor listed in it."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        for name in filenames + [d for d in dirnames if (Path(dirpath) / d).is_symlink()]:
            relpath = Path(dirpath, name).relative_to(root).as_posix()
            if relpath != MANIFEST_NAME and relpath not in listed:
                found.append(relpath)
    return sorted(found)


@dataclass
class ArtifactWriter:
    """Builds an artifact in a temporary sibling folder and swaps it into place on commit.

    Use as a context manager: an exception (or Ctrl-C) inside the block removes the
    temporary folder, so a failed export leaves nothing behind and never touches an
    artifact already at the destination.
    """

    destination: Path
    files: list[dict[str, Any]] = field(default_factory=list)
    _lock: int | None = field(default=None, init=False, repr=False)  # held on the build folder while it builds

    def __post_init__(self) -> None:
        self.destination = Path(self.destination).absolute()
        if any(len(os.fsencode(part)) > 255 for part in self.destination.parts):  # what file systems take
            raise ExportError(f"{self.destination} has a name longer than file systems take (255 bytes); choose "
                              "a shorter one.")
        _refuse_inside_an_artifact(self.destination)
        if _is_mount_point(self.destination):  # the swap renames the folder, which a mount point refuses (EBUSY)
            raise ExportError(f"{self.destination} is a mount point, which an export cannot replace (it builds beside "
                              f"the output folder and swaps it in); export into a folder inside it: -o "
                              f"{self.destination / 'NAME'}.")
        # An export replaces what is there: only an earlier artifact, or an empty folder.
        earlier = _artifact_files(self.destination)
        self.earlier_files = sorted(earlier or ())
        if earlier is None and self.destination.exists():
            if not self.destination.is_dir() or any(self.destination.iterdir()):
                raise ExportError(
                    f"{self.destination} exists and is not a vlmedge artifact; choose another output path."
                )
        if earlier is not None:
            _refuse_files_of_the_user(self.destination, earlier)
        # A lock held on the build folder while it builds lets a later export tell an abandoned
        # build from a running one (the pid in its name, where locks are not to be had).
        self.tmp = self.destination.parent / f"{_build_prefix(self.destination)}{os.getpid()}-{uuid.uuid4().hex[:8]}"
        try:
            self.destination.parent.mkdir(parents=True, exist_ok=True)
            _remove_abandoned_builds(self.destination)
            self.tmp.mkdir()
            self._lock = lock_path(self.tmp)
        except OSError as exc:
            _raise_if_disk_full(exc, self.destination)
            raise ExportError(f"Cannot write the artifact at {self.destination} ({exc.strerror or exc}); choose an "
                              "output path in a folder you can write.") from None

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

    def commit(self, manifest: dict[str, Any]) -> Artifact:
        """Writes the manifest last, fsyncs, and swaps the folder into place."""
        manifest = {**manifest, "schema_version": SCHEMA_VERSION, "format_revision": FORMAT_REVISION, "files": self.files}
        manifest_path = self.tmp / MANIFEST_NAME
        manifest_path.write_text(json.dumps(manifest, indent=2, sort_keys=False) + "\n", encoding="utf-8")
        _fsync(manifest_path)
        for folder, _, _ in os.walk(self.tmp, topdown=False):  # every entry of every folder is durable
            _fsync_dir(Path(folder))
        _swap_into_place(self.tmp, self.destination)
        self._release()
        _fsync_dir(self.destination.parent)
        memo = VerifiedFiles(sha256_file)  # the first load need not hash again what add() hashed
        for entry in self.files:
            path = self.destination / entry["path"]
            memo.learn(path, path.stat(), entry["sha256"])
        memo.save()
        # add() hashed every file as it was written: the artifact needs no second look
        return Artifact(root=self.destination, manifest=manifest, verified={e["path"] for e in self.files})

    def replaced_note(self) -> str:
        """Once committed: "; the earlier artifact's FILES were not made again and are gone" where
        the swap removed files of an earlier artifact this export did not write again, else ""."""
        written = {e["path"] for e in self.files}
        gone = [path for path in self.earlier_files if path not in written]
        return f"; the earlier artifact's {', '.join(gone)} were not made again and are gone" if gone else ""

    def abort(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)
        self._release()

    def _release(self) -> None:
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None


def _refuse_files_of_the_user(destination: Path, listed: set[str]) -> None:
    """An earlier artifact (its manifest lists `listed`) is replaced whole: files someone
    added to it (notes, a licence) would go with it, so they are named instead."""
    added = _unlisted_files(destination, listed)
    if added:
        shown = ", ".join(added[:3]) + (f" and {len(added) - 3} more" if len(added) > 3 else "")
        raise ExportError(f"{destination} holds {shown}, which the artifact there does not list, and an export "
                          "replaces the whole folder; move them out, or choose another output path.")


def _artifact_files(folder: Path) -> set[str] | None:
    """The files a folder's vlmedge artifact (of any schema version) lists, or None when it
    holds none: its manifest.json must be a JSON object with a schema version, a task and a
    list of files with their hashes. Any other manifest.json (a web app's, a dataset's) is not
    one, and its folder is never replaced."""
    try:
        manifest = json.loads((folder / MANIFEST_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return None
    if not isinstance(manifest, dict):  # a JSON list or number: manifest.get() raised AttributeError
        return None
    files = manifest.get("files")
    holds = (isinstance(manifest.get("schema_version"), int) and isinstance(manifest.get("task"), str)
             and isinstance(files, list) and bool(files)
             and all(isinstance(f, dict) and isinstance(f.get("path"), str) and isinstance(f.get("sha256"), str)
                     for f in files))
    return {f["path"] for f in files} if holds else None


_DISK_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def _raise_if_disk_full(exc: BaseException | None, destination: Path) -> None:
    """Turns "no space left" anywhere in an exception's chain into one clear ExportError.

    Libraries wrap the OSError (torch.onnx.export raises RuntimeError, vlmedge's own steps
    ExportError), so the chain and the message text are both searched.
    """
    seen = 0
    while exc is not None and seen < 20:
        if isinstance(exc, OutputError):  # standard output's full disk (`> /dev/full`), said as such
            return
        if (isinstance(exc, OSError) and exc.errno in _DISK_FULL) or "No space left on device" in str(exc):
            raise ExportError(
                f"No space left on the disk holding {destination.parent} while writing the artifact; nothing was "
                "written and any previous artifact there is unchanged. Free some space and export again."
            ) from exc
        exc, seen = exc.__cause__ or exc.__context__, seen + 1


def _refuse_inside_an_artifact(destination: Path) -> None:
    """An artifact written inside another would be a folder its manifest does not list, which
    no load of that one accepts. The folders it is in are those its real path names: through a
    link into an artifact, not out of one by ".."."""
    real_parent = Path(os.path.realpath(destination.parent))
    for parent in (real_parent, *real_parent.parents):
        if _artifact_files(parent) is not None:
            raise ExportError(f"{destination} is inside the vlmedge artifact {parent}, which would then hold files "
                              "its manifest does not list and load no more; choose an output path outside it.")


def _build_prefix(destination: Path) -> str:
    """The start of the names of the build folders of `destination`, beside it; a long name
    is cut, so that the builds' names stay within the 255 bytes a file name may take."""
    name = destination.name
    while len(os.fsencode(name)) > 160:
        name = name[:-1]
    return f"{_TMP_MARKER}{name}-"


def _remove_abandoned_builds(destination: Path) -> None:
    """Deletes temporary folders left by exports of `destination` that were killed."""
    prefix = _build_prefix(destination)
    for candidate in destination.parent.iterdir():  # not glob: the name may hold [ or *
        # Exactly "<pid>-<8 hex>" or "<pid>-old<8 hex>" after the prefix, so that the build
        # of a sibling named like "<name>-2" is never taken for one of this destination's.
        match = re.fullmatch(r"(\d+)-(old)?[0-9a-f]{8}", candidate.name[len(prefix):]) \
            if candidate.name.startswith(prefix) else None
        if match and abandoned(candidate, int(match.group(1)), unlocked=bool(match.group(2))):
            _remove(candidate)


def _fsync(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _is_mount_point(path: Path) -> bool:
    """Whether `path` is a mount point, a bind mount of a folder of the same file system too
    (a container's volume), which os.path.ismount, comparing devices, does not see."""
    return os.path.ismount(path) or os.path.realpath(path) in mounts()


def _swap_into_place(new: Path, destination: Path) -> None:
    """Moves `new` to `destination`; an existing artifact is replaced atomically.

    Linux's renameat2(RENAME_EXCHANGE) swaps two folders in one step, so there is no
    moment at which the destination is missing; elsewhere two renames are used.
    """
    if not destination.exists() and not destination.is_symlink():
        try:
            os.rename(new, destination)
            return
        except OSError as exc:  # another export made it meanwhile: swap with that one
            if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                raise
    if not _rename_exchange(new, destination):
        backup = destination.parent / f"{_build_prefix(destination)}{os.getpid()}-old{uuid.uuid4().hex[:8]}"
        os.rename(destination, backup)
        os.rename(new, destination)
        new = backup
    _remove(new)


def _remove(path: Path) -> None:
    """A replaced destination or an abandoned build: a folder, or the symbolic link the
    destination was (the link goes, never what it points to)."""
    if path.is_symlink():
        path.unlink(missing_ok=True)
    else:
        shutil.rmtree(path, ignore_errors=True)


def _rename_exchange(a: Path, b: Path) -> bool:
    import ctypes.util  # only writers swap folders; it costs a load ~10 ms to import

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
