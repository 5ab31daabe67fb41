"""Values bgjob carries in NATS headers must arrive as sent: nats-py strips leading and trailing whitespace from
every header value (on publish and on read), so such values are refused at the call (or, for the ambient request
id, carried as NATS would)."""

from __future__ import annotations

import queue

import pytest

import bgjob
from bgjob.context import request_id as request_id_scope
from bgjob.headers import PARTITION_KEY

from .conftest import drain, wait_until


@pytest.mark.parametrize("options", [
    {"partition_key": " x "},
    {"partition_key": "x "},
    {"partition_key": "\tx"},
    {"headers": {"X-Customer": " 7"}},
    {"headers": {"X-Customer": "7 "}},
    {"request_id": " req-1"},
])  # fmt: skip
def test_a_header_value_that_nats_would_change_is_refused_and_nothing_is_sent(client: bgjob.Client, options) -> None:
    with pytest.raises(bgjob.InvalidJob, match=r"leading or trailing|printable"):
        client.send_job("t", {"n": 1}, **options)
    assert client.queue_stats().pending == 0


def test_a_partition_key_with_inner_spaces_keeps_its_partition_through_a_dead_letter_retry(client, start_worker):
    """Regression (attacker): " x " was published to the partition of " x " but read back as "x", so its DLQ retry
    joined another key's line (and a signed one never verified). A key with inner spaces is kept whole."""
    key = "customer 7"
    seen: queue.Queue = queue.Queue()
    mux = bgjob.Mux()

    @mux.handler("ordered", partitioned=True)
    def ordered(job: bgjob.Job) -> bgjob.Result:
        seen.put(job.attempt)
        return bgjob.MoveToDlq("first time") if seen.qsize() == 1 else bgjob.Complete()

    start_worker(client, mux)
    job_id = client.send_job("ordered", None, partition_key=key, max_attempts=1)
    entry = wait_until(lambda: next(iter(client.dlq.list(limit=1)), None), message="the dead letter")
    assert entry.id == job_id and entry.headers[PARTITION_KEY] == key
    client.dlq.retry(job_id)
    assert drain(seen, 2) == [1, 1]


def test_the_ambient_request_id_is_carried_as_nats_would(client: bgjob.Client, start_worker) -> None:
    seen: queue.Queue = queue.Queue()
    mux = bgjob.Mux()
    mux.handle("t", lambda job: seen.put(job.request_id) or bgjob.Complete())
    start_worker(client, mux)
    with request_id_scope("  req-7 "):
        client.send_job("t", None)
    assert drain(seen, 1) == ["req-7"]
