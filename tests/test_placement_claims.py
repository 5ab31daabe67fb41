"""Placement claims (bgjob.placement, bgjob.worker.claims): `no_target` dead letters of placed jobs nobody took by
their target_timeout, and claims from a callable re-checked while the worker runs."""

from __future__ import annotations

import queue
import signal
import subprocess
import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

import bgjob
import bgjob.placement
from bgjob.errors import ConfigurationError

from .conftest import drain, python_process, wait_until

HOLDER = r"""
import json, os, sys, time
import bgjob

url, prefix, log = sys.argv[1:4]
client = bgjob.Client(bgjob.Settings(url=url, prefix=prefix, worker_ttl=2.0))
mux = bgjob.Mux()

@mux.handler("block")
def block(job):
    with open(log, "a") as f:
        f.write(json.dumps({"started": job.id, "pid": os.getpid()}) + "\n")
    time.sleep(600)
    return bgjob.Complete()

bgjob.Worker(client, mux, concurrency=1, fetch_timeout=0.5, claims=["primary"]).run()
"""


@pytest.fixture
def sweeps(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Workers in this process sweep every 0.2 s; the list grows by one entry per finished sweep (what it
    dead-lettered), so a test can wait for sweeps that certainly ran after some moment."""
    monkeypatch.setattr("bgjob.worker.loop.TARGET_SWEEP_INTERVAL", 0.2)
    done: list[int] = []
    original = bgjob.placement.UntakenSweep.sweep

    async def counted(self: bgjob.placement.UntakenSweep) -> int:
        moved = await original(self)
        done.append(moved)
        return moved

    monkeypatch.setattr(bgjob.placement.UntakenSweep, "sweep", counted)
    return done


def wait_for_sweeps(sweeps: list[int], count: int) -> None:
    """Until `count` more sweeps have finished (started after this call, but one)."""
    target = len(sweeps) + count + 1
    wait_until(lambda: len(sweeps) >= target, timeout=30, message=f"{count} sweeps")


def waiting_placed(client: bgjob.Client, queue_name: str = "default") -> dict[str, dict[str, str]]:
    """The placed jobs waiting in the queue's stream (any claim): {job id: headers}."""
    import nats.js.errors

    async def read(core) -> dict[str, dict[str, str]]:
        stream, subject = core.topology.queue_stream(queue_name), core.topology.target_filter(queue_name)
        found: dict[str, dict[str, str]] = {}
        seq = 1
        while True:
            try:
                msg = await core.js.get_msg(stream, seq=seq, next=True, subject=subject)
            except nats.js.errors.NotFoundError:
                return found
            found[msg.headers["Bgjob-Id"]] = dict(msg.headers)
            seq = msg.seq + 1

    return client.run(read)


def no_target_ids(client: bgjob.Client) -> list[str]:
    return [entry.id for entry in client.dlq.list(reason="no_target")]


def test_target_timeout_is_checked_and_carried_as_target_until() -> None:
    settings = bgjob.Settings(prefix="x")
    for bad in (0, -1, float("nan"), float("inf"), timedelta(0), "60", True):
        with pytest.raises(bgjob.InvalidJob, match="target_timeout"):
            bgjob.codec.prepare_job(settings, "t", None, target="primary", target_timeout=bad)
    with pytest.raises(bgjob.InvalidJob, match="target_timeout needs a target"):
        bgjob.codec.prepare_job(settings, "t", None, target_timeout=60)
    with pytest.raises(ConfigurationError, match="target_timeout"):
        bgjob.Settings(target_timeout=0)
    before = datetime.now(timezone.utc)
    _, _, headers, _ = bgjob.codec.prepare_job(settings, "t", None, target="primary", target_timeout=60)
    until = bgjob.job.parse_time(headers["Bgjob-Target-Until"])
    assert until is not None
    assert before + timedelta(seconds=59) <= until <= datetime.now(timezone.utc) + timedelta(seconds=61)
    # counted from when a delayed job is due; a Settings default for every placed job; none without a target
    _, _, headers, _ = bgjob.codec.prepare_job(settings, "t", None, target="p", target_timeout=timedelta(seconds=5),
                                               delay=3600)  # fmt: skip
    # the header keeps milliseconds (cut, not rounded), so it may read up to 1 ms before `before` + 3605 s
    until = bgjob.job.parse_time(headers["Bgjob-Target-Until"])
    assert until >= before + timedelta(seconds=3605) - timedelta(milliseconds=1)
    default = bgjob.Settings(prefix="x", target_timeout=30)
    assert "Bgjob-Target-Until" in bgjob.codec.prepare_job(default, "t", None, target="p")[2]
    assert "Bgjob-Target-Until" not in bgjob.codec.prepare_job(default, "t", None)[2]
    assert "Bgjob-Target-Until" not in bgjob.codec.prepare_job(settings, "t", None, target="p")[2]
    client = bgjob.Client(settings)
    with pytest.raises(ValueError, match="claims_interval"):
        bgjob.Worker(client, bgjob.Mux(), claims=lambda: ["primary"], claims_interval=0)
    with pytest.raises(bgjob.InvalidJob, match="target_timeout needs a target"):
        client.prepare_job(bgjob.JobSpec("t", target_timeout=5))


def test_a_job_for_a_claim_nobody_holds_is_dead_lettered_no_target_and_a_retry_waits_then_runs(
    client, make_client, start_worker, sweeps
) -> None:
    ran: queue.Queue = queue.Queue()
    mux = bgjob.Mux()
    mux.handle("placed", lambda job: ran.put(job.arg) or bgjob.Complete())
    start_worker(make_client(events=True), mux)  # a worker of the queue holding no claim: it sweeps
    late = client.send_job("placed", "late", target="primary", target_timeout=0.3)
    patient = client.send_job("placed", "patient", target="primary")  # no target_timeout: waits for ever
    wait_until(lambda: no_target_ids(client) == [late], timeout=30, message="the no_target dead letter")
    entry = client.dlq.get(late)
    assert (entry.reason, entry.type, entry.queue, entry.arg, entry.attempts) == ("no_target", "placed", "default",
                                                                                  "late", 0)  # fmt: skip
    assert "'primary'" in entry.error and entry.headers["Bgjob-Target"] == "primary"
    assert list(waiting_placed(client)) == [patient]  # deleted from the stream; the patient one waits
    # the sweeping worker's lifecycle event (published without a PubAck, so it may come a moment later)
    status = wait_until(lambda: (s := client.job_status(late)).event is not None and s, message="its event")
    assert (status.state, status.event.reason) == (bgjob.JobState.DEAD_LETTERED, "no_target")  # type: ignore[union-attr]
    wait_for_sweeps(sweeps, 2)
    assert no_target_ids(client) == [late]  # one dead letter, however many sweeps

    client.dlq.retry(late)  # back to its claim's subject, its passed target time dropped: it waits again
    waiting = waiting_placed(client)
    assert set(waiting) == {late, patient} and "Bgjob-Target-Until" not in waiting[late]
    wait_for_sweeps(sweeps, 2)
    assert no_target_ids(client) == [] and set(waiting_placed(client)) == {late, patient}
    assert ran.empty()

    start_worker(make_client(), mux, claims=["primary"])
    assert sorted(drain(ran, 2)) == ["late", "patient"]


def test_a_busy_holder_keeps_its_claim_until_it_is_sigkilled_and_its_entry_expires(
    nats_server, prefix, make_client, start_worker, sweeps, tmp_path: Path
) -> None:
    log = tmp_path / "holder.jsonl"
    client = make_client(worker_ttl=2.0)
    holder = python_process(HOLDER, nats_server.url, prefix, str(log))
    try:
        client.send_job("block", None, target="primary")  # takes the holder's one slot for good
        wait_until(lambda: log.exists() and log.read_text().endswith("\n"), timeout=30, message="the holder busy")
        mux = bgjob.Mux()
        start_worker(make_client(worker_ttl=2.0), mux)  # the sweeper: holds no claim
        wait_until(lambda: any(w.claims == ("primary",) and w.pid == holder.pid for w in client.workers()),
                   message="the holder's directory entry listing its claim")  # fmt: skip
        placed = client.send_job("placed", None, target="primary", target_timeout=0.2)
        until = bgjob.job.parse_time(waiting_placed(client)[placed]["Bgjob-Target-Until"])
        wait_until(lambda: datetime.now(timezone.utc) > until, message="its target time to pass")
        wait_for_sweeps(sweeps, 3)
        assert no_target_ids(client) == []  # held by a live (busy) worker: it waits

        holder.send_signal(signal.SIGKILL)
        holder.wait(10)
        # once the holder's entry has expired (worker_ttl 2 s) nobody holds the claim
        wait_until(lambda: no_target_ids(client) == [placed], timeout=30, message="the no_target dead letter")
        assert placed not in waiting_placed(client)
        assert all(w.pid != holder.pid for w in client.workers())
    finally:
        if holder.poll() is None:
            holder.kill()
        try:
            holder.wait(10)
        except subprocess.TimeoutExpired:
            pass


def test_claims_from_a_callable_are_taken_up_and_dropped_while_the_worker_runs(client, make_client, start_worker,
                                                                                caplog) -> None:  # fmt: skip
    state: dict[str, object] = {"claims": [], "calls": 0}

    def claims() -> list[str]:
        state["calls"] = int(state["calls"]) + 1  # type: ignore[call-overload]
        if state["claims"] == "raise":
            raise RuntimeError("claims service down")
        return state["claims"]  # type: ignore[return-value]

    def calls_after(more: int) -> None:
        target = int(state["calls"]) + more  # type: ignore[call-overload]
        wait_until(lambda: int(state["calls"]) >= target, message=f"{more} calls of the claims callable")  # type: ignore[call-overload]

    def listed_claims() -> list[tuple[str, ...]]:
        return [w.claims for w in client.workers()]

    ran: queue.Queue = queue.Queue()
    release = threading.Event()
    mux = bgjob.Mux()

    def placed(job: bgjob.Job) -> bgjob.Result:
        ran.put(("start", job.arg))
        if job.arg == "slow":
            release.wait(30)
        ran.put(("end", job.arg))
        return bgjob.Complete()

    mux.handle("placed", placed)
    first = client.send_job("placed", "first", target="primary")
    worker = start_worker(make_client(), mux, claims=claims, claims_interval=0.1)
    calls_after(2)
    wait_until(lambda: listed_claims() == [()], message="the worker's entry, with no claim")
    assert ran.empty() and worker.claims == ()

    state["claims"] = ["primary"]  # taken up: the waiting job runs
    assert drain(ran, 2) == [("start", "first"), ("end", "first")]
    assert worker.claims == ("primary",)
    wait_until(lambda: listed_claims() == [("primary",)], message="the entry listing the claim")

    state["claims"] = "raise"  # a failing callable keeps the current claims
    calls_after(3)
    assert worker.claims == ("primary",)
    assert "claims service down" in caplog.text
    state["claims"] = ["primary", "bad.claim"]  # so do bad claims
    calls_after(3)
    assert worker.claims == ("primary",)
    assert "invalid claim 'bad.claim'" in caplog.text

    slow = client.send_job("placed", "slow", target="primary")
    assert drain(ran, 1) == [("start", "slow")]
    state["claims"] = []  # dropped while a job runs: it finishes and settles, no new job is taken
    wait_until(lambda: worker.claims == (), message="the claim dropped")
    release.set()
    assert drain(ran, 1) == [("end", "slow")]
    wait_until(lambda: listed_claims() == [()], message="the entry without the claim (its lane drained)")
    later = client.send_job("placed", "later", target="primary")
    calls_after(3)
    assert ran.empty()
    assert list(waiting_placed(client)) == [later] and slow != later and first != later
