"""Long-running jobs (from dagnats' TaskContext): checkpoints, pauses, signals and progress.

A handler reaches these through its `Job` (`job.checkpoint`, `job.load_checkpoint`, `job.pause`,
`job.wait_for_signal`, `job.report_progress`): the worker installs a `LongRunning` in the thread (or greenlet)
that runs the handler (`bgjob.job.worker_services`). Producers use `client.send_signal`, `client.progress` and
`client.watch_progress`, which call the functions below.

Storage, three key-value buckets each made on first use (so jobs that never use them cost nothing):

- `<PREFIX>_CHECKPOINTS`: a job's saved state under its id (`result_key`), max age `Settings.checkpoint_ttl`
  after its last save; a `wait_for_signal(..., pause=True)`'s deadline under `<id key>.wait.<name>`. Deleted by
  `LongRunning.on_settled` when the job is acked (only for jobs this worker saw saving or loading one: the
  others cost nothing) or dead-lettered (always: a rare path). A job that checkpointed, failed, and then
  succeeded in an attempt that neither saved nor loaded its checkpoint leaves it to the TTL.
- `<PREFIX>_SIGNALS`: a signal under `<id key>.<name>` (max age `Settings.signal_ttl`), consumed by the wait
  that returns it (a delete bound to its revision: one waiter gets it). A signal sent again before it was
  consumed replaces the earlier one.
- `<PREFIX>_PROGRESS`: a job's latest progress under its id (max age `Settings.progress_ttl`), with the job's
  sensitive arg keys in a `Bgjob-Sensitive` header when it has some (so that the admin and `bgjob job ID` mask
  their values, as they mask the arg's). `read_progress` reads it with the time it was stored: what
  `client.job_status` and `client.result` add to their answers.

Values are stored with a one-byte tag: `j` + compact JSON, or `b` + raw bytes.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import threading
import time
from collections.abc import Callable, Coroutine, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import nats.errors
import nats.js.errors
from nats.js.api import StorageType
from nats.js.client import KV_PRE_TEMPLATE
from nats.js.kv import KeyValue

from .errors import ConfigurationError, InvalidJob, NonRetryable, describe_error
from .headers import SENSITIVE_KEYS
from .hooks import Failure, Fate, FateKind, WorkerHooks
from .job import KEEP_CHECKPOINT, Job, encode_arg, sensitive_of, validate_job_id
from .job_results import result_key
from .request_reply import Reply
from .result import Pause, Result
from .schedule import seconds_of
from .topology import CHECKPOINTS_BUCKET, PROGRESS_BUCKET, SIGNALS_BUCKET

T = TypeVar("T")

if TYPE_CHECKING:
    from .client import Client
    from .core import Core

__all__ = ["LongRunning", "PauseRequested", "SignalTimeout", "StoredProgress", "validate_signal_name"]

log = logging.getLogger("bgjob.worker")

_SIGNAL_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
#: bytes kept free under the server's max payload for a KV put's subject and headers.
_PUT_OVERHEAD = 1024


class SignalTimeout(NonRetryable):
    """`job.wait_for_signal(name, timeout)` saw no signal `name` within `timeout`.

    Left uncaught, it dead-letters the job at once (reason `non_retryable`, as bgjob.NonRetryable): a retry would
    only start the whole wait again, attempt after attempt. Catch it to do something else instead."""


class PauseRequested(BaseException):
    """Raised by `job.pause(...)` (and a pausing `wait_for_signal`); the worker's dispatch turns it into its
    `pause` (a `bgjob.Pause`). A BaseException so that a handler's `except Exception` does not swallow it."""

    def __init__(self, pause: Pause) -> None:
        super().__init__(f"paused until {pause.due().isoformat()}")
        self.pause = pause


class Runner(Protocol):
    """What runs a coroutine function with the Core on the client's loop (`bgjob.Client.run`)."""

    def run(self, coro_fn: Callable[..., Coroutine[Any, Any, T]], *args: Any, timeout: float | None = None,
            idempotent: bool = False) -> T: ...  # fmt: skip


