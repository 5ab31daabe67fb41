"""Request ids of HTTP requests: which incoming ids to keep, and new ones.

The current request id itself lives in bgjob's context (`bgjob.current_request_id`): bgjob's send_job
attaches it to jobs, bgjob's RequestId middleware restores it while their handlers run, and
`bgjob.JobContextFilter` puts it on log records.
"""

from __future__ import annotations

from bgjob.context import clean_request_id, current_request_id, new_request_id
from bgjob.context import request_id as request_id_context

__all__ = ["clean_request_id", "get_request_id", "new_request_id", "request_id_context"]


def get_request_id() -> str | None:
    """The request id of the current request or job, if any."""
    return current_request_id.get()
