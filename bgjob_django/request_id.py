"""Request ids of HTTP requests: which incoming ids to keep, and new ones.

The current request id itself lives in bgjob's context (`bgjob.current_request_id`): bgjob's send_job
attaches it to jobs, bgjob's RequestId middleware restores it while their handlers run, and
`bgjob.JobContextFilter` puts it on log records.
"""

from __future__ import annotations

import re
import uuid

from bgjob.context import current_request_id
from bgjob.context import request_id as request_id_context

__all__ = ["clean_request_id", "get_request_id", "new_request_id", "request_id_context"]

#: What an incoming X-Request-ID may look like; anything else is replaced (it ends up in logs and headers).
_VALID = re.compile(r"[A-Za-z0-9._:@/+=-]{1,200}")


def get_request_id() -> str | None:
    """The request id of the current request or job, if any."""
    return current_request_id.get()


def new_request_id() -> str:
    return uuid.uuid4().hex


def clean_request_id(value: object) -> str | None:
    """`value` if it is a safe request id to keep, else None."""
    return value if isinstance(value, str) and _VALID.fullmatch(value) else None
