"""`run_jobs`: run a queue's pending jobs in the calling thread through a real Worker, and report their fates.

A test sends jobs to a real nats-server, then calls `run_jobs(client, mux)`: a `bgjob.Worker` (the same fetch
loop, dispatch, middleware, hooks and settle code as production; concurrency 1, one job per pull request) serves
the queue from a helper thread, but every handler runs in the thread that called `run_jobs`, one job at a time,
so a test's mocks, thread-locals and database transaction are the handler's. It returns once the queue has
nothing ready (no message the server has not delivered, nothing in flight), or `max_jobs` jobs were settled;
each `JobOutcome` says what the worker really did (the `Fate` from the settle path's hooks).

What it does not wait for: a retry's delay, a delayed (`delay=`/`at=`) or rescheduled job, a periodic schedule
(all wait on the server until due; call run_jobs again once they are); singleton, grouped and placed (`target=`)
jobs run on their own consumers, which run_jobs does not serve.
"""

from __future__ import annotations

import contextlib
import math
import queue as queue_module
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import nats.js.errors

from ..client import Client
from ..errors import BgjobError
from ..handler import Mux
from ..hooks import Failure, Fate, FateKind, WorkerHooks
from ..job import Job
from ..middleware import Middleware
from ..result import Result
from ..retry_policy import RetryPolicy
from ..worker import Worker

__all__ = ["MAX_TIMEOUT", "JobOutcome", "RunJobsTimeout", "run_jobs"]

#: the longest `run_jobs(timeout=)`, in seconds (a day).
MAX_TIMEOUT = 86400.0


class RunJobsTimeout(BgjobError, TimeoutError):
    """`run_jobs` did not find its queue empty (or reach `max_jobs`) within its `timeout`; `outcomes` holds the
    jobs settled until then."""

    def __init__(self, message: str, outcomes: list[JobOutcome]) -> None:
        super().__init__(message)
        self.outcomes = outcomes


@dataclass(frozen=True)
class JobOutcome:
    """One delivery run (or refused) by `run_jobs`: the job, what its handler chain returned, what became of it.

    `outcome` is the handler's Result, or a `Failure` (it raised, or never ran: unknown type, undecodable,
    past its attempts); `fate` is the settle path's report (`bgjob.Fate`: kind, delay in seconds, reason, error).
    """

    job: Job
    outcome: Result | Failure
    fate: Fate

    @property
    def id(self) -> str:
        return self.job.id

    @property
    def type(self) -> str:
        return self.job.type

    @property
    def attempt(self) -> int:
        return self.job.attempt

    @property
    def kind(self) -> FateKind:
        """The fate's kind: acked, retry_scheduled, dead_lettered, rescheduled or handed_back."""
        return self.fate.kind

    @property
    def acked(self) -> bool:
        return self.fate.kind is FateKind.ACKED

    @property
    def retried(self) -> bool:
        """A retry was scheduled (its delay, in seconds, is `fate.delay`)."""
        return self.fate.kind is FateKind.RETRY_SCHEDULED

    @property
    def dead_lettered(self) -> bool:
        """It went to the DLQ (`fate.reason` says why: handler, max_attempts, unknown_handler, ...)."""
        return self.fate.kind is FateKind.DEAD_LETTERED

    @property
    def rescheduled(self) -> bool:
        return self.fate.kind is FateKind.RESCHEDULED

    @property
    def failure(self) -> Failure | None:
        """The Failure when the handler raised or never ran, else None."""
        return self.outcome if isinstance(self.outcome, Failure) else None

    def __repr__(self) -> str:
        return f"JobOutcome(id={self.id!r}, type={self.type!r}, attempt={self.attempt}, fate={self.fate})"


class _Collector(WorkerHooks):
    """Every settled delivery's fate (event-loop thread)."""

    def __init__(self) -> None:
        self.outcomes: list[JobOutcome] = []
        self.settled = threading.Condition()

    def on_settled(self, job: Job, outcome: Result | Failure, fate: Fate) -> None:
        with self.settled:
            self.outcomes.append(JobOutcome(job, outcome, fate))
            self.settled.notify_all()


class _CallerPool:
    """A pool whose tasks are taken and run by the thread calling `run_jobs`."""

    def __init__(self) -> None:
        self.tasks: queue_module.SimpleQueue[tuple[Callable[..., Any], tuple[Any, ...]]] = queue_module.SimpleQueue()
        #: the highest consumer sequence of a delivery handed to this pool.
        self.seen = 0

    def submit(self, fn: Callable[..., Any], *args: Any) -> None:
        with contextlib.suppress(Exception):
            self.seen = max(self.seen, args[0].msg.metadata.sequence.consumer)
        self.tasks.put((fn, args))

    def shutdown(self) -> None:
        pass


class _CallerWorker(Worker):
    """A Worker whose handlers run in the thread calling run_jobs."""

    caller_pool: _CallerPool

    def _make_pool(self, kind: str, size: int, name: str) -> _CallerPool:
        return self.caller_pool


