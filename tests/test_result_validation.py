"""Every Result, Schedule and RetryPolicy refuses bad arguments when it is built, not later in settlement."""

from __future__ import annotations

import math
import re
from datetime import timedelta

import pytest

import bgjob
from bgjob import dead_letters, job
from bgjob.errors import InvalidJob, InvalidResult, InvalidSchedule
from bgjob.result import KEEP_ARG, Complete, MoveToDlq, Reschedule, Retry
from bgjob.retry_policy import RetryPolicy
from bgjob.schedule import MAX_DELAY_SECONDS, ByAfterTime, ByCron


def stable_id(value: object) -> str:
    """A parameter's repr without memory addresses: pytest-xdist's workers must collect the same test ids."""
    return re.sub(r" at 0x[0-9a-fA-F]+", "", repr(value))


#: Not a delay: wrong types (a str, bytes, a bool, a list), NaN, infinities, negatives, and beyond JetStream's limit.
BAD_DELAYS = [
    "10",
    b"10",
    True,
    False,
    [10],
    object(),
    -5,
    -0.001,
    timedelta(seconds=-1),
    math.nan,
    math.inf,
    -math.inf,
    10**400,
    1e300,
    timedelta.max,
    MAX_DELAY_SECONDS + 1,
]
GOOD_DELAYS = [0, 0.0, 0.25, 10, timedelta(seconds=10), timedelta(0), MAX_DELAY_SECONDS]
#: Not an error: anything but an exception instance, a str or None (an exception class is not an instance).
BAD_ERRORS = [42, b"bytes", ["x"], {"error": "x"}, ValueError, object()]
BAD_TRACEBACKS = [123, b"Traceback ...", ["line 1", "line 2"], ValueError("x")]


def test_invalid_result_is_an_invalid_job_and_a_value_error() -> None:
    assert issubclass(InvalidResult, InvalidJob)
    assert issubclass(InvalidResult, ValueError)


# Retry


def test_retry_with_a_str_delay_is_refused_when_built() -> None:
    with pytest.raises(InvalidResult, match="Retry delay must be a timedelta or a number of seconds"):
        Retry("10")  # type: ignore[arg-type]


def test_retry_with_negative_delay_is_refused_when_built() -> None:
    with pytest.raises(InvalidResult, match="Retry delay must be >= 0"):
        Retry(-5)


@pytest.mark.parametrize("delay", BAD_DELAYS, ids=stable_id)
def test_retry_refuses_every_delay_that_is_not_finite_non_negative_seconds(delay: object) -> None:
    with pytest.raises(InvalidResult, match="Retry delay"):
        Retry(delay)  # type: ignore[arg-type]


@pytest.mark.parametrize("delay", [None, *GOOD_DELAYS], ids=stable_id)
def test_retry_accepts_seconds_a_timedelta_or_none(delay: object) -> None:
    retry = Retry(delay)  # type: ignore[arg-type]
    expected = None if delay is None else (delay.total_seconds() if isinstance(delay, timedelta) else delay)
    assert retry.delay_seconds() == expected


@pytest.mark.parametrize("error", BAD_ERRORS, ids=stable_id)
def test_retry_error_must_be_an_exception_a_str_or_none(error: object) -> None:
    with pytest.raises(InvalidResult, match="Retry error must be an exception, a str or None"):
        Retry(1, error=error)  # type: ignore[arg-type]


@pytest.mark.parametrize("trace", BAD_TRACEBACKS, ids=stable_id)
def test_retry_traceback_must_be_a_str_or_none(trace: object) -> None:
    with pytest.raises(InvalidResult, match="Retry traceback must be a str or None"):
        Retry(1, "failed", trace)  # type: ignore[arg-type]


def test_retry_keeps_its_positional_fields() -> None:
    error = ValueError("boom")
    retry = Retry(timedelta(seconds=3), error, "Traceback ...")
    assert (retry.delay, retry.error, retry.traceback) == (timedelta(seconds=3), error, "Traceback ...")
    assert Retry(1, "x") == Retry(1, "x", "a different traceback")


# MoveToDlq


