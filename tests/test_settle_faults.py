"""Delivery faults of the settle path (issue 11): every delivered job settles, and attempts stay bounded."""

from __future__ import annotations

import json
import queue
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest
from nats.js.api import Header

import bgjob
from bgjob.headers import ATTEMPTS_USED as HEADER_ATTEMPTS_USED

from .conftest import drain, python_process, wait_until

POISON_WORKER = r"""
import ctypes, json, os, signal, sys, time
import bgjob

url, prefix, log, how = sys.argv[1:5]
client = bgjob.Client(bgjob.Settings(url=url, prefix=prefix, ack_wait=2.0))
mux = bgjob.Mux()

def record(job, what):
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    line = {"id": job.id, "type": job.type, "attempt": job.attempt, "what": what, "pid": os.getpid(),
            "t": round(time.time(), 3)}
    os.write(fd, (json.dumps(line) + "\n").encode())
    os.fsync(fd)
    os.close(fd)

@mux.handler("poison")
def poison(job):
    record(job, "start")
    if how == "sigkill":
        os.kill(os.getpid(), signal.SIGKILL)   # as the OOM killer would
    elif how == "segfault":
        ctypes.string_at(0)                    # a real segfault, in this thread (a kill() would let it run on)
    else:
        os._exit(3)                            # a C extension calling exit()

@mux.handler("ok")
def ok(job):
    time.sleep(0.2)
    record(job, "done")
    return bgjob.Complete()

bgjob.Worker(client, mux, concurrency=4, fetch_timeout=0.5,
             retry_policy=bgjob.RetryPolicy(max_attempts=3, base_delay=0.1, jitter=0)).run()
"""


def _records(log: Path) -> list[dict]:
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


@pytest.mark.parametrize("how", ["sigkill", "segfault", "exit"])
def test_a_job_that_kills_its_worker_is_dead_lettered_before_a_fourth_run(nats_server, prefix, client, tmp_path,
                                                                          how) -> None:  # fmt: skip
    """A supervisor restarts the worker each time it dies: the handler runs at attempts 1, 2, 3 and the fourth
    delivery goes to the DLQ (reason max_attempts, saying the process died) without running. Jobs that were in
    flight beside it share its crashes (no worker can tell which of its jobs killed it): none is lost, each
    is done or dead-lettered the same way, where `bgjob dlq retry` brings it back."""
    log = tmp_path / "runs.jsonl"
    poison_id = client.send_job("poison", None)
    ok_ids = [client.send_job("ok", {"n": n}) for n in range(6)]
    processes: list[subprocess.Popen] = []

    def supervise() -> bool:
        try:
            client.dlq.get(poison_id)
            return True
        except bgjob.DeadLetterNotFound:
            pass
        if not processes or processes[-1].poll() is not None:
            processes.append(python_process(POISON_WORKER, nats_server.url, prefix, str(log), how))
        return False

    try:
        wait_until(supervise, timeout=60, message="the poison job in the DLQ")
        entry = client.dlq.get(poison_id)

        def settled() -> set[str]:
            done = {r["id"] for r in _records(log) if r["what"] == "done"}
            return done | {e.id for e in client.dlq.list(job_type="ok", limit=100) if e.reason == "max_attempts"}

        def settled_so_far() -> bool:
            if processes[-1].poll() is not None:  # the supervisor goes on restarting a worker that died
                processes.append(python_process(POISON_WORKER, nats_server.url, prefix, str(log), how))
            return settled() == set(ok_ids)

        try:
            wait_until(settled_so_far, timeout=30, message="every other job done or dead-lettered")
        except pytest.fail.Exception:
            missing = set(ok_ids) - settled()
            exits = [proc.poll() for proc in processes]
            pytest.fail(f"jobs neither done nor dead-lettered: {sorted(missing)}; worker exits {exits}; records "
                        f"{_records(log)}")  # fmt: skip
    finally:
        for proc in processes:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                proc.wait(20)
    runs = [r["attempt"] for r in _records(log) if r["id"] == poison_id]
    assert runs == [1, 2, 3], [r for r in _records(log) if r["id"] == poison_id]
    assert (entry.reason, entry.attempts) == ("max_attempts", 4)
    assert "most likely died" in entry.error and "max_attempts=3" in entry.error


