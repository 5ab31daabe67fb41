"""The ids of this process's bgjob Workers, by queue: what django.tasks results record for each attempt.

A leaf module: `worker.py` fills it when it builds its workers, `tasks.py` reads it while running a task.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping

#: The id of the bgjob Worker serving each queue in this process (what the worker directory shows).
_worker_ids: dict[str, str] = {}


def worker_id(queue: str) -> str:
    """The id of this process's worker for `queue`; `<host>-<pid>` if none serves it here."""
    return _worker_ids.get(queue) or f"{socket.gethostname()}-{os.getpid()}"


def remember(ids: Mapping[str, str]) -> None:
    """Record `ids` (queue name -> bgjob Worker id) as this process's workers; later calls win per queue."""
    _worker_ids.update(ids)
