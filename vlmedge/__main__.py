"""`vlmedge` (the console script) and `python -m vlmedge`: the command line.

Its imports (typer, rich, numpy, the runtimes: ~0.3 s) run inside main(), so that Ctrl-C
while they run ends the command as Ctrl-C during a command does (typer's exit 130, the
shell's code for a command stopped by SIGINT, without a word), not with Python's traceback
of whichever import it interrupted.
"""

from __future__ import annotations

import sys

STOPPED_BY_CTRL_C = 130  # 128 + SIGINT


def main() -> None:
    try:
        from vlmedge.cli import main as run_command_line
    except KeyboardInterrupt:
        sys.exit(STOPPED_BY_CTRL_C)
    except ModuleNotFoundError as exc:  # typer, rich, numpy ...: a broken install, said before any command runs
        from vlmedge.environment import dependency_missing

        missing = dependency_missing(exc)
        if missing is None:
            raise
        print(f"Error: {missing}", file=sys.stderr)
        sys.exit(missing.exit_code)
    run_command_line()


if __name__ == "__main__":
    main()
