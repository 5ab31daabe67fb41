"""A handler's options (HandlerOptions), per-handler middleware (choria asyncjobs' per-route middleware) and
job.heartbeat() (dagnats' Heartbeat); end to end on a real nats-server where a worker is involved."""

from __future__ import annotations

import asyncio
import queue
import time
from datetime import timedelta

import pytest

import bgjob
from bgjob.worker.loop import FetchLoop

from .conftest import drain, wait_until


def test_options_are_kept_per_type_with_defaults_for_others() -> None:
    mux = bgjob.Mux()
    policy = bgjob.RetryPolicy(max_attempts=2)

    def mw(job: bgjob.Job, call_next) -> bgjob.Result:
        return call_next(job)

    mux.handle("a", lambda job: bgjob.Complete(), sensitive=["card"], retry_policy=policy, middleware=[mw],
               time_limit=timedelta(seconds=90))  # fmt: skip
    mux.handle("b", lambda job: bgjob.Complete(), time_limit=2)
    assert mux.options("a") == bgjob.HandlerOptions(sensitive=frozenset({"card"}), retry_policy=policy,
                                                    middleware=(mw,), time_limit=90.0)  # fmt: skip
    assert mux.options("b").time_limit == 2.0 and mux.options("b").retry_policy is None
    assert mux.options("unknown") == bgjob.HandlerOptions()
    assert mux.sensitive_keys("a") == frozenset({"card"}) and mux.sensitive_keys("b") == frozenset()
    with pytest.raises(AttributeError):
        mux.options("a").time_limit = 1  # type: ignore[misc]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"time_limit": 0}, "time_limit must be a finite number of seconds > 0"),
        ({"time_limit": -1.5}, "time_limit must be a finite number of seconds > 0"),
        ({"time_limit": float("inf")}, "time_limit must be a finite number of seconds > 0"),
        ({"time_limit": timedelta(0)}, "time_limit must be a finite number of seconds > 0"),
        ({"time_limit": True}, "time_limit must be seconds"),
        ({"time_limit": "30"}, "time_limit must be seconds"),
        ({"retry_policy": {"max_attempts": 2}}, "retry_policy must be a bgjob.RetryPolicy"),
        ({"middleware": [object()]}, "middleware must be callables"),
        ({"middleware": [bgjob.Recovery]}, "middleware must be callables"),
        ({"middleware": lambda job, call_next: call_next(job)}, "middleware must be a list"),
        ({"sensitive": "card"}, "sensitive must be a list"),
    ],
)
def test_bad_options_are_refused_naming_the_type(options, message) -> None:
    mux = bgjob.Mux()
    with pytest.raises(bgjob.HandlerError, match=f"handler for 't': {message}"):
        mux.handle("t", lambda job: bgjob.Complete(), **options)
    with pytest.raises(bgjob.HandlerError, match=message):
        mux.handler("t", **options)(lambda job: bgjob.Complete())
    assert "t" not in mux


def test_handler_middleware_runs_inside_the_workers_around_its_handler_only(client, start_worker) -> None:
    calls: queue.Queue = queue.Queue()
    mux = bgjob.Mux()

    def outer(job: bgjob.Job, call_next) -> bgjob.Result:
        calls.put(("worker", job.type))
        return call_next(job)

    def first(job: bgjob.Job, call_next) -> bgjob.Result:
        calls.put(("first", job.type))
        return call_next(job)

    def second(job: bgjob.Job, call_next) -> bgjob.Result:
        calls.put(("second", job.type))
        return call_next(job)

    @mux.handler("billing", middleware=[first, second])
    def billing(job: bgjob.Job) -> bgjob.Result:
        calls.put(("handler", job.type))
        return bgjob.Complete()

    mux.handle("report", lambda job: calls.put(("handler", job.type)) or bgjob.Complete())
    start_worker(client, mux, middleware=[outer], concurrency=1)
    client.send_job("billing", None)
    assert drain(calls, 4) == [("worker", "billing"), ("first", "billing"), ("second", "billing"),
                               ("handler", "billing")]  # fmt: skip
    client.send_job("report", None)
    assert drain(calls, 2) == [("worker", "report"), ("handler", "report")]
    client.send_job("billing", None)  # the chain is built once per type, and stays the same
    assert [name for name, _ in drain(calls, 4)] == ["worker", "first", "second", "handler"]
    assert calls.empty()


