"""Celery 5 with the threads pool, on Redis or on RabbitMQ."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from ..env import Unavailable, ensure_rabbitmq
from . import OnJob, System


class _Celery(System):
    broker = ""

    def __init__(self, ctx: Any) -> None:
        super().__init__(ctx)
        self._app: Any = None
        self._lock = threading.Lock()
        self._queues: set[str] = set()

    def broker_url(self) -> str:
        raise NotImplementedError

    def transport_options(self) -> dict[str, Any]:
        return {}

    @property
    def app(self) -> Any:
        with self._lock:
            if self._app is None:
                from celery import Celery

                app = Celery("bench", broker=self.broker_url(), set_as_current=False)
                app.conf.update(
                    task_acks_late=True,  # ack after the handler ran, like bgjob
                    task_ignore_result=True,
                    worker_enable_remote_control=False,
                    worker_send_task_events=False,
                    worker_hijack_root_logger=False,
                    broker_connection_retry_on_startup=True,
                    broker_transport_options=self.transport_options(),
                )
                self._app = app
            return self._app

    def producer(self, queue: str) -> Callable[[dict[str, Any]], None]:
        app = self.app

        def send(arg: dict[str, Any]) -> None:
            app.send_task("bench.noop", args=[arg], queue=queue)

        return send

    def fill(self, queue: str, n: int) -> None:
        self._queues.add(queue)
        with self.app.producer_or_acquire() as producer:
            for i in range(n):
                self.app.send_task("bench.noop", args=[{"i": i}], queue=queue, producer=producer)

    def serve(self, queue: str, concurrency: int, on_job: OnJob, ready: Callable[[], None]) -> None:
        from celery.signals import worker_ready

        app = self.app

        def noop(arg: dict[str, Any]) -> None:
            on_job(arg)

        app.task(name="bench.noop")(noop)
        worker_ready.connect(lambda **_: ready(), weak=False)
        app.worker_main(
            [
                "worker",
                "--pool=threads",
                f"--concurrency={concurrency}",
                f"--queues={queue}",
                "--without-heartbeat",
                "--without-gossip",
                "--without-mingle",
                "--loglevel=WARNING",
            ]
        )


class CeleryRedis(_Celery):
    name = "celery-redis"
    config = (
        "Celery 5, Redis broker (no persistence: RDB and AOF off), `--pool threads --concurrency N`, "
        "`task_acks_late=True`, prefetch multiplier 4 (default), no result backend"
    )

    def check(self) -> None:
        if not self.ctx.redis_url:
            raise Unavailable("no Redis on 127.0.0.1:6379 and redis-server could not be started")

    def broker_url(self) -> str:
        return self.ctx.redis_url

    def transport_options(self) -> dict[str, Any]:
        return {"global_keyprefix": f"bench-{self.ctx.run_id}:"}


class CeleryRabbitMQ(_Celery):
    name = "celery-rabbitmq"
    config = (
        "Celery 5, RabbitMQ broker (durable queue, persistent messages, publisher confirms on, i.e. "
        "like a PubAck), `--pool threads --concurrency N`, `task_acks_late=True`, prefetch multiplier 4"
    )

    def check(self) -> None:
        if not self.ctx.amqp_url:
            raise Unavailable("no RabbitMQ on 127.0.0.1:5672 and rabbitmq-server could not be started")

    def broker_url(self) -> str:
        return self.ctx.amqp_url or (ensure_rabbitmq() or "")

    def transport_options(self) -> dict[str, Any]:
        return {"confirm_publish": True}

    def producer(self, queue: str) -> Callable[[dict[str, Any]], None]:
        self._queues.add(queue)
        return super().producer(queue)

    def cleanup(self, queue: str) -> None:
        """Delete the queue and its exchange (Celery declares a direct exchange named like the queue)."""
        with self.app.connection_for_write() as conn:
            channel = conn.channel()
            try:
                channel.queue_delete(queue)
                channel.exchange_delete(queue)
                self._queues.discard(queue)
            except Exception as exc:  # noqa: BLE001 - retried in close()
                print(f"celery-rabbitmq: could not delete queue {queue}: {exc!r}", flush=True)
            finally:
                channel.close()

    def close(self) -> None:
        for queue in list(self._queues):
            self.cleanup(queue)
        if self._app is not None:
            self._app.close()
