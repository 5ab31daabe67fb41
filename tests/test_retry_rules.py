"""Retry rules (ebind NonRetryableErrorKinds, dagnats NonRetryableError): NonRetryable, non_retryable=, fixed
delays, unlimited attempts, and the order job > handler > worker for max_attempts; on a real nats-server."""

from __future__ import annotations

import queue

import pytest

import bgjob

from .conftest import drain, wait_until

FAST = {"base_delay": 0.05, "jitter": 0}


def _failing(runs: queue.Queue, exc: BaseException):
    def handler(job: bgjob.Job) -> bgjob.Result:
        runs.put((job.attempt, job.max_attempts))
        raise exc

    return handler


def test_raising_non_retryable_dead_letters_after_one_attempt(client, start_worker) -> None:
    runs: queue.Queue = queue.Queue()
    mux = bgjob.Mux()

    @mux.handler("charge")
    def charge(job: bgjob.Job) -> bgjob.Result:
        runs.put(job.attempt)
        try:
            raise ValueError("no such customer 7")
        except ValueError as exc:
            raise bgjob.NonRetryable(exc)  # noqa: B904 - the wrapped exception is its cause

    start_worker(client, mux)  # max_attempts=3
    job_id = client.send_job("charge", None)
    entry = wait_until(lambda: client.dlq.list(), message="dead letter")[0]
    assert (entry.id, entry.reason, entry.attempts) == (job_id, "non_retryable", 1)
    assert entry.error == "ValueError: no such customer 7"
    assert "ValueError: no such customer 7" in entry.traceback and "NonRetryable" in entry.traceback
    wait_until(lambda: client.queue_stats().in_flight == 0, message="term")
    assert drain(runs, 1) == [1] and runs.empty()


def test_non_retryable_with_a_message(client, start_worker) -> None:
    mux = bgjob.Mux()
    mux.handle("charge", _failing(queue.Queue(), bgjob.NonRetryable("card declined")))
    start_worker(client, mux)
    client.send_job("charge", None)
    entry = wait_until(lambda: client.dlq.list(), message="dead letter")[0]
    assert (entry.reason, entry.attempts, entry.error) == ("non_retryable", 1, "NonRetryable: card declined")


def test_a_handler_policy_non_retryable_class_dead_letters_at_once_and_others_retry(client, start_worker) -> None:
    runs: queue.Queue = queue.Queue()
    mux = bgjob.Mux()
    policy = bgjob.RetryPolicy(max_attempts=3, non_retryable=(LookupError,), **FAST)
    mux.handle("lookup", _failing(runs, KeyError("customer")), retry_policy=policy)
    mux.handle("flaky", _failing(runs, RuntimeError("flaky")), retry_policy=policy)
    start_worker(client, mux)
    lookup_id = client.send_job("lookup", None)
    flaky_id = client.send_job("flaky", None)
    entries = wait_until(lambda: (e := client.dlq.list()) and len(e) == 2 and e, message="two dead letters")
    fates = {e.id: (e.reason, e.attempts) for e in entries}
    assert fates == {lookup_id: ("non_retryable", 1), flaky_id: ("max_attempts", 3)}
    assert len(drain(runs, 4)) == 4 and runs.empty()


def test_non_retryable_holds_through_the_recovery_middleware(client, start_worker) -> None:
    mux = bgjob.Mux()
    policy = bgjob.RetryPolicy(max_attempts=3, non_retryable=ValueError, **FAST)
    mux.handle("parse", _failing(queue.Queue(), ValueError("bad input")), retry_policy=policy)
    start_worker(client, mux, middleware=[bgjob.Recovery()])
    client.send_job("parse", None)
    entry = wait_until(lambda: client.dlq.list(), message="dead letter")[0]
    assert (entry.reason, entry.attempts, entry.error) == ("non_retryable", 1, "ValueError: bad input")


def test_a_handler_policy_max_attempts_wins_over_the_workers(client, start_worker) -> None:
    runs: queue.Queue = queue.Queue()
    mux = bgjob.Mux()
    mux.handle("boom", _failing(runs, RuntimeError("x")), retry_policy=bgjob.RetryPolicy(max_attempts=2, **FAST))
    start_worker(client, mux)  # the worker's max_attempts=3
    client.send_job("boom", None)
    entry = wait_until(lambda: client.dlq.list(), message="dead letter")[0]
    assert (entry.reason, entry.attempts) == ("max_attempts", 2)
    assert drain(runs, 2) == [(1, 2), (2, 2)] and runs.empty()


def test_a_jobs_own_max_attempts_wins_over_its_handlers_and_the_workers(client, start_worker) -> None:
    runs: queue.Queue = queue.Queue()
    mux = bgjob.Mux()
    mux.handle("boom", _failing(runs, RuntimeError("x")), retry_policy=bgjob.RetryPolicy(max_attempts=2, **FAST))
    start_worker(client, mux)  # the worker's max_attempts=3
    client.send_job("boom", None, max_attempts=4)
    entry = wait_until(lambda: client.dlq.list(), message="dead letter")[0]
    assert (entry.reason, entry.attempts) == ("max_attempts", 4)
    assert drain(runs, 4) == [(1, 4), (2, 4), (3, 4), (4, 4)] and runs.empty()


