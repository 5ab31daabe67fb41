"""What a handler returns: the fate of its job. Every Result checks its arguments when it is built."""

from __future__ import annotations

import reprlib
import traceback as _traceback
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

from .errors import InvalidJob, InvalidResult, InvalidSchedule
from .job import KEEP_CHECKPOINT, encode_arg, validate_reason
from .schedule import ByAfterTime, ByCron, Schedule, seconds_of

__all__ = [
    "KEEP_ARG",
    "ByAfterTime",
    "ByCron",
    "Complete",
    "KEEP_CHECKPOINT",
    "MoveToDlq",
    "Pause",
    "Reschedule",
    "Result",
    "Retry",
    "Schedule",
]


class _Keep:
    def __repr__(self) -> str:
        return "KEEP_ARG"


#: Reschedule's default arg: run the next time with the same arg.
KEEP_ARG: Any = _Keep()


class Result:
    """Base class of the values a handler returns."""

    __slots__ = ()


@dataclass(frozen=True)
class Complete(Result):
    """The job is done: it is acknowledged and removed.

    `value` is any value; it is kept only when the job was sent with `store_result` (as JSON, or its repr
    when it has no JSON form).
    """

    value: Any = None


@dataclass(frozen=True)
class Retry(Result):
    """Run the job again after `delay`; the worker's retry policy still sends it to the DLQ at max_attempts.

    - `delay`: a timedelta or seconds (int or float, finite, >= 0); None lets the retry policy decide.
    - `error`: what went wrong, an exception or a str (or None); kept in the result and the dead letter.
    - `traceback`: a formatted traceback (str) or None.

    Raises InvalidResult when built with anything else (e.g. `Retry("10")`, `Retry(-5)`, `Retry(True)`).
    """

    delay: timedelta | float | None = None
    error: BaseException | str | None = None
    traceback: str | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if self.delay is not None:
            seconds_of(self.delay, "Retry delay", InvalidResult)
        _check_error("Retry", self.error)
        _check_traceback("Retry", self.traceback)

    def delay_seconds(self) -> float | None:
        """The delay in seconds, or None when the retry policy decides."""
        return seconds_of(self.delay, "Retry delay", InvalidResult) if self.delay is not None else None


@dataclass(frozen=True)
class MoveToDlq(Result):
    """Give up: store the job in the dead-letter queue and remove it from its queue.

    - `error`: an exception or a str (or None); an exception's traceback is kept when `traceback` is None.
    - `reason`: one subject token, letters, digits, '_' and '-' (at most 64): the DLQ can be filtered by it.
    - `traceback`: a formatted traceback (str) or None.

    Raises InvalidResult when built with anything else.
    """

    error: BaseException | str | None = "moved to DLQ by handler"
    reason: str = "handler"
    traceback: str | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        _check_error("MoveToDlq", self.error)
        try:
            validate_reason(self.reason)
        except InvalidJob as exc:
            raise InvalidResult(f"MoveToDlq reason: {exc}") from None
        _check_traceback("MoveToDlq", self.traceback)
        if self.traceback is None and isinstance(self.error, BaseException) and self.error.__traceback__:
            tb = "".join(_traceback.format_exception(self.error))
            object.__setattr__(self, "traceback", tb)


@dataclass(frozen=True)
class Reschedule(Result):
    """The job is done for now; run it again when `by` says, with `arg`.

    - `by`: a Schedule, `ByCron(...)` or `ByAfterTime(...)` (anything else raises InvalidSchedule).
    - `arg`: the next run's arg, JSON-serialisable or bytes like any job arg; `KEEP_ARG` (the default) keeps
      the current one. An arg that cannot be encoded raises InvalidResult.
    """

    by: Schedule
    arg: Any = KEEP_ARG

    def __post_init__(self) -> None:
        if not isinstance(self.by, Schedule):
            raise InvalidSchedule(f"Reschedule needs ByCron(...) or ByAfterTime(...), got {self.by!r}")
        if self.arg is not KEEP_ARG:
            try:
                encode_arg(self.arg)
            except InvalidJob as exc:
                raise InvalidResult(f"Reschedule arg: {exc}") from None


@dataclass(frozen=True)
class Pause(Result):
    """Give the worker's slot back and run the job again later, with its checkpoint (from dagnats' TaskContext).

    - `until`: when to run again: a timedelta or seconds from now (int or float, finite, >= 0), or an aware
      datetime.
    - `checkpoint`: a state to save first (JSON-serialisable or bytes, as `job.checkpoint(state)`); the
      default `KEEP_CHECKPOINT` leaves the stored one as it is.

    A pause is not a failure: the next run has the same attempt number (it is not counted against
    max_attempts). It is an `@at` schedule of the same job (same id and arg), then the delivery is acked: the
    fate hooks see is `rescheduled`. Raises InvalidResult for anything else (a naive datetime, a negative or
    non-finite delay, a checkpoint that cannot be encoded).
    """

    until: timedelta | float | datetime
    checkpoint: Any = KEEP_CHECKPOINT

    def __post_init__(self) -> None:
        if isinstance(self.until, datetime):
            if self.until.tzinfo is None or self.until.utcoffset() is None:
                raise InvalidResult("Pause until must be a timezone-aware datetime, or a timedelta or seconds from "
                                    "now, got a naive datetime")  # fmt: skip
        else:
            seconds_of(self.until, "Pause until", InvalidResult)
        if self.checkpoint is not KEEP_CHECKPOINT and not isinstance(self.checkpoint, (bytes, bytearray, memoryview)):
            try:
                encode_arg(self.checkpoint)
            except InvalidJob as exc:
                raise InvalidResult(f"Pause checkpoint: {str(exc).replace('job arg', 'a checkpoint')}") from None

    def due(self, now: datetime | None = None) -> datetime:
        """When the job runs again: an aware UTC datetime (`now` defaults to the current time)."""
        if isinstance(self.until, datetime):
            return self.until.astimezone(timezone.utc)
        now = now or datetime.now(timezone.utc)
        return now + timedelta(seconds=seconds_of(self.until, "Pause until", InvalidResult))


def _check_error(what: str, error: object) -> None:
    if error is not None and not isinstance(error, (BaseException, str)):
        kind = type(error).__name__
        raise InvalidResult(f"{what} error must be an exception, a str or None, got {kind} {reprlib.repr(error)}")


def _check_traceback(what: str, trace: object) -> None:
    if trace is not None and not isinstance(trace, str):
        raise InvalidResult(f"{what} traceback must be a str or None, got {type(trace).__name__}")
