"""The job systems under test, one module each, behind one small interface (driver side and worker side)."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from ..env import Context

#: name -> "module:class"; the order is the order of the tables.
SYSTEMS = {
    "bgjob": "bgjob_sys:Bgjob",
    "bgjob+events": "bgjob_sys:BgjobEvents",
    "nats-py": "natspy_sys:RawNats",
    "nats-py+headers": "natspy_sys:RawNatsHeaders",
    "celery-redis": "celery_sys:CeleryRedis",
    "celery-rabbitmq": "celery_sys:CeleryRabbitMQ",
    "rq-simple": "rq_sys:RQSimple",
    "rq-fork": "rq_sys:RQFork",
    "dramatiq-redis": "dramatiq_sys:DramatiqRedis",
    "huey-redis": "huey_sys:HueyRedis",
    "taskiq-nats": "taskiq_sys:TaskiqNats",
}

OnJob = Callable[[Any], None]


class System:
    """A job system: how to send the no-op job (driver side) and how to run a worker for it (worker side).

    The job is the same everywhere: a function taking one small dict and doing nothing but
    `on_job(arg)` (counting, and latency when the dict carries the send time `t`).
    """

    name = ""
    #: how it is configured, for RESULTS.md.
    config = ""
    #: whether `bulk()` is the library's own bulk enqueue.
    has_bulk = False
    #: jobs/s at which the paced end-to-end latency run is still far below capacity.
    paced_rate = 500.0
    #: scale of the job counts for this system (RQ's fork-per-job worker needs fewer).
    scale = 1.0

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    # -- driver side -------------------------------------------------------------------------------
    def check(self) -> None:
        """Raise env.Unavailable(reason) when this system cannot run here."""

    def producer(self, queue: str) -> Callable[[dict[str, Any]], None]:
        """A thread-safe function that enqueues one job with the given arg and returns once it is accepted."""
        raise NotImplementedError

    def bulk(self, queue: str, args: list[dict[str, Any]]) -> None:
        """Enqueue many jobs at once (the library's bulk API if it has one, else one by one)."""
        send = self.producer(queue)
        for arg in args:
            send(arg)

    def fill(self, queue: str, n: int) -> None:
        """Put n jobs on the queue as fast as the library allows (not measured)."""
        for start in range(0, n, 10_000):
            self.bulk(queue, [{"i": i} for i in range(start, min(n, start + 10_000))])

    def cleanup(self, queue: str) -> None:
        """Remove the queue and everything the library created for it."""

    def close(self) -> None:
        """Release the driver's connections."""

    # -- worker side (in the worker process) ---------------------------------------------------------
    def serve(self, queue: str, concurrency: int, on_job: OnJob, ready: Callable[[], None]) -> None:
        """Run a worker for `queue` until the process is terminated; call `ready()` once it consumes."""
        raise NotImplementedError


def load_system(name: str, ctx: Context) -> System:
    module_name, _, cls = SYSTEMS[name].partition(":")
    module = importlib.import_module(f"{__name__}.{module_name}")
    return getattr(module, cls)(ctx)