def test_a_job_may_also_lower_its_attempts(client, start_worker) -> None:
    runs: queue.Queue = queue.Queue()
    mux = bgjob.Mux()
    mux.handle("boom", _failing(runs, RuntimeError("x")))
    start_worker(client, mux)
    client.send_jobs([bgjob.JobSpec("boom", max_attempts=1)])
    entry = wait_until(lambda: client.dlq.list(), message="dead letter")[0]
    assert (entry.reason, entry.attempts) == ("max_attempts", 1)
    assert drain(runs, 1) == [(1, 1)]


def test_unlimited_attempts_retry_until_success(client, start_worker) -> None:
    runs: queue.Queue = queue.Queue()
    mux = bgjob.Mux()

    @mux.handler("eventually", retry_policy=bgjob.RetryPolicy(max_attempts=None, delays=[0.05], jitter=0))
    def eventually(job: bgjob.Job) -> bgjob.Result:
        runs.put((job.attempt, job.max_attempts))
        if job.attempt < 6:
            raise RuntimeError("not yet")
        return bgjob.Complete()

    start_worker(client, mux)  # the worker's max_attempts=3
    client.send_job("eventually", None)
    assert drain(runs, 6) == [(n, None) for n in range(1, 7)]
    wait_until(lambda: client.queue_stats().in_flight == 0, message="ack")
    assert client.dlq.count() == 0


def test_fixed_delays_are_used_in_order_the_last_repeating() -> None:
    policy = bgjob.RetryPolicy(delays=[1, 5, 30], jitter=0)
    assert [policy.delay_for(n) for n in range(1, 6)] == [1.0, 5.0, 30.0, 30.0, 30.0]
    jittered = bgjob.RetryPolicy(delays=[10])
    assert all(9.0 <= jittered.delay_for(n) <= 11.0 for n in range(1, 20))
    assert policy.delays == (1.0, 5.0, 30.0) and hash(policy) == hash(bgjob.RetryPolicy(delays=(1, 5, 30), jitter=0))


def test_unlimited_is_never_exhausted() -> None:
    assert not bgjob.RetryPolicy(max_attempts=None).exhausted(1_000_000)
    assert bgjob.RetryPolicy(max_attempts=2).exhausted(2)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"delays": []}, "non-empty list"),
        ({"delays": "1,5"}, "non-empty list"),
        ({"delays": [1, -1]}, r"delays\[1\] must be between"),
        ({"delays": [1, float("nan")]}, r"delays\[1\] must be a finite number"),
        ({"delays": [1], "base_delay": 2}, "give delays or base_delay/multiplier/max_delay, not both"),
        ({"delays": [1], "multiplier": 3}, "not both"),
        ({"max_attempts": 0}, "max_attempts must be an int >= 1 or None"),
        ({"non_retryable": (ValueError, "KeyError")}, "non_retryable must be exception classes"),
        ({"non_retryable": int}, "non_retryable must be exception classes"),
    ],
)
def test_bad_retry_policies_are_refused(options, message) -> None:
    with pytest.raises(bgjob.InvalidResult, match=message):
        bgjob.RetryPolicy(**options)


@pytest.mark.parametrize("max_attempts", [0, -1, True, 1.5, "3", 1_000_001])
def test_a_bad_max_attempts_is_refused_at_the_call(client, max_attempts) -> None:
    with pytest.raises(bgjob.InvalidJob, match="max_attempts must be an int from 1 to 1000000"):
        client.send_job("boom", None, max_attempts=max_attempts)


def test_non_retryable_is_a_bgjob_error_with_the_wrapped_exception() -> None:
    cause = ValueError("x")
    error = bgjob.NonRetryable(cause)
    assert isinstance(error, bgjob.BgjobError) and error.error is cause and error.__cause__ is cause
    assert str(error) == "x" and bgjob.errors.exception_text(error) == "ValueError: x"
    assert bgjob.errors.exception_text(bgjob.NonRetryable("y")) == "NonRetryable: y"
    policy = bgjob.RetryPolicy(non_retryable=(LookupError,))
    assert policy.gives_up_on(error) and policy.gives_up_on(KeyError()) and not policy.gives_up_on(ValueError())
    assert not policy.gives_up_on(None)


@pytest.mark.parametrize(
    ("headers", "handler_policy", "expected"),
    [
        ({"Bgjob-Max-Attempts": "2"}, None, "max_attempts"),  # the job's own limit, below the worker's 3
        ({}, bgjob.RetryPolicy(max_attempts=2), "max_attempts"),  # the handler's
        ({}, None, "ran"),  # the worker's 3: attempt 3 runs
        ({"Bgjob-Max-Attempts": "two"}, None, "decode"),
    ],
)
def test_the_past_max_attempts_check_uses_the_limit_in_force(client, start_worker, headers, handler_policy,
                                                             expected) -> None:  # fmt: skip
    runs: queue.Queue = queue.Queue()
    mux = bgjob.Mux()
    mux.handle("report", lambda job: runs.put(job.attempt) or bgjob.Complete(), retry_policy=handler_policy)
    start_worker(client, mux)  # the worker's max_attempts=3

    async def publish_raw(core) -> None:  # a job whose earlier messages used 2 attempts: this is attempt 3
        subject = core.topology.job_subject("default", "report")
        await core.js.publish(subject, b"null", headers={"Bgjob-Id": "j1", "Bgjob-Attempts-Used": "2", **headers})

    client.run(publish_raw)
    if expected == "ran":
        assert drain(runs, 1) == [3]
        return
    entry = wait_until(lambda: client.dlq.list(), message="dead letter")[0]
    assert (entry.id, entry.reason) == ("j1", expected) and runs.empty()
