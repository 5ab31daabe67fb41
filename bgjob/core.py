"""The asyncio side of a client: the connection, provisioning, publishing with retries, queue stats."""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
from dataclasses import dataclass
from typing import Any

import nats
import nats.errors
import nats.js.errors
from nats.js.api import KeyValueConfig, StorageType
from nats.js.kv import KeyValue
from tenacity import AsyncRetrying, retry_if_exception, stop_after_delay, wait_random_exponential

from .errors import ConnectionError, InvalidJob
from .settings import Settings
from .topology import Topology, check_server, provision_dlq, provision_queue

log = logging.getLogger("bgjob.client")


def is_transient(exc: BaseException) -> bool:
    """Errors worth retrying: the server is restarting, failing over or briefly unreachable."""
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
        self._buckets: dict[str, KeyValue] = {}

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
                        # The first connect fails fast (tenacity retries what is worth retrying): with
                        # reconnecting allowed, nats-py hides a refused login behind NoServersError and
                        # never returns from a certificate that doesn't verify. Allowed after it.
                        allow_reconnect=False,
                        max_reconnect_attempts=1,
                        reconnect_time_wait=0.25,
                        error_cb=self._on_error,
                        disconnected_cb=self._on_disconnected,
                        reconnected_cb=self._on_reconnected,
                        **opts,
                    )
        except nats.errors.Error as exc:
            raise ConnectionError(f"cannot connect to NATS at {redact_url(self.url)}: {_describe(exc)}") from exc
        except OSError as exc:
            raise ConnectionError(f"cannot connect to NATS at {redact_url(self.url)}: {exc}") from exc
        self.nc.options["allow_reconnect"] = True
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
    def lost(self) -> bool:
        """The connection was closed, and not by us (nats-py gives up on some protocol errors)."""
        return self.nc is not None and self.nc.is_closed and not self._closing

    @property
    def max_payload(self) -> int:
        return self.nc.max_payload if self.nc is not None else 1024 * 1024

    async def _on_error(self, exc: Exception) -> None:
        # One warning per outage; the reconnect attempts that follow are only worth a debug line.
        log.log(logging.DEBUG if self._outage else logging.WARNING, "nats: %s", _describe(exc))

    async def _on_disconnected(self) -> None:
        if not self._closing and not self._outage:
            log.warning("nats: disconnected from %s; reconnecting", redact_url(self.url))
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
        size = len(body) + sum(len(k) + len(v) + 4 for k, v in headers.items())
        if size > self.max_payload:  # nats-py would send it and the server would close the connection
            raise InvalidJob(f"message of {size} bytes exceeds the server's max_payload of {self.max_payload}")
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

    async def bucket(
        self, suffix: str, *, ttl: float, storage: StorageType, description: str, create: bool = True
    ) -> KeyValue | None:
        """The key-value bucket `<PREFIX>_<suffix>`, created on first use when `create` (else None if missing)."""
        kv = self._buckets.get(suffix)
        if kv is None:
            name = self.topology.stream_prefix + suffix
            try:
                kv = await self.js.key_value(name)
            except nats.js.errors.BucketNotFoundError:
                if not create:
                    return None
                kv = await self.js.create_key_value(KeyValueConfig(
                    bucket=name, ttl=ttl, history=1, storage=storage, replicas=self.settings.replicas,
                    # Direct gets may be served stale by a replica; results are read right after writes.
                    direct=False, description=description,
                ))  # fmt: skip
            self._buckets[suffix] = kv
        return kv

    async def queue_stats(self, queue: str) -> QueueStats:
        from .dlq import count_dead_letters

        # Read-only: a queue that doesn't exist (yet, or any more) is empty, not created.
        name = self.topology.queue_stream(queue)
        try:
            stream = await self.js.stream_info(name)
            consumer = await self.js.consumer_info(name, self.topology.consumer(queue))
        except nats.js.errors.NotFoundError:
            return QueueStats(queue, 0, 0, 0, await count_dead_letters(self, queue=queue))
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
    """Worth another connect attempt: not a refused login, nor a TLS failure (certificates don't heal)."""
    if isinstance(exc, (nats.errors.AuthorizationError, ssl.SSLError)) or "authorization" in str(exc).lower():
        return False
    return is_transient(exc)


def _describe(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def redact_url(url: str) -> str:
    """The URL without credentials, for messages and logs."""
    out = []
    for part in url.split(","):
        scheme, sep, rest = part.strip().rpartition("://")
        if "@" in rest:
            rest = "***@" + rest.split("@", 1)[1]
        out.append(f"{scheme}{sep}{rest}")
    return ",".join(out)
