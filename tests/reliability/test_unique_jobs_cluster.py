"""Unique jobs in a 3-node cluster (replicas=3): the reservation of a job id is replicated, so it holds when the
leader of its bucket is SIGKILLed, and a second send of the id within unique_for is still not stored."""

from __future__ import annotations

import pytest

import bgjob

from ..conftest import wait_until
from .support import full_run_only

pytestmark = [pytest.mark.reliability, pytest.mark.slow, full_run_only]


@pytest.mark.timeout(180)
def test_a_unique_job_id_stays_reserved_when_its_bucket_leader_is_killed(cluster, prefix) -> None:
    settings = bgjob.Settings(url=cluster.url, prefix=prefix, replicas=3, retry_for=60.0, request_timeout=3.0)
    client = bgjob.Client(settings).connect()
    try:
        assert client.send_job("report", "first", job_id="report-7", unique_for=600) == "report-7"
        bucket_stream = "KV_" + client.run(_name)
        replicas = client.run(_replicas, bucket_stream)
        assert replicas == 3
        leader = wait_until(lambda: cluster.stream_leader(bucket_stream), message="the bucket's leader")
        cluster.node_named(leader).kill()
        wait_until(lambda: cluster.stream_leader(bucket_stream) not in (None, leader), timeout=60,
                   message="a new leader of the bucket")  # fmt: skip
        # Another queue: its stream's duplicate window knows nothing of the first send; only the bucket does.
        assert client.send_job("report", "second", job_id="report-7", unique_for=600, queue="other") == "report-7"
        assert client.queue_stats().pending == 1
        assert client.queue_stats("other").pending == 0
    finally:
        client.close()


async def _name(core) -> str:
    return core.topology.stream_prefix + "UNIQUE"


async def _replicas(core, stream: str) -> int:
    return (await core.js.stream_info(stream)).config.num_replicas
