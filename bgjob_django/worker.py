"""Running bgjob Workers for a Django project: one per queue, sharing the project's client."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Sequence
from types import ModuleType
from typing import Any

from django.conf import settings
from django.db import connections

import bgjob
from bgjob.logs import LogJobs
from bgjob.worker.signals import install_drain_signals

from .conf import Config, ScheduleSpec
from .job_middleware import CloseOldConnections
from .registry import Registry
from .relay import Relay
from .worker_ids import remember as remember_worker_ids
from .worker_ids import worker_id as worker_id  # the public name's old home

log = logging.getLogger("bgjob_django.worker")

#: Marks periodic jobs declared by bgjob_django, so ones removed from the project can be removed.
DECLARED_HEADER = "X-Bgjob-Django-Schedule"


def default_queues(config: Config) -> list[str]:
    """BGJOB["QUEUES"] plus the queues of every configured django.tasks BgjobBackend."""
    queues = list(config.queues)
    for backend in _task_backends():
        queues.extend(backend.bgjob_queues())
    return list(dict.fromkeys(queues))


def _task_backends() -> Iterable[Any]:
    if not getattr(settings, "TASKS", None):
        return []
    tasks = _tasks_module()
    if tasks is None:
        return []
    from django.tasks import task_backends

    return [b for b in task_backends.all() if isinstance(b, tasks.BgjobBackend)]


def _tasks_module() -> ModuleType | None:
    """`bgjob_django.tasks`, or None before Django 6.0 (no django.tasks there)."""
    try:
        import django.tasks  # noqa: F401 - only whether it exists
    except ImportError:
        return None
    from . import tasks

    return tasks


def serve_tasks(mux: Registry) -> None:
    """Make `mux` run django.tasks tasks: job types `task:<module path>` resolve to the task there.

    Does nothing before Django 6.0, where such job types stay unknown (dead-lettered as unknown_handler), nor
    when `mux` has that resolver already.
    """
    tasks = _tasks_module()
    if tasks is not None:
        mux.add_resolver(tasks.TASK_PREFIX, tasks.task_handler)


def middleware(config: Config, extra: Sequence[bgjob.Middleware] = ()) -> list[Any]:
    """The chain around every handler, outermost first: DB-connection hygiene; bgjob's Recovery, RequestId and
    LogJobs (as `bgjob worker` has them); `extra` (metrics); then BGJOB["MIDDLEWARE"]. Middleware and hooks:
    LogJobs is a WorkerHooks, which Worker(middleware=) takes too (bgjob.middleware.chain skips it)."""
    return [CloseOldConnections(), bgjob.Recovery(), bgjob.RequestId(), LogJobs(), *extra, *config.load_middleware()]


def declare_schedules(client: bgjob.Client, specs: Sequence[ScheduleSpec], queues: Sequence[str]) -> None:
    """Declare the project's periodic jobs, and remove those it declared before but declares no more.

    Only schedules on `queues` (the ones this worker serves) are pruned, and only ones bgjob_django declared
    (they carry its marker header): schedules made with `bgjob` or `client.schedule()` directly are left alone,
    and so is one redeclared that way since (a declaration replaces the whole schedule, marker included). The
    pruning removes exactly the revision it read, so a schedule redeclared meanwhile survives. A spec that moved
    to another queue is removed from its old one first, if bgjob_django declared it there; a schedule of the same
    name made by hand on another queue is left alone and the spec is skipped with an error in the log.
    """
    by_name: dict[str, list[bgjob.PeriodicJob]] = {}
    for existing in client.schedules():
        by_name.setdefault(existing.name, []).append(existing)
    wanted = {(s.queue, s.name) for s in specs}
    for spec in specs:
        elsewhere = [p for p in by_name.get(spec.name, []) if p.queue != spec.queue]
        if any(not p.headers.get(DECLARED_HEADER) for p in elsewhere):
            log.error("periodic job %r is not declared on queue %r: a schedule of that name made outside "
                      "bgjob_django exists on queue %r (names are unique across queues); unschedule it or rename "
                      "one of them", spec.name, spec.queue, elsewhere[0].queue)  # fmt: skip
            continue
        for old in elsewhere:
            if client.unschedule(old.name, queue=old.queue, revision=old.revision):
                log.info("periodic job %r moved from queue %r to %r", spec.name, old.queue, spec.queue)
        changed = client.schedule(spec.name, spec.cron, spec.job_type, spec.arg, queue=spec.queue, tz=spec.tz,
                                  headers={DECLARED_HEADER: "1"})  # fmt: skip
        if changed:
            log.info("periodic job %r: %s %r on queue %r (%s)", spec.name, spec.job_type, spec.cron, spec.queue,
                     spec.tz)  # fmt: skip
    for existing in [p for found in by_name.values() for p in found]:
        if existing.queue not in queues or not existing.headers.get(DECLARED_HEADER):
            continue
        if (existing.queue, existing.name) in wanted or existing.name in {s.name for s in specs}:
            continue
        if client.unschedule(existing.name, queue=existing.queue, revision=existing.revision):
            log.info("periodic job %r on queue %r is no longer declared: removed", existing.name, existing.queue)
        else:
            log.info("periodic job %r on queue %r changed since it was read: left alone", existing.name,
                     existing.queue)  # fmt: skip


class WorkerGroup:
    """Workers for several queues in one process, started and drained together; with `relay` (the default) also
    an outbox relay thread (bgjob_django.relay) on the default database, stopped with the workers."""

    def __init__(self, client: bgjob.Client, mux: Registry, queues: Sequence[str], config: Config,
                 concurrency: int | None = None, extra_middleware: Sequence[bgjob.Middleware] = (),
                 relay: bool = True, **worker_options: Any) -> None:  # fmt: skip
        if not queues:
            raise ValueError("a worker needs at least one queue")
        if isinstance(mux, Registry):
            serve_tasks(mux)  # before any worker fetches: the resolver is there when the first task arrives
        chain = middleware(config, extra_middleware)
        if config.time_limit is not None:  # BGJOB["TIME_LIMIT"], unless the caller gave its own
            worker_options.setdefault("time_limit", config.time_limit)
        self.workers = [
            bgjob.Worker(client, mux, queue=queue, concurrency=concurrency or config.concurrency, middleware=chain,
                         retry_policy=config.retry_policy(), grace_period=config.grace_period, **worker_options)
            for queue in queues
        ]
        remember_worker_ids({worker.queue: worker.id for worker in self.workers})
        self.relay = Relay(client) if relay else None
        self._threads: list[threading.Thread] = []
        self._stopped = threading.Event()

    def start(self) -> None:
        """Start every worker (returns once all are fetching) and the outbox relay."""
        for worker in self.workers:
            self._threads.append(worker.start())
        if self.relay is not None:
            self._threads.append(self.relay.start(self._stopped))

    def stop(self) -> None:
        """Stop fetching everywhere and let in-flight jobs (and the relay's round) drain; safe from any thread or a
        signal handler."""
        self._stopped.set()
        for worker in self.workers:
            worker.stop()

    def join(self, timeout: float | None = None) -> bool:
        """Wait for all workers to finish draining; returns whether they did."""
        for thread in self._threads:
            thread.join(timeout)
        return not any(t.is_alive() for t in self._threads)

    def run(self) -> bool:
        """Start, then block until SIGTERM/SIGINT (a second one exits at once) or stop(); then drain.

        Returns False if a worker died on its own (its error is logged) rather than being stopped.
        The database connections this thread opened while starting (the system checks may) are closed first: it
        runs no job, so they would stay open beside the pool's for the life of the process.
        """
        connections.close_all()
        restore = install_drain_signals(self.stop)
        healthy = True
        try:
            self.start()
            while not self._stopped.wait(0.5):
                if not all(t.is_alive() for t in self._threads):
                    log.error("a worker stopped by itself; stopping the others")
                    healthy = False
                    self.stop()
            self.join()
        finally:
            restore()
        return healthy


def serve_metrics(client: bgjob.Client, port: int, addr: str = "127.0.0.1") -> bgjob.Middleware:
    """Serve Prometheus metrics (job metrics and queue gauges) on http://addr:port/metrics (every other path is
    404); returns the Metrics middleware. addr defaults to 127.0.0.1 (this host only); "0.0.0.0" is the explicit
    choice to let other hosts scrape it.

    Raises ImportError without prometheus-client, OSError when the port is taken.
    """
    from bgjob.contrib.prometheus import PrometheusMetricStorage, start_metrics_server

    storage = PrometheusMetricStorage()
    start_metrics_server(port, addr, client=client)
    log.info("Prometheus metrics on http://%s:%d/metrics", addr, port)
    return bgjob.Metrics(storage)
