"""How dead letters, queues and workers are shown, shared by the admin pages and the commands."""

from __future__ import annotations

import json

import bgjob

#: the most of a payload a page shows, in bytes (`manage.py bgjob_dlq show` prints all of it).
PAYLOAD_SHOWN_BYTES = 64 * 1024


def pretty_arg(entry: bgjob.DeadLetter, *, masked: bool = True) -> str:
    """The job's arg as indented JSON (its sensitive keys' values masked unless `masked` is False); raw bytes as
    a Python bytes literal (shortened)."""
    return shown_payload(entry, masked=masked)[0]


def shown_payload(entry: bgjob.DeadLetter, *, masked: bool = True, limit: int = PAYLOAD_SHOWN_BYTES,
                  ) -> tuple[str, int | None, int]:  # fmt: skip
    """What a page shows of the job's arg: (text, None, size) when all of it fits in `limit` bytes, else (its
    first `limit` bytes, the whole size in bytes, `limit`). JSON is shown indented (sensitive keys' values
    masked unless `masked` is False), raw bytes as a Python bytes literal of the body. JSON and bytes are cut by
    the same rule."""
    arg = entry.masked_arg if masked else entry.arg
    if isinstance(arg, bytes):
        return repr(arg[:limit]), (len(arg) if len(arg) > limit else None), min(len(arg), limit)
    text = json.dumps(arg, indent=2, ensure_ascii=False, sort_keys=True)
    encoded = text.encode()
    if len(encoded) <= limit:
        return text, None, len(encoded)
    return encoded[:limit].decode(errors="ignore") + " …", len(encoded), limit


def live_workers(client: bgjob.Client) -> list[bgjob.WorkerInfo]:
    """The workers alive now (bgjob's worker directory), by id."""
    return client.workers()
