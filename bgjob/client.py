"""The Client: bgjob's blocking, thread-safe, fork-safe facade over nats-py."""

from __future__ import annotations

import asyncio
import atexit
import collections
import functools
import logging
import os
import threading
import time
import weakref
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

import nats
import nats.errors
import nats.js.errors
from nats.js.api import Header
from tenacity import AsyncRetrying, retry_if_exception, stop_after_delay, wait_random_exponential

from . import job as jobmod
from . import results
from .context import current_request_id
from .errors import BgjobError, ConnectionError, InvalidJob, ResultNotFound, SendJobsError
from .job import JobSpec
from .publisher import Outgoing, PublishBatch, Publisher
from .results import JobResult
from .runtime import Runtime, in_gevent_hub_thread
from .settings import Settings
from .topology import Topology, check_server, provision_dlq, provision_queue

if TYPE_CHECKING:
    from .directory import WorkerInfo
    from .dlq import DeadLetters
    from .periodic import PeriodicJob

log = logging.getLogger("bgjob.client")


def is_transient(exc: BaseException) -> bool:
    """Errors worth retrying: the server is restarting, failing over or briefly unreachable."""
    if isinstance(exc, nats.js.errors.ServiceUnavailableError):
        return True
    if isinstance(exc, nats.js.errors.APIError):
        return exc.code in (503, 504)
    return isinstance(
        exc,
        (
            nats.errors.TimeoutError,
            asyncio.TimeoutError,
            nats.errors.NoRespondersError,
            nats.js.errors.NoStreamResponseError,
            nats.errors.ConnectionReconnectingError,
            nats.errors.OutboundBufferLimitError,
            nats.errors.StaleConnectionError,
            nats.errors.NoServersError,
            OSError,
        ),
    )


@dataclass(frozen=True)
class QueueStats:
    """A queue's counts as JetStream reports them."""

    queue: str
    pending: int
    in_flight: int
    scheduled: int
    dlq: int


