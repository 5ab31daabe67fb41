"""Workflows (bgjob.workflows): chains, groups, chords and DAGs of job steps, their state in JetStream, crash
safety with real processes (each step runs at least once, its successors start exactly once)."""

from __future__ import annotations

import collections
import json
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

import bgjob
from bgjob.core import Core
from bgjob.workflows import list_runs

from .conftest import python_process, wait_until


def typed_mux(counts: collections.Counter | None = None, gate: threading.Event | None = None) -> bgjob.Mux:
    """Handlers reading the typed-job wire arg {"args": [...], "kwargs": {...}}."""
    mux = bgjob.Mux()
    counts = counts if counts is not None else collections.Counter()
    lock = threading.Lock()

    def step(name: str, fn: Callable[..., object]) -> None:
        def handler(job: bgjob.Job) -> bgjob.Result:
            with lock:
                counts[name] += 1
            return bgjob.Complete(fn(*job.arg["args"], **job.arg["kwargs"]))

        mux.handle(name, handler)

    step("add", lambda a, b=0: a + b)
    step("mul", lambda a, b=1: a * b)
    step("total", lambda values: sum(values))
    step("pair", lambda values: values)
    step("const", lambda v: v)

    def boom(*args: object, **kwargs: object) -> object:
        raise RuntimeError("boom in step")

    step("boom", boom)

    def wait(*args: object) -> object:
        assert gate is not None
        gate.wait(30)
        return args[0] if args else None

    step("wait", wait)
    return mux


def s(job_type: str, *args: object, **kwargs: object) -> bgjob.Signature:
    return bgjob.signature(job_type, *args, **kwargs)


def test_chain_of_three(client: bgjob.Client, start_worker: Callable[..., bgjob.Worker]) -> None:
    start_worker(client, typed_mux())
    run = client.start(bgjob.chain(s("add", 1, 2), s("mul", 10), s("add", 5)))
    assert run.result(timeout=20) == 35
    status = run.status()
    assert status.state == "succeeded"
    assert [st.state for st in status.steps.values()] == ["succeeded"] * 3
    assert all(st.started_at and st.finished_at and st.duration is not None for st in status.steps.values())


def test_group_of_fifty(client: bgjob.Client, start_worker: Callable[..., bgjob.Worker]) -> None:
    start_worker(client, typed_mux())
    run = bgjob.group(s("mul", i, 2) for i in range(50)).start(client)
    assert run.result(timeout=30) == [i * 2 for i in range(50)]


def test_chord(client: bgjob.Client, start_worker: Callable[..., bgjob.Worker]) -> None:
    counts: collections.Counter = collections.Counter()
    start_worker(client, typed_mux(counts))
    run = client.start(bgjob.chain(s("add", 1), bgjob.group(s("mul", 2), s("mul", 3), s("mul", 4)), s("total")))
    assert run.result(timeout=20) == 2 + 3 + 4
    assert counts["total"] == 1


def test_diamond(client: bgjob.Client, start_worker: Callable[..., bgjob.Worker]) -> None:
    counts: collections.Counter = collections.Counter()
    start_worker(client, typed_mux(counts))
    wf = bgjob.Workflow()
    wf.step("top", s("add", 1, 1))
    wf.step("left", s("mul", 3), after=["top"])
    wf.step("right", s("mul", 5), after=["top"])
    wf.step("bottom", s("pair"), after=["left", "right"])
    run = wf.start(client)
    assert run.result(timeout=20) == {"bottom": [6, 10]}
    assert counts == {"add": 1, "mul": 2, "pair": 1}


