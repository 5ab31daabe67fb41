"""taskiq with taskiq-nats' pull-based JetStream broker, on the same nats-server as bgjob."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Callable
from typing import Any

from ..env import Unavailable
from . import OnJob, System


class TaskiqNats(System):
    name = "taskiq-nats"
    config = (
        "taskiq + taskiq-nats `PullBasedJetStreamBroker` (WorkQueue stream, file storage, PubAck awaited), "
        "`pull_consume_batch=N`, receiver with `max_async_tasks=N` and a thread pool of N for the sync task"
    )

    def __init__(self, ctx: Any) -> None:
        super().__init__(ctx)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._brokers: dict[str, tuple[Any, Any]] = {}

    def check(self) -> None:
        try:
            import taskiq  # noqa: F401
            import taskiq_nats  # noqa: F401
        except ImportError as exc:
            raise Unavailable(f"taskiq-nats is not installed ({exc})") from exc

    def _broker(self, queue: str, batch: int, on_job: Callable[[Any], None] | None = None) -> tuple[Any, Any]:
        if queue not in self._brokers:
            from nats.js.api import ConsumerConfig, RetentionPolicy, StorageType, StreamConfig
            from taskiq_nats import PullBasedJetStreamBroker

            stream = "TASKIQ_" + queue.upper().replace("-", "_")
            broker = PullBasedJetStreamBroker(
                self.ctx.nats_url,
                subject=f"taskiq.{queue}",
                stream_name=stream,
                durable=f"taskiq-{queue}",
                stream_config=StreamConfig(
                    name=stream,
                    subjects=[f"taskiq.{queue}"],
                    retention=RetentionPolicy.WORK_QUEUE,
                    storage=StorageType.FILE,
                ),
                consumer_config=ConsumerConfig(durable_name=f"taskiq-{queue}"),
                pull_consume_batch=batch,
                pull_consume_timeout=1.0,
            )

            def noop(arg: dict[str, Any]) -> None:
                if on_job is not None:
                    on_job(arg)

            self._brokers[queue] = (broker, broker.task(task_name="noop")(noop))
        return self._brokers[queue]

    def _run(self, coro: Any) -> Any:
        if self._loop is None:
            self._loop = asyncio.new_event_loop()
            threading.Thread(target=self._loop.run_forever, name="taskiq-loop", daemon=True).start()
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def producer(self, queue: str) -> Callable[[dict[str, Any]], None]:
        broker, task = self._broker(queue, 1)
        self._run(broker.startup())
        loop = self._loop

        def send(arg: dict[str, Any]) -> None:
            asyncio.run_coroutine_threadsafe(task.kiq(arg), loop).result()

        return send

    def cleanup(self, queue: str) -> None:
        broker, _ = self._brokers.pop(queue, (None, None))
        if broker is not None:
            self._run(broker.js.delete_stream(broker.stream_name))
            self._run(broker.shutdown())

    def close(self) -> None:
        for queue in list(self._brokers):
            self.cleanup(queue)
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._loop = None

    def serve(self, queue: str, concurrency: int, on_job: OnJob, ready: Callable[[], None]) -> None:
        from taskiq.receiver import Receiver

        broker, _ = self._broker(queue, concurrency, on_job)

        async def run() -> None:
            broker.is_worker_process = True
            await broker.startup()
            executor = concurrent.futures.ThreadPoolExecutor(concurrency)
            receiver = Receiver(broker, executor=executor, max_async_tasks=concurrency, run_startup=False)
            ready()
            await receiver.listen(asyncio.Event())

        asyncio.run(run())
