"""Every refusal bgjob makes is one of these named exceptions."""

from __future__ import annotations

import builtins
import traceback
from typing import Any, TypedDict


class BgjobError(Exception):
    """Base class of all bgjob errors."""


class InvalidJob(BgjobError, ValueError):
    """A job was refused before anything was published: bad type name, arg, delay or header."""


class ConnectionError(BgjobError, builtins.ConnectionError):  # noqa: A001 - public name from DESIGN.md
    """NATS could not be reached (or stayed unreachable after bounded retries).

    Raised by a send after its publish left the process, `job_id` (one job) and `job_ids` (all of them) name
    the jobs concerned: they may have been stored; sending again with the same job id is safe and is the retry.
    Otherwise both are empty (None / ()).
    """

    def __init__(self, message: str = "", *, job_ids: tuple[str, ...] | list[str] = ()) -> None:
        super().__init__(message)
        self.job_ids: tuple[str, ...] = tuple(job_ids)

    @property
    def job_id(self) -> str | None:
        """The first (usually the only) job concerned; None when the error concerns no job."""
        return self.job_ids[0] if self.job_ids else None


class PublishError(BgjobError):
    """A publish was not confirmed by a JetStream PubAck.

    `job_id`/`job_ids` name the jobs concerned (empty when none); `description`, `err_code` and `code` are what
    the server answered, when it answered with an error (then the job was not stored by that publish).
    """

    def __init__(self, message: str = "", *, job_ids: tuple[str, ...] | list[str] = (),
                 description: str | None = None, err_code: int | None = None, code: int | None = None) -> None:
        super().__init__(message)
        self.job_ids: tuple[str, ...] = tuple(job_ids)
        self.description = description
        self.err_code = err_code
        self.code = code

    @property
    def job_id(self) -> str | None:
        """The first (usually the only) job concerned; None when the error concerns no job."""
        return self.job_ids[0] if self.job_ids else None


class JobTooLarge(InvalidJob, PublishError):
    """The server refused a job as too large for its queue's stream (`max_msg_size`) or its header limit: an
    InvalidJob (sending it again will not help) that, like every PublishError, carries `job_id(s)`,
    `description`, `err_code` and `code`. Nothing was stored."""

    def __init__(self, message: str = "", **details: Any) -> None:
        PublishError.__init__(self, message, **details)


class SendJobsError(PublishError):
    """send_jobs could not confirm every job. `stored` were confirmed (PubAck); `not_stored` were not.

    Sending the `not_stored` ones again with the same job ids is safe: JetStream drops any that did
    get stored, within the duplicate window.
    """

    def __init__(self, message: str, stored: list[str], not_stored: list[str], errors: dict[str, BaseException]):
        super().__init__(message, job_ids=not_stored)
        self.stored = stored
        self.not_stored = not_stored
        self.errors = errors


class DeadLetterRefused(PublishError):
    """The server refused a dead letter even reduced to its minimum; the job was not stored in the DLQ.

    `description` and `err_code` are what the server said (None when the refusal came before sending).
    """

    def __init__(self, message: str, description: str | None = None, err_code: int | None = None):
        super().__init__(message, description=description, err_code=err_code)


class ServerVersionError(BgjobError):
    """The NATS server is too old or lacks JetStream."""


class ServerNotFound(BgjobError):
    """No NATS URL is configured and the embedded nats-server binary is not installed."""


class HandlerError(BgjobError):
    """A handler or Mux registration is invalid (duplicate type, not callable, ...)."""


class TimeLimitExceeded(BaseException):
    """Raised inside a handler still running at its time limit (`@mux.handler(..., time_limit=seconds)` or
    `Worker(time_limit=seconds)`); the job then fails like any exception: retried, or dead-lettered with reason
    `time_limit` on its last attempt.

    A BaseException, not a BgjobError (as Dramatiq's and gevent's Timeout are), so that a handler's
    `except Exception:` does not swallow it; a handler may catch it to clean up, then should re-raise it.
    `time_limit` is the limit in seconds (None when raised without one). In a thread pool it arrives as an
    asynchronous exception, between two bytecodes: a thread blocked in C code (a long `time.sleep`, a socket read
    without a timeout) gets it only when that call returns.
    """

    #: what an instance made without arguments says: a worker raises a subclass with these set to the job's (an
    #: asynchronous exception is raised as a class, which CPython instantiates without arguments).
    default_message: str = "the handler ran past its time limit"
    default_time_limit: float | None = None

    def __init__(self, message: str | None = None, time_limit: float | None = None):
        super().__init__(self.default_message if message is None else message)
        self.time_limit = self.default_time_limit if time_limit is None else time_limit


