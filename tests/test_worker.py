"""Every Result path through a real Worker and a real nats-server."""

from __future__ import annotations

import queue
import threading
import time
from datetime import timedelta

import pytest

import bgjob
from bgjob.client import Core

from .conftest import drain, wait_until


def test_complete_acks_the_job_and_removes_it(client, start_worker) -> None:
    done: queue.Queue = queue.Queue()
    mux = bgjob.Mux()

    @mux.handler("report")
    def report(job: bgjob.Job) -> bgjob.Result:
        done.put((job.id, job.arg, job.attempt, job.queue, job.request_id, dict(job.headers)))
        return bgjob.Complete()

    start_worker(client, mux)
    job_id = client.send_job("report", {"user": 7}, request_id="r1", headers={"X-A": "b"})
    assert drain(done, 1) == [(job_id, {"user": 7}, 1, "default", "r1", {"X-A": "b"})]
    wait_until(lambda: client.queue_stats().pending + client.queue_stats().in_flight == 0, message="ack")


def test_retry_runs_again_after_the_delay_with_the_next_attempt_number(client, start_worker) -> None:
    attempts: queue.Queue = queue.Queue()
    mux = bgjob.Mux()

    @mux.handler("flaky")
    def flaky(job: bgjob.Job) -> bgjob.Result:
        attempts.put(job.attempt)
        return bgjob.Retry(timedelta(milliseconds=100)) if job.attempt < 3 else bgjob.Complete()

    start_worker(client, mux, retry_policy=bgjob.RetryPolicy(max_attempts=5))
    client.send_job("flaky", None)
    assert drain(attempts, 3) == [1, 2, 3]
    wait_until(lambda: client.queue_stats().in_flight == 0, message="ack")
    assert client.dlq.count() == 0


def test_exception_is_retried_with_backoff_then_dead_lettered_with_traceback(client, start_worker) -> None:
    calls: queue.Queue = queue.Queue()
    mux = bgjob.Mux()

    @mux.handler("boom")
    def boom(job: bgjob.Job) -> bgjob.Result:
        calls.put(job.attempt)
        raise RuntimeError(f"failed on attempt {job.attempt}")

    start_worker(client, mux)  # max_attempts=3
    job_id = client.send_job("boom", {"x": 1})
    assert drain(calls, 3) == [1, 2, 3]
    entry = wait_until(lambda: client.dlq.list(), message="dead letter")[0]
    assert entry.id == job_id and entry.type == "boom" and entry.queue == "default"
    assert entry.reason == "max_attempts" and entry.attempts == 3
    assert entry.error == "RuntimeError: failed on attempt 3"
    assert "Traceback" in entry.traceback and "in boom" in entry.traceback
    assert entry.arg == {"x": 1} and entry.first_failure_at is not None
    assert calls.empty()


def test_non_result_return_is_a_failure_with_a_clear_message(client, start_worker) -> None:
    mux = bgjob.Mux()
    mux.handle("forgot", lambda job: None)
    start_worker(client, mux, retry_policy=bgjob.RetryPolicy(max_attempts=1))
    client.send_job("forgot", None)
    entry = wait_until(lambda: client.dlq.list(), message="dead letter")[0]
    expected = "HandlerError: handler for 'forgot' returned None, not a bgjob.Result: return bgjob.Complete()"
    assert expected in entry.error


def test_move_to_dlq_dead_letters_at_once(client, start_worker) -> None:
    calls: queue.Queue = queue.Queue()
    mux = bgjob.Mux()

    @mux.handler("hopeless")
    def hopeless(job: bgjob.Job) -> bgjob.Result:
        calls.put(job.attempt)
        return bgjob.MoveToDlq(ValueError("customer 7 does not exist"))

    start_worker(client, mux)
    job_id = client.send_job("hopeless", {"customer": 7})
    entry = wait_until(lambda: client.dlq.list(), message="dead letter")[0]
    assert (entry.id, entry.reason, entry.attempts) == (job_id, "handler", 1)
    assert entry.error == "ValueError: customer 7 does not exist"
    assert drain(calls, 1) == [1] and calls.empty()
    wait_until(lambda: client.queue_stats().in_flight == 0, message="term")


