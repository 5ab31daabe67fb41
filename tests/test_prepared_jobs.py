"""Prepared jobs: built (validated, encoded, size-checked, signed) at the call with no network I/O, published
later with their bytes as they are (Client.prepare_job / Client.publish_prepared, PreparedJob records)."""

from __future__ import annotations

import json
import queue
import socket
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone

import pytest

import bgjob
from bgjob.codec import DEFAULT_MAX_PAYLOAD
from bgjob.job import format_time

from .conftest import drain, stream_ids, wait_until


@pytest.fixture
def silent_port() -> Iterator[socket.socket]:
    """A listening socket nobody should connect to: a connection attempt would wait in its backlog."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        sock.setblocking(False)
        yield sock


def no_connection_attempted(sock: socket.socket) -> bool:
    try:
        sock.accept()[0].close()
    except BlockingIOError:
        return True
    return False


@pytest.fixture
def offline_client(silent_port: socket.socket, prefix: str) -> Iterator[bgjob.Client]:
    """A client of the test's prefix whose URL points at a port nothing answers on."""
    client = bgjob.Client(bgjob.Settings(url=f"nats://127.0.0.1:{silent_port.getsockname()[1]}", prefix=prefix,
                                         retry_for=1.0, connect_timeout=0.5))  # fmt: skip
    yield client
    client.close()


def test_prepare_job_does_no_network_io_and_a_later_publish_stores_the_job(
    offline_client: bgjob.Client, silent_port: socket.socket, make_client: Callable[..., bgjob.Client]
) -> None:
    job = offline_client.prepare_job(bgjob.JobSpec("report", {"user": 7}, job_id="report-7"), queue="default")
    assert no_connection_attempted(silent_port)
    assert (job.job_id, job.job_type, job.queue, job.store_result, job.unique_for) == (
        "report-7", "report", "default", False, None)  # fmt: skip
    assert job.headers["Nats-Msg-Id"] == job.headers["Bgjob-Id"] == "report-7"
    assert job.body == b'{"user":7}'
    assert "user" not in repr(job) and "Nats-Msg-Id" not in repr(job)

    online = make_client()
    assert online.publish_prepared([job]) == ["report-7"]
    assert stream_ids(online) == ["report-7"]


def test_a_job_too_large_for_the_default_max_payload_is_refused_at_prepare(
    offline_client: bgjob.Client, silent_port: socket.socket
) -> None:
    with pytest.raises(bgjob.InvalidJob, match="at most"):
        offline_client.prepare_job(bgjob.JobSpec("mail", b"x" * DEFAULT_MAX_PAYLOAD))
    assert no_connection_attempted(silent_port)


def test_an_invalid_job_is_refused_at_prepare(offline_client: bgjob.Client) -> None:
    with pytest.raises(bgjob.InvalidJob, match="JSON-serialisable"):
        offline_client.prepare_job(bgjob.JobSpec("noop", {"v": {1, 2}}))
    with pytest.raises(bgjob.InvalidJob, match="unique_for needs a job_id"):
        offline_client.prepare_job(bgjob.JobSpec("noop", unique_for=60))
    with pytest.raises(bgjob.InvalidJob, match=r"expected a bgjob\.JobSpec"):
        offline_client.prepare_job(("noop", {}))  # type: ignore[arg-type]


def test_the_record_of_a_prepared_job_round_trips_through_json(offline_client: bgjob.Client) -> None:
    spec = bgjob.JobSpec("report", {"n": 1}, delay=60, store_result=True, job_id="r-1", unique_for=120,
                         headers={"X-Tenant": "a"})  # fmt: skip
    job = offline_client.prepare_job(spec)
    record = json.loads(json.dumps(job.to_record()))
    assert bgjob.PreparedJob.from_record(record) == job
    assert bgjob.PreparedJob.from_record(record, prefix=offline_client.settings.prefix) == job
    assert job.due is not None and job.subject.startswith(f"{offline_client.settings.prefix}.default.at.r-1.")


