"""send_jobs: bulk, pipelined, validated up front, and exact about partial failure."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest

import bgjob
from bgjob.client import Core

from .conftest import stream_ids, wait_until


def stream_messages(client: bgjob.Client, queue: str = "default") -> int:
    async def count(core: Core) -> int:
        return (await core.js.stream_info(core.topology.queue_stream(queue))).state.messages

    return client.run(count)


def test_send_jobs_returns_ids_in_order_and_stores_them_in_that_order(client) -> None:
    ids = client.send_jobs([("report", {"n": i}) for i in range(500)], window=64)
    assert len(ids) == 500 and len(set(ids)) == 500
    assert stream_ids(client) == ids


def test_send_jobs_mixes_pairs_and_specs(client) -> None:
    ids = client.send_jobs([
        ("report", 1),
        bgjob.JobSpec("report", 2, job_id="fixed-id", request_id="r-1", headers={"X-A": "b"}),
        bgjob.JobSpec("mail", 3, queue="mail"),
        bgjob.JobSpec("report", 4, delay=timedelta(minutes=5)),
    ])  # fmt: skip
    assert ids[1] == "fixed-id"
    assert stream_ids(client) == ids[:2]
    assert stream_ids(client, "mail") == [ids[2]]
    assert client.queue_stats().scheduled == 1


def test_one_bad_job_names_its_index_and_nothing_is_sent(client) -> None:
    client.ensure_queue("default")
    jobs = [("report", i) for i in range(5)] + [("report", {1, 2})] + [("report", 7)]
    with pytest.raises(bgjob.InvalidJob, match=r"job 5: .*JSON-serialisable.*nothing was sent"):
        client.send_jobs(jobs)
    with pytest.raises(bgjob.InvalidJob, match=r"job 1: .*expected a \(type, arg\) pair"):
        client.send_jobs([("report", 1), "report"])
    with pytest.raises(bgjob.InvalidJob, match="job 0: invalid job type"):
        client.send_jobs([bgjob.JobSpec("bad type")])
    assert stream_messages(client) == 0


def test_repeated_job_ids_inside_a_batch_are_stored_once(client) -> None:
    ids = client.send_jobs([bgjob.JobSpec("report", i, job_id=f"job-{i % 3}") for i in range(9)])
    assert ids == [f"job-{i % 3}" for i in range(9)]
    assert stream_ids(client) == ["job-0", "job-1", "job-2"]


def test_empty_batch_sends_nothing(client) -> None:
    assert client.send_jobs([]) == []


def test_partial_failure_says_exactly_what_was_stored(own_server, prefix) -> None:
    total = 30_000
    # request_timeout 5 s: a PubAck that a loaded machine processes a second late still counts as a confirmation.
    client = bgjob.Client(bgjob.Settings(url=own_server.url, prefix=prefix, retry_for=2.0, request_timeout=5.0))
    observer = bgjob.Client(bgjob.Settings(url=own_server.url, prefix=prefix, retry_for=2.0))
    try:
        client.ensure_queue("default")
        specs = [bgjob.JobSpec("report", i, job_id=f"bulk-{i}") for i in range(total)]
        outcome: dict = {}

        def send() -> None:
            try:
                outcome["ids"] = client.send_jobs(specs)
            except bgjob.SendJobsError as exc:
                outcome["error"] = exc

        sender = threading.Thread(target=send)
        sender.start()
        wait_until(lambda: stream_messages(observer) >= 2000, timeout=30, message="a part of the batch stored")
        own_server.kill()
        sender.join(60)
        assert not sender.is_alive()
        if "ids" in outcome:
            pytest.skip("the whole batch was stored before the server went down")
        error: bgjob.SendJobsError = outcome["error"]
        assert error.stored and error.not_stored
        assert sorted(error.stored + error.not_stored) == sorted(s.job_id for s in specs)
        assert set(error.errors) <= set(error.not_stored)

        own_server.restart()
        stored_now = wait_until(lambda: _count_or_none(observer), timeout=30, message="server back")
        assert len(error.stored) <= stored_now <= total  # every confirmed job survived the crash
        not_stored = set(error.not_stored)
        resend = [s for s in specs if s.job_id in not_stored]
        assert client.send_jobs(resend) == error.not_stored
        assert stream_messages(observer) == total  # the resend filled the gaps, duplicates were dropped
    finally:
        client.close()
        observer.close()


def _count_or_none(client: bgjob.Client) -> int | None:
    try:
        return stream_messages(client)
    except bgjob.BgjobError:
        return None


def test_module_level_send_jobs_uses_the_default_client(nats_server, prefix, monkeypatch) -> None:
    monkeypatch.setenv("BGJOB_URL", nats_server.url)
    monkeypatch.setenv("BGJOB_PREFIX", prefix)
    monkeypatch.setattr(bgjob.client, "_default", None)
    try:
        assert len(bgjob.send_jobs([("report", 1), ("report", 2)])) == 2
        assert bgjob.default_client().queue_stats().pending == 2
    finally:
        bgjob.default_client().close()
