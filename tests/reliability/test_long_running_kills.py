"""Scenario 12: long-running and placed jobs (issue 18) whose worker processes are SIGKILLed.

Real worker processes (WORKER below) against the session's nats-server, killed with SIGKILL at points the test
chooses (a random seed, printed in the table; BGJOB_RELIABILITY_SEED replays one):

- 12a a checkpointed import (10,000 rows in batches of 500) killed three times: mid-batch, after a batch's rows
  were written but before its checkpoint, and during the checkpoint write itself (the process SIGKILLs itself
  from a timer a few milliseconds into `job.checkpoint`, a point no outside signal can aim at). The checkpoint
  holds the rows file's committed length, so a run resumes at the batch after the last checkpoint and cuts off
  what a killed run wrote after it: every row ends up in the file exactly once.
- 12b a singleton type: 4 processes, 40 jobs, the process running one SIGKILLed: never two at once (start/end
  times), the slot frees within ack_wait, the killed job runs again.
- 12c partitioned jobs: 3 keys over 3 processes, the process running one SIGKILLed: per key, completions in send
  order and no job starts before the one sent before it completed (a killed job runs again first).
- 12d a targeted job whose only claim holder is SIGKILLed while running it: it waits for a new holder and runs.
- 12e jobs waiting in `job.wait_for_signal` whose worker is SIGKILLed: redelivered, they still receive a signal
  sent after the kill (one before the new worker runs them, one while it waits).
"""

from __future__ import annotations

import itertools
import json
import os
import random
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import bgjob
from bgjob import long_running
from bgjob.job_results import result_key
from bgjob.topology import CHECKPOINTS_BUCKET, partition_of

from ..conftest import python_process, wait_until
from .support import Scenario, read_records, tally

pytestmark = [pytest.mark.reliability, pytest.mark.slow]

#: the ack_wait of every process here (seconds): a killed job comes back about this long after its worker died.
ACK_WAIT = 2.0
SEED = int(os.environ.get("BGJOB_RELIABILITY_SEED") or random.SystemRandom().randrange(1 << 30))

WORKER = r"""
import json, os, signal, sys, threading, time
import bgjob
from tests.reliability.worker_app import Recorder

config = json.loads(sys.argv[1])
workdir = config["workdir"]
recorder = Recorder(os.path.join(workdir, "records.jsonl"))
rows_path = os.path.join(workdir, "rows.jsonl")
client = bgjob.Client(bgjob.Settings(url=config["url"], prefix=config["prefix"], ack_wait=config["ack_wait"]))
mux = bgjob.Mux()


def hang_once(job):
    # arg["hang"]: on its first attempt the job says so and waits for the test's SIGKILL
    if job.arg.get("hang") and job.attempt == 1:
        recorder.record(job, "hanging")
        time.sleep(600)


def import_rows(job):
    rows, size = job.arg["rows"], job.arg["batch"]
    state = job.load_checkpoint() or {"next": 0, "len": 0}
    with open(rows_path, "ab") as f:
        if f.tell() > state["len"]:  # what a killed run wrote after its last checkpoint: not committed
            recorder.record(job, "truncated", bytes=f.tell() - state["len"], at=state["next"])
            f.truncate(state["len"])
    for batch in range(state["next"], rows // size):
        recorder.record(job, "batch", batch=batch)
        plan = next((p for p in job.arg["kills"] if p["batch"] == batch), None)
        marker = os.path.join(workdir, f"kill-{batch}")
        armed = plan is not None and not os.path.exists(marker)
        if armed:
            open(marker, "w").close()
        if armed and plan["phase"] == "mid-batch":
            time.sleep(600)  # the test SIGKILLs this process now: nothing of this batch is written
        with open(rows_path, "ab") as f:
            f.write((json.dumps(list(range(batch * size, (batch + 1) * size))) + "\n").encode())
            f.flush()
            os.fsync(f.fileno())
            length = f.tell()
        if armed and plan["phase"] == "after-rows":
            time.sleep(600)  # the test SIGKILLs this process now: the rows are written, the checkpoint is not
        if armed and plan["phase"] == "checkpoint":
            threading.Timer(plan["delay"], os.kill, (os.getpid(), signal.SIGKILL)).start()
        job.checkpoint({"next": batch + 1, "len": length})
        if armed and plan["phase"] == "checkpoint":
            time.sleep(600)  # the timer's SIGKILL lands during the write or just after it
    recorder.record(job, "done")
    return bgjob.Complete(rows)


def one(job):
    recorder.record(job, "start")
    hang_once(job)
    time.sleep(0.02)
    recorder.record(job, "end")
    return bgjob.Complete()


def ordered(job):
    recorder.record(job, "start", key=job.arg["key"], n=job.arg["n"])
    hang_once(job)
    time.sleep(0.01)
    recorder.record(job, "done", key=job.arg["key"], n=job.arg["n"])
    return bgjob.Complete()


def placed(job):
    recorder.record(job, "start")
    hang_once(job)
    recorder.record(job, "done")
    return bgjob.Complete()


def waiter(job):
    recorder.record(job, "waiting")
    data = job.wait_for_signal("go", 60)
    recorder.record(job, "done", data=data)
    return bgjob.Complete()


# only the test's type: a singleton or partitioned handler adds consumers (16 for the partitions) to every start
handlers = {"import": (import_rows, {}), "one": (one, {"singleton": True}),
            "ordered": (ordered, {"partitioned": True}), "placed": (placed, {}), "waiter": (waiter, {})}
for job_type in config["types"]:
    handler, options = handlers[job_type]
    mux.handle(job_type, handler, **options)
bgjob.Worker(client, mux, concurrency=config.get("concurrency", 8), fetch_timeout=0.5,
             claims=config.get("claims", ())).run()
client.close()
"""


