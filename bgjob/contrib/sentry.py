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

Sensitive data. Events never carry what bgjob knows to be secret:
- the values under the job's sensitive arg keys (`send_job(..., sensitive=[...])` and
  `@mux.handler(..., sensitive=[...])`) and the values of its sensitive headers (Authorization, Cookie,
  `*token*`, ...) are replaced by `bgjob.redaction.MASK` anywhere in the job's events: exception messages,
  frame variables, breadcrumbs, extra data;
- the local variables of bgjob's own frames (which hold messages, bodies, headers and args) are dropped;
- the job's arg is in the `bgjob` context only with `send_default_pii=True`, its sensitive keys masked.
The job's `Job` repr shows id, type, queue and attempt only. To mask more (an e-mail address the handler quotes,
say), add sentry-sdk's own `before_send`:

    def before_send(event, hint):
        for value in (event.get("exception") or {}).get("values", []):
            value["value"] = EMAIL.sub("[email]", value.get("value") or "")
        return event

    sentry_sdk.init(dsn=..., before_send=before_send, integrations=[BgjobIntegration()])

A `bgjob.WorkerHooks.scrub` hook masks the same texts in bgjob's logs, dead letters and stored results.

It is a `bgjob.WorkerHooks` registered process-wide when sentry-sdk sets it up: the scope and transaction
open in `on_job_start` (the handler's thread) and the outcome tag, error events and the transaction's end come
from `on_settled`, with the fate the worker really applied. It observes and never changes what the worker does:
Results, retries and dead letters are the same with or without Sentry.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Literal

try:
    import sentry_sdk
    from sentry_sdk.integrations import Integration
    from sentry_sdk.scope import add_global_event_processor, use_isolation_scope, use_scope
    from sentry_sdk.utils import capture_internal_exceptions, event_from_exception
except ImportError as exc:  # pragma: no cover - depends on the installation
    raise ImportError('bgjob.contrib.sentry needs sentry-sdk: pip install "bgjob[sentry]"') from exc

from ..hooks import Failure, Fate, FateKind, WorkerHooks, exception_of, is_unhandled, register_hooks
from ..job import Job
from ..redaction import MASK, mask_arg, scrub_text, secret_texts
from ..result import Result

if TYPE_CHECKING:
    from sentry_sdk._types import Event, Hint

log = logging.getLogger("bgjob.sentry")

Capture = Literal["first", "last", "every"]
_OUTCOME = {FateKind.ACKED: "success", FateKind.RESCHEDULED: "success", FateKind.RETRY_SCHEDULED: "retry",
            FateKind.DEAD_LETTERED: "dlq", FateKind.HANDED_BACK: "handed_back"}  # fmt: skip


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
        register_hooks(_HOOKS)
        add_global_event_processor(_drop_duplicate_dead_letter_log)
        add_global_event_processor(_drop_bgjob_frame_variables)

    def _should_capture(self, job: Job, fate: Fate) -> bool:
        if self.capture == "every":
            return True
        if self.capture == "last":
            return fate.kind is FateKind.DEAD_LETTERED
        return job.attempt == 1


@dataclass
class _Run:
    """One job's Sentry state, from its start (handler thread) to its settlement (event-loop thread)."""

    integration: BgjobIntegration
    scope: Any
    #: the job's current scope, whose span is the transaction (error events link to it).
    current: Any
    transaction: Any
    context: dict[str, Any]
    exit_scope: contextlib.ExitStack


class SentryHooks(WorkerHooks):
    """The worker hooks behind BgjobIntegration (registered for every Worker by sentry_sdk.init)."""

    def __init__(self) -> None:
        self._runs: dict[int, _Run] = {}
        self._lock = threading.Lock()

    def on_job_start(self, job: Job) -> None:
        integration = sentry_sdk.get_client().get_integration(BgjobIntegration)
        if integration is None:
            return
        stack = contextlib.ExitStack()
        try:
            scope = stack.enter_context(sentry_sdk.isolation_scope())
            scope.clear_breadcrumbs()
            scope.add_event_processor(_masker(job))
            context = _describe_job(scope, job)
            headers = {k.lower(): v for k, v in job.headers.items()}
            continued = sentry_sdk.continue_trace(headers, op="queue.process", name=job.type, source="task",
                                                  origin=BgjobIntegration.origin)  # fmt: skip
            transaction = sentry_sdk.start_transaction(continued, custom_sampling_context={"bgjob_job": job})
            _describe_span(transaction, job)
            current = sentry_sdk.get_current_scope()
            current.span = transaction  # the handler's spans nest in it
        except Exception:
            stack.close()
            raise
        with self._lock:
            self._runs[id(job)] = _Run(integration, scope, current, transaction, context, stack)

    def on_job_end(self, job: Job, outcome: Result | Failure) -> None:
        run = self._runs.get(id(job))
        if run is not None:
            run.exit_scope.close()  # leave the job's scope in the thread that entered it; it lives on in `run`

    def on_settled(self, job: Job, outcome: Result | Failure, fate: Fate) -> None:
        with self._lock:
            run = self._runs.pop(id(job), None)
        if run is None:
            return
        with use_isolation_scope(run.scope), use_scope(run.current), capture_internal_exceptions():
            run.scope.set_tag("bgjob.outcome", _OUTCOME[fate.kind])
            succeeded = fate.kind in (FateKind.ACKED, FateKind.RESCHEDULED)
            run.transaction.set_status("ok" if succeeded else "internal_error")
            if not succeeded and fate.kind is not FateKind.HANDED_BACK and run.integration._should_capture(job, fate):
                _report(job, outcome)
            run.transaction.finish()


_HOOKS = SentryHooks()


def _report(job: Job, outcome: Result | Failure) -> None:
    """An error event for a failed outcome: its exception, else its message when it is not a plain decision."""
    client = sentry_sdk.get_client()
    exc = exception_of(outcome)
    if exc is not None:
        mechanism = {"type": BgjobIntegration.identifier, "handled": not is_unhandled(exc)}
        event, hint = event_from_exception(exc, client_options=client.options, mechanism=mechanism)
        sentry_sdk.capture_event(event, hint=hint)
        return
    trace = getattr(outcome, "traceback", None)
    if isinstance(outcome, Failure) or trace:  # a raise we did not see, or a return that is not a Result
        message = outcome.error if isinstance(outcome, Failure) else str(getattr(outcome, "error", outcome))
        sentry_sdk.capture_event({"level": "error", "message": message,
                                  "extra": {"traceback": trace} if trace else {}})  # fmt: skip
    # else: a Retry / MoveToDlq with a message only is the handler's decision, not an error


def _describe_job(scope: Any, job: Job) -> dict[str, Any]:
    # The request id jobs sent outside a web request get from RequestId middleware: the job id.
    request_id = job.request_id or job.id
    scope.set_tag("bgjob.job_id", job.id)
    scope.set_tag("bgjob.job_type", job.type)
    scope.set_tag("bgjob.queue", job.queue)
    scope.set_tag("bgjob.attempt", str(job.attempt))
    scope.set_tag("bgjob.request_id", request_id)
    context: dict[str, Any] = {
        "job_id": job.id, "job_type": job.type, "queue": job.queue, "attempt": job.attempt,
        "max_attempts": job.max_attempts, "request_id": request_id,
        "enqueued_at": job.enqueued_at.isoformat() if job.enqueued_at else None,
    }  # fmt: skip
    if sentry_sdk.get_client().should_send_default_pii():
        context["arg"] = mask_arg(job.arg, job.sensitive)
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


def _drop_duplicate_dead_letter_log(event: Event, hint: Hint) -> Event | None:
    """The worker logs an error when a job goes to the DLQ; with Sentry's logging integration that would be a
    second event for a failure this integration already reported (or chose not to, per `capture`). The record's
    `bgjob_handler_ran` field says whether a handler ran; for jobs that never reached one (unknown type,
    undecodable, bad signature, a process that died running it) the log line is the only report and stays."""
    record = (hint or {}).get("log_record")
    if record is None or sentry_sdk.get_client().get_integration(BgjobIntegration) is None:
        return event
    return None if getattr(record, "bgjob_handler_ran", False) is True else event


def _masker(job: Job) -> Any:
    """The event processor of one job's scope: every quote of its sensitive values replaced by MASK."""
    secrets = secret_texts(job.arg, job.sensitive, job.headers)
    keys = job.sensitive

    def mask(event: dict[str, Any], hint: dict[str, Any]) -> dict[str, Any]:
        if secrets or keys:
            with capture_internal_exceptions():
                masked: dict[str, Any] = _masked(event, secrets, keys)
                return masked
        return event

    return mask


def _masked(value: Any, secrets: list[str], keys: frozenset[str]) -> Any:
    """`value` (an event, or part of one) with each of `secrets` in its texts and the values of `keys` masked."""
    if isinstance(value, str):
        return scrub_text(value, secrets)
    if isinstance(value, dict):
        return {k: (MASK if k in keys else _masked(v, secrets, keys)) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_masked(v, secrets, keys) for v in value]
    return value


def _drop_bgjob_frame_variables(event: Event, hint: Hint) -> Event:
    """bgjob's own frames hold messages, bodies, headers and args in local variables: drop them (a handler's
    frames, the user's code, keep theirs, masked by the job's scope)."""
    if sentry_sdk.get_client().get_integration(BgjobIntegration) is None:
        return event
    with capture_internal_exceptions():
        for frames in _frame_lists(event):
            for frame in frames:
                module = (frame.get("module") if isinstance(frame, dict) else None) or ""
                if module == "bgjob" or module.startswith(("bgjob.", "bgjob_django")):
                    frame.pop("vars", None)
    return event


def _frame_lists(event: Mapping[str, Any]) -> list[list[dict[str, Any]]]:
    found = []
    for section in ("exception", "threads"):
        for value in (event.get(section) or {}).get("values") or []:
            frames = (value.get("stacktrace") or {}).get("frames")
            if isinstance(frames, list):
                found.append(frames)
    frames = (event.get("stacktrace") or {}).get("frames")
    if isinstance(frames, list):
        found.append(frames)
    return found
