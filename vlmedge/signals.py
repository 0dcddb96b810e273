"""SIGTERM (`timeout`, `kill`, a scheduler) ends a long command as Ctrl-C does."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from typing import Any, Iterator


class _Terminated(BaseException):
    """SIGTERM, raised where the run is, so that it unwinds as Ctrl-C does."""


@contextlib.contextmanager
def sigterm_as_interrupt(stopped: str | None = None) -> Iterator[None]:
    """Within it, SIGTERM unwinds the run as Ctrl-C does, so that what it was writing (an
    export's build folder and scratch files, a bulk run's temporary output) is removed on the
    way out; then the process ends by SIGTERM, as it would have without this handler.
    `stopped`: a line for stderr when either stops the run (what was left as it was)."""
    if threading.current_thread() is not threading.main_thread():  # only the main thread may set handlers
        yield
        return

    def terminate(signum: int, frame: Any) -> None:
        raise _Terminated()

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    except (_Terminated, KeyboardInterrupt) as exc:
        if stopped:
            print(f"\n{'Terminated' if isinstance(exc, _Terminated) else 'Interrupted'}: {stopped}", file=sys.stderr)
        if isinstance(exc, KeyboardInterrupt):
            raise
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)
