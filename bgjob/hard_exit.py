"""The process's hard exit (a second SIGTERM/SIGINT to a worker): `os._exit`, which skips atexit handlers, so
what must not outlive the process registers here (`before_hard_exit`) and `hard_exit` runs it first.

External-process handlers register the kill of their programs' process groups (bgjob.external_process); the
worker's signal handler (bgjob.worker.signals, shared with bgjob_django's commands) calls `hard_exit`.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from typing import NoReturn

log = logging.getLogger("bgjob.worker")

_callbacks: list[Callable[[], None]] = []
_lock = threading.Lock()


def before_hard_exit(callback: Callable[[], None]) -> None:
    """Run `callback()` (no arguments, its return value ignored) when this process exits hard, before `os._exit`.

    Registering one callback twice keeps one. The callback runs in a signal handler, in the main thread: it must
    not wait on a lock another thread (or the interrupted main thread) may hold, and must return within about a
    second (the process is meant to exit at once). Never raises."""
    with _lock:
        if callback not in _callbacks:
            _callbacks.append(callback)


def hard_exit(status: int) -> NoReturn:
    """Run the `before_hard_exit` callbacks (in registration order; one that raises is logged and the next runs),
    then `os._exit(status)`: no atexit handler, no finally block of another thread, runs. Never returns."""
    try:
        for callback in list(_callbacks):  # no lock: a signal handler may have interrupted its holder
            try:
                callback()
            except Exception:  # the exit goes on whatever a callback does
                log.exception("before_hard_exit callback %r failed", callback)
    finally:
        os._exit(status)
