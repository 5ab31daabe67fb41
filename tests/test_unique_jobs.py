"""Unique jobs: `send_job(..., job_id=..., unique_for=...)` reserves the id in the <PREFIX>_UNIQUE bucket, so a
second send of the id within `unique_for` is not stored, even after the server forgot the id (a restart)."""

from __future__ import annotations

import queue
import time
from datetime import timedelta

import nats.js.errors
import pytest
from nats.js.api import StreamConfig

import bgjob
from bgjob import unique
from bgjob.job_results import result_key
from tests.conftest import drain, wait_until


def pending(client: bgjob.Client, queue_name: str = "default") -> int:
    return client.queue_stats(queue_name).pending


def reserved(client: bgjob.Client, job_id: str) -> dict | None:
    """The bucket entry of a unique job id (its first send's id, queue, time), or None."""
    import json

    async def read(core) -> dict | None:
        try:
            kv = await core.js.key_value(core.topology.stream_prefix + "UNIQUE")
            entry = await kv.get(result_key(job_id))
        except (nats.js.errors.BucketNotFoundError, nats.js.errors.KeyNotFoundError, nats.js.errors.KeyDeletedError):
            return None
        return json.loads(entry.value)

    return client.run(read)


def run_first_then_restart(own_server, make_client, **unique_kwargs) -> tuple[bgjob.Client, str]:
    """The quoted scenario up to the second send: "first" with job_id "report-7" is processed and acked, the
    worker stops, the server restarts with the same data dir, and 2 s pass."""
    client = make_client(url=own_server.url)
    seen: queue.Queue = queue.Queue()
    mux = bgjob.Mux()
    mux.handle("report", lambda job: (seen.put(job.arg), bgjob.Complete())[1])
    worker = bgjob.Worker(client, mux, fetch_timeout=0.5)
    thread = worker.start()
    try:
        first = client.send_job("report", "first", job_id="report-7", **unique_kwargs)
        assert drain(seen, 1) == ["first"]
        wait_until(lambda: worker.processed == 1 and client.queue_stats().in_flight == 0, message="first acked")
    finally:
        worker.stop()
        thread.join(timeout=30)
    assert not thread.is_alive(), "worker did not stop"
    own_server.stop()
    own_server.start()
    time.sleep(2)  # the scenario's "2 s later"
    return client, first


def test_unique_job_id_is_not_stored_again_after_a_server_restart(own_server, make_client) -> None:
    client, first = run_first_then_restart(own_server, make_client, unique_for=timedelta(minutes=10))
    assert client.send_job("report", "second", job_id="report-7", unique_for=timedelta(minutes=10)) == first
    assert client.send_jobs([bgjob.JobSpec("report", "third", job_id="report-7", unique_for=600)]) == [first]
    assert pending(client) == 0
    assert reserved(client, "report-7")["id"] == "report-7"


def test_without_unique_for_a_job_id_is_forgotten_by_a_server_restart(own_server, make_client) -> None:
    """The old behaviour, as documented: the stream's duplicate window is rebuilt from the messages the stream
    still holds, so the id of an acked job is forgotten by a restart and a second send is stored."""
    client, first = run_first_then_restart(own_server, make_client)
    assert client.send_job("report", "second", job_id="report-7") == first
    assert pending(client) == 1


def test_a_second_send_within_unique_for_returns_the_first_id_without_publishing(client: bgjob.Client) -> None:
    assert client.send_job("report", {"n": 1}, job_id="report-7", unique_for=60) == "report-7"
    entry = reserved(client, "report-7")
    assert entry["id"] == "report-7" and entry["queue"] == "default" and entry["unique_for"] == 60
    assert client.send_job("report", {"n": 2}, job_id="report-7", unique_for=60, queue="other") == "report-7"
    assert pending(client) == 1
    assert pending(client, "other") == 0
    assert reserved(client, "report-7") == entry


