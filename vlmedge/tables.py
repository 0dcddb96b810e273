"""Rows printed for a person: as a table where it fits the console, else (a narrow terminal,
a log: 80 columns) as one block per row, so that no cell is ever wrapped over lines. The
commands' tables (vlmedge.cli) and bench's comparison print through it, as their --json
documents for a program print through print_json."""

from __future__ import annotations

import contextlib
import contextvars
import errno
import io
import json
import os
import shutil
import sys
from typing import Any, Iterator

from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from vlmedge.errors import OutputError, for_terminal, one_line


class TerminalConsole(Console):
    """The commands' console: text printed through it has its control characters written as
    escapes (errors.for_terminal), whatever it quotes (a label, a path, a library's message);
    soft wrap, so that a line of text stays one line however narrow the terminal or a log (rich
    would wrap at 80)."""

    def __init__(self, stderr: bool = False) -> None:
        super().__init__(stderr=stderr, soft_wrap=True)
        if self.width < 1:  # COLUMNS=0, which rich takes as a width of 0 and prints nothing at all, errors included
            self.width = shutil.get_terminal_size().columns  # which takes it as unset

    def print(self, *objects: Any, **kwargs: Any) -> None:
        with contextlib.nullcontext() if self.stderr else stdout_written():
            super().print(*(encodable(for_terminal(o), self) if isinstance(o, str) else o for o in objects), **kwargs)


@contextlib.contextmanager
def stdout_written() -> Iterator[None]:
    """A write to standard output that failed (a full disk, a closed descriptor) as one
    OutputError, not a traceback; its reader closing it (`| head`) is left to click, which
    ends the command quietly. The text that could not be written is dropped, so that Python's
    flush at exit does not fail on it again."""
    try:
        yield
    except OSError as exc:
        if exc.errno == errno.EPIPE:
            raise
        raise stdout_unwritable(exc) from None


def stdout_unwritable(exc: OSError) -> OutputError:
    """The sentence for a write to standard output that failed; what it could not write is
    dropped (standard output is /dev/null for the rest of the process)."""
    sys.stdout = open(os.devnull, "w")  # noqa: SIM115
    return OutputError(f"Cannot write to standard output ({exc.strerror or exc}); send it to a file or pipe that "
                       "can take it.")


def stdout_failed(exc: OSError) -> bool:
    """Whether `exc`, raised outside stdout_written, is a failed write to standard output:
    closed, or the innermost call was click's echo, which prints the help and usage."""
    if isinstance(sys.stdout, ClosedStdout) and exc.errno == errno.EBADF:
        return True
    frame = exc.__traceback__
    while frame is not None and frame.tb_next is not None:
        frame = frame.tb_next
    code = frame.tb_frame.f_code if frame is not None else None
    return (code is not None and code.co_name == "echo" and "click" in code.co_filename
            and not frame.tb_frame.f_locals.get("err"))  # echo(err=True): standard error's


class ClosedStdout(io.TextIOBase):
    """Standard output of a process started with it closed (`>&-`), which Python makes None and
    print and rich then write nowhere: a write fails as writing to the closed descriptor does,
    so that a result is never lost under a success (vlmedge.cli.main holds descriptor 1)."""

    def write(self, text: str) -> int:
        raise OSError(errno.EBADF, os.strerror(errno.EBADF))


def encodable(text: str, console: Console) -> str:
    """``text`` with what the console's encoding cannot hold (ascii, cp1252: a label's 'é' or
    '日') written as escapes before rich measures it, so that a table's columns stay aligned
    (the streams' own backslashreplace, vlmedge.cli.main, would widen the cells after)."""
    encoding = console.encoding or "utf-8"
    return text if encoding.startswith("utf") else text.encode(encoding, "backslashreplace").decode(encoding)


def print_rows(console: Console, rows: list[dict[str, str]], title: str, right: tuple[str, ...] = ()) -> None:
    """Rows (column -> text with rich markup) as a table when it fits the console, else (a
    narrow terminal, a log: 80 columns) as blocks: the first column, then the others as
    `column: value` pairs, as many to a line as fit."""
    if not rows:
        return
    rows = [{column: encodable(one_line(text), console) for column, text in row.items()} for row in rows]
    title = encodable(one_line(title), console)
    columns = list(rows[0])
    table = Table(title=title, title_justify="left")
    for column in columns:
        table.add_column(column, justify="right" if column in right else "left", overflow="fold")
    for row in rows:
        table.add_row(*(row.get(c, "") for c in columns))
    if console.measure(table, options=console.options.update(width=10_000)).maximum <= console.width:
        console.print(table)
        return
    console.print(f"[bold]{escape(title)}[/bold]")
    for row in rows:
        if row[columns[0]]:
            console.print(row[columns[0]], highlight=False)
        lines: list[str] = []
        for pair in (f"{column}: {row[column]}" for column in columns[1:] if row.get(column)):
            joined = f"{lines[-1]}, {pair}" if lines else pair
            if lines and len(Text.from_markup("  " + joined)) <= console.width:
                lines[-1] = joined
            else:
                lines.append(pair)
        for line in lines:
            console.print(f"  {line}", highlight=False)


def failure_line(name: str, error: str) -> str:
    """An input that failed, as the lists after a run print it: its message, which names its
    file already as most do, else the input and the message."""
    return one_line(error if name in error else f"{name}: {error}")


# Whether the running command printed its --json result: one that fails after that (predict with an
# unreadable input, check with a missed gate) prints no second JSON document (vlmedge.cli.base).
json_printed = contextvars.ContextVar("json_printed", default=False)


def print_json(data: Any) -> None:
    """A command's --json result, on stdout."""
    with stdout_written():
        print(json.dumps(data, indent=2), flush=True)
    json_printed.set(True)
