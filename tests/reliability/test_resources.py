"""Scenario 8: resource bounds. A 1 MiB arg is accepted or refused per the server's max_payload, with a
clear error; a worker's memory stays flat however many jobs are queued (it only ever holds what it
works on)."""

from __future__ import annotations

import base64
import hashlib
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import bgjob
from bgjob.server import EmbeddedServer

from ..conftest import wait_until
from .support import Scenario, done_ids, read_records, scale, stream_messages, wait_for_completion

pytestmark = [pytest.mark.reliability, pytest.mark.slow]

MIB = 1024 * 1024
QUEUED = scale(25_000, 100_000)
#: the growth of a worker's RSS allowed while it works through QUEUED jobs, after warming up on the first ones.
RSS_GROWTH_BOUND = 48 * MIB


@pytest.fixture(scope="module")
def roomy_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedServer]:
    """A server whose max_payload (8 MiB) admits a 1 MiB arg."""
    directory = tmp_path_factory.mktemp("roomy")
    (directory / "server.conf").write_text("max_payload: 8MB\n")
    server = EmbeddedServer(directory / "nats", extra_args=["-c", str(directory / "server.conf")])
    server.start(timeout=30)
    yield server
    server.stop()


def test_a_1mib_arg_is_refused_with_a_clear_error_by_a_server_with_the_default_max_payload(client) -> None:
    with pytest.raises(bgjob.InvalidJob, match=r"1048576") as refused:
        client.send_job("work", b"x" * MIB)
    assert "server accepts at most" in str(refused.value)
    with pytest.raises(bgjob.InvalidJob, match=r"job 1: .*nothing was sent"):
        client.send_jobs([("work", {"ms": 0}), ("work", b"x" * MIB)])
    assert client.queue_stats().pending == 0


@pytest.mark.timeout(120)
def test_a_1mib_arg_is_accepted_and_handled_intact_by_a_server_that_allows_it(roomy_server, prefix, workers) -> None:
    scenario = Scenario("8 1 MiB arg (max_payload 8 MiB)")
    client = bgjob.Client(bgjob.Settings(url=roomy_server.url, prefix=prefix)).connect()
    try:
        arg = bytes(range(256)) * (MIB // 256)
        job_id = client.send_job("echo", arg)
        workers.start(url=roomy_server.url, prefix=prefix)
        result = wait_for_completion(workers.record, [job_id], timeout=60)
        scenario.report(result, note="arg handed over byte for byte")
        assert not result.lost, workers.log_tail()
        recorded = read_records(workers.record)[0]["arg"]["__bytes__"]
        assert hashlib.sha256(base64.b64decode(recorded)).digest() == hashlib.sha256(arg).digest()
    finally:
        client.close()


@pytest.mark.timeout(120)
def test_a_job_just_under_max_payload_can_still_be_dead_lettered(nats_server, prefix, client, workers) -> None:
    """Found here, fixed in b16c3e6/78d6639: the DLQ copy (body + failure headers) of a job send_job had just
    accepted was over max_payload; the server closed the connection for good and the worker spun on it."""
    size = MIB
    while True:  # the largest body send_job accepts
        try:
            job_id = client.send_job("nohandler", b"x" * size)
            break
        except bgjob.InvalidJob:
            size -= 64
    worker = workers.start(url=nats_server.url, prefix=prefix)
    entry = wait_until(lambda: [e for e in client.dlq.list() if e.id == job_id], timeout=10, message="the DLQ")[0]
    assert entry.reason == "unknown_handler" and len(entry.body) == size
    later = client.send_job("work", {"ms": 0})
    assert not wait_for_completion(workers.record, [later], timeout=20).lost, "the worker still works"
    assert worker.poll() is None


def rss(pid: int) -> int:
    """Resident set size of a process, in bytes (Linux /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


@pytest.mark.timeout(scale(300, 900))
def test_a_worker_memory_stays_flat_while_it_works_through_100k_queued_jobs(nats_server, prefix, workers) -> None:
    scenario = Scenario(f"8 {QUEUED // 1000}k queued jobs, worker RSS")
    client = bgjob.Client(bgjob.Settings(url=nats_server.url, prefix=prefix)).connect()
    try:
        ids = []
        for start in range(0, QUEUED, 5000):
            ids += client.send_jobs([bgjob.JobSpec("work", {"ms": 0}, job_id=f"m-{i}")
                                     for i in range(start, min(QUEUED, start + 5000))])  # fmt: skip
        assert stream_messages(nats_server.url, prefix) == QUEUED  # no consumer yet: the worker creates it
        worker = workers.start(url=nats_server.url, prefix=prefix, concurrency=16, fsync=False)
        wait_until(lambda: len(done_ids(workers.record)) >= 2000, timeout=120, message="the worker warming up")
        warm, peak = rss(worker.pid), 0
        deadline = time.monotonic() + scale(240, 600)
        while len(done_ids(workers.record)) < QUEUED and time.monotonic() < deadline and worker.poll() is None:
            peak = max(peak, rss(worker.pid))
            time.sleep(0.5)
        result = wait_for_completion(workers.record, ids, timeout=10)
        scenario.report(result, note=f"RSS warm {warm / MIB:.0f} MiB, peak {peak / MIB:.0f} MiB "
                                     f"(bound: warm + {RSS_GROWTH_BOUND // MIB} MiB)")  # fmt: skip
        assert not result.lost, result.lost_message() + "\n" + workers.log_tail()
        assert peak - warm <= RSS_GROWTH_BOUND, f"RSS grew from {warm / MIB:.0f} MiB to {peak / MIB:.0f} MiB"
    finally:
        client.close()
