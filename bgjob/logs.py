"""Structured logging: job and request ids on every line, as text or one JSON object per line."""

from __future__ import annotations

import json
import logging
import sys
import time
from datetime import datetime, timezone
from typing import Any

from .context import JobContextFilter, current_job, current_request_id
from .job import Job
from .middleware import Handler
from .result import Complete, Reschedule, Result

#: LogRecord attributes that are not `extra=` fields.
_RECORD_FIELDS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}
_CONTEXT_FIELDS = ("request_id", "job_id", "job_type")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s%(job_context)s: %(message)s"


class ContextFilter(JobContextFilter):
    """JobContextFilter that keeps ids passed with `extra=` (lines logged outside the job's thread) and adds
    `job_context`: " [type id request=rid]" inside a job, " [request=rid]" in a web request, else ""."""

    def filter(self, record: logging.LogRecord) -> bool:
        given = {name: getattr(record, name) for name in _CONTEXT_FIELDS if getattr(record, name, None)}
        super().filter(record)
        for name, value in given.items():
            setattr(record, name, value)
        parts = [] if record.job_id == "-" else [record.job_type, record.job_id]
        if record.request_id != "-":
            parts.append(f"request={record.request_id}")
        record.job_context = f" [{' '.join(parts)}]" if parts else ""
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, request_id, job_id, job_type (null outside a
    job), exc_info (the formatted traceback) when there is one, and any `extra=` fields."""

    def format(self, record: logging.LogRecord) -> str:
        job = current_job.get()
        data: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": _given(record, "request_id") or current_request_id.get() or (job and job.request_id),
            "job_id": _given(record, "job_id") or (job and job.id),
            "job_type": _given(record, "job_type") or (job and job.type),
        }
        if record.exc_info:
            data["exc_info"] = self.formatException(record.exc_info)
        elif record.exc_text:
            data["exc_info"] = record.exc_text
        if record.stack_info:
            data["stack_info"] = self.formatStack(record.stack_info)
        for key, value in vars(record).items():
            if key not in _RECORD_FIELDS and key not in data and key != "job_context":
                data[key] = value
        return json.dumps(data, default=str, ensure_ascii=False)


def _given(record: logging.LogRecord, name: str) -> str | None:
    value = getattr(record, name, None)
    return value if value and value != "-" else None


def configure_logging(level: int | str = "INFO", fmt: str = "text") -> logging.Handler:
    """Log to stderr at `level`, as `text` (with job/request ids) or `json`; returns the handler.

    Like logging.basicConfig, it leaves a root logger that already has handlers alone.
    """
    if fmt not in ("text", "json"):
        raise ValueError(f"log format {fmt!r}: use 'text' or 'json'")
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.addFilter(ContextFilter())
        handler.setFormatter(logging.Formatter(TEXT_FORMAT))
    logging.basicConfig(level=level.upper() if isinstance(level, str) else level, handlers=[handler])
    logging.getLogger("nats").setLevel(logging.WARNING)
    return handler


class LogJobs:
    """Middleware logging each handler call on `bgjob.jobs`: start and finish at DEBUG, an exception at WARNING
    with its traceback (Recovery, registered outside it, turns it into a retry without logging it).

    Register it after RequestId so its lines carry the request id.
    """

    def __init__(self, logger: logging.Logger | None = None) -> None:
        self.log = logger or logging.getLogger("bgjob.jobs")

    def __call__(self, job: Job, call_next: Handler) -> Result:
        self.log.debug("job started: %s %s attempt %d", job.type, job.id, job.attempt)
        start = time.perf_counter()
        try:
            result = call_next(job)
        except Exception as exc:
            self.log.warning("job %s %s attempt %d raised %s: %s", job.type, job.id, job.attempt,
                             type(exc).__name__, exc, exc_info=True)  # fmt: skip
            raise
        elapsed_ms = (time.perf_counter() - start) * 1000
        if isinstance(result, (Complete, Reschedule)):
            self.log.debug("job finished in %.1f ms: %s %s -> %s", elapsed_ms, job.type, job.id, type(result).__name__)
        elif isinstance(result, Result):
            error = getattr(result, "error", None)
            self.log.info("job finished in %.1f ms: %s %s attempt %d -> %s%s", elapsed_ms, job.type, job.id,
                          job.attempt, type(result).__name__, f": {error}" if error else "")  # fmt: skip
        else:
            self.log.warning("job %s %s returned %r, not a bgjob.Result", job.type, job.id, result)
        return result
