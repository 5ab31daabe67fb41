"""Messages on the wire: a delivered message -> Job, and a delivered job -> the message of its next run.

Producing a new job lives in `bgjob.producer` (validated at the call); this module builds what the worker
publishes on a job's behalf (a retry or a reschedule as a server-side `@at` schedule) and reads what it
receives.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from nats.aio.msg import Msg
from nats.js.api import Header

from . import job as jobmod
from .headers import ATTEMPTS_USED, MSG_ID, SCHEDULE_NAME, SIGNATURE, derived_msg_id
from .job import Job
from .result import KEEP_ARG

#: the attempts a header may claim: a hand-written message cannot make a job immortal or pre-exhausted.
_MAX_CARRIED = 1_000_000


def attempts_used(headers: dict[str, str]) -> int:
    """Attempts used before this message was stored (0 for a job's first message)."""
    text = headers.get(ATTEMPTS_USED)
    if not text or not text.isdigit():
        return 0
    return min(int(text), _MAX_CARRIED)


def job_id_of(msg: Msg) -> str:
    """The job's id: its Bgjob-Id header, else (a periodic firing or a hand-published message) one made unique
    by the stream sequence."""
    headers = msg.headers or {}
    raw_id = headers.get(jobmod.HEADER_ID)
    if jobmod.is_valid_job_id(raw_id):
        return raw_id  # type: ignore[return-value]
    schedule = headers.get(SCHEDULE_NAME)
    return f"{schedule if jobmod.is_valid_job_id(schedule) else 'seq'}-{msg.metadata.sequence.stream}"


def decode_job(msg: Msg, queue: str, job_type: str, job_id: str, attempt: int, max_attempts: int | None) -> Job:
    """The Job a handler sees; raises jobmod.DecodeError for a body or header that does not decode."""
    headers = msg.headers or {}
    declared = headers.get(jobmod.HEADER_TYPE)
    if declared is not None and declared != job_type:
        raise jobmod.DecodeError(f"header {jobmod.HEADER_TYPE} {declared!r} disagrees with subject {msg.subject!r}")
    return Job(
        id=job_id,
        type=job_type,
        arg=jobmod.decode_arg(msg.data, headers.get(jobmod.CONTENT_TYPE)),
        queue=queue,
        attempt=attempt,
        request_id=headers.get(jobmod.HEADER_REQUEST_ID),
        # Jobs fired by a periodic schedule were enqueued when the server stored them.
        enqueued_at=jobmod.parse_time(headers.get(jobmod.HEADER_ENQUEUED_AT)) or msg.metadata.timestamp,
        headers=jobmod.user_headers(headers),
        max_attempts=max_attempts,
    )


def next_run_message(
    msg: Msg,
    *,
    kind: str,
    job_id: str,
    target: str,
    due: datetime,
    attempts: int,
    arg: Any = KEEP_ARG,
) -> tuple[bytes, dict[str, str]]:
    """Body and headers of a job's next run as an `@at` schedule firing on `target` at `due`.

    `kind` is "retry" (the attempt count carried forward: `attempts` used so far) or "next" (a Reschedule: a
    new run, attempts start again); `arg` replaces the body unless KEEP_ARG. The caller signs and publishes.
    Raises InvalidJob when the new arg does not encode.
    """
    headers = {k: v for k, v in (msg.headers or {}).items() if not k.startswith("Nats-")}
    _keep_id(headers, job_id)
    if arg is KEEP_ARG:
        body = msg.data or b""
    else:
        body, headers[jobmod.CONTENT_TYPE] = jobmod.encode_arg(arg)
    if attempts > 0:
        headers[ATTEMPTS_USED] = str(attempts)
    else:
        headers.pop(ATTEMPTS_USED, None)
    if kind == "next":
        headers[jobmod.HEADER_ENQUEUED_AT] = jobmod.format_time(datetime.now(timezone.utc))
    headers.update({
        Header.SCHEDULE.value: f"@at {jobmod.format_time(due)}",
        Header.SCHEDULE_TARGET.value: target,
        MSG_ID: derived_msg_id(kind, job_id, msg),
    })  # fmt: skip
    return body, headers


def handed_back_message(msg: Msg, attempts: int) -> tuple[bytes, dict[str, str]]:
    """The same job again, to be stored afresh with `attempts` carried (a drain giving back an unrun job)."""
    headers = {k: v for k, v in (msg.headers or {}).items() if not k.startswith("Nats-")}
    if attempts > 0:
        headers[ATTEMPTS_USED] = str(attempts)
    else:
        headers.pop(ATTEMPTS_USED, None)
    job_id = job_id_of(msg)
    _keep_id(headers, job_id)
    headers[MSG_ID] = derived_msg_id("back", job_id, msg)
    return msg.data or b"", headers


def _keep_id(headers: dict[str, str], job_id: str) -> None:
    """Carry the job id (a periodic firing's comes from its sequence number, which the next message changes),
    unless that would break a signature made without it (the settle module re-signs when it has a key)."""
    if jobmod.HEADER_ID not in headers and SIGNATURE not in headers:
        headers[jobmod.HEADER_ID] = job_id
