"""Metrics: one observation per handler call, through a MetricStorage (Prometheus, statsd, ...)."""

from __future__ import annotations

import time
from typing import Protocol, runtime_checkable

from ..job import Job
from ..result import Complete, MoveToDlq, Reschedule, Result, Retry
from . import Handler


@runtime_checkable
class MetricStorage(Protocol):
    """Where Metrics records what happened; bgjob.contrib.prometheus implements it."""

    def observe_execute_duration(self, queue: str, job_type: str, seconds: float) -> None: ...
    def inc_retry_count(self, queue: str, job_type: str) -> None: ...
    def inc_dlq_count(self, queue: str, job_type: str) -> None: ...
    def inc_success_count(self, queue: str, job_type: str) -> None: ...
    def inc_internal_error_count(self) -> None: ...


class Metrics:
    """Times each handler call and counts its outcome: success (Complete, Reschedule), retry or DLQ."""

    def __init__(self, storage: MetricStorage) -> None:
        self.storage = storage

    def __call__(self, job: Job, call_next: Handler) -> Result:
        start = time.perf_counter()
        outcome = "failed"
        try:
            result = call_next(job)
            outcome = _outcome(result)
            return result
        finally:
            self.storage.observe_execute_duration(job.queue, job.type, time.perf_counter() - start)
            if outcome == "failed":  # raised, or returned junk: the worker retries it per its policy
                outcome = "dlq" if job.max_attempts is not None and job.attempt >= job.max_attempts else "retry"
            elif outcome == "retry" and job.max_attempts is not None and job.attempt >= job.max_attempts:
                outcome = "dlq"
            if outcome == "success":
                self.storage.inc_success_count(job.queue, job.type)
            elif outcome == "retry":
                self.storage.inc_retry_count(job.queue, job.type)
            else:
                self.storage.inc_dlq_count(job.queue, job.type)

    def on_internal_error(self) -> None:
        """Called by the worker when it cannot decode or settle a job."""
        self.storage.inc_internal_error_count()


def _outcome(result: object) -> str:
    if isinstance(result, (Complete, Reschedule)):
        return "success"
    if isinstance(result, Retry):
        return "retry"
    if isinstance(result, MoveToDlq):
        return "dlq"
    return "failed"


class InMemoryMetricStorage:
    """A MetricStorage that keeps counts in dicts: for tests and quick looks."""

    def __init__(self) -> None:
        self.durations: dict[tuple[str, str], list[float]] = {}
        self.success: dict[tuple[str, str], int] = {}
        self.retry: dict[tuple[str, str], int] = {}
        self.dlq: dict[tuple[str, str], int] = {}
        self.internal_errors = 0

    def observe_execute_duration(self, queue: str, job_type: str, seconds: float) -> None:
        self.durations.setdefault((queue, job_type), []).append(seconds)

    def inc_retry_count(self, queue: str, job_type: str) -> None:
        self.retry[queue, job_type] = self.retry.get((queue, job_type), 0) + 1

    def inc_dlq_count(self, queue: str, job_type: str) -> None:
        self.dlq[queue, job_type] = self.dlq.get((queue, job_type), 0) + 1

    def inc_success_count(self, queue: str, job_type: str) -> None:
        self.success[queue, job_type] = self.success.get((queue, job_type), 0) + 1

    def inc_internal_error_count(self) -> None:
        self.internal_errors += 1
