"""Opt-in results: status transitions, return values, errors and attempts, from the BGJOB_RESULTS bucket."""

from __future__ import annotations

import re
import threading

import pytest

import bgjob
from bgjob import job_results as results
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


# -- outcomes that cannot be stored as they are: refused or bounded, never left RUNNING -----------------
TOO_LARGE = re.compile(r"ResultTooLarge: return value too large \((\d+) bytes; the limit is (\d+)\)")


async def _max_payload(core: Core) -> int:
    return core.max_payload


def _settled(client: bgjob.Client) -> bool:
    stats = client.queue_stats()
    return stats.pending == 0 and stats.in_flight == 0


def _counting(mux: bgjob.Mux, job_type: str, outcome: object) -> list[int]:
    """Register a handler returning `outcome(job)`; the returned list gets each attempt's number."""
    runs: list[int] = []

    def handle(job: bgjob.Job) -> bgjob.Result:
        runs.append(job.attempt)
        return outcome(job)  # type: ignore[operator]

    mux.handle(job_type, handle)
    return runs


@pytest.mark.timeout(50)
def test_a_return_value_too_large_to_store_fails_the_result_at_once_and_is_not_run_again(client, start_worker) -> None:
    mux = bgjob.Mux()
    runs = _counting(mux, "huge", lambda job: bgjob.Complete("x" * 2_000_000))
    start_worker(client, mux)
    job_id = client.send_job("huge", None, store_result=True)
    result = client.result(job_id, wait=60)  # returns once FAILED is recorded, far inside the test's timeout
    assert result.status == bgjob.ResultStatus.FAILED and result.value is None and result.finished_at is not None
    [error] = result.errors
    match = TOO_LARGE.fullmatch(error.error)
    assert match, error.error
    size, limit = int(match[1]), int(match[2])
    max_payload = client.run(_max_payload)
    assert size == 2_000_002 and max_payload - 4096 < limit < max_payload  # the server's max_payload less the rest
    assert error.attempt == 1 and result.attempts == 1
    wait_until(lambda: _settled(client), message="the job acked")
    assert runs == [1] and client.dlq.count() == 0


@pytest.mark.timeout(50)
def test_a_value_that_is_not_json_is_stored_as_its_repr_and_refused_when_that_is_too_large(
    client, start_worker
) -> None:
    class Huge:
        def __repr__(self) -> str:
            return "y" * 2_000_000

    mux = bgjob.Mux()
    huge_runs = _counting(mux, "huge-repr", lambda job: bgjob.Complete(Huge()))
    mux.handle("set", lambda job: bgjob.Complete({1, 2}))
    start_worker(client, mux)
    huge_id = client.send_job("huge-repr", None, store_result=True)
    set_id = client.send_job("set", None, store_result=True)
    huge = client.result(huge_id, wait=60)
    assert huge.status == bgjob.ResultStatus.FAILED and huge.value is None
    assert TOO_LARGE.fullmatch(huge.errors[-1].error)[1] == str(2_000_002)  # the repr, as JSON
    assert client.result(set_id, wait=60).value == "{1, 2}"
    wait_until(lambda: _settled(client), message="the jobs acked")
    assert huge_runs == [1]


@pytest.mark.timeout(60)
def test_huge_retry_errors_over_many_attempts_are_cut_and_only_the_last_ten_kept(client, start_worker) -> None:
    mux = bgjob.Mux()

    def outcome(job: bgjob.Job) -> bgjob.Result:
        if job.attempt < 12:  # 11 errors of 200 kB + 200 kB of traceback each: 4.4 MB unbounded
            return bgjob.Retry(0.01, error=f"attempt {job.attempt} " + "e" * 200_000, traceback="t" * 200_000)
        return bgjob.Complete("done")

    runs = _counting(mux, "flaky", outcome)
    start_worker(client, mux, retry_policy=bgjob.RetryPolicy(max_attempts=12, base_delay=0.01, jitter=0))
    job_id = client.send_job("flaky", None, store_result=True)
    result = client.result(job_id, wait=60)
    assert (result.status, result.value, result.attempts) == (bgjob.ResultStatus.SUCCESSFUL, "done", 12)
    assert [e.attempt for e in result.errors] == list(range(2, 12)) and result.errors_dropped == 1
    for e in result.errors:
        assert e.error.startswith(f"attempt {e.attempt} eee") and e.error.endswith("bytes cut ...]")
        assert len(e.error.encode()) <= results.MAX_ERROR_BYTES
        assert e.traceback.startswith("[... ") and e.traceback.endswith("ttt")  # the end is kept
        assert len(e.traceback.encode()) <= results.MAX_TRACEBACK_BYTES
    assert runs == list(range(1, 13))


@pytest.mark.timeout(50)
def test_a_huge_move_to_dlq_error_fails_the_result_with_the_error_cut(client, start_worker) -> None:
    mux = bgjob.Mux()
    runs = _counting(mux, "poison", lambda job: bgjob.MoveToDlq("z" * 2_000_000, reason="poison"))
    start_worker(client, mux)
    job_id = client.send_job("poison", None, store_result=True)
    result = client.result(job_id, wait=60)
    assert result.status == bgjob.ResultStatus.FAILED and result.attempts == 1
    [error] = result.errors
    assert error.error.startswith("zzz") and len(error.error.encode()) <= results.MAX_ERROR_BYTES
    assert "bytes cut" in error.error
    wait_until(lambda: client.dlq.count() == 1 and _settled(client), message="the dead letter")
    assert runs == [1]


def test_records_are_bounded_to_fit_the_server_and_name_what_does_not() -> None:
    errors = [{"attempt": n, "error": "e" * 50_000, "traceback": "t" * 50_000, "at": None} for n in range(1, 31)]
    record = {"id": "a", "status": "SUCCESSFUL", "errors": errors, "value": "v" * 600_000}
    data = results.encode_record(record, 700_000)  # fits once older errors go: the value is kept
    assert len(data) <= 700_000 - results.RECORD_RESERVE and record["value"] == "v" * 600_000
    assert record["errors"][-1]["attempt"] == 30 and record["errors_dropped"] == 30 - len(record["errors"])
    with pytest.raises(results.ResultTooLarge, match=r"return value too large \(800002 bytes; the limit is \d+\)"):
        results.encode_record({**record, "value": "v" * 800_000}, 700_000)
    with pytest.raises(results.ResultTooLarge, match=r"result record too large"):
        results.encode_record({"id": "x" * 5000, "errors": [], "value": None}, 2000)
    assert results.cut_text("é" * 100, 50).endswith("bytes cut ...]") and len(results.cut_text("é" * 100, 50)) < 50
    assert results.encode_record({"id": "\udc80", "errors": []}, 1000) == b'{"id":"\\udc80","errors":[]}'
