"""How dead letters, queues and workers are shown, shared by the admin pages and the commands."""

from __future__ import annotations

import json

import bgjob


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
