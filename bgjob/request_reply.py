"""Request-reply handlers (from choria asyncjobs): a job type handled by a NATS service in any language.

`mux.request_reply("thumbnail", subject="svc.thumbnail", timeout=30)` registers a `RequestReplyHandler`: the
worker sends each job of the type as one NATS request to `subject`, on its own connection (through the
`LongRunning` services the worker installs in the handler's thread, `bgjob.job.worker_services`), blocking that
pool thread (never the event loop) until the reply, and turns the reply into the job's Result. The contract a
service implements is the "Request-reply handlers" section of docs/delegated.md:

The request: the body is the job's arg (compact JSON, or the raw bytes of a bytes arg, `Content-Type` saying
which), with headers `Bgjob-Id`, `Bgjob-Type`, `Bgjob-Queue`, `Bgjob-Attempt` (1 on the first delivery),
`Bgjob-Request-Id` (when the job has one) and `Bgjob-Deadline` (RFC 3339 UTC: when the worker stops waiting for
this reply, the earliest of the handler's timeout, the job's deadline and its time limit less LIMIT_MARGIN).

The reply, read in this order (header names matched without regard to case):

1. `Bgjob-Retry-After: <seconds>` (a plain decimal: digits, optionally '.' and digits; at most Retry's 100 years) ->
   `Retry(seconds)`, the service's error text kept with it; any other value -> `bgjob.RequestFailed` (kind
   "bad_reply").
2. `Nats-Service-Error-Code` / `Nats-Service-Error` (NATS micro services' error headers), either one present
   (even empty): `422` -> `MoveToDlq(error, reason="service")`; `400` -> `bgjob.NonRetryable` (dead-lettered at
   once, reason `non_retryable`); any other code, or none -> `bgjob.RequestFailed` (kind "error"), retried by
   the retry policy.
3. A JetStream publish acknowledgement (a JSON object of PubAck fields with "stream" and "seq", and none of the
   headers above): the subject is a stream's, not a service's -> `bgjob.NonRetryable` wrapping a
   `bgjob.RequestFailed` (kind "stream"), dead-lettered at once (a retry would store one more copy).
4. Otherwise `Complete(value)`: the body JSON-decoded when it parses, else its text (UTF-8), else its bytes;
   an empty body is None.

No reply in time or no service on the subject -> `bgjob.RequestFailed` (kind "timeout" / "no_responders"),
retried by the policy like any handler's exception.

Subjects a service cannot own are refused at registration (`validate_subject`: `$JS.`, `$KV.`, `$SYS.`, any
`$`-API, `_INBOX.`), and a Worker refuses to start when a JetStream stream captures a request-reply subject
(`bgjob.long_running.check_request_subjects`): a request there is stored as a message, answered by a PubAck.
"""

from __future__ import annotations

import json
import re
import reprlib
import time
from dataclasses import dataclass, field, fields
from datetime import datetime, timedelta, timezone
from typing import Any

from nats.js.api import PubAck

from . import job as jobmod
from .errors import BgjobError, InvalidJob, NonRetryable, RequestFailed, describe_error
from .headers import (
    ATTEMPT,
    CONTENT_TYPE,
    DEADLINE,
    HEADER_ID,
    HEADER_REQUEST_ID,
    HEADER_TYPE,
    QUEUE,
    RETRY_AFTER,
    SERVICE_ERROR,
    SERVICE_ERROR_CODE,
)
from .job import positive_seconds
from .result import Complete, MoveToDlq, Result, Retry
from .schedule import MAX_DELAY_SECONDS

__all__ = ["DEAD_LETTER_CODE", "DLQ_REASON", "NON_RETRYABLE_CODE", "RESERVED_PREFIXES", "Reply", "RequestReplyHandler",
           "is_pub_ack", "reply_result", "retry_after_seconds", "validate_subject", "validate_timeout"]  # fmt: skip

