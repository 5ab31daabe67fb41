"""Metrics: one observation per handler call, through a MetricStorage (Prometheus, statsd, ...)."""

from __future__ import annotations

import time
from typing import Protocol, runtime_checkable

from ..hooks import Failure, Fate, FateKind, WorkerHooks
from ..job import Job
from ..result import Result
from .base import Handler


@runtime_checkable
class MetricStorage(Protocol):
    """Where Metrics records what happened; bgjob.contrib.prometheus implements it."""

    def observe_execute_duration(self, queue: str, job_type: str, seconds: float) -> None: ...
    def inc_retry_count(self, queue: str, job_type: str) -> None: ...
    def inc_dlq_count(self, queue: str, job_type: str) -> None: ...
    def inc_success_count(self, queue: str, job_type: str) -> None: ...
    def inc_internal_error_count(self) -> None: ...


class Metrics(WorkerHooks):
    """Times each handler call (as middleware) and counts each job's real fate (as WorkerHooks): success
    (acked or rescheduled), retry (a retry scheduled) or DLQ (dead-lettered, whatever the reason); a delivery
    handed back unsettled counts as nothing. Internal errors (undecodable jobs, failed settlements, lapsed
    leases) go to `inc_internal_error_count`.
    """

    def __init__(self, storage: MetricStorage) -> None:
        self.storage = storage

    def __call__(self, job: Job, call_next: Handler) -> Result:
        start = time.perf_counter()
        try:
            return call_next(job)
        finally:
            self.storage.observe_execute_duration(job.queue, job.type, time.perf_counter() - start)

    def on_settled(self, job: Job, outcome: Result | Failure, fate: Fate) -> None:
        kind = fate.kind
        if kind in (FateKind.ACKED, FateKind.RESCHEDULED):
            self.storage.inc_success_count(job.queue, job.type)
        elif kind is FateKind.RETRY_SCHEDULED:
            self.storage.inc_retry_count(job.queue, job.type)
        elif kind is FateKind.DEAD_LETTERED:
            self.storage.inc_dlq_count(job.queue, job.type)

    def on_internal_error(self, error: BaseException | str) -> None:
        self.storage.inc_internal_error_count()


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
