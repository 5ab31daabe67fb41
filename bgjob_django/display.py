"""How dead letters, queues and workers are shown, shared by the admin pages and the commands."""

from __future__ import annotations

import json
import threading
from typing import Any

from django.core.signals import setting_changed
from django.dispatch import receiver

import bgjob
from bgjob.cli import interactive_settings

_lock = threading.Lock()
_interactive: bgjob.Client | None = None


def interactive_client() -> bgjob.Client:
    """The client of the admin pages and the management commands: the project's (bgjob_django.conf) settings
    with retry_for and connect_timeout capped to about two seconds (bgjob.cli.interactive_settings), so that an
    unreachable NATS is reported at once rather than retried for retry_for while someone waits. One per process,
    connected lazily (on first use), apart from get_client()'s; closed when settings.BGJOB changes."""
    global _interactive
    client = _interactive
    if client is None:
        from .conf import get_config, project_settings

        settings = interactive_settings(project_settings(get_config().client))
        with _lock:
            if _interactive is None:
                _interactive = bgjob.Client(settings)
            client = _interactive
    return client


def reset_interactive_client() -> None:
    """Close and forget the interactive client (settings.BGJOB changed)."""
    global _interactive
    with _lock:
        client, _interactive = _interactive, None
    if client is not None:
        client.close()


@receiver(setting_changed)
def _on_setting_changed(*, setting: str, **kwargs: Any) -> None:
    if setting == "BGJOB":
        reset_interactive_client()


def pretty_arg(entry: bgjob.DeadLetter, *, masked: bool = True) -> str:
    """The job's arg as indented JSON (its sensitive keys' values masked unless `masked` is False); raw bytes as
    a Python bytes literal (shortened)."""
    arg = entry.masked_arg if masked else entry.arg
    if isinstance(arg, bytes):
        return repr(arg[:4096]) + (f" ... ({len(arg)} bytes)" if len(arg) > 4096 else "")
    return json.dumps(arg, indent=2, ensure_ascii=False, sort_keys=True)


def live_workers(client: bgjob.Client) -> list[bgjob.WorkerInfo]:
    """The workers alive now (bgjob's worker directory), by id."""
    return client.workers()