class JobFailed(BgjobError):
    """A job waited for through a `JobHandle` (`fn.send(...).result()`) failed for good: it was dead-lettered, so
    its stored result is FAILED.

    `job_id` is the job's id; `error` its last failure as stored (`"<Type>: <message>"`, sensitive values
    scrubbed; e.g. `"ValueError: no such image"`, or why it was dead-lettered unrun: `"DecodeError: ..."`);
    `traceback` that attempt's formatted traceback (None when no handler code raised); `result` the whole
    `bgjob.JobResult` (every kept attempt's error in `result.errors`).
    """

    def __init__(self, message: str, *, job_id: str, error: str | None, traceback: str | None,
                 result: Any = None) -> None:  # fmt: skip
        super().__init__(message)
        self.job_id = job_id
        self.error = error
        self.traceback = traceback
        self.result = result


class InvalidSchedule(BgjobError, ValueError):
    """A cron expression, time zone or delay cannot be used for scheduling."""


class ResultNotFound(BgjobError, KeyError):
    """No result is stored for that job id (sent without store_result, or expired)."""

    def __str__(self) -> str:
        return Exception.__str__(self)


class DeadLetterNotFound(BgjobError, KeyError):
    """No dead letter with that id exists (it may have been retried, deleted or purged)."""

    def __str__(self) -> str:
        return Exception.__str__(self)


class InvalidMatch(BgjobError, ValueError):
    """A dead-letter search (`client.dlq.find`/`erase`) was given a match that cannot be used: not a non-empty
    mapping of dotted JSON paths to values, an empty path or path segment, a numeric segment not in ASCII digits,
    a path or text value over its length bound, or a scan bound that is not a positive int. Nothing was read or
    deleted."""


class ConfigurationError(BgjobError, ValueError):
    """A setting or a queue configuration cannot be used: a bad value, or one the server refused."""



class ResultTooLarge(BgjobError, ValueError):
    """A return value (or a whole result record) does not fit in one message of the server.

    `what` is "return value" or "result record"; `size` is its size in bytes as stored (UTF-8 JSON);
    `limit` the most it could be (the server's max_payload less the record's other fields).
    """

    def __init__(self, what: str, size: int, limit: int) -> None:
        super().__init__(f"{what} too large ({size} bytes; the limit is {limit})")
        self.what = what
        self.size = size
        self.limit = limit


class NonRetryable(BgjobError):
    """Raised by a handler: the job is dead-lettered at once with reason `non_retryable`, however many attempts
    its retry policy has left (dagnats' `NonRetryableError`, ebind's `NonRetryableErrorKinds`).

    `error` is the exception that made the job hopeless (`raise bgjob.NonRetryable(exc)`: the dead letter's error
    is that exception's text, e.g. "ValueError: no such customer", and its traceback follows the wrapped one) or
    a message (`raise bgjob.NonRetryable("card declined")`: "NonRetryable: card declined"). A handler's policy can
    name whole exception classes instead: `RetryPolicy(non_retryable=(ValueError,))`.
    """

    def __init__(self, error: BaseException | str) -> None:
        super().__init__(error)
        #: the wrapped exception or the message.
        self.error = error
        if isinstance(error, BaseException) and self.__cause__ is None:
            self.__cause__ = error  # its traceback is shown with this one's, however it was raised

    def __str__(self) -> str:
        return _safe_str(self.error) if isinstance(self.error, BaseException) else str(self.error)


class RequestFailed(BgjobError):
    """A request-reply handler's request (`Mux.request_reply`, from choria asyncjobs) got no usable reply: a
    retryable failure of the job, retried by its retry policy like any handler's exception.

    - `subject`: the service's NATS subject.
    - `kind`: "timeout" (no reply in time), "no_responders" (no service listens on the subject), "error" (the
      service replied with a `Nats-Service-Error-Code` other than the dead-letter and non-retryable ones),
      "bad_reply" (a `Bgjob-Retry-After` that is not a plain decimal of seconds within Retry's bounds),
      "connection" (NATS could not be reached) or "stream" (the reply is a JetStream publish acknowledgement:
      a stream captures the subject; raised wrapped in `NonRetryable`, so the job is dead-lettered at once).
    - `code`: the service's error code (a str, as sent) for "error", else None.
    """

    def __init__(self, message: str, *, subject: str, kind: str, code: str | None = None) -> None:
        super().__init__(message)
        self.subject = subject
        self.kind = kind
        self.code = code


def exception_text(exc: BaseException) -> str:
    """`"<Type>: <message>"` for any exception, even one whose `__str__` raises or recurses; for a
    NonRetryable wrapping an exception, the wrapped exception's."""
    if isinstance(exc, NonRetryable) and isinstance(exc.error, BaseException):
        exc = exc.error
    return f"{type(exc).__name__}: {_safe_str(exc)}"