def test_reschedule_by_after_time_runs_again_with_new_arg(client, start_worker) -> None:
    runs: queue.Queue = queue.Queue()
    mux = bgjob.Mux()

    @mux.handler("countdown")
    def countdown(job: bgjob.Job) -> bgjob.Result:
        runs.put((job.id, job.arg, time.monotonic()))
        if job.arg["n"] == 0:
            return bgjob.Complete()
        return bgjob.Reschedule(bgjob.ByAfterTime(timedelta(milliseconds=300)), arg={"n": job.arg["n"] - 1})

    start_worker(client, mux)
    job_id = client.send_job("countdown", {"n": 2})
    got = drain(runs, 3)
    assert [(i, a) for i, a, _ in got] == [(job_id, {"n": 2}), (job_id, {"n": 1}), (job_id, {"n": 0})]
    assert got[1][2] - got[0][2] >= 0.25  # the server held it until due
    wait_until(lambda: client.queue_stats().scheduled == 0 and client.queue_stats().in_flight == 0, message="empty")


def test_reschedule_by_cron_keeps_arg_and_fires_on_the_next_tick(client, start_worker) -> None:
    runs: queue.Queue = queue.Queue()
    mux = bgjob.Mux()

    @mux.handler("tick")
    def tick(job: bgjob.Job) -> bgjob.Result:
        runs.put(job.arg)
        return bgjob.Reschedule(bgjob.ByCron("* * * * * *")) if runs.qsize() < 3 else bgjob.Complete()

    start_worker(client, mux)
    client.send_job("tick", {"keep": "me"})
    assert drain(runs, 3) == [{"keep": "me"}] * 3


def test_delayed_job_runs_when_due(client, start_worker) -> None:
    runs: queue.Queue = queue.Queue()
    mux = bgjob.Mux()
    mux.handle("later", lambda job: runs.put(time.monotonic()) or bgjob.Complete())
    start_worker(client, mux)
    sent = time.monotonic()
    client.send_job("later", None, delay=0.5)
    ran = drain(runs, 1)[0]
    assert ran - sent >= 0.45


def test_unknown_type_is_dead_lettered_and_the_worker_keeps_going(client, start_worker) -> None:
    done: queue.Queue = queue.Queue()
    mux = bgjob.Mux()
    mux.handle("known", lambda job: done.put(job.arg) or bgjob.Complete())
    start_worker(client, mux)
    unknown = client.send_job("unknown", {"x": 1})
    client.send_job("known", 1)
    assert drain(done, 1) == [1]
    entry = wait_until(lambda: client.dlq.list(), message="dead letter")[0]
    assert (entry.id, entry.reason, entry.attempts) == (unknown, "unknown_handler", 1)
    assert "no handler for job type 'unknown'" in entry.error


def test_undecodable_body_is_dead_lettered_with_reason_decode(client, start_worker) -> None:
    done: queue.Queue = queue.Queue()
    mux = bgjob.Mux()
    mux.handle("report", lambda job: done.put(job.arg) or bgjob.Complete())
    start_worker(client, mux)

    async def publish_raw(core: Core) -> None:
        subject = core.topology.job_subject("default", "report")
        await core.js.publish(subject, b"{not json", headers={"Content-Type": "application/json"})
        await core.js.publish(subject, b"[1,2]")  # no bgjob headers at all, but valid JSON: runs

    client.run(publish_raw)
    assert drain(done, 1) == [[1, 2]]
    entry = wait_until(lambda: client.dlq.list(), message="dead letter")[0]
    assert entry.reason == "decode" and entry.id.startswith("seq-") and entry.body == b"{not json"


def test_never_more_in_flight_than_concurrency(client, start_worker) -> None:
    lock = threading.Lock()
    running = peak = finished = 0
    release = threading.Event()
    mux = bgjob.Mux()

    @mux.handler("slow")
    def slow(job: bgjob.Job) -> bgjob.Result:
        nonlocal running, peak, finished
        with lock:
            running += 1
            peak = max(peak, running)
        release.wait(10)
        with lock:
            running -= 1
            finished += 1
        return bgjob.Complete()

    worker = start_worker(client, mux, concurrency=4)
    for i in range(20):
        client.send_job("slow", i)
    wait_until(lambda: running == 4, message="4 running")
    assert worker.in_flight == 4
    stats = client.queue_stats()
    assert stats.in_flight <= 4 + 0 and stats.pending >= 16 - 0
    release.set()
    wait_until(lambda: finished == 20, message="all finished")
    assert peak == 4


