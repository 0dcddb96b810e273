"""The compiled-model cache: where backends keep what they compiled, so that a second load
of the same model file skips the compilation.

Each backend keeps its own form (OpenVINO's CACHE_DIR blobs, ONNX Runtime's saved optimised
model); this module only decides where, and whether an entry may be used. An entry is a
folder named by the hash of its key: the model files' content hash, the backend and its
version, the CPU (model name and flags) and the options that change compilation. Its
key.json, written last, repeats the key and lists every file with its size and sha256:

- a folder whose key.json is missing, unreadable, of another key, or whose files differ
  from the listing in any way (missing, extra, truncated, altered) is never used: it is
  rebuilt. Nothing is unpickled; key.json is plain JSON.
- a file is hashed again only when its size, mtime, ctime or inode changed since it was
  listed: any write through the file system changes the ctime, which no program can set
  back, so an untouched entry loads without reading it twice. Files are fsynced before
  key.json is written, so a power cut cannot leave a listed file with unwritten data.
- an entry is built in a temporary sibling folder and renamed into place whole, so a
  process killed while compiling leaves at most a temporary folder that no load uses; the
  builder locks it and names its pid in it (vlmedge.build_locks), so that the next build
  removes it (a device whose loads an out-of-memory killer ends filled its disk with them).
- an entry is used only if its folder is the user's own and no other user can write into it
  (start_build makes it 0700). Entries are named per user, and one user's never replaces or
  removes another's: in a cache folder users share, each keeps their own.
- failing to write the cache (read-only home, full disk) only costs the speed-up.

Where: one folder per backend in vlmedge.user_cache.cache_root().
Off: vlmedge.load(..., cache=False), or VLMEDGE_NO_CACHE=1 in the environment.
Seen and emptied with `vlmedge cache` (list_entries, clear_entries). An entry is evicted
only when a newer one replaces it: built from the same model file path, with the same key
but the file's content (a re-export to the same folder) or the cache's format, which the old
one could serve only if the old bytes, or an older vlmedge, came back.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import stat
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

from vlmedge.artifact import sha256_file
from vlmedge.build_locks import abandoned, lock_path
from vlmedge.environment import cpu_key
from vlmedge.errors import VlmedgeError, warn_caller
from vlmedge.user_cache import cache_root, file_identity, owned_by_me

# 2: ONNX Runtime's entries hold the packed weights; an entry of an older form is rebuilt
CACHE_FORMAT = 2
KEY_FILE = "key.json"
_KEY_PARTIAL = ".key-"  # key.json being written
_TMP_PREFIX, _OLD_PREFIX = ".tmp-", ".old-"
# a temporary folder without its builder's pid (an earlier vlmedge's) this old belongs to a killed process
_ABANDONED_AFTER_S = 24 * 3600


def files_digest(paths: Iterable[Path]) -> str:
    """A content hash of model files, for callers without a manifest (hashes every byte)."""
    digest = hashlib.sha256()
    for path in paths:
        digest.update(f"{Path(path).name}:{sha256_file(Path(path))}\n".encode())
    return digest.hexdigest()


def cache_entry(backend: str, version: str, model_digest: str, device: str, options: dict[str, Any],
                source: Path | None = None) -> "CacheEntry":
    """The cache entry for one model compiled by one backend version, on this CPU and device,
    with these options (values must be plain JSON types); `source`, the model file, is
    recorded for listings, not keyed (the same content at another path is the same entry)."""
    key = {"format": CACHE_FORMAT, "backend": backend, "version": str(version), "model": model_digest,
           "cpu": cpu_key(), "device": str(device), "options": {k: options[k] for k in sorted(options)}}
    # named per user too: in a cache folder users share, each one's entries are their own (0700)
    user = getattr(os, "geteuid", lambda: None)()
    name = hashlib.sha256(json.dumps({**key, "user": user}, sort_keys=True).encode()).hexdigest()[:32]
    return CacheEntry(key=key, folder=cache_root() / backend / name,
                      source=str(Path(source).absolute()) if source else None)


@dataclass
class CacheEntry:
    """One folder of the cache. `status` says what the last load did with it: "hit" (used),
    "miss" (compiled, then saved), "unsaved" (compiled, saving failed)."""

    key: dict[str, Any]
    folder: Path
    status: str = "miss"
    unsaved_because: str | None = None  # why the backend's last build was abandoned, when it said
    source: str | None = None  # the model file it is built from, recorded in key.json for listings
    _lock: int | None = field(default=None, init=False, repr=False)  # held on the folder being built

    def lookup(self) -> bool:
        """Whether the folder holds a complete entry of this key whose files are exactly
        the ones listed, byte for byte."""
        if not _made_here_and_private(self.folder):
            return False
        try:
            record = json.loads((self.folder / KEY_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError, UnicodeDecodeError, RecursionError):
            return False
        if not isinstance(record, dict) or record.get("key") != self.key or not isinstance(record.get("files"), dict):
            return False
        listed: dict[str, Any] = record["files"]
        moved = {}  # files whose identity changed (a copied cache) but whose content is the same
        try:
            present = {p.name for p in self.folder.iterdir() if not p.name.startswith(_KEY_PARTIAL)} - {KEY_FILE}
            if present != set(listed):
                return False
            for name, want in listed.items():
                path = self.folder / name
                if not isinstance(want, dict) or path.is_symlink() or not path.is_file():
                    return False
                info = path.stat()
                if info.st_size != want.get("size"):
                    return False
                if want.get("stat") != file_identity(info):
                    if sha256_file(path) != want.get("sha256"):
                        return False
                    moved[name] = file_identity(info)
        except OSError:
            return False
        if moved:  # recorded, so that the next load of a copied cache is not hashed again
            for name, identity in moved.items():
                listed[name]["stat"] = identity
            try:
                _replace_key_record(self.folder, record)
            except OSError:  # a read-only cache: hashed again next time, still correct
                pass
        return True

    def start_build(self) -> Path | None:
        """A fresh temporary folder beside the entry for the backend to write into, or None
        when the cache cannot be written (the load then goes on without it)."""
        try:
            _make_backend_folder(self.folder.parent)
            _sweep(self.folder.parent)
            import tempfile  # here, not at the top: only a miss builds, and a warm load should not pay for it

            built = Path(tempfile.mkdtemp(prefix=f"{_TMP_PREFIX}{self.folder.name}-{os.getpid()}-",
                                          dir=self.folder.parent))
            self._lock = lock_path(built)
            return built
        except OSError as exc:
            self._unsaved(exc)
            return None

    def commit(self, built: Path) -> None:
        """Lists what the backend wrote, writes key.json last and renames the folder into place."""
        try:
            _write_key_file(built, self.key, self.source)
            self._install(built)
            self.status = "miss"
        except OSError as exc:
            self._unsaved(exc)
        finally:
            shutil.rmtree(built, ignore_errors=True)  # gone already when it was renamed
            self._release()
        if self.status == "miss":
            self._remove_superseded()

    def _remove_superseded(self) -> None:
        """Removes the entries this one replaces: from the same model file path, with the
        same key but the model's content or the cache's format (re-exporting to one folder
        would otherwise leave an entry per export behind)."""
        if not self.source:
            return
        replaced = ("model", "format")
        rest = {k: v for k, v in self.key.items() if k not in replaced}
        for folder, record in _records(self.folder.parent):
            key = record["key"]
            if folder != self.folder and record.get("source") == self.source and _made_here_and_private(folder) \
                    and {k: v for k, v in key.items() if k not in replaced} == rest:
                _remove_folder(folder)

    def abandon(self, built: Path, because: str | None = None) -> None:
        """Drops a build the backend could not finish; `because` is kept for the backend to
        report once it knows the model itself loads (a broken model fails its build too)."""
        shutil.rmtree(built, ignore_errors=True)
        self._release()
        self.status = "unsaved"
        self.unsaved_because = because

    def _release(self) -> None:
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None

    def warn_unsaved(self) -> None:
        """Says why a build was abandoned (see abandon), once the model loaded without it."""
        if self.unsaved_because:
            self._unsaved(self.unsaved_because)

    def discard(self) -> None:
        """Removes an entry the backend could not use."""
        _remove_folder(self.folder)

    def _install(self, built: Path) -> None:
        try:
            os.rename(built, self.folder)
            return
        except OSError:
            if not self.folder.exists():
                raise
        if self.lookup():  # another process installed the same entry meanwhile: keep theirs
            return
        _remove_folder(self.folder)
        os.rename(built, self.folder)

    def _unsaved(self, reason: OSError | str) -> None:
        self.status = "unsaved"
        warn_caller(f"vlmedge could not write its compiled-model cache at {self.folder.parent} ({reason}); "
                    "the model loads without it. Set VLMEDGE_CACHE_DIR to a writable folder with free space, or "
                    "VLMEDGE_NO_CACHE=1 to turn the cache off.")


def _make_backend_folder(folder: Path) -> None:
    """Makes a backend's folder of the cache. In a cache folder users share (writable by all and
    sticky, as /tmp is) it is shared alike: made 0755 by the first user, it let no other user
    build their entries in it."""
    folder.mkdir(parents=True, exist_ok=True)
    shared = os.stat(folder.parent).st_mode & 0o1002 == 0o1002
    info = os.stat(folder)
    if shared and owned_by_me(info) and stat.S_IMODE(info.st_mode) != 0o1777:
        os.chmod(folder, 0o1777)


def _made_here_and_private(folder: Path) -> bool:
    """Whether an entry's folder is this user's and no other user can change what is in it, as
    start_build makes it (mkdtemp: mode 0700). In a cache folder shared with others, another
    user's entry could hold any model with a key.json to match: it is never used or removed."""
    try:
        info = os.lstat(folder)
    except OSError:
        return False
    return stat.S_ISDIR(info.st_mode) and owned_by_me(info) and not info.st_mode & 0o077