@pytest.mark.parametrize("error", BAD_ERRORS, ids=stable_id)
def test_move_to_dlq_error_must_be_an_exception_a_str_or_none(error: object) -> None:
    with pytest.raises(InvalidResult, match="MoveToDlq error must be an exception, a str or None"):
        MoveToDlq(error)  # type: ignore[arg-type]


@pytest.mark.parametrize("reason", ["", "has space", "a.b", "a*", "x" * 65, "ü", None, 5, b"handler"], ids=stable_id)
def test_move_to_dlq_reason_must_be_one_subject_token(reason: object) -> None:
    with pytest.raises(InvalidResult, match="MoveToDlq reason: invalid DLQ reason"):
        MoveToDlq("gave up", reason)  # type: ignore[arg-type]


@pytest.mark.parametrize("trace", BAD_TRACEBACKS, ids=stable_id)
def test_move_to_dlq_traceback_must_be_a_str_or_none(trace: object) -> None:
    with pytest.raises(InvalidResult, match="MoveToDlq traceback must be a str or None"):
        MoveToDlq("gave up", "handler", trace)  # type: ignore[arg-type]


@pytest.mark.parametrize("error", ["no user", ValueError("no user"), None], ids=stable_id)
def test_move_to_dlq_accepts_an_exception_a_str_or_none(error: object) -> None:
    result = MoveToDlq(error, "bad-input_2", None)  # type: ignore[arg-type]
    assert (result.error, result.reason) == (error, "bad-input_2")


def test_the_dlq_reason_rule_lives_with_the_other_job_validators() -> None:
    assert dead_letters.validate_reason is job.validate_reason
    assert job.validate_reason("max_attempts") == "max_attempts"
    with pytest.raises(InvalidJob, match="invalid DLQ reason"):
        job.validate_reason("no spaces")


# Reschedule


@pytest.mark.parametrize("by", ["0 * * * *", None, timedelta(minutes=5), 300, ByCron], ids=stable_id)
def test_reschedule_needs_a_schedule_instance(by: object) -> None:
    with pytest.raises(InvalidSchedule, match=r"Reschedule needs ByCron\(...\) or ByAfterTime\(...\)"):
        Reschedule(by)  # type: ignore[arg-type]


@pytest.mark.parametrize("arg", [object(), {1, 2}, math.nan, {"n": math.inf}, "\ud800", {"k": object()}], ids=stable_id)
def test_reschedule_arg_must_encode_as_a_job_arg(arg: object) -> None:
    with pytest.raises(InvalidResult, match="Reschedule arg: job arg must be JSON-serialisable or bytes"):
        Reschedule(ByAfterTime(60), arg)


@pytest.mark.parametrize("arg", [KEEP_ARG, None, b"\x00raw", {"n": 1}, [1, "two"], "text", 3.5])
def test_reschedule_accepts_json_bytes_or_keep_arg(arg: object) -> None:
    assert Reschedule(ByCron("0 * * * *"), arg).arg is arg


# Complete


@pytest.mark.parametrize("value", [None, 1, "done", {"rows": 3}, b"raw", object()], ids=stable_id)
def test_complete_takes_any_value(value: object) -> None:
    # A value with no JSON form is stored as its repr when results are kept, so nothing can be refused here.
    assert Complete(value).value is value


# Schedules


@pytest.mark.parametrize("delay", BAD_DELAYS, ids=stable_id)
def test_by_after_time_refuses_every_delay_that_is_not_finite_non_negative_seconds(delay: object) -> None:
    with pytest.raises(InvalidSchedule, match="ByAfterTime delay"):
        ByAfterTime(delay)  # type: ignore[arg-type]


@pytest.mark.parametrize("delay", GOOD_DELAYS, ids=stable_id)
def test_by_after_time_accepts_seconds_or_a_timedelta(delay: object) -> None:
    assert ByAfterTime(delay).delay == delay  # type: ignore[arg-type]


@pytest.mark.parametrize("expr", [None, 5, b"0 * * * *", ["0", "*", "*", "*", "*"]], ids=stable_id)
def test_by_cron_expression_must_be_a_str(expr: object) -> None:
    with pytest.raises(InvalidSchedule, match="a cron expression must be a str"):
        ByCron(expr)  # type: ignore[arg-type]


