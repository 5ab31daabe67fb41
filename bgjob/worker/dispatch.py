"""Dispatch: turn a delivered message into a Job and run it through the middleware chain, in a pool thread.

Nothing here talks to JetStream: the outcome (a Result, or a Failure with the DLQ reason for jobs that never
reached a handler) is left on the Delivery for the settle module.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from nats.aio.msg import Msg

from .. import job as jobmod
from ..codec import attempts_used, carried_deadline, carried_max_attempts, decode_job, job_id_of
from ..context import current_job
from ..encryption import Cipher, DecryptError
from ..errors import exception_text, exception_traceback
from ..handler import Mux, not_a_result
from ..headers import PARTITION_KEY, TARGET
from ..hooks import Failure, HookSet, mark_unhandled
from ..job import Job
from ..long_running import LongRunning, PauseRequested
from ..middleware import Handler, Middleware, chain
from ..result import Complete, MoveToDlq, Pause, Reschedule, Result, Retry
from ..retry_policy import RetryPolicy
from ..signing import Verifier
from ..topology import Topology
from .time_limit import TimeLimits

log = logging.getLogger("bgjob.worker")

#: the Results the settle module turns into an operation; anything else a handler returns is its failure.
SETTLEABLE = (Complete, Retry, MoveToDlq, Reschedule, Pause)


@dataclass(eq=False, repr=False)
class Delivery:
    """One delivered message from its arrival to its settlement. Its repr names the job only: the message's
    body and headers may hold personal data or secrets (a repr reaches logs and Sentry's frame variables)."""

    msg: Msg
    last_progress: float = field(default_factory=time.monotonic)
    #: the handler's thread has taken it (it may be running the handler now).
    started: bool = False
    #: the settle module owns it: neither drain nor heartbeats touch it any more.
    settling: bool = False
    #: handed back by a drain: its thread's outcome is dropped.
    abandoned: bool = False
    #: seconds this delivery went without a heartbeat past its ack_wait (the process was frozen).
    lease_lapsed: float | None = None
    #: 0 until dispatch (or a hand-back) reads it: see `count_attempt`.
    attempt: int = 0
    job: Job | None = None
    outcome: Result | Failure | None = None
    #: the DLQ reason for a delivery that never reached a handler (decode, signature, ...).
    reason: str | None = None
    #: the stored result record, for jobs sent with store_result=True.
    result: dict[str, Any] | None = None
    #: the retry policy it is settled by: its handler's or the worker's, with the job's own max_attempts; None
    #: until dispatch sets it (then the worker's).
    policy: RetryPolicy | None = None
    #: set by the fetch loop: renews this delivery's lease now, from any thread (`heartbeat`).
    renew: Callable[[Delivery], None] | None = None

    def heartbeat(self) -> None:
        """What `job.heartbeat()` calls, from the handler's thread or greenlet: renew the lease, unless the
        delivery is being settled or was handed back (or no fetch loop runs it)."""
        renew = self.renew
        if renew is not None and not self.settling and not self.abandoned:
            renew(self)

    def count_attempt(self) -> int:
        """Set and return `attempt`: the attempts carried by retry schedules plus JetStream's delivery count.
        Done in the pool thread (parsing the ack subject is work the event loop, a worker's bottleneck, should
        not do), or by a hand-back of a delivery never dispatched."""
        if not self.attempt:
            msg = self.msg
            if msg._metadata is None:  # nats-py's memo of msg.metadata, filled in faster (same value)
                msg._metadata = ack_metadata(msg.reply)
            self.attempt = attempts_used(msg.headers or {}) + msg.metadata.num_delivered
        return self.attempt

    def __repr__(self) -> str:
        return f"Delivery(job={self.job!r}, attempt={self.attempt})"

    @property
    def job_id(self) -> str:
        return self.job.id if self.job is not None else "?"

    @property
    def job_type(self) -> str:
        return self.job.type if self.job is not None else "?"

    def log_context(self) -> dict[str, Any]:
        """Fields for log lines written outside the job's own thread (bgjob.logs picks them up)."""
        job = self.job
        if job is None:
            return {"job_id": "?", "job_type": "?", "request_id": None}
        return {"job_id": job.id, "job_type": job.type, "request_id": job.request_id}


class Dispatcher:
    """Runs deliveries of one queue: verify, decode, check the attempt budget, call the chain; never raises."""

    def __init__(
        self,
        queue: str,
        mux: Mux,
        middleware: Sequence[Middleware],
        hooks: HookSet,
        retry_policy: RetryPolicy,
        topology: Topology,
        verifier: Verifier | None,
        cipher: Cipher | None = None,
        time_limits: TimeLimits | None = None,
        time_limit: float | None = None,
    ) -> None:
        self.queue = queue
        self.mux = mux
        self.middleware = list(middleware)
        self.hooks = hooks
        self.retry_policy = retry_policy
        self.topology = topology
        self.verifier = verifier
        #: the worker's encryption keys (None: it has none, and dead-letters encrypted jobs as "decrypt").
        self.cipher = cipher
        #: enforces time limits (None: none are); `time_limit`: the worker's default, in seconds (None: no limit).
        self.time_limits = time_limits
        self.time_limit = time_limit
        #: what job.checkpoint() and the other long-running methods call in the handler's thread: the worker's
        #: LongRunning among its hooks (None: they raise).
        self.long_running: LongRunning | None = next((h for h in hooks if isinstance(h, LongRunning)), None)
        #: the queue's limits, read from the server when the worker starts (FetchLoop.serve): seconds a ready job
        #: may wait for its first delivery (stream metadata) and the consumer's cap on deliveries of a message.
        self.max_age: float | None = None
        self.max_deliveries: int | None = None
        self._chains: dict[str, Handler] = {}
        #: partitioned types a job without a partition_key was run of (and warned about, once each).
        self._unordered_warned: set[str] = set()

    def run(self, item: Delivery) -> None:
        """Fill in `item.job` and `item.outcome` (and `item.reason` when no handler ran)."""
        try:
            self._dispatch(item)
        except BaseException as exc:  # noqa: BLE001 - a bug of ours: dead-letter the job, never strand it
            try:
                log.exception("internal error on job %s", item.job_id)
                if item.job is None:
                    item.job = self._bare_job(item, job_id_of(item.msg), "unknown")
            except BaseException:  # noqa: BLE001 - even the fallback failed: a Job with what is certain
                item.job = Job(id=f"seq-{item.msg.metadata.sequence.stream}", type="unknown", arg=item.msg.data,
                               queue=self.queue, attempt=item.attempt)  # fmt: skip
            item.outcome = Failure(self.hooks.scrub(f"internal error: {exception_text(exc)}", item.job) or "",
                                   exception=exc)  # fmt: skip
            item.reason = "internal_error"

    def _dispatch(self, item: Delivery) -> None:
        msg = item.msg
        headers = msg.headers or {}
        item.count_attempt()
        job_type = self.topology.job_type_of(self.queue, msg.subject)
        job_id = job_id_of(msg)
        options = self.mux.options(job_type)
        try:
            deadline, own_limit = carried_deadline(headers), carried_max_attempts(headers)
        except jobmod.DecodeError as exc:
            item.job = self._bare_job(item, job_id, job_type)
            item.outcome, item.reason = Failure(f"DecodeError: {exc}"), "decode"
            return
        # The job's own limit wins over its handler's policy, which wins over the worker's.
        item.policy = (options.retry_policy or self.retry_policy).limited_to(own_limit)
        limit = item.policy.max_attempts
        if limit is not None and item.attempt > limit:
            item.job = self._bare_job(item, job_id, job_type)
            item.outcome = Failure(_past_max_attempts(item.attempt, msg.metadata.num_delivered, limit))
            item.reason = "max_attempts"
            return
        if self.max_deliveries is not None and msg.metadata.num_delivered >= self.max_deliveries:
            # The server will not deliver it again: a failure now (or a crash) would strand it in the stream.
            item.job = self._bare_job(item, job_id, job_type)
            item.outcome = Failure(f"delivered {msg.metadata.num_delivered} times, the queue's max_deliveries: the "
                                   "server would not deliver it again, so it was not run")  # fmt: skip
            item.reason = "max_deliveries"
            return
        refusal = self.verifier.check(self.queue, headers, msg.data) if self.verifier else None
        if refusal is None and self.verifier is not None:
            refusal = _misrouted(self.topology, self.queue, job_type, msg.subject, headers)
        if refusal is not None:
            item.job = self._bare_job(item, job_id, job_type)
            item.outcome, item.reason = Failure(f"signature: {refusal}"), "signature"
            return
        try:
            item.job = decode_job(msg, self.queue, job_type, job_id, item.attempt, limit, self.cipher, deadline,
                                  item.heartbeat)  # fmt: skip
        except DecryptError as exc:
            item.job = self._bare_job(item, job_id, job_type)
            item.outcome, item.reason = Failure(f"DecryptError: {exc}"), "decrypt"
            return
        except jobmod.DecodeError as exc:
            item.job = self._bare_job(item, job_id, job_type)
            item.outcome, item.reason = Failure(f"DecodeError: {exc}"), "decode"
            return
        waited = _waited_past(msg, self.max_age)
        if waited is not None:
            item.outcome = Failure(f"ready for {waited:.0f}s before a worker took it, more than the queue's "
                                   f"max_age of {self.max_age:g}s; not run")  # fmt: skip
            item.reason = "expired"
            return
        if deadline is not None and (now := datetime.now(UTC)) >= deadline:
            item.outcome = Failure(f"delivered at {jobmod.format_time(now)}, after the job's deadline "
                                   f"{jobmod.format_time(deadline)} (attempt {item.attempt}); not run")  # fmt: skip
            item.reason = "deadline"
            return
        extra = options.sensitive
        if extra - item.job.sensitive:  # the handler's keys join the producer's
            item.job = dataclasses.replace(item.job, sensitive=item.job.sensitive | extra)
        handler = self.mux.get(job_type)
        if handler is None:
            known = ", ".join(self.mux.types())
            error = f"no handler for job type {job_type!r} on this worker (known: {known})"
            item.outcome, item.reason = Failure(error), "unknown_handler"
            return
        if options.partitioned and job_type not in self._unordered_warned and PARTITION_KEY not in headers \
                and TARGET not in headers:  # fmt: skip
            self._unordered_warned.add(job_type)
            log.warning("job type %r is partitioned but job %s has no partition_key: it runs unordered; send it with "
                        "partition_key= (logged once per type)", job_type, job_id)  # fmt: skip
        item.outcome = self.call(handler, item.job)

    def _bare_job(self, item: Delivery, job_id: str, job_type: str) -> Job:
        """A Job for hooks and logs when the message could not be decoded: its arg is the raw body."""
        headers = item.msg.headers or {}
        return Job(id=job_id, type=job_type, arg=item.msg.data, queue=self.queue, attempt=item.attempt,
                   request_id=headers.get(jobmod.HEADER_REQUEST_ID), headers=jobmod.user_headers(headers),
                   max_attempts=(item.policy or self.retry_policy).max_attempts,
                   sensitive=jobmod.sensitive_of(headers) | self.mux.sensitive_keys(job_type))  # fmt: skip

    def _limited(self, handler: Handler, job_type: str) -> Handler:
        """`handler` under its time limit: its own (`@mux.handler(..., time_limit=)`), else the worker's default."""
        if self.time_limits is None:
            return handler
        own = self.mux.options(job_type).time_limit
        return self.time_limits.limited(handler, own if own is not None else self.time_limit)

    def call(self, handler: Handler, job: Job) -> Result | Failure:
        """Run the hooks, middleware chain and handler for `job`; never raises."""
        wrapped = self._chains.get(job.type)
        if wrapped is None:
            # The handler's own middleware runs inside the worker's, around that handler only.
            wrapped = self._chains[job.type] = chain([*self.middleware, *self.mux.options(job.type).middleware],
                                                     self._limited(handler, job.type))  # fmt: skip
        token = current_job.set(job)
        services = jobmod.worker_services.set(self.long_running)
        try:
            self.hooks.call("on_job_start", job)
            outcome: Result | Failure
            try:
                result = wrapped(job)
            except PauseRequested as paused:  # job.pause(): the Pause it stands for
                result = paused.pause
                outcome = self.long_running.settle_pause(job, result) if self.long_running is not None else result
            except BaseException as exc:  # noqa: BLE001 - a handler's failure is the job's, not the worker's
                # Scrubbed once, here: every later reader (hooks, logs, the DLQ, results) gets these texts.
                text = self.hooks.scrub(exception_text(exc), job) or ""
                log.warning("job %s (%s) attempt %d raised %s", job.id, job.type, job.attempt, text)
                trace = self.hooks.scrub(exception_traceback(exc), job)
                outcome = Failure(text, trace, mark_unhandled(exc))
            else:
                if isinstance(result, SETTLEABLE):
                    outcome = result
                    if type(result) is Pause and self.long_running is not None:  # its checkpoint, saved first
                        outcome = self.long_running.settle_pause(job, result)
                else:
                    error = mark_unhandled(not_a_result(job.type, result))
                    outcome = Failure(self.hooks.scrub(f"{type(error).__name__}: {error}", job) or "", exception=error)
            self.hooks.call("on_job_end", job, outcome)
            return outcome
        finally:
            jobmod.worker_services.reset(services)
            current_job.reset(token)


_METADATA, _SEQUENCE_PAIR = Msg.Metadata, Msg.Metadata.SequencePair
_new = object.__new__


def ack_metadata(reply: str) -> Msg.Metadata:
    """`Msg.Metadata._from_reply(reply)`, the same value, in half the time for the ack subject of a server without
    a JetStream domain (`$JS.ACK.<stream>.<consumer>.<delivered>.<stream seq>.<consumer seq>.<ns>.<pending>`):
    nats-py's frozen dataclasses set each field through object.__setattr__, a pool thread's cost for every job."""
    tokens = reply.split(".")
    if len(tokens) != 9 or tokens[0] != "$JS" or tokens[1] != "ACK":
        return _METADATA._from_reply(reply)  # the domain form, or no ack subject (it raises as msg.metadata does)
    pair = _new(_SEQUENCE_PAIR)
    pair.__dict__.update(consumer=int(tokens[6]), stream=int(tokens[5]))
    metadata = _new(_METADATA)
    metadata.__dict__.update(sequence=pair, num_pending=int(tokens[8]), num_delivered=int(tokens[4]),
                             timestamp=datetime.fromtimestamp(int(tokens[7]) / 1_000_000_000.0, UTC),
                             stream=tokens[2], consumer=tokens[3], domain=None)  # fmt: skip
    return metadata


def _waited_past(msg: Msg, max_age: float | None) -> float | None:
    """Seconds a first delivery waited since its message was stored when that is more than `max_age`, else None.

    A message is stored when its job became ready: sent without a delay, or when the server fired its delayed,
    retry or periodic schedule (those wait in other messages, which age nothing here). A redelivery is not
    checked: the job already ran, or was taken, and its retry policy rules it."""
    if max_age is None or msg.metadata.num_delivered != 1:
        return None
    waited = (datetime.now(UTC) - msg.metadata.timestamp).total_seconds()
    return waited if waited > max_age else None


def _misrouted(topology: Topology, queue: str, job_type: str, subject: str, headers: Mapping[str, str]) -> str | None:
    """With signing on: why a job was delivered on a subject its signed route does not lead to, else None. The
    signature covers Bgjob-Target and Bgjob-Partition-Key, not the subject, so without this a holder of the
    stream could publish a signed job again, headers untouched, on another claim's or partition's subject (or
    a placed one on `job.<type>`, where any worker runs it). Routed on `job.<type>`, a job may also be on its
    singleton or group subject, where workers forward it."""
    expected = topology.ready_subject(queue, job_type, headers)
    if subject == expected:
        return None
    kind = subject[len(topology.prefix) + len(queue) + 2 :].partition(".")[0]
    if expected == topology.job_subject(queue, job_type) and kind in ("one", "group"):
        return None
    return f"delivered on {subject}, but its signed headers route it to {expected}"


def _past_max_attempts(attempt: int, delivered: int, limit: int) -> str:
    """Why a delivery past the attempt budget goes to the DLQ without running."""
    if delivered == 1:  # the attempts were carried by retry schedules: they all finished
        return (f"attempt {attempt} is past max_attempts={limit}: its earlier attempts used the budget "
                "(max_attempts was lowered since they ran)")  # fmt: skip
    return (f"delivered {attempt} times, more than max_attempts={limit}: earlier attempts never finished (the worker "
            "process running the job most likely died: killed, out of memory or crashed), or max_attempts was "
            "lowered since they ran")  # fmt: skip