def test_a_unique_job_id_is_free_again_once_unique_for_has_passed(make_client) -> None:
    """The second send goes to another queue: the first queue's stream would drop it by its own duplicate window."""
    client = make_client()
    client.send_job("report", {"n": 1}, job_id="short-1", unique_for=1)
    first = reserved(client, "short-1")
    assert client.send_job("report", {"n": 2}, job_id="short-1", unique_for=1, queue="other") == "short-1"
    assert pending(client, "other") == 0
    wait_until(lambda: reserved(client, "short-1") is None, message="the reservation to expire")
    assert client.send_job("report", {"n": 3}, job_id="short-1", unique_for=1, queue="other") == "short-1"
    assert pending(client, "other") == 1
    assert reserved(client, "short-1") not in (None, first)


def test_send_jobs_publishes_each_unique_id_once_and_returns_every_id_in_order(client: bgjob.Client) -> None:
    client.send_job("report", {"n": 0}, job_id="held-1", unique_for=60)
    ids = client.send_jobs([
        bgjob.JobSpec("report", {"n": 1}, job_id="u-1", unique_for=60),
        bgjob.JobSpec("report", {"n": 2}, job_id="u-1", unique_for=60),
        bgjob.JobSpec("report", {"n": 3}, job_id="held-1", unique_for=60),
        bgjob.JobSpec("report", {"n": 4}, job_id="u-2", unique_for=timedelta(seconds=60)),
        ("report", {"n": 5}),
    ])  # fmt: skip
    assert ids[:4] == ["u-1", "u-1", "held-1", "u-2"] and len(ids[4]) == 32
    assert pending(client) == 4  # held-1 (from send_job), u-1, u-2 and the plain job
    assert reserved(client, "u-1") is not None and reserved(client, "u-2") is not None


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"unique_for": 60}, "unique_for needs a job_id"),
        ({"job_id": "a", "unique_for": 0}, "between 1 s and 2592000 s"),
        ({"job_id": "a", "unique_for": -5}, "between 1 s and 2592000 s"),
        ({"job_id": "a", "unique_for": 0.5}, "between 1 s and 2592000 s"),
        ({"job_id": "a", "unique_for": timedelta(days=31)}, "between 1 s and 2592000 s"),
        ({"job_id": "a", "unique_for": float("nan")}, "between 1 s and 2592000 s"),
        ({"job_id": "a", "unique_for": float("inf")}, "between 1 s and 2592000 s"),
        ({"job_id": "a", "unique_for": "1h"}, "timedelta or seconds"),
        ({"job_id": "a", "unique_for": True}, "timedelta or seconds"),
        ({"job_id": "a", "unique_for": [60]}, "timedelta or seconds"),
    ],
)
def test_bad_unique_for_is_invalid_job_and_reserves_nothing(client: bgjob.Client, kwargs, match) -> None:
    with pytest.raises(bgjob.InvalidJob, match=match):
        client.send_job("report", {}, **kwargs)
    with pytest.raises(bgjob.InvalidJob, match=f"job 1: .*{match}"):
        client.send_jobs([("report", {}), bgjob.JobSpec("report", {}, **kwargs)])
    assert pending(client) == 0
    assert reserved(client, "a") is None


def test_unique_for_bounds_are_inclusive_and_rounded_up_to_whole_seconds() -> None:
    assert unique.validate_unique_for(1, "a") == 1
    assert unique.validate_unique_for(1.2, "a") == 2
    assert unique.validate_unique_for(timedelta(days=30), "a") == unique.MAX_UNIQUE_FOR
    assert unique.validate_unique_for(None, None) is None


def test_an_invalid_job_with_unique_for_reserves_nothing(client: bgjob.Client) -> None:
    with pytest.raises(bgjob.InvalidJob, match="JSON-serialisable"):
        client.send_job("report", {"x": {1, 2}}, job_id="bad-1", unique_for=60)
    assert reserved(client, "bad-1") is None