def list_entries() -> list[dict[str, Any]]:
    """The complete entries of the cache folder (those with a readable key.json), oldest
    first: backend, version, device, options, source (the model file, when recorded),
    created, bytes on disk, folder. Builds in progress are not entries yet. What cannot be
    read (another user's entries, a cache "folder" that is a file) is warned of, so that a
    listing is never read as an empty cache."""
    unread = _unreadable(cache_root(), "listed")
    if unread:
        warn_caller(unread)
    return _entries()


def _unreadable(root: Path, doing: str) -> str | None:
    """Why part of the cache folder cannot be `doing` (listed, removed), or None."""
    if root.exists() and not root.is_dir():
        return f"The cache folder {root} is not a folder, so nothing in it can be {doing}; set VLMEDGE_CACHE_DIR to one."
    try:
        parents = [p for p in root.iterdir() if p.is_dir() and not p.is_symlink()]
    except FileNotFoundError:
        return None
    except OSError as exc:
        return (f"The cache folder {root} cannot be read ({exc.strerror or exc}), so nothing in it can be {doing}; "
                "check its permissions.")
    blocked = 0
    for parent in parents:
        try:
            folders = [f for f in parent.iterdir() if not f.name.startswith((_TMP_PREFIX, _OLD_PREFIX))]
        except OSError:
            blocked += 1
            continue
        blocked += sum(1 for f in folders if f.is_dir() and not os.access(f / KEY_FILE, os.R_OK))
    return (f"{blocked} compiled model(s) in {root} cannot be read (another user's, or no permission) and were not "
            f"{doing}; check the folder's permissions, or set VLMEDGE_CACHE_DIR to a folder of your own.") if blocked else None


