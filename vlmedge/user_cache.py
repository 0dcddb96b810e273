"""The user's vlmedge cache folder, and the memo of artifact files already verified.

Where: $VLMEDGE_CACHE_DIR, else $XDG_CACHE_HOME/vlmedge, else ~/.cache/vlmedge.
Off: VLMEDGE_NO_CACHE=1 (or cache=False where a call takes it): nothing is read or written.

Verifying an artifact hashes its files (a ViT-B artifact's: about a second), on every load.
The memo records, per file, the sha256 it had and the file's identity when it was hashed
(size, mtime, ctime, inode); a file whose identity is unchanged is not hashed again. Any
write through the file system changes the ctime, which no program can set back, so an
altered file is always hashed again and refused as before. An export records the sha256
it computed of each file it wrote, so the first load after it hashes nothing either. The
memo is plain JSON, written atomically; an unreadable one is ignored and rewritten.

Each user has a memo of their own, used only if that user owns it and no other user may
write it: in a cache folder users share, another user's memo could vouch for an altered
file with the manifest's sha256 (or refuse a good one with a wrong digest).
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
import uuid
from pathlib import Path
from typing import Callable


def memo_name() -> str:
    """This user's memo's file name in the cache folder."""
    user = getattr(os, "geteuid", lambda: None)()
    return "verified-files.json" if user is None else f"verified-files-{user}.json"


MEMO_LIMIT = 4096  # files remembered; the oldest are forgotten first


def cache_root() -> Path:
    """The folder holding vlmedge's caches (compiled models, the verified-file memo)."""
    explicit = os.environ.get("VLMEDGE_CACHE_DIR")
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CACHE_HOME", "")
    if not os.path.isabs(base):  # the XDG spec: a relative one is ignored (it would follow the working folder)
        base = str(_home() / ".cache")
    return Path(base) / "vlmedge"


def _home() -> Path:
    """$HOME where it is an absolute path, else the user's home in the password database: an
    empty HOME put the cache at the file system's root, a relative one under the working folder."""
    home = os.environ.get("HOME", "")
    if os.path.isabs(home):
        return Path(home)
    import pwd

    return Path(pwd.getpwuid(os.getuid()).pw_dir)


def cache_enabled(requested: bool | None = None) -> bool:
    """An explicit True/False wins; None follows VLMEDGE_NO_CACHE (on unless it is set)."""
    if requested is not None:
        return bool(requested)
    return os.environ.get("VLMEDGE_NO_CACHE", "").strip().lower() in ("", "0", "false", "no", "off")


def file_identity(info: os.stat_result) -> list[int]:
    """What changes whenever a file's content may have: size, mtime, ctime, inode, device."""
    return [info.st_size, info.st_mtime_ns, info.st_ctime_ns, info.st_ino, info.st_dev]


class VerifiedFiles:
    """sha256 of files, hashed only when their identity changed since the memo saw them."""

    def __init__(self, hash_file: Callable[[Path], str], enabled: bool | None = None) -> None:
        self._hash_file = hash_file
        self._path = cache_root() / memo_name() if cache_enabled(enabled) else None
        self._memo = self._read() if self._path else {}
        self._changed = False

    def sha256(self, path: Path, info: os.stat_result) -> str:
        key = str(path.resolve())
        identity = file_identity(info)
        known = self._memo.get(key)
        if isinstance(known, list) and len(known) == 2 and known[0] == identity and isinstance(known[1], str):
            return known[1]
        digest = self._hash_file(path)
        self._remember(key, identity, digest)
        return digest

    def learn(self, path: Path, info: os.stat_result, digest: str) -> None:
        """Records a sha256 computed elsewhere (the export's, of a file it just wrote)."""
        if self._path:
            self._remember(str(path.resolve()), file_identity(info), digest)

    def _remember(self, key: str, identity: list[int], digest: str) -> None:
        self._memo.pop(key, None)  # re-insert: dicts keep insertion order, the newest last
        self._memo[key] = [identity, digest]
        self._changed = True

    def save(self) -> None:
        """Writes the memo if it learned something; a failure only costs the speed-up."""
        if not (self._path and self._changed):
            return
        memo = dict(list(self._memo.items())[-MEMO_LIMIT:])
        temporary = self._path.with_name(f".{self._path.name}.{uuid.uuid4().hex}")
        try:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            with open(temporary, "x", encoding="utf-8", opener=_open_private) as f:  # 0600 whatever the umask
                f.write(json.dumps(memo))
            os.replace(temporary, self._path)
        except OSError:
            with contextlib.suppress(OSError):
                temporary.unlink()

    def _read(self) -> dict:
        try:
            with open(self._path, "rb", opener=_open_no_follow) as f:
                if not _mine_alone(os.fstat(f.fileno())):
                    return {}
                memo = json.loads(f.read().decode("utf-8"))
        except (OSError, UnicodeDecodeError, ValueError, RecursionError):
            return {}
        return memo if isinstance(memo, dict) else {}


def _open_private(path: str, flags: int) -> int:
    return os.open(path, flags, 0o600)


def _open_no_follow(path: str, flags: int) -> int:
    return os.open(path, flags | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))  # a FIFO never blocks


def _mine_alone(info: os.stat_result) -> bool:
    """Whether a file is this user's and no other user may write it."""
    return stat.S_ISREG(info.st_mode) and owned_by_me(info) and not info.st_mode & 0o022


def owned_by_me(info: os.stat_result) -> bool:
    """Whether a file or folder is this user's (always, where there are no user ids: Windows)."""
    return not hasattr(os, "geteuid") or info.st_uid == os.geteuid()
