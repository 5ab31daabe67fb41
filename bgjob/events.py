"""Lifecycle events (choria asyncjobs' `TaskStateChangeEvent`) and job status by id (asyncjobs' `LoadTaskByID`).

Opt-in: `Settings(events=True)` (env `BGJOB_EVENTS=1`, Django `BGJOB["EVENTS"]`). Then every transition of a job
is one small JSON message in the `<PREFIX>_EVENTS` stream (file storage, kept `Settings.events_max_age`
seconds, created on first use):

| kind               | published by                         | when                                               |
|--------------------|--------------------------------------|----------------------------------------------------|
| `enqueued`         | the producer (send_job, send_jobs,   | just before the job is published (`due` set for a  |
|                    | publish_prepared)                    | delayed job); withdrawn if the server refuses it   |
| `started`          | the worker, `on_job_start`           | its handler chain is about to run                  |
| `succeeded`        | the worker, `on_settled`             | acked (Complete)                                   |
| `retry_scheduled`  | the worker, `on_settled`             | nak'ed with a delay or held by a retry schedule    |
| `dead_lettered`    | the worker, `on_settled`             | stored in the DLQ (`reason`)                       |
| `deadline_expired` | the worker, `on_settled`             | dead-lettered with reason `deadline`               |
| `rescheduled`      | the worker, `on_settled`             | its next run is scheduled (`due`)                  |
| `handed_back`      | the worker, `on_settled`             | given back unsettled (drain, a failed settle step) |

The worker's events come from its hooks (`EventHooks`), which hear the settle path's real `Fate`: never a
prediction. Each event carries the job id, type, queue, attempt (0 for `enqueued`), time (UTC), the worker's id
and, for failures, the error text the Fate carries (already scrubbed of the job's sensitive values and
sensitive headers like the DLQ's, scrubbed again here, and cut to `ERROR_BYTES`); never the arg.

Events are published without waiting for a PubAck (a core NATS publish into the stream): they cost the sender
one small message, and they are lost, not retried, if the connection is down at that moment. They are
observations, never what a job's fate depends on.

Subjects: `<prefix>._events.<job_id>.<queue>.<type>`, so `Client.events(queue=, job_type=, job_id=)` filters on
the server and `Client.job_status(job_id)` is one request: the stream's last message on
`<prefix>._events.<job_id>.>` (a job's queue and type never change: it is the job's last event), sent together
with one read of the job's latest progress (`bgjob.long_running`'s `<PREFIX>_PROGRESS` bucket).
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import enum
import json
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

import nats.errors
import nats.js.errors
from nats.js.api import ConsumerConfig, DeliverPolicy, Header

from .headers import MSG_ID
from .hooks import Fate, FateKind, WorkerHooks
from .job import format_time, parse_time
from .long_running import latest_progress
from .redaction import mask_arg, scrub_text, secret_texts
from .runtime import original
from .topology import events_stream_config

if TYPE_CHECKING:
    from .client import Client
    from .codec import PreparedJob
    from .core import Core
    from .hooks import Failure
    from .job import Job
    from .result import Result
    from .runtime import Runtime

log = logging.getLogger("bgjob.events")

#: the most bytes of an error text an event carries (the dead letter keeps more).
ERROR_BYTES = 1024
ROLLUP, ROLLUP_SUBJECT = Header.ROLLUP.value, "sub"
_SCHEDULE = Header.SCHEDULE.value
#: the mark in Core's provisioned set: the events stream was seen (or made) on this connection.
_PROVISIONED = "\0events"


class EventKind(enum.StrEnum):
    """One transition of a job's life (see the module docstring for who publishes each)."""

    ENQUEUED = "enqueued"
    STARTED = "started"
    SUCCEEDED = "succeeded"
    RETRY_SCHEDULED = "retry_scheduled"
    DEAD_LETTERED = "dead_lettered"
    DEADLINE_EXPIRED = "deadline_expired"
    RESCHEDULED = "rescheduled"
    HANDED_BACK = "handed_back"


