"""Scenario 1: the worker process is SIGKILLed again and again mid-run and restarted each time."""

from __future__ import annotations

import random
import threading
import time

import pytest

import bgjob

from ..conftest import wait_until
from .support import Scenario, consumer_counts, done_ids, scale, wait_for_completion

pytestmark = [pytest.mark.reliability, pytest.mark.slow]

JOBS = scale(2000, 5000)
KILLS = scale(5, 10)


@pytest.mark.timeout(scale(240, 900))
def test_repeated_worker_sigkills_lose_no_job(nats_server, prefix, workers) -> None:
    scenario = Scenario(f"1 worker SIGKILL x{KILLS}")
    rng = random.Random(1)
    # One job in 25 goes to the DLQ on purpose: the DLQ must hold exactly those, once each.
    jobs = [bgjob.JobSpec("dead" if i % 25 == 0 else "work", {"ms": rng.randint(0, 50)}, job_id=f"k-{i}")
            for i in range(JOBS)]  # fmt: skip
    ids = [spec.job_id for spec in jobs]
    dead = [spec.job_id for spec in jobs if spec.type == "dead"]
    config = {"url": nats_server.url, "prefix": prefix, "ack_wait": 2.0, "concurrency": 16}
    client = bgjob.Client(bgjob.Settings(url=nats_server.url, prefix=prefix, ack_wait=2.0)).connect()
    sent: list[str] = []

    def produce() -> None:  # the producer keeps sending while workers die
        for start in range(0, JOBS, 50):
            sent.extend(client.send_jobs(jobs[start : start + 50]))
            time.sleep(0.01)

    producer = threading.Thread(target=produce, daemon=True)
    try:
        producer.start()
        worker = workers.start(**config)
        for kill in range(KILLS):
            threshold = (kill + 1) * JOBS // (KILLS + 1)
            wait_until(lambda t=threshold: len(set(done_ids(workers.record))) >= t, timeout=120,
                       message=f"{threshold} jobs done before kill {kill + 1}")  # fmt: skip
            time.sleep(rng.uniform(0, 0.2))  # land anywhere in a handler, a settle or a fetch
            workers.kill(worker)
            worker = workers.start(**config)
        producer.join(120)
        assert sent == ids, "the producer did not finish"
        result = wait_for_completion(workers.record, ids, timeout=scale(120, 300))
        scenario.report(result, note=f"{KILLS} kills, handlers 0-50 ms, ack_wait 2 s, {len(dead)} to the DLQ")
        assert not result.lost, result.lost_message() + "\n" + workers.log_tail()
        wait_until(lambda: (c := consumer_counts(nats_server.url, prefix)).pending + c.ack_pending == 0,
                   timeout=30, message="an empty queue")  # fmt: skip
        entries = client.dlq.list(limit=10 * len(dead))
        assert sorted(e.id for e in entries) == sorted(dead), "the DLQ holds exactly the dead-lettered jobs, once each"
        assert {e.reason for e in entries} == {"handler"}
        assert worker.poll() is None, "the last worker died:\n" + workers.log_tail()
    finally:
        client.close()
