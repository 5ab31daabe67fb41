"""Sentry for bgjob workers: each handler call in its own scope and transaction, failures reported once.

    sentry_sdk.init(dsn=..., traces_sample_rate=0.1, integrations=[BgjobIntegration()])   # before the Worker runs

Every call runs in a fresh isolation scope (breadcrumbs, tags and user set by one job never show up in
another's events, even on the same thread), inside a transaction named after the job type (op
`queue.process`), tagged `bgjob.job_id`, `bgjob.job_type`, `bgjob.queue`, `bgjob.attempt`,
`bgjob.request_id` and `bgjob.outcome` (success / retry / dlq). A `sentry-trace`/`baggage` pair in the job's
headers continues the producer's trace.

Errors: an exception from the handler, a Retry/MoveToDlq carrying an exception, or a handler that returned
something other than a Result. `capture` decides which attempts report them: `"first"` (default: attempt 1
only, so a job retried ten times is one event), `"last"` (only when the job goes to the DLQ), `"every"`.
A Retry or MoveToDlq with only a message is the handler's decision, not an error, and is not reported.

The integration observes and never changes what the worker does: Results, retries and dead letters are the
same with or without Sentry.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections.abc import Callable
from contextvars import ContextVar
from datetime import datetime, timezone
from typing import Any, Literal

try:
    import sentry_sdk
    from sentry_sdk.integrations import DidNotEnable, Integration
    from sentry_sdk.scope import add_global_event_processor
    from sentry_sdk.utils import capture_internal_exceptions, event_from_exception
except ImportError as exc:  # pragma: no cover - depends on the installation
    raise ImportError('bgjob.contrib.sentry needs sentry-sdk: pip install "bgjob[sentry]"') from exc

from ..context import current_request_id
from ..job import Job
from ..result import Complete, MoveToDlq, Reschedule, Result

log = logging.getLogger("bgjob.sentry")

Capture = Literal["first", "last", "every"]
#: Dead-letter reasons the worker gives to jobs that never reached a handler: not reported by this integration,
#: so the worker's error log line about them stays an event.
_WORKER_REASONS = frozenset({"decode", "unknown_handler", "signature"})


class BgjobIntegration(Integration):
    """sentry-sdk integration for bgjob workers; see the module docstring."""

    identifier = "bgjob"
    origin = f"auto.queue.{identifier}"

    def __init__(self, capture: Capture = "first") -> None:
        if capture not in ("first", "last", "every"):
            raise ValueError(f"capture={capture!r}: use 'first', 'last' or 'every'")
        self.capture = capture

    @staticmethod
    def setup_once() -> None:
        from ..worker import Worker

        original = getattr(Worker, "_call", None)
        if original is None:
            raise DidNotEnable("bgjob.Worker has no _call(handler, job) to instrument in this version")
        Worker._call = _instrumented(original)  # type: ignore[method-assign]
        add_global_event_processor(_drop_duplicate_dead_letter_log)

    def _should_capture(self, job: Job, fate: str) -> bool:
        if self.capture == "every":
            return True
        if self.capture == "last":
            return fate == "dlq"
        return job.attempt == 1


@dataclasses.dataclass
class _Observed:
    """What the handler itself did in this call, seen from inside the middleware chain."""

    request_id: str | None = None
    raised: Exception | None = None
    returned_junk: bool = False
    junk: Any = None


_observed: ContextVar[_Observed | None] = ContextVar("bgjob_sentry_observed", default=None)


def _instrumented(call: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(call)
    def _call(worker: Any, handler: Callable[[Job], Any], job: Job) -> Any:
        integration = sentry_sdk.get_client().get_integration(BgjobIntegration)
        if integration is None:
            return call(worker, handler, job)
        observed = _Observed()
        token = _observed.set(observed)
        outcome: Any = _observed  # sentinel: the call has not happened
        try:
            with sentry_sdk.isolation_scope() as scope:
                scope.clear_breadcrumbs()
                context = _describe_job(scope, job)
                headers = {k.lower(): v for k, v in job.headers.items()}
                transaction = sentry_sdk.continue_trace(headers, op="queue.process", name=job.type, source="task",
                                                        origin=BgjobIntegration.origin)  # fmt: skip
                with sentry_sdk.start_transaction(transaction, custom_sampling_context={"bgjob_job": job}) as span:
                    _describe_span(span, job)
                    outcome = call(worker, functools.partial(_observe_handler, handler), job)
                    with capture_internal_exceptions():
                        _report(integration, scope, span, job, outcome, observed, context)
        except Exception:  # Sentry must never change what happens to a job
            log.debug("sentry instrumentation of job %s failed", job.id, exc_info=True)
        finally:
            _observed.reset(token)
        if outcome is _observed:
            outcome = call(worker, handler, job)
        return outcome

    return _call


def _observe_handler(handler: Callable[[Job], Any], job: Job) -> Any:
    """The innermost link of the chain: notes the handler's own exception (before Recovery turns it into a
    Retry with only a message) and a return that is not a Result. Inert outside an instrumented call, which
    matters because the worker caches the chain it was first built into."""
    observed = _observed.get()
    if observed is None:
        return handler(job)
    observed.request_id = current_request_id.get() or job.request_id
    try:
        result = handler(job)
    except Exception as exc:
        observed.raised = exc
        raise
    if not isinstance(result, Result):
        observed.returned_junk, observed.junk = True, result
    return result


def _describe_job(scope: Any, job: Job) -> dict[str, Any]:
    scope.set_tag("bgjob.job_id", job.id)
    scope.set_tag("bgjob.job_type", job.type)
    scope.set_tag("bgjob.queue", job.queue)
    scope.set_tag("bgjob.attempt", str(job.attempt))
    if job.request_id:
        scope.set_tag("bgjob.request_id", job.request_id)
    context: dict[str, Any] = {
        "job_id": job.id, "job_type": job.type, "queue": job.queue, "attempt": job.attempt,
        "max_attempts": job.max_attempts, "request_id": job.request_id,
        "enqueued_at": job.enqueued_at.isoformat() if job.enqueued_at else None,
    }  # fmt: skip
    if sentry_sdk.get_client().should_send_default_pii():
        context["arg"] = job.arg
    scope.set_context("bgjob", context)
    return context


def _describe_span(span: Any, job: Job) -> None:
    span.set_data("messaging.system", "nats")
    span.set_data("messaging.message.id", job.id)
    span.set_data("messaging.destination.name", job.queue)
    span.set_data("messaging.message.retry.count", job.attempt - 1)
    if job.enqueued_at is not None:
        latency = (datetime.now(timezone.utc) - job.enqueued_at).total_seconds() * 1000
        span.set_data("messaging.message.receive.latency", max(0, int(latency)))


def _report(
    integration: BgjobIntegration, scope: Any, span: Any, job: Job, outcome: Any, seen: _Observed,
    context: dict[str, Any],
) -> None:  # fmt: skip
    if seen.request_id and seen.request_id != job.request_id:  # made up by RequestId middleware
        scope.set_tag("bgjob.request_id", seen.request_id)
        scope.set_context("bgjob", {**context, "request_id": seen.request_id})
    fate = _fate(outcome, job)
    scope.set_tag("bgjob.outcome", fate)
    span.set_status("ok" if fate == "success" else "internal_error")
    if fate == "success" or not integration._should_capture(job, fate):
        return
    client = sentry_sdk.get_client()
    error = getattr(outcome, "error", None)
    exc = seen.raised or (error if isinstance(error, BaseException) else None)
    if exc is not None:
        handled = seen.raised is None  # the handler caught it and returned it in a Result
        event, hint = event_from_exception(
            exc, client_options=client.options, mechanism={"type": BgjobIntegration.identifier, "handled": handled}
        )
        sentry_sdk.capture_event(event, hint=hint)
        return
    trace = getattr(outcome, "traceback", None)
    if seen.returned_junk:
        message = f"handler for {job.type!r} returned {seen.junk!r}, not a bgjob.Result"
    elif trace or not isinstance(outcome, Result):  # a failure made from an exception we did not see
        message = str(error or outcome)
    else:  # Retry / MoveToDlq with a message: the handler's decision
        return
    sentry_sdk.capture_event({"level": "error", "message": message, "extra": {"traceback": trace} if trace else {}})


def _fate(outcome: Any, job: Job) -> str:
    """success, retry or dlq: what the worker does with this outcome (as bgjob.Metrics counts it)."""
    if isinstance(outcome, (Complete, Reschedule)):
        return "success"
    if isinstance(outcome, MoveToDlq):
        return "dlq"
    last = job.max_attempts is not None and job.attempt >= job.max_attempts
    return "dlq" if last else "retry"


def _drop_duplicate_dead_letter_log(event: dict[str, Any], hint: dict[str, Any]) -> dict[str, Any] | None:
    """The worker logs an error when a job goes to the DLQ; with Sentry's logging integration that is a
    second event for a failure this integration already reported (or chose not to, per `capture`)."""
    record = (hint or {}).get("log_record")
    if record is None or record.name != "bgjob.worker" or sentry_sdk.get_client().get_integration(
        BgjobIntegration
    ) is None:  # fmt: skip
        return event
    template = record.msg if isinstance(record.msg, str) else ""
    args = record.args if isinstance(record.args, tuple) else ()
    if template.startswith("job %s") and "moved to the DLQ" in template and len(args) > 3:
        if args[3] not in _WORKER_REASONS:
            return None
    return event
