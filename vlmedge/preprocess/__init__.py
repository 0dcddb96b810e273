"""Torch-free input preprocessing: images (Pillow + numpy), text and audio.

Each submodule holds a spec dataclass that is stored in the artifact manifest and the
functions that turn raw inputs into model-ready numpy arrays with it.
"""

from __future__ import annotations

import dataclasses
import errno
import io
import os
from pathlib import Path
from typing import Any

from vlmedge.errors import ArtifactError, InputError, VlmedgeError

# What decoding and preprocessing one untrusted input (an image, a clip) may raise: the
# decoders turn what they know into InputError, and Pillow/soundfile can still raise these.
# Whoever handles a batch of inputs charges such an error to that input alone.
READ_ERRORS = (VlmedgeError, OSError, ValueError, SyntaxError, MemoryError)
# How messages name the audio containers soundfile (libsndfile 1.1+) decodes.
AUDIO_FORMATS = "WAV, FLAC, OGG, MP3 or AIFF"


def visible_paths(root: Path, unreadable: list[str] | None = None) -> list[Path]:
    """Every path under a folder given as input, hidden ones (a file or folder named '.x' on
    the way) left out: what `vlmedge embed`, a bulk run and --calibration / --eval read.
    Links to folders are listed, not followed (a link may loop). Each folder that could not be
    listed (no permission) is added to `unreadable`, as "PATH (REASON)", for the caller to say."""
    found = []

    def not_listed(error: OSError) -> None:
        if unreadable is not None:
            unreadable.append(f"{error.filename} ({error.strerror or error})")

    for folder, folders, files in os.walk(root, onerror=not_listed):
        folders[:] = [name for name in folders if not name.startswith(".")]
        found.extend(Path(folder, name) for name in folders + files if not name.startswith("."))
    return found


def check_input_file(path: str, kind: str) -> None:
    """A path to decode must name a regular file: a FIFO or device could block the read forever,
    and a link to nothing is a broken link, not a missing file. `kind`: "image" or "audio"."""
    shown = path if len(path) <= 120 else f"{path[:100]}... ({len(path):,} characters)"
    if path.startswith(("http://", "https://")):
        raise InputError(f"{shown} is a URL; vlmedge does not download {kind} files, so download it and pass the "
                         "file path.")
    if path.startswith("data:"):
        raise InputError(f"{shown} is a data: URI, not a path; pass its bytes: "
                         "base64.b64decode(uri.split(',', 1)[1]).")
    if os.path.isfile(path):
        if os.path.getsize(path) == 0:
            raise InputError(f"{kind.capitalize()} file {shown} is empty (0 bytes); pass a complete {kind} file.")
        return
    if os.path.isdir(path):
        raise InputError(f"{shown} is a directory, not an {kind} file; pass the path of an {kind} file inside it.")
    if os.path.exists(path):
        raise InputError(f"{shown} is not a regular file (a FIFO, socket or device); pass an {kind} file.")
    if os.path.islink(path):
        try:
            os.stat(path)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise InputError(f"{shown} is a link into a loop of links ({os.readlink(path)} ...); fix the link or "
                                 "pass the file.") from None
        raise InputError(f"{shown} is a link to {os.readlink(path)}, which does not exist; fix the link or pass the file.")
    if path == "-":  # the shell's name for standard input, as many commands take it
        raise InputError(f"'-' (standard input) is not read; pass the {kind} files' paths, or save what you pipe "
                         "to a file first.")
    raise InputError(f"{kind.capitalize()} file {shown} does not exist; check the path.")


def read_file_object(source: io.IOBase, kind: str) -> tuple[bytes, str]:
    """The bytes left in a binary file object (open(path, "rb"), io.BytesIO), read from where
    it stands, as Pillow and soundfile read one, and how messages name it (its file's name if
    it has one). InputError for one opened in text mode, closed, or that cannot be read."""
    name = getattr(source, "name", None)
    what = f"The {kind} file object of {name}" if isinstance(name, str) else f"The {kind} file object"
    if isinstance(source, io.TextIOBase):
        raise InputError(f"{what} was opened in text mode; open it in binary mode (open(path, 'rb')).")
    try:
        data = source.read()
    except (OSError, ValueError) as exc:  # closed, or not opened for reading
        raise InputError(f"{what} could not be read ({exc}); pass an open binary file, its bytes or its path.") from None
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise InputError(f"{what} gave {type(data).__name__}, not bytes; open it in binary mode (open(path, 'rb')).")
    return bytes(data), what


def spec_from_dict(cls: Any, d: Any, what: str) -> Any:
    """A spec dataclass from its manifest dict (written by its ``to_dict``); missing fields
    take their defaults. ArtifactError when ``d`` is not a dict or names unknown fields;
    the dataclass's own checks judge the values."""
    if not isinstance(d, dict):
        raise ArtifactError(f"The {what} spec is a {type(d).__name__}, not a dict; re-export the artifact.")
    unknown = sorted(set(d) - {f.name for f in dataclasses.fields(cls)})
    if unknown:
        raise ArtifactError(f"The {what} spec has unknown fields {unknown}; upgrade vlmedge or re-export the artifact.")
    return cls(**d)