def test_a_delivery_whose_carried_attempts_are_used_up_is_dead_lettered_without_running(client, start_worker) -> None:
    ran: queue.Queue = queue.Queue()
    mux = bgjob.Mux()
    mux.handle("job", lambda job: ran.put(job.attempt) or bgjob.Complete())
    start_worker(client, mux)  # max_attempts=3

    async def publish(core) -> None:  # as a retry schedule carrying three used attempts would fire it
        await core.publish(core.topology.job_subject("default", "job"), b"null",
                           {"Bgjob-Id": "carried-3", "Bgjob-Type": "job", HEADER_ATTEMPTS_USED: "3"},
                           queue="default")  # fmt: skip

    client.run(publish)
    wait_until(lambda: client.dlq.count() == 1, message="the dead letter")
    entry = client.dlq.get("carried-3")
    assert entry.reason == "max_attempts" and "earlier attempts used the budget" in entry.error
    assert "died" not in entry.error  # they finished: no process died
    assert ran.empty()


class Recording(bgjob.WorkerHooks):
    """A user-written hook: keeps every start and every fate."""

    def __init__(self) -> None:
        self.started: list[tuple[str, int]] = []
        self.fates: queue.Queue = queue.Queue()
        self.internal_errors: list[object] = []

    def on_job_start(self, job: bgjob.Job) -> None:
        self.started.append((job.type, job.attempt))

    def on_settled(self, job: bgjob.Job, outcome: object, fate: bgjob.Fate) -> None:
        self.fates.put((job.type, job.attempt, fate))

    def on_internal_error(self, error: object) -> None:
        self.internal_errors.append(error)


def test_jobs_waiting_to_retry_hold_no_slot_and_are_counted_as_retrying(make_client, start_worker) -> None:
    """max_ack_pending=2 and two jobs backing off for 20 s: a fresh job still runs at once."""
    client = make_client(max_ack_pending=2)
    ran: queue.Queue = queue.Queue()
    hooks = Recording()
    mux = bgjob.Mux()
    mux.handle("backoff", lambda job: bgjob.Retry(20))
    mux.handle("fresh", lambda job: ran.put(job.id) or bgjob.Complete())
    start_worker(client, mux, hooks=[hooks])
    client.send_job("backoff", 1)
    client.send_job("backoff", 2)
    first = drain(hooks.fates, 2)
    assert [(kind, fate.kind, fate.delay) for kind, _, fate in first] == [
        ("backoff", bgjob.FateKind.RETRY_SCHEDULED, 20.0)] * 2  # fmt: skip
    fresh_id = client.send_job("fresh", None)
    assert drain(ran, 1, timeout=15) == [fresh_id]  # the old nak(20) kept both slots for 20 s
    stats = client.queue_stats()
    assert (stats.retrying, stats.in_flight, stats.pending) == (2, 0, 0)


def test_a_retry_through_a_schedule_carries_its_attempt_count_and_max_attempts_still_holds(client,
                                                                                            start_worker) -> None:
    attempts: queue.Queue = queue.Queue()
    hooks = Recording()
    mux = bgjob.Mux()
    mux.handle("again", lambda job: attempts.put(job.attempt) or bgjob.Retry(1.5, error=f"try {job.attempt}"))

    def raises(job: bgjob.Job) -> bgjob.Result:
        attempts.put(("raises", job.attempt))
        raise RuntimeError("down")

    mux.handle("raises", raises)
    # base_delay 1.5 s: the policy's own backoff goes through schedules too
    start_worker(client, mux, hooks=[hooks], retry_policy=bgjob.RetryPolicy(max_attempts=3, base_delay=1.5, jitter=0))
    again_id = client.send_job("again", None)
    raises_id = client.send_job("raises", None)
    wait_until(lambda: client.dlq.count() == 2, timeout=30, message="both dead-lettered")
    seen = drain(attempts, 6)
    assert [a for a in seen if not isinstance(a, tuple)] == [1, 2, 3]
    assert [a[1] for a in seen if isinstance(a, tuple)] == [1, 2, 3]
    for job_id, error in ((again_id, "try 3"), (raises_id, "RuntimeError: down")):
        entry = client.dlq.get(job_id)
        assert (entry.reason, entry.attempts, entry.error) == ("max_attempts", 3, error)
    fates = sorted((kind, attempt, fate.kind.value) for kind, attempt, fate in drain(hooks.fates, 6))
    assert fates == sorted([(kind, a, "retry_scheduled") for kind in ("again", "raises") for a in (1, 2)]
                           + [("again", 3, "dead_lettered"), ("raises", 3, "dead_lettered")])  # fmt: skip


