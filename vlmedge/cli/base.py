"""The `vlmedge` typer app and what every command prints through: its command class (one-line
errors and warnings, plain help), the consoles, and `show`, which prints rows as a table or, where
a table does not fit (a narrow terminal, a log: 80 columns), as blocks (vlmedge.tables). A line of
text is never wrapped, to stay one line in a log."""

from __future__ import annotations

import contextlib
import errno
import functools
import re
import warnings
from typing import Any

import typer
import typer.core
from rich.markup import escape

from vlmedge import choices
from vlmedge.environment import dependency_missing
from vlmedge.errors import InputError, OutputError, VlmedgeError, one_line, printable
from vlmedge.tables import TerminalConsole, json_printed, print_json, print_rows
from vlmedge.version import __version__


# click's UsageError, whether typer vendors click (typer._click, as typer 0.29 does) or imports it.
ClickUsageError = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "UsageError")


@contextlib.contextmanager
def one_line_usage_errors():
    """click prints a usage error as three lines (the usage, a hint, the error); a log gets one,
    as a VlmedgeError's: `Error: No such option: --to; see 'vlmedge predict --help'.`"""
    try:
        yield
    except ClickUsageError as exc:
        if exc.ctx is None or type(exc).__name__ == "NoArgsIsHelpError":  # a bare `vlmedge`: its help, as click prints it
            raise
        raise ClickUsageError(f"{exc.format_message().rstrip('.')}; see '{exc.ctx.command_path} --help'.") from None


class Group(typer.core.TyperGroup):
    """The app: an unknown command, or an option of its own it does not know, is one line."""

    def make_context(self, *args: Any, **kwargs: Any) -> Any:
        with one_line_usage_errors():
            return super().make_context(*args, **kwargs)

    def resolve_command(self, ctx: Any, args: list[str]) -> Any:
        with one_line_usage_errors():
            return super().resolve_command(ctx, args)


class OutOfMemoryError(VlmedgeError):
    """A command that ran out of memory (Python's MemoryError), said as what to do about it."""

    def __init__(self, command: str, takes_batch_size: bool) -> None:
        fewer = ", lower --batch-size," if takes_batch_size else ""
        super().__init__(f"{command} ran out of memory; free memory{fewer} or raise this process's memory "
                         "limit (ulimit -v).")


class Command(typer.core.TyperCommand):
    """Help that reads `ARTIFACT INPUTS...`, not typer's `{ARTIFACT} {INPUTS}...` with
    `<list[str]>` type labels beside each argument; usage errors in one line."""

    def make_context(self, *args: Any, **kwargs: Any) -> Any:
        with one_line_usage_errors():
            return super().make_context(*args, **kwargs)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for param in self.params:
            if isinstance(param, typer.core.TyperArgument):
                param.display_type = lambda ctx: None  # the metavar and help say what it is

    def collect_usage_pieces(self, ctx: Any) -> list[str]:
        return [re.sub(r"\{([^{}]+)\}", r"\1", piece) for piece in super().collect_usage_pieces(ctx)]

    def invoke(self, ctx: Any) -> Any:
        """A VlmedgeError ends the command with one line and its class's exit code, however the app is run
        (the console script, `python -m`, typer's test runner); a warning is one line, not Python's two."""
        json_printed.set(False)
        with warnings.catch_warnings():
            warnings.showwarning = lambda message, *_, **__: err_console.print(
                f"[yellow]warning:[/yellow] {escape(one_line(str(message)))}", highlight=False)
            try:
                try:
                    with one_line_usage_errors():  # a typer.BadParameter of the command's own checks
                        return super().invoke(ctx)
                except ClickUsageError as exc:
                    _print_json_error(ctx, exc.format_message(), "UsageError", exc.exit_code)
                    raise
            except VlmedgeError as exc:
                _fail(ctx, exc)
            except MemoryError:  # Python's, raised by whichever allocation failed: its traceback says nothing
                _fail(ctx, OutOfMemoryError(ctx.command_path, takes_batch_size=any(
                    "--batch-size" in getattr(param, "opts", ()) for param in ctx.command.params)))
            except ModuleNotFoundError as exc:  # one of vlmedge's own requirements: a broken install
                missing = dependency_missing(exc)
                if missing is None:
                    raise
                _fail(ctx, missing)
            except OSError as exc:  # a path the checks before any work met first (they stat what the user names)
                if exc.errno != errno.ENAMETOOLONG:
                    raise
                _fail(ctx, InputError(f"{exc.filename} has a name longer than the file system takes (255 bytes); "
                                      "shorten it."))


def _wants_json(ctx: Any) -> bool:
    return ctx.params.get("as_json") is True or ctx.params.get("json_path") == "-"  # bench: --json -


def _print_json_error(ctx: Any, message: str, kind: str, exit_code: int) -> None:
    """A --json command that fails before printing its result prints the failure as JSON on stdout,
    so that a script reading stdout gets a document, not an empty string, beside the stderr line."""
    if _wants_json(ctx) and not json_printed.get():
        with contextlib.suppress(OutputError):  # a standard output that cannot take it: the stderr line says it
            print_json({"error": one_line(printable(message)), "type": kind, "exit_code": exit_code})


def _fail(ctx: Any, exc: VlmedgeError) -> None:
    print_error(exc)
    _print_json_error(ctx, str(exc), type(exc).__name__, exc.exit_code)
    raise typer.Exit(exc.exit_code) from None

app = typer.Typer(
    cls=Group,
    help="Export, verify and run vision, vision-language and audio transformers on edge hardware.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # plain help: "pip install 'vlmedge[ray]'" keeps its [ray]
)
console, err_console = TerminalConsole(), TerminalConsole(stderr=True)
# Rows as a table where it fits the console, else as blocks (vlmedge.tables.print_rows).
show = functools.partial(print_rows, console)
BACKEND_CHOICES = ["auto", *choices.backend_names()]


def _version(value: bool) -> None:
    if value:
        console.print(f"vlmedge {__version__}", markup=False, highlight=False)
        raise typer.Exit()


@app.callback()
def _main(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="Print the version and exit.")) -> None:
    """Export, verify and run vision, vision-language and audio transformers on edge hardware."""


def print_error(exc: VlmedgeError) -> None:
    """One line on stderr; messages name extras such as vlmedge[ray], which are not markup."""
    err_console.print(f"[red]Error:[/red] {escape(one_line(printable(str(exc))))}", highlight=False)  # as click says a usage error
