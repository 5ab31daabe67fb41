"""RQ on Redis: `SimpleWorker` (jobs in the worker process) and the default `Worker` (a fork per job)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..env import Unavailable
from . import OnJob, System

#: set in the worker process before the worker starts; forked work horses inherit it.
_on_job: OnJob | None = None


def noop(arg: dict[str, Any]) -> None:
    """The job RQ imports by name."""
    if _on_job is not None:
        _on_job(arg)


class _RQ(System):
    worker_class = ""
    has_bulk = True

    def __init__(self, ctx: Any) -> None:
        super().__init__(ctx)
        self._redis: Any = None

    def check(self) -> None:
        if not self.ctx.redis_url:
            raise Unavailable("no Redis on 127.0.0.1:6379 and redis-server could not be started")

    @property
    def redis(self) -> Any:
        if self._redis is None:
            import redis

            self._redis = redis.Redis.from_url(self.ctx.redis_url)
        return self._redis

    def _queue(self, queue: str) -> Any:
        from rq import Queue

        return Queue(queue, connection=self.redis)

    def producer(self, queue: str) -> Callable[[dict[str, Any]], None]:
        q = self._queue(queue)

        def send(arg: dict[str, Any]) -> None:
            q.enqueue(noop, arg, result_ttl=0)  # no result kept, like bgjob

        return send

    def bulk(self, queue: str, args: list[dict[str, Any]]) -> None:
        from rq import Queue

        q = self._queue(queue)
        q.enqueue_many([Queue.prepare_data(noop, args=(arg,), result_ttl=0) for arg in args])

    def cleanup(self, queue: str) -> None:
        self._queue(queue).delete(delete_jobs=True)

    def close(self) -> None:
        if self._redis is not None:
            self._redis.close()

    def serve(self, queue: str, concurrency: int, on_job: OnJob, ready: Callable[[], None]) -> None:
        import rq

        global _on_job
        _on_job = on_job
        worker = getattr(rq, self.worker_class)([self._queue(queue)], connection=self.redis)
        ready()
        worker.work(burst=False, with_scheduler=False, logging_level="WARNING")


class RQSimple(_RQ):
    name = "rq-simple"
    config = (
        "RQ, Redis (no persistence), `SimpleWorker`: one job at a time in the worker process "
        "(RQ has no thread concurrency; `concurrency` ignored), `result_ttl=0`"
    )
    worker_class = "SimpleWorker"
    paced_rate = 100.0
    scale = 0.25


class RQFork(_RQ):
    name = "rq-fork"
    config = "RQ, Redis (no persistence), default `Worker`: forks a work horse per job, one at a time, `result_ttl=0`"
    worker_class = "Worker"
    paced_rate = 20.0
    scale = 0.05