def test_a_user_hook_sees_every_fate_once_per_delivery(client, start_worker) -> None:
    hooks = Recording()
    mux = bgjob.Mux()
    mux.handle("ok", lambda job: bgjob.Complete())
    mux.handle("short-retry", lambda job: bgjob.Retry(0.05) if job.attempt == 1 else bgjob.Complete())
    mux.handle("long-retry", lambda job: bgjob.Retry(1.2) if job.attempt == 1 else bgjob.Complete())
    mux.handle("dead", lambda job: bgjob.MoveToDlq("no"))
    mux.handle("again", lambda job: bgjob.Reschedule(bgjob.ByAfterTime(0.2), arg="next") if job.arg == "first"
               else bgjob.Complete())  # fmt: skip

    def raises(job: bgjob.Job) -> bgjob.Result:
        raise ValueError("always")

    mux.handle("raises", raises)
    start_worker(client, mux, hooks=[hooks])
    for job_type in ("ok", "short-retry", "long-retry", "dead", "raises", "unknown-type"):
        client.send_job(job_type, None)
    client.send_job("again", "first")
    fates = drain(hooks.fates, 12, timeout=30)
    by_type: dict[str, list[str]] = {}
    for job_type, _, fate in fates:
        by_type.setdefault(job_type, []).append(str(fate))
    assert by_type == {
        "ok": ["acked"],
        "short-retry": ["retry_scheduled(0.05s)", "acked"],
        "long-retry": ["retry_scheduled(1.2s)", "acked"],
        "dead": ["dead_lettered(handler)"],
        "raises": ["retry_scheduled(0.05s)", "retry_scheduled(0.1s)", "dead_lettered(max_attempts)"],
        "unknown-type": ["dead_lettered(unknown_handler)"],
        "again": ["rescheduled", "acked"],
    }
    assert next(f for t, _, f in fates if t == "again").at is not None
    assert ("unknown-type", 1) not in hooks.started  # it never reached a handler, yet its fate was reported
    assert len(hooks.internal_errors) == 1  # the unknown type


def test_reschedule_with_arg_none_runs_next_with_none_and_without_arg_keeps_it(client, start_worker) -> None:
    seen: queue.Queue = queue.Queue()
    runs: dict[str, int] = {}
    mux = bgjob.Mux()

    def twice(new_arg: dict) -> bgjob.Handler:
        def handle(job: bgjob.Job) -> bgjob.Result:
            seen.put((job.type, job.arg))
            runs[job.type] = runs.get(job.type, 0) + 1
            return bgjob.Reschedule(bgjob.ByAfterTime(0.1), **new_arg) if runs[job.type] == 1 else bgjob.Complete()

        return handle

    mux.handle("to-none", twice({"arg": None}))
    mux.handle("keep", twice({}))
    start_worker(client, mux)
    client.send_job("to-none", "first")
    client.send_job("keep", {"k": 1})
    by_type: dict[str, list] = {}
    for job_type, arg in drain(seen, 4):
        by_type.setdefault(job_type, []).append(arg)
    assert by_type == {"keep": [{"k": 1}, {"k": 1}], "to-none": ["first", None]}


def test_a_failing_hook_changes_no_fate(client, start_worker, caplog) -> None:
    class Broken(bgjob.WorkerHooks):
        def on_job_start(self, job: bgjob.Job) -> None:
            raise RuntimeError("hook bug")

        def on_settled(self, job: bgjob.Job, outcome: object, fate: bgjob.Fate) -> None:
            raise RuntimeError("hook bug")

    ran: queue.Queue = queue.Queue()
    mux = bgjob.Mux()
    mux.handle("ok", lambda job: ran.put(job.id) or bgjob.Complete())
    start_worker(client, mux, hooks=[Broken()])
    job_id = client.send_job("ok", None)
    assert drain(ran, 1) == [job_id]
    wait_until(lambda: client.queue_stats().in_flight + client.queue_stats().pending == 0, message="acked")
    assert any("hook Broken.on_settled failed" in r.getMessage() for r in caplog.records)


def test_hooks_must_be_worker_hooks(client) -> None:
    with pytest.raises(TypeError, match="WorkerHooks"):
        bgjob.Worker(client, bgjob.Mux(), hooks=[object()])  # type: ignore[list-item]
    with pytest.raises(TypeError, match="WorkerHooks"):
        bgjob.register_hooks(object())  # type: ignore[arg-type]


