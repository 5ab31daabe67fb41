"""Placement (bgjob.placement): singleton handlers across worker processes, and jobs targeted at a claim."""

from __future__ import annotations

import itertools
import queue
import re
import signal
import subprocess
import time

import pytest

import bgjob
from bgjob.errors import ConfigurationError

from .conftest import drain, python_process, records, wait_until

SINGLETON_WORKER = r"""
import json, os, sys, time
import bgjob

url, prefix, log = sys.argv[1:4]
client = bgjob.Client(bgjob.Settings(url=url, prefix=prefix, ack_wait=2.0))  # default max_ack_pending (1000)
mux = bgjob.Mux()

def record(job, what):
    with open(log, "a") as f:
        f.write(json.dumps({"i": job.arg["i"], "attempt": job.attempt, "pid": os.getpid(), "what": what,
                            "t": time.time()}) + "\n")
        f.flush()
        os.fsync(f.fileno())

@mux.handler("one", singleton=True)
def one(job):
    record(job, "start")
    time.sleep(60 if job.arg.get("hang") and job.attempt == 1 else 0.02)
    record(job, "end")
    return bgjob.Complete()

bgjob.Worker(client, mux, concurrency=8, fetch_timeout=0.5).run()
client.close()
"""


@pytest.fixture
def processes():
    started: list[subprocess.Popen] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def test_singleton_runs_one_at_a_time_across_processes_and_a_sigkill_frees_the_slot(
    client, nats_server, prefix, tmp_path, processes
) -> None:
    log = tmp_path / "runs.jsonl"
    # the hanging job first, so the kill happens while the other 39 wait
    client.send_job("one", {"i": 0, "hang": True})
    client.send_jobs([("one", {"i": i}) for i in range(1, 40)])
    processes.extend(python_process(SINGLETON_WORKER, nats_server.url, prefix, str(log)) for _ in range(4))

    hang = wait_until(lambda: next((r for r in records(log) if r["i"] == 0 and r["what"] == "start"), None),
                      timeout=30, message="the hanging job to start")  # fmt: skip
    victim = next(p for p in processes if p.pid == hang["pid"])  # type: ignore[index]
    victim.send_signal(signal.SIGKILL)
    victim.wait(10)
    killed_at = time.time()

    def ended() -> set[int]:
        return {r["i"] for r in records(log) if r["what"] == "end"}

    wait_until(lambda: ended() == set(range(40)), timeout=60, message="all 40 singleton jobs to end")
    runs = records(log)
    starts = [r for r in runs if r["what"] == "start"]
    # each start is followed by its own end before the next start: never two at a time
    intervals = []
    for start in starts:
        same = (start["i"], start["attempt"])
        end = next((r for r in runs if r["what"] == "end" and (r["i"], r["attempt"]) == same), None)
        intervals.append((start["t"], end["t"] if end else killed_at, start["i"]))
    intervals.sort()
    for (_, first_end, first), (second_start, _, second) in itertools.pairwise(intervals):
        assert second_start >= first_end, f"jobs {first} and {second} ran at the same time"
    assert len(starts) == 41  # the killed job ran again (attempt 2), every other once
    assert [r["attempt"] for r in starts if r["i"] == 0] == [1, 2]


def test_singleton_consumer_keeps_its_cap_whatever_other_processes_set(client, make_client, start_worker) -> None:
    mux = bgjob.Mux()
    done: queue.Queue = queue.Queue()
    mux.handle("one", lambda job: done.put(job.arg) or bgjob.Complete(), singleton=True)
    start_worker(make_client(max_ack_pending=50), mux)
    client.send_job("one", 1)
    assert drain(done, 1) == [1]
    topology = client._ensure()[1].topology
    singleton_consumer = topology.singleton_consumer("default", "one")

    async def cap(core) -> int:
        info = await core.js.consumer_info(topology.queue_stream("default"), singleton_consumer)
        return info.config.max_ack_pending

    assert client.run(cap) == 1
    client.configure_queue("default", max_ack_pending=500)  # changes the main consumer only
    start_worker(make_client(), mux)  # default settings
    client.send_job("one", 2)
    assert drain(done, 1) == [2]
    assert client.run(cap) == 1


