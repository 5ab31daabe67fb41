"""ByCron on the days the clocks change, as classic (Vixie) cron runs it.

- A local time that occurs twice (clocks go back) runs once, the first time.
- A local time that does not exist (clocks go forward) runs at the first valid moment after the gap.
- An expression whose minute or hour field starts with '*' follows real time: both passes of a repeated hour,
  no catch-up of ticks that fell into a gap.

The 2026 transitions used below (local wall-clock times):
  Europe/Berlin       29 Mar 02:00 -> 03:00     25 Oct 03:00 -> 02:00 (02:00-02:59 twice)
  America/New_York     8 Mar 02:00 -> 03:00      1 Nov 02:00 -> 01:00 (01:00-01:59 twice)
  Australia/Sydney     4 Oct 02:00 -> 03:00      5 Apr 03:00 -> 02:00 (02:00-02:59 twice)
  Australia/Lord_Howe  4 Oct 02:00 -> 02:30      5 Apr 02:00 -> 01:30 (01:30-01:59 twice, a 30-minute shift)
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest

import bgjob
from bgjob import periodic, result, schedule
from bgjob.errors import InvalidSchedule
from bgjob.schedule import ByCron


@dataclass(frozen=True)
class Zone:
    name: str
    #: the day clocks go forward, a local time in its gap, and the first valid local time after the gap.
    forward_day: date
    skipped: time
    after_gap: time
    #: the day clocks go back, a local time that occurs twice, and the length of the repeated span.
    back_day: date
    repeated: time
    shift: timedelta


HOUR, HALF_HOUR = timedelta(hours=1), timedelta(minutes=30)
ZONES = [
    Zone("Europe/Berlin", date(2026, 3, 29), time(2, 30), time(3), date(2026, 10, 25), time(2, 30), HOUR),
    Zone("America/New_York", date(2026, 3, 8), time(2, 30), time(3), date(2026, 11, 1), time(1, 30), HOUR),
    Zone("Australia/Sydney", date(2026, 10, 4), time(2, 30), time(3), date(2026, 4, 5), time(2, 30), HOUR),
    Zone("Australia/Lord_Howe", date(2026, 10, 4), time(2, 15), time(2, 30), date(2026, 4, 5), time(1, 45), HALF_HOUR),
]
ZONE_IDS = [zone.name for zone in ZONES]


def local_midnight(zone: Zone, day: date) -> datetime:
    return datetime.combine(day, time(0), tzinfo=ZoneInfo(zone.name)).astimezone(timezone.utc)


def runs(schedule_: ByCron, start: datetime, end: datetime) -> list[datetime]:
    """Every run in [start, end), following next_run from one run to the next, as Reschedule does."""
    found: list[datetime] = []
    moment = start - timedelta(microseconds=1)
    while True:
        moment = schedule_.next_run(moment)
        assert moment.tzinfo is timezone.utc
        if moment >= end:
            return found
        found.append(moment)


def gaps(found: list[datetime]) -> set[timedelta]:
    """The distinct real times between successive runs."""
    return {later - earlier for earlier, later in itertools.pairwise(found)}


def around(zone: Zone, day: date, days: int = 1) -> tuple[datetime, datetime]:
    """From the local midnight `days` before `day` to the local midnight `days` after it."""
    return local_midnight(zone, day - timedelta(days=days)), local_midnight(zone, day + timedelta(days=days + 1))


def wall(moment: datetime, zone: Zone) -> tuple[date, time]:
    local = moment.astimezone(ZoneInfo(zone.name))
    return local.date(), local.time()


def cron_at(at: time, seconds: bool) -> str:
    return f"0 {at.minute} {at.hour} * * *" if seconds else f"{at.minute} {at.hour} * * *"


def test_the_reported_berlin_case_runs_once_on_the_day_clocks_go_back() -> None:
    daily = ByCron("30 2 * * *", tz="Europe/Berlin")
    first = daily.next_run(datetime(2026, 10, 24, 23, 0, tzinfo=timezone.utc))
    assert first == datetime(2026, 10, 25, 0, 30, tzinfo=timezone.utc)  # 02:30 CEST
    assert daily.next_run(first) == datetime(2026, 10, 26, 1, 30, tzinfo=timezone.utc)  # 02:30 CET, the next day


@pytest.mark.parametrize("seconds", [False, True], ids=["5-field", "6-field"])
@pytest.mark.parametrize("zone", ZONES, ids=ZONE_IDS)
def test_daily_cron_at_a_repeated_time_runs_once_the_first_time(zone: Zone, seconds: bool) -> None:
    daily = ByCron(cron_at(zone.repeated, seconds), tz=zone.name)
    found = runs(daily, *around(zone, zone.back_day))
    assert [wall(run, zone) for run in found] == [
        (zone.back_day + timedelta(days=offset), zone.repeated) for offset in (-1, 0, 1)
    ]
    on_the_day = found[1].astimezone(ZoneInfo(zone.name))
    assert on_the_day.fold == 0, "the first of the two readings"
    assert found[1] - found[0] == timedelta(days=1)
    assert found[2] - found[1] == timedelta(days=1) + zone.shift  # the repeated span makes the local day longer


@pytest.mark.parametrize("seconds", [False, True], ids=["5-field", "6-field"])
@pytest.mark.parametrize("zone", ZONES, ids=ZONE_IDS)
def test_daily_cron_at_a_skipped_time_runs_at_the_first_valid_moment_after_the_gap(zone: Zone, seconds: bool) -> None:
    daily = ByCron(cron_at(zone.skipped, seconds), tz=zone.name)
    found = runs(daily, *around(zone, zone.forward_day))
    assert [wall(run, zone) for run in found] == [
        (zone.forward_day - timedelta(days=1), zone.skipped),
        (zone.forward_day, zone.after_gap),
        (zone.forward_day + timedelta(days=1), zone.skipped),
    ]


@pytest.mark.parametrize("zone", ZONES, ids=ZONE_IDS)
def test_several_fixed_times_in_one_gap_run_once_after_it(zone: Zone) -> None:
    gap_minutes = int(zone.shift.total_seconds() // 60)
    minutes = ",".join(str(m) for m in range(0, 60, 15) if m < gap_minutes)  # every quarter inside the gap
    skipped_hour = zone.skipped.hour
    fixed = ByCron(f"{minutes} {skipped_hour} * * *", tz=zone.name)
    start, end = local_midnight(zone, zone.forward_day), local_midnight(zone, zone.forward_day + timedelta(days=1))
    assert [wall(run, zone)[1] for run in runs(fixed, start, end)] == [zone.after_gap]


@pytest.mark.parametrize("expr", ["*/15 * * * *", "0 */15 * * * *"])
@pytest.mark.parametrize("zone", ZONES, ids=ZONE_IDS)
def test_every_15_minutes_keeps_running_every_15_real_minutes_through_both_transitions(zone: Zone, expr: str) -> None:
    every_quarter = ByCron(expr, tz=zone.name)
    for day in (zone.back_day, zone.forward_day):
        found = runs(every_quarter, *around(zone, day, days=0))
        assert gaps(found) == {timedelta(minutes=15)}
    # During the repeated span each quarter runs twice, once per reading of the local time.
    back = runs(every_quarter, *around(zone, zone.back_day, days=0))
    readings = [wall(run, zone) for run in back]
    assert readings.count((zone.back_day, zone.repeated)) == 2
    # Quarters that fall into the gap are skipped, not caught up.
    forward = runs(every_quarter, *around(zone, zone.forward_day, days=0))
    assert (zone.forward_day, zone.skipped) not in [wall(run, zone) for run in forward]


@pytest.mark.parametrize("expr", ["* * * * *", "0 * * * * *"])
@pytest.mark.parametrize("zone", ZONES, ids=ZONE_IDS)
def test_every_minute_runs_every_real_minute_through_both_transitions(zone: Zone, expr: str) -> None:
    every_minute = ByCron(expr, tz=zone.name)
    for day in (zone.back_day, zone.forward_day):
        middle = datetime.combine(day, zone.repeated if day == zone.back_day else zone.after_gap)
        middle_utc = middle.replace(tzinfo=ZoneInfo(zone.name)).astimezone(timezone.utc)
        found = runs(every_minute, middle_utc - timedelta(hours=3), middle_utc + timedelta(hours=3))
        assert gaps(found) == {timedelta(minutes=1)}
        assert len(found) == 6 * 60


@pytest.mark.parametrize("zone", [zone for zone in ZONES if zone.shift == HOUR], ids=str)
def test_hourly_cron_runs_every_real_hour_through_both_transitions(zone: Zone) -> None:
    hourly = ByCron("0 * * * *", tz=zone.name)
    back = runs(hourly, *around(zone, zone.back_day, days=0))
    forward = runs(hourly, *around(zone, zone.forward_day, days=0))
    assert gaps(back) == {timedelta(hours=1)}
    assert gaps(forward) == {timedelta(hours=1)}
    assert (len(back), len(forward)) == (25, 23)  # the local days are 25 and 23 hours long


def test_hourly_cron_with_a_30_minute_shift_runs_at_each_local_hour_that_exists() -> None:
    lord_howe = ZONES[3]
    hourly = ByCron("0 * * * *", tz=lord_howe.name)
    back = runs(hourly, *around(lord_howe, lord_howe.back_day, days=0))
    assert [wall(run, lord_howe)[1].hour for run in back] == list(range(24))  # 01:30-01:59 has no o'clock
    forward = runs(hourly, *around(lord_howe, lord_howe.forward_day, days=0))
    assert [wall(run, lord_howe)[1].hour for run in forward] == [h for h in range(24) if h != 2]  # 02:00 is gone
    half_past = runs(ByCron("30 * * * *", tz=lord_howe.name), *around(lord_howe, lord_howe.back_day, days=0))
    assert [wall(run, lord_howe)[1] for run in half_past].count(time(1, 30)) == 2  # both readings of 01:30


def test_a_wildcard_minute_in_a_fixed_hour_follows_real_time() -> None:
    berlin = ZONES[0]
    during_two = ByCron("*/15 2 * * *", tz=berlin.name)
    assert during_two.follows_real_time
    back = runs(during_two, *around(berlin, berlin.back_day, days=0))
    assert len(back) == 8  # 02:00-02:45 CEST, then 02:00-02:45 CET
    forward = runs(during_two, *around(berlin, berlin.forward_day, days=0))
    assert forward == []  # 02:xx does not exist that day; classic cron does not catch wildcard jobs up


@pytest.mark.parametrize(
    ("expr", "by_real_time"),
    [
        ("30 2 * * *", False),
        ("0,30 1-3 * * *", False),
        ("0 30 2 * * *", False),
        ("*/10 30 2 * * *", False),  # the seconds field does not count
        ("0 * * * *", True),
        ("*/15 * * * *", True),
        ("*/5 2 * * *", True),
        ("0 */2 * * *", True),
        ("0 0 * * * *", True),
    ],
)
def test_only_a_wildcard_minute_or_hour_field_follows_real_time(expr: str, by_real_time: bool) -> None:
    assert ByCron(expr).follows_real_time is by_real_time


@pytest.mark.parametrize("zone", ZONES, ids=ZONE_IDS)
def test_a_fixed_time_asked_from_inside_the_repeated_span_never_runs_a_second_time(zone: Zone) -> None:
    daily = ByCron(cron_at(zone.repeated, seconds=False), tz=zone.name)
    first = datetime.combine(zone.back_day, zone.repeated).replace(tzinfo=ZoneInfo(zone.name), fold=0)
    for now in (first + timedelta(minutes=1), first + zone.shift - timedelta(minutes=1), first + zone.shift):
        next_run = daily.next_run(now)
        assert wall(next_run, zone) == (zone.back_day + timedelta(days=1), zone.repeated)


@pytest.mark.parametrize("zone", ZONES, ids=ZONE_IDS)
def test_next_run_is_strictly_after_now_even_at_a_tick(zone: Zone) -> None:
    every_quarter = ByCron("*/15 * * * *", tz=zone.name)
    for day in (zone.back_day, zone.forward_day):
        for tick in runs(every_quarter, *around(zone, day, days=0)):
            assert every_quarter.next_run(tick) == tick + timedelta(minutes=15)
            assert every_quarter.next_run(tick - timedelta(microseconds=1)) == tick


def test_next_run_needs_an_aware_datetime() -> None:
    with pytest.raises(InvalidSchedule, match="timezone-aware"):
        ByCron("0 * * * *").next_run(datetime(2026, 1, 1, 12, 0))
    with pytest.raises(InvalidSchedule, match="timezone-aware"):
        bgjob.ByAfterTime(5).next_run(datetime(2026, 1, 1, 12, 0))
    with pytest.raises(InvalidSchedule, match="timezone-aware"):
        ByCron("0 * * * *").next_run("2026-01-01T12:00:00Z")  # type: ignore[arg-type]


def test_next_run_in_another_zone_gives_the_same_instant_in_utc() -> None:
    daily = ByCron("0 9 * * *", tz="America/New_York")
    now = datetime(2026, 6, 1, 12, 0, tzinfo=timezone.utc)
    in_tokyo = now.astimezone(ZoneInfo("Asia/Tokyo"))
    assert daily.next_run(now) == daily.next_run(in_tokyo) == datetime(2026, 6, 1, 13, 0, tzinfo=timezone.utc)


def test_schedules_live_in_their_own_module_and_keep_their_public_names() -> None:
    assert bgjob.ByCron is result.ByCron is schedule.ByCron is periodic.ByCron
    assert bgjob.ByAfterTime is result.ByAfterTime is schedule.ByAfterTime
    assert bgjob.Schedule is result.Schedule is schedule.Schedule