def test_a_draining_worker_runs_what_it_received_or_hands_it_back_without_using_an_attempt(client) -> None:
    """A long job runs and a pull is open when the worker is stopped: jobs that arrive during the drain either
    run (within the grace period) or are handed back; the next worker sees them at attempt 1 either way."""
    release = threading.Event()
    hooks = Recording()
    runs: queue.Queue = queue.Queue()
    mux = bgjob.Mux()

    @mux.handler("long")
    def long(job: bgjob.Job) -> bgjob.Result:
        runs.put(("long", job.attempt))
        release.wait(30)
        return bgjob.Complete()

    mux.handle("quick", lambda job: runs.put((job.id, job.attempt)) or bgjob.Complete())
    # grace 0.3 s: the long job outlives it; the pull (5 s) is still open when the three quick jobs are sent.
    worker = bgjob.Worker(client, mux, concurrency=4, fetch_timeout=5.0, grace_period=0.3, hooks=[hooks])
    thread = worker.start()
    try:
        long_id = client.send_job("long", None)
        assert drain(runs, 1) == [("long", 1)]
        worker.stop()
        handed = drain(hooks.fates, 1)
        assert [(t, str(f)) for t, _, f in handed] == [("long", "handed_back(grace_period)")]
        quick_ids = [client.send_job("quick", n) for n in range(3)]
        thread.join(30)
    finally:
        release.set()
        thread.join(30)
    assert runs.empty()  # none of them ran in the draining worker
    # Those that reached it through the open pull were stored again (not nak'ed, which would use an attempt);
    # the pull may also bring back the long job it nak'ed at the deadline, which is handed back the same way.
    stored = {i.removeprefix("back:"): i for i in _msg_ids(client)}
    assert sorted(stored) == sorted([long_id, *quick_ids])
    assert any(stored[job_id].startswith("back:") for job_id in quick_ids)
    assert hooks.fates.empty()  # never dispatched: the hooks never heard of them, and hear of no fate

    second = bgjob.Worker(client, mux, concurrency=4, fetch_timeout=0.5)
    thread = second.start()
    try:
        seen = drain(runs, 4)
    finally:
        second.stop()
        thread.join(30)
    assert sorted(s for s in seen if s[0] != "long") == sorted((job_id, 1) for job_id in quick_ids)
    assert ("long", 2) in seen  # it did run once: that attempt counts


def _msg_ids(client: bgjob.Client) -> list[str]:
    """The Nats-Msg-Id of each ready job in the default queue, without its sequence/time suffix."""
    import nats.js.errors

    async def read(core) -> list[str]:
        stream, subject, found, seq = core.topology.queue_stream("default"), core.topology.job_filter("default"), [], 1
        while True:
            try:
                msg = await core.js.get_msg(stream, seq=seq, next=True, subject=subject)
            except nats.js.errors.NotFoundError:
                return found
            found.append(":".join(msg.headers["Nats-Msg-Id"].split(":")[:2]))
            seq = msg.seq + 1

    return client.run(read)


def test_jobs_that_arrive_within_the_grace_period_run_in_the_draining_worker(client) -> None:
    release = threading.Event()
    runs: queue.Queue = queue.Queue()
    mux = bgjob.Mux()
    mux.handle("long", lambda job: runs.put(("long", job.attempt)) or (release.wait(30) and bgjob.Complete()))
    mux.handle("quick", lambda job: runs.put((job.id, job.attempt)) or bgjob.Complete())
    worker = bgjob.Worker(client, mux, concurrency=4, fetch_timeout=5.0, grace_period=20)
    thread = worker.start()
    try:
        client.send_job("long", None)
        assert drain(runs, 1) == [("long", 1)]
        worker.stop()
        quick_ids = [client.send_job("quick", n) for n in range(3)]
        assert sorted(drain(runs, 3)) == sorted((job_id, 1) for job_id in quick_ids)
    finally:
        release.set()
        thread.join(30)
    assert not thread.is_alive()
    wait_until(lambda: client.queue_stats().in_flight + client.queue_stats().pending == 0, message="all acked")


