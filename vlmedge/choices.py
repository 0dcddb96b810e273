"""The checks of option values (tasks, targets, backends, precisions) against the tables where
they are declared: tasks in vlmedge.registry, backends and targets in runtimes.base.BACKENDS,
precisions in vlmedge.parity.PRECISIONS. Every command checks its options here before it opens
anything, so that a bad value is a usage error (exit 2) naming the valid ones. Runtime-safe:
`vlmedge serve` uses it too, so nothing here may reach the exporters (vlmedge.formats, which
lists what this install can export, does).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Iterable

from vlmedge.environment import mounts
from vlmedge.errors import UsageError

# Where predict, embed and serve run: this process, or a Ray cluster (--engine).
ENGINES = ("local", "ray")


def split(value: str | Iterable[str] | None) -> list[str]:
    """'a, b,,c' -> ['a', 'b', 'c']; a list is returned as given, without blanks."""
    parts = value.split(",") if isinstance(value, str) else list(value or [])
    return [part.strip() for part in parts if part and part.strip()]


def choose(option: str, value: str | Iterable[str] | None, allowed: Iterable[str], many: bool = True) -> list[str]:
    """The comma-separated values of `option`, each checked against `allowed`; a UsageError
    (exit 2) naming the valid values otherwise."""
    allowed = list(allowed)
    chosen = split(value)
    unknown = [c for c in chosen if c not in allowed]
    if unknown or not chosen or (not many and len(chosen) > 1):
        given = ", ".join(unknown) or ", ".join(chosen) or "nothing"
        raise UsageError(f"{option} {given} is not valid; choose {'from' if many else 'one of'} {', '.join(allowed)}.")
    return list(dict.fromkeys(chosen))


def check_run_options(backend: str, precision: str | None) -> None:
    """--backend and --precision of the commands that run an artifact (predict, embed, serve),
    before it is opened."""
    check_backends("--backend", backend, ["auto", *backend_names()], many=False)
    if precision is not None:
        choose("--precision", precision, precision_names(), many=False)


SESSION_OPTION_HELP = ("A session option of the backend that runs the files (repeatable): optimization=basic, "
                       "performance_hint=throughput, inference_precision=fp32; `vlmedge formats` lists each backend's.")


def session_options(threads: int | None, pairs: Iterable[str] | None) -> dict[str, Any]:
    """--threads and each --session-option NAME=VALUE as the session options of vlmedge.load,
    each value of the type its option declares (runtimes.base.BACKENDS). Whether the backend
    that runs the files takes them is checked when it loads (with --backend auto, which one
    runs is known only then)."""
    from vlmedge.runtimes.base import declared_session_options

    declared = declared_session_options()
    options: dict[str, Any] = {"threads": threads} if threads else {}
    for pair in pairs or []:
        name, equals, value = (part.strip() for part in pair.partition("="))
        if not (name and equals and value):
            raise UsageError(f"--session-option takes NAME=VALUE, not {pair!r}; for example "
                             "--session-option performance_hint=throughput.")
        if name not in declared:
            raise UsageError(f"--session-option {name} is no backend's session option; choose from "
                             f"{', '.join(declared)} (`vlmedge formats` says what each sets).")
        if name in options:
            raise UsageError(f"The session option {name} is given twice; give it once.")
        try:
            options[name] = declared[name].kind(value)
        except ValueError:
            raise UsageError(f"--session-option {name}={value} is not valid: {name} is a whole number.") from None
    return options


def check_backends(option: str, value: str | Iterable[str] | None, allowed: Iterable[str],
                   many: bool = True) -> list[str]:
    """choose() for backends; one that cannot run here (TensorRT without its GPU and
    package, a package not installed) raises runtimes.base.unavailable_reason's sentence."""
    from vlmedge.errors import BackendUnavailableError
    from vlmedge.runtimes.base import BACKENDS, unavailable_reason

    chosen = choose(option, value, allowed, many)
    for name in chosen:
        reason = unavailable_reason(BACKENDS[name]) if name in BACKENDS else None
        if reason:
            raise BackendUnavailableError(reason)
    return chosen


def task_names() -> list[str]:
    from vlmedge.registry import TASKS

    return list(TASKS)


def target_names() -> list[str]:
    from vlmedge.runtimes.base import BACKENDS

    return list(dict.fromkeys(b.target for b in BACKENDS.values()))


def backend_names() -> list[str]:
    from vlmedge.runtimes.base import BACKENDS

    return list(BACKENDS)


def precision_names() -> list[str]:
    from vlmedge.parity import PRECISIONS

    return list(PRECISIONS)


def written_path(path: Path) -> Path:
    """The path a command's file is written at and renamed to: a symbolic link's target, so
    that a link is written through, as the shell's `>` writes through it, not replaced by a
    file (its target left as it was)."""
    return Path(os.path.realpath(path)) if os.path.islink(path) else Path(path)


# Trees whose paths name devices and processes' files: /dev/stdout is /proc/self/fd/1, which
# resolves to whatever the shell sent standard output to (`>> build.log`), so a file renamed
# over its target replaced the log. /dev/shm holds plain files.
DEVICE_TREES = ("/dev", "/proc", "/sys")
PLAIN_FILE_TREE = "/dev/shm"
MAX_LINKS = 40  # as Linux follows at most 40 links in a path