@pytest.mark.parametrize("expr", ["61 * * * *", "", "@daily", "* * * *", "* * * * * * *", "0 25 * * *"])
def test_by_cron_refuses_invalid_expressions(expr: str) -> None:
    with pytest.raises(InvalidSchedule, match="invalid cron expression"):
        ByCron(expr)


@pytest.mark.parametrize("expr", ["0 0 30 2 *", "0 0 31 4 *", "0 0 0 31 11 *"])
def test_by_cron_refuses_an_expression_that_never_fires(expr: str) -> None:
    with pytest.raises(InvalidSchedule, match="never fires"):
        ByCron(expr)


@pytest.mark.parametrize("tz", [None, 1, b"UTC"], ids=stable_id)
def test_by_cron_time_zone_must_be_a_str(tz: object) -> None:
    with pytest.raises(InvalidSchedule, match="a time zone must be a str"):
        ByCron("0 * * * *", tz)  # type: ignore[arg-type]


@pytest.mark.parametrize("tz", ["", "Mars/Olympus", "Europe", "../etc/passwd", "/etc/localtime", "utc", "UTC\x00"])
def test_by_cron_refuses_unknown_time_zones(tz: str) -> None:
    with pytest.raises(InvalidSchedule, match="unknown time zone"):
        ByCron("0 * * * *", tz)


# RetryPolicy


@pytest.mark.parametrize("max_attempts", [0, -1, True, False, 1.5, 3.0, "3"], ids=stable_id)
def test_retry_policy_max_attempts_must_be_an_int_of_at_least_one_or_none(max_attempts: object) -> None:
    with pytest.raises(InvalidResult, match="max_attempts must be an int >= 1 or None"):
        RetryPolicy(max_attempts=max_attempts)  # type: ignore[arg-type]
    assert RetryPolicy(max_attempts=None).max_attempts is None  # no limit


@pytest.mark.parametrize("field", ["base_delay", "max_delay"])
@pytest.mark.parametrize("value", [-1, -0.5, math.nan, math.inf, "1", True, None, MAX_DELAY_SECONDS * 2], ids=stable_id)
def test_retry_policy_delays_must_be_finite_non_negative_seconds(field: str, value: object) -> None:
    with pytest.raises(InvalidResult, match=f"RetryPolicy {field} must be"):
        RetryPolicy(**{field: value})  # type: ignore[arg-type]


@pytest.mark.parametrize("multiplier", [0, 0.5, -2, math.nan, math.inf, "2", True], ids=stable_id)
def test_retry_policy_multiplier_must_be_finite_and_at_least_one(multiplier: object) -> None:
    with pytest.raises(InvalidResult, match="RetryPolicy multiplier must be"):
        RetryPolicy(multiplier=multiplier)  # type: ignore[arg-type]


@pytest.mark.parametrize("jitter", [-0.1, 1.5, math.nan, math.inf, "0.1", True], ids=stable_id)
def test_retry_policy_jitter_must_be_between_zero_and_one(jitter: object) -> None:
    with pytest.raises(InvalidResult, match="RetryPolicy jitter must be"):
        RetryPolicy(jitter=jitter)  # type: ignore[arg-type]


def test_retry_policy_keeps_its_positional_fields_and_accepts_the_edges() -> None:
    policy = RetryPolicy(5, 0.5, 1, 0, 0)
    fields = (policy.max_attempts, policy.base_delay, policy.multiplier, policy.max_delay, policy.jitter)
    assert fields == (5, 0.5, 1, 0, 0)
    assert RetryPolicy(1, 0.5, 3, MAX_DELAY_SECONDS, 1).jitter == 1
    assert bgjob.RetryPolicy is RetryPolicy


def test_retry_policy_delay_stays_capped_after_very_many_attempts() -> None:
    policy = RetryPolicy(max_attempts=10, base_delay=1, multiplier=2, max_delay=600, jitter=0)
    assert policy.delay_for(100_000) == 600
    assert RetryPolicy(base_delay=0, multiplier=10, jitter=0).delay_for(100_000) == 0
    jittered = RetryPolicy(base_delay=MAX_DELAY_SECONDS, max_delay=MAX_DELAY_SECONDS, jitter=1)
    assert all(0 <= jittered.delay_for(attempt) <= MAX_DELAY_SECONDS for attempt in range(1, 50))
