"""How dead letters, queues and workers are shown, shared by the admin pages and the commands."""

from __future__ import annotations

import json
from typing import Any

import bgjob


def entry_summary(entry: bgjob.DeadLetter, *, masked: bool = True) -> dict[str, Any]:
    """A dead letter's fields, without its body and traceback; its error scrubbed of sensitive values unless
    `masked` is False (for someone allowed to see payloads)."""
    return {
        "id": entry.id, "seq": entry.seq, "queue": entry.queue, "type": entry.type, "reason": entry.reason,
        "error": entry.masked_error if masked else entry.error, "attempts": entry.attempts,
        "first_failure_at": entry.first_failure_at, "last_failure_at": entry.last_failure_at,
        "enqueued_at": entry.enqueued_at, "request_id": entry.request_id,
    }  # fmt: skip


def entry_details(entry: bgjob.DeadLetter, *, masked: bool = True) -> dict[str, Any]:
    """`entry_summary` plus the arg (`pretty_arg`), headers and traceback: what `show` prints. Masked (sensitive
    arg keys, sensitive headers, quotes of their values) unless `masked` is False."""
    return {
        **entry_summary(entry, masked=masked),
        "arg": pretty_arg(entry, masked=masked),
        "headers": entry.masked_headers if masked else dict(entry.headers),
        "traceback": entry.masked_traceback if masked else entry.traceback,
    }


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
