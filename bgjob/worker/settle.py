"""Settling a delivery: its outcome becomes exactly one JetStream operation, and hooks hear the real fate.

| outcome                                 | operation                                            | fate            |
|-----------------------------------------|------------------------------------------------------|-----------------|
| Complete                                | ack (ack_sync with double_ack)                       | acked           |
| Retry / Failure, attempts left, <= 1 s  | nak with delay (the job's first failure: as below)   | retry_scheduled |
| Retry / Failure, attempts left, longer  | `@at` retry schedule (attempts carried), then ack    | retry_scheduled |
| Retry / Failure, last attempt           | DLQ publish (max_attempts, or time_limit), then term | dead_lettered   |
| Failure the policy won't retry          | DLQ publish (reason non_retryable), then term        | dead_lettered   |
| Retry / Failure due after the deadline  | DLQ publish (reason deadline), then term             | dead_lettered   |
| MoveToDlq, or no handler ran (reason)   | DLQ publish (PubAck), then term                      | dead_lettered   |
| Reschedule                              | `@at` schedule of the next run, then ack             | rescheduled     |
| Pause                                   | `@at` schedule of the same run (attempt not counted) | rescheduled     |
| any step above fails                    | nak (or nothing: redelivered after ack_wait)         | handed_back     |
| a lane's delivery delivered again since | nothing: the newer delivery's holder settles it      | handed_back     |
| ... on the server's last delivery       | kept (in_progress), the step retried: see below      | (its own)       |

A crash between two steps yields a duplicate, never a loss: every publish made on a delivery's behalf carries
a `Nats-Msg-Id` derived from the stored message, so doing it again after a redelivery stores nothing new.
The retry policy is the delivery's own (`Delivery.policy`: its handler's or the worker's, with the job's own
max_attempts). Long retry delays go through schedules so that a job backing off holds no ack-pending slot. So
does a job's first failure, whatever the delay: the retry schedule carries the time of that failure
(Bgjob-First-Failure), which a nak cannot, so that a dead letter says since when the job fails (the server fires
schedules on a tick of about a quarter of a second: a shorter first retry delay runs that much later).

The server's last delivery of a message (the queue's `max_deliveries`, the consumer's max_deliver) is never
nak'ed or handed back: JetStream would never deliver it again, and a work-queue stream would keep it for ever.
When a step of its settlement fails (a DLQ refusing or not answering), the worker keeps its lease (in_progress)
and retries the settlement with backoff until it succeeds or the worker stops; then it stores the job again as a
new message (a fresh delivery count, attempts carried) and acks the old one. If even that fails, it is left
unacked: when its ack_wait runs out the server publishes the MAX_DELIVERIES advisory, and any worker of the
queue dead-letters it from the stream (`FetchLoop`, `bgjob.dlq.dead_letter_stored`).

A singleton's or partition's lane (bgjob.placement: `max_ack_pending=1`) whose worker was frozen past ack_wait
(SIGSTOP, a stalled VM; counted from two thirds of it there, `loop.LANE_LAPSE`, since the server's ack_wait
started when it sent the delivery) asks the server before settling (`_superseded`: its consumer's info, bounded by
request_timeout): when the consumer has delivered since this delivery (`delivered.consumer_seq` beyond its
consumer sequence) and its ack floor is below this message, the server redelivered it and the copy runs
elsewhere. Then this delivery is not settled at all (handed_back `lease_lapsed`): its ack would free the lane's
one slot under the running copy (a second singleton job, or the key's next job overtaking), its nak would start
a third copy. The holder of the newer delivery settles the message. When the question fails, it settles as
before (a message is never stranded). The race left: a redelivery in the round trip between the answer and the
settlement (an in_progress sent before the question restarts the message's ack_wait, which narrows it).

Every error text and traceback settled here is scrubbed (`HookSet.scrub`: the job's sensitive values, then the
hooks' `scrub`) before it is logged, stored in a dead letter or a result, or reported in the Fate.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine
from datetime import datetime, timedelta, timezone
from typing import Any

import nats.errors
import nats.js.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from .. import job_results
from ..codec import carried_first_failure, handed_back_message, next_run_message
from ..core import Core
from ..dlq import move_to_dlq
from ..encryption import cipher_for
from ..errors import (
    InvalidJob,
    InvalidSchedule,
    TimeLimitExceeded,
    describe_error,
    exception_text,
    exception_traceback,
)
from ..headers import cut_text
from ..hooks import Failure, Fate, HookSet, exception_of, is_unhandled
from ..job import Job, format_time
from ..job_results import ResultStatus
from ..result import KEEP_ARG, Complete, MoveToDlq, Pause, Reschedule, Retry
from ..retry_policy import RetryPolicy
from ..signing import signer_for
from .dispatch import Delivery

log = logging.getLogger("bgjob.worker")

#: Retry delays up to this many seconds are a nak with delay (no publish); longer ones a server-side schedule,
#: so that jobs backing off do not hold the consumer's ack-pending slots (max_ack_pending).
NAK_DELAY_LIMIT = 1.0
_ACKED = Fate.acked()
#: the most of an error a log line quotes (the dead letter keeps more).
LOG_ERROR_BYTES = 2048
#: backoff, in seconds, between retries of a failed settlement of a server's last delivery (doubling up to the most).
LAST_RETRY_FIRST, LAST_RETRY_MOST = 0.5, 30.0
#: DLQ reasons of deliveries that never reached a handler because of what was sent (counted as internal errors).
_REFUSED = frozenset({"decode", "signature", "unknown_handler", "internal_error"})


async def ack_all(nc: NATS, msgs: list[Msg]) -> None:
    """Ack JetStream deliveries (`msgs`, each with its reply subject, none acked yet) in one write to nats-py's
    outgoing buffer: the same `PUB <reply> 0` commands `Msg.ack` sends one publish at a time, without a publish
    call, a flush future and a flush-queue put per message (the worker's hot path). While the connection is
    down (nats-py then buffers within its pending limit) each message goes through `Msg.ack`. Raises what
    nats-py's publish raises: ConnectionClosedError, ConnectionDrainingError, OutboundBufferLimitError; then
    the messages acked before it (buffered: `Msg.is_acked`) stay acked, the rest are not."""
    if not nc.is_connected or len(msgs) == 1:
        for msg in msgs:
            await msg.ack()
        return
    if nc.is_draining_pubs:
        raise nats.errors.ConnectionDrainingError
    commands = b"".join([b"PUB %s 0\r\n\r\n" % msg.reply.encode() for msg in msgs])
    await nc._send_command(commands)
    nc.stats["out_msgs"] += len(msgs)
    for msg in msgs:
        msg._ackd = True
    if nc._flush_queue is not None and nc._flush_queue.empty():
        await nc._flush_pending()


class Settler:
    """Applies outcomes for one queue's worker and reports each fate to the hooks."""

    def __init__(self, core: Core, queue: str, retry_policy: RetryPolicy, hooks: HookSet,
                 spawn: Callable[[Coroutine[Any, Any, Any]], asyncio.Task[Any]]) -> None:  # fmt: skip
        self.core = core
        self.spawn = spawn
        self.queue = queue
        self.retry_policy = retry_policy
        self.hooks = hooks
        #: the consumer's max_deliver (None: no cap), the lease in seconds, and the worker's stop: set by the fetch
        #: loop when it starts (see the module doc: a last delivery is never handed back).
        self.max_deliveries: int | None = None
        self.ack_wait = core.settings.ack_wait
        self.stopping: asyncio.Event | None = None
        #: a partition's lane (bgjob.placement): retries and hand-backs are naks, which keep the job first in its
        #: line (a republished message would go to the end of it).
        self.ordered = False
        #: a singleton's or partition's lane (max_ack_pending=1), and its (stream, consumer): a delivery whose lease
        #: lapsed is settled only when the server did not deliver it again meanwhile (`_superseded`).
        self.singleton = False
        self.lane_consumer: tuple[str, str] | None = None

    def is_last(self, item: Delivery) -> bool:
        """Whether `item` is the server's last delivery of its message (it will never be delivered again)."""
        cap = self.max_deliveries
        return cap is not None and item.msg.metadata.num_delivered >= cap

    # -- a batch of finished deliveries, with the fast path: a plain Complete needs no round trip -----------------
    async def settle_batch(self, batch: list[Delivery], finished: Callable[[Delivery], None]) -> None:
        """Settle deliveries whose handlers returned, calling `finished(item)` once each is done. A Complete
        without a stored result, double-ack or a lapsed lease is acked right here (nats-py buffers the ack: no
        round trip, no task); every other outcome is settled in a task of its own. This is the event loop's hot
        path: one coroutine per batch, and no hook call when no hooks are registered."""
        double_ack, report = self.core.settings.double_ack, bool(self.hooks)
        plain: list[Delivery] = []
        for item in batch:
            if type(item.outcome) is Complete and item.result is None and not double_ack and item.lease_lapsed is None:
                plain.append(item)
            else:
                task = self.spawn(self.settle(item))

                def settled(_task: asyncio.Task[Any], item: Delivery = item) -> None:
                    finished(item)

                task.add_done_callback(settled)
        if not plain:
            return
        failure: Exception | None = None
        try:
            await ack_all(self.core.nc, [item.msg for item in plain])
        except Exception as exc:  # noqa: BLE001 - redelivered after ack_wait: duplicates, not losses
            failure = exc
        for item in plain:
            # While disconnected ack_all acks one message at a time, and nats-py may buffer the first acks of a
            # batch before refusing the next (its pending limit): those are acked (sent on reconnect).
            if item.msg.is_acked:
                if report:
                    self._report(item, _ACKED)
            else:
                self._settle_failed(item, failure or RuntimeError("not acked"))
            finished(item)

    # -- every outcome -------------------------------------------------------------------------------------------
    async def settle(self, item: Delivery) -> Fate:
        """Perform the one JetStream operation `item.outcome` calls for; returns (and reports) the fate."""
        if item.lease_lapsed is not None and await self._superseded(item):
            fate = Fate.handed_back("lease_lapsed")
            self._report(item, fate)
            return fate
        try:
            fate = await self._apply(item)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # noqa: BLE001 - whatever failed (even a SystemExit from an error's __str__),
            # the job must not be lost and the loop must not die
            if self.is_last(item):
                return await self._settle_last(item, exc)
            return await self._hand_back_after_failure(item, exc)
        if item.lease_lapsed is not None and item.lease_lapsed > self.ack_wait:
            self._lease_lost(item)
        self._report(item, fate)
        return fate

    async def _apply(self, item: Delivery) -> Fate:
        outcome, attempt = item.outcome, item.attempt
        if item.reason is not None:
            assert isinstance(outcome, Failure)
            error, trace = self._scrubbed(item, outcome.error, outcome.traceback)
            if item.reason in _REFUSED:
                self.hooks.call("on_internal_error", error)
            return await self._dead_letter(item, item.reason, error or "", trace)
        if isinstance(outcome, Complete):
            await self._store_result(item, ResultStatus.SUCCESSFUL, value=outcome.value)
            msg = item.msg
            await (msg.ack_sync(timeout=self.core.settings.request_timeout) if self.core.settings.double_ack
                   else msg.ack())  # fmt: skip
            return Fate.acked()
        if isinstance(outcome, (Retry, Failure)):
            error, trace = self._error_text(item, outcome)
            policy = item.policy or self.retry_policy  # the handler's or the worker's, with the job's max_attempts
            if policy.gives_up_on(_raised(outcome)):
                return await self._dead_letter(item, "non_retryable", error or "not retryable", trace)
            if policy.exhausted(attempt):
                return await self._dead_letter(item, _exhausted_reason(outcome),
                                               error or f"gave up after {attempt} attempts", trace)  # fmt: skip
            delay = outcome.delay_seconds() if isinstance(outcome, Retry) else None
            if delay is None:
                delay = policy.delay_for(attempt)
            late = _retry_past_deadline(item.job, delay)
            if late is not None:
                return await self._dead_letter(item, "deadline", f"{error}; not retried: {late}" if error else late,
                                               trace)  # fmt: skip
            await self._store_result(item, ResultStatus.READY, error=error, trace=trace)
            try:
                return await self._retry(item, delay, error, trace)
            except InvalidSchedule as exc:  # due past what the server can schedule
                return await self._dead_letter(item, "handler", f"Retry refused: {exc}", trace)
        if isinstance(outcome, MoveToDlq):
            error, trace = self._error_text(item, outcome)
            return await self._dead_letter(item, outcome.reason, error, trace)
        if isinstance(outcome, Pause):  # its checkpoint was saved by dispatch (bgjob.long_running)
            due = outcome.due()
            try:  # the same job again: this attempt is not counted (the next delivery adds it back)
                await self._publish_next_run(item, "next", due, attempts=max(0, attempt - 1))
            except InvalidSchedule as exc:  # due past what the server can schedule
                refused, _ = self._scrubbed(item, f"Pause refused: {exc}", None)
                return await self._dead_letter(item, "handler", refused or "", None)
            await self._store_result(item, ResultStatus.READY)
            await item.msg.ack()
            return Fate.rescheduled(due)
        if isinstance(outcome, Reschedule):
            try:
                due = outcome.by.next_run(datetime.now(timezone.utc))
                await self._publish_next_run(item, "next", due, attempts=0, arg=outcome.arg)
            except (InvalidJob, InvalidSchedule) as exc:  # a new arg that does not encode; no run left
                refused, _ = self._scrubbed(item, f"Reschedule refused: {exc}", None)
                return await self._dead_letter(item, "handler", refused or "", None)
            await self._store_result(item, ResultStatus.READY)
            await item.msg.ack()
            return Fate.rescheduled(due)
        raise TypeError(f"no settlement for outcome {outcome!r}")  # dispatch only leaves Results and Failures

    async def _retry(self, item: Delivery, delay: float, error: str | None, trace: str | None) -> Fate:
        error = error or None
        if self.ordered or (delay <= NAK_DELAY_LIMIT and carried_first_failure(item.msg.headers)):
            await item.msg.nak(delay=delay)
            return Fate.retry_scheduled(delay, error=error, traceback=trace)
        due = datetime.now(timezone.utc) + timedelta(seconds=delay)
        await self._publish_next_run(item, "retry", due, attempts=item.attempt)
        await item.msg.ack()
        return Fate.retry_scheduled(delay, at=due, error=error, traceback=trace)

    async def _publish_next_run(self, item: Delivery, kind: str, due: datetime, *, attempts: int,
                                arg: Any = KEEP_ARG) -> None:  # fmt: skip
        """Publish the job's next run as a server-side `@at` schedule (one per job id and kind: a repeat
        after a crash replaces it)."""
        core, job = self.core, item.job
        assert job is not None
        subject, body, headers = next_run_message(item.msg, core.topology, kind=kind, queue=self.queue, job=job,
                                                  due=due, attempts=attempts, arg=arg,
                                                  cipher=cipher_for(core.settings.encryption_keys))  # fmt: skip
        if core.settings.signing_key:  # the next run may carry a new arg: sign what will be sent
            signer_for(core.settings.signing_key).sign(self.queue, headers, body)
        await core.publish(subject, body, headers, queue=self.queue)

    async def _dead_letter(self, item: Delivery, reason: str, error: str, trace: str | None) -> Fate:
        """Store the result and the dead letter, term the delivery; `error` and `trace` are scrubbed."""
        job = item.job
        assert job is not None
        await self._store_result(item, ResultStatus.FAILED, error=error, trace=trace)
        await move_to_dlq(self.core, item.msg, queue=self.queue, job_id=job.id, job_type=job.type, reason=reason,
                          error=error, traceback=trace, attempts=item.attempt, sensitive=job.sensitive)  # fmt: skip
        await item.msg.term()
        context = {**item.log_context(), "bgjob_reason": reason, "bgjob_fate": "dead_lettered",
                   "bgjob_handler_ran": item.reason is None}  # fmt: skip
        log.error("job %s (%s) moved to the DLQ after %d attempt(s): %s: %s", job.id, job.type, item.attempt, reason,
                  cut_text(error, LOG_ERROR_BYTES), extra=context)  # fmt: skip
        return Fate.dead_lettered(reason, error, trace)

    def _error_text(self, item: Delivery, outcome: Retry | Failure | MoveToDlq) -> tuple[str, str | None]:
        """`error_text(outcome)` scrubbed; a Failure's texts were scrubbed by dispatch when it was made."""
        error, trace = error_text(outcome)
        if isinstance(outcome, Failure):
            return error, trace
        scrubbed, trace = self._scrubbed(item, error, trace)
        return scrubbed or "", trace

    def _scrubbed(self, item: Delivery, error: str | None, trace: str | None) -> tuple[str | None, str | None]:
        return self.hooks.scrub(error, item.job), self.hooks.scrub(trace, item.job)

    async def _store_result(self, item: Delivery, status: ResultStatus, *, value: Any = None,
                            error: str | None = None, trace: str | None = None) -> None:  # fmt: skip
        if item.result is None:
            return
        try:
            await job_results.record_outcome(self.core, item.result, status, value=value, error=error, traceback=trace)
        except Exception as exc:  # noqa: BLE001 - a missing report must not hold up the job itself
            log.warning("could not store the %s result of job %s: %s", status.value, item.job_id, describe_error(exc),
                        extra=item.log_context())  # fmt: skip

    # -- handing back ------------------------------------------------------------------------------------------
    async def hand_back(self, item: Delivery, reason: str) -> None:
        """Give a delivery back to JetStream. One whose handler never started costs no attempt: it is stored
        again with its attempt count carried (then acked); one that ran is nak'ed (that attempt counts). The
        server's last delivery is never nak'ed (it would never come back): it is stored again (its handler never
        ran: dispatch dead-letters it unrun), else left unacked for the MAX_DELIVERIES recovery."""
        msg = item.msg
        if item.started and item.lease_lapsed is not None and await self._superseded(item):
            self._report(item, Fate.handed_back(reason))
            return
        if self.is_last(item):
            await self._store_again(item)
            self._report(item, Fate.handed_back(reason))
            return
        try:
            if item.started or self.ordered:
                await msg.nak()
            else:
                body, headers = handed_back_message(msg, attempts=item.count_attempt() - 1)
                await self.core.publish(msg.subject, body, headers, queue=self.queue)
                await msg.ack()
        except Exception as exc:  # noqa: BLE001 - then it is redelivered after ack_wait anyway
            log.warning("could not hand back job %s: %s; it is redelivered after ack_wait", item.job_id,
                        describe_error(exc), extra=item.log_context())  # fmt: skip
        self._report(item, Fate.handed_back(reason))

    async def _hand_back_after_failure(self, item: Delivery, exc: BaseException) -> Fate:
        """Nak after a settle step failed, backing off by attempt (the policy's delays): a job whose dead letter
        the server keeps refusing comes back ever more rarely instead of every second."""
        self._settle_failed(item, exc)
        try:
            await item.msg.nak(delay=(item.policy or self.retry_policy).delay_for(item.attempt))
        except Exception:  # noqa: BLE001 - then JetStream redelivers it after ack_wait
            pass
        return Fate.handed_back("settle_failed", describe_error(exc))

    async def _settle_last(self, item: Delivery, exc: BaseException) -> Fate:
        """A step failed settling the server's last delivery: keep its lease and settle it again with backoff
        until that works or the worker stops (then `_store_again`)."""
        delay = LAST_RETRY_FIRST
        while True:
            description = describe_error(exc)
            log.error("could not settle job %s (%s), the server's last delivery of it: %s; keeping it and trying "
                      "again in %.1fs", item.job_id, item.job_type, description, delay,
                      extra=item.log_context())  # fmt: skip
            self.hooks.call("on_internal_error", exc)
            if not await self._hold(item, delay):
                await self._store_again(item)
                fate = Fate.handed_back("settle_failed", description)
                self._report(item, fate)
                return fate
            delay = min(delay * 2, LAST_RETRY_MOST)
            try:
                fate = await self._apply(item)
            except asyncio.CancelledError:
                raise
            except BaseException as again:  # noqa: BLE001 - as in settle: kept, tried again
                exc = again
                continue
            self._report(item, fate)
            return fate

    async def _hold(self, item: Delivery, seconds: float) -> bool:
        """Keep `item`'s lease (in_progress) for `seconds`; False as soon as the worker is stopping."""
        stopping = self.stopping
        until = time.monotonic() + seconds
        beat = max(0.2, self.ack_wait / 3)
        while (left := until - time.monotonic()) > 0:
            if stopping is not None and stopping.is_set():
                return False
            try:
                await item.msg.in_progress()
            except Exception as exc:  # noqa: BLE001 - then the MAX_DELIVERIES advisory recovers it
                log.debug("in_progress of a kept last delivery failed: %r", exc)
            item.last_progress = time.monotonic()
            if stopping is None:
                await asyncio.sleep(min(beat, left))
            else:
                try:
                    async with asyncio.timeout(min(beat, left)):
                        await stopping.wait()
                except TimeoutError:
                    pass
        return not (stopping is not None and stopping.is_set())

    async def _store_again(self, item: Delivery) -> None:
        """Store the server's last delivery of a job again as a new message (a fresh delivery count; the attempts
        carried, this unrun one not counted), then ack it. When that fails it is left unacked, never nak'ed:
        after its ack_wait the server's MAX_DELIVERIES advisory has a worker dead-letter it."""
        msg, core = item.msg, self.core
        stream, seq = msg.metadata.stream, msg.metadata.sequence.stream
        try:
            try:
                await core.js.get_msg(stream, seq)
            except nats.js.errors.NotFoundError:
                return  # recovered from the advisory meanwhile (dead-lettered and deleted): nothing to store
            body, headers = handed_back_message(msg, attempts=max(0, item.count_attempt() - 1))
            await core.publish(msg.subject, body, headers, queue=self.queue)
            await msg.ack()
        except Exception as exc:  # noqa: BLE001 - the advisory recovery is the fallback
            log.error("could not store job %s (%s) again: %s; it stays unacked and is dead-lettered (reason "
                      "max_deliveries) by a worker of the queue once its ack_wait ends", item.job_id, item.job_type,
                      describe_error(exc), extra=item.log_context())  # fmt: skip
        else:
            log.warning("job %s (%s), the server's last delivery of it, stored again as a new message: %d attempt(s) "
                        "carried", item.job_id, item.job_type, max(0, item.count_attempt() - 1),
                        extra=item.log_context())  # fmt: skip

    async def _superseded(self, item: Delivery) -> bool:
        """Whether a singleton's or partition's lane delivered `item`'s message again after `item` (its lease
        lapsed): then the newer delivery's holder settles it, and this one must not (see the module doc). False
        for other lanes, and when the server cannot tell (its answer failed: settled as before)."""
        if not self.singleton or self.lane_consumer is None:
            return False
        msg, settings = item.msg, self.core.settings
        stream, consumer = self.lane_consumer
        try:
            async with asyncio.timeout(settings.request_timeout):
                await msg.in_progress()  # restarts the message's ack_wait: narrows the race (module doc)
                info = await self.core.js.consumer_info(stream, consumer, timeout=settings.request_timeout)
        except Exception as exc:  # noqa: BLE001 - unknown: settle as before rather than strand the message
            log.warning("job %s (%s): could not ask whether its lane delivered it again (%s); settling it",
                        item.job_id, item.job_type, describe_error(exc), extra=item.log_context())  # fmt: skip
            return False
        delivered = info.delivered.consumer_seq if info.delivered else 0
        floor = info.ack_floor.stream_seq if info.ack_floor else 0
        if not (delivered or 0) > msg.metadata.sequence.consumer or (floor or 0) >= msg.metadata.sequence.stream:
            return False
        log.warning("job %s (%s) attempt %d: this worker went %.1fs without a heartbeat (ack_wait %.1fs) and its "
                    "lane delivered the job again meanwhile: that copy may still be running, so this run is not "
                    "settled (no ack, nak or term); the newer delivery's holder settles it", item.job_id,
                    item.job_type, item.attempt, item.lease_lapsed, self.ack_wait,
                    extra=item.log_context())  # fmt: skip
        self.hooks.call("on_internal_error", f"lease of job {item.job_id} lapsed ({item.lease_lapsed:.1f}s)")
        return True

    def _settle_failed(self, item: Delivery, exc: BaseException) -> None:
        description = describe_error(exc)
        log.error("could not settle job %s (%s): %s; it will be redelivered", item.job_id, item.job_type, description,
                  extra=item.log_context())  # fmt: skip
        self.hooks.call("on_internal_error", exc)
        self._report(item, Fate.handed_back("settle_failed", description))

    def _lease_lost(self, item: Delivery) -> None:
        """The process was frozen (SIGSTOP, a long GC pause, a stalled VM) past ack_wait while running this job:
        JetStream has most likely redelivered it, so another worker may have run it too."""
        log.warning("job %s (%s) attempt %d: this worker went %.1fs without a heartbeat, longer than ack_wait; the "
                    "job was probably redelivered and run elsewhere too (this run's settlement may be a duplicate)",
                    item.job_id, item.job_type, item.attempt, item.lease_lapsed,
                    extra=item.log_context())  # fmt: skip
        self.hooks.call("on_internal_error", f"lease of job {item.job_id} lapsed ({item.lease_lapsed:.1f}s)")

    def _report(self, item: Delivery, fate: Fate) -> None:
        """Tell the hooks; a delivery handed back before dispatch made a Job of it is not reported (hooks never
        heard of it), and one handed back mid-run is reported with a Failure saying so."""
        if item.job is None:
            return
        outcome = item.outcome or Failure(f"handed back before it finished ({fate.reason})")
        self.hooks.call("on_settled", item.job, outcome, fate)


def _raised(outcome: Retry | Failure) -> BaseException | None:
    """The exception the handler raised, for the retry policy's non-retryable rule: a Failure's, or the one
    Recovery put in the Retry it returned (a Retry a handler built itself is its own decision: None)."""
    if isinstance(outcome, Failure):
        return outcome.exception
    error = outcome.error
    return error if isinstance(error, BaseException) and is_unhandled(error) else None


def _retry_past_deadline(job: Job | None, delay: float) -> str | None:
    """Why a retry `delay` seconds from now is too late for the job's deadline; None when it is in time (or the
    job has no deadline)."""
    deadline = job.deadline if job is not None else None
    if deadline is None:
        return None
    due = datetime.now(timezone.utc) + timedelta(seconds=delay)
    if due < deadline:
        return None
    return f"its retry in {delay:.1f}s would run after its deadline {format_time(deadline)}"


def _exhausted_reason(outcome: Retry | Failure) -> str:
    """The DLQ reason of a failure on the last attempt: `time_limit` when the handler was stopped at its time
    limit (it raised TimeLimitExceeded), else `max_attempts`."""
    return "time_limit" if isinstance(exception_of(outcome), TimeLimitExceeded) else "max_attempts"


def error_text(outcome: Retry | Failure | MoveToDlq) -> tuple[str, str | None]:
    """The one-line error and the traceback of a failed outcome."""
    if isinstance(outcome, Failure):
        return outcome.error, outcome.traceback
    error, trace = outcome.error, outcome.traceback
    if isinstance(error, BaseException):
        if trace is None and error.__traceback__ is not None:
            trace = exception_traceback(error)
        return exception_text(error), trace
    return (error or ""), trace
