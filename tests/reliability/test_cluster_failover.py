"""Scenario 3: a 3-node nats-server cluster on loopback, replicas=3; the queue stream's leader is
SIGKILLed mid-run. Producers and workers hold all three URLs and fail over; nothing is lost."""

from __future__ import annotations

import threading
import time

import pytest

import bgjob

from ..conftest import wait_until
from .support import Cluster, Scenario, consumer_counts, done_ids, nats_call, scale, stream_name, wait_for_completion

pytestmark = [pytest.mark.reliability, pytest.mark.slow]

JOBS = scale(1000, 5000)


@pytest.mark.timeout(scale(240, 900))
def test_killing_the_stream_leader_of_a_replicated_queue_loses_no_job(cluster, prefix, workers) -> None:
    scenario = Scenario("3 cluster: kill stream leader (R3)")
    settings = bgjob.Settings(url=cluster.url, prefix=prefix, replicas=3, ack_wait=3.0, retry_for=60.0,
                              request_timeout=3.0)  # fmt: skip
    client = bgjob.Client(settings).connect()
    ids = [f"c-{i}" for i in range(JOBS)]
    returned: list[str] = []
    refused: dict[str, str] = {}

    def produce() -> None:
        for job_id in ids:
            try:
                client.send_job("work", {"ms": 2}, job_id=job_id)
            except bgjob.BgjobError as exc:
                refused[job_id] = repr(exc)
            else:
                returned.append(job_id)
            time.sleep(0.002)

    producer = threading.Thread(target=produce, daemon=True)
    try:
        client.ensure_queue()
        stream = stream_name(prefix)
        config = {"url": cluster.url, "prefix": prefix, "replicas": 3, "ack_wait": 3.0, "concurrency": 8,
                  "retry_for": 60.0}  # fmt: skip
        worker_procs = [workers.start(**config) for _ in range(2)]
        producer.start()
        wait_until(lambda: len(set(done_ids(workers.record))) >= JOBS // 3, timeout=120, message="a third done")
        leader = wait_until(lambda: cluster.stream_leader(stream), message="the stream leader")
        sent_at_kill = len(returned)
        cluster.node_named(leader).kill()
        wait_until(lambda: cluster.stream_leader(stream) not in (None, leader), timeout=60, message="a new leader")
        producer.join(scale(180, 600))
        assert not producer.is_alive(), "the producer hangs"
        result = wait_for_completion(workers.record, returned, timeout=scale(120, 300))
        scenario.report(result, note=f"{len(refused)} send errors (allowed); leader killed after {sent_at_kill} sent")
        assert not result.lost, result.lost_message() + "\n" + workers.log_tail()
        wait_until(lambda: (c := consumer_counts(cluster.url, prefix)).pending + c.ack_pending == 0,
                   timeout=60, message="an empty queue")  # fmt: skip
        assert client.dlq.count() == 0
        assert all(proc.poll() is None for proc in worker_procs), "a worker died:\n" + workers.log_tail()
    finally:
        client.close()


@pytest.mark.timeout(120)
def test_a_process_with_default_replicas_does_not_downgrade_a_replicated_queue(cluster, prefix) -> None:
    """Found here, fixed in b16c3e6: ensure_stream updated an existing stream with this process's config, so a
    worker started without BGJOB_REPLICAS silently turned the R3 queue into R1 (then one node loss took it)."""
    replicated = bgjob.Client(bgjob.Settings(url=cluster.url, prefix=prefix, replicas=3)).connect()
    careless = bgjob.Client(bgjob.Settings(url=cluster.url, prefix=prefix)).connect()  # BGJOB_REPLICAS forgotten
    try:
        replicated.ensure_queue()
        careless.ensure_queue()  # what every worker and producer does on its first use of the queue

        async def replicas(_nc: object, js: object) -> int:
            return (await js.stream_info(stream_name(prefix))).config.num_replicas  # type: ignore[attr-defined]

        assert nats_call(cluster.url, replicas) == 3
    finally:
        careless.close()
        replicated.close()



@pytest.mark.timeout(180)
def test_a_replicated_queue_is_created_once_a_missing_node_is_up_within_retry_for(tmp_path, prefix) -> None:
    """A CI run failed creating an R3 queue on a cluster whose third node was not yet a peer: the server answers
    'no suitable peers for placement' (err 10005) while fewer nodes than replicas are up, which bgjob took as a
    final refusal. It is now retried within retry_for, so a node starting late (or restarting) delays the call
    instead of failing it; a cluster that stays too small is still refused once retry_for has passed."""
    cluster = Cluster(tmp_path / "cluster")
    late = cluster.nodes[2]
    try:
        for node in cluster.nodes[:2]:  # two of three: a meta leader, but only two peers to place replicas on
            node.start(timeout=30)
        wait_until(cluster._meta_leader, timeout=60, message="a JetStream meta leader")
        client = bgjob.Client(bgjob.Settings(url=cluster.url, prefix=prefix, replicas=3, retry_for=60)).connect()
        outcome: dict[str, object] = {}

        def ensure() -> None:
            try:
                client.ensure_queue()
                outcome["ok"] = True
            except Exception as exc:  # noqa: BLE001 - reported below
                outcome["error"] = exc

        caller = threading.Thread(target=ensure, daemon=True)
        caller.start()
        try:
            caller.join(3)  # refused at once before the fix; now it keeps trying while the third node is missing
            assert caller.is_alive(), f"ensure_queue ended with two of three nodes up: {outcome}"
            late.start(timeout=30)
            caller.join(90)
            assert not caller.is_alive(), "ensure_queue hangs"
            assert outcome == {"ok": True}, outcome

            async def replicas(_nc: object, js: object) -> int:
                return (await js.stream_info(stream_name(prefix))).config.num_replicas  # type: ignore[attr-defined]

            assert nats_call(cluster.url, replicas) == 3
        finally:
            client.close()
    finally:
        cluster.stop()