class JobState(enum.StrEnum):
    """A job's state as its last event tells it (`Client.job_status`)."""

    #: sent with a delay or `at` (or rescheduled), not due yet.
    SCHEDULED = "scheduled"
    #: in its queue, waiting for a worker (or handed back, or a delayed, retried or rescheduled job past its due
    #: time that no worker has started yet).
    READY = "ready"
    #: a worker started it and has not settled it yet (also after that worker died mid-job, until the job is
    #: delivered again: then it is `running` again, with the next attempt).
    RUNNING = "running"
    #: failed, and runs again at `JobStatus.due`.
    RETRY_SCHEDULED = "retry_scheduled"
    SUCCEEDED = "succeeded"
    DEAD_LETTERED = "dead_lettered"
    #: no event of it is kept: events off when it was sent and run, past `events_max_age`, or no such job.
    UNKNOWN = "unknown"


_STATE_OF = {
    EventKind.ENQUEUED: JobState.SCHEDULED,  # until its due time (state_of)
    EventKind.STARTED: JobState.RUNNING,
    EventKind.SUCCEEDED: JobState.SUCCEEDED,
    EventKind.RETRY_SCHEDULED: JobState.RETRY_SCHEDULED,
    EventKind.DEAD_LETTERED: JobState.DEAD_LETTERED,
    EventKind.DEADLINE_EXPIRED: JobState.DEAD_LETTERED,
    EventKind.RESCHEDULED: JobState.SCHEDULED,
    EventKind.HANDED_BACK: JobState.READY,
}


@dataclass(frozen=True, slots=True)
class Event:
    """One lifecycle event. `time` and `due` are aware UTC datetimes; `attempt` is 0 for `enqueued`; `worker` is
    the worker's id (None for `enqueued`); `error` a failure's scrubbed, cut text; `reason` the DLQ reason of a
    dead letter or why a job was handed back; `due` when a delayed, retried or rescheduled job runs; `seq` the
    event's sequence in the events stream (None until stored)."""

    kind: EventKind
    job_id: str
    job_type: str
    queue: str
    attempt: int
    time: datetime
    worker: str | None = None
    error: str | None = None
    reason: str | None = None
    due: datetime | None = None
    seq: int | None = None

    def to_json(self) -> bytes:
        """The event's message body: a small JSON object, None fields left out."""
        return event_body(self.kind, self.job_id, self.job_type, self.queue, self.attempt, self.time, self.worker,
                          self.error, self.reason, self.due)  # fmt: skip

    @classmethod
    def from_json(cls, data: bytes, seq: int | None = None) -> Event:
        """An Event from a message body; ValueError (or KeyError, TypeError) for one that is not an event."""
        record = json.loads(data)
        moment = parse_time(record["time"])
        if moment is None:
            raise ValueError("an event needs a time")
        return cls(kind=EventKind(record["kind"]), job_id=str(record["id"]), job_type=str(record["type"]),
                   queue=str(record["queue"]), attempt=int(record.get("attempt", 0)), time=moment,
                   worker=record.get("worker"), error=record.get("error"), reason=record.get("reason"),
                   due=parse_time(record.get("due")), seq=seq)  # fmt: skip

    def as_dict(self) -> dict[str, Any]:
        """The event as JSON-ready values (times as RFC 3339 text), for the CLI and the admin."""
        return {"seq": self.seq, "time": format_time(self.time), "kind": self.kind.value, "id": self.job_id,
                "type": self.job_type, "queue": self.queue, "attempt": self.attempt, "worker": self.worker,
                "reason": self.reason, "due": format_time(self.due) if self.due else None,
                "error": self.error}  # fmt: skip