def test_a_singleton_consumer_with_another_cap_is_refused(client, make_client) -> None:
    from nats.js.api import ConsumerConfig

    topology = client._ensure()[1].topology
    client.send_job("other", None)  # makes the queue's stream

    async def widen(core) -> None:
        await core.js.add_consumer(topology.queue_stream("default"), ConsumerConfig(
            durable_name=topology.singleton_consumer("default", "one"), ack_policy="explicit",
            filter_subject=topology.singleton_subject("default", "one"), max_ack_pending=5))  # fmt: skip

    client.run(widen)
    mux = bgjob.Mux()
    mux.handle("one", lambda job: bgjob.Complete(), singleton=True)
    worker = bgjob.Worker(make_client(), mux, fetch_timeout=0.5)
    with pytest.raises(ConfigurationError, match="max_ack_pending 5, not 1"):
        worker.run()


@pytest.mark.parametrize(("lane", "changes", "message"), [
    ("singleton", {"filter_subject": "{prefix}.default.one.other"}, "filter {prefix}.default.one.other instead of"),
    ("claim", {"filter_subject": "{prefix}.default.target.other.>"}, "filter {prefix}.default.target.other.> instead"),
    ("singleton", {"deliver_subject": "somewhere"}, "a push consumer (deliver subject somewhere)"),
    ("main", {"filter_subject": "{prefix}.default.job.other"}, "filter {prefix}.default.job.other instead of"),
])  # fmt: skip
def test_a_consumer_an_operator_made_otherwise_is_refused_naming_the_fix(client, make_client, prefix, lane, changes,
                                                                         message) -> None:  # fmt: skip
    """Regression (attacker): a singleton consumer pre-created with max_ack_pending=1 but another filter was taken
    as it was, and the singleton job never ran (ROUTED 1 for ever). The kind: any lane's or the main consumer's
    filter, or push delivery (a work-queue stream refuses other ack policies itself). The worker refuses to
    start, naming what differs and the command that fixes it."""
    from nats.js.api import ConsumerConfig

    topology = client._ensure()[1].topology
    client.send_job("other", None)  # makes the queue's stream
    name, subject = {"singleton": (topology.singleton_consumer("default", "one"),
                                   topology.singleton_subject("default", "one")),
                     "claim": (topology.target_consumer("default", "primary"),
                               topology.target_filter("default", "primary")),
                     "main": (f"{prefix}-default", topology.job_filter("default"))}[lane]  # fmt: skip
    config = {"durable_name": name, "ack_policy": "explicit", "filter_subject": subject, "max_ack_pending": 1}
    config.update({k: v.format(prefix=prefix) for k, v in changes.items()})

    async def precreate(core) -> None:
        await core.js.add_consumer(topology.queue_stream("default"), ConsumerConfig(**config))

    client.run(precreate)
    mux = bgjob.Mux()
    mux.handle("one", lambda job: bgjob.Complete(), singleton=True)
    worker = bgjob.Worker(make_client(), mux, fetch_timeout=0.5, claims=["primary"])
    with pytest.raises(ConfigurationError, match=re.escape(message.format(prefix=prefix))) as raised:
        worker.run()
    assert f"nats consumer rm {topology.queue_stream('default')} {name}" in str(raised.value)


