"""Prepared jobs: built (validated, encoded, size-checked, signed) at the call with no network I/O, published
later with their bytes as they are (Client.prepare_job / Client.publish_prepared, PreparedJob records)."""

from __future__ import annotations

import json
import socket
from collections.abc import Callable, Iterator

import pytest

import bgjob
from bgjob.codec import DEFAULT_MAX_PAYLOAD

from .conftest import stream_ids


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
