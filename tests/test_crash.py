"""Crash windows and server restarts with real processes: a crash yields a duplicate, never a loss."""

from __future__ import annotations

import json
import queue
import signal
import subprocess
import threading
from pathlib import Path

import pytest

import bgjob

from .conftest import drain, python_process, wait_until

WORKER = r"""
import json, os, sys
import bgjob
from nats.aio.msg import Msg
from bgjob.worker import Worker
from bgjob.worker.loop import FetchLoop

url, prefix, crash_at, log = sys.argv[1:5]
client = bgjob.Client(bgjob.Settings(url=url, prefix=prefix, ack_wait=2.0))
mux = bgjob.Mux()

def record(job, what):
    with open(log, "a") as f:
        f.write(json.dumps({"id": job.id, "attempt": job.attempt, "arg": job.arg, "what": what}) + "\n")
        f.flush()
        os.fsync(f.fileno())

@mux.handler("complete")
def complete(job):
    record(job, "complete")
    return bgjob.Complete()

@mux.handler("dead")
def dead(job):
    record(job, "dead")
    return bgjob.MoveToDlq("nope")

@mux.handler("again")
def again(job):
    record(job, "again")
    if job.arg["n"] == 0:
        return bgjob.Reschedule(bgjob.ByAfterTime(5.0), arg={"n": 1})
    return bgjob.Complete()

@mux.handler("hang")
def hang(job):
    record(job, "hang")
    import time
    time.sleep(60)
    return bgjob.Complete()

def crash(*args, **kwargs):
    os._exit(9)

if crash_at == "ack":          # after the handler returned and any publish, before the ack
    Msg.ack = crash
elif crash_at == "term":       # after the DLQ publish, before the term
    Msg.term = crash
elif crash_at == "settle":     # after the handler returned, before anything is sent
    FetchLoop._settle_completed = crash

Worker(client, mux, fetch_timeout=0.5).run()
client.close()
"""


def records(log: Path) -> list[dict]:
    if not log.exists():
        return []
    return [json.loads(line) for line in log.read_text().splitlines()]


@pytest.fixture
def worker_process(nats_server, prefix, tmp_path):
    started: list[subprocess.Popen] = []
    log = tmp_path / "runs.jsonl"

    def start(crash_at: str = "none") -> subprocess.Popen:
        proc = python_process(WORKER, nats_server.url, prefix, crash_at, str(log))
        started.append(proc)
        return proc

    start.log = log  # type: ignore[attr-defined]
    yield start
    for proc in started:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()


@pytest.mark.parametrize("crash_at", ["settle", "ack"])
def test_crash_between_handler_return_and_ack_redelivers_the_job(client, worker_process, crash_at) -> None:
    log = worker_process.log
    crashing = worker_process(crash_at)
    job_id = client.send_job("complete", {"n": 1})
    assert crashing.wait(30) == 9
    assert [(r["id"], r["attempt"]) for r in records(log)] == [(job_id, 1)]

    survivor = worker_process()
    wait_until(lambda: len(records(log)) == 2, timeout=30, message="redelivery")
    assert [(r["id"], r["attempt"]) for r in records(log)] == [(job_id, 1), (job_id, 2)]
    wait_until(lambda: client.queue_stats().pending + client.queue_stats().in_flight == 0, message="ack")
    survivor.send_signal(signal.SIGTERM)
    assert survivor.wait(20) == 0


def test_crash_between_dlq_publish_and_term_leaves_one_dead_letter(client, worker_process) -> None:
    log = worker_process.log
    crashing = worker_process("term")
    job_id = client.send_job("dead", None)
    assert crashing.wait(30) == 9
    assert client.dlq.count() == 1  # published before the crash

    worker_process()
    wait_until(lambda: len(records(log)) == 2, timeout=30, message="redelivery")
    wait_until(lambda: client.queue_stats().in_flight + client.queue_stats().pending == 0, message="term")
    assert client.dlq.count() == 1  # the second move was deduplicated
    assert client.dlq.get(job_id).reason == "handler"


def test_crash_between_reschedule_publish_and_ack_runs_the_next_run_once(client, worker_process) -> None:
    log = worker_process.log
    crashing = worker_process("ack")
    job_id = client.send_job("again", {"n": 0})
    assert crashing.wait(30) == 9
    assert client.queue_stats().scheduled == 1

    worker_process()
    wait_until(lambda: any(r["arg"] == {"n": 1} for r in records(log)), timeout=30, message="next run")
    wait_until(lambda: client.queue_stats().pending + client.queue_stats().in_flight == 0, message="ack")
    runs = [(r["id"], r["arg"]["n"], r["attempt"]) for r in records(log)]
    assert runs == [(job_id, 0, 1), (job_id, 0, 2), (job_id, 1, 1)]
    assert client.queue_stats().scheduled == 0  # the repeated Reschedule replaced the first


def test_worker_killed_mid_job_is_redelivered_to_the_next_worker(client, worker_process) -> None:
    log = worker_process.log
    first = worker_process()
    job_id = client.send_job("hang", None)
    wait_until(lambda: records(log), timeout=30, message="job started")
    first.send_signal(signal.SIGKILL)
    first.wait(10)
    second = worker_process()
    wait_until(lambda: len(records(log)) == 2, timeout=30, message="redelivery")
    assert [(r["id"], r["attempt"]) for r in records(log)] == [(job_id, 1), (job_id, 2)]
    second.kill()  # its handler hangs for a minute; nothing to drain


def test_sigterm_drains_the_worker_process(client, worker_process) -> None:
    log = worker_process.log
    proc = worker_process()
    ids = [client.send_job("complete", i) for i in range(20)]
    wait_until(lambda: len(records(log)) == 20, timeout=30, message="20 jobs")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(20) == 0
    assert sorted(r["id"] for r in records(log)) == sorted(ids)


def test_no_job_lost_across_a_server_restart_with_file_storage(own_server, prefix) -> None:
    client = bgjob.Client(bgjob.Settings(url=own_server.url, prefix=prefix, retry_for=20.0)).connect()
    try:
        before = [client.send_job("complete", i) for i in range(50)]
        own_server.kill()
        sent_during: list[str] = []
        sender = threading.Thread(target=lambda: sent_during.append(client.send_job("complete", "during")))
        sender.start()  # blocks in tenacity retries until the server is back
        own_server.restart()
        sender.join(30)
        assert len(sent_during) == 1, "send_job during the outage neither returned nor raised"
        after = [client.send_job("complete", i) for i in range(50, 100)]

        got: queue.Queue = queue.Queue()
        mux = bgjob.Mux()
        mux.handle("complete", lambda job: got.put(job.id) or bgjob.Complete())
        worker = bgjob.Worker(client, mux, fetch_timeout=0.5)
        thread = worker.start()
        done = drain(got, 101, timeout=30)
        worker.stop()
        thread.join(20)
        assert sorted(done) == sorted(before + sent_during + after)
    finally:
        client.close()