class Processes:
    """Worker processes of this test (WORKER), each with its log file; every one left is killed at the end."""

    def __init__(self, url: str, prefix: str, workdir: Path) -> None:
        self.url, self.prefix, self.workdir = url, prefix, workdir
        self.started: list[subprocess.Popen] = []

    @property
    def record(self) -> Path:
        return self.workdir / "records.jsonl"

    def start(self, **config: Any) -> subprocess.Popen:
        config = {"url": self.url, "prefix": self.prefix, "ack_wait": ACK_WAIT, "workdir": str(self.workdir),
                  **config}  # fmt: skip
        with open(self.workdir / f"worker-{len(self.started)}.log", "wb") as log:
            proc = python_process(WORKER, json.dumps(config), stdout=log, stderr=subprocess.STDOUT)
        self.started.append(proc)
        return proc

    def by_pid(self, pid: int) -> subprocess.Popen:
        return next(proc for proc in self.started if proc.pid == pid)

    @staticmethod
    def kill(proc: subprocess.Popen) -> float:
        """SIGKILL `proc`, wait for it; returns the time (time.time()) it was dead by."""
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(10) == -signal.SIGKILL
        return time.time()

    def records(self, ev: str | None = None, **match: Any) -> list[dict[str, Any]]:
        return [r for r in read_records(self.record)
                if (ev is None or r["ev"] == ev) and all(r.get(k) == v for k, v in match.items())]  # fmt: skip

    def log_tail(self, lines: int = 25) -> str:
        return "\n".join(f"--- {path.name}\n" + "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
                         for path in sorted(self.workdir.glob("worker-*.log")))  # fmt: skip

    def cleanup(self) -> None:
        for proc in self.started:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)


@pytest.fixture
def procs(nats_server, prefix, tmp_path) -> Iterator[Processes]:
    processes = Processes(nats_server.url, prefix, tmp_path)
    try:
        yield processes
    finally:
        processes.cleanup()


@pytest.fixture
def client(nats_server, prefix) -> Iterator[bgjob.Client]:
    client = bgjob.Client(bgjob.Settings(url=nats_server.url, prefix=prefix, ack_wait=ACK_WAIT)).connect()
    try:
        yield client
    finally:
        client.close()


def hanging(procs: Processes, job_id: str) -> dict[str, Any]:
    """The record of `job_id` hanging on its first attempt (its worker's pid in it), once there is one."""
    found = wait_until(lambda: procs.records("hanging", id=job_id), timeout=60, message=f"job {job_id} running")
    return found[0]  # type: ignore[index]


def never_overlapping(intervals: list[tuple[float, float, str]]) -> None:
    """Fail naming two of the (start, end, what) intervals that overlap."""
    intervals = sorted(intervals)
    for (_, first_end, first), (second_start, _, second) in itertools.pairwise(intervals):
        assert second_start >= first_end, f"{first} and {second} ran at the same time (seed {SEED})"


