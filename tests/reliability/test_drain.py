"""Scenario 4: SIGTERM drains a worker process. In-flight jobs that can finish within the grace period
finish (and are acked); those that cannot are handed back for redelivery at once; nothing that did not
complete is acked."""

from __future__ import annotations

import signal
import subprocess

import pytest

import bgjob

from ..conftest import wait_until
from .support import Scenario, queued_ids, read_records, scale, tally, wait_for_completion

pytestmark = [pytest.mark.reliability, pytest.mark.slow]

SHORT = scale(24, 120)
LONG = 3
GRACE = 3.0
#: far beyond the test: a job still unacked when the worker exits was handed back, not left to expire.
ACK_WAIT = 120.0


@pytest.mark.timeout(scale(180, 600))
def test_sigterm_finishes_in_flight_jobs_and_hands_back_those_that_cannot_finish(nats_server, prefix, workers) -> None:
    scenario = Scenario("4 SIGTERM drain")
    client = bgjob.Client(bgjob.Settings(url=nats_server.url, prefix=prefix, ack_wait=ACK_WAIT)).connect()
    config = {"url": nats_server.url, "prefix": prefix, "ack_wait": ACK_WAIT, "concurrency": 8, "grace_period": GRACE}
    try:
        # The long ones go first so they are in flight when SIGTERM comes; they only take long on attempt 1.
        long_ids = client.send_jobs([bgjob.JobSpec("slow", {"s": 600, "first_only": True}, job_id=f"long-{i}")
                                     for i in range(LONG)])  # fmt: skip
        short_ids = client.send_jobs([bgjob.JobSpec("slow", {"s": 0.2 + (i % 5) * 0.2}, job_id=f"short-{i}")
                                      for i in range(SHORT)])  # fmt: skip
        ids = long_ids + short_ids
        first = workers.start(**config)
        wait_until(lambda: len({r["id"] for r in read_records(workers.record)}) >= 8, timeout=60,
                   message="a full worker")  # fmt: skip
        first.send_signal(signal.SIGTERM)
        try:
            assert first.wait(GRACE + 30) == 0, "the draining worker did not exit cleanly:\n" + workers.log_tail()
        except subprocess.TimeoutExpired:
            pytest.fail("the draining worker did not exit:\n" + workers.log_tail())

        run1 = read_records(workers.record)
        started = {r["id"] for r in run1 if r["ev"] == "start"}
        finished = {r["id"] for r in run1 if r["ev"] == "done"}
        assert set(long_ids) <= started, "the long jobs were in flight"
        assert not finished & set(long_ids)
        assert started - set(long_ids) <= finished, "an in-flight job that could finish within the grace period"
        # Acked = gone from the WorkQueue stream: exactly the finished ones.
        assert sorted(queued_ids(nats_server.url, prefix)) == sorted(set(ids) - finished)
        # Handed back with a nak: the next worker gets them at once, not after ack_wait (120 s).
        second = workers.start(**config)
        result = wait_for_completion(workers.record, ids, timeout=ACK_WAIT / 3)
        scenario.report(result, note=f"{len(finished)} finished while draining, {LONG} handed back")
        assert not result.lost, result.lost_message() + "\n" + workers.log_tail()
        assert result.duplicated == 0, "a drained job ran twice"
        attempts = {r["id"]: r["attempt"] for r in read_records(workers.record) if r["ev"] == "done"}
        assert all(attempts[i] == 2 for i in long_ids)
        assert client.dlq.count() == 0
        second.send_signal(signal.SIGTERM)
        assert second.wait(GRACE + 30) == 0
        assert tally(ids, [r["id"] for r in read_records(workers.record) if r["ev"] == "done"]).duplicated == 0
    finally:
        client.close()
