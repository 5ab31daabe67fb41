"""Raw nats-py, the baseline: plain `js.publish` and a pull-fetch(256)+ack loop on the same nats-server."""

from __future__ import annotations

import asyncio
import json
import threading
import uuid
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

import nats
import nats.errors
from nats.js.api import RetentionPolicy, StorageType, StreamConfig

from . import OnJob, System


class RawNats(System):
    name = "nats-py"
    config = (
        "WorkQueue stream with file storage; producer: `js.publish` awaited (PubAck) from threads via "
        "`run_coroutine_threadsafe` on one loop thread; consumer: `fetch(256)` then `ack()` each message, "
        "handler inline on the loop (no thread pool, `concurrency` ignored)"
    )
    has_bulk = True

    def __init__(self, ctx: Any) -> None:
        super().__init__(ctx)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._nc: Any = None
        self._js: Any = None
        self._streams: set[str] = set()

    @staticmethod
    def stream(queue: str) -> str:
        return "RAW_" + queue.upper().replace("-", "_")

    @staticmethod
    def subject(queue: str) -> str:
        return f"raw.{queue}.job"

    def _run(self, coro: Any) -> Any:
        if self._loop is None:
            self._loop = asyncio.new_event_loop()
            threading.Thread(target=self._loop.run_forever, name="nats-py-loop", daemon=True).start()
            self._nc = asyncio.run_coroutine_threadsafe(nats.connect(self.ctx.nats_url), self._loop).result()
            self._js = self._nc.jetstream()
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    async def _ensure_stream(self, js: Any, queue: str) -> None:
        if queue not in self._streams:
            await js.add_stream(
                StreamConfig(
                    name=self.stream(queue),
                    subjects=[f"raw.{queue}.>"],
                    retention=RetentionPolicy.WORK_QUEUE,
                    storage=StorageType.FILE,
                )
            )
            self._streams.add(queue)

    def producer(self, queue: str) -> Callable[[dict[str, Any]], None]:
        self._run(asyncio.sleep(0))
        self._run(self._ensure_stream(self._js, queue))
        js, loop, subject = self._js, self._loop, self.subject(queue)

        def send(arg: dict[str, Any]) -> None:
            asyncio.run_coroutine_threadsafe(js.publish(subject, json.dumps(arg).encode()), loop).result()

        return send

    def headers(self) -> dict[str, str] | None:
        """Headers of every message (none: the leanest message JetStream can carry)."""
        return None

    def bulk(self, queue: str, args: list[dict[str, Any]]) -> None:
        async def publish_all() -> None:
            await self._ensure_stream(self._js, queue)
            for arg in args:
                await self._js.publish_async(self.subject(queue), json.dumps(arg).encode(), headers=self.headers())
            await self._js.publish_async_completed()

        self._run(asyncio.sleep(0))
        self._run(publish_all())

    def cleanup(self, queue: str) -> None:
        self._run(self._js.delete_stream(self.stream(queue)))
        self._streams.discard(queue)

    def close(self) -> None:
        if self._loop is not None:
            self._run(self._nc.close())
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._loop = None

    def serve(self, queue: str, concurrency: int, on_job: OnJob, ready: Callable[[], None]) -> None:
        async def consume() -> None:
            nc = await nats.connect(self.ctx.nats_url)
            js = nc.jetstream()
            await self._ensure_stream(js, queue)
            sub = await js.pull_subscribe(self.subject(queue), durable=f"raw-{queue}", stream=self.stream(queue))
            ready()
            while True:
                try:
                    msgs = await sub.fetch(256, timeout=1)
                except nats.errors.TimeoutError:
                    continue
                for msg in msgs:
                    on_job(json.loads(msg.data))
                    await msg.ack()

        asyncio.run(consume())


class RawNatsHeaders(RawNats):
    """Raw nats-py with the five headers bgjob puts on every job, to tell their cost from bgjob's own."""

    name = "nats-py+headers"
    config = RawNats.config + "; every message carries bgjob's five headers (`Nats-Msg-Id`, `Bgjob-Id`, ...)"

    def headers(self) -> dict[str, str] | None:
        job_id = uuid.uuid4().hex
        return {
            "Nats-Msg-Id": job_id,
            "Bgjob-Id": job_id,
            "Bgjob-Type": "noop",
            "Bgjob-Enqueued-At": datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
            "Content-Type": "application/json",
        }