def exception_traceback(exc: BaseException) -> str | None:
    """The formatted traceback of `exc`, or None when formatting it fails (a `__str__` that raises)."""
    try:
        return "".join(traceback.format_exception(exc))
    except BaseException:  # noqa: BLE001 - a broken exception must not break the one reporting it
        return None


def _safe_str(exc: BaseException) -> str:
    try:
        return str(exc)
    except BaseException as inner:  # noqa: BLE001 - the message itself is broken
        return f"<its message could not be shown: __str__ raised {type(inner).__name__}>"


def describe_error(exc: BaseException) -> str:
    """One line naming an error and what the server said (`repr()` of a nats-py error drops the description)."""
    text = _safe_str(exc).strip().removeprefix("nats: ")
    name = type(exc).__name__
    if not text:
        return name
    return text if text.startswith(name) else f"{name}: {text}"


class InvalidResult(InvalidJob):
    """A Result, Schedule or RetryPolicy was built with arguments that cannot work."""


class QueueFull(PublishError):
    """The queue's stream refused the job: one of its limits is reached (max_msgs, max_bytes, max_msgs_per_subject
    with discard new). Nothing was stored by that publish; it may succeed once workers have drained the queue."""


class StorageFull(PublishError):
    """The server refused the job because its JetStream storage is exhausted (err 10023 insufficient resources,
    10047 storage / 10028 memory resources exceeded, 10077 a store failure, 10002 account limits). Nothing was
    stored by that publish; an operator must free or add storage."""


class ServerRefused(BgjobError):
    """The server answered a request (not a publish) with an error bgjob has no more specific name for.

    `description`, `err_code` and `code` are what the server said.
    """

    def __init__(self, message: str, *, description: str | None = None, err_code: int | None = None,
                 code: int | None = None) -> None:
        super().__init__(message)
        self.description = description
        self.err_code = err_code
        self.code = code


#: err_code 10158: "duplicate message id is in process": a publish with that id is being stored; wait, not a failure.
DUPLICATE_IN_PROCESS = 10158
#: err_codes of a message the stream can never take (size over its max_msg_size, headers over 64 KiB).
_TOO_LARGE = {10054, 10097}
#: err_codes of a server or account whose storage is exhausted.
_STORAGE = {10002, 10023, 10028, 10047}
#: what the server says (err 10077, or 10053) when a stream limit with discard new refuses a message.
_LIMIT_TEXTS = ("maximum messages", "maximum bytes", "maximum messages per subject")


class _RefusalDetails(TypedDict):
    """The keyword arguments of PublishError (and its subclasses) that publish_refusal passes on."""

    job_ids: tuple[str, ...] | list[str]
    description: str | None
    err_code: int | None
    code: int | None


def publish_refusal(code: int | None, err_code: int | None, description: str | None, *,
                    job_ids: tuple[str, ...] | list[str] = (), queue: str | None = None) -> BgjobError | None:
    """The named bgjob error for a JetStream error answered to a publish (a PubAck with `error`), or None when the
    answer means "try again" (a 503/504 leader change, err 10158 a publish with this id being stored).

    `code` is the HTTP-like status, `err_code` JetStream's 10xxx number, `description` its text; `job_ids` and
    `queue` go into the error. The one place where server error replies to a publish get their names:
    InvalidJob (too large for this queue's stream), QueueFull (a stream limit), StorageFull (the server's
    store), else PublishError.
    """
    text = (description or "").strip()
    lowered = text.lower()
    where = f"queue {queue!r}" if queue else "the stream"
    jobs = ", ".join(job_ids) or "the message"
    said = f"the server answered: {text or 'an error'} (err {err_code}, {code})"
    details: _RefusalDetails = {"job_ids": job_ids, "description": description, "err_code": err_code, "code": code}
    if err_code == DUPLICATE_IN_PROCESS:
        return None
    if err_code in _TOO_LARGE or "message size exceeds" in lowered:
        return JobTooLarge(f"job {jobs} is too large for {where}: {said}; nothing was stored", **details)
    if any(t in lowered for t in _LIMIT_TEXTS):
        return QueueFull(f"{where} is full, job {jobs} was not stored: {said}; send it again (same job id) once "
                         "workers have drained the queue, or raise the stream's limits", **details)
    if err_code in _STORAGE or err_code == 10077 or "resources" in lowered or "storage" in lowered:
        return StorageFull(f"the server's storage is full, job {jobs} was not stored: {said}; free or add "
                           "JetStream storage, then send it again (same job id)", **details)
    if code in (503, 504):
        return None
    return PublishError(f"job {jobs} was refused: {said}; it was not stored by this publish", **details)

