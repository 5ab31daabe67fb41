"""How dead letters, queues and workers are shown, shared by the admin pages and the commands."""

from __future__ import annotations

import json
from typing import Any

import bgjob
from bgjob.cli import progress_fraction, progress_text, shown_progress

#: the most of a payload a page shows, in bytes (`manage.py bgjob_dlq show` prints all of it).
PAYLOAD_SHOWN_BYTES = 64 * 1024
#: the most characters of a job's progress the "Find a job by id" box shows.
PROGRESS_SHOWN_CHARS = 500


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


def job_progress(status: bgjob.JobStatus, *, masked: bool = True,
                 sensitive: frozenset[str] = frozenset()) -> dict[str, Any] | None:  # fmt: skip
    """What the admin shows of a job's latest progress (`JobStatus.progress`), None when it has none: `text`
    (`bgjob.cli.progress_text`: `300 / 1000 (30%)` for `done`/`total` numbers, else its JSON, at most
    PROGRESS_SHOWN_CHARS characters; bytes as their size), `done`/`total` (texts, for a progress bar, or None) and
    `at` (when it was stored). Unless `masked` is False, the values of the job's sensitive arg keys (stored with
    its progress) and of `sensitive` (its handler's) are masked at any depth, as its arg is."""
    if status.progress is None:
        return None
    value = shown_progress(status, sensitive) if masked else status.progress
    fraction = progress_fraction(value)
    return {"text": progress_text(value, PROGRESS_SHOWN_CHARS), "at": status.progress_at,
            "done": str(fraction[0]) if fraction else None,
            "total": str(fraction[1]) if fraction else None}  # fmt: skip


def live_workers(client: bgjob.Client) -> list[bgjob.WorkerInfo]:
    """The workers alive now (bgjob's worker directory), by id."""
    return client.workers()
