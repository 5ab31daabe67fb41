"""The Worker: fetches jobs, runs handlers in a pool, and turns each Result into one JetStream operation."""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import re
import signal
import socket
import threading
import time
import traceback as tb
import uuid
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from typing import Any

from nats.aio.msg import Msg

from . import directory, results
from . import job as jobmod
from .client import Client
from .context import current_job
from .core import Core
from .errors import ConnectionError
from .handler import HandlerFunc, Mux
from .middleware import Handler, Middleware, chain
from .pool import Pool, make_pool
from .pull import PullRequests
from .result import Complete, Result
from .retry import RetryPolicy
from .runtime import Flag, Runtime
from .settle import Delivery, Failure, Settler, log_context
from .signing import Verifier

log = logging.getLogger("bgjob.worker")


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
        pool: str = "threads",
    ) -> None:
        jobmod.validate_queue(queue)
        if concurrency < 1:
            raise ValueError("concurrency must be >= 1")
        if pool not in ("threads", "gevent"):
            raise ValueError(f"unknown pool {pool!r}: use 'threads' or 'gevent'")
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
        self._inflight: dict[int, Delivery] = {}
        self.pool = pool
        # Raw-lock flags, not threading.Events: they are set from the runtime thread even under gevent.
        self._stop_requested = Flag()
        self._started = Flag()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_event: asyncio.Event | None = None
        self._capacity: asyncio.Event | None = None
        self._pool: Pool | None = None
        keys = client.settings.verify_keys
        self._verifier = Verifier(keys) if keys else None
        self._settler = Settler(queue, self.retry_policy, self._internal_error)
        self._completed: collections.deque[Delivery] = collections.deque()
        self._core: Core | None = None
        self._runtime: Runtime | None = None
        host = re.sub(r"[^-_a-zA-Z0-9]", "_", socket.gethostname())[:60]
        #: this worker's id in the worker directory and in stored results.
        self.id = f"{host}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        #: jobs settled so far.
        self.processed = 0
        self._signals = 0

    # -- public, blocking --------------------------------------------------------------------------
    def run(self) -> None:
        """Process jobs until stop() or SIGTERM/SIGINT (handled when run in the main thread)."""
        runtime, core = self.client._ensure()
        # Made here: a gevent pool belongs to the hub of the thread that runs the worker.
        self._pool = make_pool(self.pool, self.concurrency, name=f"bgjob-{self.queue}")
        call = runtime.start_call(self._serve(core))
        restore = self._install_signal_handlers()
        try:
            while not call.wait(0.5):
                pass  # wake up now and then so signal handlers run in the main thread
            call.value()
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
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._on_stop)

    def _on_stop(self) -> None:
        if self._stop_event is not None and self._capacity is not None:
            self._stop_event.set()
            self._capacity.set()  # wakes the fetch loop, which waits on this one event

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
        self._core = core
        await core.ensure_queue(self.queue)
        await core.ensure_dlq()
        stream, consumer = core.topology.queue_stream(self.queue), core.topology.consumer(self.queue)
        ack_wait = (await core.js.consumer_info(stream, consumer)).config.ack_wait or core.settings.ack_wait
        pull = PullRequests(core, stream, consumer, expires=self.fetch_timeout)
        inbox = core.nc.new_inbox()

        async def on_message(msg: Msg) -> None:
            await self._on_message(core, pull, msg)

        sub = await core.nc.subscribe(inbox, cb=on_message)
        runtime = self._runtime = self.client._runtime
        assert runtime is not None
        runtime.add_wakeup_hook(self._settle_completed)
        heartbeats = asyncio.create_task(self._heartbeat(ack_wait))
        announcements = asyncio.create_task(self._announce(core))
        log.info("worker on queue %r: concurrency %d, handlers %s", self.queue, self.concurrency, self.mux.types())
        self._started.set()
        # Ask for more jobs once this many slots are free, so pulls come in batches under load.
        threshold = max(1, min(self.concurrency, self.max_batch) // 4)
        try:
            while not self._stop_event.is_set():
                pull.expire_lost()
                free = self.concurrency - len(self._inflight) - pull.requested
                if free > 0 and (free >= threshold or pull.requested == 0):
                    try:
                        await pull.request(min(free, self.max_batch), inbox)
                    except Exception as exc:
                        if core.lost:  # closed for good: let run() fail so a supervisor restarts the worker
                            raise ConnectionError("the NATS connection was closed; the worker stops") from exc
                        log.warning("pull request on %s failed: %r", stream, exc)
                        await self._wait(self._stop_event, timeout=1.0)
                        continue
                self._capacity.clear()
                await self._wait(self._capacity, timeout=pull.time_left())
                if pull.consumer_gone:
                    await self._reprovision(core)
                    pull.consumer_gone = False
        finally:
            await self._drain(core, pull)
            runtime.remove_wakeup_hook(self._settle_completed)
            heartbeats.cancel()
            announcements.cancel()
            try:
                await directory.withdraw(core, self.id)
            except Exception as exc:  # noqa: BLE001 - the entry then expires with its TTL
                log.debug("could not withdraw from the worker directory: %r", exc)
            try:
                await sub.unsubscribe()
            except Exception:  # noqa: BLE001 - the connection may be gone
                pass

    async def _reprovision(self, core: Core) -> None:
        core._provisioned.discard(self.queue)
        try:
            await core.ensure_queue(self.queue)
        except Exception as exc:  # noqa: BLE001 - tried again on the next failure
            log.warning("re-creating the stream/consumer of queue %r failed: %r", self.queue, exc)
            await self._wait(self._stop_event, timeout=1.0)

    async def _on_message(self, core: Core, pull: PullRequests, msg: Msg) -> None:
        if not msg.reply:  # pull-request statuses have no ack subject; every delivered job has one
            pull.on_status(msg.headers or {})
        else:
            pull.requested = max(0, pull.requested - 1)
            if self._stop_event.is_set() or len(self._inflight) >= self.concurrency:
                await self._give_back(msg)
            else:
                item = Delivery(msg)
                self._inflight[id(msg)] = item
                if msg.headers and results.HEADER_STORE_RESULT in msg.headers:
                    self._runtime.spawn(self._start_with_result(core, item))
                else:
                    self._pool.submit(self._run_job, core, item)  # type: ignore[union-attr]
        self._capacity.set()

    @staticmethod
    async def _wait(event: asyncio.Event, timeout: float) -> None:
        """Until `event` is set or `timeout` seconds passed (no task per wait: this is the hot loop)."""
        try:
            async with asyncio.timeout(timeout):
                await event.wait()
        except TimeoutError:
            pass

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

    async def _announce(self, core: Core) -> None:
        """Keep this worker's entry in the worker directory fresh."""
        from . import __version__

        started = jobmod.format_time(datetime.now(timezone.utc))
        while True:
            entry = {
                "id": self.id, "host": socket.gethostname(), "pid": os.getpid(), "queues": [self.queue],
                "concurrency": self.concurrency, "in_flight": len(self._inflight), "processed": self.processed,
                "started_at": started, "last_beat": jobmod.format_time(datetime.now(timezone.utc)),
                "version": __version__,
            }  # fmt: skip
            try:
                await directory.announce(core, entry)
            except Exception as exc:  # noqa: BLE001 - tried again at the next beat
                log.debug("worker directory heartbeat failed: %r", exc)
            await asyncio.sleep(core.settings.worker_ttl / 3)

    async def _drain(self, core: Core, pull: PullRequests) -> None:
        if self._inflight:
            log.info("draining %d in-flight jobs (grace %.0fs)", len(self._inflight), self.grace_period)
            deadline = time.monotonic() + self.grace_period
            while self._inflight and time.monotonic() < deadline:
                self._capacity.clear()
                await self._wait(self._capacity, timeout=deadline - time.monotonic())
        for item in list(self._inflight.values()):
            if item.applying:
                continue
            item.abandoned = True
            self._inflight.pop(id(item.msg), None)
            await self._give_back(item.msg)
            log.warning("job %s did not finish within the grace period; returned to the queue", item.job_id or "?",
                        extra=log_context(item))  # fmt: skip
        # Jobs still being settled, and pulls still open (their jobs are given back as they arrive).
        deadline = time.monotonic() + 10
        while (self._inflight or pull.requested) and time.monotonic() < deadline and pull.time_left() > 0:
            self._capacity.clear()
            await self._wait(self._capacity, timeout=min(pull.time_left(), deadline - time.monotonic()))
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

    async def _start_with_result(self, core: Core, item: Delivery) -> None:
        """Record RUNNING for a job that stores its result, then run it."""
        msg, headers = item.msg, item.msg.headers or {}
        meta = msg.metadata
        job_id = _job_id(headers, meta.sequence.stream)
        try:
            item.result = await results.record_running(
                core, job_id, core.topology.job_type_of(self.queue, msg.subject), self.queue, meta.num_delivered,
                headers.get(jobmod.HEADER_ENQUEUED_AT), self.id,
            )  # fmt: skip
        except Exception as exc:  # noqa: BLE001 - results are a report; the job runs regardless
            log.warning("could not store the RUNNING result of job %s: %r", job_id, exc)
        self._pool.submit(self._run_job, core, item)  # type: ignore[union-attr]

    # -- one job, in a pool thread -----------------------------------------------------------------
    def _run_job(self, core: Core, item: Delivery) -> None:
        """Decode the job and run its handler, then hand the outcome back to the loop (whatever happens)."""
        try:
            self._verify_decode_call(core, item)
        except BaseException as exc:  # a bug of ours: dead-letter the job rather than strand it in flight
            log.exception("internal error on job %s", item.job_id or "?")
            item.job_id, item.job_type = item.job_id or "unknown", item.job_type or "unknown"
            item.outcome, item.reason = Failure(f"internal error: {type(exc).__name__}: {exc}"), "internal_error"
        self._completed.append(item)
        self._runtime.wake()  # type: ignore[union-attr]

    def _verify_decode_call(self, core: Core, item: Delivery) -> None:
        msg = item.msg
        meta = msg.metadata
        item.attempt = meta.num_delivered
        headers = msg.headers or {}
        item.job_type = core.topology.job_type_of(self.queue, msg.subject)
        item.job_id = _job_id(headers, meta.sequence.stream)
        refusal = self._verifier.check(self.queue, headers, msg.data) if self._verifier else None
        if refusal is not None:
            item.outcome, item.reason = Failure(f"signature: {refusal}"), "signature"
            return
        try:
            job = self._decode(msg, item.job_id, item.job_type, item.attempt)
        except jobmod.DecodeError as exc:
            item.outcome, item.reason = Failure(f"DecodeError: {exc}"), "decode"
            return
        handler = self.mux.get(item.job_type)
        if handler is None:
            known = ", ".join(self.mux.types())
            error = f"no handler for job type {item.job_type!r} on this worker (known: {known})"
            item.outcome, item.reason = Failure(error), "unknown_handler"
        else:
            item.outcome = self._call(handler, job)

    def _settle_completed(self) -> None:
        """Wake-up hook: settle every job whose handler has returned, in one task."""
        if not self._completed:
            return
        batch = []
        while self._completed:
            item = self._completed.popleft()
            if not item.abandoned:
                item.applying = True
                batch.append(item)
        if batch:
            self._runtime.spawn(self._settle_batch(batch))

    async def _settle_batch(self, batch: list[Delivery]) -> None:
        core = self._core
        for item in batch:
            if isinstance(item.outcome, Complete) and not core.settings.double_ack and item.result is None:
                try:
                    await item.msg.ack()  # buffered, no round trip: settle inline
                except Exception as exc:  # noqa: BLE001 - redelivered after ack_wait; a duplicate, not a loss
                    log.warning("ack of job %s failed: %r", item.job_id, exc, extra=log_context(item))
                self._finished(item)
            else:
                task = self._runtime.spawn(self._settler.settle(core, item))
                task.add_done_callback(lambda _t, item=item: self._finished(item))

    def _finished(self, item: Delivery) -> None:
        self._inflight.pop(id(item.msg), None)
        self.processed += 1
        if self._capacity is not None:
            self._capacity.set()

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
            # Jobs fired by a periodic schedule were enqueued when the server stored them.
            enqueued_at=jobmod.parse_time(headers.get(jobmod.HEADER_ENQUEUED_AT)) or msg.metadata.timestamp,
            headers=jobmod.user_headers(headers),
            max_attempts=self.retry_policy.max_attempts,
        )

    def _call(self, handler: HandlerFunc, job: jobmod.Job) -> Result | Failure:
        """Run the middleware chain and handler; never raises."""
        wrapped = self._chains.get(job.type)
        if wrapped is None:
            wrapped = self._chains[job.type] = chain(self.middleware, handler)
        token = current_job.set(job)
        try:
            result = wrapped(job)
        except BaseException as exc:  # noqa: BLE001 - a handler's failure is the job's, not the worker's
            log.warning("job %s (%s) attempt %d raised %s: %s", job.id, job.type, job.attempt, type(exc).__name__, exc)
            return Failure(f"{type(exc).__name__}: {exc}", "".join(tb.format_exception(exc)))
        finally:
            current_job.reset(token)
        if not isinstance(result, Result):
            return Failure(
                f"handler for {job.type!r} returned {result!r}; return bgjob.Complete(), Retry(...), "
                "MoveToDlq(...) or Reschedule(...)"
            )
        return result

    def _internal_error(self) -> None:
        for mw in self.middleware:
            hook = getattr(mw, "on_internal_error", None)
            if hook is not None:
                hook()


def _job_id(headers: dict[str, str], stream_seq: int) -> str:
    raw_id = headers.get(jobmod.HEADER_ID)
    if jobmod.is_valid_job_id(raw_id):
        return raw_id  # type: ignore[return-value]
    # Published by a periodic schedule or by hand: the stream sequence makes it unique.
    schedule = headers.get("Bgjob-Schedule")
    return f"{schedule if jobmod.is_valid_job_id(schedule) else 'seq'}-{stream_seq}"
