"""When a rescheduled job runs next: `ByCron` (a cron expression in a time zone) or `ByAfterTime` (a delay).

Cron expressions are parsed and stepped by croniter on local wall-clock time; this module only decides what a
wall-clock time means on the days the clocks change (see `ByCron`).
"""

from __future__ import annotations

import math
import reprlib
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterError, croniter

from .errors import BgjobError, InvalidSchedule

#: The latest moment nats-server can schedule a message for: it keeps times as int64 nanoseconds since 1970. A job
#: due later would fire at once, so bgjob refuses it.
LATEST_DUE = datetime(2262, 4, 11, tzinfo=timezone.utc)
#: The longest delay bgjob accepts (Retry, ByAfterTime, RetryPolicy), in seconds: 100 years (the server's clock ends
#: at LATEST_DUE; a delay that would reach past it is refused when it is applied).
MAX_DELAY_SECONDS = 100 * 365.25 * 24 * 3600.0


def check_due(due: datetime, what: str = "the next run") -> datetime:
    """`due` if a server-side schedule can hold it; raises InvalidSchedule past LATEST_DUE."""
    if due >= LATEST_DUE:
        raise InvalidSchedule(f"{what} would be due at {due.isoformat()}, past {LATEST_DUE.date()}, the latest time "
                              "nats-server can schedule (its clock is int64 nanoseconds)")  # fmt: skip
    return due

_ONE_SECOND = timedelta(seconds=1)


def as_seconds(value: object) -> float | None:
    """`value` in seconds when it is a `timedelta` or a number (int or float, not bool), else None. Unchecked:
    NaN, infinity and negatives come back as they are (an int too large for a float as infinity)."""
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            return float(value)
        except OverflowError:
            return math.inf
    return None


def seconds_of(value: object, what: str, error: type[BgjobError] = InvalidSchedule) -> float:
    """A delay as seconds: `value` is a `timedelta` or a number of seconds (int or float, not bool).

    `what` names the argument in the message ("Retry delay"). Returns a finite float in
    [0, MAX_DELAY_SECONDS]; raises `error` (InvalidSchedule by default) for anything else: a str, a bool,
    NaN, infinity, a negative or a longer delay.
    """
    seconds = as_seconds(value)
    if seconds is None:
        kind = type(value).__name__
        raise error(f"{what} must be a timedelta or a number of seconds, got {kind} {reprlib.repr(value)}")
    if math.isnan(seconds) or seconds < 0:
        raise error(f"{what} must be >= 0 seconds, got {value!r}")
    if seconds > MAX_DELAY_SECONDS:
        raise error(f"{what} must be at most {MAX_DELAY_SECONDS:.0f} seconds (100 years), got {value!r}")
    return seconds


class Schedule:
    """When the next run of a rescheduled job is due (the base class of ByCron and ByAfterTime)."""

    def next_run(self, now: datetime) -> datetime:
        """The first run strictly after `now` (a timezone-aware datetime), as a UTC datetime."""
        raise NotImplementedError


