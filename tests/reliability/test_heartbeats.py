"""Scenario 5: jobs that run far beyond ack_wait are kept alive by heartbeats while their worker lives,
and are redelivered soon after ack_wait once it dies."""

from __future__ import annotations

import collections
import time

import pytest

import bgjob

from ..conftest import wait_until
from .support import Scenario, read_records, scale, tally, wait_for_completion

pytestmark = [pytest.mark.reliability, pytest.mark.slow]

ACK_WAIT = 2.0
LONG_JOBS = scale(6, 16)
RUN_FOR = 4 * ACK_WAIT


@pytest.mark.timeout(scale(180, 600))
def test_long_jobs_are_not_redelivered_while_their_worker_lives(nats_server, prefix, workers) -> None:
    scenario = Scenario("5a long jobs (4x ack_wait), 2 workers")
    client = bgjob.Client(bgjob.Settings(url=nats_server.url, prefix=prefix, ack_wait=ACK_WAIT)).connect()
    config = {"url": nats_server.url, "prefix": prefix, "ack_wait": ACK_WAIT, "concurrency": LONG_JOBS}
    try:
        procs = [workers.start(**config) for _ in range(2)]  # a redelivery would have somewhere to go
        ids = client.send_jobs([bgjob.JobSpec("slow", {"s": RUN_FOR}, job_id=f"long-{i}") for i in range(LONG_JOBS)])
        result = wait_for_completion(workers.record, ids, timeout=RUN_FOR + 60)
        records = read_records(workers.record)
        starts = collections.Counter(r["id"] for r in records if r["ev"] == "start")
        scenario.report(result, note=f"ack_wait {ACK_WAIT:g} s, jobs run {RUN_FOR:g} s; starts {sum(starts.values())}")
        assert not result.lost, result.lost_message() + "\n" + workers.log_tail()
        assert starts == {job_id: 1 for job_id in ids}, "a job was redelivered while its worker lived"
        assert all(r["attempt"] == 1 for r in records)
        assert all(proc.poll() is None for proc in procs)
        assert client.dlq.count() == 0
    finally:
        client.close()


@pytest.mark.timeout(180)
def test_a_long_job_is_redelivered_promptly_when_its_worker_dies(nats_server, prefix, workers) -> None:
    scenario = Scenario("5b long job, its worker SIGKILLed")
    client = bgjob.Client(bgjob.Settings(url=nats_server.url, prefix=prefix, ack_wait=ACK_WAIT)).connect()
    config = {"url": nats_server.url, "prefix": prefix, "ack_wait": ACK_WAIT, "concurrency": 2}
    try:
        procs = {proc.pid: proc for proc in (workers.start(**config), workers.start(**config))}
        job_id = client.send_job("slow", {"s": 600, "first_only": True}, job_id="orphan")
        first = wait_until(lambda: read_records(workers.record), timeout=60, message="the job to start")[0]
        time.sleep(2 * ACK_WAIT)  # heartbeats keep it with its worker meanwhile
        assert [r["ev"] for r in read_records(workers.record)] == ["start"]
        killed_at = time.monotonic()
        workers.kill(procs.pop(first["pid"]))
        # Redelivered after ack_wait (2 s); the bound only guards against "never" on a loaded machine.
        result = wait_for_completion(workers.record, [job_id], timeout=30 * ACK_WAIT)
        waited = time.monotonic() - killed_at
        scenario.report(result, note=f"redelivered {waited:.1f} s after the kill (ack_wait {ACK_WAIT:g} s)")
        assert not result.lost, result.lost_message() + "\n" + workers.log_tail()
        done = [r for r in read_records(workers.record) if r["ev"] == "done"]
        assert [(r["attempt"], r["pid"]) for r in done] == [(2, next(iter(procs)))]
        assert tally([job_id], [r["id"] for r in done]).duplicated == 0
        assert client.dlq.count() == 0
    finally:
        client.close()