def test_handler_middleware_can_settle_the_job(client, start_worker) -> None:
    runs: queue.Queue = queue.Queue()
    mux = bgjob.Mux()

    def refuse(job: bgjob.Job, call_next) -> bgjob.Result:
        return bgjob.MoveToDlq("refused by the handler's middleware", reason="policy")

    mux.handle("guarded", lambda job: runs.put(job.id) or bgjob.Complete(), middleware=[refuse])
    start_worker(client, mux)
    client.send_job("guarded", None)
    entry = wait_until(lambda: client.dlq.list(), message="dead letter")[0]
    assert entry.reason == "policy" and runs.empty()


def test_django_style_registry_passes_the_options_through() -> None:
    pytest.importorskip("django")
    from bgjob_django.registry import Registry, handler

    registry = Registry()
    policy = bgjob.RetryPolicy(max_attempts=1)

    @handler("t", mux=registry, sensitive=["pin"], retry_policy=policy, time_limit=5)
    def t(job: bgjob.Job) -> bgjob.Result:
        return bgjob.Complete()

    assert registry.options("t") == bgjob.HandlerOptions(sensitive=frozenset({"pin"}), retry_policy=policy,
                                                         time_limit=5.0)  # fmt: skip
    with pytest.raises(bgjob.HandlerError, match="time_limit"):
        handler("u", mux=registry, time_limit=0)(t)


# -- job.heartbeat() ------------------------------------------------------------------------------------------
@pytest.fixture
def no_automatic_heartbeats(monkeypatch: pytest.MonkeyPatch) -> None:
    """The worker's own heartbeats off, so that only job.heartbeat() can keep a lease."""

    async def never(self: FetchLoop) -> None:
        while True:
            await asyncio.sleep(3600)

    monkeypatch.setattr(FetchLoop, "_keep_leases", never)


@pytest.mark.parametrize("beats", [True, False], ids=["heartbeat", "silent"])
@pytest.mark.usefixtures("no_automatic_heartbeats")
def test_job_heartbeat_keeps_the_lease_of_a_job_running_past_ack_wait(make_client, start_worker, beats) -> None:
    client = make_client(ack_wait=1.0)
    runs: queue.Queue = queue.Queue()
    mux = bgjob.Mux()

    @mux.handler("long")
    def long(job: bgjob.Job) -> bgjob.Result:
        runs.put(job.attempt)
        until = time.monotonic() + 3.5  # the job's own work: 3.5x ack_wait
        while time.monotonic() < until:
            if beats:
                job.heartbeat()
            time.sleep(0.05)
        return bgjob.Complete()

    start_worker(client, mux, concurrency=2)
    client.send_job("long", None)
    wait_until(lambda: client.queue_stats().in_flight == 0 and not runs.empty(), timeout=20, message="completion")
    attempts = [runs.get() for _ in range(runs.qsize())]
    if beats:
        assert attempts == [1], "the job was redelivered although its handler sent heartbeats"
    else:  # the control: without heartbeats the lease lapses and JetStream delivers the job again
        assert attempts[:2] == [1, 2]


def test_heartbeat_outside_a_worker_does_nothing() -> None:
    job = bgjob.Job(id="j", type="t", arg=None)
    job.heartbeat()
    assert job.deadline is None


def test_a_failing_heartbeat_never_reaches_the_handler() -> None:
    def broken() -> None:
        raise RuntimeError("connection closed")

    job = bgjob.Job(id="j", type="t", arg=None, _heartbeat=broken)
    job.heartbeat()
    assert "heartbeat" not in repr(job)