def test_a_targeted_job_waits_for_a_worker_holding_its_claim(client, make_client, start_worker) -> None:
    ran: queue.Queue = queue.Queue()
    mux = bgjob.Mux()

    def placed(job: bgjob.Job) -> bgjob.Result:
        ran.put((job.arg, job.attempt, job.headers.get("X-Worker")))
        return bgjob.Retry(0.05) if job.arg == "flaky" and job.attempt == 1 else bgjob.Complete()

    mux.handle("placed", placed)
    mux.handle("plain", lambda job: ran.put((job.arg, job.attempt, None)) or bgjob.Complete())
    placed_id = client.send_job("placed", "eu", target="region/eu")
    client.send_job("placed", "flaky", target="primary")
    start_worker(make_client(), mux)  # holds no claim
    client.send_job("plain", "first")
    assert drain(ran, 1) == [("first", 1, None)]  # the unclaimed worker ran the plain job, not the placed ones
    assert ran.empty()

    start_worker(make_client(), mux, claims=["primary"])
    got = drain(ran, 2)
    assert sorted(got) == [("flaky", 1, None), ("flaky", 2, None)]  # its retry kept the target
    assert ran.empty()  # "region/eu" still waits

    start_worker(make_client(), mux, claims=["region/eu"])
    assert drain(ran, 1) == [("eu", 1, None)]
    assert placed_id


def test_claims_and_targets_are_checked() -> None:
    settings = bgjob.Settings(prefix="x")
    with pytest.raises(bgjob.InvalidJob, match="invalid claim"):
        bgjob.codec.prepare_job(settings, "t", None, target="a.b")
    subject, _, headers, _ = bgjob.codec.prepare_job(settings, "t", None, target="region/eu")
    assert subject == "x.default.target.region/eu.t" and headers["Bgjob-Target"] == "region/eu"
    with pytest.raises(bgjob.InvalidJob):
        bgjob.Worker(bgjob.Client(settings), bgjob.Mux(), claims=["no spaces"])
    with pytest.raises(TypeError):
        bgjob.Worker(bgjob.Client(settings), bgjob.Mux(), claims="primary")  # type: ignore[arg-type]


def test_job_type_of_reads_every_ready_subject() -> None:
    from bgjob.topology import Topology

    t = Topology("p")
    assert t.job_type_of("q", t.job_subject("q", "a.b")) == "a.b"
    assert t.job_type_of("q", t.singleton_subject("q", "a.b")) == "a.b"
    assert t.job_type_of("q", t.target_subject("q", "region/eu", "a.b")) == "a.b"
    assert t.singleton_consumer("q", "a.b") != t.singleton_consumer("q", "a_b")
    assert "/" not in t.target_consumer("q", "region/eu") and "." not in t.singleton_consumer("q", "a.b")


def _keys_in_distinct_partitions(count: int) -> list[str]:
    from bgjob.topology import partition_of

    keys: dict[int, str] = {}
    for i in range(1000):
        keys.setdefault(partition_of(f"customer-{i}"), f"customer-{i}")
        if len(keys) == count:
            break
    return list(keys.values())


def test_partitioned_jobs_run_in_send_order_per_key_and_keys_in_parallel(make_client, start_worker) -> None:
    import threading

    keys = _keys_in_distinct_partitions(3)
    runs: list[tuple[str, int, int, str]] = []  # (key, n, attempt, "start"/"end") in the order they happened
    lock = threading.Lock()
    together = threading.Barrier(3, timeout=20)  # the first job of every key waits for the others': in parallel
    running: dict[str, int] = {}

    def handler(job: bgjob.Job) -> bgjob.Result:
        key, n = job.arg["key"], job.arg["n"]
        with lock:
            runs.append((key, n, job.attempt, "start"))
            running[key] = running.get(key, 0) + 1
            assert running[key] == 1, f"two jobs of {key} at once"
        try:
            if n == 0:
                together.wait()
            if n == 50 and job.attempt == 1:
                return bgjob.Retry(0.05)  # fails once: the key's order must hold across the retry
            return bgjob.Complete()
        finally:
            with lock:
                running[key] -= 1
                runs.append((key, n, job.attempt, "end"))

    mux = bgjob.Mux()
    mux.handle("ordered", handler, partitioned=True)
    client = make_client()
    client.send_jobs([bgjob.JobSpec("ordered", {"key": k, "n": n}, partition_key=k) for n in range(100) for k in keys])
    for _ in range(4):
        start_worker(make_client(), mux, concurrency=4)
    wait_until(lambda: sum(1 for r in runs if r[3] == "end") == 303, timeout=60,
               message="300 jobs and one retry of each key's 51st")  # fmt: skip
    for key in keys:
        starts = [(n, attempt) for k, n, attempt, what in runs if k == key and what == "start"]
        assert starts == [(n, 1) for n in range(51)] + [(50, 2)] + [(n, 1) for n in range(51, 100)], key
    assert not together.broken


