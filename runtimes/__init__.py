"""Backends that run an artifact's model files: one module per backend, imported only
when that backend is chosen; `select` turns an artifact's manifest entries into sessions."""

from vlmedge.runtimes.base import (
    BACKENDS,
    Backend,
    Session,
    TensorInfo,
    available_backends,
    open_session,
)

__all__ = ["BACKENDS", "Backend", "Session", "TensorInfo", "available_backends", "open_session"]
