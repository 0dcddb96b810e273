"""Torch-free input preprocessing: images (Pillow + numpy), text and audio.

Each submodule holds a spec dataclass that is stored in the artifact manifest and the
functions that turn raw inputs into model-ready numpy arrays with it.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from vlmedge.errors import ArtifactError, VlmedgeError

# What decoding and preprocessing one untrusted input (an image, a clip) may raise: the
# decoders turn what they know into InputError, and Pillow/soundfile can still raise these.
# Whoever handles a batch of inputs charges such an error to that input alone.
READ_ERRORS = (VlmedgeError, OSError, ValueError, SyntaxError, MemoryError)


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