def _backend_folders() -> list[Path]:
    """The cache folder's folders, one a backend; none where there is no readable cache folder."""
    try:
        return sorted(p for p in cache_root().iterdir() if p.is_dir() and not p.is_symlink())
    except OSError:
        return []


def _entries() -> list[dict[str, Any]]:
    found = []
    for parent in _backend_folders():
        for folder, record in _records(parent):
            key = record["key"]
            try:
                size = sum(p.stat().st_size for p in folder.iterdir() if p.is_file())
            except OSError:  # removed meanwhile
                continue
            found.append({"backend": key.get("backend"), "version": key.get("version"), "device": key.get("device"),
                          "options": key.get("options"), "source": record.get("source"),
                          "created": record.get("created"), "bytes": size, "folder": str(folder)})
    return sorted(found, key=lambda e: str(e["created"]))


def _records(parent: Path) -> Iterator[tuple[Path, dict[str, Any]]]:
    """(folder, key.json record) of each complete entry in one backend's folder; none when
    the folder cannot be read (replacing or listing entries never fails a load)."""
    try:
        folders = sorted(parent.iterdir())
    except OSError:
        return
    for folder in folders:
        if folder.name.startswith((_TMP_PREFIX, _OLD_PREFIX)) or folder.is_symlink() or not folder.is_dir():
            continue
        try:
            record = json.loads((folder / KEY_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError, UnicodeDecodeError, RecursionError):
            continue
        if isinstance(record, dict) and isinstance(record.get("key"), dict):
            yield folder, record


def clear_entries() -> tuple[int, int]:
    """Removes every complete entry of the cache folder, each renamed first as a rebuild
    removes one (a load either finds it whole or not at all); builds in progress finish, and
    those killed processes left are removed.
    The number of entries and the bytes removed; a VlmedgeError naming the folder if some
    could not be removed (the others are)."""
    entries = _entries()
    errors = [error for entry in entries if (error := _remove_folder(Path(entry["folder"]))) is not None]
    for parent in _backend_folders():
        _sweep(parent)
    if errors:
        raise VlmedgeError(f"{len(errors)} of the {len(entries)} compiled models in {cache_root()} could not be removed "
                           f"({errors[0].strerror or errors[0]}; the other {len(entries) - len(errors)} were); check "
                           "the folder's permissions, or set VLMEDGE_CACHE_DIR to a folder of your own.")
    unread = _unreadable(cache_root(), "removed")
    if unread:
        raise VlmedgeError(unread)
    return len(entries), sum(e["bytes"] for e in entries)


def _remove_folder(folder: Path) -> OSError | None:
    """Removes an entry's folder, renamed first, so that no load ever sees it half-deleted;
    the error if it could not be renamed (a concurrent clear or rebuild took it: no matter)."""
    trash = folder.parent / f"{_OLD_PREFIX}{folder.name}-{uuid.uuid4().hex[:8]}"
    try:
        os.rename(folder, trash)
    except FileNotFoundError:
        return None
    except OSError as error:
        return error
    shutil.rmtree(trash, ignore_errors=True)
    return None


def _write_key_file(folder: Path, key: dict[str, Any], source: str | None = None) -> None:
    files = {}
    for path in sorted(folder.iterdir()):
        if path.name == KEY_FILE or path.name.startswith(_KEY_PARTIAL):
            continue
        with open(path, "rb") as f:
            os.fsync(f.fileno())
        info = path.stat()
        files[path.name] = {"size": info.st_size, "sha256": sha256_file(path), "stat": file_identity(info)}
    record = {"key": key, "files": files, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "source": source}
    _replace_key_record(folder, record)


def _replace_key_record(folder: Path, record: dict[str, Any]) -> None:
    """Writes key.json whole or not at all (a reader sees the old record or the new one)."""
    partial = folder / f"{_KEY_PARTIAL}{uuid.uuid4().hex[:8]}"
    try:
        partial.write_text(json.dumps(record, indent=1, sort_keys=True) + "\n", encoding="utf-8")
        os.replace(partial, folder / KEY_FILE)
    finally:
        partial.unlink(missing_ok=True)


def _sweep(parent: Path) -> None:
    """Deletes this user's builds that killed processes left behind, and the discarded entries
    (.old-, renamed to be removed) whose removal a killed process did not finish."""
    for candidate in parent.iterdir():
        if candidate.name.startswith((_TMP_PREFIX, _OLD_PREFIX)) and _made_here_and_private(candidate) \
                and (candidate.name.startswith(_OLD_PREFIX) or _build_abandoned(candidate)):
            shutil.rmtree(candidate, ignore_errors=True)


def _build_abandoned(folder: Path) -> bool:
    """Whether no process builds in this temporary folder any more: its builder's lock is free
    (the pid in its name, where there are no locks), or, without a pid, it is a day old."""
    builder = re.fullmatch(rf"{re.escape(_TMP_PREFIX)}[0-9a-f]+-(\d+)-.+", folder.name)
    if builder:
        return abandoned(folder, int(builder.group(1)))
    try:
        return time.time() - folder.stat().st_mtime > _ABANDONED_AFTER_S
    except OSError:
        return False

