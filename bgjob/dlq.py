"""Writing the dead-letter queue: a failed job moved into it, fitted under the header and payload limits, with a
minimal fallback the server cannot refuse. Browsing it is `bgjob.dead_letters`."""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Callable, Collection, Mapping
from datetime import datetime, timezone
from typing import TYPE_CHECKING

import nats.errors
import nats.js.errors
from nats.aio.msg import Msg

from . import job as jobmod
from . import redaction
from .codec import attempts_used, carried_first_failure, job_id_of
from .errors import DeadLetterRefused, InvalidJob
from .headers import (
    ATTEMPTS_USED,
    CARRIED_FIRST_FAILURE,
    CONTENT_TYPE,
    DLQ_ATTEMPTS,
    DLQ_ERROR,
    DLQ_FAILURE_HEADERS,
    DLQ_FIRST_FAILURE,
    DLQ_LAST_FAILURE,
    DLQ_ORIGINAL_SUBJECT,
    DLQ_REASON,
    DLQ_TRACEBACK,
    ENCRYPTION,
    HEADER_ENQUEUED_AT,
    HEADER_ID,
    HEADER_NAME,
    HEADER_REQUEST_ID,
    HEADER_TYPE,
    MSG_ID,
    SENSITIVE_KEYS,
    SIGNATURE,
    STORE_RESULT,
    TARGET_UNTIL,
    cut_text,
    derived_msg_id,
    entry_size,
    header_room,
)

if TYPE_CHECKING:
    from .core import Core

log = logging.getLogger("bgjob.worker")

#: the most bytes (as sent, JSON-encoded) a dead letter's error and traceback take; longer ones are cut.
MAX_ERROR_BYTES = 16 * 1024
MAX_TRACEBACK_BYTES = 32 * 1024
#: below this much room for its error, a dead letter drops the job's custom headers (see `_minimal`).
LEAST_ERROR_BYTES = 128
#: the error of a minimal dead letter, and the largest job header value it keeps, in bytes as sent.
MINIMAL_ERROR_BYTES = 1024
MINIMAL_VALUE_BYTES = 512
#: what a minimal dead letter keeps of the job's headers: enough to show it, decode it and retry it.
_MINIMAL_KEEP = (HEADER_ID, HEADER_TYPE, CONTENT_TYPE, HEADER_ENQUEUED_AT, HEADER_REQUEST_ID, STORE_RESULT, SIGNATURE,
                 ENCRYPTION, SENSITIVE_KEYS)  # fmt: skip
#: a server refusal that a smaller dead letter may get past (anything else is raised as it is).
_REFUSALS = (nats.js.errors.APIError, nats.errors.BadHeaderError, InvalidJob)