#: a reply's `Nats-Service-Error-Code` that dead-letters the job (`MoveToDlq`): "Unprocessable Content".
DEAD_LETTER_CODE = "422"
#: a reply's `Nats-Service-Error-Code` that raises `bgjob.NonRetryable` (dead-lettered at once): "Bad Request".
NON_RETRYABLE_CODE = "400"
#: the DLQ reason of a job its service dead-lettered with DEAD_LETTER_CODE.
DLQ_REASON = "service"

#: seconds before the job's time limit a request stops waiting (a tenth of the limit when that is less).
LIMIT_MARGIN = 0.25
#: a subject token: printable ASCII without spaces, '.', '*' or '>' (NATS's rules, wildcards refused).
_TOKEN = re.compile(r"[!-~]+")
_MAX_SUBJECT = 255
#: subject prefixes no service may own: `$` (the JetStream, KV and system APIs: `$JS.`, `$KV.`, `$SYS.`, ...) and
#: `_INBOX.` (replies to requests).
RESERVED_PREFIXES = ("$", "_INBOX.")
#: `Bgjob-Retry-After`'s one accepted form: a plain decimal number of seconds (no sign, exponent or '_').
_RETRY_AFTER = re.compile(r"[0-9]+(\.[0-9]+)?")
#: the keys of a JetStream publish acknowledgement (nats-py's PubAck, plus "error" of a refused publish).
_PUB_ACK_KEYS = frozenset(f.name for f in fields(PubAck)) | {"batch", "count", "error"}


@dataclass(frozen=True, slots=True)
class Reply:
    """What a request got (`LongRunning.request`): `status` "reply" (with the reply's `data` and `headers`),
    "timeout" (none within the timeout) or "no_responders" (no service listening on the subject)."""

    status: str
    data: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)


def validate_subject(subject: str) -> str:
    """A request-reply service's subject: dot-separated tokens of printable ASCII (no spaces), no empty token,
    no wildcard (`*`, `>`), at most 255 characters, not starting with `$` (JetStream, KV and system APIs) or
    `_INBOX.` (reply subjects); returns it. Raises ValueError naming the problem."""
    if not isinstance(subject, str):
        raise ValueError(f"subject must be a str (a NATS subject such as 'svc.thumbnail'), got "
                         f"{type(subject).__name__} {reprlib.repr(subject)}")  # fmt: skip
    if not subject or len(subject) > _MAX_SUBJECT:
        raise ValueError(f"subject must be 1-{_MAX_SUBJECT} characters, got {len(subject)}")
    for token in subject.split("."):
        if not token:
            raise ValueError(f"subject {subject!r} has an empty token (a leading, trailing or doubled '.')")
        if "*" in token or ">" in token:
            raise ValueError(f"subject {subject!r} has a wildcard ('*' or '>'): a request goes to one exact subject")
        if not _TOKEN.fullmatch(token):
            raise ValueError(f"subject {subject!r} has a space, control or non-ASCII character: use printable ASCII "
                             "tokens separated by '.'")  # fmt: skip
    for prefix in RESERVED_PREFIXES:
        if subject.startswith(prefix):
            raise ValueError(f"subject {subject!r} starts with {prefix!r}, reserved for NATS's own APIs (JetStream, "
                             "KV, system) and reply inboxes: a request there never reaches a service; use the "
                             "service's subject, e.g. 'svc.thumbnail'")  # fmt: skip
    return subject


def validate_timeout(timeout: float | timedelta) -> float:
    """A request's timeout in seconds: an int or float > 0 (finite), or a timedelta; returns it as a float.
    Raises ValueError for anything else (0, a negative, NaN, infinity, a bool, a str, None)."""
    return positive_seconds("timeout", timeout)