# -- 12a ----------------------------------------------------------------------------------------------------------
@pytest.mark.timeout(120)
def test_checkpointed_import_killed_at_random_points_imports_every_row_exactly_once(client, procs) -> None:
    scenario = Scenario("12a checkpointed import, SIGKILL x3")
    rng = random.Random(SEED)
    phases = ["mid-batch", "after-rows", "checkpoint"]
    rng.shuffle(phases)
    kills = [{"batch": b, "phase": p, "delay": rng.uniform(0, 0.004)}
             for b, p in zip(sorted(rng.sample(range(1, 19), 3)), phases, strict=True)]  # fmt: skip
    job_id = client.send_job("import", {"rows": 10_000, "batch": 500, "kills": kills}, job_id="import-10k")
    # two processes, one of them idle: each kill is followed by a start, which the redelivery after ack_wait hides
    procs.start(types=["import"])
    procs.start(types=["import"])
    for kill in kills:
        marker = procs.workdir / f"kill-{kill['batch']}"
        wait_until(marker.exists, timeout=60, message=f"batch {kill['batch']} (seed {SEED})")
        proc = procs.by_pid(procs.records("batch", batch=kill["batch"])[-1]["pid"])
        if kill["phase"] == "checkpoint":  # it kills itself, from a timer started just before job.checkpoint
            assert proc.wait(10) == -signal.SIGKILL
        else:
            procs.kill(proc)
        procs.start(types=["import"])
    wait_until(lambda: procs.records("done", id=job_id), timeout=60, message="the import to finish")

    lines = (procs.workdir / "rows.jsonl").read_text().splitlines()
    rows = [row for line in lines for row in json.loads(line)]
    assert len(rows) == 10_000 and sorted(rows) == list(range(10_000)), f"rows not exactly once (seed {SEED})"
    # Each run resumed at its last checkpoint: a kill before the checkpoint repeats the batch, one during its
    # write repeats it only when the write did not land.
    runs = [[r["batch"] for r in group] for _, group in itertools.groupby(procs.records("batch"), lambda r: r["pid"])]
    assert runs[0][0] == 0 and len(runs) == 4, runs
    for kill, run, after in zip(kills, runs, runs[1:], strict=False):
        assert run[-1] == kill["batch"], (kill, runs)
        expected = {kill["batch"]} if kill["phase"] != "checkpoint" else {kill["batch"], kill["batch"] + 1}
        assert after[0] in expected, (kill, runs, SEED)
    after_rows = next(k["batch"] for k in kills if k["phase"] == "after-rows")
    truncated = procs.records("truncated")
    cut = [t for t in truncated if t["at"] == after_rows and t["bytes"] > 0]
    assert cut, f"the run after the after-rows kill cut off that batch's rows: {truncated} (seed {SEED})"
    wait_until(lambda: client.run(long_running.get, CHECKPOINTS_BUCKET, result_key(job_id)) is None,
               message="the checkpoint deleted after success")  # fmt: skip
    where = ", ".join(f"{k['phase']} of batch {k['batch']}" for k in kills)
    scenario.report(tally([job_id], [r["id"] for r in procs.records("done")]),
                    note=f"killed {where}; rows exactly once; seed {SEED}")  # fmt: skip


# -- 12b ----------------------------------------------------------------------------------------------------------
@pytest.mark.timeout(120)
def test_singleton_never_runs_two_at_once_and_a_sigkill_frees_the_slot(client, procs) -> None:
    scenario = Scenario("12b singleton, SIGKILL of the runner")
    rng = random.Random(SEED)
    victim = rng.randrange(5, 35)
    ids = client.send_jobs([bgjob.JobSpec("one", {"hang": i == victim}, job_id=f"one-{i}") for i in range(40)])
    for _ in range(4):
        procs.start(types=["one"])
    hung = hanging(procs, ids[victim])
    killed_at = procs.kill(procs.by_pid(hung["pid"]))
    # the slot frees within ack_wait: the next job starts then (the bound only says "not hung")
    wait_until(lambda: [r for r in procs.records("start") if r["t"] > killed_at], timeout=ACK_WAIT + 10,
               message="a singleton job started after the kill")  # fmt: skip
    wait_until(lambda: {r["id"] for r in procs.records("end")} == set(ids), timeout=60, message="all 40 ended")

    runs, starts = procs.records(), procs.records("start")
    intervals = []
    for start in starts:
        end = next((r["t"] for r in runs if r["ev"] == "end" and (r["id"], r["attempt"]) ==
                    (start["id"], start["attempt"])), killed_at)  # fmt: skip
        intervals.append((start["t"], end, f"{start['id']} (attempt {start['attempt']})"))
    never_overlapping(intervals)
    assert [r["attempt"] for r in starts if r["id"] == ids[victim]] == [1, 2], "the killed job ran again, once"
    assert len(starts) == 41
    scenario.report(tally(ids, [r["id"] for r in procs.records("end")]),
                    note=f"4 processes; job {victim} killed; never two at once; seed {SEED}")  # fmt: skip


# -- 12c ----------------------------------------------------------------------------------------------------------
def keys_in_distinct_partitions(count: int) -> list[str]:
    found: dict[int, str] = {}
    for key in (f"customer-{i}" for i in itertools.count()):
        found.setdefault(partition_of(key), key)
        if len(found) == count:
            return list(found.values())
    raise AssertionError("unreachable")


