"""Every failure a user can cause or fix is a VlmedgeError subclass.

The CLI prints these as one sentence without a traceback, because they describe a
problem with the user's input or environment, not a bug in vlmedge, and exits with the
class's `exit_code` (EXIT_CODES lists them all).
"""

import contextlib
import re
import sys
import threading
import warnings
from typing import Any, Iterator

# The `vlmedge` command's exit codes, declared once (the README's "Errors" table mirrors them).
EXIT_CODES = {
    0: "success",
    1: "a runtime failure: a missing file, an unreadable input, a backend not installed, a failed export step",
    2: "bad usage: an unknown command or option, an option value outside its choices, or a path option that "
       "does not exist; nothing was run",
    3: "a parity gate failed: `export` left out a variant that missed its gate (or wrote nothing), or "
       "`check` found a file that no longer matches its source",
}


def first_line(exc: BaseException, limit: int = 300) -> str:
    """The first non-empty line of an exception's message, cut to `limit` characters: what a
    one-sentence error quotes of the backend's or library's exception behind it. A line that
    ends in a colon is joined to the next, and OpenVINO's source locations ("Exception from
    src/...cpp:132:") are dropped, so that the cause they precede is what is quoted."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    while len(lines) > 1 and lines[0].endswith(":"):
        lines[:2] = [f"{lines[0]} {lines[1]}"]
    text = re.sub(r"Exception from \S+:\d+:\s*(?=\S)", "", lines[0]) if lines else type(exc).__name__
    return cut_at_word(text, limit)


def cut_at_word(text: str, limit: int) -> str:
    """`text`, or past `limit` characters its words up to there and "…", never a part word."""
    if len(text) <= limit:
        return text
    return text[:limit].rsplit(" ", 1)[0].rstrip(" ;,:") + "…"


def exception_line(exc: BaseException, limit: int = 300) -> str:
    """The exception's type and the first line of its message ("RuntimeError: ..."), or its
    type alone when the message is empty."""
    return f"{type(exc).__name__}: {first_line(exc, limit)}" if str(exc).strip() else type(exc).__name__


def warn_caller(message: str, category: type[Warning] = UserWarning) -> None:
    """warnings.warn, attributed to the first frame outside vlmedge: the user's own line that
    loaded the model, however deep in vlmedge the cause was found. Python prints that line
    with the warning, and its default filter shows a warning once per such line. On a thread
    inside `warnings_held` the warning is held for the thread that called vlmedge to give."""
    held = getattr(_HELD, "warnings", None)
    if held is not None:
        held.append((message, category))
        return
    level, frame = 2, sys._getframe(1)
    while frame.f_back is not None and frame.f_globals.get("__name__", "").partition(".")[0] == "vlmedge":
        frame, level = frame.f_back, level + 1
    warnings.warn(message, category, stacklevel=level)


# The warnings this thread holds for another (see warnings_held), if any.
_HELD = threading.local()


@contextlib.contextmanager
def warnings_held(held: list[tuple[str, type[Warning]]]) -> Iterator[None]:
    """Within it, warn_caller on this thread appends (message, category) to `held` rather
    than warning: a decode thread's frames end in its thread pool, not the user's line, so the
    thread that consumes the decoded item gives them, each with warn_caller again."""
    _HELD.warnings = held
    try:
        yield
    finally:
        _HELD.warnings = None


class UnverifiedWarning(UserWarning):
    """A model file runs here on another provider or in another precision than its parity
    gate verified at export; `vlmedge check` verifies it on this machine."""


class VlmedgeError(Exception):
    """Base class: the message says what was wrong and what to do."""

    exit_code = 1


class InputError(VlmedgeError, ValueError):
    """An image, audio clip, caption or array that cannot be used as model input."""


class NonFiniteOutputError(InputError):
    """A model file that answered NaN or infinity for finite inputs: its precision (fp16 most
    often) overflows on them. Its answer is refused rather than ranked or returned; `rows`:
    the items of the call that overflowed."""

    def __init__(self, message: str, rows: tuple[int, ...] = ()) -> None:
        super().__init__(message)
        self.rows = tuple(rows)


class UsageError(VlmedgeError, ValueError):
    """An option or argument outside its choices, found before anything is loaded or run."""

    exit_code = 2


class OutputError(VlmedgeError):
    """A results file that could not be written (a full disk, a folder removed mid-run)."""


class ArtifactError(VlmedgeError):
    """An artifact that is missing, corrupt, tampered with or of an unknown schema."""


class UnsupportedModelError(VlmedgeError):
    """A model architecture or reference vlmedge cannot export."""


class ModelNotFoundError(VlmedgeError):
    """A model reference that names no local folder and is not in the offline cache."""


class BackendUnavailableError(VlmedgeError):
    """A backend or device that is not installed or not present on this machine."""


class ExportError(VlmedgeError):
    """An export step that failed; nothing was written."""


class ParityError(ExportError):
    """An exported file whose outputs differ from the source model beyond its gate."""

    exit_code = 3


# Control characters but tab and newline: C0, DEL and C1 (ESC starts a terminal's commands); the
# bidirectional marks, overrides and isolates, which reorder how the text after them reads; the
# zero-width space, which splits a label where nothing shows; the line and paragraph separators,
# the byte-order mark and the invisible tag characters. (The zero-width joiners are not escaped:
# emoji sequences and several scripts write with them.)
_CONTROL_CHARACTERS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200b\u200e\u200f\u2028\u2029\u202a-\u202e"
                                 r"\u2066-\u2069\ufeff\U000e0000-\U000e007f]")


def for_terminal(text: str) -> str:
    """Text printed on a terminal with its control characters written as escapes ('\\x1b'): a
    label from a model's config or a file's name holding ESC sequences would otherwise recolour
    or rewrite the user's terminal. JSON output escapes them itself."""
    return _CONTROL_CHARACTERS.sub(lambda found: found.group().encode("unicode_escape").decode("ascii"), text)


def one_line(text: str) -> str:
    """Text for a place that is one line by design (an error's sentence, a table's cell) with its
    tabs and newlines written as escapes too: a newline in a quoted path or label would split the
    error's line or start a row where the table's next row goes."""
    return for_terminal(text).replace("\t", "\\t").replace("\n", "\\n")


def printable(text: Any) -> Any:
    """A string with the bytes of a file name that is not UTF-8 (os.fsdecode's surrogates, which
    Arrow's UTF-8 strings, strict JSON and some terminals cannot hold) escaped, b'\\xff' as
    '\\xff': in a message, a printed or JSON row, a path column, a .files.json. Anything else as
    it is."""
    if not isinstance(text, str):
        return text
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
