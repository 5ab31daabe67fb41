"""The Worker: fetches a queue's jobs, runs their handlers in a pool, and settles each one exactly once.

The package, one concern a module: `loop` (pull requests, leases, drain, on the event loop), `dispatch` (decode
and call the chain, in a pool thread), `settle` (every Result -> JetStream operation, and the hooks),
`pull` (pull requests and their statuses), `pool` (threads or greenlets), `time_limit` (handlers' time
limits), `signals` (SIGTERM/SIGINT).
"""

from __future__ import annotations

import asyncio
import os
import re
import socket
import threading
import uuid
from collections.abc import Callable, Sequence
from datetime import timedelta

from .. import job as jobmod
from ..client import Client
from ..core import as_bgjob_error
from ..encryption import cipher_for
from ..errors import ConfigurationError, ConnectionError
from ..events import EventHooks
from ..handler import Mux, time_limit_seconds
from ..hooks import HookSet, WorkerHooks
from ..long_running import LongRunning
from ..middleware import Middleware
from ..placement import claim_lane, grouped_types, lanes_for, singleton_types, validate_claims, validate_groups
from ..retry_policy import RetryPolicy
from ..runtime import Flag
from ..signing import Verifier
from ..workflows import WorkflowHooks
from .claims import ClaimLanes, validate_claims_interval
from .dispatch import Dispatcher
from .loop import FetchLoop
from .pool import Pool, make_pool
from .signals import install_drain_signals
from .time_limit import loop_reporter, make_time_limits

__all__ = ["Worker"]


