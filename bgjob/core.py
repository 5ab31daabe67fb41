"""The asyncio side of a client: the connection, provisioning, publishing with retries, queue stats."""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, ConsumerInfo, DiscardPolicy, KeyValueConfig, StorageType, StreamConfig
from nats.js.kv import KeyValue
from tenacity import AsyncRetrying, retry_if_exception, stop_before_delay, wait_random_exponential

from .errors import (
    DUPLICATE_IN_PROCESS,
    BgjobError,
    ConfigurationError,
    ConnectionError,
    InvalidJob,
    PublishError,
    QueueFull,
    ServerRefused,
    publish_refusal,
)
from .headers import parse_header_lines
from .provisioning import (
    CONSUMER_FIELDS,
    NO_LIMIT,
    STREAM_FIELDS,
    Difference,
    asked_for,
    configure_queue,
    deliveries_cap,
    differences,
    ensure_consumer,
    how_to_change,
    provision_dlq,
    provision_queue,
    queue_limits,
    show_value,
    unusable_consumer,
)
from .redaction import mask_url
from .settings import Settings
from .topology import Topology, check_server, dlq_stream_config, queue_consumer_config, queue_stream_config

if TYPE_CHECKING:
    from .events import EventSink

T = TypeVar("T")
log = logging.getLogger("bgjob.client")
#: the server's err_code for deleting a sequence the stream does not hold.
_NO_MESSAGE = 10057


#: err_codes that are answers, not outages, although some come with code 503: retrying them within retry_for only
#: delays the named error (too large, storage exhausted, account limits, a store failure such as a stream limit).
_ANSWERS = {10002, 10023, 10028, 10047, 10054, 10077, 10097}
#: err_code of "no suitable peers for placement": a replicated stream or consumer cannot be placed while fewer
#: cluster nodes than its replicas are up (a node restarting, a cluster still forming), so it is retried within
#: retry_for; for a cluster that stays too small the call then fails naming the error (bgjob.ConnectionError).
NO_SUITABLE_PEERS = 10005


def is_transient(exc: BaseException) -> bool:
    """Errors worth retrying: the server is restarting, failing over or briefly unreachable, (err 10005) a
    replicated stream cannot be placed until enough cluster nodes are up, or (err 10158) a publish with the same
    id is being stored."""
    if isinstance(exc, nats.js.errors.APIError):
        err_code = getattr(exc, "err_code", None)
        if err_code in (DUPLICATE_IN_PROCESS, NO_SUITABLE_PEERS):
            return True
        if err_code in _ANSWERS:
            return False
    if isinstance(exc, nats.js.errors.ServiceUnavailableError):
        return True
    if isinstance(exc, nats.js.errors.APIError):
        return getattr(exc, "code", None) in (503, 504)  # KeyNotFoundError and friends carry no code
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
class QueueConfig:
    """A queue's configuration as the server has it (what workers run with), for `bgjob queue show`."""

    queue: str
    stream: str
    #: the durable consumer's name; None when no worker has created it yet.
    consumer: str | None
    replicas: int
    #: seconds.
    duplicate_window: float
    allow_msg_schedules: bool
    #: seconds; None while the consumer does not exist.
    ack_wait: float | None
    #: jobs delivered and unsettled at once across every worker of the queue (queue-wide concurrency, asyncjobs'
    #: MaxConcurrent); None while the consumer does not exist (or when it has no cap).
    max_ack_pending: int | None
    #: the most messages the queue's stream may hold when a job is sent (ready, running, delayed, waiting for a
    #: retry, and one per periodic schedule); a send beyond it is refused with QueueFull. None: no limit.
    max_entries: int | None = None
    #: seconds after which a job that became ready and was never delivered is dead-lettered unrun (reason
    #: "expired") instead of running; delayed jobs and schedules age only once they fire. None: no limit.
    max_age: float | None = None
    #: the server's cap on deliveries of one message; the worker dead-letters the last one unrun (reason
    #: "max_deliveries"). None: no cap (or no consumer yet).
    max_deliveries: int | None = None