def _under(path: str, tree: str) -> bool:
    return path == tree or path.startswith(tree + "/")


# File systems of devices and of the kernel's own files, mounted at /dev, /proc and /sys or
# elsewhere (a chroot's /proc, a bind mount of it, a fresh `mount -t proc`).
KERNEL_FILE_SYSTEMS = frozenset({"proc", "sysfs", "devtmpfs", "devpts", "mqueue", "debugfs", "tracefs", "securityfs",
                                 "configfs", "cgroup", "cgroup2", "pstore", "bpf", "efivarfs", "binfmt_misc",
                                 "fusectl"})


def _file_system_of(path: str, points: list[tuple[str, str]]) -> str:
    """The type of the file system holding `path`: its longest mount point's (`points`, longest
    first: a tmpfs at /dev/shm holds its files, not the devtmpfs at /dev)."""
    return next((kind for point, kind in points if point == "/" or _under(path, point)), "")


def _special_step(path: Path) -> str | None:
    """The first path that resolving `path` goes through, as the kernel resolves it (component
    by component, each symbolic link's target read where the link is, a link to a folder in the
    middle of the path too), that is under /dev, /proc or /sys or on their file systems mounted
    elsewhere; None for none. Raises UsageError past MAX_LINKS links."""
    points = sorted(mounts().items(), key=lambda item: len(item[0]), reverse=True)
    pending = list(Path(path if os.path.isabs(path) else os.path.join(current_folder(), path)).parts)
    current, links = "/", 0
    while pending:
        part = pending.pop(0)
        if part.startswith("/") or part in ("", ".", ".."):  # the root ("/" or "//"), or no step
            current = "/" if part.startswith("/") else os.path.dirname(current) if part == ".." else current
            continue
        step = os.path.join(current, part)
        kernel_files = any(_under(step, tree) for tree in DEVICE_TREES) or \
            _file_system_of(step, points) in KERNEL_FILE_SYSTEMS
        if kernel_files and step not in DEVICE_TREES and not _under(step, PLAIN_FILE_TREE):  # /dev leads to /dev/shm
            return step
        if os.path.islink(step):
            links += 1
            if links > MAX_LINKS:
                raise UsageError(f"{path} goes through more than {MAX_LINKS} symbolic links (a loop of links?); fix "
                                 "the link or give another path.")
            try:
                pending = list(Path(os.readlink(step)).parts) + pending
            except OSError as exc:
                raise UsageError(f"{path} cannot be followed past {step} ({exc.strerror}); give another path.") from None
        else:
            current = step
    return None


def current_folder() -> str:
    """os.getcwd(), or the sentence for a working folder removed since the command started."""
    try:
        return os.getcwd()
    except FileNotFoundError:
        raise UsageError("The current folder was removed; cd to a folder that exists, or give absolute paths.") from None


def check_not_special(path: Path, named: str) -> None:
    """Refuses a path that is there and no regular file: a command's file is written beside it
    and renamed over it, which would replace a pipe or a device (/dev/null, as root, for
    every process) with a file; and a path that goes through /dev, /proc or /sys (or their file
    systems mounted elsewhere), or through more links than the kernel follows (a loop of links)."""
    try:
        special = _special_step(path)
    except UsageError as exc:
        raise UsageError(str(exc).replace(str(path), named, 1)) from None
    if special:
        raise UsageError(f"{named} goes through {special}, on /dev, /proc or /sys or a file system of theirs mounted "
                         "elsewhere, whose files are devices and the kernel's; give the path of a file to write "
                         "elsewhere.")
    if path.exists() and not path.is_file() and not path.is_dir():  # a folder: the callers say so
        raise UsageError(f"{named} is not a regular file (a pipe, a device or a socket); give the path of a file "
                         "to write.")


def check_writable_file(path: Path, named: str, example: str = "") -> None:
    """Refuses a path a command could not write its file to, before anything runs: a folder,
    a path under a file, a folder where no file can be made (its permissions, and a file made
    there and removed: permissions do not tell root, nor a read-only or virtual file system).
    `named`: how the message names the path ("--json r.json"); `example`: a file to suggest
    for a folder. Folders that do not exist yet are the writer's to create. A path that is
    no regular file (a pipe, a device) is refused too; a symbolic link is written through."""
    check_not_special(path, named)  # first: a path into /proc may not even be looked at
    if path.is_dir():
        raise UsageError(f"{named} is a folder; give the path of a file to write{example}.")
    folder = written_path(path).absolute().parent
    while not folder.exists() and not folder.is_symlink():
        folder = folder.parent
    if not folder.is_dir():
        raise UsageError(f"{named} cannot be written: {folder} is a file, not a folder; choose another path.")
    reason = None if os.access(folder, os.W_OK | os.X_OK) else "no permission to create files"
    if reason is None:
        try:
            fd, probe = tempfile.mkstemp(dir=folder, prefix=".vlmedge-write-check-")
        except OSError as exc:
            reason = exc.strerror or str(exc)
        else:
            os.close(fd)
            os.unlink(probe)
    if reason is not None:
        raise UsageError(f"{named} cannot be written ({reason} in {folder}); choose a path in a folder you can write.")