class Worker:
    """Runs the handlers of `mux` for the jobs of one queue.

    Parameters:
        client: the connection (one per process is enough).
        mux: the handlers by job type.
        queue: the queue's name.
        concurrency: at most this many handlers run at once (threads, or greenlets with pool="gevent").
        middleware: callables `(job, call_next) -> Result` around every handler call, outermost first; those
            that are also `WorkerHooks` (like `bgjob.Metrics`) get the hook calls too.
        hooks: `WorkerHooks` told of every job's start, end and real fate (see `bgjob.hooks`); their
            `scrub(text, job)` masks what bgjob cannot know in failed jobs' errors and tracebacks before they
            are logged or stored (after the default scrub of `job.sensitive` values and sensitive headers).
        retry_policy: backoff for failures and `Retry()` without a delay, and `max_attempts`: a failure on
            the last attempt, or a delivery past it (the process died running it), goes to the DLQ.
        grace_period: seconds `stop()` (or SIGTERM/SIGINT) lets in-flight jobs finish before handing them back.
        fetch_timeout: seconds one pull request waits for jobs on the server.
        max_batch: the most jobs one pull request asks for.
        pool: "threads" (default) or "gevent" (needs a gevent-patched process).
        time_limit: seconds (int/float > 0, or a timedelta) a handler may run before `bgjob.TimeLimitExceeded` is
            raised inside it, for handlers without their own `@mux.handler(..., time_limit=)`; None (default):
            no limit. See `bgjob.worker.time_limit` for what cannot be interrupted.
        claims: placement claims this worker holds (e.g. `["primary", "region/eu"]`, from ebind): it also runs
            the jobs sent with `send_job(..., target=<claim>)`, through one consumer per claim (bgjob.placement).
            Handlers registered `singleton=True` are served through their type's one-slot consumer. Or a
            callable returning such a list, called in a daemon helper thread at start and every
            `claims_interval` seconds (30.0): a claim it adds starts its consumer, one it drops stops being pulled
            (its in-flight jobs finish); one that raises, returns bad claims or has not returned within
            min(claims_interval, 30) seconds is logged and the current claims are kept; stopping never waits for
            it (bgjob.worker.claims). The directory entry (`client.workers()`) lists the current claims.
        groups: worker groups (ebind's worker groups, e.g. `["reports"]`): this worker then runs only the job
            types of `mux` registered with `group=` one of them, each group through its own consumer (up to
            `concurrency` handlers each), and serves nothing else (no main consumer, no singleton, partition or
            claim lane). Without groups (the default) a worker never runs a grouped type: it forwards its jobs
            to their group's consumer, where they wait for a worker of the group (bgjob.placement).

    Raises InvalidJob for a bad queue name, claim or group, TypeError for claims or groups given as one str,
    ConfigurationError for a group none of `mux`'s handlers is in or groups with claims, and ValueError for a
    bad concurrency, pool, time_limit or claims_interval.
    """

    def __init__(
        self,
        client: Client,
        mux: Mux,
        *,
        queue: str = "default",
        concurrency: int = 16,
        middleware: Sequence[Middleware] = (),
        hooks: Sequence[WorkerHooks] = (),
        retry_policy: RetryPolicy | None = None,
        grace_period: float = 30.0,
        fetch_timeout: float = 1.0,
        max_batch: int = 256,
        pool: str = "threads",
        time_limit: float | timedelta | None = None,
        claims: Sequence[str] | Callable[[], Sequence[str]] = (),
        groups: Sequence[str] = (),
        claims_interval: float = 30.0,
    ) -> None:
        jobmod.validate_queue(queue)
        #: the placement claims this worker holds (bgjob.placement); a claims callable's latest answer.
        self._claims_source = claims if callable(claims) else None
        self.claims: tuple[str, ...] = () if callable(claims) else validate_claims(claims)
        #: seconds between two calls of a claims callable (bgjob.worker.claims).
        self.claims_interval = validate_claims_interval(claims_interval)
        #: the worker groups this worker serves, alone (bgjob.placement); () for a default worker.
        self.groups = validate_groups(groups, mux)
        if self.groups and claims:
            raise ConfigurationError("a worker with groups serves only its groups' consumers and holds no claims: "
                                     "run a default worker with the claims beside it")  # fmt: skip
        if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
            raise ValueError(f"concurrency must be an int >= 1, got {concurrency!r}")
        if pool not in ("threads", "gevent"):
            raise ValueError(f"unknown pool {pool!r}: use 'threads' or 'gevent'")
        for item in hooks:
            if not isinstance(item, WorkerHooks):
                raise TypeError(f"hooks must be bgjob.WorkerHooks instances, got {item!r}")
        self.client = client
        self.mux = mux
        self.queue = queue
        self.concurrency = concurrency
        self.middleware = list(middleware)
        # Every worker runs the workflow engine for its own client (bgjob.workflows.WorkflowHooks says why).
        # And the long-running jobs' services (job.checkpoint(), ...; bgjob.long_running), which are hooks too.
        long_running = LongRunning(client)
        hooks = [*hooks, WorkflowHooks(client), long_running]
        self.hooks = HookSet([*self.middleware, *hooks], client.settings.sensitive_headers)
        self.retry_policy = retry_policy or RetryPolicy()
        self.grace_period = grace_period
        self.fetch_timeout = fetch_timeout
        self.max_batch = max_batch
        self.pool = pool
        #: the default time limit in seconds (None: none).
        self.time_limit = time_limit_seconds(time_limit)
        long_running.time_limit = self.time_limit  # what bounds a request-reply handler's wait (bgjob.request_reply)
        # Raw-lock flags, not threading.Events: they are set from the runtime thread even under gevent.
        self._stop_requested = Flag()
        self._started = Flag()
        self._loop: FetchLoop | None = None
        self._lane_loops: list[FetchLoop | ClaimLanes] = []
        host = re.sub(r"[^-_a-zA-Z0-9]", "_", socket.gethostname())[:60]
        #: this worker's id in the worker directory and in stored results.
        self.id = f"{host}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        if client.settings.events:  # lifecycle events (bgjob.events): told by the hooks what really happened
            self.hooks = HookSet([*self.middleware, *hooks, EventHooks(client, self.id)],
                                 client.settings.sensitive_headers)  # fmt: skip

    #: what makes the handler executors (`bgjob.worker.pool.make_pool`); `bgjob.testing.run_jobs` replaces it with
    #: one that runs each job in the calling thread.
    _make_pool: Callable[..., Pool] = staticmethod(make_pool)

    def run(self) -> None:
        """Process jobs until stop() or SIGTERM/SIGINT (handled when run in the main thread); then drain.

        Raises bgjob.ConnectionError when the connection is closed for good (a supervisor restarts the worker),
        and a named bgjob error (e.g. StorageFull, ServerRefused) when the server refuses to set the queue up.
        """
        runtime, core = self.client._ensure()
        # Made here: a gevent pool belongs to the hub of the thread that runs the worker.
        pool = self._make_pool(self.pool, self.concurrency, name=f"bgjob-{self.queue}")
        keys = self.client.settings.verify_keys

        def new_dispatcher() -> Dispatcher:
            return Dispatcher(self.queue, self.mux, self.middleware, self.hooks, self.retry_policy, core.topology,
                              Verifier(keys) if keys else None,
                              cipher_for(self.client.settings.encryption_keys),
                              time_limits=make_time_limits(self.pool, loop_reporter(runtime.loop, self.hooks)),
                              time_limit=self.time_limit)  # fmt: skip

        dispatcher = new_dispatcher()

        def new_claim_loop(claim: str) -> tuple[FetchLoop, Callable[[], None]]:
            """A claim's lane, loop and pool (for a claims callable), made in this thread; and what closes them."""
            lane = claim_lane(core, self.queue, claim, self.concurrency)
            lane_pool = self._make_pool(self.pool, lane.concurrency, name=f"bgjob-{self.queue}-lane")
            lane_dispatcher = new_dispatcher()

            def close() -> None:
                lane_pool.shutdown()
                if lane_dispatcher.time_limits is not None:
                    lane_dispatcher.time_limits.close()

            return FetchLoop(core, runtime, lane_pool, lane_dispatcher, worker_id=self.id,
                             concurrency=lane.concurrency, max_batch=self.max_batch, fetch_timeout=self.fetch_timeout,
                             grace_period=self.grace_period, started=Flag(), lane=lane), close  # fmt: skip

        claim_lanes = None if self._claims_source is None else ClaimLanes(
            self._claims_source, self.claims_interval, runtime, self.queue, new_claim_loop)  # fmt: skip
        lanes = lanes_for(core, self.queue, self.mux, self.claims, self.concurrency, self.groups)
        # A group worker has no main consumer: its first group's lane is its main loop (the directory entry).
        first = lanes.pop(0) if self.groups else None
        loop = self._loop = FetchLoop(core, runtime, pool, dispatcher, worker_id=self.id,
                                      concurrency=self.concurrency, max_batch=self.max_batch,
                                      fetch_timeout=self.fetch_timeout, grace_period=self.grace_period,
                                      started=Flag() if lanes or claim_lanes else self._started, lane=first,
                                      announce=True,
                                      singletons=frozenset(singleton_types(self.mux)),
                                      grouped=grouped_types(self.mux), groups=self.groups)  # fmt: skip
        # Placement lanes (bgjob.placement): one loop each, with its own pool and dispatcher.
        lane_parts = [(self._make_pool(self.pool, lane.concurrency, name=f"bgjob-{self.queue}-lane"), new_dispatcher(),
                       lane) for lane in lanes]  # fmt: skip
        self._lane_loops = [FetchLoop(core, runtime, lane_pool, lane_dispatcher, worker_id=self.id,
                                      concurrency=lane.concurrency, max_batch=self.max_batch,
                                      fetch_timeout=self.fetch_timeout, grace_period=self.grace_period,
                                      started=Flag(), lane=lane)
                            for lane_pool, lane_dispatcher, lane in lane_parts]  # fmt: skip
        loop.claims = self.claims
        if claim_lanes is not None:
            claim_lanes.main = loop
            claim_lanes.tick()  # the callable's first answer: those lanes start once the entry lists them
            self.claims = claim_lanes.current()
            self._lane_loops.append(claim_lanes)
        everything = [loop, *self._lane_loops]
        call = runtime.start_call(_serve_all(everything, self._started) if lanes or claim_lanes else loop.serve())
        if self._stop_requested.is_set():
            for each in everything:
                each.request_stop()
        restore = install_drain_signals(self.stop, lambda: f"{self.in_flight} in-flight jobs")
        try:
            while not call.wait(0.5):  # wake up now and then so signal handlers run in the main thread
                if claim_lanes is not None:
                    claim_lanes.tick()
                    self.claims = claim_lanes.current()
            try:
                call.value()
            except asyncio.CancelledError:
                # The client was closed under the running worker: its loop is gone, so is the connection.
                raise ConnectionError("the worker's client was closed while the worker ran") from None
            except Exception as exc:
                error = as_bgjob_error(exc)  # never a raw nats-py error out of a public call
                if error is exc:
                    raise
                raise error from exc
        finally:
            restore()
            pool.shutdown()
            if dispatcher.time_limits is not None:
                dispatcher.time_limits.close()
            for lane_pool, lane_dispatcher, _ in lane_parts:
                lane_pool.shutdown()
                if lane_dispatcher.time_limits is not None:
                    lane_dispatcher.time_limits.close()
            if claim_lanes is not None:
                claim_lanes.close()

    def start(self) -> threading.Thread:
        """Run in a background thread; returns once the worker is fetching. Raises RuntimeError if it fails."""
        thread = threading.Thread(target=self.run, name=f"bgjob-worker-{self.queue}", daemon=True)
        thread.start()
        while not self._started.wait(0.1):
            if not thread.is_alive():
                raise RuntimeError("bgjob worker failed to start (see the log)")
        return thread

    def stop(self) -> None:
        """Stop fetching and drain in-flight jobs; safe from any thread or a signal handler."""
        self._stop_requested.set()
        loop = self._loop
        if loop is not None and not loop.runtime.loop.is_closed():
            loop.request_stop()
            for lane_loop in self._lane_loops:
                lane_loop.request_stop()

    @property
    def processed(self) -> int:
        """Deliveries settled so far (by the current or last run)."""
        loop = self._loop
        return (loop.processed if loop is not None else 0) + sum(each.processed for each in self._lane_loops)

    @property
    def in_flight(self) -> int:
        """Jobs received and not yet settled."""
        loop = self._loop
        return (len(loop.inflight) if loop is not None else 0) + sum(len(each.inflight) for each in self._lane_loops)


async def _serve_all(loops: Sequence[FetchLoop | ClaimLanes], started: Flag) -> None:
    """Serve the main loop and its placement lanes together; `started` once all fetch. The first to fail stops
    the others (each drains) and its error is raised."""
    tasks = [asyncio.create_task(each.serve()) for each in loops]

    async def mark_started() -> None:
        while not all(each.started.is_set() for each in loops):
            await asyncio.sleep(0.02)
        started.set()

    marker = asyncio.create_task(mark_started())
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for each in loops:
            each.request_stop()
        await asyncio.gather(*tasks, return_exceptions=True)
        for task in done:
            task.result()
        for task in tasks:
            task.result()
    finally:
        marker.cancel()