def test_a_step_whose_place_contradicts_its_call_is_refused_at_build_time() -> None:
    """New-user review: these were published, then dead-lettered as decode errors and failed the run."""
    own = bgjob.Mux()

    @own.job(name="wf-parse")
    def parse(html: str) -> int:
        return len(html)

    @own.job(name="wf-store")
    def store(size: int, table: str = "pages") -> str:
        return f"{table}: {size}"

    with pytest.raises(bgjob.WorkflowError, match=r"step '0' \(wf-parse\) lacks its first argument"):
        bgjob.chain(parse.s(), store.s()).workflow().check()
    with pytest.raises(bgjob.WorkflowError, match="lacks its first argument"):
        bgjob.Workflow().step("a", parse.s("x")).step("b", parse.s(), after=["a"], pass_results=False).check()
    with pytest.raises(bgjob.WorkflowError, match=r"step '1' \(wf-parse\) gets the previous step's result"):
        bgjob.chain(parse.s("<x>"), parse.s("<y>")).workflow().check()
    bgjob.chain(parse.s("<x>"), store.s(table="t")).workflow().check()  # store(<size>, table="t"): fine
    bgjob.chain(parse.s("<x>"), bgjob.signature("anything")).workflow().check()  # unknown shape: not refused


def test_build_errors_name_the_steps() -> None:
    wf = bgjob.Workflow().step("a", s("add", 1), after=["c"]).step("b", s("add"), after=["a"])
    wf.step("c", s("add"), after=["b"])
    with pytest.raises(bgjob.WorkflowCycle) as cycle:
        wf.check()
    assert set(cycle.value.cycle) == {"a", "b", "c"}
    with pytest.raises(bgjob.workflows.UnknownStep, match="'nope'"):
        bgjob.Workflow().step("a", s("add"), after=["nope"]).check()
    with pytest.raises(bgjob.workflows.DuplicateStep):
        bgjob.Workflow().step("a", s("add")).step("a", s("add"))
    with pytest.raises(bgjob.WorkflowError, match="job_id"):
        bgjob.Workflow().step("a", s("add").set(job_id="x"))
    with pytest.raises(bgjob.WorkflowError):
        bgjob.group([])


def test_a_step_with_a_target_runs_on_a_worker_holding_the_claim(
    client: bgjob.Client, make_client, start_worker: Callable[..., bgjob.Worker]
) -> None:
    counts: collections.Counter = collections.Counter()
    start_worker(client, typed_mux(counts))  # no claim
    run = client.start(bgjob.chain(s("add", 1, 2), s("mul", 10).set(target="gpu"), s("add", 5)))
    wait_until(lambda: run.status().steps["0"].state == "succeeded", message="step 0 done")
    assert counts["mul"] == 0 and run.status().state == "running"  # the targeted step waits for its claim
    start_worker(make_client(), typed_mux(counts), claims=["gpu"])
    assert run.result(timeout=20) == 35
    assert counts == {"add": 2, "mul": 1}


def test_a_step_with_a_target_timeout_is_sent_with_it(client: bgjob.Client,
                                                      start_worker: Callable[..., bgjob.Worker]) -> None:  # fmt: skip
    from datetime import UTC, datetime, timedelta

    from .test_placement_claims import waiting_placed

    start_worker(client, typed_mux())  # no claim: the targeted step waits
    run = client.start(bgjob.chain(s("add", 1, 2), s("mul", 10).set(target="gpu", target_timeout=timedelta(hours=1))))
    [headers] = wait_until(lambda: list(waiting_placed(client).values()), message="the targeted step sent")
    assert run.status().steps["1"].state == "pending"
    until = bgjob.job.parse_time(headers["Bgjob-Target-Until"])
    assert headers["Bgjob-Target"] == "gpu" and until is not None
    assert datetime.now(UTC) + timedelta(minutes=59) <= until <= datetime.now(UTC) + timedelta(minutes=61)