@dataclass(frozen=True, slots=True)
class JobStatus:
    """What `Client.job_status(job_id)` answers: `state`, and the `event` it was read from (None: unknown); the
    job's latest `progress` (what its handler last passed to `job.report_progress`: a JSON value or bytes; None
    when it reported none, or longer ago than Settings.progress_ttl), when that was stored (`progress_at`, aware
    UTC) and the job's sensitive arg keys stored with it (`progress_sensitive`; `masked_progress` masks them)."""

    job_id: str
    state: JobState
    event: Event | None = None
    progress: Any = None
    progress_at: datetime | None = None
    progress_sensitive: frozenset[str] = frozenset()

    @property
    def masked_progress(self) -> Any:
        """`progress` with the value of every key named in `progress_sensitive` (at any depth) replaced by
        `bgjob.redaction.MASK`, as a dead letter's arg is masked; bytes as they are."""
        return mask_arg(self.progress, self.progress_sensitive)

    @property
    def time(self) -> datetime | None:
        """When the last event happened (aware UTC), None when unknown."""
        return self.event.time if self.event else None

    @property
    def attempt(self) -> int | None:
        """The attempt of the last event (0: not started yet), None when unknown."""
        return self.event.attempt if self.event else None

    @property
    def due(self) -> datetime | None:
        """When a scheduled or retrying job runs next, when known."""
        return self.event.due if self.event else None

    @property
    def error(self) -> str | None:
        """The last failure's scrubbed error text, when the last event carries one."""
        return self.event.error if self.event else None


def event_body(kind: EventKind, job_id: str, job_type: str, queue: str, attempt: int, moment: datetime,
               worker: str | None = None, error: str | None = None, reason: str | None = None,
               due: datetime | None = None) -> bytes:  # fmt: skip
    """An event's JSON body, None fields left out. Ids, types, queues, worker ids and reasons are validated
    tokens (letters, digits and `_:=+.-`; nothing JSON escapes) and go in as they are; the error is encoded. A
    worker builds two of these per job on its busiest threads: 3.1 µs, against 4.6 µs for `json.dumps` of a dict
    plus 1.3 µs for an `Event` (measured)."""
    text = (f'{{"kind":"{kind.value}","id":"{job_id}","type":"{job_type}","queue":"{queue}","attempt":{attempt:d},'
            f'"time":"{format_time(moment)}"')  # fmt: skip
    if worker is not None:
        text += f',"worker":{json.dumps(worker)}'
    if reason is not None:
        text += f',"reason":{json.dumps(reason)}'
    if due is not None:
        text += f',"due":"{format_time(due)}"'
    if error is not None:
        text += f',"error":{json.dumps(error, ensure_ascii=False)}'
    return (text + "}").encode()


#: the kinds of event after which a job waits for its `due` time, then is `ready` (in its queue for a worker).
_WAITS_FOR_DUE = (EventKind.ENQUEUED, EventKind.RETRY_SCHEDULED, EventKind.RESCHEDULED)


def state_of(event: Event | None, now: datetime | None = None) -> JobState:
    """The state a job is in when `event` is its last one: an `enqueued` event is `scheduled` until its `due`
    time (`now`: the current time), then `ready`; likewise a `retry_scheduled` one is `retry_scheduled` and a
    `rescheduled` one `scheduled` until their `due`, then `ready` (due, and no worker has started it yet)."""
    if event is None:
        return JobState.UNKNOWN
    if event.kind in _WAITS_FOR_DUE:
        if event.due is None:  # sent without a delay (a retry or reschedule always has its due time)
            return JobState.READY if event.kind is EventKind.ENQUEUED else _STATE_OF[event.kind]
        if event.due <= (now or datetime.now(timezone.utc)):
            return JobState.READY
    return _STATE_OF[event.kind]


def cut_error(text: str | None, max_bytes: int = ERROR_BYTES) -> str | None:
    """`text` in at most `max_bytes` UTF-8 bytes (plus a `…[cut N bytes]` marker when it was longer)."""
    if text is None:
        return None
    raw = text.encode("utf-8", "replace")
    if len(raw) <= max_bytes:
        return text
    return raw[:max_bytes].decode("utf-8", "ignore") + f"…[cut {len(raw) - max_bytes} bytes]"


