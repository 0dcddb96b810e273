"""`vlmedge` (the console script) and `python -m vlmedge`: the command line.

Its imports (typer, rich, numpy, the runtimes: ~0.3 s) run inside main(), so that Ctrl-C
while they run ends as Ctrl-C during a command does (click's "Aborted!", exit 1), not with
Python's traceback of whichever import it interrupted.
"""

from __future__ import annotations

import sys


def main() -> None:
    try:
        from vlmedge.cli import main as run_command_line
    except KeyboardInterrupt:
        print("\nAborted!", file=sys.stderr)
        sys.exit(1)
    run_command_line()


if __name__ == "__main__":
    main()
