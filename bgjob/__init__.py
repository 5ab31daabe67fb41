"""bgjob: background jobs for synchronous Python web apps, on NATS JetStream."""

from .client import Client, QueueStats, connect, default_client, send_job, send_jobs
from .context import JobContextFilter, current_job, current_request_id
from .directory import WorkerInfo
from .dlq import DeadLetter, DeadLetters
from .errors import (
    BgjobError,
    ConnectionError,
    DeadLetterNotFound,
    DeadLetterRefused,
    HandlerError,
    InvalidJob,
    InvalidResult,
    InvalidSchedule,
    PublishError,
    ResultNotFound,
    SendJobsError,
    ServerNotFound,
    ServerVersionError,
)
from .handler import Mux, SyncHandlerAdapter
from .hooks import Failure, Fate, FateKind, WorkerHooks, register_hooks, unregister_hooks
from .job import Job, JobSpec
from .middleware import InMemoryMetricStorage, Metrics, MetricStorage, Middleware, Recovery, RequestId
from .periodic import PeriodicJob
from .result import KEEP_ARG, ByAfterTime, ByCron, Complete, MoveToDlq, Reschedule, Result, Retry, Schedule
from .results import JobError, JobResult, ResultStatus
from .retry import RetryPolicy
from .settings import Settings
from .worker import Worker

__version__ = "0.1.0"

__all__ = [
    "WorkerInfo",
    "WorkerHooks",
    "Fate",
    "FateKind",
    "Failure",
    "register_hooks",
    "unregister_hooks",
    "ResultStatus",
    "JobResult",
    "JobError",
    "ResultNotFound",
    "RequestId",
    "Recovery",
    "Metrics",
    "MetricStorage",
    "InMemoryMetricStorage",
    "current_request_id",
    "current_job",
    "JobContextFilter",
    "KEEP_ARG",
    "BgjobError",
    "ByAfterTime",
    "ByCron",
    "Client",
    "Complete",
    "ConnectionError",
    "DeadLetter",
    "DeadLetterNotFound",
    "DeadLetterRefused",
    "DeadLetters",
    "HandlerError",
    "InvalidJob",
    "InvalidResult",
    "InvalidSchedule",
    "Job",
    "JobSpec",
    "Middleware",
    "MoveToDlq",
    "Mux",
    "PeriodicJob",
    "PublishError",
    "QueueStats",
    "Reschedule",
    "Result",
    "Retry",
    "RetryPolicy",
    "Schedule",
    "SendJobsError",
    "ServerNotFound",
    "ServerVersionError",
    "Settings",
    "SyncHandlerAdapter",
    "Worker",
    "connect",
    "default_client",
    "send_job",
    "send_jobs",
]
