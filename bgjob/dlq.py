"""The dead-letter queue: moving failed jobs into it, and browsing, retrying and purging it."""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

import nats.js.errors
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, RawStreamMsg

from . import job as jobmod
from .errors import DeadLetterNotFound
from .job import validate_reason

if TYPE_CHECKING:
    from .client import Client
    from .core import Core

REASON = "Bgjob-Dlq-Reason"
ERROR = "Bgjob-Dlq-Error"
TRACEBACK = "Bgjob-Dlq-Traceback"
ATTEMPTS = "Bgjob-Dlq-Attempts"
FIRST_FAILURE = "Bgjob-Dlq-First-Failure"
LAST_FAILURE = "Bgjob-Dlq-Last-Failure"
ORIGINAL_SUBJECT = "Bgjob-Dlq-Subject"
#: carried by a job retried from the DLQ, so a second failure keeps the first failure's time.
CARRIED_FIRST_FAILURE = "Bgjob-First-Failure"
_FAILURE_HEADERS = (REASON, ERROR, TRACEBACK, ATTEMPTS, FIRST_FAILURE, LAST_FAILURE, ORIGINAL_SUBJECT)
MAX_TRACEBACK = 32 * 1024

#: The reasons bgjob itself gives; handlers may use their own via MoveToDlq(reason=...).
REASONS = ("handler", "max_attempts", "unknown_handler", "decode", "signature", "internal_error")


@dataclass(frozen=True)
class DeadLetter:
    """A failed job kept in the DLQ stream, with why and when it failed."""

    id: str
    seq: int
    queue: str
    type: str
    reason: str
    error: str
    traceback: str | None
    attempts: int
    first_failure_at: datetime | None
    last_failure_at: datetime | None
    body: bytes
    #: the job's headers as its producer sent them (Bgjob-*, Content-Type and custom ones).
    headers: Mapping[str, str] = field(default_factory=dict)

    @property
    def arg(self) -> Any:
        """The decoded arg; the raw body when it does not decode."""
        try:
            return jobmod.decode_arg(self.body, self.headers.get(jobmod.CONTENT_TYPE))
        except jobmod.DecodeError:
            return self.body

    @property
    def request_id(self) -> str | None:
        return self.headers.get(jobmod.HEADER_REQUEST_ID)

    @property
    def enqueued_at(self) -> datetime | None:
        return jobmod.parse_time(self.headers.get(jobmod.HEADER_ENQUEUED_AT))


async def move_to_dlq(
    core: Core,
    msg: Msg,
    *,
    queue: str,
    job_id: str,
    job_type: str,
    reason: str,
    error: str,
    traceback: str | None,
    attempts: int,
) -> None:
    """Store a failed delivery in the DLQ and wait for the PubAck (the caller then terms it)."""
    await core.ensure_dlq()
    now = jobmod.format_time(datetime.now(timezone.utc))
    original = dict(msg.headers or {})
    headers = {k: v for k, v in original.items() if not k.lower().startswith("nats-")}
    headers.update({
        REASON: reason,
        ERROR: json.dumps(error[:MAX_TRACEBACK]),
        ATTEMPTS: str(attempts),
        FIRST_FAILURE: original.get(CARRIED_FIRST_FAILURE, now),
        LAST_FAILURE: now,
        ORIGINAL_SUBJECT: msg.subject,
        # One DLQ entry per stored message, even if a crash makes us move it twice.
        "Nats-Msg-Id": f"dlq:{queue}:{msg.metadata.sequence.stream}",
    })  # fmt: skip
    headers.pop(CARRIED_FIRST_FAILURE, None)
    if traceback:
        headers[TRACEBACK] = json.dumps(traceback[-MAX_TRACEBACK:])
    body = msg.data or b""
    _fit(headers, body, core.max_payload)
    subject = core.topology.dlq_subject(queue, reason, job_id, job_type)
    await core.publish(subject, body, headers)


