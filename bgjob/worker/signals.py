"""SIGTERM/SIGINT for a process that runs workers: the first signal drains, a second one exits at once
(`bgjob.hard_exit`)."""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from typing import Any

from ..hard_exit import hard_exit

log = logging.getLogger("bgjob.worker")


def install_drain_signals(stop: Callable[[], None], describe: Callable[[], str] = lambda: "in-flight jobs"
                          ) -> Callable[[], None]:  # fmt: skip
    """Make SIGTERM/SIGINT call `stop` (a second one exits with status 1 through `bgjob.hard_exit.hard_exit`, which
    first kills the process groups of running external programs); returns a function that restores
    the previous handlers. Outside the main thread signals cannot be handled there: nothing is installed."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    received = 0

    def on_signal(signum: int, _frame: Any) -> None:
        nonlocal received
        received += 1
        if received == 1:
            log.warning("%s: draining %s (send again to exit now)", signal.Signals(signum).name, describe())
            stop()
        else:
            log.warning("second signal: exiting now; unfinished jobs are redelivered after ack_wait")
            hard_exit(1)  # external programs' process groups killed first (bgjob.hard_exit)

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}

    def restore() -> None:
        for sig, handler in previous.items():
            signal.signal(sig, handler)

    return restore
