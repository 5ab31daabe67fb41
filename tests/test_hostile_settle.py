"""What an attack on the settle path found (issue 11): each a regression test, each fixed as its kind."""

from __future__ import annotations

import queue
import sys
import threading
from datetime import datetime, timedelta, timezone

import pytest

import bgjob
from bgjob.headers import ATTEMPTS_USED
from bgjob.schedule import LATEST_DUE, check_due

from .conftest import drain, wait_until


class Fates(bgjob.WorkerHooks):
    def __init__(self) -> None:
        self.fates: queue.Queue = queue.Queue()

    def on_settled(self, job: bgjob.Job, outcome: object, fate: bgjob.Fate) -> None:
        self.fates.put((job.id, job.attempt, str(fate)))


def _publish_raw(client: bgjob.Client, job_type: str, body: bytes, headers: dict[str, str]) -> None:
    async def publish(core) -> None:
        await core.ensure_queue("default")
        ack = await core.js.publish(core.topology.job_subject("default", job_type), body, headers=headers)
        assert ack.seq

    client.run(publish)


# -- schedules are one per stored message, not one per job id --------------------------------------------------------
@pytest.mark.parametrize("result", [bgjob.Retry(1.5), bgjob.Reschedule(bgjob.ByAfterTime(1.5))], ids=["retry", "next"])
def test_two_jobs_sharing_an_id_both_run_again(make_client, start_worker, result) -> None:
    """A job id is idempotent only within the duplicate window: two jobs sent with it after the window are two
    jobs, and the schedule one of them waits on must not replace the other's."""
    client = make_client(duplicate_window=1.0)
    runs: queue.Queue = queue.Queue()
    started: dict[str, threading.Event] = {"A": threading.Event(), "B": threading.Event()}
    mux = bgjob.Mux()

    @mux.handler("order")
    def order(job: bgjob.Job) -> bgjob.Result:
        name, again = job.arg["order"], job.arg.get("again", False) or job.attempt > 1
        runs.put((name, again))
        started[name].set()
        if again:
            return bgjob.Complete()
        return bgjob.Reschedule(result.by, arg={**job.arg, "again": True}) if isinstance(
            result, bgjob.Reschedule) else result  # fmt: skip

    start_worker(client, mux, concurrency=4)
    client.send_job("order", {"order": "A"}, job_id="order-7")
    assert started["A"].wait(10)
    # Within the duplicate window the server drops B as a repeat of A: send until it is stored (then it runs).
    wait_until(lambda: client.send_job("order", {"order": "B"}, job_id="order-7") and started["B"].wait(0.3),
               timeout=10, message="B stored once the duplicate window is over")  # fmt: skip
    seen = drain(runs, 4, timeout=20)
    assert sorted(seen) == [("A", False), ("A", True), ("B", False), ("B", True)]


# -- the server's clock ends in 2262 ---------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs", [
    {"at": datetime(2263, 1, 1, tzinfo=timezone.utc)},
    {"at": datetime(9999, 12, 31, tzinfo=timezone.utc)},
    {"delay": timedelta(days=365 * 250)},
], ids=["at-2263", "at-9999", "delay-250y"])  # fmt: skip
def test_a_job_due_after_the_servers_last_schedulable_time_is_refused_at_send(client, kwargs) -> None:
    with pytest.raises(bgjob.InvalidJob, match="2262-04-11"):
        client.send_job("report", None, **kwargs)
    with pytest.raises(bgjob.InvalidJob, match="2262-04-11"):
        client.send_jobs([bgjob.JobSpec("report", None, **kwargs)])
    assert client.queue_stats().scheduled == 0


def test_delays_longer_than_a_hundred_years_are_refused_when_built() -> None:
    with pytest.raises(bgjob.InvalidResult):
        bgjob.Retry(timedelta(days=365 * 101))
    with pytest.raises(bgjob.InvalidSchedule):
        bgjob.ByAfterTime(timedelta(days=365 * 101))
    with pytest.raises(bgjob.InvalidSchedule, match="2262-04-11"):
        check_due(LATEST_DUE)
    assert check_due(LATEST_DUE - timedelta(days=1)) < LATEST_DUE


# -- forged attempt counts -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("value", ["\u00b2", "\u0663", "-3", "1e3", "", "x"])
def test_a_forged_attempts_header_counts_as_none_used(client, start_worker, value) -> None:
    hooks = Fates()
    mux = bgjob.Mux()
    mux.handle("t", lambda job: bgjob.Complete())
    start_worker(client, mux, hooks=[hooks])
    _publish_raw(client, "t", b"{}", {"Bgjob-Id": "forged", ATTEMPTS_USED: value})
    assert drain(hooks.fates, 1) == [("forged", 1, "acked")]


# -- exceptions that cannot be shown ---------------------------------------------------------------------------------
class Unprintable(Exception):
    def __str__(self) -> str:
        raise Unprintable()