def _fit(headers: dict[str, str], body: bytes, max_payload: int) -> None:
    """Shorten the traceback, then the error, so the dead letter fits the server's max_payload."""

    def excess() -> int:
        return len(body) + sum(len(k) + len(v) + 4 for k, v in headers.items()) + 256 - max_payload

    for name, keep_end in ((TRACEBACK, True), (ERROR, False)):
        if name in headers and excess() > 0:
            text = json.loads(headers[name])
            room = max(0, len(text) - excess() - 64)
            text = ("..." + text[len(text) - room :]) if keep_end else (text[:room] + "...")
            headers[name] = json.dumps(text)


def stored_headers(raw: RawStreamMsg) -> dict[str, str]:
    """A stored message's headers as str, UTF-8 included (nats-py's get_msg parses them as e-mail headers,
    which turns non-ASCII values into email.header.Header objects)."""
    if not raw.hdrs:
        return {}
    block = base64.b64decode(raw.hdrs).decode("utf-8", errors="replace")
    headers: dict[str, str] = {}
    for line in block.split("\r\n")[1:]:  # the first line is "NATS/1.0"
        name, sep, value = line.partition(":")
        if sep and name:
            headers[name.strip()] = value.strip()
    return headers


def _entry(core: Core, raw: RawStreamMsg) -> DeadLetter:
    headers = stored_headers(raw)
    queue, reason, job_id, job_type = core.topology.parse_dlq_subject(raw.subject)

    def text(name: str) -> str | None:
        value = headers.get(name)
        return json.loads(value) if value else None

    return DeadLetter(
        id=headers.get(jobmod.HEADER_ID, job_id),
        seq=raw.seq,
        queue=queue,
        type=headers.get(jobmod.HEADER_TYPE, job_type),
        reason=headers.get(REASON, reason),
        error=text(ERROR) or "",
        traceback=text(TRACEBACK),
        attempts=int(headers.get(ATTEMPTS) or 0),
        first_failure_at=jobmod.parse_time(headers.get(FIRST_FAILURE)),
        last_failure_at=jobmod.parse_time(headers.get(LAST_FAILURE)),
        body=raw.data or b"",
        headers={k: v for k, v in headers.items() if k not in _FAILURE_HEADERS and not k.startswith("Nats-")},
    )


async def _get_next(core: Core, seq: int, subject: str) -> RawStreamMsg | None:
    try:
        return await core.js.get_msg(core.topology.dlq_stream, seq=max(seq, 1), next=True, subject=subject)
    except nats.js.errors.NotFoundError:
        return None


async def _list(core: Core, queue: str | None, job_type: str | None, reason: str | None, limit: int,
                before: int | None) -> list[DeadLetter]:  # fmt: skip
    """Newest first: scan windows of sequence numbers backwards, each window forwards."""
    await core.ensure_dlq()
    info = await core.js.stream_info(core.topology.dlq_stream)
    first, last = info.state.first_seq, info.state.last_seq
    hi = min(last, before - 1) if before else last
    subject = core.topology.dlq_filter(queue=queue, job_type=job_type, reason=reason)
    window = max(limit, 16)
    found: list[DeadLetter] = []
    while hi >= first and len(found) < limit and info.state.messages:
        lo = max(first, hi - window + 1)
        batch: list[DeadLetter] = []
        seq = lo
        while (raw := await _get_next(core, seq, subject)) is not None and raw.seq <= hi:
            batch.append(_entry(core, raw))
            seq = raw.seq + 1
        found.extend(reversed(batch))
        hi, window = lo - 1, min(window * 2, 4096)
    return found[:limit]


async def _find(core: Core, entry_id: str) -> DeadLetter:
    await core.ensure_dlq()
    if jobmod.is_valid_job_id(entry_id):
        raw = await _get_next(core, 1, core.topology.dlq_filter(job_id=entry_id))
        if raw is not None:
            return _entry(core, raw)
    raise DeadLetterNotFound(f"no dead letter with id {entry_id!r}")