def queue_config_changes(config: QueueConfig) -> dict[str, Any]:
    """The keyword arguments of `provisioning.validate_queue_changes` that give a queue `config` (see
    Client.configure_queue): its limits as they are (None: NO_LIMIT, removed), the other fields where set.
    Raises ConfigurationError for anything but a QueueConfig."""
    if not isinstance(config, QueueConfig):
        raise ConfigurationError(
            f"config must be a bgjob.QueueConfig (as queue_config returns), not {type(config).__name__}"
        )
    changes: dict[str, Any] = {
        "max_entries": NO_LIMIT if config.max_entries is None else config.max_entries,
        "max_age": NO_LIMIT if config.max_age is None else config.max_age,
        "max_deliveries": NO_LIMIT if config.max_deliveries is None else config.max_deliveries,
        "ack_wait": config.ack_wait, "max_ack_pending": config.max_ack_pending, "replicas": config.replicas,
        "duplicate_window": config.duplicate_window,
        # message schedules can only be switched on: a config without them asks for nothing
        "allow_msg_schedules": True if config.allow_msg_schedules else None,
    }  # fmt: skip
    return changes


@dataclass
class _Room:
    """What a producer knows of a queue's max_entries: the limit and when it last read it (time.monotonic())."""

    max_entries: int | None
    read_at: float


#: seconds a producer trusts what it read of an unlimited queue's max_entries before reading it again.
LIMIT_REFRESH = 30.0


def nats_servers(url: str) -> tuple[list[str], dict[str, str]]:
    """The servers of `url` (one NATS URL or several, comma-separated) as nats.connect takes them, and the
    credentials to pass as nats.connect options (`user`/`password` or `token`; empty when none are needed).

    nats-py reads a URL with `urlparse`, which ends the user info at the first `/`, `?` or `#`: a password such
    as `p@ss/word` would make it connect to the host `ss`. The user info ends at the *last* `@` here; one that
    holds such a character is taken out of the URL and passed as options instead (options set in
    `Settings.nats_options` win). Raises ConfigurationError when two servers of the list carry different such
    credentials (options hold only one)."""
    servers: list[str] = []
    found: dict[str, str] = {}
    for raw in url.split(","):
        part = raw.strip()
        if not part:
            continue
        scheme, sep, rest = part.partition("://") if "://" in part else ("", "", part)
        userinfo, at, hostpart = rest.rpartition("@")
        if at and any(c in userinfo for c in "/?#"):
            user, colon, password = userinfo.partition(":")
            credentials = {"user": user, "password": password} if colon else {"token": userinfo}
            if found and found != credentials:
                raise ConfigurationError(
                    f"the servers of {mask_url(url)} carry different credentials holding '/', '?' or '#'; give "
                    "them as nats_options (user, password or token) instead"
                )
            found = credentials
            part = f"{scheme}{sep}{hostpart}"
        servers.append(part)
    return servers, found