def stored_message(client: bgjob.Client, subject: str, queue: str = "default"):
    async def get(core):
        return await core.js.get_msg(core.topology.queue_stream(queue), subject=subject)

    return client.run(get)


def test_a_delayed_job_published_later_is_due_when_it_was_prepared_for(client: bgjob.Client) -> None:
    before = datetime.now(timezone.utc)
    job = client.prepare_job(bgjob.JobSpec("report", {"n": 1}, delay=60))
    after = datetime.now(timezone.utc)
    assert job.due is not None and before + timedelta(seconds=59.999) <= job.due <= after + timedelta(seconds=60)
    time.sleep(2)  # the commit (or the outbox relay) comes later: that is the scenario, not a wait for a result
    published_at = datetime.now(timezone.utc)
    client.publish_prepared([job])
    msg = stored_message(client, job.subject)
    assert msg.headers["Nats-Schedule"] == job.headers["Nats-Schedule"] == f"@at {format_time(job.due)}"
    assert job.due < published_at + timedelta(seconds=60)  # not 60 s after the publish
    stats = client.queue_stats("default")
    assert (stats.pending, stats.scheduled) == (0, 1)


def test_a_delayed_job_published_after_its_due_time_runs(client: bgjob.Client, start_worker) -> None:
    job = client.prepare_job(bgjob.JobSpec("report", {"n": 1}, delay=1))
    assert job.due is not None
    wait_until(lambda: datetime.now(timezone.utc) > job.due + timedelta(seconds=0.5), message="the due time past")
    ran: queue.Queue = queue.Queue()
    mux = bgjob.Mux()
    mux.handle("report", lambda j: ran.put((j.id, j.arg)) or bgjob.Complete())
    start_worker(client, mux)
    client.publish_prepared([job])
    assert drain(ran, 1) == [(job.job_id, {"n": 1})]


def test_publishing_the_same_prepared_job_twice_stores_it_once(client: bgjob.Client) -> None:
    job = client.prepare_job(bgjob.JobSpec("report", {"n": 1}))
    assert client.publish_prepared([job, job]) == [job.job_id, job.job_id]
    assert client.publish_prepared([job]) == [job.job_id]
    assert stream_ids(client) == [job.job_id]


def test_the_arg_is_read_when_the_job_is_prepared(client: bgjob.Client) -> None:
    arg = {"v": 1}
    job = client.prepare_job(bgjob.JobSpec("noop", arg))
    arg["v"] = {1, 2}  # would not even encode now
    client.publish_prepared([job])
    assert stored_message(client, job.subject).data == b'{"v":1}'


def test_a_prepared_job_with_store_result_gets_its_ready_record(client: bgjob.Client) -> None:
    job = client.prepare_job(bgjob.JobSpec("report", {"n": 1}, store_result=True))
    assert job.store_result
    client.publish_prepared([job])
    assert client.result(job.job_id).status == bgjob.ResultStatus.READY


def test_a_prepared_job_with_unique_for_published_twice_is_stored_once(client: bgjob.Client) -> None:
    client.configure_queue("default", duplicate_window=1)  # so only the reservation can drop the second publish
    job = client.prepare_job(bgjob.JobSpec("report", {"n": 1}, job_id="report-7", unique_for=3600))
    assert job.unique_for == 3600
    client.publish_prepared([job])
    control = client.prepare_job(bgjob.JobSpec("report", {"n": 2}, job_id="control"))

    def control_stored_twice() -> bool:  # then the duplicate window has let the same id through again
        client.publish_prepared([control])
        return stream_ids(client).count("control") == 2

    wait_until(control_stored_twice, message="the duplicate window to pass")
    assert client.publish_prepared([job]) == ["report-7"]
    assert stream_ids(client).count("report-7") == 1


def _record(client: bgjob.Client) -> dict:
    return client.prepare_job(bgjob.JobSpec("report", {"n": 1}, job_id="r-1")).to_record()