def test_a_bad_target_or_partition_key_is_refused_at_build_time() -> None:
    with pytest.raises(bgjob.WorkflowError, match="step '1': invalid claim"):
        bgjob.chain(s("add", 1), s("add").set(target="a.b")).workflow().check()
    with pytest.raises(bgjob.WorkflowError, match="invalid partition_key"):
        bgjob.Workflow().step("a", s("add", 1).set(partition_key=""))
    with pytest.raises(bgjob.WorkflowError, match="step 'a': a job cannot have both a target and a partition_key"):
        bgjob.Workflow().step("a", s("add", 1).set(target="gpu", partition_key="k"))
    with pytest.raises(bgjob.WorkflowError, match="step 'a': target_timeout must be more than 0"):
        bgjob.Workflow().step("a", s("add", 1).set(target="gpu", target_timeout=-1))
    with pytest.raises(bgjob.WorkflowError, match="step 'a': target_timeout needs a target"):
        bgjob.Workflow().step("a", s("add", 1).set(target_timeout=60))


def test_failure_skips_dependents_and_names_the_step(client: bgjob.Client,
                                                      start_worker: Callable[..., bgjob.Worker]) -> None:  # fmt: skip
    start_worker(client, typed_mux(), retry_policy=bgjob.RetryPolicy(max_attempts=2, base_delay=0.05, jitter=0))
    wf = bgjob.Workflow()
    wf.step("root", s("add", 1))
    wf.step("bad", s("boom"), after=["root"])
    wf.step("after_bad", s("add", 1), after=["bad"])
    wf.step("last", s("pair"), after=["after_bad", "good"])
    wf.step("good", s("add", 2), after=["root"])
    wf.step("good2", s("add", 3), after=["good"])
    run = client.start(wf)
    with pytest.raises(bgjob.WorkflowFailed) as failed:
        run.result(timeout=30)
    assert failed.value.step == "bad" and "boom in step" in str(failed.value)
    status = wait_until(lambda: (st := run.status()).steps["good2"].state == "succeeded" and st, message="good2")
    states = {name: st.state for name, st in status.steps.items()}
    assert states == {"root": "succeeded", "bad": "failed", "after_bad": "skipped", "last": "skipped",
                      "good": "succeeded", "good2": "succeeded"}  # fmt: skip
    assert status.state == "failed" and status.failed_step == "bad"
    assert "boom in step" in (status.steps["bad"].error or "") and status.steps["bad"].attempts == 2
    assert status.steps["after_bad"].because == "bad"


def test_cancel(client: bgjob.Client, start_worker: Callable[..., bgjob.Worker]) -> None:
    gate = threading.Event()
    counts: collections.Counter = collections.Counter()
    start_worker(client, typed_mux(counts, gate))
    run = client.start(bgjob.chain(s("wait", 1), s("add", 1), s("add", 1)))
    wait_until(lambda: run.status().steps["0"].state == "running", message="first step running")
    assert run.cancel() is True
    assert run.cancel() is False
    gate.set()
    with pytest.raises(bgjob.WorkflowCancelled):
        run.result(timeout=10)
    status = wait_until(lambda: (st := run.status()).steps["0"].state == "succeeded" and st, message="step 0 done")
    assert status.state == "cancelled"
    assert [status.steps[n].state for n in ("1", "2")] == ["cancelled", "cancelled"]
    assert counts["add"] == 0
    assert [r.id for r in list_runs(client)] == [run.id]