async def _retry(core: Core, entry_id: str) -> str:
    entry = await _find(core, entry_id)
    headers = dict(entry.headers)
    headers[CARRIED_FIRST_FAILURE] = jobmod.format_time(entry.first_failure_at or datetime.now(timezone.utc))
    # The original Nats-Msg-Id may still be inside the duplicate window: use a fresh one.
    headers["Nats-Msg-Id"] = f"{entry.id}:retry:{uuid.uuid4().hex[:12]}"
    subject = core.topology.job_subject(entry.queue, entry.type)
    await core.publish(subject, entry.body, headers, queue=entry.queue)
    await core.js.delete_msg(core.topology.dlq_stream, entry.seq)
    return entry.id


async def _delete(core: Core, entry_id: str) -> None:
    entry = await _find(core, entry_id)
    await core.js.delete_msg(core.topology.dlq_stream, entry.seq)


async def count_dead_letters(
    core: Core, queue: str | None = None, job_type: str | None = None, reason: str | None = None
) -> int:
    stream = core.topology.dlq_stream
    try:
        info = await core.js.stream_info(stream)
    except nats.js.errors.NotFoundError:
        return 0  # no dead letter yet: nothing to count, nothing to create
    if queue is None and job_type is None and reason is None:
        return info.state.messages
    # An unacknowledged pull consumer that never pulls counts matches without touching them.
    config = ConsumerConfig(
        filter_subject=core.topology.dlq_filter(queue=queue, job_type=job_type, reason=reason),
        ack_policy=AckPolicy.EXPLICIT,
        deliver_policy=DeliverPolicy.ALL,
        inactive_threshold=30.0,
        mem_storage=True,
        num_replicas=1,
    )
    counter = await core.js.add_consumer(stream, config)
    try:
        return counter.num_pending
    finally:
        await core.js.delete_consumer(stream, counter.name)


async def _purge(core: Core, queue: str | None, job_type: str | None, reason: str | None) -> int:
    await core.ensure_dlq()
    count = await count_dead_letters(core, queue, job_type, reason)
    everything = queue is None and job_type is None and reason is None
    subject = None if everything else core.topology.dlq_filter(queue=queue, job_type=job_type, reason=reason)
    await core.js.purge_stream(core.topology.dlq_stream, subject=subject)
    return count


class DeadLetters:
    """Blocking access to the DLQ of one client (`client.dlq`)."""

    def __init__(self, client: Client) -> None:
        self._client = client

    def list(
        self,
        queue: str | None = None,
        job_type: str | None = None,
        limit: int = 50,
        before: int | None = None,
        reason: str | None = None,
    ) -> list[DeadLetter]:
        """Dead letters, newest first; pass the last entry's `seq` as `before` for the next page."""
        _validate_filter(queue, job_type, reason)
        if limit < 1:
            return []
        return self._client.run(_list, queue, job_type, reason, limit, before)

    def get(self, entry_id: str) -> DeadLetter:
        """The dead letter of job `entry_id`; raises DeadLetterNotFound."""
        return self._client.run(_find, entry_id)

    def retry(self, entry_id: str) -> str:
        """Send the job back to its queue (with a fresh dedup id) and remove it from the DLQ."""
        return self._client.run(_retry, entry_id)

    def delete(self, entry_id: str) -> None:
        self._client.run(_delete, entry_id)

    def purge(self, queue: str | None = None, job_type: str | None = None, reason: str | None = None) -> int:
        """Remove all dead letters (of a queue / job type / reason); returns how many there were."""
        _validate_filter(queue, job_type, reason)
        return self._client.run(_purge, queue, job_type, reason)

    def count(self, queue: str | None = None, job_type: str | None = None, reason: str | None = None) -> int:
        _validate_filter(queue, job_type, reason)
        return self._client.run(count_dead_letters, queue, job_type, reason)


def _validate_filter(queue: str | None, job_type: str | None, reason: str | None) -> None:
    if queue is not None:
        jobmod.validate_queue(queue)
    if job_type is not None:
        jobmod.validate_type(job_type)
    if reason is not None:
        validate_reason(reason)
