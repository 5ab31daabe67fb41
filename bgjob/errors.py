"""Every refusal bgjob makes is one of these named exceptions."""

from __future__ import annotations

import builtins
import traceback


class BgjobError(Exception):
    """Base class of all bgjob errors."""


class InvalidJob(BgjobError, ValueError):
    """A job was refused before anything was published: bad type name, arg, delay or header."""


class ConnectionError(BgjobError, builtins.ConnectionError):  # noqa: A001 - public name from DESIGN.md
    """NATS could not be reached (or stayed unreachable after bounded retries)."""


class PublishError(BgjobError):
    """A publish was not confirmed by a JetStream PubAck; the job may or may not be stored."""


class SendJobsError(PublishError):
    """send_jobs could not confirm every job. `stored` were confirmed (PubAck); `not_stored` were not.

    Sending the `not_stored` ones again with the same job ids is safe: JetStream drops any that did
    get stored, within the duplicate window.
    """

    def __init__(self, message: str, stored: list[str], not_stored: list[str], errors: dict[str, BaseException]):
        super().__init__(message)
        self.stored = stored
        self.not_stored = not_stored
        self.errors = errors


class DeadLetterRefused(PublishError):
    """The server refused a dead letter even reduced to its minimum; the job was not stored in the DLQ.

    `description` and `err_code` are what the server said (None when the refusal came before sending).
    """

    def __init__(self, message: str, description: str | None = None, err_code: int | None = None):
        super().__init__(message)
        self.description = description
        self.err_code = err_code


class ServerVersionError(BgjobError):
    """The NATS server is too old or lacks JetStream."""


class ServerNotFound(BgjobError):
    """No NATS URL is configured and the embedded nats-server binary is not installed."""


class HandlerError(BgjobError):
    """A handler or Mux registration is invalid (duplicate type, not callable, ...)."""


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

def exception_text(exc: BaseException) -> str:
    """`"<Type>: <message>"` for any exception, even one whose `__str__` raises or recurses."""
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