@pytest.mark.parametrize(
    ("tamper", "match"),
    [
        (lambda r: r.update(job_id="r-2"), "Nats-Msg-Id header is not 'r-2'"),
        (lambda r: r["headers"].update({"Nats-Msg-Id": "other"}), "Nats-Msg-Id header"),
        (lambda r: r["headers"].update({"Bgjob-Type": "other"}), "Bgjob-Type header"),
        (lambda r: r.update(job_type="other"), "Bgjob-Type header"),
        (lambda r: r.update(queue="other"), "is not where"),
        (lambda r: r.update(subject=r["subject"].replace(".job.", ".at.")), "is not where"),
        (lambda r: r.update(body="not base64!"), "not base64"),
        (lambda r: r.update(body=7), "not base64"),
        (lambda r: r.update(headers=["a"]), "dict of str to str"),
        (lambda r: r["headers"].update({"X-N": 1}), "dict of str to str"),
        (lambda r: r.update(store_result="yes"), "store_result"),
        (lambda r: r.update(store_result=True), "store_result"),
        (lambda r: r.update(unique_for=0), "unique_for"),
        (lambda r: r.update(unique_for=True), "unique_for"),
        (lambda r: r.update(v=2), "version"),
        (lambda r: r.pop("queue"), "missing fields"),
        (lambda r: r.update(extra=1), "unknown fields"),
        (lambda r: r.update(job_id=None), "invalid job id"),
    ],
)
def test_a_tampered_or_malformed_record_is_invalid(offline_client: bgjob.Client, tamper, match: str) -> None:
    record = _record(offline_client)
    tamper(record)
    with pytest.raises(bgjob.InvalidJob, match=match):
        bgjob.PreparedJob.from_record(record)


def test_a_record_that_is_not_a_dict_is_invalid() -> None:
    with pytest.raises(bgjob.InvalidJob, match="must be a dict"):
        bgjob.PreparedJob.from_record([])  # type: ignore[arg-type]


def test_a_job_prepared_for_another_prefix_is_refused(offline_client: bgjob.Client, client: bgjob.Client) -> None:
    other = bgjob.Client(bgjob.Settings(url="nats://127.0.0.1:1", prefix="elsewhere"))
    job = other.prepare_job(bgjob.JobSpec("report", {"n": 1}))
    with pytest.raises(bgjob.InvalidJob, match="prepared for prefix 'elsewhere'"):
        bgjob.PreparedJob.from_record(job.to_record(), prefix=client.settings.prefix)
    with pytest.raises(bgjob.InvalidJob, match=r"job 0: .*prefix 'elsewhere'.*nothing was sent"):
        client.publish_prepared([job])
    with pytest.raises(bgjob.InvalidJob, match=r"job 0: expected a bgjob\.PreparedJob"):
        client.publish_prepared([job.to_record()])  # type: ignore[list-item]
    assert stream_ids(client) == []


def test_a_unique_job_whose_publisher_died_after_reserving_is_published_by_the_next_attempt(client) -> None:
    """Found by an attack on the outbox: a relay killed between reserving a unique id and publishing left the
    reservation; the next relay found the id held, skipped the publish, counted the job stored and deleted the
    row: a committed job lost. The reservation names its prepared job, so the next attempt finds it its own."""
    from bgjob import unique

    job = client.prepare_job(bgjob.JobSpec("invoice", {"n": 42}, job_id="invoice-42", unique_for=3600))
    client.run(unique.reserve, job.job_id, job.queue, job.unique_for, job.reservation_token)  # then "killed"
    assert client.publish_prepared([job]) == ["invoice-42"]
    assert stream_ids(client) == ["invoice-42"]
    # Another preparation of the same id is still held off by that reservation.
    again = client.prepare_job(bgjob.JobSpec("invoice", {"n": 43}, job_id="invoice-42", unique_for=3600))
    assert again.reservation_token != job.reservation_token
    assert client.publish_prepared([again]) == ["invoice-42"] and stream_ids(client) == ["invoice-42"]
