"""The `vlmedge` typer app and what every command prints through: its command class (one-line
errors and warnings, plain help), the consoles, and `show`, which prints rows as a table or, where
a table does not fit (a narrow terminal, a log: 80 columns), as blocks. A line of text is never
wrapped, to stay one line in a log."""

from __future__ import annotations

import re
import warnings
from typing import Any

import typer
import typer.core
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from vlmedge import choices
from vlmedge.errors import VlmedgeError
from vlmedge.version import __version__


class Command(typer.core.TyperCommand):
    """Help that reads `ARTIFACT INPUTS...`, not typer's `{ARTIFACT} {INPUTS}...` with
    `<list[str]>` type labels beside each argument."""

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
        with warnings.catch_warnings():
            warnings.showwarning = lambda message, *_, **__: err_console.print(
                f"[yellow]warning:[/yellow] {escape(str(message))}", highlight=False)
            try:
                return super().invoke(ctx)
            except VlmedgeError as exc:
                print_error(exc)
                raise typer.Exit(exc.exit_code) from None


app = typer.Typer(
    help="Export, verify and run vision, vision-language and audio transformers on edge hardware.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # plain help: "pip install 'vlmedge[ray]'" keeps its [ray]
)
# Soft wrap: a line of text stays one line however narrow the terminal or a log (rich would wrap at 80).
console = Console(soft_wrap=True)
err_console = Console(stderr=True, soft_wrap=True)
BACKEND_CHOICES = ["auto", *choices.backend_names()]


def _version(value: bool) -> None:
    if value:
        print(f"vlmedge {__version__}")
        raise typer.Exit()


@app.callback()
def _main(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="Print the version and exit.")) -> None:
    """Export, verify and run vision, vision-language and audio transformers on edge hardware."""


def show(rows: list[dict[str, str]], title: str, right: tuple[str, ...] = ()) -> None:
    """Rows (column -> text with rich markup) as a table when it fits the console, else (a
    narrow terminal, a log: 80 columns) as blocks: the first column, then the others as
    `column: value` pairs, as many to a line as fit."""
    if not rows:
        return
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


def print_error(exc: VlmedgeError) -> None:
    """One line on stderr; messages name extras such as vlmedge[ray], which are not markup."""
    err_console.print(f"[red]Error:[/red] {escape(str(exc))}", highlight=False)  # as click says a usage error
