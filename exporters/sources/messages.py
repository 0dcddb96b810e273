"""What the source modules' one-sentence refusals quote of an exception, kept apart from
any source so that the sources can share it without importing one another."""

from __future__ import annotations


def first_line(exc: BaseException, limit: int = 300) -> str:
    """The first non-empty line of an exception's message, cut to `limit` characters."""
    return next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)[:limit]
