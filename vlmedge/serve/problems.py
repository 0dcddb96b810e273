"""HTTP errors as JSON: {"error": {"status", "code", "message"}}, one per failure kind."""

from __future__ import annotations

import re
from typing import Callable

from vlmedge.errors import InputError, VlmedgeError

# What json.loads raises for a body that is not JSON it can read: bad UTF-8 and bad syntax
# (UnicodeDecodeError, JSONDecodeError), an integer longer than Python converts (a plain
# ValueError), nesting too deep (RecursionError). Every protocol answers them as malformed JSON.
MALFORMED_JSON = (ValueError, RecursionError)


class Problem(Exception):
    """An answer other than 200: status, a stable machine-readable code, a sentence for people."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}

    def __reduce__(self):  # so that a Problem crosses processes (Ray Serve replicas) intact
        return (Problem, (self.status, self.code, self.message, self.headers))

    def body(self) -> dict:
        return {"error": {"status": self.status, "code": self.code, "message": self.message}}


def from_vlmedge_error(exc: VlmedgeError) -> Problem:
    """InputError (an input the model cannot use) -> 422; any other VlmedgeError -> 400."""
    if isinstance(exc, InputError):
        return Problem(422, "invalid_input", str(exc))
    return Problem(400, "bad_request", str(exc))


def inputs_renamed(exc: Problem | VlmedgeError, rename: Callable[[str, int], str]) -> Problem:
    """The problem, its inputs named as another protocol names them: each ``images[i]``,
    ``texts[i]`` or ``audio[i]`` of the /v1 fields becomes ``rename(field, i)``."""
    problem = exc if isinstance(exc, Problem) else from_vlmedge_error(exc)
    message = re.sub(r"\b(images|texts|audio)\[(\d+)\]", lambda m: rename(m[1], int(m[2])), problem.message)
    return Problem(problem.status, problem.code, message, problem.headers)


def shutting_down() -> Problem:
    """The answer to a request the server stops before answering (SIGTERM)."""
    return Problem(503, "shutting_down", "The server is shutting down; retry elsewhere.", retry_after(1))


def queue_full(name: str, waiting: int, limit: int, retry_s: float) -> Problem:
    """The answer to a request beyond a model's --max-queue."""
    return Problem(503, "queue_full", f"Model '{name}' has {waiting} requests waiting, its limit (--max-queue {limit}); "
                                      "retry after the Retry-After seconds.", retry_after(retry_s))


def retry_after(seconds: float) -> dict[str, str]:
    return {"Retry-After": str(max(1, int(seconds + 0.999)))}
