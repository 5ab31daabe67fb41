"""Settling a delivered job: its outcome becomes exactly one JetStream operation.

Ack, nak with delay, term after the DLQ publish was confirmed, or, when any of those fails, a nak (or
nothing) so JetStream redelivers it: a crash between two steps yields a duplicate, never a loss.
"""

from __future__ import annotations

import logging
import time
import traceback as tb
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from nats.aio.msg import Msg
from nats.js.api import Header

from . import job as jobmod
from . import results
from .core import Core
from .dlq import move_to_dlq
from .errors import InvalidJob
from .producer import signer_for
from .result import KEEP_ARG, Complete, MoveToDlq, Reschedule, Result, Retry
from .results import ResultStatus
from .retry import RetryPolicy

log = logging.getLogger("bgjob.worker")


@dataclass(frozen=True)
class Failure:
    """A handler raised, or returned something that is not a Result."""

    error: str
    traceback: str | None = None


@dataclass(eq=False)
class Delivery:
    """A delivered job from fetch to settlement; filled in by the pool thread that runs it."""

    msg: Msg
    last_progress: float = field(default_factory=time.monotonic)
    applying: bool = False
    abandoned: bool = False
    attempt: int = 1
    job_id: str = ""
    job_type: str = ""
    outcome: Result | Failure | None = None
    reason: str | None = None
    #: the stored result record, for jobs sent with store_result=True.
    result: dict[str, Any] | None = None


class Settler:
    """Applies outcomes for one queue's worker."""

    def __init__(self, queue: str, retry_policy: RetryPolicy, on_internal_error: Callable[[], None]) -> None:
        self.queue = queue
        self.retry_policy = retry_policy
        self._on_internal_error = on_internal_error

    async def settle(self, core: Core, item: Delivery) -> None:
        """Turn the outcome into exactly one of: ack, nak with delay, DLQ-then-term; or leave it for redelivery."""
        msg, outcome, reason, attempt = item.msg, item.outcome, item.reason, item.attempt
        job_id, job_type = item.job_id, item.job_type
        context = log_context(item)

        async def dead_letter(why: str, error: str, trace: str | None) -> None:
            await self.store_result(core, item, ResultStatus.FAILED, error=error, trace=trace)
            await move_to_dlq(core, msg, queue=self.queue, job_id=job_id, job_type=job_type, reason=why,
                              error=error, traceback=trace, attempts=attempt)  # fmt: skip
            await msg.term()
            log.error("job %s (%s) moved to the DLQ after %d attempt(s): %s: %s", job_id, job_type, attempt, why, error,
                      extra={**context, "bgjob_reason": why})  # fmt: skip

        try:
            if reason is not None:
                assert isinstance(outcome, Failure)
                self._on_internal_error()
                await dead_letter(reason, outcome.error, outcome.traceback)
            elif isinstance(outcome, Complete):
                await self.store_result(core, item, ResultStatus.SUCCESSFUL, value=outcome.value)
                await (msg.ack_sync(timeout=core.settings.request_timeout) if core.settings.double_ack else msg.ack())
            elif isinstance(outcome, (Retry, Failure)):
                error, trace = _error_of(outcome)
                if self.retry_policy.exhausted(attempt):
                    await dead_letter("max_attempts", error or f"gave up after {attempt} attempts", trace)
                else:
                    await self.store_result(core, item, ResultStatus.READY, error=error, trace=trace)
                    delay = outcome.delay_seconds() if isinstance(outcome, Retry) else None
                    await msg.nak(delay=self.retry_policy.delay_for(attempt) if delay is None else delay)
            elif isinstance(outcome, MoveToDlq):
                error, trace = _error_of(outcome)
                await dead_letter(outcome.reason, error, trace)
            elif isinstance(outcome, Reschedule):
                try:
                    await self.reschedule(core, msg, job_id, job_type, outcome)
                except InvalidJob as exc:
                    await dead_letter("handler", f"Reschedule refused: {exc}", None)
                    return
                await self.store_result(core, item, ResultStatus.READY)
                await msg.ack()
        except Exception as exc:  # noqa: BLE001 - whatever failed, the job must not be lost
            log.error("could not settle job %s (%s): %r; it will be redelivered", job_id, job_type, exc, extra=context)
            self._on_internal_error()
            try:
                await msg.nak(delay=self.retry_policy.delay_for(1))
            except Exception:  # noqa: BLE001 - then JetStream redelivers it after ack_wait
                pass

    async def store_result(
        self,
        core: Core,
        item: Delivery,
        status: ResultStatus,
        *,
        value: Any = None,
        error: str | None = None,
        trace: str | None = None,
    ) -> None:
        if item.result is None:
            return
        try:
            await results.record_outcome(core, item.result, status, value=value, error=error, traceback=trace)
        except Exception as exc:  # noqa: BLE001 - a missing report must not hold up the job itself
            log.warning("could not store the %s result of job %s: %r", status.value, item.job_id, exc,
                        extra=log_context(item))  # fmt: skip

    async def reschedule(self, core: Core, msg: Msg, job_id: str, job_type: str, result: Reschedule) -> None:
        """Publish the next run as a server-side `@at` schedule (one per job id: a repeat replaces it)."""
        now = datetime.now(timezone.utc)
        due = result.by.next_run(now)
        headers = {k: v for k, v in (msg.headers or {}).items() if not k.startswith("Nats-")}
        if result.arg is KEEP_ARG:
            body = msg.data
        else:
            body, headers[jobmod.CONTENT_TYPE] = jobmod.encode_arg(result.arg)
        headers.update({
            jobmod.HEADER_ENQUEUED_AT: jobmod.format_time(now),
            Header.SCHEDULE.value: f"@at {jobmod.format_time(due)}",
            Header.SCHEDULE_TARGET.value: core.topology.job_subject(self.queue, job_type),
            "Nats-Msg-Id": f"{job_id}@{jobmod.format_time(due)}",
        })  # fmt: skip
        if core.settings.signing_key:  # the next run may carry a new arg: sign what will be sent
            signer_for(core.settings.signing_key).sign(self.queue, headers, body)
        await core.publish(core.topology.delayed_subject(self.queue, job_id), body, headers, queue=self.queue)


def log_context(item: Delivery) -> dict[str, Any]:
    """Fields for log records written outside the job's own thread (bgjob.logs picks them up)."""
    headers = item.msg.headers or {}
    return {"job_id": item.job_id, "job_type": item.job_type, "request_id": headers.get(jobmod.HEADER_REQUEST_ID)}


def _error_of(outcome: Retry | Failure | MoveToDlq) -> tuple[str, str | None]:
    if isinstance(outcome, Failure):
        return outcome.error, outcome.traceback
    error = outcome.error
    trace = outcome.traceback
    if isinstance(error, BaseException):
        if trace is None and error.__traceback__ is not None:
            trace = "".join(tb.format_exception(error))
        return f"{type(error).__name__}: {error}", trace
    return (error or ""), trace
