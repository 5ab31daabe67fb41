"""Pipelined publishing: many jobs in flight at once, each producer waiting only for its own PubAcks."""

from __future__ import annotations

import asyncio
import collections
import itertools
import json
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import nats.js.errors
from nats.aio.msg import Msg
from nats.js.api import StatusCode

from .errors import ConnectionError, publish_refusal
from .headers import MSG_ID, STATUS
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
    """Messages submitted together; the submitting thread waits until each is confirmed or has failed.

    `deadline` (time.monotonic()) is when retrying stops: each item is settled by then plus one request timeout.
    """

    def __init__(self, items: list[Outgoing], deadline: float = float("inf")) -> None:
        self.items = items
        self.deadline = deadline
        #: per item: None once confirmed by a PubAck, else the bgjob error that ended its publishing.
        self.errors: list[BaseException | None] = [None] * len(items)
        #: per item: whether its fate is known (a PubAck or an error); read by the waiter after a timeout.
        self.settled: list[bool] = [False] * len(items)
        self._remaining = len(items)
        self._waiter = new_waiter()
        if not items:
            self._waiter.notify()

    def settle(self, index: int, error: BaseException | None) -> None:
        """Record the fate of item `index` (called on the runtime loop only; the first fate counts)."""
        if self.settled[index]:
            return
        self.settled[index] = True
        self.errors[index] = error
        self._remaining -= 1
        if self._remaining == 0:
            self._waiter.notify()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until every item is settled or `timeout` seconds pass; returns whether all were settled."""
        if self._waiter.wait(timeout):
            return True
        self._waiter.close()
        return False

    def job_id(self, index: int) -> str | None:
        """The job id (`Nats-Msg-Id`) of item `index`."""
        return self.items[index].headers.get(MSG_ID)


class Publisher:
    """Puts messages from any thread on the wire without waiting for earlier PubAcks.

    Each message gets a reply subject on one shared inbox; one timer at a time, armed for the oldest pending
    message's expiry (its publish plus request_timeout), bounds the wait for PubAcks. A transient error (a 503,
    err 10158: the same id being stored) or a missing PubAck sends that message down Core.publish's retrying path
    (same Nats-Msg-Id, so a message the server did store is not stored twice) until the batch's deadline; any
    other error reply settles it at once with its bgjob name (errors.publish_refusal). Every item's fate is a
    bgjob error or None.
    """

    def __init__(self, core: Core, runtime: Runtime) -> None:
        self._core = core
        self._runtime = runtime
        self._outbox: collections.deque[PublishBatch] = collections.deque()
        #: token -> (batch, index, expiry): in publish order, so in expiry order (one request_timeout each).
        self._pending: dict[str, tuple[PublishBatch, int, float]] = {}
        self._sweep_timer: asyncio.TimerHandle | None = None
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
        batch = PublishBatch(items, time.monotonic() + self._core.settings.retry_for)
        if items:
            self._outbox.append(batch)
            self._runtime.wake()
        return batch

    def _start_pump(self) -> None:
        # A task, not the coroutine driven by hand in this wake-up: what the pump awaits may need a current task
        # (Python 3.12's asyncio.wait_for and asyncio.timeout refuse to run outside one).
        if self._outbox and not self._pumping:
            self._pumping = True
            self._runtime.spawn(self._pump())

    async def _pump(self) -> None:
        core, outbox, pending = self._core, self._outbox, self._pending
        timeout, clock = core.settings.request_timeout, time.monotonic
        try:
            while outbox:
                batch = outbox.popleft()
                for index, item in enumerate(batch.items):
                    token = str(next(self._tokens))
                    if item.queue is not None and item.queue not in core._provisioned:
                        # Inline, so that jobs are stored in the order they were sent; within the batch's deadline.
                        try:
                            await core.ensure_queue(item.queue, deadline=batch.deadline)
                        except Exception as exc:  # noqa: BLE001 - settled with its bgjob name
                            self._retry(batch, index, exc)
                            continue
                        if time.monotonic() >= batch.deadline:  # no attempt starts after the deadline
                            self._retry(batch, index, TimeoutError("the queue's stream was not confirmed in time"))
                            continue
                    try:
                        pending[token] = (batch, index, clock() + timeout)
                        await core.nc.publish(item.subject, item.body, reply=self._prefix + token, headers=item.headers)
                    except Exception as exc:  # noqa: BLE001 - the retrying path decides
                        pending.pop(token, None)
                        self._retry(batch, index, exc)
                if pending and self._sweep_timer is None:
                    self._arm_sweep()
        finally:
            self._pumping = False
        if outbox:  # filled while we were finishing
            self._start_pump()

    def _on_reply(self, msg: Msg) -> None:
        entry = self._pending.pop(msg.subject[len(self._prefix) :], None)
        if entry is None:
            return  # already given up on (timer) and retried
        batch, index, _ = entry
        data = msg.data
        if msg.headers:
            if msg.headers.get(STATUS) == StatusCode.SERVICE_UNAVAILABLE:
                self._retry(batch, index, nats.js.errors.NoStreamResponseError())
                return
        elif data.startswith(b'{"stream":') and data.endswith(b"}") and b'"error"' not in data:
            batch.settle(index, None)  # a PubAck (the stream, the sequence): stored, nothing more to read
            return
        try:
            reply = json.loads(data)
        except ValueError as exc:
            self._retry(batch, index, exc)
            return
        error = reply.get("error") if isinstance(reply, dict) else None
        if error is None:
            batch.settle(index, None)
            return
        if not isinstance(error, dict):
            error = {"description": str(error)}
        # nats-py's APIError.from_error raises rather than returns: build the error ourselves.
        refusal = publish_refusal(error.get("code"), error.get("err_code"), error.get("description"),
                                  job_ids=_ids(batch, index), queue=batch.items[index].queue)  # fmt: skip
        if refusal is None:  # a leader change, or err 10158: the same id being stored; wait for it
            self._retry(batch, index, None)
        else:
            batch.settle(index, refusal)

    def _arm_sweep(self) -> None:
        """Time the sweep for the oldest pending message's expiry (the first in `_pending`: publish order)."""
        expiry = next(iter(self._pending.values()))[2]
        self._sweep_timer = self._runtime.loop.call_later(max(0.0, expiry - time.monotonic()), self._sweep)

    def _sweep(self) -> None:
        """Retry every message whose PubAck is overdue (request_timeout after its publish), then re-arm."""
        self._sweep_timer = None
        pending, now = self._pending, time.monotonic()
        overdue = []
        for token, (_, _, expiry) in pending.items():
            if expiry > now:
                break
            overdue.append(token)
        for token in overdue:
            entry = pending.pop(token, None)
            if entry is not None:
                self._retry(entry[0], entry[1], TimeoutError("no PubAck in time"))
        if pending and self._sweep_timer is None:
            self._arm_sweep()

    def _retry(self, batch: PublishBatch, index: int, exc: BaseException | None) -> None:
        """Publish item `index` again through Core.publish's retrying path (exc None: a transient answer)."""
        from .core import as_bgjob_error, is_transient

        item = batch.items[index]
        if exc is not None and not is_transient(exc) and not isinstance(exc, nats.js.errors.NoStreamResponseError):
            batch.settle(index, as_bgjob_error(exc, job_ids=_ids(batch, index), queue=item.queue, publishing=True))
            return
        if time.monotonic() >= batch.deadline:
            why = f"{exc}" if exc is not None else "the server kept answering that it could not store it yet"
            batch.settle(index, ConnectionError(f"not confirmed within retry_for: {why}", job_ids=_ids(batch, index)))
            return
        task = self._runtime.spawn(self._core.publish(item.subject, item.body, item.headers, item.queue,
                                                      deadline=batch.deadline))  # fmt: skip

        def done(t: Any) -> None:
            if t.cancelled():
                error: BaseException | None = ConnectionError("publish cancelled (the client is closing)",
                                                              job_ids=_ids(batch, index))  # fmt: skip
            elif (raised := t.exception()) is not None:
                error = as_bgjob_error(raised, job_ids=_ids(batch, index), queue=item.queue, publishing=True)
            else:
                error = None
            batch.settle(index, error)

        task.add_done_callback(done)


def _ids(batch: PublishBatch, index: int) -> tuple[str, ...]:
    job_id = batch.job_id(index)
    return (job_id,) if job_id else ()
