"""Handlers and the Mux that routes a job to one by its type."""

from __future__ import annotations

import reprlib
from collections.abc import Callable, Collection, Iterator
from typing import Protocol, runtime_checkable

from .errors import HandlerError, InvalidJob
from .job import Job, validate_sensitive, validate_type
from .result import Result

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


class Mux:
    """Routes jobs to handlers by job type; a type has exactly one handler."""

    def __init__(self) -> None:
        self._handlers: dict[str, HandlerFunc] = {}
        self._sensitive: dict[str, frozenset[str]] = {}

    def handle(self, job_type: str, handler: HandlerFunc | SyncHandlerAdapter, *,
               sensitive: Collection[str] | None = None) -> None:  # fmt: skip
        """Register `handler` (a function or a SyncHandlerAdapter) for `job_type`.

        `sensitive`: arg key names (a list of str, exact names, matched at any depth of the arg) whose values
        are sensitive for every job of this type, whatever its producer marked: the worker adds them to
        `job.sensitive`, so they are masked in bgjob's logs, dead letters, stored results' errors and Sentry.
        Raises InvalidJob for a bad job type, HandlerError for a duplicate type, a handler that is not
        callable or bad `sensitive` keys.
        """
        validate_type(job_type)
        try:
            keys = validate_sensitive(sensitive)
        except InvalidJob as exc:
            raise HandlerError(f"handler for {job_type!r}: {exc}") from exc
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
        if keys:
            self._sensitive[job_type] = keys

    def handler(self, job_type: str, *, sensitive: Collection[str] | None = None
                ) -> Callable[[HandlerFunc], HandlerFunc]:  # fmt: skip
        """Decorator form of `handle`: `@mux.handler("charge", sensitive=["card", "password"])`."""

        def register(fn: HandlerFunc) -> HandlerFunc:
            self.handle(job_type, fn, sensitive=sensitive)
            return fn

        return register

    def get(self, job_type: str) -> HandlerFunc | None:
        return self._handlers.get(job_type)

    def sensitive_keys(self, job_type: str) -> frozenset[str]:
        """The arg keys the handler of `job_type` marked sensitive (empty when none, or no such handler)."""
        return self._sensitive.get(job_type, frozenset())

    def types(self) -> list[str]:
        return sorted(self._handlers)

    def __contains__(self, job_type: object) -> bool:
        return job_type in self._handlers

    def __iter__(self) -> Iterator[str]:
        return iter(self.types())

    def __len__(self) -> int:
        return len(self._handlers)