def test_a_publish_the_server_refuses_releases_the_unique_id(client: bgjob.Client) -> None:
    """The operator's stream takes messages of at most 256 bytes: the refused job is not stored, and its id is
    released, so sending it again (smaller, as the caller may) is stored."""

    async def create_stream(core) -> None:
        await core.js.add_stream(StreamConfig(name=core.topology.queue_stream("small"),
                                              subjects=[core.topology.job_filter("small")], max_msg_size=256))

    client.run(create_stream)
    with pytest.raises(bgjob.BgjobError):
        client.send_job("report", {"pad": "x" * 1024}, job_id="big-1", unique_for=60, queue="small")
    assert reserved(client, "big-1") is None
    assert client.send_job("report", {"pad": "x"}, job_id="big-1", unique_for=60, queue="small") == "big-1"
    assert pending(client, "small") == 1
    assert reserved(client, "big-1") is not None


def test_a_job_too_large_for_the_server_releases_its_unique_id(client: bgjob.Client) -> None:
    with pytest.raises(bgjob.InvalidJob):
        client.send_job("report", b"x" * (2 * 1024 * 1024), job_id="huge-1", unique_for=60)
    assert reserved(client, "huge-1") is None
    assert client.send_job("report", b"x", job_id="huge-1", unique_for=60) == "huge-1"
    assert pending(client) == 1


def test_a_send_jobs_batch_that_is_refused_releases_its_unique_ids(client: bgjob.Client) -> None:
    async def create_stream(core) -> None:
        await core.js.add_stream(StreamConfig(name=core.topology.queue_stream("small"),
                                              subjects=[core.topology.job_filter("small")], max_msg_size=256))

    client.run(create_stream)
    with pytest.raises(bgjob.SendJobsError) as raised:
        client.send_jobs([bgjob.JobSpec("report", {"n": 1}, job_id="ok-1", unique_for=60),
                          bgjob.JobSpec("report", {"pad": "x" * 1024}, job_id="big-2", unique_for=60)],
                         queue="small")  # fmt: skip
    assert "big-2" in raised.value.not_stored
    assert reserved(client, "big-2") is None
    assert (reserved(client, "ok-1") is not None) == ("ok-1" in raised.value.stored)


def test_a_unique_bucket_that_refuses_message_ttls_is_a_named_error_and_nothing_is_sent(client: bgjob.Client) -> None:
    """An operator-made <PREFIX>_UNIQUE bucket whose stream does not allow per-message TTLs."""

    async def create_bucket(core) -> None:
        name = core.topology.stream_prefix + "UNIQUE"
        await core.js.add_stream(StreamConfig(name="KV_" + name, subjects=[f"$KV.{name}.>"], max_msgs_per_subject=1,
                                              allow_rollup_hdrs=True, deny_delete=True, allow_msg_ttl=False))

    client.run(create_bucket)
    with pytest.raises(bgjob.PublishError, match="cannot reserve unique job id 'ttl-1', the job was not published"):
        client.send_job("report", {}, job_id="ttl-1", unique_for=60)
    client.ensure_queue("default")
    assert pending(client) == 0


def test_a_unique_send_not_confirmed_during_a_stall_is_stored_when_this_process_sends_it_again(own_server,
                                                                                               prefix) -> None:
    """The reservation's create is buffered while the server is stalled and stored after the send gave up: the
    re-send with the same id (the documented retry) must publish, not be deduplicated by that reservation."""
    from .conftest import stream_ids
    from .test_producer_faults import paused

    client = bgjob.Client(bgjob.Settings(url=own_server.url, prefix=prefix, retry_for=2, request_timeout=1)).connect()
    try:
        client.send_job("report", {}, job_id="warm", unique_for=60)
        with paused(own_server), pytest.raises(bgjob.ConnectionError) as caught:
            client.send_job("report", {}, job_id="uq-1", unique_for=60)
        assert caught.value.job_ids == ("uq-1",) and "re-send with the same job_id" in str(caught.value)
        assert client.send_job("report", {}, job_id="uq-1", unique_for=60) == "uq-1"
        assert sorted(stream_ids(client)) == ["uq-1", "warm"]
        assert client.send_job("report", {}, job_id="uq-1", unique_for=60) == "uq-1"  # and now it is unique
        assert sorted(stream_ids(client)) == ["uq-1", "warm"]
    finally:
        client.close()
