"""RequestId: every job has a request id, visible to its handler, its log lines and the jobs it sends."""

from __future__ import annotations

import dataclasses

from ..context import current_request_id
from ..job import Job
from ..result import Result
from .base import Handler


class RequestId:
    """Keep the producer's request id, else use the job id (the same on every attempt); expose it via
    `job.request_id` and the context, so log lines and the jobs the handler sends carry it."""

    def __call__(self, job: Job, call_next: Handler) -> Result:
        if not job.request_id:
            job = dataclasses.replace(job, request_id=job.id)
        token = current_request_id.set(job.request_id)
        try:
            return call_next(job)
        finally:
            current_request_id.reset(token)