# -- publishing ----------------------------------------------------------------------------------------------------
class EventSink:
    """Puts events on the wire from any thread without waiting for a PubAck: one per connection (`sink_for`).

    A thread appends and wakes the runtime loop; the loop makes sure the events stream exists (once per
    connection), then publishes everything queued. Events that cannot be published are dropped with a warning
    (one per run of failures)."""

    def __init__(self, core: Core, runtime: Runtime) -> None:
        self._core = core
        self._runtime = runtime
        self._queue: collections.deque[tuple[str, bytes, dict[str, str] | None]] = collections.deque()
        self._pumping = False
        self._failing = False
        runtime.add_wakeup_hook(self._start_pump)

    def emit_body(self, subject: str, body: bytes, headers: dict[str, str] | None = None) -> None:
        """Queue an event's message as built (`event_body`) for publishing (any thread; never blocks, never
        raises); `headers` e.g. a Nats-Msg-Id (the events stream drops a repeat within its duplicate window)."""
        self._queue.append((subject, body, headers))
        if self._runtime.in_loop_thread():  # on_settled: no wake-up through the loop's self-pipe needed
            self._start_pump()
        elif not self._pumping:  # a running pump takes it (it checks the queue again after it stops)
            self._runtime.wake()

    def _start_pump(self) -> None:
        if self._queue and not self._pumping:
            self._pumping = True
            self._runtime.spawn(self._pump())

    async def _pump(self) -> None:
        core, queue = self._core, self._queue
        try:
            try:
                await ensure_events_stream(core)
            except Exception as exc:  # noqa: BLE001 - events are observations: drop them, never stall a job
                self._dropped(len(queue), exc)
                queue.clear()
                return
            while queue:
                subject, body, headers = queue.popleft()
                try:
                    await core.nc.publish(subject, body, headers=headers)
                except Exception as exc:  # noqa: BLE001 - e.g. the reconnect buffer is full
                    self._dropped(1, exc)
                else:
                    self._failing = False
        finally:
            self._pumping = False
            if queue:
                self._start_pump()

    def _dropped(self, count: int, exc: BaseException) -> None:
        if not self._failing:
            log.warning("bgjob: %d lifecycle event(s) dropped: %s", count, exc)
        self._failing = True


#: an OS lock even under gevent: taken on the runtime's loop thread too, where a patched lock must never be used.
_sink_lock = original("_thread", "allocate_lock")()


def sink_for(runtime: Runtime, core: Core) -> EventSink:
    """The EventSink of this connection (made on first use)."""
    sink = core._event_sink
    if sink is None:
        with _sink_lock:
            sink = core._event_sink
            if sink is None:
                sink = EventSink(core, runtime)
                core._event_sink = sink
    return sink


async def ensure_events_stream(core: Core) -> None:
    """Make sure the events stream exists, once per connection; an existing one is never changed."""
    if _PROVISIONED in core._provisioned:
        return
    config = events_stream_config(core.topology, core.settings)
    name = config.name
    assert name is not None  # events_stream_config names it

    async def provision() -> None:
        js = core.js
        try:
            await js.stream_info(name)
        except nats.js.errors.NotFoundError:
            try:
                await js.add_stream(config)
            except nats.js.errors.BadRequestError:  # made by another process meanwhile (err 10058)
                await js.stream_info(name)

    await core.retry(provision)
    core._provisioned.add(_PROVISIONED)


def emit_enqueued(runtime: Runtime, core: Core, jobs: list[PreparedJob]) -> None:
    """Publish the `enqueued` events of `jobs` now, without waiting: called just before the jobs themselves are
    published, on the same connection, so that the event is stored before any worker can start the job (sent
    after the job's PubAck, it lost that race to an idle worker's `started` about half the time). A delayed
    job's `due` is read from its `@at` schedule header. Each carries the Nats-Msg-Id `enqueued-<job id>`: a job
    sent again inside the duplicate window, which its queue drops, has its event dropped too.
    `withdraw_enqueued` removes the events of jobs the server then refused."""
    if not jobs:
        return
    sink, topology = sink_for(runtime, core), core.topology
    moment = datetime.now(timezone.utc)
    for job in jobs:
        schedule = job.headers.get(_SCHEDULE)
        due = parse_time(schedule[4:]) if schedule and schedule.startswith("@at ") else None
        body = event_body(EventKind.ENQUEUED, job.job_id, job.job_type, job.queue, 0, moment, due=due)
        sink.emit_body(topology.event_subject(job.job_id, job.queue, job.job_type), body,
                       {MSG_ID: f"enqueued-{job.job_id}"})  # fmt: skip