class RequestReplyHandler:
    """The handler `Mux.request_reply` registers (from choria asyncjobs): each job becomes one NATS request to
    `subject` on the worker's connection; the reply becomes its Result (`reply_result`).

    - `subject`: the service's subject (validated: `validate_subject`).
    - `timeout`: seconds to wait for a reply (validated: `validate_timeout`); shortened to the time left before
      the job's deadline and to its time limit less LIMIT_MARGIN (`time_limit`: the type's own, in seconds, else
      the worker's), so that the wait ends in this handler's own retryable timeout rather than at the limit.

    `handle(job)` blocks the pool thread (or greenlet) running it, at most the request's timeout (plus 0.1 s of
    slack should the event loop be late). It returns the reply's Result, or raises `bgjob.NonRetryable` (a 400
    reply), `bgjob.RequestFailed` (no reply in time, no responders, another service error, NATS unreachable) and
    RuntimeError outside a worker's handler thread.
    """

    def __init__(self, subject: str, timeout: float | timedelta = 30.0, *, time_limit: float | None = None) -> None:
        self.subject = validate_subject(subject)
        self.timeout = validate_timeout(timeout)
        self.time_limit = time_limit

    def __repr__(self) -> str:
        return f"RequestReplyHandler(subject={self.subject!r}, timeout={self.timeout:g})"

    def handle(self, job: jobmod.Job) -> Result:
        """Send `job` to the service and return its reply's Result (see the class)."""
        started = time.monotonic()
        service = jobmod.worker_services.get()
        if service is None:
            raise RuntimeError(f"request-reply handler for {job.type!r} works only in a bgjob worker, in the thread "
                               "(or greenlet) that runs the job's handler")  # fmt: skip
        seconds, bound = self.timeout, "the handler's timeout"
        limit = self.time_limit if self.time_limit is not None else getattr(service, "time_limit", None)
        if limit is not None and limit - min(LIMIT_MARGIN, limit / 10) < seconds:
            # ends a little before the limit: the job fails with this request's (retryable) timeout, and the
            # time limit's exception never meets a thread blocked on the reply
            seconds, bound = limit - min(LIMIT_MARGIN, limit / 10), "the job's time limit"
        now = datetime.now(timezone.utc)
        if job.deadline is not None:
            left = (job.deadline - now).total_seconds()
            if left <= 0:
                raise RequestFailed(f"job {job.id}: its deadline {jobmod.format_time(job.deadline)} passed before the "
                                    f"request to {self.subject!r} was sent", subject=self.subject,
                                    kind="timeout")  # fmt: skip
            if left < seconds:
                seconds, bound = left, "the job's deadline"
        seconds = max(0.001, seconds - (time.monotonic() - started))
        try:
            body, content_type = jobmod.encode_arg(job.arg)
        except InvalidJob as exc:  # a decoded arg always encodes again; kept for a hand-built Job
            raise NonRetryable(exc) from exc
        headers = request_headers(job, content_type, now + timedelta(seconds=seconds))
        try:
            reply = service.request(self.subject, body, headers, seconds)
        except BgjobError as exc:
            raise RequestFailed(f"request to {self.subject!r} failed: {describe_error(exc)}", subject=self.subject,
                                kind="connection") from exc  # fmt: skip
        if reply.status == "timeout":
            raise RequestFailed(f"no reply from the service on {self.subject!r} within {seconds:.3g}s ({bound})",
                                subject=self.subject, kind="timeout")  # fmt: skip
        if reply.status == "no_responders":
            raise RequestFailed(f"no responders: no service listens on {self.subject!r}", subject=self.subject,
                                kind="no_responders")  # fmt: skip
        return reply_result(self.subject, reply.data, reply.headers)


def request_headers(job: jobmod.Job, content_type: str, deadline: datetime) -> dict[str, str]:
    """The headers of `job`'s request (docs/delegated.md, "Request-reply handlers"); `deadline`: when the worker stops
    waiting for the reply."""
    headers = {HEADER_ID: job.id, HEADER_TYPE: job.type, QUEUE: job.queue, ATTEMPT: str(job.attempt),
               CONTENT_TYPE: content_type, DEADLINE: jobmod.format_time(deadline)}  # fmt: skip
    if job.request_id:
        headers[HEADER_REQUEST_ID] = job.request_id
    return headers