#: The reasons bgjob itself gives; handlers may use their own via MoveToDlq(reason=...).
REASONS = ("handler", "max_attempts", "non_retryable", "deadline", "expired", "max_deliveries", "time_limit",
           "unknown_handler", "decode", "decrypt", "signature", "no_target",
           "internal_error")  # fmt: skip

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
    sensitive: Collection[str] = (),
) -> None:
    """Store a failed delivery in the DLQ and wait for the PubAck (the caller then terms it).

    Arguments: `msg` the delivery, as a JetStream consumer delivered it; `queue`, `job_id`, `job_type` the
    job's (they name the dead letter's subject); `reason` a validated DLQ reason; `error` and `traceback` any
    text (cut to at most MAX_ERROR_BYTES and MAX_TRACEBACK_BYTES as sent, and to whatever room the job's own
    headers leave under JetStream's 64 KiB header limit and the server's max_payload); `attempts` the
    deliveries so far; `sensitive` the job's sensitive arg keys as the worker merged them (the producer's and
    the handler's), written to the dead letter's SENSITIVE_KEYS header so every display masks their values.
    The caller scrubs `error` and `traceback` (the worker's settle module does); the body is stored as it is,
    so a retry from the DLQ runs the very job.

    The dead letter is the job's body and headers plus the failure headers (bgjob.headers.DLQ_*). The job's
    custom headers whose names are sensitive (`redaction.is_sensitive_name`, with Settings.sensitive_headers)
    are left out unless Settings.dlq_keep_sensitive_headers. When the
    job's headers leave too little room, or the server refuses it anyway, a minimal dead letter is stored
    instead: the job's id, type, content type, enqueue time, request id and signature, the reason, a short
    error saying why it is minimal, and the body. Its Nats-Msg-Id is derived from the stored message
    (`derived_msg_id`), so moving one delivery twice (a crash before the term) stores one dead letter.

    Raises DeadLetterRefused (with the server's description and err_code) when even the minimal dead letter
    is refused, bgjob.ConnectionError when the server does not answer within retry_for.
    """
    await core.ensure_dlq()
    subject = core.topology.dlq_subject(queue, reason, job_id, job_type)
    body = msg.data or b""
    error = error if isinstance(error, str) else ("" if error is None else str(error))
    now = jobmod.format_time(datetime.now(timezone.utc))
    settings = core.settings
    dropped = None if settings.dlq_keep_sensitive_headers else settings.sensitive_headers
    job_headers = {k: v for k, v in (msg.headers or {}).items() if _kept(k, dropped)}
    keys = jobmod.sensitive_of(job_headers) | frozenset(sensitive)
    if keys:
        job_headers[SENSITIVE_KEYS] = ",".join(sorted(keys))
    carried = carried_first_failure(msg.headers)
    failure = {
        DLQ_REASON: reason,
        DLQ_ATTEMPTS: str(attempts),
        DLQ_FIRST_FAILURE: carried or now,
        DLQ_LAST_FAILURE: now,
        DLQ_ORIGINAL_SUBJECT: msg.subject,
        MSG_ID: derived_msg_id("dlq", job_id, msg),
    }
    headers = {**job_headers, **failure}
    if _fit(headers, error, traceback, len(body), core.max_payload):
        try:
            await core.publish(subject, body, headers)
            return
        except _REFUSALS as exc:
            description, err_code = _refusal(exc)
            why = f"the server refused the full one: {description}" + (f" (err_code {err_code})" if err_code else "")
    else:
        why = (f"its body ({len(body)} bytes) and headers ({_size_of(job_headers)} bytes) leave no room for the error "
               f"under the server's max_payload of {core.max_payload} and the 64 KiB header limit")  # fmt: skip
    log.warning("dead letter of job %s (%s): %s; storing a minimal one", job_id, job_type, why)
    minimal = _minimal(job_headers, failure, job_id, job_type, error, why)
    try:
        await core.publish(subject, body, minimal)
    except _REFUSALS as exc:
        description, err_code = _refusal(exc)
        raise DeadLetterRefused(
            f"the DLQ refused even a minimal dead letter of job {job_id} ({job_type}, {len(body)} bytes of body): "
            f"{description}" + (f" (err_code {err_code})" if err_code else ""),
            description=description,
            err_code=err_code,
        ) from exc


async def dead_letter_stored(
    core: Core,
    queue: str,
    stream_seq: int,
    *,
    deliveries: int,
    error: str,
    sensitive: Callable[[str], Collection[str]] | None = None,
) -> bool:
    """Dead-letter (reason `max_deliveries`) the job stored at `stream_seq` in `queue`'s stream, then delete it
    from the stream: a message JetStream will not deliver again (the consumer's max_deliver was reached, see
    `$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES`), which a work-queue stream would otherwise keep for ever.

    Arguments: `deliveries` how often the server delivered it (the advisory's `deliveries`; attempts carried by
    retry schedules are added); `error` the dead letter's error text; `sensitive(job_type)` the handler's
    sensitive arg keys (joined to the producer's). The dead letter is the one `move_to_dlq` writes for a
    delivery of this stored message, with the same derived `Nats-Msg-Id` (stream, sequence and stored time in
    ns): two workers recovering it, or a worker still settling its last delivery, store one dead letter.

    Returns False, doing nothing, when the message is gone (acked, or recovered by another worker) or is not a
    job (its subject is not one of the queue's job subjects); True once it is dead-lettered and deleted (a
    delete answered NotFound counts: someone else deleted it). Raises what `move_to_dlq` raises
    (DeadLetterRefused, bgjob.ConnectionError) and nats-py's errors of the get and delete requests.
    """
    topology = core.topology
    stream = topology.queue_stream(queue)
    msg = await _stored_job(core, stream, topology.consumer(queue), stream_seq, deliveries)
    if msg is None or not msg.subject.startswith(topology.job_subject(queue, "")):
        return False
    job_type = topology.job_type_of(queue, msg.subject)
    job_id = job_id_of(msg)
    headers = msg.headers or {}
    keys = set(sensitive(job_type)) if sensitive is not None else set()
    await move_to_dlq(core, msg, queue=queue, job_id=job_id, job_type=job_type, reason="max_deliveries",
                      error=error, traceback=None, attempts=attempts_used(headers) + deliveries,
                      sensitive=keys)  # fmt: skip
    await core.delete_stored(stream, stream_seq)  # False: deleted (or termed) by whoever got there first
    log.error("job %s (%s) moved to the DLQ after %d deliveries: max_deliveries: %s", job_id, job_type,
              deliveries, error, extra={"job_id": job_id, "job_type": job_type, "bgjob_reason": "max_deliveries",
                                        "bgjob_fate": "dead_lettered", "bgjob_handler_ran": False})  # fmt: skip
    return True