def test_fan_in_race_starts_the_successor_once(make_client: Callable[..., bgjob.Client],
                                               start_worker: Callable[..., bgjob.Worker]) -> None:  # fmt: skip
    """200 runs of a 2-input fan-in whose inputs run in two workers (own connections) and return at the same
    moment (a barrier per run): every successor runs exactly once."""
    barriers: dict[str, threading.Barrier] = {}
    lock = threading.Lock()
    joins: collections.Counter = collections.Counter()

    def side(job: bgjob.Job) -> bgjob.Result:
        run = job.headers["X-Bgjob-Workflow"].split("/")[0]
        with lock:
            barrier = barriers.setdefault(run, threading.Barrier(2))
        barrier.wait(timeout=30)
        return bgjob.Complete(job.arg["args"][0])

    def join(job: bgjob.Job) -> bgjob.Result:
        with lock:
            joins[job.headers["X-Bgjob-Workflow"].split("/")[0]] += 1
        return bgjob.Complete(sum(job.arg["args"][0]))

    mux = bgjob.Mux()
    mux.handle("side", side)
    mux.handle("join", join)
    left, right, joiner = make_client(), make_client(), make_client()
    start_worker(left, mux, queue="qa", concurrency=32)
    start_worker(right, mux, queue="qb", concurrency=32)
    start_worker(joiner, mux, concurrency=8)
    producer = make_client()
    _keep_every_write(producer)
    runs = []
    for _batch in range(10):
        started = []
        for i in range(20):
            wf = bgjob.Workflow()
            wf.step("a", s("side", i).set(queue="qa"))
            wf.step("b", s("side", 100).set(queue="qb"))
            wf.step("join", s("join"), after=["a", "b"])
            started.append((producer.start(wf), i))
        for run, i in started:
            assert run.result(timeout=60) == {"join": i + 100}
        runs.extend(run for run, _ in started)
    assert len(runs) == 200
    assert {run.id: joins[run.id] for run in runs} == {run.id: 1 for run in runs}
    # One claim each, by compare-and-swap: the queue's duplicate window alone would also hide a second start of a
    # race's loser (same job id), but not one sent after the window (a step rerun after a crash, long after).
    claims = _claims(producer, "join")
    assert {run.id: claims[run.id] for run in runs} == {run.id: 1 for run in runs}


def _keep_every_write(client: bgjob.Client) -> None:
    """Create the workflows bucket (as bgjob.workflows would) keeping 64 revisions of each key instead of one, so
    that a test can read every write a run's keys got (none gets that many)."""
    from nats.js.api import StorageType

    from bgjob.workflows import BUCKET_SUFFIX, RUN_TTL

    async def create(core: Core) -> None:
        await core.bucket(BUCKET_SUFFIX, ttl=RUN_TTL, storage=StorageType.FILE,
                          description="bgjob workflow runs (every revision kept)", history=64)  # fmt: skip

    client.run(create)


def _claims(client: bgjob.Client, step: str) -> collections.Counter[str]:
    """Per run, the stored writes of `step`'s key that claimed it (state `starting`), read from the bucket's
    stream (a refused compare-and-swap is not stored, so not counted). Needs _keep_every_write first."""
    import nats.js.errors

    async def read(core: Core) -> collections.Counter[str]:
        bucket = core.topology.workflows_bucket
        found: collections.Counter[str] = collections.Counter()
        seq = 1
        while True:
            try:
                msg = await core.js.get_msg(f"KV_{bucket}", seq=seq, subject=f"$KV.{bucket}.*.s.{step}", next=True)
            except nats.js.errors.NotFoundError:
                return found
            if json.loads(msg.data or b"{}").get("state") == "starting":
                found[msg.subject.split(".")[-3]] += 1
            seq = msg.seq + 1

    return client.run(read)


