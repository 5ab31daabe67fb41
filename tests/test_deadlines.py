"""Deadlines (choria asyncjobs, ebind): send_job(..., deadline=) on a real nats-server."""

from __future__ import annotations

import queue
from datetime import UTC, datetime, timedelta

import pytest

import bgjob
from bgjob.headers import DEADLINE

from .conftest import drain, wait_until


def test_job_delivered_after_its_deadline_is_dead_lettered_without_running(client, start_worker) -> None:
    runs: queue.Queue = queue.Queue()
    mux = bgjob.Mux()
    mux.handle("report", lambda job: runs.put(job.id) or bgjob.Complete())
    deadline = datetime.now(UTC) + timedelta(seconds=1)
    job_id = client.send_job("report", {"day": 1}, deadline=deadline)
    # The job waits in its queue, no worker yet, until its deadline has passed.
    wait_until(lambda: datetime.now(UTC) > deadline, message="the deadline to pass")
    start_worker(client, mux)
    entry = wait_until(lambda: client.dlq.list(), message="dead letter")[0]
    assert (entry.id, entry.reason, entry.attempts) == (job_id, "deadline", 1)
    assert "after the job's deadline" in entry.error and "not run" in entry.error
    assert entry.arg == {"day": 1}
    wait_until(lambda: client.queue_stats().in_flight == 0, message="term")
    assert runs.empty(), "the handler ran a job past its deadline"


def test_job_before_its_deadline_runs_and_its_handler_sees_the_deadline(client, start_worker) -> None:
    seen: queue.Queue = queue.Queue()
    mux = bgjob.Mux()
    mux.handle("report", lambda job: seen.put(job.deadline) or bgjob.Complete())
    start_worker(client, mux)
    deadline = datetime(2100, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)
    client.send_job("report", None, deadline=deadline)
    client.send_job("report", None)
    assert set(drain(seen, 2)) == {None, deadline}
    assert client.dlq.count() == 0


def test_a_retry_that_would_run_after_the_deadline_dead_letters_instead(client, start_worker) -> None:
    runs: queue.Queue = queue.Queue()
    mux = bgjob.Mux()

    @mux.handler("charge", retry_policy=bgjob.RetryPolicy(max_attempts=5, delays=[30], jitter=0))
    def charge(job: bgjob.Job) -> bgjob.Result:
        runs.put(job.attempt)
        raise RuntimeError("gateway down")

    start_worker(client, mux)
    job_id = client.send_job("charge", None, deadline=timedelta(seconds=10))
    entry = wait_until(lambda: client.dlq.list(), message="dead letter")[0]
    assert (entry.id, entry.reason, entry.attempts) == (job_id, "deadline", 1)
    assert entry.error.startswith("RuntimeError: gateway down; not retried: its retry in 30.0s would run after")
    assert drain(runs, 1) == [1] and runs.empty()


def test_a_retry_before_the_deadline_is_scheduled(client, start_worker) -> None:
    runs: queue.Queue = queue.Queue()
    mux = bgjob.Mux()

    @mux.handler("charge")
    def charge(job: bgjob.Job) -> bgjob.Result:
        runs.put(job.attempt)
        if job.attempt == 1:
            raise RuntimeError("gateway down")
        return bgjob.Complete()

    start_worker(client, mux)  # retries after 0.05 s
    client.send_job("charge", None, deadline=timedelta(minutes=5))
    assert drain(runs, 2) == [1, 2]
    assert client.dlq.count() == 0


def test_a_job_retried_from_the_dlq_after_its_deadline_runs(client, start_worker) -> None:
    runs: queue.Queue = queue.Queue()
    mux = bgjob.Mux()
    mux.handle("report", lambda job: runs.put(job.deadline) or bgjob.Complete())
    sent = datetime.now(UTC)
    job_id = client.send_job("report", None, deadline=timedelta(seconds=1))
    wait_until(lambda: datetime.now(UTC) > sent + timedelta(seconds=1), message="the deadline to pass")
    start_worker(client, mux)
    wait_until(lambda: client.dlq.list(), message="dead letter")
    client.dlq.retry(job_id)
    assert drain(runs, 1) == [None]


@pytest.mark.parametrize(
    ("deadline", "message"),
    [
        (datetime(2100, 1, 1), "naive datetime"),
        (datetime(2000, 1, 1, tzinfo=UTC), "has already passed"),
        (timedelta(seconds=-1), "has already passed"),
        (timedelta(0), "has already passed"),
        (-5, "has already passed"),
        (float("nan"), "finite number of seconds"),
        (True, "must be an aware datetime, or a timedelta or seconds"),
        ("2100-01-01", "must be an aware datetime, or a timedelta or seconds"),
    ],
)
def test_a_bad_deadline_is_refused_at_the_call(client, deadline, message) -> None:
    with pytest.raises(bgjob.InvalidJob, match=message):
        client.send_job("report", None, deadline=deadline)
    with pytest.raises(bgjob.InvalidJob, match=message):
        client.prepare_job(bgjob.JobSpec("report", deadline=deadline))
    with pytest.raises(bgjob.InvalidJob, match=f"job 0: .*{message}"):
        client.send_jobs([bgjob.JobSpec("report", deadline=deadline)])


def test_a_job_due_after_its_deadline_is_refused(client) -> None:
    with pytest.raises(bgjob.InvalidJob, match="not before its deadline"):
        client.send_job("report", None, delay=60, deadline=timedelta(seconds=30))


def test_a_prepared_job_carries_its_deadline_fixed_when_prepared(client) -> None:
    before = datetime.now(UTC)
    job = client.prepare_job(bgjob.JobSpec("report", deadline=timedelta(hours=1)))
    carried = bgjob.job.parse_time(job.headers[DEADLINE])
    assert carried is not None and before + timedelta(hours=1) <= carried + timedelta(milliseconds=1)
    assert carried <= datetime.now(UTC) + timedelta(hours=1)
    assert bgjob.PreparedJob.from_record(job.to_record()).headers[DEADLINE] == job.headers[DEADLINE]


def test_a_deadline_in_seconds_counts_from_the_call_like_delay(client) -> None:
    """New-user review: `deadline=60` (Celery's expires=60) was refused while delay=, time_limit= take seconds."""
    from bgjob.job import validate_deadline

    now = datetime.now(UTC)
    assert validate_deadline(60, now) == now + timedelta(seconds=60)
    assert validate_deadline(0.5, now) == now + timedelta(seconds=0.5)
    client.send_job("report", None, deadline=60)


def test_fixed_retry_delays_take_timedeltas_too() -> None:
    policy = bgjob.RetryPolicy(delays=[timedelta(seconds=3), 10], jitter=0)
    assert policy.delays == (3.0, 10.0) and policy.delay_for(1) == 3.0 and policy.delay_for(5) == 10.0


@pytest.mark.parametrize("text", ["0001-01-01T00:00:00+05:00", "9999-12-31T23:59:59-05:00"])
def test_a_deadline_header_outside_utc_years_1_to_9999_is_a_decode_error(text) -> None:
    """Attacker review: such a header parsed, then formatting it raised OverflowError in dispatch: internal_error
    instead of decode."""
    from bgjob.codec import carried_deadline
    from bgjob.headers import DEADLINE
    from bgjob.job import DecodeError

    with pytest.raises(DecodeError, match="years 1 to 9999 UTC"):
        carried_deadline({DEADLINE: text})