def test_long_job_is_kept_alive_by_heartbeats_past_ack_wait(make_client, start_worker) -> None:
    client = make_client(ack_wait=1.0)
    runs: queue.Queue = queue.Queue()
    mux = bgjob.Mux()

    @mux.handler("long")
    def long(job: bgjob.Job) -> bgjob.Result:
        runs.put(job.attempt)
        time.sleep(3.5)  # the job's own work: 3.5x ack_wait
        return bgjob.Complete()

    start_worker(client, mux)
    client.send_job("long", None)
    assert drain(runs, 1) == [1]
    wait_until(lambda: client.queue_stats().in_flight == 0, timeout=15, message="completion")
    assert runs.empty(), "the job was redelivered while its worker was alive"


def test_stop_drains_in_flight_jobs_before_returning(client, start_worker) -> None:
    started = threading.Event()
    finished: list[str] = []
    mux = bgjob.Mux()

    @mux.handler("work")
    def work(job: bgjob.Job) -> bgjob.Result:
        started.set()
        time.sleep(0.5)
        finished.append(job.id)
        return bgjob.Complete()

    worker = bgjob.Worker(client, mux, fetch_timeout=0.5, grace_period=10)
    thread = worker.start()
    job_id = client.send_job("work", None)
    assert started.wait(10)
    worker.stop()
    thread.join(15)
    assert not thread.is_alive() and finished == [job_id]
    stats = client.queue_stats()
    assert stats.pending == 0 and stats.in_flight == 0


def test_job_that_outlives_the_grace_period_is_returned_to_the_queue(client) -> None:
    started = threading.Event()
    release = threading.Event()
    mux = bgjob.Mux()
    mux.handle("stuck", lambda job: started.set() or (release.wait(30) and bgjob.Complete()))
    worker = bgjob.Worker(client, mux, fetch_timeout=0.5, grace_period=0.5)
    thread = worker.start()
    client.send_job("stuck", None)
    assert started.wait(10)
    worker.stop()
    thread.join(15)
    assert not thread.is_alive()
    stats = client.queue_stats()
    assert stats.pending + stats.in_flight == 1  # nak'd: back in the queue, not acked
    release.set()

    again: queue.Queue = queue.Queue()
    mux2 = bgjob.Mux()
    mux2.handle("stuck", lambda job: again.put(job.attempt) or bgjob.Complete())
    w2 = bgjob.Worker(client, mux2, fetch_timeout=0.5)
    t2 = w2.start()
    try:
        assert drain(again, 1) == [2]
    finally:
        w2.stop()
        t2.join(15)


@pytest.mark.parametrize("queue_name", ["emails", "high-priority"])
def test_worker_only_takes_jobs_of_its_queue(client, start_worker, queue_name) -> None:
    got: queue.Queue = queue.Queue()
    mux = bgjob.Mux()
    mux.handle("send", lambda job: got.put((job.queue, job.arg)) or bgjob.Complete())
    start_worker(client, mux, queue=queue_name)
    client.send_job("send", "default-queue")
    client.send_job("send", "mine", queue=queue_name)
    assert drain(got, 1) == [(queue_name, "mine")]
    assert client.queue_stats("default").pending == 1


def test_closing_the_client_under_a_running_worker_ends_it_with_a_connection_error(make_client) -> None:
    client = make_client()
    worker = bgjob.Worker(client, bgjob.Mux(), fetch_timeout=0.5)
    failures: list[BaseException] = []

    def run() -> None:
        try:
            worker.run()
        except BaseException as exc:  # noqa: BLE001 - what escapes is the point
            failures.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    wait_until(lambda: worker.in_flight == 0 and worker._started.is_set(), message="the worker fetching")
    client.close()
    thread.join(timeout=30)
    assert not thread.is_alive()
    assert [type(exc) for exc in failures] == [bgjob.ConnectionError]
    assert "client was closed" in str(failures[0])
