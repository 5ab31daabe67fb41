"""Huey on Redis, a consumer with thread workers."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..env import Unavailable
from . import OnJob, System


class HueyRedis(System):
    name = "huey-redis"
    config = (
        "Huey 3, `RedisHuey` (blocking BRPOP dequeue, no persistence), consumer with "
        "`workers=N, worker_type='thread'`; a job is removed from Redis when dequeued (no ack after the run)"
    )

    def __init__(self, ctx: Any) -> None:
        super().__init__(ctx)
        self._hueys: dict[str, Any] = {}

    def check(self) -> None:
        if not self.ctx.redis_url:
            raise Unavailable("no Redis on 127.0.0.1:6379 and redis-server could not be started")

    def _huey(self, queue: str, on_job: Callable[[Any], None] | None = None) -> tuple[Any, Any]:
        if queue not in self._hueys:
            from huey import RedisHuey

            huey = RedisHuey(name=queue, url=self.ctx.redis_url, results=False)

            def noop(arg: dict[str, Any]) -> None:
                if on_job is not None:
                    on_job(arg)

            self._hueys[queue] = (huey, huey.task(name="noop")(noop))
        return self._hueys[queue]

    def producer(self, queue: str) -> Callable[[dict[str, Any]], None]:
        _, task = self._huey(queue)
        return task

    def cleanup(self, queue: str) -> None:
        huey, _ = self._huey(queue)
        huey.flush()

    def serve(self, queue: str, concurrency: int, on_job: OnJob, ready: Callable[[], None]) -> None:
        huey, _ = self._huey(queue, on_job)
        consumer = huey.create_consumer(
            workers=concurrency, worker_type="thread", periodic=False, check_worker_health=False
        )
        ready()
        consumer.run()