async def withdraw_enqueued(core: Core, jobs: list[PreparedJob]) -> None:
    """Remove the `enqueued` event of each of `jobs`, which the server refused (not stored): an empty message
    with `Nats-Rollup: sub` on the job's events subject (stored after the event, which was published before it
    on this connection, it purges it), then that message itself is deleted. The job's earlier events, if its id
    was used before, go too. Best effort: a warning when it fails."""
    try:
        for job in jobs:
            subject = core.topology.event_subject(job.job_id, job.queue, job.job_type)
            ack = await core.js.publish(subject, b"", headers={ROLLUP: ROLLUP_SUBJECT})
            await core.js.delete_msg(core.topology.events_stream, ack.seq)
    except Exception as exc:  # noqa: BLE001 - a stale event, not a lost job
        log.warning("bgjob: could not withdraw the enqueued event of refused job(s) %s: %s",
                    ", ".join(job.job_id for job in jobs), exc)  # fmt: skip


class EventHooks(WorkerHooks):
    """The worker's events, from its hooks: `started` before the chain runs, then one event per real Fate.

    A Worker adds one when `Settings.events` is on; `worker_id` is the Worker's id."""

    def __init__(self, client: Client, worker_id: str) -> None:
        self._client = client
        self.worker_id = worker_id

    def _emit(self, job: Job, kind: EventKind, fate: Fate | None = None) -> None:
        now = datetime.now(timezone.utc)
        error = reason = due = None
        if fate is not None:
            error, reason, due = self._error(job, fate.error), fate.reason, fate.at
            if due is None and fate.delay is not None:
                due = now + timedelta(seconds=fate.delay)
        # Never `_ensure()` here: on_settled runs on the runtime's own loop, which must not wait for a connect.
        runtime, core = self._client._runtime, self._client._core
        if runtime is None or core is None:
            return
        body = event_body(kind, job.id, job.type, job.queue, job.attempt, now, self.worker_id, error, reason, due)
        sink_for(runtime, core).emit_body(core.topology.event_subject(job.id, job.queue, job.type), body)

    def _error(self, job: Job, text: str | None) -> str | None:
        """The Fate's error (scrubbed by the settle path) scrubbed once more by the default rule (a hand-back's
        error never went through it), then cut."""
        if not text:
            return None
        try:
            secrets = secret_texts(job.arg, job.sensitive, job.headers, self._client.settings.sensitive_headers)
            return cut_error(scrub_text(text, secrets))
        except Exception:  # noqa: BLE001 - an odd arg: keep the text out rather than risk it
            return "<error text withheld: it could not be scrubbed>"

    def on_job_start(self, job: Job) -> None:
        self._emit(job, EventKind.STARTED)

    def on_settled(self, job: Job, outcome: Result | Failure, fate: Fate) -> None:
        kind = _KIND_OF[fate.kind]
        if kind is EventKind.DEAD_LETTERED and fate.reason == "deadline":
            kind = EventKind.DEADLINE_EXPIRED
        self._emit(job, kind, fate)


_KIND_OF = {
    FateKind.ACKED: EventKind.SUCCEEDED,
    FateKind.RETRY_SCHEDULED: EventKind.RETRY_SCHEDULED,
    FateKind.DEAD_LETTERED: EventKind.DEAD_LETTERED,
    FateKind.RESCHEDULED: EventKind.RESCHEDULED,
    FateKind.HANDED_BACK: EventKind.HANDED_BACK,
}


# -- reading -------------------------------------------------------------------------------------------------------
async def job_status(core: Core, job_id: str) -> JobStatus:
    """The state of job `job_id` from its last event (the events stream's last message on the job's subjects,
    read from the stream's leader), with its latest progress (`bgjob.long_running.read_progress`): two requests
    sent together. Unknown when there is no event (or no stream); no progress when there is none, no progress
    bucket, or it cannot be read (the status is answered without it)."""
    status, progress = await asyncio.gather(_last_event_status(core, job_id), latest_progress(core, job_id))
    if progress is None:
        return status
    return dataclasses.replace(status, progress=progress.value, progress_at=progress.at,
                               progress_sensitive=progress.sensitive)  # fmt: skip