class Core:
    """The asyncio side of a Client: lives on, and is only used from, the runtime loop."""

    def __init__(self, settings: Settings, url: str) -> None:
        self.settings = settings
        self.url = url
        self.topology = Topology(settings.prefix)
        self.nc: nats.NATS | None = None
        self.js: nats.js.JetStreamContext | None = None
        self._provisioned: set[str] = set()
        self._provision_lock = asyncio.Lock()
        self._closing = False
        self._outage = False
        self._results_kv: Any = None
        self._workers_kv: Any = None

    async def connect(self) -> None:
        servers = [u.strip() for u in self.url.split(",") if u.strip()]
        opts = dict(self.settings.nats_options)
        try:
            async for attempt in self._retrying(retry=retry_if_exception(_connect_retryable)):
                with attempt:
                    self.nc = await nats.connect(
                        servers=servers,
                        name=self.settings.name or f"bgjob-{os.getpid()}",
                        connect_timeout=self.settings.connect_timeout,
                        # Bounded during the first connect (tenacity retries it); unbounded afterwards.
                        max_reconnect_attempts=1,
                        reconnect_time_wait=0.25,
                        error_cb=self._on_error,
                        disconnected_cb=self._on_disconnected,
                        reconnected_cb=self._on_reconnected,
                        **opts,
                    )
        except nats.errors.Error as exc:
            raise ConnectionError(f"cannot connect to NATS at {_redact(self.url)}: {_describe(exc)}") from exc
        except OSError as exc:
            raise ConnectionError(f"cannot connect to NATS at {_redact(self.url)}: {exc}") from exc
        self.nc.options["max_reconnect_attempts"] = -1
        check_server(self.nc)
        self.js = self.nc.jetstream(timeout=self.settings.request_timeout)

    def _retrying(self, retry: Any = None) -> AsyncRetrying:
        return AsyncRetrying(
            retry=retry or retry_if_exception(is_transient),
            stop=stop_after_delay(self.settings.retry_for),
            wait=wait_random_exponential(multiplier=0.05, max=1.0),
            reraise=True,
        )

    @property
    def max_payload(self) -> int:
        return self.nc.max_payload if self.nc is not None else 1024 * 1024

    async def _on_error(self, exc: Exception) -> None:
        # One warning per outage; the reconnect attempts that follow are only worth a debug line.
        log.log(logging.DEBUG if self._outage else logging.WARNING, "nats: %s", _describe(exc))

    async def _on_disconnected(self) -> None:
        if not self._closing and not self._outage:
            log.warning("nats: disconnected from %s; reconnecting", _redact(self.url))
        self._outage = True

    async def _on_reconnected(self) -> None:
        self._outage = False
        log.warning("nats: reconnected to %s", self.nc.connected_url.netloc if self.nc else "?")

    async def close(self) -> None:
        self._closing = True
        if self.nc is not None and not self.nc.is_closed:
            try:
                await asyncio.wait_for(self.nc.drain(), timeout=5)
            except Exception:  # noqa: BLE001 - closing anyway
                await self.nc.close()

    async def ensure_queue(self, queue: str) -> None:
        if queue in self._provisioned:
            return
        async with self._provision_lock:
            if queue not in self._provisioned:
                await self.retry(provision_queue, self.js, self.topology, self.settings, queue)
                self._provisioned.add(queue)

    async def ensure_dlq(self) -> None:
        if "\0dlq" not in self._provisioned:
            await self.retry(provision_dlq, self.js, self.topology, self.settings)
            self._provisioned.add("\0dlq")

    async def retry(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """Call `await fn(...)`, retrying transient errors, then raise bgjob.ConnectionError."""
        try:
            async for attempt in self._retrying():
                with attempt:
                    return await fn(*args, **kwargs)
        except Exception as exc:
            if is_transient(exc):
                raise ConnectionError(f"NATS did not answer in {self.settings.retry_for:g}s: {_describe(exc)}") from exc
            raise

    async def publish(self, subject: str, body: bytes, headers: dict[str, str], queue: str | None = None) -> Any:
        """Publish and wait for the PubAck; retries reuse the `Nats-Msg-Id`, so they never duplicate."""
        assert self.nc is not None and self.js is not None
        if queue is not None and queue not in self._provisioned:
            await self.ensure_queue(queue)
        try:  # the fast path: no retry machinery unless something goes wrong
            return await self._publish_once(subject, body, headers, queue)
        except Exception as exc:
            if not is_transient(exc):
                raise
            log.info("publish to %s failed (%s); retrying", subject, _describe(exc))
        return await self.retry(self._publish_once, subject, body, headers, queue)

    async def _publish_once(self, subject: str, body: bytes, headers: dict[str, str], queue: str | None) -> Any:
        try:
            return await self.js.publish(subject, body, headers=headers)
        except nats.js.errors.NoStreamResponseError:
            if queue is not None:  # the stream may have been deleted behind our back
                self._provisioned.discard(queue)
                await self.ensure_queue(queue)
            raise
        except nats.errors.MaxPayloadError as exc:
            raise InvalidJob(f"job is too large for the server: {exc}") from exc

    async def queue_stats(self, queue: str) -> QueueStats:
        from .dlq import count_dead_letters

        await self.ensure_queue(queue)
        stream = await self.js.stream_info(self.topology.queue_stream(queue))
        consumer = await self.js.consumer_info(self.topology.queue_stream(queue), self.topology.consumer(queue))
        ready = consumer.num_pending + consumer.num_ack_pending
        return QueueStats(
            queue=queue,
            pending=consumer.num_pending,
            in_flight=consumer.num_ack_pending,
            scheduled=max(0, stream.state.messages - ready),
            dlq=await count_dead_letters(self, queue=queue),
        )

    async def queues(self) -> list[str]:
        prefix = self.topology.stream_prefix
        names = []
        for info in await self.js.streams_info():
            name = info.config.name
            if name.startswith(prefix) and name != self.topology.dlq_stream and info.config.subjects:
                subject = info.config.subjects[0]
                if subject.startswith(self.settings.prefix + ".") and subject.endswith(".>"):
                    names.append(subject[len(self.settings.prefix) + 1 : -2])
        return sorted(names)


def _connect_retryable(exc: BaseException) -> bool:
    return is_transient(exc) and not isinstance(exc, nats.errors.AuthorizationError)


def _describe(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _redact(url: str) -> str:
    """The URL without credentials, for messages and logs."""
    out = []
    for part in url.split(","):
        scheme, sep, rest = part.strip().rpartition("://")
        if "@" in rest:
            rest = "***@" + rest.split("@", 1)[1]
        out.append(f"{scheme}{sep}{rest}")
    return ",".join(out)


def _resolve_url(settings: Settings) -> str:
    if settings.url:
        return settings.url
    from .server import ensure_embedded_server

    return ensure_embedded_server(settings.data_dir)


class Client:
    """A connection to NATS JetStream, safe to share between threads and across fork()."""

    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings or Settings.from_env()
        self._lock = threading.Lock()
        self._runtime: Runtime | None = None
        self._core: Core | None = None
        self._closed = False
        self._url: str | None = None
        self._dlq: DeadLetters | None = None
        self._publisher: Publisher | None = None
        self._green_gate: tuple[int, Any] | None = None
        _live_clients.add(self)

    # -- lifecycle -------------------------------------------------------------------------------
    def _ensure(self) -> tuple[Runtime, Core]:
        """The runtime and connection of this process, (re)built on first use or after fork()."""
        runtime, core = self._runtime, self._core
        if runtime is not None and core is not None and runtime.alive:
            return runtime, core
        with self._connect_gate():
            if self._closed:
                raise BgjobError("this bgjob client is closed")
            if self._runtime is None or not self._runtime.alive:
                if self._url is None:
                    self._url = _resolve_url(self.settings)
                runtime = Runtime()
                core = Core(self.settings, self._url)
                try:
                    runtime.run(core.connect())
                    publisher = Publisher(core, runtime)
                    runtime.run(publisher.start())
                except BaseException:
                    runtime.stop()
                    raise
                self._publisher = publisher
                self._runtime, self._core = runtime, core
            return self._runtime, self._core  # type: ignore[return-value]

    def _connect_gate(self) -> Any:
        """What serialises connecting: a gevent lock for greenlets (an OS lock held while a greenlet waits
        for the server would freeze the whole hub), else an OS lock. Greenlets and real threads connecting
        at the very same moment could each connect; connections made before fork() are never reused."""
        if in_gevent_hub_thread():
            if self._green_gate is None or self._green_gate[0] != os.getpid():
                import gevent.lock

                self._green_gate = (os.getpid(), gevent.lock.Semaphore())
            return self._green_gate[1]
        return self._lock

    def connect(self) -> Client:
        """Connect now (connecting is otherwise lazy); returns self."""
        self._ensure()
        return self

    @property
    def url(self) -> str:
        return self._ensure()[1].url

    def run(self, coro_fn: Any, *args: Any, timeout: float | None = None) -> Any:
        """Run `await coro_fn(core, *args)` on the runtime loop and block for the result."""
        runtime, core = self._ensure()
        return runtime.run(coro_fn(core, *args), timeout)

    def close(self, timeout: float = 10.0) -> None:
        """Drain the connection (pending publishes and acks go out) and stop the runtime thread."""
        with self._lock:
            self._closed = True
            runtime, core = self._runtime, self._core
            self._runtime = self._core = None
        if runtime is not None and core is not None and runtime.alive:
            try:
                runtime.run(core.close(), timeout)
            except Exception as exc:  # noqa: BLE001 - closing anyway
                log.debug("close: %s", exc)
            runtime.stop()

    def __enter__(self) -> Client:
        return self.connect()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- producing ---------------------------------------------------------------------------------
    def send_job(
        self,
        job_type: str,
        arg: Any = None,
        *,
        queue: str = "default",
        delay: timedelta | float | None = None,
        at: datetime | None = None,
        job_id: str | None = None,
        request_id: str | None = None,
        headers: Mapping[str, str] | None = None,
        store_result: bool | None = None,
    ) -> str:
        """Enqueue a job; returns its id once JetStream has stored it (PubAck).

        `delay`/`at` hand the job to a server-side schedule; `job_id` makes sending idempotent within
        the duplicate window; `store_result` keeps its status and return value for `result()` (default:
        whether `queue` is in Settings.result_queues). Raises InvalidJob (nothing published) or
        ConnectionError (not confirmed).
        """
        store = self._stores_result(queue, store_result)
        subject, body, hdrs, msg_id = prepare_job(
            self.settings, job_type, arg, queue=queue, delay=delay, at=at, job_id=job_id,
            request_id=request_id, headers=headers, store_result=store,
        )  # fmt: skip
        runtime, core = self._ensure()
        _check_size(core, body, hdrs)
        batch = self._publisher.submit([Outgoing(subject, body, hdrs, queue)])  # type: ignore[union-attr]
        runtime.wait_batch(batch)
        if batch.errors[0] is not None:
            raise batch.errors[0]
        if store:
            runtime.run(results.record_ready(core, msg_id, job_type, queue))
        return msg_id

    def _stores_result(self, queue: str, store_result: bool | None) -> bool:
        return store_result if store_result is not None else queue in self.settings.result_queues

    def result(self, job_id: str, wait: float | None = None) -> JobResult:
        """The stored result of a job sent with store_result; with `wait`, block up to that many seconds
        for it to finish (then return whatever it is). Raises ResultNotFound when nothing is stored."""
        runtime, core = self._ensure()
        deadline = time.monotonic() + (wait or 0)
        pause = 0.01
        while True:
            record = runtime.run(results.read_record(core, job_id))
            if record is None:
                raise ResultNotFound(f"no stored result for job {job_id!r} (sent without store_result, or expired)")
            result = JobResult.from_record(record)
            if result.status.finished or time.monotonic() >= deadline:
                return result
            time.sleep(min(pause, max(0.0, deadline - time.monotonic())))
            pause = min(pause * 2, 0.25)

    def send_jobs(
        self, jobs: Iterable[JobSpec | tuple[str, Any]], *, queue: str = "default", window: int = 2000
    ) -> list[str]:
        """Enqueue many jobs, pipelined; returns their ids (in order) once every one is stored.

        `jobs` holds `(type, arg)` pairs or `JobSpec`s. All are validated before anything is published
        (InvalidJob names the index of the first bad one). At most `window` publishes are in flight. If
        some cannot be confirmed, SendJobsError says which ids were stored and which were not.
        """
        runtime, core = self._ensure()
        prepared = []
        with_results: list[tuple[str, str, str]] = []
        for index, item in enumerate(jobs):
            try:
                spec = item if isinstance(item, JobSpec) else _spec_of(item)
                job_queue = spec.queue or queue
                store = self._stores_result(job_queue, spec.store_result)
                subject, body, hdrs, job_id = prepare_job(
                    self.settings, spec.type, spec.arg, queue=job_queue, delay=spec.delay, at=spec.at,
                    job_id=spec.job_id, request_id=spec.request_id, headers=spec.headers, store_result=store,
                )  # fmt: skip
                _check_size(core, body, hdrs)
            except InvalidJob as exc:
                raise InvalidJob(f"job {index}: {exc}; nothing was sent") from exc
            prepared.append((job_id, subject, body, hdrs, job_queue))
            if store:
                with_results.append((job_id, spec.type, job_queue))
        ids = self._publish_pipelined(runtime, prepared, max(1, window))
        if with_results:
            runtime.run(_record_ready_all(core, with_results))
        return ids

    def _publish_pipelined(self, runtime: Runtime, prepared: list[tuple], window: int) -> list[str]:
        publisher = self._publisher
        assert publisher is not None
        stored: set[str] = set()
        errors: dict[str, BaseException] = {}
        in_flight: collections.deque[tuple[list[str], PublishBatch]] = collections.deque()

        def settle_oldest_chunk() -> None:
            ids, batch = in_flight.popleft()
            runtime.wait_batch(batch)
            for job_id, error in zip(ids, batch.errors, strict=True):
                if error is None:
                    stored.add(job_id)
                else:
                    errors.setdefault(job_id, error)

        # Two chunks in flight: the next is on the wire while we wait for the PubAcks of the current.
        chunk = max(1, window // 2)
        for start in range(0, len(prepared), chunk):
            if errors:
                break
            part = prepared[start : start + chunk]
            in_flight.append(([p[0] for p in part], publisher.submit([Outgoing(*p[1:]) for p in part])))
            if len(in_flight) == 2:
                settle_oldest_chunk()
        while in_flight:
            settle_oldest_chunk()
        ids = [job_id for job_id, *_ in prepared]
        if errors or len(stored) < len(set(ids)):
            not_stored = [i for i in ids if i not in stored]
            first = next(iter(errors.values()), None)
            raise SendJobsError(
                f"{len(stored)} of {len(ids)} jobs stored, {len(not_stored)} not confirmed ({first}); "
                "sending the not_stored ones again with the same job ids is safe",
                stored=[i for i in ids if i in stored], not_stored=not_stored, errors=errors,
            )  # fmt: skip
        return ids

    # -- operating ---------------------------------------------------------------------------------
    @property
    def dlq(self) -> DeadLetters:
        """The dead-letter queue: list, get, retry, delete, purge, count."""
        if self._dlq is None:
            from .dlq import DeadLetters

            self._dlq = DeadLetters(self)
        return self._dlq

    def ensure_queue(self, queue: str = "default") -> None:
        """Create the queue's stream and consumer if missing."""
        jobmod.validate_queue(queue)
        self.run(Core.ensure_queue, queue)

    def queue_stats(self, queue: str = "default") -> QueueStats:
        jobmod.validate_queue(queue)
        return self.run(Core.queue_stats, queue)

    def queues(self) -> list[str]:
        """Names of the queues that exist on the server."""
        return self.run(Core.queues)

    def workers(self) -> list[WorkerInfo]:
        """Live workers (those whose last heartbeat is younger than Settings.worker_ttl)."""
        from .directory import list_workers

        return self.run(list_workers)

    # -- periodic jobs -----------------------------------------------------------------------------
    def schedule(
        self,
        name: str,
        cron: str,
        job_type: str,
        arg: Any = None,
        *,
        queue: str = "default",
        tz: str = "UTC",
        headers: Mapping[str, str] | None = None,
    ) -> bool:
        """Declare a periodic job: `job_type` with `arg` enqueued at every tick of `cron` (5 fields, or 6
        with seconds first) in time zone `tz`. The server fires it, once per tick however many processes
        declare it; declaring it again with other values replaces it. Returns whether anything changed.
        """
        from . import periodic

        runtime, core = self._ensure()
        subject, body, hdrs = periodic.prepare_schedule(core, name, cron, job_type, arg, queue, tz, headers)
        return runtime.run(periodic.declare(core, subject, body, hdrs, queue))

    def unschedule(self, name: str, *, queue: str = "default") -> bool:
        """Remove a periodic job; returns whether it existed."""
        from . import periodic

        periodic.validate_name(name)
        jobmod.validate_queue(queue)
        return self.run(periodic.remove, name, queue)

    def schedules(self, queue: str | None = None) -> list[PeriodicJob]:
        """The periodic jobs declared (on one queue, or all)."""
        from . import periodic

        if queue is not None:
            jobmod.validate_queue(queue)
        return self.run(periodic.list_schedules, queue)


async def _record_ready_all(core: Core, jobs: list[tuple[str, str, str]]) -> None:
    for job_id, job_type, queue in jobs:
        await results.record_ready(core, job_id, job_type, queue)


@functools.lru_cache(maxsize=4)
def signer_for(signing_key: str) -> Any:
    from .signing import Signer

    return Signer(signing_key)


def _spec_of(item: Any) -> JobSpec:
    if isinstance(item, tuple) and len(item) == 2:
        return JobSpec(item[0], item[1])
    raise InvalidJob(f"expected a (type, arg) pair or a bgjob.JobSpec, got {item!r}")


def _check_size(core: Core, body: bytes, headers: dict[str, str]) -> None:
    if len(body) + sum(len(k) + len(v) + 4 for k, v in headers.items()) > core.max_payload:
        raise InvalidJob(f"job is {len(body)} bytes; the server accepts at most {core.max_payload}")


def prepare_job(
    settings: Settings,
    job_type: str,
    arg: Any,
    *,
    queue: str = "default",
    delay: timedelta | float | None = None,
    at: datetime | None = None,
    job_id: str | None = None,
    request_id: str | None = None,
    headers: Mapping[str, str] | None = None,
    store_result: bool = False,
) -> tuple[str, bytes, dict[str, str], str]:
    """Validate a job and build its (subject, body, headers, id); raises InvalidJob."""
    topology = Topology(settings.prefix)
    jobmod.validate_type(job_type)
    jobmod.validate_queue(queue)
    job_id = jobmod.validate_job_id(job_id) if job_id is not None else jobmod.new_job_id()
    if request_id is None:
        request_id = current_request_id.get()
    if request_id is not None and (not isinstance(request_id, str) or not request_id.isprintable()):
        raise InvalidJob(f"request_id must be a printable str, got {request_id!r}")
    hdrs = jobmod.validate_headers(headers)
    body, content_type = jobmod.encode_arg(arg)
    now = datetime.now(timezone.utc)
    due = _due_time(now, delay, at)
    hdrs.update({
        "Nats-Msg-Id": job_id,
        jobmod.HEADER_ID: job_id,
        jobmod.HEADER_TYPE: job_type,
        jobmod.HEADER_ENQUEUED_AT: jobmod.format_time(now),
        jobmod.CONTENT_TYPE: content_type,
    })  # fmt: skip
    if request_id:
        hdrs[jobmod.HEADER_REQUEST_ID] = request_id
    if store_result:
        hdrs[results.HEADER_STORE_RESULT] = "1"
    if settings.signing_key:
        signer_for(settings.signing_key).sign(queue, hdrs, body)
    target = topology.job_subject(queue, job_type)
    if due is None:
        return target, body, hdrs, job_id
    hdrs[Header.SCHEDULE.value] = f"@at {jobmod.format_time(due)}"
    hdrs[Header.SCHEDULE_TARGET.value] = target
    return topology.delayed_subject(queue, job_id), body, hdrs, job_id


def _due_time(now: datetime, delay: timedelta | float | None, at: datetime | None) -> datetime | None:
    if delay is not None and at is not None:
        raise InvalidJob("give either delay or at, not both")
    if delay is not None:
        if isinstance(delay, bool) or not isinstance(delay, (timedelta, int, float)):
            raise InvalidJob(f"delay must be a timedelta or seconds, got {delay!r}")
        seconds = delay.total_seconds() if isinstance(delay, timedelta) else float(delay)
        if seconds != seconds or seconds < 0:
            raise InvalidJob(f"delay must be >= 0, got {delay!r}")
        return now + timedelta(seconds=seconds) if seconds > 0 else None
    if at is not None:
        if not isinstance(at, datetime) or at.tzinfo is None:
            raise InvalidJob("at must be a timezone-aware datetime (e.g. datetime.now(timezone.utc) + ...)")
        return at if at > now else None
    return None


# -- the process-wide default client -----------------------------------------------------------------
_default: Client | None = None
_default_lock = threading.Lock()
_live_clients: weakref.WeakSet[Client] = weakref.WeakSet()


def connect(url: str | None = None, **options: Any) -> Client:
    """Connect to NATS (None and no BGJOB_URL: the embedded server) and make it the default client.

    `options` are Settings fields (prefix, replicas, ack_wait, ...) or nats.connect keyword arguments.
    """
    global _default
    client = Client(Settings.from_env(url=url, **options)).connect()
    with _default_lock:
        previous, _default = _default, client
    if previous is not None and previous is not client:
        previous.close()
    return client


def default_client() -> Client:
    """The process-wide client, created from the environment on first use."""
    global _default
    with _default_lock:
        if _default is None or _default._closed:
            _default = Client(Settings.from_env())
        return _default


def send_job(job_type: str, arg: Any = None, **kwargs: Any) -> str:
    """`default_client().send_job(...)`."""
    return default_client().send_job(job_type, arg, **kwargs)


def send_jobs(jobs: Iterable[JobSpec | tuple[str, Any]], **kwargs: Any) -> list[str]:
    """`default_client().send_jobs(...)`."""
    return default_client().send_jobs(jobs, **kwargs)


def _after_fork_in_child() -> None:
    """Locks held by other threads at fork() would never be released in the child: start afresh."""
    global _default_lock
    _default_lock = threading.Lock()
    for client in list(_live_clients):
        client._lock = threading.Lock()


os.register_at_fork(after_in_child=_after_fork_in_child)


@atexit.register
def _close_all() -> None:
    for client in list(_live_clients):
        if client._runtime is not None and client._runtime.alive:
            client.close(timeout=5.0)
