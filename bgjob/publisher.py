"""Pipelined publishing: many threads' jobs in flight at once, each waiting only for its own PubAck."""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .runtime import Runtime

if TYPE_CHECKING:
    from .client import Core

log = logging.getLogger("bgjob.publisher")


@dataclass(slots=True)
class Outgoing:
    """One message to publish, and the thread-safe future its producer waits on."""

    subject: str
    body: bytes
    headers: dict[str, str]
    queue: str | None
    future: concurrent.futures.Future


class Publisher:
    """Moves messages that any thread submits onto the wire without waiting for earlier PubAcks.

    The fast path is one `publish_async` per message and a timer; an error or a missing PubAck sends
    that message down Core.publish's retrying path (same Nats-Msg-Id, so never stored twice).
    """

    def __init__(self, core: Core, runtime: Runtime) -> None:
        self._core = core
        self._runtime = runtime
        self._outbox: collections.deque[Outgoing] = collections.deque()
        self._pumping = False
        runtime.add_wakeup_hook(self._start_pump)

    def submit(
        self, subject: str, body: bytes, headers: dict[str, str], queue: str | None
    ) -> concurrent.futures.Future:
        """Queue a publish from any thread; the future resolves to the PubAck or the final error."""
        future: concurrent.futures.Future = concurrent.futures.Future()
        self._outbox.append(Outgoing(subject, body, headers, queue, future))
        self._runtime.wake()
        return future

    def _start_pump(self) -> None:
        if self._outbox and not self._pumping:
            self._pumping = True
            self._runtime.loop.create_task(self._pump())

    async def _pump(self) -> None:
        core, outbox = self._core, self._outbox
        try:
            while outbox:
                item = outbox.popleft()
                if not item.future.set_running_or_notify_cancel():
                    continue
                try:
                    if item.queue is not None and item.queue not in core._provisioned:
                        await core.ensure_queue(item.queue)
                    ack = await core.js.publish_async(item.subject, item.body, headers=item.headers)
                except Exception as exc:  # noqa: BLE001 - handed to the slow path, which decides
                    self._slow_path(item, exc)
                    continue
                timer = self._runtime.loop.call_later(core.settings.request_timeout, ack.cancel)
                ack.add_done_callback(lambda f, item=item, timer=timer: self._on_ack(f, item, timer))
        finally:
            self._pumping = False
        if outbox:  # filled while we were finishing
            self._start_pump()

    def _on_ack(self, ack: asyncio.Future, item: Outgoing, timer: asyncio.TimerHandle) -> None:
        timer.cancel()
        if ack.cancelled():
            self._slow_path(item, TimeoutError("no PubAck in time"))
        elif (exc := ack.exception()) is not None:
            self._slow_path(item, exc)
        else:
            item.future.set_result(ack.result())

    def _slow_path(self, item: Outgoing, exc: BaseException) -> None:
        from .client import is_transient

        if not is_transient(exc) and not _is_missing_stream(exc):
            item.future.set_exception(exc)
            return
        task = self._runtime.loop.create_task(self._core.publish(item.subject, item.body, item.headers, item.queue))
        task.add_done_callback(lambda t: _copy(t, item.future))


def _is_missing_stream(exc: BaseException) -> bool:
    import nats.js.errors

    return isinstance(exc, nats.js.errors.NoStreamResponseError)


def _copy(task: asyncio.Task, future: concurrent.futures.Future) -> None:
    if task.cancelled():
        future.cancel()
    elif (exc := task.exception()) is not None:
        future.set_exception(exc)
    else:
        future.set_result(task.result())
