"""Recovery: exceptions and non-Result returns become Results, so no failure escapes the chain."""

from __future__ import annotations

import logging
import traceback

from ..job import Job
from ..result import MoveToDlq, Result, Retry
from ..retry import RetryPolicy
from . import Handler

log = logging.getLogger("bgjob.worker")


class Recovery:
    """Turn a handler's exception (or a return that isn't a Result) into Retry with the policy's backoff,
    or MoveToDlq(reason="max_attempts") on the last attempt; the traceback goes into the dead letter.

    Without a policy it follows the worker's (`job.max_attempts`). Safe to register outermost.
    """

    def __init__(self, retry_policy: RetryPolicy | None = None) -> None:
        self.retry_policy = retry_policy

    def __call__(self, job: Job, call_next: Handler) -> Result:
        try:
            result = call_next(job)
        except Exception as exc:  # noqa: BLE001 - that is the point
            return self._failed(job, f"{type(exc).__name__}: {exc}", "".join(traceback.format_exception(exc)))
        if isinstance(result, Result):
            return result
        return self._failed(job, f"handler for {job.type!r} returned {result!r}, not a bgjob.Result", None)

    def _failed(self, job: Job, error: str, trace: str | None) -> Result:
        max_attempts = self.retry_policy.max_attempts if self.retry_policy else job.max_attempts
        if max_attempts is not None and job.attempt >= max_attempts:
            return MoveToDlq(error, reason="max_attempts", traceback=trace)
        delay = self.retry_policy.delay_for(job.attempt) if self.retry_policy else None
        return Retry(delay, error=error, traceback=trace)
