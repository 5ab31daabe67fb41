"""RequestId, Recovery and Metrics middleware on a real worker."""

from __future__ import annotations

import logging
import queue

import bgjob

from .conftest import drain, run_mixed_outcomes, wait_until


def test_request_id_is_kept_or_made_and_reaches_handler_logs_and_child_jobs(client, start_worker, caplog) -> None:
    seen: queue.Queue = queue.Queue()
    mux = bgjob.Mux()
    log = logging.getLogger("test.jobs")

    @mux.handler("parent")
    def parent(job: bgjob.Job) -> bgjob.Result:
        seen.put(("parent", job.request_id, bgjob.current_request_id.get(), bgjob.current_job.get().id))
        log.warning("working on it")
        client.send_job("child", None)  # no request_id given: inherits the parent's
        return bgjob.Complete()

    @mux.handler("child")
    def child(job: bgjob.Job) -> bgjob.Result:
        seen.put(("child", job.request_id, None, None))
        return bgjob.Complete()

    caplog.handler.addFilter(bgjob.JobContextFilter())
    start_worker(client, mux, middleware=[bgjob.RequestId()])
    parent_id = client.send_job("parent", None, request_id="req-42")
    got = sorted(drain(seen, 2))
    assert got == [("child", "req-42", None, None), ("parent", "req-42", "req-42", parent_id)]
    record = next(r for r in caplog.records if r.getMessage() == "working on it")
    assert (record.request_id, record.job_id, record.job_type) == ("req-42", parent_id, "parent")

    child_id = client.send_job("child", None)
    [(_, made, _, _)] = drain(seen, 1)
    assert made == child_id  # no request id from the producer: the job id serves, the same on every attempt


def test_recovery_turns_exceptions_into_retries_then_a_dead_letter_with_traceback(client, start_worker) -> None:
    attempts: queue.Queue = queue.Queue()
    mux = bgjob.Mux()

    @mux.handler("boom")
    def boom(job: bgjob.Job) -> bgjob.Result:
        attempts.put(job.attempt)
        raise KeyError("missing")

    mux.handle("junk", lambda job: attempts.put("junk") or "not a result")
    policy = bgjob.RetryPolicy(max_attempts=2, base_delay=0.05, jitter=0)
    start_worker(client, mux, middleware=[bgjob.Recovery()], retry_policy=policy)
    boom_id = client.send_job("boom", None)
    junk_id = client.send_job("junk", None)
    wait_until(lambda: client.dlq.count() == 2, message="two dead letters")
    boom_entry, junk_entry = client.dlq.get(boom_id), client.dlq.get(junk_id)
    assert (boom_entry.reason, boom_entry.attempts, boom_entry.error) == ("max_attempts", 2, "KeyError: 'missing'")
    assert "raise KeyError" in boom_entry.traceback
    assert junk_entry.reason == "max_attempts" and "returned 'not a result', not a bgjob.Result" in junk_entry.error
    assert sorted(map(str, drain(attempts, 4))) == ["1", "2", "junk", "junk"]


def test_metrics_counts_each_delivery_once_by_its_real_fate(client, start_worker) -> None:
    storage = bgjob.InMemoryMetricStorage()
    run_mixed_outcomes(client, start_worker, storage)
    wait_until(lambda: storage.success.get(("default", "flaky")) == 1, message="flaky success")
    assert storage.success == {("default", "ok"): 3, ("default", "flaky"): 1}
    assert storage.retry == {("default", "flaky"): 1, ("default", "raises"): 1}
    # The unknown type never reached a handler: dead-lettered all the same, and counted as an internal error.
    assert storage.dlq == {("default", "dead"): 1, ("default", "raises"): 1, ("default", "unknown-type"): 1}
    assert storage.internal_errors == 1
    assert sum(len(v) for v in storage.durations.values()) == 3 + 2 + 1 + 2