CRASHING_WORKER = r"""
import json, os, signal, sys
import bgjob
import bgjob.workflows as wfm
from nats.aio.msg import Msg

url, prefix, point, log = sys.argv[1:5]
client = bgjob.Client(bgjob.Settings(url=url, prefix=prefix, ack_wait=2.0))
last = {}

def record(**fields):
    with open(log, "a") as f:
        f.write(json.dumps({**fields, "pid": os.getpid()}) + "\n")
        f.flush()
        os.fsync(f.fileno())

def die(where, ref=None):
    run, step = ref or last["ref"]
    record(what="crash", run=run, step=step, point=where)
    os.kill(os.getpid(), signal.SIGKILL)

mux = bgjob.Mux()

@mux.handler("inc")
def inc(job):
    ref = last["ref"] = wfm.step_of(job)
    record(what="ran", run=ref[0], step=ref[1])
    args = job.arg["args"]
    return bgjob.Complete((args[0] if args else 0) + 1)

if point == "recorded":        # the step's value is recorded, its successor not claimed
    original_claim = wfm._claim
    async def claim(*args, **kwargs):
        die("recorded")
    wfm._claim = claim
elif point == "claimed":       # the successor's key is created (starting), its job not sent
    bgjob.Client.send_jobs = lambda self, *a, **k: die("claimed")
elif point == "published":     # the successor's job is stored, not marked queued
    original_send = bgjob.Client.send_jobs
    def send(self, *a, **k):
        original_send(self, *a, **k)
        die("published")
    bgjob.Client.send_jobs = send
elif point == "ack":           # all recorded and sent, the step's delivery not acked
    original_ack = Msg.ack
    async def ack(self, *a, **k):
        value = (self.headers or {}).get("X-Bgjob-Workflow")
        if value:
            die("ack", value.split("/"))
        return await original_ack(self, *a, **k)
    Msg.ack = ack

bgjob.Worker(client, mux, concurrency=1, fetch_timeout=0.5).run()
"""


def test_worker_sigkill_between_steps(make_client: Callable[..., bgjob.Client], nats_server: object, prefix: str,
                                      tmp_path: Path) -> None:  # fmt: skip
    """20 SIGKILLs of a worker process between a step's completion and its successor's start (4 points of that
    window): every run completes once, each step runs once plus once per crash in it, never more."""
    client = make_client(ack_wait=2.0)
    log = tmp_path / "log.jsonl"
    runs = [client.start(bgjob.chain(s("inc"), s("inc"), s("inc"))) for _ in range(20)]
    points = ["recorded", "claimed", "published", "ack"]
    crashes = 0
    deadline = time.monotonic() + 240
    while crashes < 20 and time.monotonic() < deadline:
        proc = python_process(CRASHING_WORKER, nats_server.url, prefix, points[crashes % 4], str(log))  # type: ignore[attr-defined]
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:  # nothing left to crash on: every run finished
            proc.kill()
            proc.wait()
            break
        assert proc.returncode == -signal.SIGKILL
        crashes += 1
    finisher = python_process(CRASHING_WORKER, nats_server.url, prefix, "none", str(log))  # type: ignore[attr-defined]
    try:
        results = [run.result(timeout=60) for run in runs]
        # the deliveries of crashed steps whose successors ran already are redelivered too: let them run
        wait_until(lambda: (q := client.queue_stats()).pending + q.in_flight == 0, timeout=30, message="queue empty")
    finally:
        finisher.send_signal(signal.SIGTERM)
        finisher.wait(timeout=30)
    assert results == [3] * 20
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    crashed = collections.Counter((r["run"], r["step"]) for r in lines if r["what"] == "crash")
    ran = collections.Counter((r["run"], r["step"]) for r in lines if r["what"] == "ran")
    assert sum(crashed.values()) == crashes >= 12
    assert {p for p in (r.get("point") for r in lines) if p} == set(points)
    expected = {(run.id, step): 1 + crashed[(run.id, step)] for run in runs for step in ("0", "1", "2")}
    wrong = {key for key in expected if expected[key] != ran[key]}
    assert dict(ran) == expected, [r for r in lines if (r["run"], r["step"]) in wrong]
    assert all(run.status().state == "succeeded" for run in runs)