class Core:
    """The asyncio side of a Client: lives on, and is only used from, the runtime loop."""

    def __init__(self, settings: Settings, url: str) -> None:
        self.settings = settings
        self.url = url
        self.topology = Topology(settings.prefix)
        #: set by connect(); read through the `nc` and `js` properties, which refuse before it
        self._nc: NATS | None = None
        self._js: JetStreamContext | None = None
        self._provisioned: set[str] = set()
        self._provision_lock = asyncio.Lock()
        self._closing = False
        self._outage = False
        self._buckets: dict[str, KeyValue] = {}
        #: what this process read of each queue's max_entries (see `admit`).
        self._rooms: dict[str, _Room] = {}
        #: the URL's credentials are passed as options (see nats_servers): nats-py's URLs lack them.
        self._moved_credentials = False
        #: this connection's lifecycle-event sink, made on first use by bgjob.events.sink_for
        self._event_sink: EventSink | None = None

    async def connect(self) -> None:
        servers, credentials = nats_servers(self.url)
        self._moved_credentials = bool(credentials)
        opts = {**credentials, **self.settings.nats_options}
        try:
            async for attempt in self._retrying(retry=retry_if_exception(_connect_retryable)):
                with attempt:
                    self._nc = await nats.connect(
                        servers=servers,
                        name=self.settings.name or f"bgjob-{os.getpid()}",
                        connect_timeout=self.settings.connect_timeout,
                        # The first connect fails fast (tenacity retries what is worth retrying): with
                        # reconnecting allowed, nats-py hides a refused login behind NoServersError and
                        # never returns from a certificate that doesn't verify. Allowed after it.
                        allow_reconnect=False,
                        max_reconnect_attempts=1,
                        reconnect_time_wait=0.25,
                        # A half-open connection (nothing ever answers) is noticed within
                        # ping_interval * (max_outstanding_pings + 1) seconds; then nats-py reconnects.
                        ping_interval=self.settings.ping_interval,
                        max_outstanding_pings=self.settings.max_outstanding_pings,
                        error_cb=self._on_error,
                        disconnected_cb=self._on_disconnected,
                        reconnected_cb=self._on_reconnected,
                        **opts,
                    )
        except nats.errors.Error as exc:
            raise ConnectionError(f"cannot connect to NATS at {mask_url(self.url)}: {_describe(exc)}") from exc
        except OSError as exc:
            raise ConnectionError(f"cannot connect to NATS at {mask_url(self.url)}: {exc}") from exc
        nc = self._nc
        assert nc is not None  # the loop above either connected or raised
        nc._parse_header_lines = parse_header_lines  # type: ignore[method-assign]  # same result, faster
        nc.options["allow_reconnect"] = True
        nc.options["max_reconnect_attempts"] = -1
        self._outage = False  # connected: the next disconnect is worth a warning again
        check_server(nc)
        self._js = nc.jetstream(timeout=self.settings.request_timeout)

    @property
    def nc(self) -> NATS:
        """The NATS connection. Raises ConnectionError before connect() made it."""
        if self._nc is None:
            raise ConnectionError("not connected to NATS")
        return self._nc

    @property
    def js(self) -> JetStreamContext:
        """The JetStream context of the connection. Raises ConnectionError before connect() made it."""
        if self._js is None:
            raise ConnectionError("not connected to NATS")
        return self._js

    @property
    def connected(self) -> bool:
        """connect() made the connection, and it is up now (not reconnecting, not closed)."""
        return self._nc is not None and self._nc.is_connected

    def _retrying(self, retry: Any = None, deadline: float | None = None) -> AsyncRetrying:
        """Retries transient errors; no attempt starts after `deadline` (time.monotonic(); default: retry_for
        from now), so the whole takes at most that plus one attempt (a request timeout)."""
        budget = self.settings.retry_for if deadline is None else max(0.0, deadline - time.monotonic())
        return AsyncRetrying(
            retry=retry or retry_if_exception(is_transient),
            stop=stop_before_delay(budget),
            wait=wait_random_exponential(multiplier=0.05, max=1.0),
            reraise=True,
        )

    @property
    def lost(self) -> bool:
        """The connection was closed, and not by us (nats-py gives up on some protocol errors)."""
        return self._nc is not None and self._nc.is_closed and not self._closing

    @property
    def max_payload(self) -> int:
        return self._nc.max_payload if self._nc is not None else 1024 * 1024

    async def _on_error(self, exc: Exception) -> None:
        # One warning per outage; the reconnect attempts that follow are only worth a debug line. A first
        # connect that keeps failing is an outage too: one warning, then its retries at debug level.
        log.log(logging.DEBUG if self._outage else logging.WARNING, "nats: %s", _describe(exc))
        if not self.connected:
            self._outage = True

    async def _on_disconnected(self) -> None:
        if not self._closing and not self._outage:
            log.warning("nats: disconnected from %s; reconnecting", mask_url(self.url))
        self._outage = True

    async def _on_reconnected(self) -> None:
        self._outage = False
        # The server may have restarted: a memory-stored bucket (the worker directory) is gone, and so is a
        # stream if its store was replaced. Look them up (and create them) again on next use.
        self._buckets.clear()
        self._provisioned.clear()
        url = self._nc.connected_url if self._nc is not None else None
        shown = mask_url(url.geturl()) if url is not None else "?"
        if self._moved_credentials and "://" in shown and "@" not in shown:
            shown = shown.replace("://", "://***@", 1)  # as the disconnect line shows it
        log.warning("nats: reconnected to %s", shown)

    async def close(self) -> None:
        self._closing = True
        if self._nc is not None and not self._nc.is_closed:
            try:
                await asyncio.wait_for(self._nc.drain(), timeout=5)
            except (Exception, asyncio.CancelledError):  # noqa: BLE001 - closing anyway (a drain cut short by the
                # connection dropping ends in nats-py's own CancelledError)
                await self._nc.close()

    async def ensure_queue(self, queue: str, *, deadline: float | None = None) -> None:
        """Make sure the queue's stream exists (created from Settings when missing), once per connection.
        Transient errors are retried until `deadline` (time.monotonic(); default retry_for from now).

        Used by publishing, periodic declarations and stats: it never creates or touches the consumer, and an
        existing stream is never changed (a warning names what differs from this process's Settings).
        """
        if queue in self._provisioned:
            return
        async with self._provision_lock:
            if queue not in self._provisioned:
                actual = await self.retry(provision_queue, self.js, self.topology, self.settings, queue,
                                          deadline=deadline)  # fmt: skip
                self._warn_stream(queue, actual, queue_stream_config(self.topology, self.settings, queue))
                self._provisioned.add(queue)

    async def ensure_consumer(self, queue: str) -> ConsumerConfig:
        """Make sure the queue's stream and durable consumer exist; return the consumer's config as the server
        has it. For workers, at start and when their consumer was deleted.

        A missing consumer is created from Settings (ack_wait, max_ack_pending). An existing one is never
        changed: if it differs from this process's Settings, one warning names each field with both values and
        how to change it (`bgjob queue configure` / `client.configure_queue`), and the server's values are
        returned, to run with (pace heartbeats to the returned `ack_wait`, in seconds).
        Raises bgjob.ConnectionError when the server does not answer.
        """
        wanted = queue_consumer_config(self.topology, self.settings, queue)
        stream = self.topology.queue_stream(queue)
        await self.ensure_queue(queue)
        try:
            actual = await self.retry(ensure_consumer, self.nc, stream, wanted, self.settings.request_timeout)
        except nats.js.errors.NotFoundError:  # the stream was deleted behind our back: create it again
            self._provisioned.discard(queue)
            await self.ensure_queue(queue)
            actual = await self.retry(ensure_consumer, self.nc, stream, wanted, self.settings.request_timeout)
        problems = unusable_consumer(actual, wanted)
        if problems:
            raise ConfigurationError(f"queue {queue!r}: consumer {wanted.durable_name} exists with "
                                     f"{'; '.join(problems)}: workers cannot run its jobs safely; delete it "
                                     f"(`nats consumer rm {stream} {wanted.durable_name}`) for workers to create "
                                     "it again")  # fmt: skip
        self._report_differences(queue, f"consumer {wanted.durable_name}", differences(actual, wanted, CONSUMER_FIELDS),
                                 "running with the server's values.")  # fmt: skip
        return actual

    def _report_differences(self, queue: str, what: str, found: list[Difference], consequence: str) -> None:
        """A warning for what this process set and the server has otherwise (with how to change the queue); an
        info line for what it merely defaults, which the queue's own configuration overrides on purpose."""
        asked, defaulted = asked_for(self.settings, found)
        if asked:
            log.warning("queue %r: its %s on the server differs from this process's settings: %s; %s%s", queue,
                        what, ", ".join(map(str, asked)), consequence,
                        how_to_change(queue, asked, f"the {what}"))  # fmt: skip
        if defaulted:
            log.info("queue %r: its %s is configured with %s", queue, what,
                     ", ".join(f"{d.name} {show_value(d.actual)}" for d in defaulted))  # fmt: skip

    async def reprovision(self, queue: str) -> ConsumerConfig:
        """`ensure_consumer` after the consumer (or its stream) was deleted: forgets that the stream was seen."""
        self._provisioned.discard(queue)
        return await self.ensure_consumer(queue)

    def _warn_stream(self, queue: str, actual: StreamConfig, wanted: StreamConfig) -> None:
        self._report_differences(queue, f"stream {wanted.name}", differences(actual, wanted, STREAM_FIELDS),
                                 "left as it is.")

    async def ensure_dlq(self) -> None:
        """Make sure the DLQ stream exists; an existing one is never changed (a warning names what differs)."""
        if "\0dlq" not in self._provisioned:
            actual = await self.retry(provision_dlq, self.js, self.topology, self.settings)
            wanted = dlq_stream_config(self.topology, self.settings)
            found = differences(actual, wanted, STREAM_FIELDS)
            if found:
                log.warning("the DLQ stream %s on the server differs from this process's settings: %s; left as it "
                            "is (change it with `nats stream edit %s`)", wanted.name, ", ".join(map(str, found)),
                            wanted.name)  # fmt: skip
            self._provisioned.add("\0dlq")

    async def queue_config(self, queue: str) -> QueueConfig | None:
        """The queue's configuration as the server has it; None when its stream does not exist. Read-only."""
        stream = self.topology.queue_stream(queue)
        try:
            config = (await self.retry(self.js.stream_info, stream)).config
        except nats.js.errors.NotFoundError:
            return None
        consumer = await self._consumer_config(queue)
        max_entries, max_age = queue_limits(config)
        return QueueConfig(
            queue=queue, stream=stream, consumer=consumer.durable_name if consumer else None,
            replicas=config.num_replicas or 1, duplicate_window=config.duplicate_window or 0.0,
            allow_msg_schedules=bool(config.allow_msg_schedules),
            ack_wait=consumer.ack_wait if consumer else None,
            max_ack_pending=consumer.max_ack_pending if consumer and consumer.max_ack_pending != -1 else None,
            max_entries=max_entries, max_age=max_age,
            max_deliveries=deliveries_cap(consumer.max_deliver) if consumer else None,
        )  # fmt: skip

    async def _consumer_config(self, queue: str) -> ConsumerConfig | None:
        stream, name = self.topology.queue_stream(queue), self.topology.consumer(queue)
        try:
            info: ConsumerInfo = await self.retry(self.js.consumer_info, stream, name)
            return info.config
        except nats.js.errors.NotFoundError:
            return None

    async def configure_queue(self, queue: str, changes: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
        """Apply `changes` (from provisioning.validate_queue_changes) to the queue's stream and consumer; returns
        {field: (old, new)} for what changed. See Client.configure_queue; raises ConfigurationError."""
        changed = await configure_queue(self.js, self.nc, self.topology, self.settings, queue, changes,
                                        retry=self.retry)  # fmt: skip
        self._provisioned.add(queue)
        self._rooms.pop(queue, None)  # this process's next send reads the new limit
        if changed:
            text = ", ".join(f"{k} {show_value(old)} -> {show_value(new)}" for k, (old, new) in changed.items())
            log.info("queue %r configured: %s", queue, text)
        return changed

    def must_admit(self, queues: set[str]) -> bool:
        """Whether a send to `queues` has to ask the server first (`admit`): one of them has a max_entries, or
        this process has not read its limit within LIMIT_REFRESH seconds. Cheap; called from any thread."""
        now = time.monotonic()
        for queue in queues:
            room = self._rooms.get(queue)
            if room is None or room.max_entries is not None or now - room.read_at > LIMIT_REFRESH:
                return True
        return False

    async def admit(self, counts: dict[str, list[str]], *, deadline: float | None = None) -> None:
        """Refuse a send that would take a queue past its max_entries: QueueFull naming the queue, the limit, what
        the stream holds and the job ids (nothing is published). `counts`: {queue: [job ids about to be sent]}.

        The limit is bgjob's, not the stream's: JetStream's max_msgs needs discard "new" to refuse rather than
        drop, which a stream with message schedules refuses. So it is checked here, before the publish, against
        the stream's message count: sends in flight at once from several producers can each be admitted, the
        queue then holding a few more than max_entries, and nothing stored is ever dropped. A missing stream is
        empty (publishing creates it). Transient errors are retried until `deadline`.
        """
        for queue, job_ids in counts.items():
            try:
                info = await self.retry(self.js.stream_info, self.topology.queue_stream(queue), deadline=deadline)
            except nats.js.errors.NotFoundError:
                self._rooms[queue] = _Room(None, time.monotonic())
                continue
            max_entries, _ = queue_limits(info.config)
            self._rooms[queue] = _Room(max_entries, time.monotonic())
            held = info.state.messages
            if max_entries is not None and held + len(job_ids) > max_entries:
                error = QueueFull(
                    f"queue {queue!r} is full: it holds {held} messages and its max_entries is {max_entries}; job "
                    f"{', '.join(job_ids)} {'was' if len(job_ids) == 1 else 'were'} not stored (nothing was sent); "
                    "send again (same job id) once workers have drained the queue, or raise the limit with `bgjob "
                    f"queue configure {queue} --max-entries N`", job_ids=job_ids,
                )  # fmt: skip
                error.queue, error.max_entries = queue, max_entries  # type: ignore[attr-defined]  # QueueFull's extras
                raise error

    async def delivery_limits(self, queue: str, consumer: ConsumerConfig) -> tuple[float | None, int | None]:
        """(max_age in seconds, max_deliveries) the worker of `queue` enforces, read from the server now (the
        stream's metadata and `consumer`, the config ensure_consumer returned); None: no limit."""
        try:
            config = (await self.retry(self.js.stream_info, self.topology.queue_stream(queue))).config
        except nats.js.errors.NotFoundError:
            return None, deliveries_cap(consumer.max_deliver)
        return queue_limits(config)[1], deliveries_cap(consumer.max_deliver)

    async def retry(self, fn: Callable[..., Awaitable[T]], *args: Any, deadline: float | None = None,
                    **kwargs: Any) -> T:  # fmt: skip
        """Call `await fn(...)`, retrying transient errors until `deadline` (time.monotonic(); default retry_for
        from now), then raise bgjob.ConnectionError. Takes at most the budget plus one attempt."""
        try:
            async for attempt in self._retrying(deadline=deadline):
                with attempt:
                    return await fn(*args, **kwargs)
        except Exception as exc:
            if is_transient(exc):
                raise ConnectionError(f"NATS {_unavailable(exc)} for {self.settings.retry_for:g}s: "
                                      f"{_describe(exc)}") from exc
            raise
        raise AssertionError("unreachable: tenacity (reraise=True) raises the last error when it stops")

    async def delete_stored(self, stream: str, seq: int) -> bool:
        """Delete (and erase) the message at `seq` of `stream`: True when this call deleted it, False when the
        stream no longer holds it (deleted, acked or dead-lettered by another worker or admin first). The server
        answers that with 10057 "no message found", a 500, not a 404, so `except NotFoundError` never saw it."""
        try:
            await self.js.delete_msg(stream, seq)
        except nats.js.errors.APIError as exc:
            if isinstance(exc, nats.js.errors.NotFoundError) or exc.err_code == _NO_MESSAGE:
                return False
            raise
        return True

    async def publish(self, subject: str, body: bytes, headers: dict[str, str], queue: str | None = None, *,
                      deadline: float | None = None) -> Any:
        """Publish and wait for the PubAck; retries reuse the `Nats-Msg-Id`, so they never duplicate.

        Transient errors (err 10158 included: a publish with this id is being stored) are retried until
        `deadline` (time.monotonic(); default retry_for from now); the whole never takes longer than that plus
        one request timeout (then TimeoutError). Refusals raise what nats-py raised (see `as_bgjob_error`).
        """
        if deadline is None:
            deadline = time.monotonic() + self.settings.retry_for
        bound = max(0.0, deadline - time.monotonic()) + self.settings.request_timeout
        try:
            return await asyncio.wait_for(self._publish(subject, body, headers, queue, deadline), bound)
        except TimeoutError as exc:
            raise ConnectionError(f"NATS did not answer: no PubAck within retry_for "
                                  f"({self.settings.retry_for:g}s) plus one request timeout") from exc

    async def _publish(self, subject: str, body: bytes, headers: dict[str, str], queue: str | None,
                       deadline: float) -> Any:
        size = len(body) + sum(len(k) + len(v) + 4 for k, v in headers.items())
        if size > self.max_payload:  # nats-py would send it and the server would close the connection
            raise InvalidJob(f"message of {size} bytes exceeds the server's max_payload of {self.max_payload}")
        if queue is not None and queue not in self._provisioned:
            await self.ensure_queue(queue, deadline=deadline)
        try:  # the fast path: no retry machinery unless something goes wrong
            return await self._publish_once(subject, body, headers, queue)
        except Exception as exc:
            if not is_transient(exc):
                raise
            log.info("publish to %s failed (%s); retrying", subject, _describe(exc))
        return await self.retry(self._publish_once, subject, body, headers, queue, deadline=deadline)

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

    def forget_bucket(self, suffix: str) -> None:
        """Drop the cached handle of bucket `<PREFIX>_<suffix>`: its stream is gone (a memory-stored bucket after
        a server restart); the next `bucket()` looks it up, or creates it, again."""
        self._buckets.pop(suffix, None)

    async def bucket(
        self, suffix: str, *, ttl: float, storage: StorageType, description: str, create: bool = True,
        history: int = 1, erasable: bool = False,
    ) -> KeyValue | None:
        """The key-value bucket `<PREFIX>_<suffix>`, created on first use when `create` (else None if missing),
        keeping `history` revisions per key. An `erasable` bucket's stream allows deleting a message by
        sequence (a KV's stream denies it by default), which is how its bytes are securely erased."""
        kv = self._buckets.get(suffix)
        if kv is None:
            name = self.topology.stream_prefix + suffix
            try:
                kv = await self.js.key_value(name)
            except nats.js.errors.BucketNotFoundError:
                if not create:
                    return None
                kv_config = KeyValueConfig(
                    bucket=name, ttl=ttl, history=history, storage=storage, replicas=self.settings.replicas,
                    # Direct gets may be served stale by a replica; results are read right after writes.
                    direct=False, description=description,
                )  # fmt: skip
                if erasable:
                    await self.js.add_stream(StreamConfig(
                        name=f"KV_{name}", description=description, subjects=[f"$KV.{name}.>"], allow_direct=False,
                        allow_rollup_hdrs=True, deny_delete=False, discard=DiscardPolicy.NEW,
                        duplicate_window=min(120.0, ttl) if ttl else 120.0, max_age=ttl, max_consumers=-1,
                        max_msgs=-1, max_msgs_per_subject=history, num_replicas=self.settings.replicas,
                        storage=storage,
                    ))  # fmt: skip  (nats-py's create_key_value's stream, with deny_delete=False)
                    kv = await self.js.key_value(name)
                else:
                    kv = await self.js.create_key_value(kv_config)
            self._buckets[suffix] = kv
        return kv


def _connect_retryable(exc: BaseException) -> bool:
    """Worth another connect attempt: not a refused login, nor a TLS failure (certificates don't heal)."""
    if isinstance(exc, (nats.errors.AuthorizationError, ssl.SSLError)) or "authorization" in str(exc).lower():
        return False
    return is_transient(exc)


def _unavailable(exc: BaseException) -> str:
    """"did not answer" only when it did not: a timeout; else what it did."""
    if isinstance(exc, (nats.errors.TimeoutError, asyncio.TimeoutError)):
        return "did not answer"
    if getattr(exc, "err_code", None) == DUPLICATE_IN_PROCESS:
        return "kept answering that a publish with this id is still being stored (err 10158; a cluster without quorum?)"
    if isinstance(exc, nats.js.errors.APIError):
        return "kept answering with an error"
    return "could not be reached"


def as_bgjob_error(exc: BaseException, *, job_ids: tuple[str, ...] | list[str] = (), queue: str | None = None,
                   publishing: bool = False) -> BaseException:
    """The bgjob error for an exception out of nats-py (or the runtime): the one conversion the facade applies
    before anything reaches a caller. bgjob errors come back as they are (given `job_ids` when they have none);
    exceptions that are not nats-py's, a timeout's or an OSError (bugs) come back unchanged.

    `publishing`: the error ended a publish of `job_ids` (to `queue`): server refusals get their publish names
    (InvalidJob, QueueFull, StorageFull, PublishError; see errors.publish_refusal), transient errors become
    ConnectionError carrying the ids. Otherwise a refusal is ServerRefused, a transient error ConnectionError.
    """
    if isinstance(exc, BgjobError):
        if job_ids and isinstance(exc, (ConnectionError, PublishError)) and not exc.job_ids:
            exc.job_ids = tuple(job_ids)
        return exc
    if isinstance(exc, nats.js.errors.APIError) and not is_transient(exc):
        code, err_code, description = exc.code, exc.err_code, exc.description
        refusal = publish_refusal(code, err_code, description, job_ids=job_ids, queue=queue) if publishing else None
        if refusal is not None:
            return refusal
        return ServerRefused(f"the server refused: {description or type(exc).__name__}"
                             + (f" (err {err_code}, {code})" if err_code or code else ""),
                             description=description, err_code=err_code, code=code)  # fmt: skip
    if isinstance(exc, (nats.errors.Error, asyncio.TimeoutError, TimeoutError, OSError)):
        return ConnectionError(f"NATS {_unavailable(exc)}: {_describe(exc)}", job_ids=job_ids)
    return exc


def _describe(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
