"""The fetch loop of one worker, on the runtime's event loop: pull requests sized to free capacity, handing
deliveries to the pool, leases (heartbeats), settling finished jobs, the worker directory, and the drain."""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import os
import socket
import time
from collections.abc import Mapping
from datetime import datetime, timezone

import nats.js.errors
from nats.aio.msg import Msg

from .. import directory, job_results
from .. import job as jobmod
from .._version import __version__
from ..codec import job_id_of
from ..core import Core
from ..dlq import dead_letter_stored
from ..errors import ConnectionError, describe_error
from ..events import EventKind, cut_error, event_body, sink_for
from ..headers import STORE_RESULT
from ..long_running import check_request_subjects
from ..placement import TARGET_SWEEP_INTERVAL, Lane, UntakenSweep, ensure_lane, forward_grouped, forward_singleton
from ..runtime import Flag, Runtime
from ..topology import PARTITIONS
from .dispatch import Delivery, Dispatcher
from .pool import Pool
from .pull import PullRequests, PullTrouble
from .settle import Settler

log = logging.getLogger("bgjob.worker")

#: the server's advisory for a message past its consumer's max_deliver (`.<stream>.<consumer>` follows).
MAX_DELIVERIES_ADVISORY = "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES"
#: seconds between sweeps for messages past max_deliveries whose advisory no worker handled.
SWEEP_INTERVAL = 60.0
#: on a singleton's or partition's lane, the part of ack_wait without a heartbeat after which a delivery's lease
#: counts as lapsed (heartbeats go every third of ack_wait: a gap of two thirds is a stall, not a slow beat).
LANE_LAPSE = 2 / 3