def validate_signal_name(name: str) -> str:
    """A signal name: 1-64 letters, digits, '_' and '-'. Raises InvalidJob otherwise."""
    if not isinstance(name, str) or not _SIGNAL_NAME.fullmatch(name):
        raise InvalidJob(f"invalid signal name {name!r}: use letters, digits, '_' and '-' (max 64)")
    return name


# -- values and keys ---------------------------------------------------------------------------------------
def encode_value(value: Any, what: str) -> bytes:
    """`value` (JSON-serialisable or bytes) as stored; raises InvalidJob naming `what` when it does not encode."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return b"b" + bytes(value)
    try:
        body, _ = encode_arg(value)
    except InvalidJob as exc:
        raise InvalidJob(str(exc).replace("job arg", what)) from None
    return b"j" + body


def decode_value(data: bytes) -> Any:
    """A stored value back (JSON value or bytes)."""
    if data[:1] == b"b":
        return data[1:]
    return json.loads(data[1:]) if len(data) > 1 else None


def decode_progress(data: bytes) -> Any:
    """A stored progress value back, as `decode_value`; a value bgjob did not write (JSON that does not parse,
    or nests too deeply to parse) comes back as its raw bytes instead of raising."""
    try:
        return decode_value(data)
    except (ValueError, RecursionError):
        return bytes(data)


def signal_key(job_id: str, name: str) -> str:
    return f"{result_key(job_id)}.{name}"


def wait_key(job_id: str, name: str) -> str:
    return f"{result_key(job_id)}.wait.{name}"


def _seconds(value: timedelta | float, what: str) -> float:
    return seconds_of(value, what, InvalidJob)


# -- bucket operations (coroutine functions taking the Core first: `Client.run`) ----------------------------
_TTL_FIELDS = {CHECKPOINTS_BUCKET: "checkpoint_ttl", SIGNALS_BUCKET: "signal_ttl", PROGRESS_BUCKET: "progress_ttl"}


async def bucket(core: Core, suffix: str, create: bool = True) -> KeyValue | None:
    """The bucket `<PREFIX>_<suffix>` (CHECKPOINTS, SIGNALS or PROGRESS), made on first use with its TTL when
    `create` (else None when it does not exist)."""
    return await core.bucket(suffix, ttl=getattr(core.settings, _TTL_FIELDS[suffix]), storage=StorageType.FILE,
                             description=f"bgjob long-running jobs: {suffix.lower()}", create=create)  # fmt: skip


async def _made(core: Core, suffix: str) -> KeyValue:
    kv = await bucket(core, suffix)
    assert kv is not None
    return kv


async def put(core: Core, suffix: str, key: str, data: bytes, headers: dict[str, str] | None = None) -> None:
    """Store `data` under `key` in bucket `suffix` (made on first use), with `headers` when given (a KV put
    through JetStream's publish: the KV API takes none). Raises InvalidJob when it exceeds the max payload."""
    extra = sum(len(k) + len(v) + 4 for k, v in (headers or {}).items())
    if len(data) + len(key) + extra + _PUT_OVERHEAD > core.max_payload:
        raise InvalidJob(f"{suffix.lower()[:-1]} value is {len(data)} bytes, more than the server's max payload "
                         f"({core.max_payload} bytes) allows")  # fmt: skip
    kv = await _made(core, suffix)
    if not headers:
        await kv.put(key, data)
        return
    await core.js.publish(KV_PRE_TEMPLATE.format(bucket=core.topology.stream_prefix + suffix) + key, data,
                          headers=headers)  # fmt: skip


async def get(core: Core, suffix: str, key: str) -> bytes | None:
    kv = await bucket(core, suffix, create=False)
    if kv is None:
        return None
    try:
        entry = await kv.get(key)
    except nats.js.errors.KeyNotFoundError:
        return None
    return entry.value if entry.value is not None else None


async def delete(core: Core, suffix: str, keys: list[str]) -> None:
    kv = await bucket(core, suffix, create=False)
    if kv is None:
        return
    for key in keys:
        try:
            await kv.delete(key)
        except nats.js.errors.KeyNotFoundError:
            pass


async def take(core: Core, key: str) -> bytes | None:
    """Consume the signal under `key`: its value, deleted bound to its revision (so one taker gets it); None
    when there is none."""
    kv = await _made(core, SIGNALS_BUCKET)
    while True:
        try:
            entry = await kv.get(key)
        except nats.js.errors.KeyNotFoundError:
            return None
        try:
            await kv.delete(key, last=entry.revision)
        except nats.js.errors.KeyWrongLastSequenceError:
            continue  # replaced or taken meanwhile: read it again
        return entry.value or b""


async def take_or_wait(core: Core, key: str, seconds: float) -> bytes | None:
    """The signal under `key`, consumed, waiting for it up to `seconds` with a KV watch; None when none came."""
    kv = await _made(core, SIGNALS_BUCKET)
    watcher = await kv.watch(key, ignore_deletes=True)  # watching first: a signal sent meanwhile is seen
    try:
        until = time.monotonic() + seconds
        while True:
            taken = await take(core, key)
            if taken is not None:
                return taken
            left = until - time.monotonic()
            if left <= 0:
                return None
            try:
                await watcher.updates(timeout=left)  # the current value, the end-of-initial marker, or a new one
            except nats.errors.TimeoutError:
                return None
    finally:
        try:
            await watcher.stop()
        except Exception:  # noqa: BLE001 - an ephemeral consumer: the server drops it
            pass


# -- the producer's side (Client) -----------------------------------------------------------------------------
def send_signal(runner: Runner, job_id: str, name: str, data: Any = None) -> None:
    """Store signal `name` with `data` (JSON-serialisable or bytes) for job `job_id` (see `Client.send_signal`)."""
    validate_job_id(job_id)
    validate_signal_name(name)
    runner.run(put, SIGNALS_BUCKET, signal_key(job_id, name), encode_value(data, "signal data"))


def progress(runner: Runner, job_id: str) -> Any:
    """The latest progress job `job_id` reported, or None (see `Client.progress`)."""
    validate_job_id(job_id)
    data = runner.run(get, PROGRESS_BUCKET, result_key(job_id), idempotent=True)
    return decode_progress(data) if data is not None else None


def watch_progress(runner: Runner, job_id: str, timeout: timedelta | float | None = None) -> Iterator[Any]:
    """Yield job `job_id`'s progress: the latest value (if any), then every update, until `timeout` seconds
    from the call (None: until the caller stops iterating). See `Client.watch_progress`."""
    validate_job_id(job_id)
    until = None if timeout is None else time.monotonic() + _seconds(timeout, "watch_progress timeout")
    key = result_key(job_id)

    async def open_watch(core: Core) -> Any:
        return await (await _made(core, PROGRESS_BUCKET)).watch(key, ignore_deletes=True)

    watcher = runner.run(open_watch)
    try:
        while True:
            wait = 5.0 if until is None else min(5.0, until - time.monotonic())
            if wait <= 0:
                return

            async def next_update(core: Core, wait: float = wait) -> Any:
                try:
                    return await watcher.updates(timeout=wait)
                except nats.errors.TimeoutError:
                    return None

            entry = runner.run(next_update, timeout=wait + 5.0)
            if entry is not None and entry.value:
                yield decode_progress(entry.value)
    finally:

        async def stop(core: Core) -> None:
            await watcher.stop()

        try:
            runner.run(stop, timeout=5.0)
        except Exception:  # noqa: BLE001 - an ephemeral consumer: the server drops it
            pass


@dataclass(frozen=True, slots=True)
class StoredProgress:
    """A job's latest stored progress (`read_progress`): its `value` (a JSON value or bytes), when it was stored
    (`at`, an aware UTC datetime; None if the server did not say) and the job's `sensitive` arg keys."""

    value: Any
    at: datetime | None
    sensitive: frozenset[str] = frozenset()


async def read_progress(core: Core, job_id: str) -> StoredProgress | None:
    """Job `job_id`'s latest progress with its time: one request (a stream message get on the bucket's stream,
    which carries the time the KV get leaves out). None when there is none, or no progress bucket at all."""
    bucket_name = core.topology.stream_prefix + PROGRESS_BUCKET
    subject = KV_PRE_TEMPLATE.format(bucket=bucket_name) + result_key(job_id)
    try:
        msg = await core.js.get_msg(f"KV_{bucket_name}", subject=subject)
    except nats.js.errors.NotFoundError:  # no such key, or no such bucket
        return None
    headers = msg.headers or {}
    if headers.get("KV-Operation") in ("DEL", "PURGE") or not msg.data:
        return None
    return StoredProgress(decode_progress(msg.data), msg.time, sensitive_of(headers))


async def latest_progress(core: Core, job_id: str) -> StoredProgress | None:
    """`read_progress`, or None when it cannot be read (logged): for answers that add progress to what they
    read anyway (`client.job_status`, `client.result`), which a progress read must never fail."""
    try:
        return await read_progress(core, job_id)
    except Exception as exc:  # noqa: BLE001 - progress is an extra: the answer it joins goes on without it
        log.debug("could not read the progress of job %s: %s", job_id, describe_error(exc))
        return None


# -- the worker's side ---------------------------------------------------------------------------------------
class _Progress:
    __slots__ = ("headers", "last", "pending")

    def __init__(self, headers: dict[str, str] | None) -> None:
        self.last = 0.0
        self.pending: bytes | None = None
        self.headers = headers  # the job's sensitive keys (SENSITIVE_KEYS), stored with each value


def _progress_headers(job: Job) -> dict[str, str] | None:
    """The headers a job's progress is stored with: its sensitive arg keys, when it has some."""
    return {SENSITIVE_KEYS: ",".join(sorted(job.sensitive))} if job.sensitive else None


class LongRunning(WorkerHooks):
    """The services a Worker installs for its handlers (what `job.checkpoint()` and friends call), and the hooks
    that delete a finished job's checkpoint and store its last throttled progress.

    `runner` is the worker's `bgjob.Client`. Per job it remembers only the checkpoint keys it saw written or
    read (a dict entry, dropped when the job settles), so jobs that never checkpoint cost nothing."""

    def __init__(self, runner: Client) -> None:
        self.runner = runner
        #: the worker's default time limit in seconds (None: none), set by the Worker: what bounds a request-reply
        #: handler's wait when its type has no time limit of its own (bgjob.request_reply).
        self.time_limit: float | None = None
        self._keys: dict[str, set[str]] = {}
        self._progress: dict[str, _Progress] = {}
        self._lock = threading.Lock()

    def _remember(self, job: Job, key: str) -> None:
        with self._lock:
            self._keys.setdefault(job.id, set()).add(key)

    # -- checkpoints ---------------------------------------------------------------------------------------
    def checkpoint(self, job: Job, state: Any) -> None:
        """See `Job.checkpoint`."""
        key = result_key(job.id)
        self._remember(job, key)  # before the put: a put that timed out may still have been stored
        self.runner.run(put, CHECKPOINTS_BUCKET, key, encode_value(state, "a checkpoint"), idempotent=True)

    def load_checkpoint(self, job: Job) -> Any:
        """See `Job.load_checkpoint`."""
        key = result_key(job.id)
        data = self.runner.run(get, CHECKPOINTS_BUCKET, key, idempotent=True)
        if data is None:
            return None
        self._remember(job, key)
        return decode_value(data)

    # -- pause ---------------------------------------------------------------------------------------------
    def pause(self, job: Job, until: timedelta | float | datetime, checkpoint: Any = KEEP_CHECKPOINT) -> None:
        """See `Job.pause`: raises PauseRequested (InvalidResult for a bad `until` or checkpoint)."""
        raise PauseRequested(Pause(until, checkpoint=checkpoint))

    def settle_pause(self, job: Job, outcome: Result) -> Result | Failure:
        """In the handler's thread, before the Pause is settled: save its checkpoint (when it has one). A save
        that fails makes the outcome a Failure (retried by the policy): the job never pauses without it."""
        if not isinstance(outcome, Pause) or outcome.checkpoint is KEEP_CHECKPOINT:
            return outcome
        try:
            self.checkpoint(job, outcome.checkpoint)
        except Exception as exc:  # noqa: BLE001 - the job's failure, not the worker's
            return Failure(f"could not save the Pause's checkpoint: {describe_error(exc)}", exception=exc)
        return outcome

    # -- signals -------------------------------------------------------------------------------------------
    def wait_for_signal(self, job: Job, name: str, timeout: timedelta | float, *, pause: bool = False,
                        recheck: timedelta | float = 60.0) -> Any:  # fmt: skip
        """See `Job.wait_for_signal`."""
        validate_signal_name(name)
        seconds = _seconds(timeout, "wait_for_signal timeout")
        key = signal_key(job.id, name)
        if pause:
            return self._wait_pausing(job, name, key, seconds, _seconds(recheck, "wait_for_signal recheck"))
        until = time.monotonic() + seconds
        beat = max(0.5, self.runner.settings.ack_wait / 3)
        while True:
            left = until - time.monotonic()
            data = self.runner.run(take_or_wait, key, max(0.0, min(left, beat)), timeout=min(left, beat) + 30.0)
            if data is not None:
                return decode_value(data)
            if until - time.monotonic() <= 0:
                raise SignalTimeout(f"job {job.id}: no signal {name!r} within {seconds:g}s")
            job.heartbeat()

    def _wait_pausing(self, job: Job, name: str, key: str, seconds: float, recheck: float) -> Any:
        data = self.runner.run(take, key)
        wkey = wait_key(job.id, name)
        if data is not None:
            self.runner.run(delete, CHECKPOINTS_BUCKET, [wkey])
            return decode_value(data)
        self._remember(job, wkey)
        stored = self.runner.run(get, CHECKPOINTS_BUCKET, wkey, idempotent=True)
        now = time.time()
        if stored is None:
            deadline = now + seconds
            self.runner.run(put, CHECKPOINTS_BUCKET, wkey, encode_value(deadline, "a wait"), idempotent=True)
        else:
            deadline = float(decode_value(stored))
        if now >= deadline:
            self.runner.run(delete, CHECKPOINTS_BUCKET, [wkey])
            raise SignalTimeout(f"job {job.id}: no signal {name!r} within {seconds:g}s (pausing)")
        raise PauseRequested(Pause(min(recheck, deadline - now + 0.05)))

    # -- progress ------------------------------------------------------------------------------------------
    def report_progress(self, job: Job, data: Any) -> None:
        """See `Job.report_progress`: stored now when the job's last store is `progress_interval` old, else kept
        as pending and stored by a timer on the event loop when the interval is over (never blocking here)."""
        encoded = encode_value(data, "progress")
        interval = self.runner.settings.progress_interval
        with self._lock:
            state = self._progress.get(job.id)
            if state is None:
                state = self._progress[job.id] = _Progress(_progress_headers(job))
            now = time.monotonic()
            if now - state.last < interval:
                first = state.pending is None
                state.pending = encoded
                if first:  # one timer per interval stores the latest pending value
                    self._flush_later(job, state, state.last + interval - now)
                return
            state.last, state.pending = now, None
        self._store_progress(job, encoded)

    def _flush_later(self, job: Job, state: _Progress, delay: float) -> None:
        runtime, core = self.runner._ensure()

        async def flush() -> None:
            await asyncio.sleep(delay)
            with self._lock:
                pending, state.pending = state.pending, None
                state.last = time.monotonic()
            if pending is not None:
                try:
                    await put(core, PROGRESS_BUCKET, result_key(job.id), pending, state.headers)
                except Exception as exc:  # noqa: BLE001 - progress is a report: the job goes on
                    log.warning("could not store the progress of job %s: %s", job.id, describe_error(exc))

        runtime.loop.call_soon_threadsafe(lambda: runtime.spawn(flush()))

    def _store_progress(self, job: Job, encoded: bytes) -> None:
        try:
            self.runner.run(put, PROGRESS_BUCKET, result_key(job.id), encoded, _progress_headers(job))
        except Exception as exc:  # noqa: BLE001 - progress is a report: the job goes on
            log.warning("could not store the progress of job %s: %s", job.id, describe_error(exc))

    # -- request-reply handlers (bgjob.request_reply) -------------------------------------------------------
    def request(self, subject: str, body: bytes, headers: dict[str, str], timeout: float) -> Reply:
        """Send one NATS request on the worker's connection and wait for its reply, at most `timeout` seconds
        (plus at most 0.1 s should the worker's event loop be late to report the timeout); blocks the calling
        pool thread (or greenlet), never the event loop. Returns a `bgjob.request_reply.Reply`: the reply, or its
        absence ("timeout", "no_responders"). Raises a bgjob error (ConnectionError, ...) when NATS cannot be
        reached."""
        return self.runner.run(_request, subject, body, headers, timeout, timeout=timeout + 0.1)

    # -- hooks ---------------------------------------------------------------------------------------------
    def on_job_end(self, job: Job, outcome: Result | Failure) -> None:
        """In the handler's thread: store the last throttled progress report now (its timer then finds nothing)."""
        if not self._progress:
            return
        with self._lock:
            state = self._progress.pop(job.id, None)
            pending = state.pending if state is not None else None
            if state is not None:
                state.pending = None
        if pending is not None:
            self._store_progress(job, pending)

    def on_settled(self, job: Job, outcome: Result | Failure, fate: Fate) -> None:
        """On the event loop: delete the checkpoint of a job that succeeded (when it used one) or was
        dead-lettered, in a task of its own."""
        kind = fate.kind
        keys = self._keys.pop(job.id, None) if self._keys else None
        if kind is FateKind.DEAD_LETTERED:
            keys = (keys or set()) | {result_key(job.id)}
        elif kind is not FateKind.ACKED or not keys:
            return
        runtime, core = self.runner._ensure()
        runtime.spawn(_delete_quietly(core, job.id, sorted(keys)))


async def _request(core: Core, subject: str, body: bytes, headers: dict[str, str], timeout: float) -> Reply:
    try:
        msg = await core.nc.request(subject, body, timeout=timeout, headers=headers)
    except nats.errors.NoRespondersError:
        return Reply("no_responders")
    except nats.errors.TimeoutError:
        return Reply("timeout")
    return Reply("reply", msg.data, dict(msg.headers or {}))


#: the JetStream API request listing the streams whose subjects match a `{"subject": ...}` filter.
STREAM_NAMES_API = "$JS.API.STREAM.NAMES"


async def check_request_subjects(core: Core, subjects: Mapping[str, str]) -> None:
    """At a Worker's start, on the event loop: refuse request-reply subjects (`subjects`: job type -> subject,
    `Mux.request_reply_subjects`) that a JetStream stream captures. A request on such a subject is stored in the
    stream as a message (a copy of the job, when it is a queue's) and answered by the stream's PubAck, never by
    a service. One `$JS.API.STREAM.NAMES` request per subject (each at most request_timeout seconds, transient
    errors retried within retry_for). Raises ConfigurationError naming the type, subject and streams, and
    bgjob.ConnectionError when the server does not answer."""
    for job_type, subject in subjects.items():
        streams = await core.retry(_capturing_streams, core, subject)
        if streams:
            named = ", ".join(repr(name) for name in streams)
            raise ConfigurationError(
                f"request-reply handler for {job_type!r}: subject {subject!r} is captured by JetStream stream "
                f"{named}: a request there would be stored as a message (a copy of the job on a queue's stream) and "
                "answered by the stream, not by a service; register the service's own subject, one no stream's "
                "subjects match")  # fmt: skip


async def _capturing_streams(core: Core, subject: str) -> list[str]:
    """The names of the streams whose subjects match `subject` (the server's `$JS.API.STREAM.NAMES` filter)."""
    names: list[str] = []
    while True:
        request = json.dumps({"subject": subject, "offset": len(names)}).encode()
        reply = await core.nc.request(STREAM_NAMES_API, request, timeout=core.settings.request_timeout)
        answer = json.loads(reply.data)
        if "error" in answer:
            raise nats.js.errors.APIError.from_error(answer["error"])
        page = answer.get("streams") or []
        names.extend(page)
        if not page or len(names) >= int(answer.get("total", 0)):
            return names


async def _delete_quietly(core: Core, job_id: str, keys: list[str]) -> None:
    try:
        await core.retry(delete, core, CHECKPOINTS_BUCKET, keys)
    except Exception as exc:  # noqa: BLE001 - the TTL drops it anyway
        log.warning("could not delete the checkpoint of job %s: %s; it expires after checkpoint_ttl", job_id,
                    describe_error(exc))  # fmt: skip