def reply_result(subject: str, data: bytes, headers: dict[str, str] | None) -> Result:
    """The Result of a service's reply from `subject` (the module's table): `Retry`, `MoveToDlq` or `Complete`.

    Raises bgjob.NonRetryable for error code 400 and for a JetStream publish acknowledgement (wrapping a
    RequestFailed of kind "stream"), bgjob.RequestFailed for any other error code or an error header without
    one (kind "error") and for a `Bgjob-Retry-After` that is not a plain decimal within Retry's bounds (kind
    "bad_reply")."""
    found = {name.lower(): value.strip() for name, value in (headers or {}).items()}
    code = found.get(SERVICE_ERROR_CODE.lower())
    text = found.get(SERVICE_ERROR.lower())
    error = None
    if code is not None or text is not None:  # present, even empty: the service said it failed
        error = f"service {subject!r} replied error {code or '(no code)'}: {text or '(no description)'}"
    after = found.get(RETRY_AFTER.lower())
    if after is not None:
        delay = retry_after_seconds(after)
        if delay is None:
            raise RequestFailed(f"service {subject!r} replied {RETRY_AFTER}: {reprlib.repr(after)}, not a plain "
                                f"decimal number of seconds from 0 to {MAX_DELAY_SECONDS:.0f} (100 years)"
                                f"{f' ({error})' if error else ''}", subject=subject, kind="bad_reply",
                                code=code)  # fmt: skip
        return Retry(delay, error=error or f"service {subject!r} asked to retry after {delay:g}s")
    if error is None:
        value = decode_body(data)
        if is_pub_ack(value):
            where = f" (stream {value['stream']!r}, seq {value['seq']})" if "stream" in value else ""
            raise NonRetryable(RequestFailed(
                f"the reply from {subject!r} is a JetStream publish acknowledgement{where}: the subject is a "
                "stream's, not a service's (each request is stored in the stream as a message); use a subject no "
                "stream captures", subject=subject, kind="stream"))  # fmt: skip
        return Complete(value)
    if code == DEAD_LETTER_CODE:
        return MoveToDlq(error, reason=DLQ_REASON)
    if code == NON_RETRYABLE_CODE:
        raise NonRetryable(error)
    raise RequestFailed(error, subject=subject, kind="error", code=code)


def retry_after_seconds(value: str) -> float | None:
    """A `Bgjob-Retry-After` value in seconds: a plain decimal (`^[0-9]+(\\.[0-9]+)?$`: no sign, exponent, '_',
    'inf' or 'nan') from 0 to MAX_DELAY_SECONDS (Retry's bound); None for anything else."""
    if not _RETRY_AFTER.fullmatch(value):
        return None
    seconds = float(value)  # only digits and one '.': never raises, may round a long fraction
    return seconds if seconds <= MAX_DELAY_SECONDS else None


def is_pub_ack(value: Any) -> bool:
    """Whether a decoded reply body is JetStream's answer to a publish (nats-py's PubAck): a JSON object with no
    key a PubAck does not have, and a str "stream" with an int "seq", or a JetStream API "error" (an object with
    an int "code" and "err_code": a refused publish, e.g. a full stream)."""
    if not isinstance(value, dict) or not value or not value.keys() <= _PUB_ACK_KEYS:
        return False
    stored = isinstance(value.get("stream"), str) and type(value.get("seq")) is int
    refused = value.get("error")
    return stored or (isinstance(refused, dict) and type(refused.get("code")) is int
                      and type(refused.get("err_code")) is int)  # fmt: skip


def decode_body(data: bytes) -> Any:
    """A reply's body as a job's value: None when empty, its JSON value when it parses, else its UTF-8 text,
    else its bytes."""
    if not data:
        return None
    try:
        return json.loads(data)
    except (ValueError, RecursionError):
        pass
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return bytes(data)