@dataclass(frozen=True)
class ByCron(Schedule):
    """The next tick of a cron expression in time zone `tz`.

    `expr` has 5 fields (`minute hour day month weekday`, e.g. `"30 2 * * *"`) or 6 with seconds first
    (`"0 */15 * * * *"`); `tz` is an IANA time zone name (`"Europe/Berlin"`, default `"UTC"`). Both are
    checked when built: a bad expression, one that never fires (`"0 0 30 2 *"`) or an unknown zone raises
    `InvalidSchedule`.

    When the clocks change, the rule is classic (Vixie) cron's:

    - A local time that occurs twice (clocks go back) runs once, the first time: `"30 2 * * *"` in
      Europe/Berlin runs at 02:30 CEST on the last Sunday of October, not again at 02:30 CET.
    - A local time that does not exist (clocks go forward) runs at the first valid moment after the gap:
      `"30 2 * * *"` in Europe/Berlin runs at 03:00 CEST on the last Sunday of March (once, however many of
      its ticks fell into the gap).
    - An expression whose minute or hour field starts with `*` (`"*/15 * * * *"`, `"0 * * * *"`,
      `"*/5 2 * * *"`) follows real time instead: it runs on every matching wall-clock reading, so during a
      repeated hour it runs in both passes (every 15 real minutes, every real hour), and ticks that fall into
      a gap are skipped, not caught up.
    """

    expr: str
    tz: str = "UTC"

    def __post_init__(self) -> None:
        if not isinstance(self.expr, str):
            kind = type(self.expr).__name__
            raise InvalidSchedule(f"a cron expression must be a str, got {kind} {reprlib.repr(self.expr)}")
        if not isinstance(self.tz, str):
            raise InvalidSchedule(f"a time zone must be a str like 'Europe/Berlin', got {reprlib.repr(self.tz)}")
        fields = self.expr.split()
        if len(fields) not in (5, 6) or not croniter.is_valid(self.expr, second_at_beginning=True):
            raise InvalidSchedule(
                f"invalid cron expression {self.expr!r}: use 5 fields 'minute hour day month weekday' "
                "(e.g. '0 * * * *') or 6 with seconds first"
            )
        try:
            ZoneInfo(self.tz)
        except (ZoneInfoNotFoundError, ValueError, OSError) as exc:
            raise InvalidSchedule(f"unknown time zone {self.tz!r} (use an IANA name like 'Europe/Berlin')") from exc
        try:
            croniter(self.expr, datetime(2000, 1, 1), second_at_beginning=True).get_next(datetime)
        except (CroniterError, ValueError, OverflowError) as exc:
            raise InvalidSchedule(f"cron expression {self.expr!r} never fires (no such date)") from exc

    @property
    def has_seconds(self) -> bool:
        """Whether the expression has the 6-field form, seconds first."""
        return len(self.expr.split()) == 6

    @property
    def follows_real_time(self) -> bool:
        """Whether the minute or hour field starts with `*`: such a schedule runs by real time across clock
        changes (both passes of a repeated hour, no catch-up after a gap); any other runs once per local time."""
        fields = self.expr.split()
        minute, hour = fields[-5], fields[-4]
        return minute.startswith("*") or hour.startswith("*")

    def server_expr(self) -> str:
        """The expression in the 6-field, seconds-first form nats-server expects."""
        return self.expr if self.has_seconds else "0 " + self.expr

    def next_run(self, now: datetime) -> datetime:
        """The first run strictly after `now` (a timezone-aware datetime), as a UTC datetime.

        Raises InvalidSchedule for a naive `now`, or when no run is left before the year 10000.
        """
        if not isinstance(now, datetime) or now.utcoffset() is None:
            raise InvalidSchedule(f"next_run needs a timezone-aware datetime, got {now!r}")
        zone = ZoneInfo(self.tz)
        now = now.astimezone(timezone.utc)
        local = now.astimezone(zone)
        wall = local.replace(tzinfo=None, fold=0)
        repeated = _repeated_walls(wall, zone)
        try:
            # First pass: every wall-clock time read as its first occurrence (a gap resolved per the rule above).
            # Times after a repeated span start at its end when `now` is in the second pass.
            start = repeated[1] - _ONE_SECOND if repeated and local.fold else wall
            best = self._first_after(now, start, zone, second_pass=False)
            if repeated and self.follows_real_time:
                # Second pass of the span `now` is in (or just before): it can come before `best`.
                start = wall if local.fold else repeated[0] - _ONE_SECOND
                second = self._first_after(now, start, zone, second_pass=True, before=best)
                if second is not None:
                    best = second
        except (CroniterError, ValueError, OverflowError) as exc:
            raise InvalidSchedule(f"cron expression {self.expr!r} has no run after {now.isoformat()}") from exc
        assert best is not None
        return best

    def _first_after(
        self, now: datetime, start: datetime, zone: ZoneInfo, *, second_pass: bool, before: datetime | None = None
    ) -> datetime | None:
        """The first tick after wall-clock `start` whose instant is after `now` (None: none before `before`).

        Reading each wall-clock tick with the same fold keeps the instants in order, so the first one found
        is the earliest.
        """
        ticks = croniter(self.expr, start, second_at_beginning=True)
        by_real_time = self.follows_real_time
        while True:
            tick = ticks.get_next(datetime)
            first, second = _instants(tick, zone)
            if first == second:  # an ordinary local time
                due = first
            elif first < second:  # occurs twice (clocks went back)
                due = second if second_pass else first
            elif by_real_time:  # does not exist (clocks went forward): skipped
                continue
            else:  # does not exist: the first valid moment after the gap
                due = _offset_change(zone, second, first)
            if before is not None and due >= before:
                return None
            if due > now:
                return due


@dataclass(frozen=True)
class ByAfterTime(Schedule):
    """A fixed delay after the current run finishes: `delay` is a timedelta or seconds (int or float), >= 0.

    Raises InvalidSchedule when built with anything else (a str, a bool, NaN, infinity, a negative delay).
    """

    delay: timedelta | float

    def __post_init__(self) -> None:
        seconds_of(self.delay, "ByAfterTime delay")

    def next_run(self, now: datetime) -> datetime:
        """`now` plus the delay, in UTC. Raises InvalidSchedule for a naive `now`."""
        if not isinstance(now, datetime) or now.utcoffset() is None:
            raise InvalidSchedule(f"next_run needs a timezone-aware datetime, got {now!r}")
        return now.astimezone(timezone.utc) + timedelta(seconds=seconds_of(self.delay, "ByAfterTime delay"))


def _instants(wall: datetime, zone: ZoneInfo) -> tuple[datetime, datetime]:
    """A wall-clock time read as its first (fold=0) and second (fold=1) occurrence, in UTC.

    Equal for an ordinary time; first < second for a time that occurs twice; first > second for a time in a
    gap (fold=0 reads it with the offset before the change, fold=1 with the one after).
    """
    return (
        wall.replace(tzinfo=zone, fold=0).astimezone(timezone.utc),
        wall.replace(tzinfo=zone, fold=1).astimezone(timezone.utc),
    )


def _offset_change(zone: ZoneInfo, after: datetime, until: datetime) -> datetime:
    """The instant in (after, until] at which `zone`'s UTC offset changes (there is one change in between)."""
    low, high = math.floor(after.timestamp()), math.ceil(until.timestamp())
    offset = datetime.fromtimestamp(low, zone).utcoffset()
    while high - low > 1:  # tz database changes fall on whole seconds
        middle = (low + high) // 2
        if datetime.fromtimestamp(middle, zone).utcoffset() == offset:
            low = middle
        else:
            high = middle
    return datetime.fromtimestamp(high, timezone.utc)


def _repeated_walls(wall: datetime, zone: ZoneInfo) -> tuple[datetime, datetime] | None:
    """If wall-clock `wall` occurs twice, the span [start, end) of wall-clock times that do; else None."""
    first, second = _instants(wall, zone)
    if first >= second:
        return None
    change = _offset_change(zone, first, second)
    start = change.astimezone(zone).replace(tzinfo=None, fold=0)
    return start, start + (second - first)
