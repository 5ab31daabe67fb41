"""The worker's public hook protocol: what a worker tells observers about each job, and the real fate of it.

The worker's settle module is the only place that decides and performs a job's JetStream operation; it then
reports what actually happened as a `Fate`. Metrics, logging, Sentry and anything a user writes subclass
`WorkerHooks` and override the methods they need (Dramatiq's middleware hooks are the model). None of them
predicts a fate from `job.max_attempts`, and none can change one: an exception raised by a hook is logged and
counted, never passed on.

    class Audit(bgjob.WorkerHooks):
        def on_settled(self, job, outcome, fate):
            if fate.kind is bgjob.FateKind.DEAD_LETTERED:
                notify_ops(job.id, fate.reason)

    bgjob.Worker(client, mux, hooks=[Audit()])

Threads: `on_job_start` and `on_job_end` run in the thread (or greenlet) that runs the handler, around the
middleware chain; `on_settled` and `on_internal_error` run on the worker's event-loop thread once the
JetStream operation is done, so they must be quick and must not block (hand slow work to a queue).
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .job import Job
    from .result import Result

log = logging.getLogger("bgjob.worker")


@dataclass(frozen=True, slots=True)
class Failure:
    """A handler raised, returned something that is not a Result, or the job never reached a handler.

    `error` is one line of text ("ValueError: bad input"); `traceback` the formatted traceback when there is
    one; `exception` the exception object itself when the handler raised it (Recovery keeps it in the Retry or
    MoveToDlq it returns instead).
    """

    error: str
    traceback: str | None = None
    exception: BaseException | None = None


class FateKind(enum.StrEnum):
    """What the worker did with a delivered job: exactly one of these per delivery."""

    #: acknowledged: the job is done (Complete), and removed from its queue.
    ACKED = "acked"
    #: the job runs again after `Fate.delay` seconds (a nak with delay, or a server-side retry schedule).
    RETRY_SCHEDULED = "retry_scheduled"
    #: stored in the dead-letter queue (PubAck received), then termed; `Fate.reason` says why.
    DEAD_LETTERED = "dead_lettered"
    #: the next run was published as a server-side schedule due at `Fate.at`, then this delivery was acked.
    RESCHEDULED = "rescheduled"
    #: given back to JetStream unsettled (drain, or a settle step failed): it is delivered again.
    HANDED_BACK = "handed_back"


@dataclass(frozen=True, slots=True)
class Fate:
    """What actually happened to one delivery, as reported to `WorkerHooks.on_settled`.

    `delay` (seconds) is set for RETRY_SCHEDULED, `at` (aware UTC datetime) for RESCHEDULED and for retries
    that went through a server-side schedule, `reason` for DEAD_LETTERED (a DLQ reason such as `handler`,
    `max_attempts`, `decode`) and for HANDED_BACK (`drain`, `grace_period`, `settle_failed`), `error` for
    DEAD_LETTERED and for a HANDED_BACK after a failure.
    """

    kind: FateKind
    delay: float | None = None
    at: datetime | None = None
    reason: str | None = None
    error: str | None = None

    @classmethod
    def acked(cls) -> Fate:
        return _ACKED

    @classmethod
    def retry_scheduled(cls, delay: float, at: datetime | None = None) -> Fate:
        return cls(FateKind.RETRY_SCHEDULED, delay=delay, at=at)

    @classmethod
    def dead_lettered(cls, reason: str, error: str | None = None) -> Fate:
        return cls(FateKind.DEAD_LETTERED, reason=reason, error=error)

    @classmethod
    def rescheduled(cls, at: datetime) -> Fate:
        return cls(FateKind.RESCHEDULED, at=at)

    @classmethod
    def handed_back(cls, reason: str, error: str | None = None) -> Fate:
        return cls(FateKind.HANDED_BACK, reason=reason, error=error)

    def __str__(self) -> str:
        detail = self.reason or (f"{self.delay:.3g}s" if self.delay is not None else None)
        return f"{self.kind.value}({detail})" if detail else self.kind.value


_ACKED = Fate(FateKind.ACKED)


def mark_unhandled(exc: BaseException) -> BaseException:
    """Note that `exc` escaped the handler (it was raised, not returned in a Result); returns it.

    The worker does this for the Failure it makes of a raise, and Recovery for the Retry it makes of one, so
    error reporters can tell a crash from an error the handler chose to return."""
    try:
        exc.__bgjob_unhandled__ = True  # type: ignore[attr-defined]
    except AttributeError:  # an exception type without a __dict__: it then counts as handled
        pass
    return exc


def is_unhandled(exc: BaseException) -> bool:
    """Whether `exc` escaped a handler (see mark_unhandled)."""
    return getattr(exc, "__bgjob_unhandled__", False) is True


def exception_of(outcome: Result | Failure) -> BaseException | None:
    """The exception behind a failed outcome, if it carries one (a Failure from a raise, or a Retry/MoveToDlq
    whose error is an exception — as Recovery makes them): for error reporters."""
    if isinstance(outcome, Failure):
        return outcome.exception
    error = getattr(outcome, "error", None)
    return error if isinstance(error, BaseException) else None


class WorkerHooks:
    """Override the methods you need; the defaults do nothing. See the module docstring for threads.

    A hook object that is also middleware (a callable in `Worker(middleware=...)`, like `bgjob.Metrics`) is
    called as both; one given in `Worker(hooks=...)` or `bgjob.register_hooks(...)` only as hooks.
    """

    def on_job_start(self, job: Job) -> None:
        """A delivery is about to run its middleware chain and handler (in the handler's thread)."""

    def on_job_end(self, job: Job, outcome: Result | Failure) -> None:
        """The handler (and chain) returned `outcome` (in the handler's thread); its fate is not decided yet."""

    def on_settled(self, job: Job, outcome: Result | Failure, fate: Fate) -> None:
        """The JetStream operation for this delivery is done and `fate` is what happened (event-loop thread).

        Called for every delivery, including jobs that never reached a handler (unknown type, undecodable
        body, bad signature, past their attempts): then `outcome` is a Failure and `job.arg` the raw body.
        """

    def on_internal_error(self, error: BaseException | str) -> None:
        """The worker could not decode, settle or record a job, or a lease was lost (event-loop thread)."""


_global_hooks: list[WorkerHooks] = []


def register_hooks(hooks: WorkerHooks) -> None:
    """Add `hooks` to every Worker in this process, current and future (integrations such as Sentry use it).

    Registering the same object twice has no effect. Raises TypeError for anything but a WorkerHooks.
    """
    if not isinstance(hooks, WorkerHooks):
        raise TypeError(f"register_hooks needs a bgjob.WorkerHooks instance, got {hooks!r}")
    if not any(h is hooks for h in _global_hooks):
        _global_hooks.append(hooks)


def unregister_hooks(hooks: WorkerHooks) -> None:
    """Remove hooks added with register_hooks (nothing happens if they were not)."""
    _global_hooks[:] = [h for h in _global_hooks if h is not hooks]


class HookSet:
    """The hooks one worker calls: its own, then the process-wide ones; a failing hook is logged, not raised."""

    def __init__(self, hooks: Iterable[Any]) -> None:
        self._own = [h for h in hooks if isinstance(h, WorkerHooks)]

    def __iter__(self) -> Iterator[WorkerHooks]:
        yield from self._own
        yield from (h for h in _global_hooks if not any(h is o for o in self._own))

    def __bool__(self) -> bool:
        """Whether any hooks would be called (process-wide ones may be registered at any time)."""
        return bool(self._own or _global_hooks)

    def call(self, name: str, *args: Any) -> None:
        if not self._own and not _global_hooks:  # the hot path of a worker without hooks: nothing to call
            return
        for hooks in self:
            try:
                getattr(hooks, name)(*args)
            except BaseException:
                # loop (a SystemExit or KeyboardInterrupt raised on it would end the whole runtime)
                log.exception("bgjob hook %s.%s failed", type(hooks).__name__, name)
