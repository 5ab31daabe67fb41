"""Opt-in results: status transitions, return values, errors and attempts, from the BGJOB_RESULTS bucket."""

from __future__ import annotations

import threading

import pytest

import bgjob
from bgjob.client import Core

from .conftest import wait_until


def test_result_goes_ready_running_successful_with_the_return_value(client, start_worker) -> None:
    release = threading.Event()
    running = threading.Event()
    mux = bgjob.Mux()

    @mux.handler("sum")
    def add(job: bgjob.Job) -> bgjob.Result:
        running.set()
        release.wait(10)
        return bgjob.Complete(sum(job.arg))

    job_id = client.send_job("sum", [1, 2, 3], store_result=True)
    ready = client.result(job_id)
    assert (ready.status, ready.attempts, ready.value) == (bgjob.ResultStatus.READY, 0, None)
    worker = start_worker(client, mux)
    assert running.wait(10)
    running_result = wait_until(lambda: (r := client.result(job_id)).status == "RUNNING" and r, message="RUNNING")
    assert running_result.attempts == 1 and running_result.worker_ids == (worker.id,)
    assert running_result.started_at is not None and running_result.finished_at is None
    release.set()
    done = client.result(job_id, wait=10)
    assert (done.status, done.value, done.attempts, done.errors) == (bgjob.ResultStatus.SUCCESSFUL, 6, 1, ())
    assert done.enqueued_at <= done.started_at <= done.finished_at


def test_failed_result_keeps_every_attempts_error(client, start_worker) -> None:
    mux = bgjob.Mux()

    @mux.handler("flaky")
    def flaky(job: bgjob.Job) -> bgjob.Result:
        raise ValueError(f"attempt {job.attempt}")

    start_worker(client, mux, retry_policy=bgjob.RetryPolicy(max_attempts=3, base_delay=0.05, jitter=0))
    job_id = client.send_job("flaky", None, store_result=True)
    result = client.result(job_id, wait=15)
    assert result.status == bgjob.ResultStatus.FAILED and result.attempts == 3
    assert [(e.attempt, e.error) for e in result.errors] == [(1, "ValueError: attempt 1"),
                                                              (2, "ValueError: attempt 2"),
                                                              (3, "ValueError: attempt 3")]  # fmt: skip
    assert "raise ValueError" in result.errors[0].traceback


def test_retry_then_success_and_per_queue_opt_in(make_client, start_worker) -> None:
    client = make_client(result_queues={"reports"})
    mux = bgjob.Mux()
    mux.handle("flaky", lambda job: bgjob.Retry(0.05, error="not yet") if job.attempt == 1 else bgjob.Complete("ok"))
    start_worker(client, mux, queue="reports")
    job_id = client.send_job("flaky", None, queue="reports")  # the queue opts in
    result = client.result(job_id, wait=10)
    assert (result.status, result.value, result.attempts) == ("SUCCESSFUL", "ok", 2)
    assert [e.error for e in result.errors] == ["not yet"]
    [bulk_id] = client.send_jobs([("flaky", None)], queue="reports")
    assert client.result(bulk_id, wait=10).value == "ok"


def test_jobs_that_do_not_opt_in_store_nothing(client, start_worker) -> None:
    mux = bgjob.Mux()
    done = threading.Event()
    mux.handle("plain", lambda job: done.set() or bgjob.Complete(1))
    start_worker(client, mux)
    job_id = client.send_job("plain", None)
    assert done.wait(10)
    with pytest.raises(bgjob.ResultNotFound, match="no stored result"):
        client.result(job_id)

    async def bucket_exists(core: Core) -> bool:
        try:
            await core.js.stream_info(f"KV_{core.topology.stream_prefix}RESULTS")
            return True
        except Exception:  # noqa: BLE001
            return False

    assert client.run(bucket_exists) is False  # not even the bucket was created


def test_job_ids_with_colons_have_results_too(client, start_worker) -> None:
    mux = bgjob.Mux()
    mux.handle("x", lambda job: bgjob.Complete(job.id))
    start_worker(client, mux)
    client.send_job("x", None, job_id="order:7+a", store_result=True)
    assert client.result("order:7+a", wait=10).value == "order:7+a"
