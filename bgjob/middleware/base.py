"""The middleware protocol: callables wrapped around every handler call, and the chain that links them."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Protocol

from ..job import Job
from ..result import Result

Handler = Callable[[Job], Result]


class Middleware(Protocol):
    """`middleware(job, call_next) -> Result`; call `call_next(job)` to run the rest of the chain."""

    def __call__(self, job: Job, call_next: Handler) -> Result: ...


def chain(middleware: Sequence[Middleware], handler: Handler) -> Handler:
    """Wrap `handler` so the first middleware listed runs outermost; items that are not callable (hooks-only
    objects such as bgjob.logs.LogJobs) are skipped."""
    wrapped = handler
    for mw in reversed(middleware):
        if callable(mw):
            wrapped = functools.partial(mw, call_next=wrapped)
    return wrapped
