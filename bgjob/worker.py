"""The Worker: fetches jobs, runs handlers in a pool, and turns each Result into one JetStream operation."""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import signal
import threading
import time
import traceback as tb
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import nats.errors
from nats.aio.msg import Msg
from nats.js.api import Header

from . import job as jobmod
from .client import Client, Core
from .dlq import move_to_dlq
from .errors import InvalidJob
from .handler import HandlerFunc, Mux
from .middleware import Handler, Middleware, chain
from .pool import ThreadPool
from .result import KEEP_ARG, Complete, MoveToDlq, Reschedule, Result, Retry
from .retry import RetryPolicy

log = logging.getLogger("bgjob.worker")


@dataclass(frozen=True)
class Failure:
    """A handler raised, or returned something that is not a Result."""

    error: str
    traceback: str | None = None


@dataclass
class _InFlight:
    msg: Msg
    task: asyncio.Task | None = None
    last_progress: float = field(default_factory=time.monotonic)
    applying: bool = False
    abandoned: bool = False


class Worker:
    """Runs the handlers of `mux` for the jobs of one queue.

    At most `concurrency` handlers run at once; a failing handler is retried per `retry_policy`
    and then dead-lettered; `stop()` (or SIGTERM/SIGINT) drains in-flight jobs for `grace_period`.
    """

    def __init__(
        self,
        client: Client,
        mux: Mux,
        *,
        queue: str = "default",
        concurrency: int = 16,
        middleware: Sequence[Middleware] = (),
        retry_policy: RetryPolicy | None = None,
        grace_period: float = 30.0,
        fetch_timeout: float = 1.0,
        max_batch: int = 256,
    ) -> None:
        jobmod.validate_queue(queue)
        if concurrency < 1:
            raise ValueError("concurrency must be >= 1")
        self.client = client
        self.mux = mux
        self.queue = queue
        self.concurrency = concurrency
        self.middleware = list(middleware)
        self.retry_policy = retry_policy or RetryPolicy()
        self.grace_period = grace_period
        self.fetch_timeout = fetch_timeout
        self.max_batch = max_batch
        self._chains: dict[str, Handler] = {}
        self._inflight: dict[int, _InFlight] = {}
        self._stop_requested = threading.Event()
        self._started = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_event: asyncio.Event | None = None
        self._capacity: asyncio.Event | None = None
        self._pool = ThreadPool(concurrency, name=f"bgjob-{queue}")
        self._signals = 0

    # -- public, blocking --------------------------------------------------------------------------
    def run(self) -> None:
        """Process jobs until stop() or SIGTERM/SIGINT (handled when run in the main thread)."""
        runtime, core = self.client._ensure()
        future = runtime.submit(self._serve(core))
        restore = self._install_signal_handlers()
        try:
            while True:
                try:
                    future.result(timeout=0.5)
                    return
                except concurrent.futures.TimeoutError:
                    continue
        finally:
            restore()
            self._pool.shutdown()

    def start(self) -> threading.Thread:
        """Run in a background thread; returns once the worker is fetching."""
        thread = threading.Thread(target=self.run, name=f"bgjob-worker-{self.queue}", daemon=True)
        thread.start()
        while not self._started.wait(0.1):
            if not thread.is_alive():
                raise RuntimeError("bgjob worker failed to start (see the log)")
        return thread

    def stop(self) -> None:
        """Stop fetching and drain in-flight jobs; safe from any thread or a signal handler."""
        self._stop_requested.set()
        loop, event = self._loop, self._stop_event
        if loop is not None and event is not None and not loop.is_closed():
            loop.call_soon_threadsafe(event.set)

    @property
    def in_flight(self) -> int:
        return len(self._inflight)

    def _install_signal_handlers(self) -> Callable[[], None]:
        if threading.current_thread() is not threading.main_thread():
            return lambda: None

        def on_signal(signum: int, _frame: Any) -> None:
            self._signals += 1
            if self._signals == 1:
                log.warning("%s: draining %d in-flight jobs (send again to exit now)", signal.Signals(signum).name,
                            self.in_flight)  # fmt: skip
                self.stop()
            else:
                log.warning("second signal: exiting now; unfinished jobs are redelivered after ack_wait")
                os._exit(1)

        previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
        return lambda: [signal.signal(sig, handler) for sig, handler in previous.items()] and None

    # -- the loop (runs on the runtime thread) -----------------------------------------------------
    async def _serve(self, core: Core) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop_event = asyncio.Event()
        self._capacity = asyncio.Event()
        if self._stop_requested.is_set():
            self._stop_event.set()
        await core.ensure_queue(self.queue)
        await core.ensure_dlq()
        stream, consumer = core.topology.queue_stream(self.queue), core.topology.consumer(self.queue)
        sub = await core.js.pull_subscribe_bind(consumer, stream=stream)
        ack_wait = (await core.js.consumer_info(stream, consumer)).config.ack_wait or core.settings.ack_wait
        heartbeats = asyncio.create_task(self._heartbeat(ack_wait))
        log.info("worker on queue %r: concurrency %d, handlers %s", self.queue, self.concurrency, self.mux.types())
        self._started.set()
        backoff = 0.1
        try:
            while not self._stop_event.is_set():
                free = self.concurrency - len(self._inflight)
                if free <= 0:
                    self._capacity.clear()
                    await self._wait_any(self._capacity, self._stop_event)
                    continue
                try:
                    msgs = await sub.fetch(min(free, self.max_batch), timeout=self.fetch_timeout)
                    backoff = 0.1
                except (TimeoutError, nats.errors.TimeoutError):
                    continue
                except Exception as exc:  # noqa: BLE001 - server restarting, failing over, consumer gone
                    log.warning("fetch from %s failed: %r; retrying in %.1fs", stream, exc, backoff)
                    await self._wait_any(self._stop_event, timeout=backoff)
                    backoff = min(backoff * 2, 5.0)
                    core._provisioned.discard(self.queue)
                    try:
                        await core.ensure_queue(self.queue)
                    except Exception as again:  # noqa: BLE001
                        log.debug("re-provisioning %s failed: %r", stream, again)
                    continue
                for msg in msgs:
                    if self._stop_event.is_set():
                        await self._give_back(msg)
                    else:
                        self._dispatch(core, msg)
        finally:
            await self._drain(core)
            heartbeats.cancel()
            try:
                await sub.unsubscribe()
            except Exception:  # noqa: BLE001 - the connection may be gone
                pass

    @staticmethod
    async def _wait_any(*events: asyncio.Event, timeout: float | None = None) -> None:
        waiters = [asyncio.ensure_future(e.wait()) for e in events]
        try:
            await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waiters:
                w.cancel()

    def _dispatch(self, core: Core, msg: Msg) -> None:
        key = id(msg)
        item = _InFlight(msg)
        self._inflight[key] = item
        item.task = asyncio.create_task(self._process(core, item))

        def done(_task: asyncio.Task) -> None:
            self._inflight.pop(key, None)
            if self._capacity is not None:
                self._capacity.set()

        item.task.add_done_callback(done)

    async def _heartbeat(self, ack_wait: float) -> None:
        """Tell JetStream that long-running jobs are still being worked on, so they aren't redelivered."""
        interval = max(0.5, ack_wait / 3)
        while True:
            await asyncio.sleep(interval / 2)
            now = time.monotonic()
            for item in list(self._inflight.values()):
                if not item.abandoned and now - item.last_progress >= interval:
                    item.last_progress = now
                    try:
                        await item.msg.in_progress()
                    except Exception as exc:  # noqa: BLE001 - redelivery is the fallback
                        log.debug("in_progress failed: %r", exc)

    async def _drain(self, core: Core) -> None:
        tasks = [i.task for i in self._inflight.values() if i.task is not None]
        if tasks:
            log.info("draining %d in-flight jobs (grace %.0fs)", len(tasks), self.grace_period)
            await asyncio.wait(tasks, timeout=self.grace_period)
        finishing = []
        for item in list(self._inflight.values()):
            if item.applying:
                finishing.append(item.task)
                continue
            item.abandoned = True
            await self._give_back(item.msg)
            log.warning("job %s did not finish within the grace period; returned to the queue",
                        (item.msg.headers or {}).get(jobmod.HEADER_ID, "?"))  # fmt: skip
        if finishing:
            await asyncio.wait(finishing, timeout=10)
        try:
            await core.nc.flush(timeout=5)
        except Exception as exc:  # noqa: BLE001 - unacked jobs are redelivered anyway
            log.debug("flush after drain failed: %r", exc)

    @staticmethod
    async def _give_back(msg: Msg) -> None:
        try:
            await msg.nak()
        except Exception as exc:  # noqa: BLE001 - it is redelivered after ack_wait anyway
            log.debug("nak failed: %r", exc)

    # -- one job -----------------------------------------------------------------------------------
    async def _process(self, core: Core, item: _InFlight) -> None:
        msg = item.msg
        meta = msg.metadata
        attempt = meta.num_delivered
        headers = msg.headers or {}
        job_type = core.topology.job_type_of(self.queue, msg.subject)
        raw_id = headers.get(jobmod.HEADER_ID)
        job_id = raw_id if jobmod.is_valid_job_id(raw_id) else f"seq-{meta.sequence.stream}"
        try:
            job = self._decode(msg, job_id, job_type, attempt)
        except jobmod.DecodeError as exc:
            await self._settle(core, item, job_id, job_type, attempt, Failure(f"DecodeError: {exc}"), "decode")
            return
        handler = self.mux.get(job_type)
        if handler is None:
            error = f"no handler for job type {job_type!r} on this worker (known: {', '.join(self.mux.types())})"
            await self._settle(core, item, job_id, job_type, attempt, Failure(error), "unknown_handler")
            return
        outcome = await asyncio.wrap_future(self._pool.submit(self._call, handler, job))
        if item.abandoned:
            return
        await self._settle(core, item, job_id, job_type, attempt, outcome)

    def _decode(self, msg: Msg, job_id: str, job_type: str, attempt: int) -> jobmod.Job:
        headers = msg.headers or {}
        declared = headers.get(jobmod.HEADER_TYPE)
        if declared is not None and declared != job_type:
            raise jobmod.DecodeError(f"header {jobmod.HEADER_TYPE} {declared!r} disagrees with subject {msg.subject!r}")
        return jobmod.Job(
            id=job_id,
            type=job_type,
            arg=jobmod.decode_arg(msg.data, headers.get(jobmod.CONTENT_TYPE)),
            queue=self.queue,
            attempt=attempt,
            request_id=headers.get(jobmod.HEADER_REQUEST_ID),
            enqueued_at=jobmod.parse_time(headers.get(jobmod.HEADER_ENQUEUED_AT)),
            headers=jobmod.user_headers(headers),
        )

    def _call(self, handler: HandlerFunc, job: jobmod.Job) -> Result | Failure:
        """Run the middleware chain and handler (in a pool thread); never raises."""
        wrapped = self._chains.get(job.type)
        if wrapped is None:
            wrapped = self._chains[job.type] = chain(self.middleware, handler)
        try:
            result = wrapped(job)
        except BaseException as exc:  # noqa: BLE001 - a handler's failure is the job's, not the worker's
            log.warning("job %s (%s) attempt %d raised %s: %s", job.id, job.type, job.attempt, type(exc).__name__, exc)
            return Failure(f"{type(exc).__name__}: {exc}", "".join(tb.format_exception(exc)))
        if not isinstance(result, Result):
            return Failure(
                f"handler for {job.type!r} returned {result!r}; return bgjob.Complete(), Retry(...), "
                "MoveToDlq(...) or Reschedule(...)"
            )
        return result

    async def _settle(
        self,
        core: Core,
        item: _InFlight,
        job_id: str,
        job_type: str,
        attempt: int,
        outcome: Result | Failure,
        reason: str | None = None,
    ) -> None:
        """Turn the outcome into exactly one of: ack, nak with delay, DLQ-then-term; or leave it for redelivery."""
        msg = item.msg
        item.applying = True

        async def dead_letter(why: str, error: str, trace: str | None) -> None:
            await move_to_dlq(core, msg, queue=self.queue, job_id=job_id, job_type=job_type, reason=why,
                              error=error, traceback=trace, attempts=attempt)  # fmt: skip
            await msg.term()
            log.error("job %s (%s) moved to the DLQ after %d attempt(s): %s: %s", job_id, job_type, attempt, why, error)

        try:
            if reason is not None:
                assert isinstance(outcome, Failure)
                await dead_letter(reason, outcome.error, outcome.traceback)
            elif isinstance(outcome, Complete):
                await (msg.ack_sync(timeout=core.settings.request_timeout) if core.settings.double_ack else msg.ack())
            elif isinstance(outcome, (Retry, Failure)):
                error, trace = _error_of(outcome)
                if self.retry_policy.exhausted(attempt):
                    await dead_letter("max_attempts", error or f"gave up after {attempt} attempts", trace)
                else:
                    delay = outcome.delay_seconds() if isinstance(outcome, Retry) else None
                    await msg.nak(delay=self.retry_policy.delay_for(attempt) if delay is None else delay)
            elif isinstance(outcome, MoveToDlq):
                error, trace = _error_of(outcome)
                await dead_letter(outcome.reason, error, trace)
            elif isinstance(outcome, Reschedule):
                try:
                    await self._reschedule(core, msg, job_id, job_type, outcome)
                except InvalidJob as exc:
                    await dead_letter("handler", f"Reschedule refused: {exc}", None)
                    return
                await msg.ack()
        except Exception as exc:  # noqa: BLE001 - whatever failed, the job must not be lost
            log.error("could not settle job %s (%s): %r; it will be redelivered", job_id, job_type, exc)
            try:
                await msg.nak(delay=self.retry_policy.delay_for(1))
            except Exception:  # noqa: BLE001 - then JetStream redelivers it after ack_wait
                pass

    async def _reschedule(self, core: Core, msg: Msg, job_id: str, job_type: str, result: Reschedule) -> None:
        """Publish the next run as a server-side `@at` schedule (one per job id: a repeat replaces it)."""
        now = datetime.now(timezone.utc)
        due = result.by.next_run(now)
        headers = {k: v for k, v in (msg.headers or {}).items() if not k.startswith("Nats-")}
        if result.arg is KEEP_ARG:
            body = msg.data
        else:
            body, headers[jobmod.CONTENT_TYPE] = jobmod.encode_arg(result.arg)
        headers.update({
            jobmod.HEADER_ENQUEUED_AT: jobmod.format_time(now),
            Header.SCHEDULE.value: f"@at {jobmod.format_time(due)}",
            Header.SCHEDULE_TARGET.value: core.topology.job_subject(self.queue, job_type),
            "Nats-Msg-Id": f"{job_id}@{jobmod.format_time(due)}",
        })  # fmt: skip
        await core.publish(core.topology.delayed_subject(self.queue, job_id), body, headers, queue=self.queue)


def _error_of(outcome: Retry | Failure | MoveToDlq) -> tuple[str, str | None]:
    if isinstance(outcome, Failure):
        return outcome.error, outcome.traceback
    error = outcome.error
    trace = outcome.traceback if isinstance(outcome, MoveToDlq) else None
    if isinstance(error, BaseException):
        if trace is None and error.__traceback__ is not None:
            trace = "".join(tb.format_exception(error))
        return f"{type(error).__name__}: {error}", trace
    return (error or ""), trace
