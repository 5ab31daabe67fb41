"""Context of the code running now: the job being handled and the request id to propagate."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from contextvars import ContextVar
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .job import Job

#: The job whose handler runs in this thread (or greenlet), if any.
current_job: ContextVar[Job | None] = ContextVar("bgjob_current_job", default=None)
#: The request id jobs sent from here carry (set by RequestId middleware and web middleware).
current_request_id: ContextVar[str | None] = ContextVar("bgjob_request_id", default=None)


@contextlib.contextmanager
def request_id(value: str | None) -> Iterator[None]:
    """Jobs sent inside this block carry `value` as their request id."""
    token = current_request_id.set(value)
    try:
        yield
    finally:
        current_request_id.reset(token)


class JobContextFilter(logging.Filter):
    """Adds `request_id`, `job_id` and `job_type` to every log record ("-" outside a job).

    Install it on a handler: `handler.addFilter(bgjob.JobContextFilter())`, then use
    `%(request_id)s %(job_id)s %(job_type)s` in the format.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        job = current_job.get()
        # Ids given with extra= (log lines written outside the job's thread) win.
        if getattr(record, "request_id", None) is None:
            record.request_id = current_request_id.get() or (job.request_id if job else None) or "-"
        if getattr(record, "job_id", None) is None:
            record.job_id = job.id if job else "-"
        if getattr(record, "job_type", None) is None:
            record.job_type = job.type if job else "-"
        return True
