"""Where job handlers and periodic jobs declared in apps' `jobs.py` modules are collected."""

from __future__ import annotations

import threading
from collections.abc import Callable, Collection, Sequence
from datetime import timedelta
from typing import Any

import bgjob
from bgjob import job as jobmod
from bgjob.handler import HandlerFunc

from .conf import ScheduleSpec, schedule_error

#: What a resolver does: given the rest of a job type after its prefix, the handler for it, or None (unknown).
Resolver = Callable[[str], HandlerFunc | None]


class Registry(bgjob.Mux):
    """The project's Mux: handlers registered with @handler, plus job types found by resolvers.

    A resolver supplies the handlers of a whole family of job types by prefix, found when a job of that type
    first arrives (e.g. `bgjob_django.tasks` resolves `task:<module path>` to the django.tasks task there).
    Higher modules add resolvers (`add_resolver`); this module knows none of them.
    """

    def __init__(self) -> None:
        super().__init__()
        self._periodic: dict[str, ScheduleSpec] = {}
        self._types_of: dict[Callable[..., Any], str] = {}
        self._resolvers: dict[str, Resolver] = {}
        self._resolved: dict[str, HandlerFunc] = {}
        self._lock = threading.Lock()

    def handle(self, job_type: str, handler: Any, **options: Any) -> None:
        """`bgjob.Mux.handle` with every option it takes (sensitive, retry_policy, middleware, time_limit,
        singleton, partitioned, group), remembering the function's type for @periodic."""
        super().handle(job_type, handler, **options)
        try:
            self._types_of[handler] = job_type
        except TypeError:  # an unhashable handler object: @periodic cannot be stacked on it, nothing else changes
            pass

    def add_resolver(self, prefix: str, resolve: Resolver) -> None:
        """Let `resolve` supply the handler of every job type starting with `prefix` that has no handler.

        `resolve(rest)` gets the job type without `prefix` (a str) and returns the handler function, or None
        for an unknown job type. A handler it returns is kept (it is normally asked once per job type); None is
        not kept, so job types published by anyone cannot grow the registry, and a job type unknown now may be
        known later. It is called without the registry's lock held, and must never import or run anything the
        job type names (job types come from whoever can publish to a queue). Handlers registered with
        `handle` / @handler win over resolvers. Adding the same resolver for the same prefix again does
        nothing; raises bgjob.HandlerError if `prefix` is empty, not a str, or has another resolver already.
        """
        if not isinstance(prefix, str) or not prefix:
            raise bgjob.HandlerError(f"a resolver's prefix must be a non-empty str, got {prefix!r}")
        if not callable(resolve):
            raise bgjob.HandlerError(f"the resolver for prefix {prefix!r} must be callable, got {resolve!r}")
        with self._lock:
            existing = self._resolvers.get(prefix)
            if existing is not None and existing != resolve:
                raise bgjob.HandlerError(f"job types starting with {prefix!r} already have a resolver: {existing!r}")
            self._resolvers[prefix] = resolve
            self._resolved.clear()  # a longer prefix may now decide job types resolved before

    def get(self, job_type: str) -> HandlerFunc | None:
        found = super().get(job_type)
        if found is not None or not self._resolvers:
            return found
        with self._lock:
            known = self._resolved.get(job_type)
            resolvers = dict(self._resolvers)
        if known is not None:
            return known
        found = self._resolve(resolvers, job_type)
        if found is None:
            return None
        with self._lock:
            return self._resolved.setdefault(job_type, found)

    @staticmethod
    def _resolve(resolvers: dict[str, Resolver], job_type: str) -> HandlerFunc | None:
        # The longest matching prefix decides, so "task:" and "task:reports." can both have resolvers.
        for prefix in sorted(resolvers, key=len, reverse=True):
            if job_type.startswith(prefix):
                return resolvers[prefix](job_type[len(prefix) :])
        return None

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


def handler(job_type: str, *, mux: Registry | None = None, sensitive: Collection[str] | None = None,
            retry_policy: bgjob.RetryPolicy | None = None, middleware: Sequence[bgjob.Middleware] | None = None,
            time_limit: float | timedelta | None = None, singleton: bool = False, partitioned: bool = False,
            group: str | None = None) -> Callable[[Callable[..., Any]], Callable[..., Any]]:  # fmt: skip
    """Register the decorated function (or SyncHandlerAdapter class instance) as the handler of `job_type`.

    The options are `bgjob.Mux.handle`'s: `sensitive` (arg keys whose values are masked wherever bgjob shows
    or stores the job), `retry_policy` (a bgjob.RetryPolicy for this type instead of the worker's),
    `middleware` (a list of middleware around this handler only, inside the worker's), `time_limit`
    (seconds > 0 or a timedelta), `singleton`, `partitioned` and `group` (the worker group whose workers alone
    run it: `manage.py bgjob_worker --group NAME`; see docs/routing.md). Raises
    InvalidJob for a bad job type, HandlerError for a bad option (when the decorator is applied) or a duplicate
    type.
    """
    jobmod.validate_type(job_type)

    def register(fn: Callable[..., Any]) -> Callable[..., Any]:
        (registry if mux is None else mux).handle(job_type, fn, sensitive=sensitive, retry_policy=retry_policy,
                                                  middleware=middleware, time_limit=time_limit, singleton=singleton,
                                                  partitioned=partitioned, group=group)  # fmt: skip
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
