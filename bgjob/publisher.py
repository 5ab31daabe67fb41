"""Pipelined publishing: many jobs in flight at once, each producer waiting only for its own PubAcks."""

from __future__ import annotations

import collections
import itertools
import json
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import nats.js.errors
from nats.aio.msg import Msg
from nats.js.api import StatusCode

from .headers import STATUS
from .runtime import Runtime, new_waiter

if TYPE_CHECKING:
    from .core import Core

log = logging.getLogger("bgjob.publisher")


@dataclass(slots=True)
class Outgoing:
    """One message to publish."""

    subject: str
    body: bytes
    headers: dict[str, str]
    queue: str | None


class PublishBatch:
    """Messages submitted together; the submitting thread waits until each is confirmed or has failed."""

    def __init__(self, items: list[Outgoing]) -> None:
        self.items = items
        #: per item: None once confirmed by a PubAck, else the exception that ended its publishing.
        self.errors: list[BaseException | None] = [None] * len(items)
        self._remaining = len(items)
        self._waiter = new_waiter()
        if not items:
            self._waiter.notify()

    def settle(self, index: int, error: BaseException | None) -> None:
        """Record the fate of item `index` (called on the runtime loop only)."""
        self.errors[index] = error
        self._remaining -= 1
        if self._remaining == 0:
            self._waiter.notify()

    def wait(self, timeout: float | None = None) -> bool:
        return self._waiter.wait(timeout)


class Publisher:
    """Puts messages from any thread on the wire without waiting for earlier PubAcks.

    Each message gets a reply subject on one shared inbox; a timer per pump round bounds the wait for
    PubAcks. An error or a missing PubAck sends that message down Core.publish's retrying path (same
    Nats-Msg-Id, so a message the server did store is not stored twice).
    """

    def __init__(self, core: Core, runtime: Runtime) -> None:
        self._core = core
        self._runtime = runtime
        self._outbox: collections.deque[PublishBatch] = collections.deque()
        self._pending: dict[str, tuple[PublishBatch, int]] = {}
        self._tokens = itertools.count()
        self._prefix = ""
        self._pumping = False
        runtime.add_wakeup_hook(self._start_pump)

    async def start(self) -> None:
        """Subscribe to the inbox that PubAcks come back on."""
        nc = self._core.nc
        self._prefix = f"{nc.new_inbox()}."

        async def on_reply(msg: Msg) -> None:
            self._on_reply(msg)

        await nc.subscribe(self._prefix + "*", cb=on_reply)

    def submit(self, items: list[Outgoing]) -> PublishBatch:
        """Queue messages from any thread; wait on the returned batch for their PubAcks."""
        batch = PublishBatch(items)
        if items:
            self._outbox.append(batch)
            self._runtime.wake()
        return batch

    def _start_pump(self) -> None:
        if self._outbox and not self._pumping:
            self._pumping = True
            self._runtime.spawn(self._pump())

    async def _pump(self) -> None:
        core, outbox, pending, loop = self._core, self._outbox, self._pending, self._runtime.loop
        try:
            while outbox:
                batch = outbox.popleft()
                sent = []
                for index, item in enumerate(batch.items):
                    token = str(next(self._tokens))
                    try:
                        if item.queue is not None and item.queue not in core._provisioned:
                            await core.ensure_queue(item.queue)
                        pending[token] = (batch, index)
                        await core.nc.publish(item.subject, item.body, reply=self._prefix + token, headers=item.headers)
                        sent.append(token)
                    except Exception as exc:  # noqa: BLE001 - the retrying path decides
                        pending.pop(token, None)
                        self._retry(batch, index, exc)
                if sent:
                    loop.call_later(core.settings.request_timeout, self._expire, sent)
        finally:
            self._pumping = False
        if outbox:  # filled while we were finishing
            self._start_pump()

    def _on_reply(self, msg: Msg) -> None:
        entry = self._pending.pop(msg.subject[len(self._prefix) :], None)
        if entry is None:
            return  # already given up on (timer) and retried
        batch, index = entry
        if msg.headers and msg.headers.get(STATUS) == StatusCode.SERVICE_UNAVAILABLE:
            self._retry(batch, index, nats.js.errors.NoStreamResponseError())
            return
        try:
            reply = json.loads(msg.data)
        except ValueError as exc:
            self._retry(batch, index, exc)
            return
        if "error" in reply:
            self._retry(batch, index, nats.js.errors.APIError.from_error(reply["error"]))
        else:
            batch.settle(index, None)

    def _expire(self, tokens: list[str]) -> None:
        for token in tokens:
            entry = self._pending.pop(token, None)
            if entry is not None:
                self._retry(*entry, TimeoutError("no PubAck in time"))

    def _retry(self, batch: PublishBatch, index: int, exc: BaseException) -> None:
        from .core import is_transient

        if not is_transient(exc) and not isinstance(exc, nats.js.errors.NoStreamResponseError):
            batch.settle(index, exc)
            return
        item = batch.items[index]
        task = self._runtime.spawn(self._core.publish(item.subject, item.body, item.headers, item.queue))

        def done(t: Any) -> None:
            batch.settle(index, None if not t.cancelled() and t.exception() is None else _error_of(t))

        task.add_done_callback(done)


def _error_of(task: Any) -> BaseException:
    return task.exception() if not task.cancelled() else TimeoutError("publish cancelled")
