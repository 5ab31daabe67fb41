"""Where job handlers and periodic jobs declared in apps' `jobs.py` modules are collected."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import bgjob
from bgjob import job as jobmod
from bgjob.handler import HandlerFunc

from .conf import ScheduleSpec, schedule_error

#: Job types of django.tasks tasks start with this, followed by the task function's module path.
TASK_PREFIX = "task:"


class Registry(bgjob.Mux):
    """The project's Mux: handlers registered with @handler, plus django.tasks tasks by module path."""

    def __init__(self) -> None:
        super().__init__()
        self._periodic: dict[str, ScheduleSpec] = {}
        self._types_of: dict[Callable[..., Any], str] = {}
        self._tasks: dict[str, HandlerFunc | None] = {}
        self._lock = threading.Lock()

    def handle(self, job_type: str, handler: Any) -> None:
        super().handle(job_type, handler)
        try:
            self._types_of[handler] = job_type
        except TypeError:  # an unhashable handler object: @periodic cannot be stacked on it, nothing else changes
            pass

    def get(self, job_type: str) -> HandlerFunc | None:
        found = super().get(job_type)
        if found is None and job_type.startswith(TASK_PREFIX):
            with self._lock:
                if job_type not in self._tasks:
                    try:
                        from .tasks import task_handler
                    except ImportError:  # django.tasks exists from Django 6.0 on: an unknown job type here
                        self._tasks[job_type] = None
                    else:
                        self._tasks[job_type] = task_handler(job_type[len(TASK_PREFIX) :])
                found = self._tasks[job_type]
        return found

    def add_periodic(self, spec: ScheduleSpec) -> None:
        error = schedule_error(spec)
        if error:
            raise bgjob.InvalidSchedule(f"periodic job {spec.name!r}: {error}")
        existing = self._periodic.get(spec.name)
        if existing is not None and existing != spec:
            raise bgjob.HandlerError(f"periodic job {spec.name!r} is declared twice, differently")
        self._periodic[spec.name] = spec

    def periodic_jobs(self) -> list[ScheduleSpec]:
        return list(self._periodic.values())

    def type_of(self, fn: Callable[..., Any]) -> str | None:
        return self._types_of.get(fn)


#: The project-wide registry that `manage.py bgjob_worker` runs.
registry = Registry()


def handler(job_type: str, *, mux: Registry | None = None) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register the decorated function (or SyncHandlerAdapter class instance) as the handler of `job_type`."""
    jobmod.validate_type(job_type)

    def register(fn: Callable[..., Any]) -> Callable[..., Any]:
        (registry if mux is None else mux).handle(job_type, fn)
        return fn

    return register


def periodic(
    cron: str,
    *,
    name: str | None = None,
    arg: Any = None,
    queue: str = "default",
    tz: str = "UTC",
    job_type: str | None = None,
    mux: Registry | None = None,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Run the decorated handler at every tick of `cron` (declared on the server when a worker starts).

    On a function already registered with @handler, the schedule enqueues that job type; otherwise the
    function is registered as the handler of `job_type` (default: the schedule's name, default: the
    function's name).
    """
    bgjob.ByCron(cron, tz)  # fail at import time, not at worker start

    def register(fn: Callable[..., Any]) -> Callable[..., Any]:
        target = registry if mux is None else mux
        schedule_name = name or fn.__name__
        kind = target.type_of(fn)
        if kind is None:
            kind = job_type or schedule_name
            target.handle(kind, fn)
        elif job_type is not None and job_type != kind:
            raise bgjob.HandlerError(f"{fn.__name__} handles {kind!r}; @periodic(job_type={job_type!r}) disagrees")
        target.add_periodic(ScheduleSpec(name=schedule_name, cron=cron, job_type=kind, arg=arg, queue=queue, tz=tz))
        return fn

    return register
