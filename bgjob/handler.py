"""Handlers and the Mux that routes a job to one by its type."""

from __future__ import annotations

import reprlib
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import TYPE_CHECKING, ParamSpec, Protocol, TypeVar, overload, runtime_checkable

from .errors import HandlerError, InvalidJob
from .job import Job, positive_seconds, validate_claim, validate_sensitive, validate_type
from .request_reply import RequestReplyHandler
from .result import Result
from .retry_policy import RetryPolicy

if TYPE_CHECKING:  # bgjob.middleware imports this module (Recovery uses not_a_result)
    import os

    from .external_process import ExternalProcess
    from .middleware.base import Middleware
    from .typed import TypedJob

P = ParamSpec("P")
R = TypeVar("R")

#: A plain function handler.
HandlerFunc = Callable[[Job], Result]


def not_a_result(job_type: str, value: object) -> HandlerError:
    """The error for a handler that returned `value`, which is not a bgjob.Result (not raised: a value to keep
    in the Failure or Retry that reports it)."""
    try:
        shown = reprlib.repr(value)
    except BaseException:  # noqa: BLE001 - a value whose repr fails is still not a Result
        shown = f"a {type(value).__name__}"
    what = "a Result bgjob cannot settle" if isinstance(value, Result) else "not a bgjob.Result"
    return HandlerError(f"handler for {job_type!r} returned {shown}, {what}: return bgjob.Complete(), Retry(...), "
                        "MoveToDlq(...) or Reschedule(...)")  # fmt: skip


@runtime_checkable
class SyncHandlerAdapter(Protocol):
    """A class-based handler."""

    def handle(self, job: Job) -> Result: ...


@dataclass(frozen=True, slots=True, kw_only=True)
class HandlerOptions:
    """What a handler declared about the jobs of its type, beside the function itself (`Mux.options`).

    - `sensitive`: arg keys whose values are masked for every job of this type (see `Mux.handle`).
    - `retry_policy`: this type's RetryPolicy, or None for the worker's; a job's own `max_attempts` (sent with
      it) still wins over its max_attempts.
    - `middleware`: middleware run around this handler only, inside the worker's global chain (the first
      listed runs outermost), as in choria asyncjobs' per-route middleware.
    - `time_limit`: seconds (a float > 0) the handler may run, or None for the worker's default; the worker
      enforces it (bgjob.worker.time_limit).
    - `singleton`: at most one job of this type runs at a time across every worker and process
      (bgjob.placement).
    - `partitioned`: jobs of this type sent with a `partition_key` run one at a time per key, in send order
      (bgjob.placement); a worker with such a handler serves the queue's partitions.
    - `group`: the worker group (ebind's worker groups) whose workers alone run this type: a
      `Worker(..., groups=[group])` (bgjob.placement); None: any default worker.

    Built by `Mux.handle` from its keyword arguments, which validates them (HandlerError).
    """

    sensitive: frozenset[str] = frozenset()
    retry_policy: RetryPolicy | None = None
    middleware: tuple[Middleware, ...] = ()
    time_limit: float | None = None
    singleton: bool = False
    partitioned: bool = False
    group: str | None = None


#: The options of a type registered without any (and of unknown types).
DEFAULT_OPTIONS = HandlerOptions()


def _options(job_type: str, sensitive: Collection[str] | None, retry_policy: RetryPolicy | None,
             middleware: Sequence[Middleware] | None,
             time_limit: float | timedelta | None) -> HandlerOptions:  # fmt: skip
    """Validated HandlerOptions for `job_type`; raises HandlerError naming the option at fault."""
    try:
        keys = validate_sensitive(sensitive)
    except InvalidJob as exc:
        raise HandlerError(f"handler for {job_type!r}: {exc}") from exc
    if retry_policy is not None and not isinstance(retry_policy, RetryPolicy):
        raise HandlerError(f"handler for {job_type!r}: retry_policy must be a bgjob.RetryPolicy or None, "
                           f"got {reprlib.repr(retry_policy)}")  # fmt: skip
    if middleware is None:
        chain: tuple[Middleware, ...] = ()
    elif isinstance(middleware, (str, bytes)) or not isinstance(middleware, Sequence):
        raise HandlerError(f"handler for {job_type!r}: middleware must be a list of middleware callables, "
                           f"got {reprlib.repr(middleware)}")  # fmt: skip
    else:
        chain = tuple(middleware)
        for mw in chain:
            if not callable(mw) or isinstance(mw, type):
                raise HandlerError(f"handler for {job_type!r}: middleware must be callables "
                                   f"(job, call_next) -> Result, got {reprlib.repr(mw)}")  # fmt: skip
    return HandlerOptions(sensitive=keys, retry_policy=retry_policy, middleware=chain,
                          time_limit=_time_limit(job_type, time_limit))  # fmt: skip


