"""How the CLI's long-running commands stop: SIGTERM takes the path Ctrl-C takes."""
from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager


def _interrupt(signum: int, frame) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Within: SIGTERM raises KeyboardInterrupt in the main thread, as SIGINT does.

    systemd, ``docker stop`` and Kubernetes stop a process with SIGTERM, whose default action ends it on the spot:
    no ``finally``, no exit callback, so what it started is left running. As a KeyboardInterrupt, the stop unwinds
    through the code that owns the children (an ``ExitStack``, a ``with``), and the command can exit 0. A server
    that handles SIGTERM itself meanwhile (uvicorn, Prefect's runner) replaces this handler while it runs.
    """
    if threading.current_thread() is not threading.main_thread():  # only the main thread may set handlers
        yield
        return
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