@pytest.mark.timeout(120)
def test_partitioned_jobs_keep_each_keys_order_through_a_sigkill(client, procs) -> None:
    scenario = Scenario("12c partitions, SIGKILL mid-run")
    rng = random.Random(SEED)
    per_key, keys = 30, keys_in_distinct_partitions(3)
    victim_key, victim_n = rng.choice(keys), rng.randrange(5, per_key - 5)
    specs = [bgjob.JobSpec("ordered", {"key": k, "n": n, "hang": (k, n) == (victim_key, victim_n)},
                           job_id=f"{k}-{n}", partition_key=k) for n in range(per_key) for k in keys]  # fmt: skip
    ids = client.send_jobs(specs)
    for _ in range(3):
        procs.start(types=["ordered"])
    procs.kill(procs.by_pid(hanging(procs, f"{victim_key}-{victim_n}")["pid"]))
    wait_until(lambda: {r["id"] for r in procs.records("done")} == set(ids), timeout=60,
               message=f"all {len(ids)} jobs done (seed {SEED})")  # fmt: skip

    for key in keys:
        starts = [r["n"] for r in procs.records("start", key=key)]
        done = [r["n"] for r in procs.records("done", key=key)]
        # a job killed after its done record but before its ack runs (and records done) again: first dones count
        assert list(dict.fromkeys(done)) == list(range(per_key)), f"{key}: completions out of send order: {done}"
        # no job started before the one sent before it completed: starts never go back, repeats are re-runs
        assert starts == sorted(starts), f"{key}: {starts} (seed {SEED})"
        assert set(starts) == set(range(per_key))
    victim_starts = procs.records("start", key=victim_key, n=victim_n)
    assert [r["attempt"] for r in victim_starts] == [1, 2], "the killed job ran again before the next of its key"
    scenario.report(tally(ids, [r["id"] for r in procs.records("done")]),
                    note=f"3 keys x {per_key}, 3 processes; {victim_key} #{victim_n} killed; seed {SEED}")  # fmt: skip


# -- 12d ----------------------------------------------------------------------------------------------------------
@pytest.mark.timeout(120)
def test_a_targeted_job_whose_only_claim_holder_is_killed_runs_on_the_next_holder(client, procs) -> None:
    scenario = Scenario("12d claim holder SIGKILLed")
    procs.start(types=["placed"])  # holds no claim: never runs a targeted job
    holder = procs.start(types=["placed"], claims=["primary"])
    victim = client.send_job("placed", {"hang": True}, job_id="placed-hang", target="primary")
    hung = hanging(procs, victim)
    assert hung["pid"] == holder.pid
    procs.kill(holder)
    # sent while nobody holds the claim: they wait with the killed one
    behind = client.send_jobs([bgjob.JobSpec("placed", {}, job_id=f"placed-{i}", target="primary")
                               for i in range(5)])  # fmt: skip
    successor = procs.start(types=["placed"], claims=["primary"])
    ids = [victim, *behind]
    wait_until(lambda: {r["id"] for r in procs.records("done")} == set(ids), timeout=30, message="the placed jobs")
    assert {r["pid"] for r in procs.records("done")} == {successor.pid}, "only the claim holder ran them"
    assert [r["attempt"] for r in procs.records("start", id=victim)] == [1, 2]
    scenario.report(tally(ids, [r["id"] for r in procs.records("done")]), note="waited for a new claim holder")


# -- 12e ----------------------------------------------------------------------------------------------------------
@pytest.mark.timeout(120)
def test_a_signal_waiter_whose_worker_is_killed_still_gets_a_signal_sent_after_the_kill(client, procs) -> None:
    scenario = Scenario("12e signal waiters, SIGKILL")
    first = procs.start(types=["waiter"])
    ids = client.send_jobs([bgjob.JobSpec("waiter", None, job_id=f"wait-{i}") for i in range(2)])
    wait_until(lambda: {r["id"] for r in procs.records("waiting")} == set(ids), message="both waiting")
    procs.kill(first)
    client.send_signal(ids[0], "go", {"sent": "after the kill, before the redelivery"})
    procs.start(types=["waiter"])
    wait_until(lambda: procs.records("waiting", id=ids[1], attempt=2), timeout=ACK_WAIT + 15,
               message="the second waiter redelivered and waiting again")  # fmt: skip
    client.send_signal(ids[1], "go", {"sent": "while the new worker waits"})
    wait_until(lambda: {r["id"] for r in procs.records("done")} == set(ids), timeout=30, message="both signalled")
    done = {r["id"]: (r["attempt"], r["data"]) for r in procs.records("done")}
    assert done == {ids[0]: (2, {"sent": "after the kill, before the redelivery"}),
                    ids[1]: (2, {"sent": "while the new worker waits"})}  # fmt: skip
    scenario.report(tally(ids, [r["id"] for r in procs.records("done")]), note="signals sent after the kill")