def test_a_worker_logs_one_start_line_for_its_partitions_and_one_per_other_lane(client, start_worker,
                                                                               caplog) -> None:  # fmt: skip
    import logging

    caplog.set_level(logging.INFO, logger="bgjob.worker")
    mux = bgjob.Mux()
    mux.handle("ordered", lambda job: bgjob.Complete(), partitioned=True)
    mux.handle("one", lambda job: bgjob.Complete(), singleton=True)
    start_worker(client, mux, claims=["primary"])
    started = sorted(r.getMessage().split(":")[0] for r in caplog.records
                     if r.levelno == logging.INFO and r.getMessage().startswith("worker on queue"))  # fmt: skip
    assert started == ["worker on queue 'default'", "worker on queue 'default' (claim 'primary')",
                       "worker on queue 'default' (partitions)",
                       "worker on queue 'default' (singleton 'one')"]  # fmt: skip
    assert "serving 16 partitions" in caplog.text


def test_a_partitioned_type_sent_without_a_partition_key_runs_and_is_warned_about_once(client, start_worker,
                                                                                       caplog) -> None:  # fmt: skip
    import logging

    caplog.set_level(logging.WARNING, logger="bgjob.worker")
    ran: queue.Queue = queue.Queue()
    mux = bgjob.Mux()
    mux.handle("ordered", lambda job: ran.put(job.arg) or bgjob.Complete(), partitioned=True)
    start_worker(client, mux)
    keyed = client.send_job("ordered", "keyed", partition_key="customer-1")
    assert drain(ran, 1) == ["keyed"]
    assert "no partition_key" not in caplog.text
    first = client.send_job("ordered", 0)
    assert drain(ran, 1) == [0]
    client.send_jobs([("ordered", n) for n in range(1, 4)])
    assert sorted(drain(ran, 3)) == [1, 2, 3]
    warned = [r.getMessage() for r in caplog.records if "no partition_key" in r.getMessage()]
    assert warned == [f"job type 'ordered' is partitioned but job {first} has no partition_key: it runs unordered; "
                      "send it with partition_key= (logged once per type)"] and keyed != first  # fmt: skip


def test_a_partitioned_job_that_keeps_failing_blocks_its_key_until_it_is_dead_lettered(client, start_worker) -> None:
    """Issue 18: a failing job blocks its key until it succeeds or is dead-lettered; then the key goes on, in send
    order. Its retries are naks (never republished behind the next job of its key)."""
    runs: queue.Queue = queue.Queue()
    mux = bgjob.Mux()

    def handler(job: bgjob.Job) -> bgjob.Result:
        runs.put((job.arg, job.attempt))
        if job.arg == 2:
            raise RuntimeError("always fails")
        return bgjob.Complete()

    mux.handle("ordered", handler, partitioned=True)
    failing = None
    for n in range(5):
        job_id = client.send_job("ordered", n, partition_key="customer-7")
        failing = job_id if n == 2 else failing
    start_worker(client, mux, concurrency=4)  # retry policy: 3 attempts, 0.05 s apart
    assert drain(runs, 7) == [(0, 1), (1, 1), (2, 1), (2, 2), (2, 3), (3, 1), (4, 1)]
    entry = wait_until(lambda: next(iter(client.dlq.list(limit=5)), None), message="the dead letter")
    assert (entry.id, entry.attempts) == (failing, 3)