FROZEN_WORKER = r"""
import json, os, sys, time
import bgjob
from bgjob.logs import configure_logging

url, prefix, log = sys.argv[1:4]
configure_logging("INFO")
client = bgjob.Client(bgjob.Settings(url=url, prefix=prefix, ack_wait=2.0))
mux = bgjob.Mux()

class Errors(bgjob.WorkerHooks):
    def on_internal_error(self, error):
        print("INTERNAL-ERROR", error, file=sys.stderr, flush=True)

@mux.handler("frozen")
def frozen(job):
    with open(log, "a") as f:
        f.write(json.dumps({"attempt": job.attempt, "pid": os.getpid()}) + "\n")
    if job.attempt == 1:
        time.sleep(1.0)   # the test SIGSTOPs us meanwhile
    return bgjob.Complete()

bgjob.Worker(client, mux, concurrency=2, fetch_timeout=0.5, hooks=[Errors()]).run()
"""


def test_a_worker_frozen_past_ack_wait_warns_when_it_wakes_and_counts_an_internal_error(
    nats_server, prefix, client, tmp_path
) -> None:
    log = tmp_path / "runs.jsonl"
    frozen = python_process(FROZEN_WORKER, nats_server.url, prefix, str(log), stderr=subprocess.PIPE, text=True)
    other = None
    try:
        job_id = client.send_job("frozen", None)
        wait_until(lambda: log.exists() and log.read_text(), message="the first run")
        frozen.send_signal(signal.SIGSTOP)  # a stalled VM, a GC pause
        other = python_process(FROZEN_WORKER, nats_server.url, prefix, str(log))
        wait_until(lambda: len(log.read_text().splitlines()) == 2, timeout=30, message="the redelivery elsewhere")
        wait_until(lambda: client.queue_stats().in_flight + client.queue_stats().pending == 0, message="acked")
        frozen.send_signal(signal.SIGCONT)
        time.sleep(0)  # nothing to wait for here: the warning is read from stderr below, after SIGTERM
        deadline = time.monotonic() + 20
        lines: list[str] = []
        while time.monotonic() < deadline and not any("INTERNAL-ERROR" in line for line in lines):
            line = frozen.stderr.readline()
            if not line:
                break
            lines.append(line)
    finally:
        for proc in (frozen, other):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGCONT)
                proc.send_signal(signal.SIGTERM)
                proc.wait(20)
    text = "".join(lines)
    assert f"job {job_id} (frozen) attempt 1: this worker went" in text, text
    assert "longer than ack_wait" in text
    assert any("INTERNAL-ERROR" in line and job_id in line for line in lines)
    assert [json.loads(r)["attempt"] for r in log.read_text().splitlines()] == [1, 2]


def test_a_schedule_message_carries_the_job_id_and_attempts_but_no_stale_nats_headers(client, start_worker) -> None:
    """What a retry schedule stores: the job's headers, the attempts used, and an @at schedule on its target."""
    hooks = Recording()
    mux = bgjob.Mux()
    mux.handle("later", lambda job: bgjob.Retry(600))
    start_worker(client, mux, hooks=[hooks])
    job_id = client.send_job("later", {"a": 1}, headers={"X-Tenant": "t1"})
    drain(hooks.fates, 1)

    async def read(core):
        topology = core.topology
        stored = await core.js.get_msg(topology.queue_stream("default"), seq=1, next=True,
                                       subject=f"{topology.retry_filter('default')[:-1]}{job_id}.*")
        return stored, topology.job_subject("default", "later")

    stored, target = client.run(read)
    headers = stored.headers
    assert headers["Bgjob-Id"] == job_id and headers["X-Tenant"] == "t1" and headers[HEADER_ATTEMPTS_USED] == "1"
    assert headers[Header.SCHEDULE.value].startswith("@at ")
    assert headers[Header.SCHEDULE_TARGET.value] == target
    assert json.loads(stored.data) == {"a": 1}


def test_stopping_a_worker_whose_server_is_gone_returns_without_waiting_out_the_grace_period(own_server) -> None:
    """Nothing in flight and the server down: stop() ends the run at once, not after grace_period (30 s)."""
    client = bgjob.Client(bgjob.Settings(url=own_server.url, prefix="gone", retry_for=2, request_timeout=1)).connect()
    worker = bgjob.Worker(client, bgjob.Mux(), fetch_timeout=1.0, grace_period=30)
    thread = worker.start()
    own_server.stop()
    started = time.monotonic()
    worker.stop()
    thread.join(25)
    assert not thread.is_alive(), "the worker did not stop"
    assert time.monotonic() - started < 15  # it used to take grace_period + 5 s
    client.close()
