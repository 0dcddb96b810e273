"""Values shared by the spec and the Hugging Face interpreter: resample filters, numbers."""

from __future__ import annotations

import math
from typing import Any

# Pillow's resample filters by name, with the int codes HF configs store.
RESAMPLE = {"nearest": 0, "lanczos": 1, "bilinear": 2, "bicubic": 3, "box": 4, "hamming": 5}


def is_number(value: Any) -> bool:
    """A finite int or float (not a bool)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
