"""Dramatiq on Redis, one worker process with `worker_threads` threads."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from ..env import Unavailable
from . import OnJob, System


class DramatiqRedis(System):
    name = "dramatiq-redis"
    config = (
        "Dramatiq 2, Redis broker (no persistence), default middleware, one process with "
        "`worker_threads=N`, `max_retries=0`; messages are acked after the actor ran"
    )

    def __init__(self, ctx: Any) -> None:
        super().__init__(ctx)
        self._broker: Any = None

    def check(self) -> None:
        if not self.ctx.redis_url:
            raise Unavailable("no Redis on 127.0.0.1:6379 and redis-server could not be started")

    @property
    def broker(self) -> Any:
        if self._broker is None:
            import dramatiq
            from dramatiq.brokers.redis import RedisBroker

            self._broker = RedisBroker(url=self.ctx.redis_url, namespace=f"bench-{self.ctx.run_id}")
            dramatiq.set_broker(self._broker)
        return self._broker

    def _actor(self, queue: str, fn: Callable[[Any], None]) -> Any:
        import dramatiq

        return dramatiq.actor(fn, actor_name="noop", queue_name=queue, max_retries=0, broker=self.broker)

    def producer(self, queue: str) -> Callable[[dict[str, Any]], None]:
        import dramatiq

        broker = self.broker
        broker.declare_queue(queue)

        def send(arg: dict[str, Any]) -> None:
            broker.enqueue(dramatiq.Message(queue_name=queue, actor_name="noop", args=(arg,), kwargs={}, options={}))

        return send

    def close(self) -> None:
        if self._broker is not None:
            self._broker.close()

    def serve(self, queue: str, concurrency: int, on_job: OnJob, ready: Callable[[], None]) -> None:
        import dramatiq

        def noop(arg: dict[str, Any]) -> None:
            on_job(arg)

        self._actor(queue, noop)
        worker = dramatiq.Worker(self.broker, queues={queue}, worker_threads=concurrency)
        worker.start()
        ready()
        threading.Event().wait()
