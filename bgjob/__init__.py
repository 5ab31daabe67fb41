"""bgjob: background jobs for synchronous Python web apps, on NATS JetStream."""

from ._version import __version__ as __version__
from .client import Client, PreparedJob, QueueConfig, QueueStats, connect, default_client, send_job, send_jobs
from .context import JobContextFilter, current_job, current_request_id
from .dead_letters import DeadLetter, DeadLetters, DeadLetterScan
from .directory import WorkerInfo
from .errors import (
    BgjobError,
    ConfigurationError,
    ConnectionError,
    DeadLetterNotFound,
    DeadLetterRefused,
    HandlerError,
    InvalidJob,
    InvalidMatch,
    InvalidResult,
    InvalidSchedule,
    JobTooLarge,
    NonRetryable,
    PublishError,
    QueueFull,
    ResultNotFound,
    ResultTooLarge,
    SendJobsError,
    ServerNotFound,
    ServerRefused,
    ServerVersionError,
    StorageFull,
    TimeLimitExceeded,
)
from .events import Event, EventKind, JobState, JobStatus
from .handler import HandlerOptions, Mux, SyncHandlerAdapter
from .hooks import Failure, Fate, FateKind, WorkerHooks, register_hooks, unregister_hooks
from .job import Job, JobSpec
from .job_results import JobError, JobResult, ResultStatus
from .middleware import InMemoryMetricStorage, Metrics, MetricStorage, Middleware, Recovery, RequestId
from .periodic import PeriodicJob
from .result import KEEP_ARG, ByAfterTime, ByCron, Complete, MoveToDlq, Reschedule, Result, Retry, Schedule
from .retry_policy import RetryPolicy
from .settings import Settings
from .worker import Worker
from .workflows import Signature, signature

__all__ = [
    "BgjobError",
    "ByAfterTime",
    "ByCron",
    "Client",
    "Complete",
    "ConfigurationError",
    "connect",
    "ConnectionError",
    "current_job",
    "current_request_id",
    "DeadLetter",
    "DeadLetterNotFound",
    "DeadLetterRefused",
    "DeadLetters",
    "DeadLetterScan",
    "Event",
    "EventKind",
    "default_client",
    "Failure",
    "Fate",
    "FateKind",
    "HandlerError",
    "HandlerOptions",
    "InMemoryMetricStorage",
    "InvalidJob",
    "InvalidMatch",
    "InvalidResult",
    "InvalidSchedule",
    "JobTooLarge",
    "Job",
    "JobContextFilter",
    "JobError",
    "JobResult",
    "JobSpec",
    "JobState",
    "JobStatus",
    "KEEP_ARG",
    "Metrics",
    "MetricStorage",
    "Middleware",
    "MoveToDlq",
    "Mux",
    "NonRetryable",
    "PeriodicJob",
    "PreparedJob",
    "PublishError",
    "QueueConfig",
    "QueueFull",
    "QueueStats",
    "Recovery",
    "register_hooks",
    "RequestId",
    "Reschedule",
    "Result",
    "ResultNotFound",
    "ResultStatus",
    "ResultTooLarge",
    "Retry",
    "RetryPolicy",
    "Schedule",
    "send_job",
    "send_jobs",
    "SendJobsError",
    "ServerNotFound",
    "ServerRefused",
    "ServerVersionError",
    "Settings",
    "Signature",
    "signature",
    "StorageFull",
    "SyncHandlerAdapter",
    "TimeLimitExceeded",
    "unregister_hooks",
    "Worker",
    "WorkerHooks",
    "WorkerInfo",
]
