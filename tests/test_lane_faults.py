"""Faults in the singleton/partition lanes and in claims callables, found by an attacker (issue 18).

- A worker frozen (SIGSTOP) past ack_wait while running a singleton's or partition's job: the server redelivers
  the job to another worker; when the frozen one wakes and finishes, its stale settlement must not free the lane's
  one slot under the running copy (bgjob.worker.settle `_superseded`).
- A claims callable that blocks for ever must not keep a worker alive after SIGTERM (bgjob.worker.claims).
"""

from __future__ import annotations

import itertools
import signal
import subprocess
from collections import defaultdict
from pathlib import Path

import pytest

from .conftest import python_process, records, wait_until

LANE_WORKER = r"""
import json, os, sys, time
import bgjob

url, prefix, log = sys.argv[1:4]
client = bgjob.Client(bgjob.Settings(url=url, prefix=prefix, ack_wait=2.0))
mux = bgjob.Mux()

def record(job, what):
    with open(log, "a") as f:
        f.write(json.dumps({"id": job.id, "n": job.arg["n"], "pid": os.getpid(), "what": what,
                            "t": time.time()}) + "\n")
        f.flush()
        os.fsync(f.fileno())

def run(job):
    record(job, "start")
    # By the wall clock: a copy frozen past its end ends once resumed. A redelivered copy runs twice as long, so
    # the frozen first copy (resumed as soon as the test sees the redelivered one start) ends before it even on a
    # loaded machine: what is tested is the stale ack, not the window README names (a stale run outliving it).
    until = time.time() + job.arg["seconds"] * (2 if job.attempt > 1 else 1)
    while time.time() < until:
        time.sleep(0.05)
    record(job, "end")
    return bgjob.Complete()

mux.handle("solo", run, singleton=True)
mux.handle("ordered", run, partitioned=True)
bgjob.Worker(client, mux, concurrency=4, fetch_timeout=0.5).run()
client.close()
"""


def runs(log: Path) -> list[tuple[str, int, float, float]]:
    """Every run as (job id, n, start, end): a start and the next end of the same job in the same process."""
    open_runs: dict[tuple[str, int], dict] = {}
    done = []
    for rec in records(log):
        key = (rec["id"], rec["pid"])
        if rec["what"] == "start":
            open_runs[key] = rec
        else:
            start = open_runs.pop(key)
            done.append((rec["id"], rec["n"], start["t"], rec["t"]))
    return done


@pytest.fixture
def processes():
    started: list[subprocess.Popen] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.send_signal(signal.SIGCONT)
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


@pytest.mark.parametrize("job_type", ["solo", "ordered"])
def test_a_lane_worker_frozen_past_ack_wait_does_not_let_the_next_job_start_beside_the_redelivered_copy(
    make_client, nats_server, prefix, tmp_path, processes, job_type
) -> None:
    """Two workers, ack_wait 2 s, three 4 s jobs of a singleton type (or of one partition key). The worker running
    the first is SIGSTOPped until the server redelivered it to the other worker, then SIGCONTed: it finishes its
    copy first. Its settlement (before the fix: an ack of the old delivery) must not free the lane's slot while the
    redelivered copy runs: no run of another job overlaps a run of the first, and the key's order holds. (The
    frozen copy ends first here; one that outlives the redelivered copy still runs beside the next job: README.)"""
    client = make_client(ack_wait=2.0)
    log = tmp_path / "runs.jsonl"
    for _ in range(2):
        processes.append(python_process(LANE_WORKER, nats_server.url, prefix, str(log)))
    wait_until(lambda: len(client.workers()) == 2, timeout=30, message="two workers")
    key = {"partition_key": "customer-7"} if job_type == "ordered" else {}
    ids = [client.send_job(job_type, {"n": n, "seconds": 4.0}, **key) for n in range(3)]
    first = wait_until(lambda: next((r for r in records(log) if r["what"] == "start"), None), message="a first start")
    if job_type == "ordered":  # a singleton's jobs are forwarded from the main consumer: in no promised order
        assert first["id"] == ids[0]
    frozen = next(proc for proc in processes if proc.pid == first["pid"])
    frozen.send_signal(signal.SIGSTOP)
    try:
        wait_until(lambda: any(r["id"] == first["id"] and r["pid"] != frozen.pid for r in records(log)), timeout=30,
                   message="the first job redelivered to the other worker")  # fmt: skip
    finally:
        frozen.send_signal(signal.SIGCONT)
    wait_until(lambda: len(runs(log)) == 4, timeout=60, message="both copies of the first job and the other two")
    done = runs(log)
    assert sorted(run[0] for run in done) == sorted([first["id"], *ids])  # the first ran twice, the others once
    for (a_id, _, a_start, a_end), (b_id, _, b_start, b_end) in ((a, b) for a in done for b in done):
        if a_id != b_id:
            assert a_end <= b_start or b_end <= a_start, f"{a_id} and {b_id} ran at once: {done}"
    copies = defaultdict(list)
    for job_id, _, start, end in done:
        copies[job_id].append((start, end))
    # The lane's order: each job starts after every copy of the one before it ended; a key's is its send order.
    order = ids if job_type == "ordered" else sorted(copies, key=lambda job_id: min(copies[job_id]))
    assert order[0] == first["id"]
    for before, after in itertools.pairwise(order):
        assert min(start for start, _ in copies[after]) >= max(end for _, end in copies[before]), done
    wait_until(lambda: client.queue_stats().in_flight + client.queue_stats().pending == 0, message="all settled")


CLAIMS_WORKER = r"""
import sys, threading, time
import bgjob

url, prefix = sys.argv[1:3]
client = bgjob.Client(bgjob.Settings(url=url, prefix=prefix))
mux = bgjob.Mux()
mux.handle("noop", lambda job: bgjob.Complete())
calls = []

def claims():
    calls.append(time.monotonic())
    if len(calls) >= 2:
        print("BLOCKING", flush=True)
        threading.Event().wait()   # never returns
    return ["primary"]

worker = bgjob.Worker(client, mux, claims=claims, claims_interval=0.5, grace_period=2.0, fetch_timeout=0.5)
worker.run()
print("STOPPED", flush=True)
client.close()
"""


def test_a_claims_callable_that_blocks_for_ever_does_not_keep_the_worker_alive_after_sigterm(
    nats_server, prefix, processes, tmp_path
) -> None:
    """The callable blocks on its second call; one SIGTERM still stops the worker within its grace period."""
    err_path = tmp_path / "stderr.txt"
    with err_path.open("w") as err_file:
        proc = python_process(CLAIMS_WORKER, nats_server.url, prefix, stdout=subprocess.PIPE, stderr=err_file,
                              text=True)  # fmt: skip
    processes.append(proc)
    assert proc.stdout.readline().strip() == "BLOCKING"
    wait_until(lambda: "did not return within 0.5s" in err_path.read_text(), message="the stuck call reported")
    proc.send_signal(signal.SIGTERM)
    try:
        out, _ = proc.communicate(timeout=20)  # grace_period 2 s, and the drain's flush
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        pytest.fail(f"the worker did not stop after SIGTERM: {err_path.read_text()[-3000:]}")
    err = err_path.read_text()
    assert proc.returncode == 0, err[-3000:]
    assert "STOPPED" in out
    assert err.count("did not return within") == 1, err[-3000:]  # once per stuck call
