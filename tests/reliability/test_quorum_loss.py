"""Scenario 10: a 3-node cluster loses two nodes (SIGKILL), so the replicas=3 queue stream and its consumer have
no quorum, for ~10 s; then both come back. The worker, holding all three URLs, waits the outage out: it says that
JetStream is not answering (503 no responders), does not re-create its stream or consumer, and afterwards every
job sent before and after the outage is done, none lost, the stream still R3."""

from __future__ import annotations

import random
import time

import pytest

import bgjob

from ..conftest import wait_until
from .support import (
    Cluster,
    Scenario,
    consumer_counts,
    consumer_name,
    done_ids,
    nats_call,
    scale,
    stream_name,
    wait_for_completion,
)

pytestmark = [pytest.mark.reliability, pytest.mark.slow]

#: jobs sent before the outage (about a third run before it starts) and again after it.
JOBS = scale(300, 2000)
#: seconds the two nodes stay down.
OUTAGE = scale(5, 30)
#: what the worker says when a pull gets 503 and JetStream does not answer (bgjob/worker/loop.py).
UNAVAILABLE = "JetStream is not answering pull requests (503 no responders"
RECOVERED = "JetStream answers again after"
#: what it says when it re-creates its stream and consumer, which it must not do here.
REPROVISIONING = ("creating it again", "re-creating")


def replicas(cluster: Cluster, stream: str) -> tuple[int, int]:
    """(configured replicas, peers that are current: the leader and the replicas caught up with it)."""

    async def ask(_nc: object, js: object) -> tuple[int, int]:
        info = await js.stream_info(stream)  # type: ignore[attr-defined]
        current = [peer for peer in info.cluster.replicas or [] if peer.current and not peer.offline]
        return info.config.num_replicas, (1 if info.cluster.leader else 0) + len(current)

    try:
        return nats_call(cluster.url, ask)
    except Exception:  # noqa: BLE001 - no leader to answer yet
        return 0, 0


@pytest.mark.timeout(scale(180, 600))
def test_a_worker_waits_out_a_cluster_without_quorum_and_loses_no_job(cluster, prefix, workers) -> None:
    scenario = Scenario("10 cluster: quorum loss (2 of 3 nodes down)")
    rng = random.Random(10)
    settings = bgjob.Settings(url=cluster.url, prefix=prefix, replicas=3, ack_wait=3.0, retry_for=60.0,
                              request_timeout=3.0)  # fmt: skip
    client = bgjob.Client(settings).connect()
    stream, consumer = stream_name(prefix), consumer_name(prefix)

    def jobs(tag: str) -> list[bgjob.JobSpec]:
        return [bgjob.JobSpec("work", {"ms": rng.randint(20, 100)}, job_id=f"{tag}-{i}") for i in range(JOBS)]

    try:
        client.ensure_queue()
        config = {"url": cluster.url, "prefix": prefix, "replicas": 3, "ack_wait": 3.0, "concurrency": 8,
                  "retry_for": 60.0, "debug": ["bgjob.worker"]}  # fmt: skip
        worker = workers.start(**config)
        log = workers.logs / "worker-0.log"
        before = client.send_jobs(jobs("before"))
        wait_until(lambda: len(set(done_ids(workers.record))) >= JOBS // 3, timeout=60, message="a third done")

        # Take down the consumer's leader and the stream's (or another node): the survivor leads neither.
        consumer_leader = wait_until(lambda: cluster.consumer_leader(stream, consumer), message="the consumer leader")
        stream_leader = wait_until(lambda: cluster.stream_leader(stream), message="the stream leader")
        victims = [cluster.node_named(consumer_leader)]
        victims.append(next(n for n in cluster.nodes if n not in victims and (
            n.name == stream_leader or stream_leader == consumer_leader)))  # fmt: skip
        back_at = time.monotonic() + OUTAGE
        for node in victims:
            node.kill()
        done_at_kill = len(set(done_ids(workers.record)))
        wait_until(lambda: UNAVAILABLE in log.read_text(errors="replace"), timeout=OUTAGE + 30,
                   message="the worker saying JetStream is not answering")  # fmt: skip
        time.sleep(max(0.0, back_at - time.monotonic()))  # the outage lasts OUTAGE seconds whatever the worker does
        outage_log = log.read_text(errors="replace")
        for node in victims:
            node.start(timeout=30)
        wait_until(lambda: cluster.stream_leader(stream) and cluster.consumer_leader(stream, consumer), timeout=60,
                   message="stream and consumer leaders after the restart")  # fmt: skip

        after = client.send_jobs(jobs("after"))
        result = wait_for_completion(workers.record, before + after, timeout=scale(90, 300))
        scenario.report(result, note=f"{OUTAGE} s outage, {done_at_kill} of {JOBS} done when it began")
        text = log.read_text(errors="replace")
        assert not result.lost, result.lost_message() + "\n" + workers.log_tail(60)
        assert UNAVAILABLE in outage_log
        # It backs off between attempts (about one a second) instead of asking in a tight loop: before the back-off
        # was added a 10 s outage took ~1,100 pull + consumer-info rounds (each one a DEBUG line at this level).
        rounds = outage_log.count(UNAVAILABLE)
        assert rounds <= 3 * OUTAGE, f"{rounds} rounds of pull requests in a {OUTAGE} s outage: no back-off"
        assert RECOVERED in text, workers.log_tail(60)
        reprovisioned = [line for line in text.splitlines() if any(s in line for s in REPROVISIONING)]
        assert not reprovisioned, "the worker re-created its stream/consumer during the outage:\n" + "\n".join(
            reprovisioned[:10])  # fmt: skip
        wait_until(lambda: replicas(cluster, stream) == (3, 3), timeout=60, message="R3 with three current peers")
        wait_until(lambda: (c := consumer_counts(cluster.url, prefix)).pending + c.ack_pending == 0,
                   timeout=60, message="an empty queue")  # fmt: skip
        assert client.dlq.count() == 0
        assert worker.poll() is None, "the worker died:\n" + workers.log_tail(60)
    finally:
        client.close()
