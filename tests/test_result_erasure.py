"""delete_result erases a result's bytes from the server's files, not only its index entry.

A KV purge alone (or a delete by limits) leaves the record in the stream's block file until JetStream compacts
the block; these tests stop the server and search every file of the results stream for a planted value.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path

import bgjob
from bgjob.server import EmbeddedServer

from .conftest import wait_until


def _files_holding(root: Path, planted: str) -> list[str]:
    needle = planted.encode()
    return [str(p) for p in root.rglob("*") if p.is_file() and needle in p.read_bytes()]


def _results_dir(server: EmbeddedServer) -> Path:
    dirs = [p for p in server.data_dir.rglob("KV_*_RESULTS") if p.is_dir()]
    assert len(dirs) == 1, dirs
    return dirs[0]


def _run_worker(client: bgjob.Client, mux: bgjob.Mux) -> Callable[[], None]:
    """Start a worker; returns what stops and joins it."""
    policy = bgjob.RetryPolicy(max_attempts=3, base_delay=0.05, jitter=0)
    worker = bgjob.Worker(client, mux, retry_policy=policy, fetch_timeout=0.5)
    thread = worker.start()

    def stop() -> None:
        worker.stop()
        thread.join(timeout=30)
        assert not thread.is_alive(), "worker did not stop"

    return stop


def _client(server: EmbeddedServer) -> bgjob.Client:
    settings = bgjob.Settings(url=server.url, prefix="t" + uuid.uuid4().hex[:12], ack_wait=5.0, retry_for=5.0)
    return bgjob.Client(settings).connect()


def test_deleted_result_value_is_in_no_file_of_the_store_after_the_server_stops(
    own_server: EmbeddedServer,
) -> None:
    planted = "RESULTPII-" + uuid.uuid4().hex
    client = _client(own_server)
    mux = bgjob.Mux()
    mux.handle("echo", lambda job: bgjob.Complete({"echo": planted}))
    stop_worker = _run_worker(client, mux)
    job_id = client.send_job("echo", None, store_result=True)
    wait_until(lambda: client.result(job_id).status is bgjob.ResultStatus.SUCCESSFUL, message="stored result")
    results = _results_dir(own_server)
    assert _files_holding(results, planted), "the planted value should be stored before the delete"

    assert client.delete_result(job_id) is True
    assert client.delete_result(job_id) is False
    try:
        client.result(job_id)
        raise AssertionError("result still found")
    except bgjob.ResultNotFound:
        pass
    stop_worker()
    client.close()
    own_server.stop()
    assert _files_holding(own_server.data_dir, planted) == []


def test_earlier_revisions_holding_an_error_text_are_erased_too(
    own_server: EmbeddedServer,
) -> None:
    """READY-after-a-retry and RUNNING revisions carry the earlier attempts' errors; FAILED ones too."""
    planted_retry = "RETRYPII-" + uuid.uuid4().hex
    planted_final = "FINALPII-" + uuid.uuid4().hex
    client = _client(own_server)
    mux = bgjob.Mux()

    def flaky(job: bgjob.Job) -> bgjob.Result:
        if job.attempt < 3:
            raise ValueError(f"attempt {job.attempt} saw {planted_retry}")
        return bgjob.Complete("done")

    def failing(job: bgjob.Job) -> bgjob.Result:
        raise ValueError(f"always {planted_final}")

    mux.handle("flaky", flaky)
    mux.handle("failing", failing)
    stop_worker = _run_worker(client, mux)
    flaky_id = client.send_job("flaky", None, store_result=True)
    failing_id = client.send_job("failing", None, store_result=True)
    wait_until(lambda: client.result(flaky_id).status is bgjob.ResultStatus.SUCCESSFUL, message="flaky done")
    wait_until(lambda: client.result(failing_id).status is bgjob.ResultStatus.FAILED, message="failing failed")
    results = _results_dir(own_server)
    assert _files_holding(results, planted_retry) and _files_holding(results, planted_final)

    assert client.delete_result(flaky_id) is True
    assert client.delete_result(failing_id) is True
    stop_worker()
    client.close()
    own_server.stop()
    # Only the results stream: the dead letter of "failing" holds its error by design (client.dlq.erase).
    assert _files_holding(results, planted_retry) == []
    assert _files_holding(results, planted_final) == []


def test_other_results_survive_a_delete(nats_server: EmbeddedServer) -> None:
    client = _client(nats_server)
    mux = bgjob.Mux()
    mux.handle("echo", lambda job: bgjob.Complete(job.arg))
    stop_worker = _run_worker(client, mux)
    ids = [client.send_job("echo", n, store_result=True) for n in range(3)]
    for job_id in ids:
        wait_until(lambda job_id=job_id: client.result(job_id).status is bgjob.ResultStatus.SUCCESSFUL)
    assert client.delete_result(ids[1]) is True
    assert [client.result(ids[0]).value, client.result(ids[2]).value] == [0, 2]
    stop_worker()
    client.close()


def test_a_results_bucket_of_an_older_bgjob_that_denies_deletes_is_still_purged(
    nats_server: EmbeddedServer,
) -> None:
    """Its stream refuses deletes by sequence (a KV's default): results are still written, and delete_result
    falls back to a purge, so result() finds nothing."""
    from nats.js.api import KeyValueConfig

    client = _client(nats_server)

    async def create_old_bucket(core: object) -> None:
        name = core.topology.stream_prefix + "RESULTS"  # type: ignore[attr-defined]
        await core.js.create_key_value(KeyValueConfig(bucket=name, history=1, direct=False))  # type: ignore[attr-defined]

    client.run(create_old_bucket)
    mux = bgjob.Mux()
    mux.handle("flaky", lambda job: bgjob.Retry(0.05) if job.attempt == 1 else bgjob.Complete("v"))
    stop_worker = _run_worker(client, mux)
    job_id = client.send_job("flaky", None, store_result=True)
    wait_until(lambda: client.result(job_id).status is bgjob.ResultStatus.SUCCESSFUL, message="stored result")
    assert client.delete_result(job_id) is True
    try:
        client.result(job_id)
        raise AssertionError("result still found")
    except bgjob.ResultNotFound:
        pass
    assert client.delete_result(job_id) is False
    stop_worker()
    client.close()
