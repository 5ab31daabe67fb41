r"""The worker's public hook protocol: what a worker tells observers about each job, and the real fate of it.

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

Scrubbing: every error text and traceback of a failed job passes through the scrub before the worker logs it,
stores it in a dead letter or a stored result, or reports it in a `Fate`. By default the values under the
job's sensitive arg keys (`job.sensitive`: the producer's `sensitive=` plus the handler's) and the values of
its sensitive headers (Authorization, *token*, ..., `Settings.sensitive_headers`) are replaced by
`bgjob.redaction.MASK`. `WorkerHooks.scrub(text, job) -> str` masks what bgjob cannot know:

    class NoEmails(bgjob.WorkerHooks):
        def scrub(self, text, job):
            return re.sub(r"[\w.+-]+@[\w-]+\.[\w.]+", bgjob.redaction.MASK, text)

Each hooks object's `scrub` runs after the default one, in order; one that raises (or returns no str) is
logged and skipped: the text keeps the default scrub, and the job is settled as it would be without it.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from .redaction import scrub_text, secret_texts

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
    `max_attempts`, `decode`) and for HANDED_BACK (`drain`, `grace_period`, `settle_failed`, `lease_lapsed`: a
    singleton's or partition's run left unsettled, its redelivered copy settles it), `error` for
    DEAD_LETTERED, for a RETRY_SCHEDULED after a failure and for a HANDED_BACK after a failure, `traceback`
    with `error` when the failure has one. `error` and `traceback` of a failed job are scrubbed (see the module
    docstring): exactly what the dead letter and the stored result hold.
    """

    kind: FateKind
    delay: float | None = None
    at: datetime | None = None
    reason: str | None = None
    error: str | None = None
    traceback: str | None = None

    @classmethod
    def acked(cls) -> Fate:
        return _ACKED

    @classmethod
    def retry_scheduled(cls, delay: float, at: datetime | None = None, error: str | None = None,
                        traceback: str | None = None) -> Fate:  # fmt: skip
        return cls(FateKind.RETRY_SCHEDULED, delay=delay, at=at, error=error, traceback=traceback)

    @classmethod
    def dead_lettered(cls, reason: str, error: str | None = None, traceback: str | None = None) -> Fate:
        return cls(FateKind.DEAD_LETTERED, reason=reason, error=error, traceback=traceback)

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
        exc.__bgjob_unhandled__ = True  # type: ignore[attr-defined]  # a mark set on the exception object
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

    def scrub(self, text: str, job: Job) -> str:
        """Return `text` (an error message or a formatted traceback of `job`'s failure, already scrubbed of the
        job's sensitive values) with whatever else must never be logged or stored replaced, e.g. by
        `bgjob.redaction.MASK`. Called in the handler's thread or on the event-loop thread, possibly more than
        once for one text (it must be quick, and idempotent). The default returns `text` as it is."""
        return text


_global_hooks: list[WorkerHooks] = []
#: bumped by register_hooks and unregister_hooks: a HookSet's per-method lists are made again after a change.
_global_generation = 0


def register_hooks(hooks: WorkerHooks) -> None:
    """Add `hooks` to every Worker in this process, current and future (integrations such as Sentry use it).

    Registering the same object twice has no effect. Raises TypeError for anything but a WorkerHooks.
    """
    if not isinstance(hooks, WorkerHooks):
        raise TypeError(f"register_hooks needs a bgjob.WorkerHooks instance, got {hooks!r}")
    global _global_generation
    if not any(h is hooks for h in _global_hooks):
        _global_hooks.append(hooks)
        _global_generation += 1


def unregister_hooks(hooks: WorkerHooks) -> None:
    """Remove hooks added with register_hooks (nothing happens if they were not)."""
    global _global_generation
    _global_hooks[:] = [h for h in _global_hooks if h is not hooks]
    _global_generation += 1


class HookSet:
    """The hooks one worker calls: its own, then the process-wide ones; a failing hook is logged, not raised."""

    def __init__(self, hooks: Iterable[Any], sensitive_headers: Iterable[str] = ()) -> None:
        self._own = [h for h in hooks if isinstance(h, WorkerHooks)]
        #: Settings.sensitive_headers: header names (or globs) whose values the default scrub masks too.
        self.sensitive_headers = tuple(sensitive_headers)
        #: per hook method name, the (hooks, bound method) pairs that do something (see `_callees`), and the
        #: generation of the process-wide hooks they were made for.
        self._callees: dict[str, tuple[tuple[WorkerHooks, Any], ...]] = {}
        self._generation = -1

    def __iter__(self) -> Iterator[WorkerHooks]:
        yield from self._own
        yield from (h for h in _global_hooks if not any(h is o for o in self._own))

    def __bool__(self) -> bool:
        """Whether any hooks would be called (process-wide ones may be registered at any time)."""
        return bool(self._own or _global_hooks)

    def scrub(self, text: str | None, job: Job | None) -> str | None:
        """`text` (an error or a traceback of `job`'s failure) with the job's sensitive arg values and header
        values replaced by MASK, then passed through every hooks object's `scrub`; None and "" are returned as
        they are. A `scrub` that raises or returns no str is logged and skipped; never raises."""
        if not text or job is None:
            return text
        try:
            text = scrub_text(text, secret_texts(job.arg, job.sensitive, job.headers, self.sensitive_headers))
        except Exception:  # a job's odd arg must not stop its settlement
            log.exception("bgjob: could not scrub the error of job %s; it is kept out", job.id)
            return "<error text withheld: it could not be scrubbed>"
        assert text is not None
        for hooks in self:
            if type(hooks).scrub is WorkerHooks.scrub:
                continue
            try:
                scrubbed = hooks.scrub(text, job)
                if not isinstance(scrubbed, str):
                    raise TypeError(f"scrub returned {type(scrubbed).__name__}, not a str")
            except BaseException:
                log.exception("bgjob hook %s.scrub failed on job %s; its default scrub is kept", type(hooks).__name__,
                              job.id)  # fmt: skip
                continue
            text = scrubbed
        return text

    def _callees_of(self, name: str) -> tuple[tuple[WorkerHooks, Any], ...]:
        """The hooks whose `name` method is their own (WorkerHooks' default does nothing), with that method bound;
        made once per method and again when process-wide hooks were registered or unregistered since."""
        if self._generation != _global_generation:
            self._callees, self._generation = {}, _global_generation
        callees = self._callees.get(name)
        if callees is None:
            default = getattr(WorkerHooks, name, None)
            callees = self._callees[name] = tuple(
                (hooks, getattr(hooks, name)) for hooks in self
                if name in getattr(hooks, "__dict__", ()) or getattr(type(hooks), name, None) is not default
            )  # fmt: skip
        return callees

    def call(self, name: str, *args: Any) -> None:
        """Call every hooks object's `name(*args)`: those that override it (the hot path of a worker whose hooks
        do nothing there calls nothing)."""
        callees = self._callees.get(name) if self._generation == _global_generation else None
        if callees is None:
            callees = self._callees_of(name)
        for hooks, method in callees:
            try:
                method(*args)
            except BaseException:
                # loop (a SystemExit or KeyboardInterrupt raised on it would end the whole runtime)
                log.exception("bgjob hook %s.%s failed", type(hooks).__name__, name)