async def dead_letter_untaken(
    core: Core,
    queue: str,
    claim: str,
    stream_seq: int,
    *,
    sensitive: Callable[[str], Collection[str]] | None = None,
) -> tuple[str, str, str] | None:
    """Dead-letter (reason `no_target`) the placed job stored at `stream_seq` in `queue`'s stream, waiting for a
    worker holding `claim`, whose Bgjob-Target-Until (`send_job(..., target_timeout=)`) has passed; then delete
    it from the stream. The caller (bgjob.placement's sweep) has found that no live worker holds the claim.

    The dead letter is `move_to_dlq`'s for a delivery of this stored message (attempts: those it carries), its
    `Nats-Msg-Id` derived from the stored message: workers sweeping at once, or one sweep repeated after a crash
    between the publish and the delete, store one dead letter. Publish first, then delete: a crash in between
    leaves the job waiting, dead-lettered again (deduplicated within the DLQ's duplicate window) by the next
    sweep; never a job lost. `sensitive(job_type)`: the handler's sensitive arg keys, when known.

    Returns None, doing nothing, when the message is gone, is not one of the claim's placed jobs, or carries no
    Bgjob-Target-Until that has passed (read again from the stored message); the job's (id, type, error text)
    once dead-lettered and deleted (a delete answered NotFound counts). Raises what `move_to_dlq` raises
    (DeadLetterRefused, bgjob.ConnectionError) and nats-py's errors of the get and delete requests.
    """
    topology = core.topology
    stream = topology.queue_stream(queue)
    msg = await _stored_job(core, stream, topology.target_consumer(queue, claim), stream_seq, 0)
    if msg is None or not msg.subject.startswith(topology.target_subject(queue, claim, "")):
        return None
    headers = msg.headers or {}
    until = jobmod.parse_time(headers.get(TARGET_UNTIL))
    if until is None or until > datetime.now(timezone.utc):
        return None
    job_type = topology.job_type_of(queue, msg.subject)
    job_id = job_id_of(msg)
    error = (f"no live worker of queue {queue!r} held the claim {claim!r} by {jobmod.format_time(until)} (the job's "
             "target_timeout): it was not run")  # fmt: skip
    keys = set(sensitive(job_type)) if sensitive is not None else set()
    await move_to_dlq(core, msg, queue=queue, job_id=job_id, job_type=job_type, reason="no_target", error=error,
                      traceback=None, attempts=attempts_used(headers), sensitive=keys)  # fmt: skip
    await core.delete_stored(stream, stream_seq)  # False: taken (or deleted) by whoever got there first
    log.error("job %s (%s) moved to the DLQ: no_target: %s", job_id, job_type, error,
              extra={"job_id": job_id, "job_type": job_type, "bgjob_reason": "no_target",
                     "bgjob_fate": "dead_lettered", "bgjob_handler_ran": False})  # fmt: skip
    return job_id, job_type, error


async def _stored_job(core: Core, stream: str, consumer: str, seq: int, deliveries: int) -> Msg | None:
    """The message stored at `seq`, as a Msg that `move_to_dlq` and `derived_msg_id` read like a delivery of it
    (None when it is gone). Its reply is the `$JS.ACK` subject such a delivery would carry (the stored time in
    ns, exact: nats-py's get_msg keeps only microseconds); it is never acked through it."""
    reply = await core.nc.request(f"$JS.API.STREAM.MSG.GET.{stream}", json.dumps({"seq": seq}).encode(),
                                  timeout=core.settings.request_timeout)  # fmt: skip
    answer = json.loads(reply.data)
    if "error" in answer:
        if answer["error"].get("code") == 404:
            return None
        raise nats.js.errors.APIError.from_error(answer["error"])
    stored = answer["message"]
    headers = _parse_headers(base64.b64decode(stored["hdrs"])) if stored.get("hdrs") else None
    data = base64.b64decode(stored["data"]) if stored.get("data") else b""
    ack = f"$JS.ACK.{stream}.{consumer}.{deliveries}.{seq}.0.{_rfc3339_ns(stored['time'])}.0"
    return Msg(core.nc, subject=stored["subject"], reply=ack, data=data, headers=headers)


