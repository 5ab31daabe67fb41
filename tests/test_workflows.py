"""Workflows (bgjob.workflows): chains, groups, chords and DAGs of job steps, their state in JetStream, crash
safety with real processes (each step runs at least once, its successors start exactly once)."""

from __future__ import annotations

import collections
import threading
from collections.abc import Callable

import pytest

import bgjob
from bgjob.workflows import list_runs

from .conftest import wait_until


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
