"""Context of the code running now: the job being handled and the request id to propagate."""

from __future__ import annotations

import contextlib
import logging
import re
import uuid
from collections.abc import Iterator
from contextvars import ContextVar
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .job import Job

#: The job whose handler runs in this thread (or greenlet), if any.
current_job: ContextVar[Job | None] = ContextVar("bgjob_current_job", default=None)
#: The request id jobs sent from here carry (set by RequestId middleware and web middleware).
current_request_id: ContextVar[str | None] = ContextVar("bgjob_request_id", default=None)


#: What an incoming X-Request-ID may look like; anything else is replaced (it ends up in logs and headers).
_VALID_REQUEST_ID = re.compile(r"[A-Za-z0-9._:@/+=-]{1,200}")


def new_request_id() -> str:
    """A new request id: 32 hex digits (a uuid4), for a request that came without a usable one."""
    return uuid.uuid4().hex


def clean_request_id(value: object) -> str | None:
    """`value` if it is a safe request id to keep (1 to 200 of `A-Za-z0-9._:@/+=-`), else None: web middleware
    (bgjob_django's, bgjob.contrib.flask's) keeps an incoming `X-Request-ID` only when this accepts it."""
    return value if isinstance(value, str) and _VALID_REQUEST_ID.fullmatch(value) else None


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