def run_jobs(
    client: Client,
    mux: Mux,
    *,
    queue: str = "default",
    max_jobs: int | None = None,
    timeout: float = 30.0,
    middleware: Sequence[Middleware] = (),
    hooks: Sequence[WorkerHooks] = (),
    retry_policy: RetryPolicy | None = None,
    time_limit: float | None = None,
) -> list[JobOutcome]:
    """Run the jobs ready in `queue` with `mux`'s handlers in this thread, through a real `bgjob.Worker`; returns
    each settled delivery's `JobOutcome`, in settle order (a job retried with a short delay that comes due while
    run_jobs still runs appears once per attempt).

    Returns when the queue holds no job the server has not delivered and none is in flight, or once `max_jobs`
    (an int >= 1; None: no limit) deliveries were settled; jobs fetched but not run are handed back without
    using an attempt. `timeout` (seconds, finite, > 0 and at most MAX_TIMEOUT, a day) bounds the wait for jobs:
    past it RunJobsTimeout (with the outcomes so far). `middleware`, `hooks`, `retry_policy` and `time_limit` are
    the Worker's (defaults: none, none, `RetryPolicy()`, none).

    Handlers run in this thread, so `timeout` is checked only between jobs: it never stops a running handler.
    `time_limit` raises `bgjob.TimeLimitExceeded` inside a handler still running at its limit, but only while
    it runs Python code: a handler blocked in C (`time.sleep(3600)`, a socket read or a database query without
    a timeout, a lock wait) is stopped by neither, and run_jobs returns only when that call does. So: give
    `time_limit` for handlers looping in Python, and keep the handlers' blocking calls bounded (timeouts on
    network and database calls, no unbounded sleeps); a per-test timeout (pytest-timeout) is the backstop.

    Raises ValueError for a bad max_jobs or timeout (not a number, <= 0, NaN, infinite, over MAX_TIMEOUT) or
    time_limit, and what `Worker.run` raises (ConnectionError, ...). Dramatiq's `Worker` + `join()` in tests is
    the model; see the module docstring for what it skips.
    """
    if max_jobs is not None and (isinstance(max_jobs, bool) or not isinstance(max_jobs, int) or max_jobs < 1):
        raise ValueError(f"max_jobs must be an int >= 1 or None, got {max_jobs!r}")
    if (isinstance(timeout, bool) or not isinstance(timeout, int | float) or not 0 < timeout <= MAX_TIMEOUT
            or not math.isfinite(timeout)):  # fmt: skip
        raise ValueError(f"timeout must be finite seconds > 0 and at most {MAX_TIMEOUT:g}, got {timeout!r}")
    deadline = time.monotonic() + timeout
    collector = _Collector()
    worker = _CallerWorker(client, mux, queue=queue, concurrency=1, max_batch=1, fetch_timeout=0.25, grace_period=0,
                           middleware=middleware, hooks=[*hooks, collector], retry_policy=retry_policy,
                           time_limit=time_limit)  # fmt: skip
    pool = worker.caller_pool = _CallerPool()
    pool.seen = _delivered(client, queue)
    thread = worker.start()
    try:
        while True:
            with collector.settled:
                done = len(collector.outcomes)
            if max_jobs is not None and done >= max_jobs:
                break
            if time.monotonic() > deadline:
                raise RunJobsTimeout(f"run_jobs: queue {queue!r} not empty after {timeout:g}s ({done} jobs settled)",
                                     list(collector.outcomes))  # fmt: skip
            try:
                fn, args = pool.tasks.get(timeout=0.02)
            except queue_module.Empty:
                if worker.in_flight == 0 and _idle(client, queue, pool.seen):
                    break
                continue
            fn(*args)  # the worker's _run_job: the handler, in this thread; then the loop settles it

            def progressed(before: int = done) -> bool:
                return len(collector.outcomes) > before or not worker.in_flight

            with collector.settled:
                collector.settled.wait_for(progressed, timeout=max(0.0, deadline - time.monotonic()))
    finally:
        worker.stop()
        thread.join(timeout=max(5.0, deadline - time.monotonic()))
    with collector.settled:
        return [each for each in collector.outcomes
                if not (each.kind is FateKind.HANDED_BACK and each.fate.reason == "drain")]  # fmt: skip


def _delivered(client: Client, queue: str) -> int:
    """The consumer's delivered sequence now (0 when it does not exist yet)."""
    info = _consumer_info(client, queue)
    return info.delivered.consumer_seq if info is not None and info.delivered else 0


def _idle(client: Client, queue: str, seen: int) -> bool:
    """Nothing ready that the server has not delivered, and every delivery made reached the pool."""
    info = _consumer_info(client, queue)
    if info is None:
        return False
    delivered = info.delivered.consumer_seq if info.delivered else 0
    return not info.num_pending and delivered <= seen


def _consumer_info(client: Client, queue: str) -> Any:
    async def read(core: Any) -> Any:
        try:
            return await core.js.consumer_info(core.topology.queue_stream(queue), core.topology.consumer(queue))
        except nats.js.errors.NotFoundError:
            return None

    return client.run(read, idempotent=True)
