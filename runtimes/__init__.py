"""Backends that run an artifact's model files: one module per backend, imported only
when that backend is chosen."""

from vlmedge.runtimes.base import (
    BACKENDS,
    Session,
    TensorInfo,
    available_backends,
    open_session,
)

__all__ = ["BACKENDS", "Session", "TensorInfo", "available_backends", "open_session"]