async def _last_event_status(core: Core, job_id: str) -> JobStatus:
    """The state of job `job_id` from its last event: one request. Unknown when there is none (or no stream)."""
    try:
        msg = await core.js.get_last_msg(core.topology.events_stream, core.topology.events_filter(job_id=job_id))
    except nats.js.errors.NotFoundError:
        return JobStatus(job_id, JobState.UNKNOWN)
    if not msg.data:  # a withdrawn event's rollup (see withdraw_enqueued)
        return JobStatus(job_id, JobState.UNKNOWN)
    try:
        event = Event.from_json(msg.data, seq=msg.seq)
    except (ValueError, KeyError, TypeError):
        log.warning("bgjob: the last event of job %s (seq %s) is not a bgjob event", job_id, msg.seq)
        return JobStatus(job_id, JobState.UNKNOWN)
    return JobStatus(job_id, state_of(event), event)


def iterate(client: Client, subject: str, since: datetime | None, timeout: float | None,
            follow: bool) -> Iterator[Event]:  # fmt: skip
    """`Client.events`: an ordered consumer on `subject`, read in batches on the runtime loop."""
    runtime, core = client._ensure()
    create = client.settings.events or follow  # following waits for events: the stream they will be in is made
    sub, backlog = client._call(runtime, _subscribe(core, subject, since, create=create))
    if sub is None or (not follow and backlog == 0):
        if sub is not None:
            _unsubscribe(client, runtime, sub)
        return
    try:
        while True:
            deadline = None if timeout is None else time.monotonic() + timeout
            batch: list[Any] = []
            while not batch:
                wait = 1.0 if deadline is None else min(1.0, deadline - time.monotonic())
                if wait <= 0:
                    return  # nothing within `timeout`
                batch = client._call(runtime, _next_batch(sub, wait), timeout=wait + client._bound())
            for msg in batch:
                try:
                    event = Event.from_json(msg.data, seq=msg.metadata.sequence.stream)
                except (ValueError, KeyError, TypeError):
                    log.debug("skipping a message on %s that is not a bgjob event", msg.subject)
                else:
                    yield event
                if not follow and msg.metadata.num_pending == 0:
                    return  # caught up with what was stored when iteration began (and since)
    finally:
        _unsubscribe(client, runtime, sub)


async def _subscribe(core: Core, subject: str, since: datetime | None, *, create: bool) -> tuple[Any, int]:
    """(an ordered push subscription on `subject` from `since`, how many events it starts behind), or (None, 0)
    when the events stream does not exist (it is made when `create`)."""
    js = core.js
    assert js is not None
    stream = core.topology.events_stream
    if create:
        await ensure_events_stream(core)
    else:
        try:
            await core.retry(js.stream_info, stream)
        except nats.js.errors.NotFoundError:
            return None, 0
    options: dict[str, Any] = {}
    if since is not None:
        options = {"deliver_policy": DeliverPolicy.BY_START_TIME,
                   # nats-py types it datetime but sends a str as it is; format_time is what the server expects
                   "config": ConsumerConfig(opt_start_time=format_time(since))}  # type: ignore[arg-type]  # fmt: skip
    sub = await js.subscribe(subject, stream=stream, ordered_consumer=True, **options)
    try:
        info = await sub.consumer_info()
        backlog = (info.num_pending or 0) + (info.delivered.consumer_seq if info.delivered else 0)
    except Exception:  # noqa: BLE001 - unknown: read until the stream's messages say they are caught up
        backlog = 1
    return sub, backlog


async def _next_batch(sub: Any, wait: float) -> list[Any]:
    """The next message within `wait` seconds and whatever else is already here ([] when none came)."""
    try:
        batch = [await sub.next_msg(timeout=wait)]
    except nats.errors.TimeoutError:
        return []
    while sub.pending_msgs and len(batch) < 1000:
        try:
            batch.append(await sub.next_msg(timeout=0.01))
        except nats.errors.TimeoutError:
            break
    return batch


def _unsubscribe(client: Client, runtime: Runtime, sub: Any) -> None:
    try:
        client._call(runtime, sub.unsubscribe(), timeout=client.settings.request_timeout)
    except Exception as exc:  # noqa: BLE001 - the ephemeral consumer goes away by itself
        log.debug("events: unsubscribe failed: %s", exc)
