"""RequestId: every job has a request id, visible to its handler, its log lines and the jobs it sends."""

from __future__ import annotations

import dataclasses
import uuid

from ..context import current_request_id
from ..job import Job
from ..result import Result
from . import Handler


class RequestId:
    """Keep the producer's request id or make one; expose it via `job.request_id` and the context."""

    def __call__(self, job: Job, call_next: Handler) -> Result:
        if not job.request_id:
            job = dataclasses.replace(job, request_id=uuid.uuid4().hex)
        token = current_request_id.set(job.request_id)
        try:
            return call_next(job)
        finally:
            current_request_id.reset(token)