class BrokenMessage(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no message for you")


@pytest.mark.parametrize("make", [
    lambda: (_ for _ in ()).throw(Unprintable()),
    lambda: (_ for _ in ()).throw(BrokenMessage()),
    lambda: bgjob.Retry(0.05, error=Unprintable()),
    lambda: bgjob.Retry(2, error=BrokenMessage()),
    lambda: bgjob.MoveToDlq(Unprintable()),
], ids=["raise-recursive-str", "raise-broken-str", "retry-recursive-str", "retry-broken-str", "dlq-recursive-str"])
def test_an_error_whose_message_cannot_be_shown_still_settles_the_job(client, start_worker, make) -> None:
    hooks = Fates()
    mux = bgjob.Mux()
    mux.handle("t", lambda job: make())
    start_worker(client, mux, hooks=[hooks], retry_policy=bgjob.RetryPolicy(max_attempts=1))
    job_id = client.send_job("t", None)
    [(settled_id, attempt, fate)] = drain(hooks.fates, 1)
    assert (settled_id, attempt) == (job_id, 1) and fate.startswith("dead_lettered")
    entry = wait_until(lambda: client.dlq.list(), message="the dead letter")[0]
    assert entry.id == job_id and "could not be shown" in entry.error


# -- Results the settle module cannot settle -------------------------------------------------------------------------
def test_a_result_subclass_of_no_known_kind_is_the_handlers_failure(client, start_worker) -> None:
    class Weird(bgjob.Result):
        pass

    hooks = Fates()
    mux = bgjob.Mux()
    mux.handle("t", lambda job: Weird())
    start_worker(client, mux, hooks=[hooks], retry_policy=bgjob.RetryPolicy(max_attempts=2, base_delay=0.05, jitter=0))
    job_id = client.send_job("t", None)
    fates = drain(hooks.fates, 2)
    assert [f for _, _, f in fates] == ["retry_scheduled(0.05s)", "dead_lettered(max_attempts)"]
    entry = client.dlq.get(job_id)
    assert "a Result bgjob cannot settle" in entry.error and "died" not in entry.error


# -- hooks and errors that would end the loop ------------------------------------------------------------------------
@pytest.mark.parametrize("exc", [SystemExit(2), KeyboardInterrupt()], ids=["SystemExit", "KeyboardInterrupt"])
def test_a_hook_raising_system_exit_stops_neither_the_worker_nor_the_client(client, start_worker, exc) -> None:
    class Exits(bgjob.WorkerHooks):
        def on_settled(self, job: bgjob.Job, outcome: object, fate: bgjob.Fate) -> None:
            raise exc

    ran: queue.Queue = queue.Queue()
    mux = bgjob.Mux()
    mux.handle("t", lambda job: ran.put(job.arg) or bgjob.Complete())
    start_worker(client, mux, hooks=[Exits()])
    for n in range(5):
        client.send_job("t", n)
    assert sorted(drain(ran, 5)) == [0, 1, 2, 3, 4]
    wait_until(lambda: (s := client.queue_stats()).pending + s.in_flight == 0, message="all acked")


def test_a_retry_whose_error_raises_system_exit_when_shown_is_still_settled(client, start_worker) -> None:
    class ExitsWhenShown(Exception):
        def __str__(self) -> str:
            sys.exit(3)

    hooks = Fates()
    mux = bgjob.Mux()
    mux.handle("t", lambda job: bgjob.Retry(0.05, error=ExitsWhenShown()) if job.attempt == 1 else bgjob.Complete())
    start_worker(client, mux, hooks=[hooks])
    client.send_job("t", None)
    assert [f for _, _, f in drain(hooks.fates, 2)] == ["retry_scheduled(0.05s)", "acked"]


# -- a job whose dead letter the server refuses ----------------------------------------------------------------------
def test_a_job_whose_dead_letter_is_refused_backs_off_instead_of_looping(client, start_worker, caplog) -> None:
    """A body (published raw) too large to be dead-lettered even minimally stays in the queue (never lost), and its
    redeliveries back off with the retry policy instead of coming back every second."""
    hooks = Fates()
    mux = bgjob.Mux()
    policy = bgjob.RetryPolicy(max_attempts=3, base_delay=1.0, multiplier=30.0, jitter=0)
    start_worker(client, mux, hooks=[hooks], retry_policy=policy)
    max_payload = client.run(lambda core: _value(core.max_payload))
    _publish_raw(client, "nope", b"x" * (max_payload - 200), {"Bgjob-Id": "big1"})
    first = drain(hooks.fates, 2, timeout=10)  # attempt 1, then 1 s later attempt 2
    assert [(a, f.split("(")[0]) for _, a, f in first] == [(1, "handed_back"), (2, "handed_back")]
    with pytest.raises(queue.Empty):  # the third comes 30 s later, not a second later as it used to
        hooks.fates.get(timeout=3)
    assert any("refused even a minimal dead letter of job big1" in r.getMessage() for r in caplog.records)
    assert client.queue_stats().in_flight == 1  # still there, not lost


async def _value(value: object) -> object:
    return value
