"""Scenario 2: nats-server (file storage) is SIGKILLed and restarted while jobs are sent and processed.

A producer either gets a PubAck (send_job returns; send_jobs returns or names the job in
SendJobsError.stored) or an error; every job confirmed that way must be processed.
"""

from __future__ import annotations

import random
import threading
import time

import pytest

import bgjob

from ..conftest import wait_until
from .support import Scenario, consumer_counts, done_ids, scale, wait_for_completion

pytestmark = [pytest.mark.reliability, pytest.mark.slow]

JOBS = scale(1000, 4000)
KILLS = scale(3, 8)


@pytest.mark.timeout(scale(240, 900))
def test_server_sigkills_during_sending_and_processing_lose_no_acknowledged_job(own_server, prefix, workers) -> None:
    scenario = Scenario(f"2 nats-server SIGKILL x{KILLS}")
    rng = random.Random(2)
    settings = bgjob.Settings(url=own_server.url, prefix=prefix, ack_wait=2.0, retry_for=30.0, request_timeout=2.0)
    client = bgjob.Client(settings).connect()
    returned: list[str] = []
    refused: dict[str, str] = {}
    lock = threading.Lock()

    def job_type(job_id: str) -> str:  # one job in 25 goes to the DLQ on purpose
        return "dead" if int(job_id.split("-")[1]) % 25 == 0 else "work"

    def produce_one_by_one(ids: list[str]) -> None:
        for job_id in ids:
            try:
                client.send_job(job_type(job_id), {"ms": rng.randint(0, 20)}, job_id=job_id)
            except bgjob.BgjobError as exc:  # allowed: an error, never a silent loss
                with lock:
                    refused[job_id] = repr(exc)
            else:
                with lock:
                    returned.append(job_id)

    def produce_in_batches(ids: list[str]) -> None:
        for start in range(0, len(ids), 25):
            batch = ids[start : start + 25]
            try:
                client.send_jobs([bgjob.JobSpec(job_type(job_id), {"ms": 5}, job_id=job_id) for job_id in batch])
            except bgjob.SendJobsError as exc:  # stored ones must run; not_stored ones may or may not
                with lock:
                    returned.extend(exc.stored)
                    refused.update((job_id, repr(exc)) for job_id in exc.not_stored)
            else:
                with lock:
                    returned.extend(batch)
            time.sleep(0.005)

    ids = [f"s-{i}" for i in range(JOBS)]
    producers = [threading.Thread(target=produce_one_by_one, args=(ids[0::2],), daemon=True),
                 threading.Thread(target=produce_in_batches, args=(ids[1::2],), daemon=True)]  # fmt: skip
    try:
        for producer in producers:
            producer.start()
        worker = workers.start(url=own_server.url, prefix=prefix, ack_wait=2.0, concurrency=8)
        for kill in range(KILLS):
            sent_target = (kill + 1) * JOBS // (KILLS + 2)
            wait_until(lambda t=sent_target: len(returned) >= t, timeout=120, message=f"{sent_target} jobs sent")
            wait_until(lambda: done_ids(workers.record), timeout=60, message="the worker processing")
            time.sleep(rng.uniform(0, 0.3))
            own_server.kill()
            time.sleep(rng.uniform(0.2, 1.5))  # producers and the worker retry meanwhile
            own_server.start(timeout=30)
        for producer in producers:
            producer.join(180)
            assert not producer.is_alive(), "a producer hangs"
        result = wait_for_completion(workers.record, returned, timeout=scale(90, 300))
        scenario.report(result, note=f"{len(refused)} send_job errors (allowed), {KILLS} kills")
        assert not result.lost, result.lost_message() + "\n" + workers.log_tail()
        assert len(returned) + len(refused) == JOBS
        wait_until(lambda: (c := consumer_counts(own_server.url, prefix)).pending + c.ack_pending == 0,
                   timeout=60, message="an empty queue")  # fmt: skip
        # In the DLQ: every confirmed job of type "dead", once; nothing else (a refused one may be there too).
        dead = {job_id for job_id in ids if job_type(job_id) == "dead"}
        in_dlq = [e.id for e in client.dlq.list(limit=10 * len(dead))]
        assert len(in_dlq) == len(set(in_dlq)), "a job was dead-lettered twice"
        assert set(in_dlq) <= dead and dead & set(returned) <= set(in_dlq)
        assert worker.poll() is None, "the worker died:\n" + workers.log_tail()
    finally:
        client.close()
