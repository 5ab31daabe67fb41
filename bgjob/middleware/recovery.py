"""Recovery: exceptions and non-Result returns become Results, so no failure escapes the chain."""

from __future__ import annotations

import logging
import traceback

from ..handler import not_a_result
from ..hooks import mark_unhandled
from ..job import Job
from ..result import MoveToDlq, Result, Retry
from ..retry_policy import RetryPolicy
from .base import Handler

log = logging.getLogger("bgjob.worker")


class Recovery:
    """Turn a handler's exception (or a return that isn't a Result) into a Retry carrying the exception and its
    traceback, so no failure escapes the chain.

    Without a policy (the usual case) the Retry has no delay and the worker's settle step decides: backoff per
    the worker's RetryPolicy, or the DLQ with reason `max_attempts` on the last attempt. With its own
    `retry_policy`, Recovery decides itself: that policy's delay, or MoveToDlq(reason="max_attempts") once its
    max_attempts is reached. Safe to register outermost.
    """

    def __init__(self, retry_policy: RetryPolicy | None = None) -> None:
        self.retry_policy = retry_policy

    def __call__(self, job: Job, call_next: Handler) -> Result:
        try:
            result = call_next(job)
        except Exception as exc:  # noqa: BLE001 - that is the point
            # The exception itself goes on (error reporters such as Sentry see it), with its traceback.
            return self._failed(job, mark_unhandled(exc), "".join(traceback.format_exception(exc)))
        if isinstance(result, Result):
            return result
        return self._failed(job, mark_unhandled(not_a_result(job.type, result)), None)

    def _failed(self, job: Job, error: BaseException | str, trace: str | None) -> Result:
        policy = self.retry_policy
        if policy is None:
            return Retry(None, error=error, traceback=trace)
        if policy.exhausted(job.attempt):
            return MoveToDlq(error, reason="max_attempts", traceback=trace)
        return Retry(policy.delay_for(job.attempt), error=error, traceback=trace)
