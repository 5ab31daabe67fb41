"""Structured logging: job and request ids on every line, as text or one JSON object per line."""

from __future__ import annotations

import json
import logging
import sys
import time
from datetime import datetime, timezone
from typing import Any

from .context import JobContextFilter, current_job, current_request_id
from .errors import exception_traceback
from .hooks import Failure, Fate, FateKind, WorkerHooks, exception_of, is_unhandled
from .job import Job
from .redaction import scrub_text, secret_texts
from .result import Result

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
        fields: dict[str, str] = vars(record)  # job_id, job_type, request_id: set by JobContextFilter.filter
        parts = [] if fields["job_id"] == "-" else [fields["job_type"], fields["job_id"]]
        if fields["request_id"] != "-":
            parts.append(f"request={fields['request_id']}")
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
        if record.exc_text:  # set before the record was logged (LogJobs: a scrubbed traceback), or cached
            data["exc_info"] = record.exc_text
        elif record.exc_info:
            data["exc_info"] = self.formatException(record.exc_info)
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


class LogJobs(WorkerHooks):
    """Worker hooks that log each job on `bgjob.jobs`: its start at DEBUG, then its real fate once settled —
    acked or rescheduled at DEBUG, a retry scheduled or a hand-back at INFO, a dead letter or an exception the
    handler raised at WARNING (with its traceback) — with the handler's run time.

    Errors and tracebacks are the scrubbed ones the worker stored (`Fate.error`, `Fate.traceback`, a Failure's
    texts; see `bgjob.hooks` on scrubbing): a value under a sensitive arg key or a sensitive header never shows.
    The traceback is the record's `exc_text`; `exc_info` is set too only when scrubbing changed nothing in it.

    Give it to `Worker(hooks=[LogJobs()])` (in `middleware=` it works too: it is skipped as a link of the chain).
    """

    def __init__(self, logger: logging.Logger | None = None) -> None:
        self.log = logger or logging.getLogger("bgjob.jobs")
        # Keyed by id(job): the settle step reports the very Job object that dispatch started.
        self._began: dict[int, float] = {}
        self._took: dict[int, float] = {}

    def on_job_start(self, job: Job) -> None:
        self._began[id(job)] = time.perf_counter()
        self.log.debug("job started: %s %s attempt %d", job.type, job.id, job.attempt)

    def on_job_end(self, job: Job, outcome: Result | Failure) -> None:
        began = self._began.pop(id(job), None)
        if began is not None:
            self._took[id(job)] = time.perf_counter() - began

    def on_settled(self, job: Job, outcome: Result | Failure, fate: Fate) -> None:
        took = self._took.pop(id(job), None)
        ran = f" in {took * 1000:.1f} ms" if took is not None else ""
        extra = {"job_id": job.id, "job_type": job.type, "request_id": job.request_id, "bgjob_fate": fate.kind.value}
        exc = exception_of(outcome)
        error = fate.error if fate.error and fate.kind is not FateKind.HANDED_BACK else getattr(outcome, "error", None)
        detail = f": {_scrubbed(describe(error), job)}" if error else ""
        raised = exc is not None and is_unhandled(exc)
        if fate.kind in (FateKind.ACKED, FateKind.RESCHEDULED):
            level = logging.DEBUG
        elif raised or fate.kind is FateKind.DEAD_LETTERED:
            level = logging.WARNING
        else:
            level = logging.INFO
        if not self.log.isEnabledFor(level):
            return
        exc_info, trace = None, None
        if raised:
            assert exc is not None
            raw = exception_traceback(exc)
            trace = fate.traceback or getattr(outcome, "traceback", None) or _scrubbed(raw, job)
            if trace == raw:
                exc_info = (type(exc), exc, exc.__traceback__)
        record = self.log.makeRecord(self.log.name, level, __file__, 0, "job finished%s: %s %s attempt %d -> %s%s",
                                     (ran, job.type, job.id, job.attempt, fate, detail), exc_info, extra=extra)
        if trace:
            record.exc_text = trace.rstrip("\n")
        self.log.handle(record)


def _scrubbed(text: str | None, job: Job) -> str | None:
    """The default scrub (the job's sensitive arg values and header values), for texts the worker did not
    scrub itself (an outcome's error reported with a hand-back)."""
    return scrub_text(text, secret_texts(job.arg, job.sensitive, job.headers))


def describe(error: object) -> str:
    """An outcome's error as one line."""
    return f"{type(error).__name__}: {error}" if isinstance(error, BaseException) else str(error)
