"""What a handler returns: the fate of its job."""

from __future__ import annotations

import traceback as _traceback
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter

from .errors import InvalidSchedule


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
    """The job is done: it is acknowledged and removed. `value` is kept when results are stored."""

    value: Any = None


@dataclass(frozen=True)
class Retry(Result):
    """Run the job again after `delay` (None: the worker's retry policy decides)."""

    delay: timedelta | float | None = None
    error: BaseException | str | None = None
    traceback: str | None = field(default=None, compare=False)

    def delay_seconds(self) -> float | None:
        return _seconds(self.delay) if self.delay is not None else None


@dataclass(frozen=True)
class MoveToDlq(Result):
    """Give up: store the job in the dead-letter queue with this error."""

    error: BaseException | str = "moved to DLQ by handler"
    reason: str = "handler"
    traceback: str | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        from .dlq import validate_reason

        validate_reason(self.reason)
        if self.traceback is None and isinstance(self.error, BaseException) and self.error.__traceback__:
            tb = "".join(_traceback.format_exception(self.error))
            object.__setattr__(self, "traceback", tb)


class Schedule:
    """When the next run of a rescheduled job is due."""

    def next_run(self, now: datetime) -> datetime:
        raise NotImplementedError


@dataclass(frozen=True)
class ByCron(Schedule):
    """The next tick of a 5-field cron expression (6 with seconds first), in time zone `tz`."""

    expr: str
    tz: str = "UTC"

    def __post_init__(self) -> None:
        fields = self.expr.split()
        if len(fields) not in (5, 6) or not croniter.is_valid(self.expr, second_at_beginning=True):
            raise InvalidSchedule(
                f"invalid cron expression {self.expr!r}: use 5 fields 'minute hour day month weekday' "
                "(e.g. '0 * * * *') or 6 with seconds first"
            )
        try:
            ZoneInfo(self.tz)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise InvalidSchedule(f"unknown time zone {self.tz!r} (use an IANA name like 'Europe/Berlin')") from exc

    @property
    def has_seconds(self) -> bool:
        return len(self.expr.split()) == 6

    def server_expr(self) -> str:
        """The expression in the 6-field, seconds-first form nats-server expects."""
        return self.expr if self.has_seconds else "0 " + self.expr

    def next_run(self, now: datetime) -> datetime:
        local = now.astimezone(ZoneInfo(self.tz))
        it = croniter(self.expr, local, second_at_beginning=True)
        return it.get_next(datetime).astimezone(timezone.utc)


@dataclass(frozen=True)
class ByAfterTime(Schedule):
    """A fixed delay after the current run finishes."""

    delay: timedelta | float

    def __post_init__(self) -> None:
        if _seconds(self.delay) < 0:
            raise InvalidSchedule("ByAfterTime needs a delay >= 0")

    def next_run(self, now: datetime) -> datetime:
        return now + timedelta(seconds=_seconds(self.delay))


@dataclass(frozen=True)
class Reschedule(Result):
    """The job is done for now; run it again when `by` says, with `arg` (default: the same arg)."""

    by: Schedule
    arg: Any = KEEP_ARG

    def __post_init__(self) -> None:
        if not isinstance(self.by, Schedule):
            raise InvalidSchedule("Reschedule needs ByCron(...) or ByAfterTime(...)")


def _seconds(value: timedelta | float) -> float:
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidSchedule(f"expected a timedelta or seconds, got {value!r}")
    return float(value)
