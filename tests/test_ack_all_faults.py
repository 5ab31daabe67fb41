"""The batched ack of plain Completes (settle.ack_all) under connection faults, against a real server."""

from __future__ import annotations

import asyncio
import logging
import uuid

from nats.js.api import ConsumerConfig, RetentionPolicy

import bgjob
from bgjob.core import Core
from bgjob.hooks import HookSet
from bgjob.worker.dispatch import Delivery
from bgjob.worker.settle import Settler


async def _until(condition, timeout: float = 15.0) -> None:  # type: ignore[no-untyped-def]
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.02)


def test_a_batch_acked_while_disconnected_reports_as_failed_only_what_was_not_acked(own_server, caplog) -> None:
    """While nats-py reconnects it buffers publishes up to its pending limit, then refuses them. A batch whose
    first acks were buffered and the rest refused: the buffered ones reach the server on reconnect (the jobs are
    gone from the work-queue stream), so only the refused ones may be reported as failed ("will be
    redelivered"); the others were acked."""

    async def check() -> None:
        settings = bgjob.Settings(url=own_server.url, prefix=f"p{uuid.uuid4().hex[:6]}",
                                  nats_options={"pending_size": 1})  # fmt: skip
        core = Core(settings, own_server.url)
        await core.connect()
        nc, js = core.nc, core.js
        stream = f"ACKFAULT{uuid.uuid4().hex[:8].upper()}"
        await js.add_stream(name=stream, subjects=[f"{stream}.jobs"], retention=RetentionPolicy.WORK_QUEUE)
        for i in range(3):
            await js.publish(f"{stream}.jobs", str(i).encode())
        sub = await js.pull_subscribe(f"{stream}.jobs", durable="w", config=ConsumerConfig(ack_wait=60))
        msgs = await sub.fetch(3, timeout=5)
        items = [Delivery(msg, outcome=bgjob.Complete()) for msg in msgs]
        tasks: set[asyncio.Task[object]] = set()
        settler = Settler(core, "default", bgjob.RetryPolicy(), HookSet([]),
                          lambda coro: tasks.add(t := asyncio.ensure_future(coro)) or t)  # fmt: skip
        finished: list[Delivery] = []

        await asyncio.to_thread(own_server.stop)
        await _until(lambda: not nc.is_connected)
        assert nc.pending_data_size == 0  # nothing buffered yet: the first ack fits, the next ones are refused
        with caplog.at_level(logging.ERROR, logger="bgjob.worker"):
            await settler.settle_batch(items, finished.append)
        assert finished == items
        await asyncio.to_thread(own_server.start)
        await _until(lambda: nc.is_connected)
        await nc.flush(timeout=5)
        left = (await js.stream_info(stream)).state.messages
        failed = [r for r in caplog.records if "could not settle" in r.getMessage()]
        assert left == 2  # the first ack was buffered and sent on reconnect
        assert len(failed) == left, [r.getMessage() for r in failed]
        await nc.close()

    asyncio.run(check())