def test_cli_workflow_show_and_list(client: bgjob.Client, start_worker: Callable[..., bgjob.Worker],
                                    nats_server: object, prefix: str, monkeypatch: pytest.MonkeyPatch,
                                    capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    from bgjob.cli import main

    start_worker(client, typed_mux(), retry_policy=bgjob.RetryPolicy(max_attempts=1))
    run = client.start(bgjob.chain(s("add", 1), s("boom"), s("add", 1)))
    with pytest.raises(bgjob.WorkflowFailed):
        run.result(timeout=20)
    monkeypatch.setenv("BGJOB_URL", nats_server.url)  # type: ignore[attr-defined]
    monkeypatch.setenv("BGJOB_PREFIX", prefix)
    assert main(["workflow", "show", run.id]) == 0
    out = capsys.readouterr().out
    assert f"workflow {run.id}: failed" in out and "failed at step '1'" in out
    assert "succeeded" in out and "skipped: 1 failed" in out and "RuntimeError: boom in step" in out
    assert main(["workflow", "list"]) == 0
    assert run.id in capsys.readouterr().out
    assert main(["workflow", "show", "nope"]) == 2
    assert "no workflow run 'nope'" in capsys.readouterr().err


def test_a_failure_left_unrecorded_is_found_in_the_dlq(client: bgjob.Client, start_worker: Callable[..., bgjob.Worker],
                                                        monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    """A worker that dies between a step's dead letter and recording it (here: its on_settled never records)
    leaves the run running; status() finds the dead letter and fails the run, naming the step."""
    monkeypatch.setattr(bgjob.workflows.WorkflowHooks, "on_settled", lambda self, job, outcome, fate: None)
    start_worker(client, typed_mux(), retry_policy=bgjob.RetryPolicy(max_attempts=1))
    run = client.start(bgjob.chain(s("boom"), s("add", 1)))
    wait_until(lambda: client.dlq.count() == 1, message="the dead letter")
    status = run.status()
    assert status.state == "failed" and status.failed_step == "0"
    assert status.steps["0"].state == "failed" and "boom in step" in (status.steps["0"].error or "")
    assert status.steps["1"].state == "skipped"
    with pytest.raises(bgjob.WorkflowFailed, match="step '0'"):
        run.result(timeout=5)


def _bucket_keys(client: bgjob.Client) -> list[str]:
    import nats.js.errors

    from bgjob.workflows import _bucket

    async def keys(core: object) -> list[str]:
        kv = await _bucket(core)  # type: ignore[arg-type]
        try:
            return list(await kv.keys())
        except nats.js.errors.NoKeysError:
            return []

    return client.run(keys)


def test_a_job_is_a_step_only_under_its_step_job_id(client: bgjob.Client,
                                                     start_worker: Callable[..., bgjob.Worker]) -> None:  # fmt: skip
    """Jobs carrying another run's X-Bgjob-Workflow header (forged, or forwarded by a step's handler to a child
    job) cannot record, fail or stall that run's step; jobs naming runs that do not exist write nothing."""
    gate = threading.Event()
    counts: collections.Counter = collections.Counter()
    mux = typed_mux(counts, gate)
    mux.handle("noop", lambda job: (counts.update(["noop"]), bgjob.Complete("FORGED"))[1])
    mux.handle("later", lambda job: (counts.update(["later"]), bgjob.Retry(delay=3600))[1])

    mux.handle("child", lambda job: bgjob.Complete("CHILD"))

    def forwards(job: bgjob.Job) -> bgjob.Result:  # a step passing its headers (trace, tenant) on to a child
        client.send_job("child", {}, headers=dict(job.headers))
        wait_until(lambda: counts["settled child"] >= 1, message="the child job settled")
        return bgjob.Complete(job.arg["args"][0] + 100)

    class Settled(bgjob.WorkerHooks):
        def on_settled(self, job: bgjob.Job, outcome: object, fate: object) -> None:
            counts[f"settled {job.type}"] += 1

    mux.handle("forwards", forwards)
    start_worker(client, mux, concurrency=4, hooks=[Settled()],
                 retry_policy=bgjob.RetryPolicy(max_attempts=5, base_delay=0.05, jitter=0))  # fmt: skip
    run = client.start(bgjob.chain(s("wait", 1), s("add", 10), s("forwards")))
    victim = {"X-Bgjob-Workflow": f"{run.id}/1"}
    client.send_job("noop", {"args": [5]}, headers=victim)  # a forged value
    client.send_job("no.such.type", {}, headers=victim)  # a forged failure: dead-lettered
    client.send_job("later", {"args": [5]}, headers=victim)  # a forged start that never ends (Retry)
    client.send_job("noop", {}, headers={"X-Bgjob-Workflow": "ghost/s1"})
    client.send_job("noop", {}, headers={"X-Bgjob-Workflow": "ghost2/s2"}, job_id="wf-ghost2-s2")  # no such run
    client.send_job("noop", {}, headers={"X-Bgjob-Workflow": f"{run.id}/nostep"}, job_id=f"wf-{run.id}-nostep")
    wait_until(lambda: counts["settled noop"] >= 4 and counts["later"] >= 1 and client.dlq.count() == 1,
               message="the forged jobs handled")  # fmt: skip
    assert {n: st.state for n, st in run.status().steps.items()} == {"0": "running", "1": "pending", "2": "pending"}
    gate.set()
    assert run.result(timeout=20) == 111
    status = run.status()
    assert status.state == "succeeded" and [st.attempts for st in status.steps.values()] == [1, 1, 1]
    assert [k for k in _bucket_keys(client) if "ghost" in k or "nostep" in k] == []


def test_a_value_too_large_to_record_fails_the_run(client: bgjob.Client,
                                                   start_worker: Callable[..., bgjob.Worker]) -> None:  # fmt: skip
    mux = typed_mux()
    mux.handle("big", lambda job: bgjob.Complete("x" * job.arg["args"][0]))
    start_worker(client, mux)
    run = client.start(bgjob.chain(s("big", 1_100_000), s("add", 1)))
    with pytest.raises(bgjob.WorkflowFailed) as failed:
        run.result(timeout=20)
    assert failed.value.step == "0" and "ResultTooLarge: return value too large" in str(failed.value)
    assert {n: st.state for n, st in run.status().steps.items()} == {"0": "failed", "1": "skipped"}


def test_a_successor_refused_as_too_large_fails_the_run(client: bgjob.Client,
                                                        start_worker: Callable[..., bgjob.Worker]) -> None:  # fmt: skip
    mux = typed_mux()
    mux.handle("big", lambda job: bgjob.Complete("x" * job.arg["args"][0]))
    start_worker(client, mux)
    run = client.start(bgjob.chain(bgjob.group(s("big", 600_000), s("big", 600_000)), s("pair"), s("add", 1)))
    with pytest.raises(bgjob.WorkflowFailed) as failed:
        run.result(timeout=20)
    assert failed.value.step == "1" and "JobTooLarge: job is" in str(failed.value)
    states = {n: st.state for n, st in run.status().steps.items()}
    assert states == {"0-0": "succeeded", "0-1": "succeeded", "1": "failed", "2": "skipped"}


def test_list_runs_lists_every_run_every_time_and_skips_a_deleted_one(client: bgjob.Client) -> None:
    """Regression: the list came from a KV watch ended by nats-py's end-of-initial-values marker, which can
    come before values already delivered, so the admin's Workflow runs page showed no runs now and then.
    A deleted run key (a tombstone: nats-py raises KeyDeletedError for it) is skipped, not an error."""
    runs = [client.start(bgjob.chain(s("add", n)), run_id=f"listed-{n}") for n in range(12)]

    async def delete(core) -> None:
        await (await bgjob.workflows._bucket(core)).delete("listed-3.run")

    client.run(delete)
    expected = [run.id for run in reversed(runs) if run.id != "listed-3"]
    for _ in range(25):
        assert [r.id for r in list_runs(client)] == expected
    assert [r.id for r in list_runs(client, limit=2)] == expected[:2]
    with pytest.raises(bgjob.WorkflowNotFound):
        bgjob.WorkflowRun(client, "listed-3").status()