class FetchLoop:
    """Everything a running Worker does on the event loop; made by Worker.run() for one run."""

    def __init__(self, core: Core, runtime: Runtime, pool: Pool, dispatcher: Dispatcher, *, worker_id: str,
                 concurrency: int, max_batch: int, fetch_timeout: float, grace_period: float,
                 started: Flag, lane: Lane | None = None, singletons: frozenset[str] = frozenset(),
                 grouped: Mapping[str, str] | None = None, groups: tuple[str, ...] = (),
                 announce: bool | None = None) -> None:  # fmt: skip
        self.queue = dispatcher.queue
        #: a placement lane (bgjob.placement) this loop serves instead of the queue's main consumer.
        self.lane = lane
        #: singleton types: forwarded from the main consumer to their lanes, never run from it.
        self.singletons = singletons
        #: grouped types and their groups: forwarded from the main consumer to their group's lane, never run from it.
        self.grouped: Mapping[str, str] = grouped or {}
        #: the worker groups this worker serves (its directory entry says so).
        self.groups = groups
        #: whether this loop keeps the worker's directory entry (the main consumer's loop unless told).
        self.announces = lane is None if announce is None else announce
        self.worker_id = worker_id
        self.concurrency = concurrency
        self.max_batch = max_batch
        self.fetch_timeout = fetch_timeout
        self.grace_period = grace_period
        self.started = started
        #: deliveries settled so far.
        self.processed = 0
        self.core = core
        self.runtime = runtime
        self.pool = pool
        self.dispatcher = dispatcher
        self.settler = Settler(core, self.queue, dispatcher.retry_policy, dispatcher.hooks, runtime.spawn)
        self.settler.ordered = lane is not None and lane.ordered
        self.inflight: dict[int, Delivery] = {}
        self.ack_wait = core.settings.ack_wait
        self._completed: collections.deque[Delivery] = collections.deque()
        #: deliveries whose handlers called job.heartbeat(): their leases are renewed on the next wake-up.
        self._beats: collections.deque[Delivery] = collections.deque()
        self._renew_lease = self._renew  # one bound method for every Delivery
        self._stop = asyncio.Event()
        self._capacity = asyncio.Event()
        self._grace_deadline: float | None = None
        self._unavailable_since: float | None = None
        #: stream sequences of messages past max_deliveries being dead-lettered now (see _recover_stranded).
        self._recovering: set[int] = set()
        #: the placement claims the worker holds now, in its directory entry (set by the Worker, bgjob.worker.claims).
        self.claims: tuple[str, ...] = ()
        #: set to write the directory entry now; each `_announced` event is set once an entry was written after it.
        self._announce_soon = asyncio.Event()
        self._announced: list[asyncio.Event] = []

    # -- called from other threads ------------------------------------------------------------------------------
    def request_stop(self) -> None:
        """Begin the drain (any thread)."""
        self.runtime.loop.call_soon_threadsafe(self._on_stop)

    def _on_stop(self) -> None:
        self._stop.set()
        self._capacity.set()  # wakes the fetch loop, which waits on this one event

    def _run_job(self, item: Delivery) -> None:
        """In a pool thread: run the job unless a drain gave it back first, then queue it for settling."""
        # The hand-over with a drain, without a lock on this hot path: each side sets its own flag, then reads the
        # other's. Under the GIL one of them sees the other: never both run it and hand it back as unrun.
        item.started = True
        if item.abandoned:
            return
        try:
            self.dispatcher.run(item)  # never raises; the finally is for the job's sake if it ever does
        finally:
            self._completed.append(item)
            self.runtime.wake()

    # -- the loop ---------------------------------------------------------------------------------------------
    async def serve(self) -> None:
        core = self.core
        await core.ensure_queue(self.queue)
        await core.ensure_dlq()
        if self.announces:  # the worker's first loop: no stream may capture a request-reply subject
            await check_request_subjects(core, self.dispatcher.mux.request_reply_subjects())
        lane = self.lane
        config = await (core.ensure_consumer(self.queue) if lane is None else ensure_lane(core, self.queue, lane))
        self.ack_wait = config.ack_wait or core.settings.ack_wait
        self.dispatcher.max_age, self.dispatcher.max_deliveries = await core.delivery_limits(self.queue, config)
        self.settler.max_deliveries, self.settler.ack_wait = self.dispatcher.max_deliveries, self.ack_wait
        self.settler.stopping = self._stop
        stream, consumer = core.topology.queue_stream(self.queue), config.durable_name or ""
        self.settler.singleton, self.settler.lane_consumer = lane is not None and lane.singleton, (stream, consumer)
        # Before the first pull: the server publishes the advisory when a pull meets a message past max_deliver.
        advisories = await core.nc.subscribe(f"{MAX_DELIVERIES_ADVISORY}.{stream}.{consumer}",
                                             cb=self._on_max_deliveries)  # fmt: skip
        pull = PullRequests(core, stream, consumer, expires=self.fetch_timeout)
        inbox = core.nc.new_inbox()

        async def on_message(msg: Msg) -> None:
            self._on_message(pull, msg)

        sub = await core.nc.subscribe(inbox, cb=on_message)
        self.runtime.add_wakeup_hook(self._settle_completed)
        self.runtime.add_wakeup_hook(self._send_heartbeats)
        leases = asyncio.create_task(self._keep_leases())
        announcements = asyncio.create_task(self._announce() if self.announces else asyncio.sleep(0))
        sweeps = asyncio.create_task(self._sweep_stranded(stream, consumer) if self.lane is None else asyncio.sleep(0))
        untaken = asyncio.create_task(self._sweep_untaken() if self.lane is None else asyncio.sleep(0))
        what, types = f" ({lane.what})" if lane else "", self.dispatcher.mux.types()
        if lane is not None and lane.ordered:  # one of the PARTITIONS lanes: one INFO line for them all
            if lane.what == "partition 0":
                log.info("worker on queue %r (partitions): serving %d partitions, concurrency 1 each, handlers %s",
                         self.queue, PARTITIONS, types)  # fmt: skip
            log.debug("worker on queue %r%s: concurrency %d, handlers %s", self.queue, what, self.concurrency, types)
        else:
            log.info("worker on queue %r%s: concurrency %d, handlers %s", self.queue, what, self.concurrency, types)
        self.started.set()
        # Ask for more jobs once this many slots are free, so pulls come in batches under load.
        threshold = max(1, min(self.concurrency, self.max_batch) // 4)
        try:
            while not self._stop.is_set():
                pull.expire_lost()
                free = self.concurrency - len(self.inflight) - pull.requested
                if free > 0 and (free >= threshold or pull.requested == 0):
                    try:
                        await pull.request(min(free, self.max_batch), inbox)
                    except Exception as exc:
                        if core.lost:  # closed for good: let run() fail so a supervisor restarts the worker
                            raise ConnectionError("the NATS connection was closed; the worker stops") from exc
                        log.warning("pull request on %s failed: %s", stream, describe_error(exc))
                        await _wait(self._stop, timeout=1.0)
                        continue
                self._capacity.clear()
                await _wait(self._capacity, timeout=pull.time_left())
                if pull.trouble is not None:
                    trouble, pull.trouble = pull.trouble, None
                    await self._recover(trouble, stream, consumer)
        finally:
            await self._drain(pull)
            self.runtime.remove_wakeup_hook(self._settle_completed)
            self.runtime.remove_wakeup_hook(self._send_heartbeats)
            leases.cancel()
            announcements.cancel()
            sweeps.cancel()
            untaken.cancel()
            try:
                async with asyncio.timeout(min(2.0, core.settings.request_timeout)):
                    await directory.withdraw(core, self.worker_id)
            except Exception as exc:  # noqa: BLE001 - the entry then expires with its TTL
                log.debug("could not withdraw from the worker directory: %r", exc)
            for subscription in (sub, advisories):
                try:
                    await subscription.unsubscribe()
                except Exception:  # noqa: BLE001 - the connection may be gone
                    pass

    async def _recover(self, trouble: PullTrouble, stream: str, consumer: str) -> None:
        """A pull status said the consumer is gone, or nothing answered: find out which, then act."""
        missing = trouble is PullTrouble.CONSUMER_GONE
        if not missing:
            try:
                await self.core.js.consumer_info(stream, consumer)
            except nats.js.errors.NotFoundError:
                missing = True
            except Exception as exc:  # noqa: BLE001 - JetStream itself is not answering: wait, don't re-create
                self._unavailable(exc)
                await _wait(self._stop, timeout=1.0)  # back off: the next pull in a second, not a tight loop
                return
        if missing:
            log.warning("queue %r: the consumer %s is gone (deleted with its stream?); creating it again", self.queue,
                        consumer)  # fmt: skip
            try:
                if self.lane is None:
                    await self.core.reprovision(self.queue)
                else:
                    self.core._provisioned.discard(self.queue)
                    await ensure_lane(self.core, self.queue, self.lane)
            except Exception as exc:  # noqa: BLE001 - tried again on the next failure
                log.warning("re-creating the stream/consumer of queue %r failed: %s", self.queue, describe_error(exc))
                await _wait(self._stop, timeout=1.0)
        else:
            # The consumer exists but did not answer the pull (its leader is being elected, say): a second's
            # pause, not a tight loop of pulls that each get a 503.
            log.debug("queue %r: pull request got 503 although consumer %s exists; asking again in 1s", self.queue,
                      consumer)  # fmt: skip
            await _wait(self._stop, timeout=1.0)

    def _unavailable(self, exc: BaseException) -> None:
        now = time.monotonic()
        first = self._unavailable_since is None
        if first:
            self._unavailable_since = now
        log.log(logging.WARNING if first else logging.DEBUG,
                "queue %r: JetStream is not answering pull requests (503 no responders; %s): a cluster without "
                "quorum or a restarting server; waiting, the consumer is left as it is", self.queue,
                describe_error(exc))  # fmt: skip

    def _on_message(self, pull: PullRequests, msg: Msg) -> None:
        if not msg.reply:  # pull-request statuses have no ack subject; every delivered job has one
            pull.on_status(msg.headers or {})
        else:
            pull.requested = max(0, pull.requested - 1)
            if (self.singletons or self.grouped) and self.lane is None:
                job_type = self.core.topology.job_type_of(self.queue, msg.subject)
                if job_type in self.singletons:  # its one slot is its own consumer's (bgjob.placement)
                    self.runtime.spawn(forward_singleton(self.core, self.queue, msg, job_type))
                    self._capacity.set()
                    return
                if job_type in self.grouped:  # run only by its group's workers (bgjob.placement)
                    self.runtime.spawn(forward_grouped(self.core, self.queue, msg, job_type, self.grouped[job_type]))
                    self._capacity.set()
                    return
            item = Delivery(msg, renew=self._renew_lease)
            self.inflight[id(msg)] = item
            if self._unavailable_since is not None:
                self._recovered()
            late = self._grace_deadline is not None and time.monotonic() >= self._grace_deadline
            if late or len(self.inflight) > self.concurrency:
                self.inflight.pop(id(msg), None)
                self.runtime.spawn(self.settler.hand_back(item, "drain"))
            elif msg.headers and STORE_RESULT in msg.headers:
                self.runtime.spawn(self._start_with_result(item))
            else:
                self.pool.submit(self._run_job, item)
        self._capacity.set()

    def _recovered(self) -> None:
        log.warning("queue %r: JetStream answers again after %.1fs", self.queue,
                    time.monotonic() - (self._unavailable_since or time.monotonic()))  # fmt: skip
        self._unavailable_since = None

    async def _start_with_result(self, item: Delivery) -> None:
        """Record RUNNING for a job that stores its result, then run it."""
        msg, headers = item.msg, item.msg.headers or {}
        job_id = job_id_of(msg)
        try:
            item.result = await job_results.record_running(
                self.core, job_id, self.core.topology.job_type_of(self.queue, msg.subject), self.queue,
                item.count_attempt(),
                headers.get(jobmod.HEADER_ENQUEUED_AT), self.worker_id,
            )  # fmt: skip
        except Exception as exc:  # noqa: BLE001 - results are a report; the job runs regardless
            log.warning("could not store the RUNNING result of job %s: %s", job_id, describe_error(exc))
        self.pool.submit(self._run_job, item)

    # -- settling ---------------------------------------------------------------------------------------------
    def _settle_completed(self) -> None:
        """Wake-up hook: settle every job whose handler has returned, in one task."""
        if not self._completed:
            return
        batch = []
        now = time.monotonic()
        expired = now - self._lapse_after()  # a delivery not heard of since then lost its lease (checked cheaply)
        while self._completed:
            item = self._completed.popleft()
            if not item.abandoned:
                item.settling = True
                if item.last_progress < expired:
                    self._check_lease(item, now)
                batch.append(item)
        if batch:
            self.runtime.spawn(self.settler.settle_batch(batch, self._finished))

    def _finished(self, item: Delivery) -> None:
        self.inflight.pop(id(item.msg), None)
        self.processed += 1
        self._capacity.set()

    # -- leases -----------------------------------------------------------------------------------------------
    def _lapse_after(self) -> float:
        """Seconds without a heartbeat after which a delivery's lease counts as lapsed: ack_wait; on a singleton's or
        partition's lane LANE_LAPSE of it (the server's ack_wait started when it sent the delivery, a little before
        this process heard of it: such a delivery's settlement asks the server first, bgjob.worker.settle)."""
        return self.ack_wait * (LANE_LAPSE if self.settler.singleton else 1.0)

    def _check_lease(self, item: Delivery, now: float) -> None:
        gap = now - item.last_progress
        if gap > self._lapse_after() and item.lease_lapsed is None:
            item.lease_lapsed = gap

    async def _keep_leases(self) -> None:
        """Tell JetStream that running jobs are still being worked on, so they aren't redelivered; notice when
        the whole process was frozen past ack_wait (then they probably were)."""
        interval = max(0.5, self.ack_wait / 3)
        while True:
            await asyncio.sleep(interval / 2)
            now = time.monotonic()
            for item in list(self.inflight.values()):
                if item.abandoned or item.settling or now - item.last_progress < interval:
                    continue
                self._check_lease(item, now)
                item.last_progress = now
                try:
                    await item.msg.in_progress()
                except Exception as exc:  # noqa: BLE001 - redelivery is the fallback
                    log.debug("in_progress failed: %r", exc)

    def _renew(self, item: Delivery) -> None:
        """`job.heartbeat()`, in the handler's thread or greenlet: renew the lease now unless it was renewed
        within the last second (a quarter of ack_wait when shorter), so a handler may call it in a loop. Only
        queues the delivery and wakes the event loop (no lock, no I/O here)."""
        now = time.monotonic()
        if now - item.last_progress < min(1.0, self.ack_wait / 4):
            return
        item.last_progress = now
        self._beats.append(item)
        self.runtime.wake()

    def _send_heartbeats(self) -> None:
        """Wake-up hook: send the heartbeats handlers asked for, in one task."""
        if self._beats:
            self.runtime.spawn(self._send_in_progress())

    async def _send_in_progress(self) -> None:
        while self._beats:
            item = self._beats.popleft()
            if item.settling or item.abandoned or self.inflight.get(id(item.msg)) is not item:
                continue
            try:
                await item.msg.in_progress()
            except Exception as exc:  # noqa: BLE001 - the automatic heartbeats are the fallback
                log.debug("in_progress (job.heartbeat) failed: %r", exc)

    # -- messages past max_deliveries ---------------------------------------------------------------------
    # JetStream never delivers a message again once the consumer's max_deliver is reached, and a work-queue stream
    # keeps it for ever. A worker settles the last delivery itself (dispatch dead-letters it unrun, settle never
    # hands it back); what is left is a last delivery whose worker died (SIGKILL, OOM) or could not settle it.
    # The server says so with the MAX_DELIVERIES advisory: when a pull request meets the message after its last
    # delivery's ack_wait ran out unacked (or after a nak of it), never while a worker keeps its lease
    # (in_progress); then the message is no longer pending for the server. Each worker of the queue dead-letters
    # it (bgjob.dlq.dead_letter_stored: one dead letter whoever does it, then the message deleted). A worker that
    # still holds it lost its lease (frozen past ack_wait, or cut off): it was settling it (the dead letter is
    # the same message, deduplicated; its term finds nothing), or storing it again (it checks first), or -- only
    # a worker that did not know the queue's max_deliveries -- running it: then the job ran and is in the DLQ.
    # Advisories are at most once: a sweep at start and every SWEEP_INTERVAL seconds finds messages below the
    # consumer's ack floor still in the stream (acked ones are gone from a work-queue stream): the same.
    async def _on_max_deliveries(self, msg: Msg) -> None:
        """The advisory `{"stream_seq": N, "deliveries": D, ...}`: recover that message in a task of its own."""
        try:
            event = json.loads(msg.data)
            seq, deliveries = int(event["stream_seq"]), int(event.get("deliveries") or 0)
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("queue %r: unreadable MAX_DELIVERIES advisory: %r", self.queue, exc)
            return
        self.runtime.spawn(self._recover_stranded(seq, deliveries or self.dispatcher.max_deliveries or 0))

    async def _recover_stranded(self, seq: int, deliveries: int) -> bool:
        """Dead-letter the stranded message at `seq`; False when it failed (the next sweep tries again)."""
        if seq in self._recovering:
            return True
        self._recovering.add(seq)
        try:
            await dead_letter_stored(self.core, self.queue, seq, deliveries=deliveries,
                                     error=f"delivered {deliveries} times, the queue's max_deliveries, and never "
                                           "settled (the worker running its last delivery died or could not settle "
                                           "it): the server would not deliver it again, so it was not run again",
                                     sensitive=self.dispatcher.mux.sensitive_keys)  # fmt: skip
            return True
        except Exception as exc:  # noqa: BLE001 - tried again by the next sweep
            log.warning("queue %r: could not dead-letter the message at stream sequence %d, past max_deliveries: %s; "
                        "tried again within %.0fs", self.queue, seq, describe_error(exc), SWEEP_INTERVAL)  # fmt: skip
            return False
        finally:
            self._recovering.discard(seq)

    async def _sweep_stranded(self, stream: str, consumer: str) -> None:
        """At start and every SWEEP_INTERVAL seconds: recover job messages below the consumer's ack floor that the
        stream still holds (two requests when there are none)."""
        while True:
            try:
                info = await self.core.js.consumer_info(stream, consumer)
                floor = info.ack_floor.stream_seq if info.ack_floor else 0
                deliveries = info.config.max_deliver if info.config.max_deliver and info.config.max_deliver > 0 else 0
                seq = 0
                while floor and seq < floor:
                    try:
                        found = await self.core.js.get_msg(stream, seq + 1, subject=self.core.topology.job_filter(
                            self.queue), next=True)  # fmt: skip
                    except nats.js.errors.NotFoundError:
                        break
                    seq = found.seq or floor
                    if seq > floor or not await self._recover_stranded(seq, deliveries):
                        break
            except Exception as exc:  # noqa: BLE001 - tried again at the next sweep
                log.debug("queue %r: sweep for messages past max_deliveries failed: %r", self.queue, exc)
            await asyncio.sleep(SWEEP_INTERVAL)

    # -- placed jobs nobody took by their target_timeout (bgjob.placement) ---------------------------------------
    async def _sweep_untaken(self) -> None:
        """Every TARGET_SWEEP_INTERVAL seconds: dead-letter (reason `no_target`) the placed jobs of this queue
        whose claim no live worker holds and whose Bgjob-Target-Until has passed (`placement.UntakenSweep`)."""
        sweep = UntakenSweep(self.core, self.queue, self.dispatcher.mux.sensitive_keys, self._no_target_event)
        while True:
            await asyncio.sleep(TARGET_SWEEP_INTERVAL)
            try:
                await sweep.sweep()
            except Exception as exc:  # noqa: BLE001 - tried again at the next sweep
                log.warning("queue %r: sweep for placed jobs past their target_timeout failed: %s", self.queue,
                            describe_error(exc))  # fmt: skip

    def _no_target_event(self, job_id: str, job_type: str, error: str) -> None:
        """With Settings.events: the `dead_lettered` event (reason `no_target`) of a job the sweep dead-lettered."""
        if self.core.settings.events:
            body = event_body(EventKind.DEAD_LETTERED, job_id, job_type, self.queue, 0, datetime.now(timezone.utc),
                              self.worker_id, cut_error(error), "no_target")  # fmt: skip
            sink_for(self.runtime, self.core).emit_body(self.core.topology.event_subject(job_id, self.queue, job_type),
                                                        body)  # fmt: skip

    # -- the worker directory ---------------------------------------------------------------------------------
    async def _announce(self) -> None:
        """Keep this worker's entry in the worker directory fresh."""
        started = jobmod.format_time(datetime.now(timezone.utc))
        while True:
            written, self._announced = self._announced, []  # told once this entry (claims as of now) is written
            entry = {
                "id": self.worker_id, "host": socket.gethostname(), "pid": os.getpid(), "queues": [self.queue],
                "concurrency": self.concurrency, "in_flight": len(self.inflight), "processed": self.processed,
                "started_at": started, "last_beat": jobmod.format_time(datetime.now(timezone.utc)),
                "version": __version__, "claims": list(self.claims),
            }  # fmt: skip
            if self.groups:
                entry["groups"] = list(self.groups)
            try:
                await directory.announce(self.core, entry)
            except Exception as exc:  # noqa: BLE001 - tried again at the next beat
                log.debug("worker directory heartbeat failed: %r", exc)
            for event in written:
                event.set()
            await _wait(self._announce_soon, timeout=self.core.settings.worker_ttl / 3)
            self._announce_soon.clear()

    async def announce_now(self, timeout: float) -> bool:
        """Have the directory entry written now (its claims changed) and wait for it, at most `timeout` seconds
        (the loop may not be announcing yet); False when that ran out."""
        done = asyncio.Event()
        self._announced.append(done)
        self._announce_soon.set()
        await _wait(done, timeout=timeout)
        return done.is_set()

    # -- the drain --------------------------------------------------------------------------------------------
    async def _drain(self, pull: PullRequests) -> None:
        """No more pull requests. Jobs already received run within the grace period (those that arrive from a
        pull still open run too); whatever has not started by then is handed back without using an attempt,
        and what is still running is handed back for redelivery."""
        grace = self.grace_period
        self._grace_deadline = deadline = time.monotonic() + grace
        if self.inflight or pull.requested:
            log.info("draining %d in-flight jobs (grace %.0fs)", len(self.inflight), grace)
        while (self.inflight or (pull.requested and pull.time_left() > 0)) and time.monotonic() < deadline:
            self._capacity.clear()
            left = deadline - time.monotonic()
            await _wait(self._capacity, timeout=left if self.inflight else min(left, pull.time_left()))
        self._settle_completed()  # jobs that finished just now are settled, not handed back
        for item in list(self.inflight.values()):
            if item.settling:
                continue
            item.abandoned = True  # then read `started` (see _run_job)
            self.inflight.pop(id(item.msg), None)
            await self.settler.hand_back(item, "grace_period" if item.started else "drain")
            if item.started:
                log.warning("job %s did not finish within the grace period; returned to the queue", item.job_id,
                            extra=item.log_context())  # fmt: skip
        # Jobs still being settled, and pulls still open (their jobs are handed back as they arrive); nothing
        # arrives on a connection that is down, so then there is nothing to wait for.
        until = time.monotonic() + (10 if self.core.nc.is_connected else 0)
        while (self.inflight or pull.requested) and time.monotonic() < until and pull.time_left() > 0:
            self._capacity.clear()
            await _wait(self._capacity, timeout=min(pull.time_left(), until - time.monotonic()))
        if self.core.nc.is_connected:
            try:
                await self.core.nc.flush(timeout=5)
            except Exception as exc:  # noqa: BLE001 - unacked jobs are redelivered anyway
                log.debug("flush after drain failed: %r", exc)


async def _wait(event: asyncio.Event, timeout: float) -> None:
    """Until `event` is set or `timeout` seconds passed (no task per wait: this is the hot loop)."""
    try:
        async with asyncio.timeout(max(0.0, timeout)):
            await event.wait()
    except TimeoutError:
        pass