def validate_group(group: str) -> str:
    """A worker group's name (ebind's worker groups): a claim's rule (1-100 letters, digits, '_', '-', ':', '/',
    '='; no dots: it is a subject token); returns it. Raises InvalidJob naming the group."""
    try:
        return validate_claim(group)
    except InvalidJob:
        raise InvalidJob(f"invalid group {group!r}: use letters, digits, '_', '-', ':', '/' and '=' (e.g. 'reports' "
                         "or 'gpu/large'), at most 100 characters, no dots") from None  # fmt: skip


def time_limit_seconds(value: float | timedelta | None) -> float | None:
    """A time limit as seconds: an int or float > 0, or a timedelta; None stays None (no limit). The one reading
    of a time limit (handlers, workers, the CLI, Django's TIME_LIMIT).

    Raises ValueError for anything else (0, a negative, NaN, infinity, a bool, a str)."""
    return None if value is None else positive_seconds("time_limit", value)


def _time_limit(job_type: str, value: float | timedelta | None) -> float | None:
    try:
        return time_limit_seconds(value)
    except ValueError as exc:
        raise HandlerError(f"handler for {job_type!r}: {exc}") from None


class Mux:
    """Routes jobs to handlers by job type; a type has exactly one handler, with its HandlerOptions."""

    def __init__(self) -> None:
        self._handlers: dict[str, HandlerFunc] = {}
        self._options: dict[str, HandlerOptions] = {}

    def handle(self, job_type: str, handler: HandlerFunc | SyncHandlerAdapter, *,
               sensitive: Collection[str] | None = None, retry_policy: RetryPolicy | None = None,
               middleware: Sequence[Middleware] | None = None,
               time_limit: float | timedelta | None = None, singleton: bool = False,
               partitioned: bool = False, group: str | None = None) -> None:  # fmt: skip
        """Register `handler` (a function or a SyncHandlerAdapter) for `job_type`, with its options.

        - `sensitive`: arg key names (a list of str, exact names, matched at any depth of the arg) whose values
          are sensitive for every job of this type, whatever its producer marked: the worker adds them to
          `job.sensitive`, so they are masked in bgjob's logs, dead letters, stored results' errors and Sentry.
        - `retry_policy`: a RetryPolicy for this type instead of the worker's (max attempts, delays,
          non-retryable exceptions); a job sent with its own `max_attempts` keeps that limit.
        - `middleware`: a list of middleware (`mw(job, call_next) -> Result`) around this handler only, inside
          the worker's global middleware (asyncjobs' per-route middleware).
        - `time_limit`: seconds (int/float > 0) or a timedelta the handler may run; None: the worker's default.
        - `singleton`: True runs at most one job of this type at a time across every worker and process (from
          dagnats): the type's jobs go through a consumer of their own with `max_ack_pending=1`
          (bgjob.placement). Every worker serving the type must register it so.
        - `partitioned`: True for a type sent with `send_job(..., partition_key=)` (from dagnats): jobs of one key
          run one at a time in send order, keys in parallel; this worker then serves the queue's partitions
          (bgjob.placement). A failing job blocks its key until it succeeds or is dead-lettered.
        - `group`: a worker group's name (claim rules: letters, digits, `_ - : / =`, no dots; from ebind's worker
          groups): jobs of this type run only on a `Worker(..., groups=[group])`; a default worker that pulls one
          forwards it to the group's subject (bgjob.placement), where it waits until such a worker runs. Not with
          `singleton` or `partitioned`.

        Raises InvalidJob for a bad job type, HandlerError for a duplicate type, a handler that is not
        callable or a bad option (named in the message).
        """
        validate_type(job_type)
        options = _options(job_type, sensitive, retry_policy, middleware, time_limit)
        if not isinstance(singleton, bool):
            raise HandlerError(f"handler for {job_type!r}: singleton must be a bool, got {reprlib.repr(singleton)}")
        if not isinstance(partitioned, bool):
            raise HandlerError(f"handler for {job_type!r}: partitioned must be a bool, got "
                               f"{reprlib.repr(partitioned)}")  # fmt: skip
        if singleton and partitioned:
            raise HandlerError(f"handler for {job_type!r}: singleton and partitioned exclude each other")
        if singleton or partitioned:
            options = replace(options, singleton=singleton, partitioned=partitioned)
        if group is not None:
            try:
                validate_group(group)
            except InvalidJob as exc:
                raise HandlerError(f"handler for {job_type!r}: {exc}") from None
            if singleton or partitioned:
                raise HandlerError(f"handler for {job_type!r}: group= cannot be combined with "
                                   f"{'singleton' if singleton else 'partitioned'}=True: a grouped type's jobs go "
                                   "to their group's consumer, not to a one-slot lane")  # fmt: skip
            options = replace(options, group=group)
        if job_type in self._handlers:
            raise HandlerError(f"a handler for job type {job_type!r} is already registered")
        if isinstance(handler, SyncHandlerAdapter) and not isinstance(handler, type):
            fn: HandlerFunc = handler.handle
        elif callable(handler) and not isinstance(handler, type):
            fn = handler
        else:
            raise HandlerError(
                f"handler for {job_type!r} must be a function taking a Job or an object with "
                f"handle(job); got {handler!r}"
            )
        self._handlers[job_type] = fn
        if options != DEFAULT_OPTIONS:
            self._options[job_type] = options

    def handler(self, job_type: str, *, sensitive: Collection[str] | None = None,
                retry_policy: RetryPolicy | None = None, middleware: Sequence[Middleware] | None = None,
                time_limit: float | timedelta | None = None,
                singleton: bool = False, partitioned: bool = False,
                group: str | None = None) -> Callable[[HandlerFunc], HandlerFunc]:  # fmt: skip
        """Decorator form of `handle`, same options:
        `@mux.handler("charge", sensitive=["card"], retry_policy=RetryPolicy(max_attempts=3), time_limit=30)`."""

        def register(fn: HandlerFunc) -> HandlerFunc:
            self.handle(job_type, fn, sensitive=sensitive, retry_policy=retry_policy, middleware=middleware,
                        time_limit=time_limit, singleton=singleton, partitioned=partitioned,
                        group=group)  # fmt: skip
            return fn

        return register

    def request_reply(self, job_type: str, *, subject: str, timeout: float | timedelta = 30.0,
                      sensitive: Collection[str] | None = None, retry_policy: RetryPolicy | None = None,
                      middleware: Sequence[Middleware] | None = None, time_limit: float | timedelta | None = None,
                      singleton: bool = False, partitioned: bool = False,
                      group: str | None = None) -> None:  # fmt: skip
        """Register a request-reply handler for `job_type` (from choria asyncjobs): each job is sent as one NATS
        request to `subject`, where a service in any language answers it (bgjob.request_reply; the contract is
        docs/delegated.md's "Request-reply handlers").

        - `subject`: the service's NATS subject, exact (no `*` or `>` wildcards, no empty tokens or spaces), not
          one of NATS's own (`$JS.`, `$KV.`, `$SYS.`, any `$...`, `_INBOX.`). A Worker refuses to start
          (ConfigurationError) while a JetStream stream captures it: requests there would be stored, not answered.
        - `timeout`: seconds (int/float > 0) or a timedelta to wait for the reply (default 30); the wait is
          shortened to the time left before the job's deadline and its time limit. No reply in time, or no
          service on the subject, is a retryable failure (`bgjob.RequestFailed`), retried by the retry policy.
        - `sensitive`, `retry_policy`, `middleware`, `time_limit`, `singleton`, `partitioned`, `group`: as for
          `handle`; the worker's middleware, hooks and metrics see the job like any other.

        The request blocks the pool thread (or greenlet) running it, never the worker's event loop. Raises
        InvalidJob for a bad job type, HandlerError for a bad subject or timeout, a duplicate type or a bad option
        (named in the message).
        """
        validate_type(job_type)
        try:
            handler = RequestReplyHandler(subject, timeout, time_limit=_time_limit(job_type, time_limit))
        except ValueError as exc:
            raise HandlerError(f"request-reply handler for {job_type!r}: {exc}") from None
        self.handle(job_type, handler, sensitive=sensitive, retry_policy=retry_policy, middleware=middleware,
                    time_limit=time_limit, singleton=singleton, partitioned=partitioned, group=group)  # fmt: skip

    @overload
    def job(self, fn: Callable[P, R], /, *, name: str | None = None,
            aliases: Collection[str] = (), queue: str | None = None, retry_policy: RetryPolicy | None = None,
            time_limit: float | timedelta | None = None, sensitive: Collection[str] | None = None,
            middleware: Sequence[Middleware] | None = None) -> TypedJob[P, R]: ...  # fmt: skip

    @overload
    def job(self, fn: None = None, /, *, name: str | None = None,
            aliases: Collection[str] = (), queue: str | None = None, retry_policy: RetryPolicy | None = None,
            time_limit: float | timedelta | None = None, sensitive: Collection[str] | None = None,
            middleware: Sequence[Middleware] | None = None,
            ) -> Callable[[Callable[P, R]], TypedJob[P, R]]: ...  # fmt: skip

    def job(self, fn: Callable[P, R] | None = None, /, *, name: str | None = None,
            aliases: Collection[str] = (), queue: str | None = None, retry_policy: RetryPolicy | None = None,
            time_limit: float | timedelta | None = None, sensitive: Collection[str] | None = None,
            middleware: Sequence[Middleware] | None = None,
            ) -> TypedJob[P, R] | Callable[[Callable[P, R]], TypedJob[P, R]]:  # fmt: skip
        """Register a plain function as a typed job (`bgjob.typed`): `@mux.job` or `@mux.job(name=..., ...)`.

        Returns a `bgjob.typed.TypedJob[P, R]` of the function's parameters and return type (`@mux.job(...)`: a
        decorator returning one): calling it runs the function here; `fn.send(*args, **kwargs)` checks the
        call against the signature and type hints (InvalidJob naming the parameter, nothing published) and
        returns a `JobHandle`; `fn.options(queue=, delay=, deadline=, job_id=, max_attempts=, ...)` sets send
        options; `fn.s(...)` builds a workflow step. The worker decodes the arguments, calls the function and
        settles a plain return value as `Complete(<its JSON form>)`, a returned Result as it is.

        - `name`: the job type; default `<module>.<qualified name>` (a function in `__main__`, a lambda or a nested
          function needs `name=`). `aliases`: more job types the same function handles (a rename's old name).
        - `queue`: the queue `send` uses (default "default"; `options(queue=)` overrides it).
        - `retry_policy`, `time_limit`, `sensitive` (parameter names, sent by keyword so that they are masked),
          `middleware`: as for `handle`, for every name.

        Raises ConfigurationError when pydantic v2 is missing (`pip install 'bgjob[typed]'`), InvalidJob for a
        bad name, alias or queue, HandlerError for a name already registered, a function whose job type cannot be
        derived, a parameter type pydantic cannot encode, or a bad option.
        """
        from .typed import register  # the one upward import: a TypedJob sends through the client (ARCHITECTURE)

        def decorate(function: Callable[P, R]) -> TypedJob[P, R]:
            return register(self, function, name=name, aliases=aliases, queue=queue, retry_policy=retry_policy,
                            time_limit=time_limit, sensitive=sensitive, middleware=middleware)  # fmt: skip

        return decorate if fn is None else decorate(fn)

    def external_process(self, job_type: str, argv: Sequence[str], *, timeout: float | timedelta = 60,
                         env: Mapping[str, str] | None = None, cwd: str | os.PathLike[str] | None = None,
                         max_output: int = 256 * 1024, sensitive: Collection[str] | None = None,
                         retry_policy: RetryPolicy | None = None, middleware: Sequence[Middleware] | None = None,
                         time_limit: float | timedelta | None = None, group: str | None = None,
                         singleton: bool = False, partitioned: bool = False) -> ExternalProcess:  # fmt: skip
        """Run the jobs of `job_type` by an external program (from choria asyncjobs; `bgjob.external_process`).

        Each job starts `argv` with no shell, in a session and process group of its own, and writes the job to its
        stdin as one JSON object (`id`, `type`, `queue`, `arg`, `arg_encoding`, `attempt`, `request_id`,
        `deadline`, `timeout`); the job's data never goes into the arguments or the environment. Exit 0 is
        `Complete(value)` with stdout as the value (parsed as JSON when it is JSON, else the text as written,
        trailing newline included); exit 75 (EX_TEMPFAIL) is `Retry()` by the retry policy; exit 65 (EX_DATAERR)
        is `MoveToDlq` with the end of stderr as the error; any other status, a signal or a timeout raises
        `ExternalProcessFailed` (retried by the retry policy, stderr's end in the error). The handler runs under
        the worker's and its own middleware, hooks and metrics like any other.

        - `argv`: a list (or tuple) of str, configured in code or settings only: the program, then its fixed
          arguments. argv[0] is an absolute path, or a name looked up on PATH now (and kept as its absolute path).
        - `timeout`: seconds (int/float > 0) or a timedelta a run may take, shortened to the job's deadline; past
          it the whole process group gets SIGTERM, then SIGKILL 2 s later, and the program is reaped.
        - `env`: str -> str variables added to the program's minimal environment: only PATH, HOME, LANG,
          LC_ALL, LC_CTYPE, TZ and TMPDIR are inherited from the worker, so its secrets (BGJOB_* settings, NATS
          credentials, database URLs) reach the program only when listed here.
        - `cwd`: the program's working directory (an existing directory), or None for the worker's.
        - `max_output`: bytes (int >= 1) kept of stdout and of stderr each, 256 KiB by default
          (`bgjob.external_process.DEFAULT_MAX_OUTPUT`); the rest is read and discarded, and the value or error
          says so. The value never takes more than 512 KiB stored (`MAX_VALUE_BYTES`), so it always fits in a
          result: longer output is cut, with the note.
        - `sensitive`, `retry_policy`, `middleware`, `time_limit`, `group`, `singleton`, `partitioned`: as for
          `handle`. A time limit (this one, else the worker's default) shortens the run too: when it fires, the
          process group is killed the same way.

        Returns the registered `bgjob.external_process.ExternalProcess`. Raises InvalidJob for a bad job type,
        HandlerError for a duplicate type or a bad option (named in the message: argv not a list of str, a
        program that is not an absolute path or not found on PATH or not executable, a bad env, cwd, timeout or
        max_output).
        """
        from .external_process import external_process_handler

        return external_process_handler(self, job_type, argv, timeout=timeout, env=env, cwd=cwd,
                                        max_output=max_output, sensitive=sensitive, retry_policy=retry_policy,
                                        middleware=middleware, time_limit=time_limit, group=group,
                                        singleton=singleton, partitioned=partitioned)  # fmt: skip

    def get(self, job_type: str) -> HandlerFunc | None:
        return self._handlers.get(job_type)

    def options(self, job_type: str) -> HandlerOptions:
        """The HandlerOptions `job_type` was registered with (the defaults for a type without a handler)."""
        return self._options.get(job_type, DEFAULT_OPTIONS)

    def sensitive_keys(self, job_type: str) -> frozenset[str]:
        """The arg keys the handler of `job_type` marked sensitive (empty when none, or no such handler)."""
        return self.options(job_type).sensitive

    def types(self) -> list[str]:
        return sorted(self._handlers)

    def request_reply_subjects(self) -> dict[str, str]:
        """The subject of each request-reply handler (`request_reply`), by job type: what a Worker checks no
        JetStream stream captures before it starts (bgjob.long_running.check_request_subjects)."""
        found = {job_type: getattr(fn, "__self__", None) for job_type, fn in self._handlers.items()}
        return {job_type: handler.subject for job_type, handler in sorted(found.items())
                if isinstance(handler, RequestReplyHandler)}  # fmt: skip

    def __contains__(self, job_type: object) -> bool:
        return job_type in self._handlers

    def __iter__(self) -> Iterator[str]:
        return iter(self.types())

    def __len__(self) -> int:
        return len(self._handlers)