def _parse_headers(raw: bytes) -> dict[str, str]:
    """A stored message's NATS headers block (`NATS/1.0\r\nName: value\r\n...`) as a dict (the last value of a
    repeated name, as nats-py keeps it)."""
    headers: dict[str, str] = {}
    for line in raw.decode().split("\r\n")[1:]:
        name, sep, value = line.partition(":")
        if sep and name:
            headers[name.strip()] = value.strip()
    return headers


def _rfc3339_ns(text: str) -> int:
    """`2024-05-01T12:00:00.123456789Z` as nanoseconds since the epoch, exactly."""
    main, _, rest = text.partition(".")
    fraction = rest[: len(rest) - len(rest.lstrip("0123456789"))]
    zone = rest[len(fraction) :] if rest else text[19:]
    main = main[:19]
    seconds = datetime.fromisoformat(main + ("+00:00" if zone in ("", "Z") else zone)).timestamp()
    return int(seconds) * 1_000_000_000 + int((fraction + "000000000")[:9])


def _kept(name: str, sensitive_headers: Collection[str] | None) -> bool:
    """Whether a delivered job's header goes into its dead letter: not NATS's own, not stale failure headers,
    not the attempts carried by a retry (a job retried from the DLQ starts again at attempt 1), and, unless
    `sensitive_headers` is None (keep them), not a custom header whose name is sensitive by the built-in rule
    or `sensitive_headers` (bgjob's own headers, e.g. Bgjob-Signature, are kept)."""
    return (
        not name.lower().startswith("nats-")
        and name not in DLQ_FAILURE_HEADERS
        and name not in (CARRIED_FIRST_FAILURE, ATTEMPTS_USED)
        and bool(HEADER_NAME.fullmatch(name))
        and (sensitive_headers is None or not jobmod.user_headers({name: ""})
             or not redaction.is_sensitive_name(name, sensitive_headers))
    )


def _fit(headers: dict[str, str], error: str, traceback: str | None, body_size: int, max_payload: int) -> bool:
    """Add the error and traceback headers, cut to the room left under the header limit and max_payload.

    The error keeps its start and gets up to MAX_ERROR_BYTES, but leaves the traceback at least half the room;
    the traceback keeps its end and gets what is left, up to MAX_TRACEBACK_BYTES (none if under
    LEAST_ERROR_BYTES). Returns False, adding nothing, when the room is under LEAST_ERROR_BYTES.
    """
    room = header_room(headers, body_size=body_size, max_payload=max_payload) - entry_size(DLQ_ERROR, "")
    if room < LEAST_ERROR_BYTES:
        return False
    wanted = 0
    if traceback:
        wanted = entry_size(DLQ_TRACEBACK, "") + min(MAX_TRACEBACK_BYTES, len(json.dumps(traceback)))
    headers[DLQ_ERROR] = cut_text(error, min(MAX_ERROR_BYTES, max(room - wanted, room // 2)), as_json=True)
    if traceback:
        left = room - len(headers[DLQ_ERROR]) - entry_size(DLQ_TRACEBACK, "")
        if left >= LEAST_ERROR_BYTES:
            headers[DLQ_TRACEBACK] = cut_text(traceback, min(MAX_TRACEBACK_BYTES, left), keep="end", as_json=True)
    return True


def _minimal(job_headers: Mapping[str, str], failure: Mapping[str, str], job_id: str, job_type: str, error: str,
             why: str) -> dict[str, str]:  # fmt: skip
    """The smallest useful dead letter: see `move_to_dlq`."""
    headers = {HEADER_ID: job_id, HEADER_TYPE: job_type}
    for name in _MINIMAL_KEEP:
        value = job_headers.get(name)
        if value is not None and entry_size(name, value) <= MINIMAL_VALUE_BYTES:
            headers[name] = value
    headers.update((k, v) for k, v in failure.items() if entry_size(k, v) <= MINIMAL_VALUE_BYTES)
    note = json.loads(cut_text(f" [minimal dead letter: {why}]", MINIMAL_ERROR_BYTES // 2, as_json=True))
    start = json.loads(cut_text(error, MINIMAL_ERROR_BYTES - (len(json.dumps(note)) - 2), as_json=True))
    headers[DLQ_ERROR] = json.dumps(start + note)
    return headers


def _refusal(exc: BaseException) -> tuple[str, int | None]:
    """What the server (or the size check before sending) said: (description, err_code)."""
    if isinstance(exc, nats.js.errors.APIError):
        return (exc.description or type(exc).__name__), exc.err_code
    return (str(exc) or type(exc).__name__), None


def _size_of(headers: Mapping[str, str]) -> int:
    return sum(entry_size(k, v) for k, v in headers.items())
