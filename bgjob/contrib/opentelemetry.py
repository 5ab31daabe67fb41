"""OpenTelemetry tracing for bgjob: a PRODUCER span per job sent, a CONSUMER span per handler call, one trace.

    from bgjob.contrib.opentelemetry import BgjobInstrumentor

    BgjobInstrumentor().instrument()          # in producers and workers, after the SDK's TracerProvider is set

Celery's `opentelemetry-instrumentation-celery` is the peer; this follows the same instrumentor convention
(`instrument(tracer_provider=None)` / `uninstrument()`, a process-wide singleton, a second `instrument()` does
nothing) and needs only `opentelemetry-api` (`pip install "bgjob[otel]"`); any SDK and exporter the application
configures receive the spans. It does not subclass `opentelemetry-instrumentation`'s `BaseInstrumentor`:
that package exists to monkeypatch libraries (wrapt) and to check their versions for auto-instrumentation,
and bgjob needs neither: it has public hooks, `bgjob.send_hooks.SendHooks` for producers and
`bgjob.WorkerHooks` for workers, and this module only registers one of each.

Spans (names and attributes per OpenTelemetry's messaging semantic conventions):

- `send <queue>` (kind PRODUCER, `messaging.operation.type` = `send`): one per job of `send_job`/`send_jobs`,
  from the call until its PubAck (or refusal). Its context travels in the job's headers through the global
  propagator (`opentelemetry.propagate`): by default the W3C `traceparent` and `tracestate` (and `baggage`
  when there is any). A job the caller already gave a `traceparent` header keeps the caller's.
- `create <queue>` (PRODUCER, `create`): `Client.prepare_job` instead, ended at once; the job is published
  later by another call (bgjob_django's `on_commit=True` and outbox sends prepare at the call), so the job
  carries the context of the call that sent it, not of the commit or the outbox relay.
- `process <job type>` (kind CONSUMER, `process`): one per delivery, from `WorkerHooks.on_job_start` (in
  the handler's thread; the span is the current span for the middleware and the handler, so the handler's
  own spans and the jobs it sends are its children) until `on_settled`, after the worker's JetStream
  operation. A retried job gives one process span per attempt. A job that never reached a handler (unknown
  type, undecodable body, bad signature, past its deadline) gets a process span too, started and ended then.

The process span is *parented* on the producer's span extracted from the headers, not linked to it: bgjob
delivers one message to one handler call (no batches), and the messaging conventions recommend the creation
context as the parent for single-message processing; a request, its jobs, and their jobs' child jobs are then
one trace, in a tracing UI's one tree. Every attempt of a job has the same parent (a retry republishes the
headers as they were). Periodic jobs carry no producer context: each run starts a trace of its own.

Attributes: `messaging.system` = `nats`, `messaging.destination.name` = the bgjob queue (its JetStream
subject is `<PREFIX>.<queue>...`), `messaging.message.id` = the job id, `messaging.operation.type` and
`messaging.operation.name`, `bgjob.job.type`; on process spans also `bgjob.attempt` (1 on the first delivery),
`bgjob.request_id` when the job has one, `bgjob.outcome` (what the handler returned: `Complete`, `Retry`,
`MoveToDlq`, `Reschedule`, `Pause`, or `Failure`), and from the real `bgjob.Fate`: `bgjob.fate` (`acked`,
`retry_scheduled`, `dead_lettered`, `rescheduled`, `handed_back`), `bgjob.fate.reason` (a DLQ or hand-back
reason) and `bgjob.fate.delay_s` (a retry's delay, seconds).

Errors: a handler's exception (raised, or carried in a Retry/MoveToDlq, as `bgjob.Recovery` makes them) is
recorded on the process span (`record_exception`) and sets its status to ERROR; so does a return that is not a
Result, and every dead letter (with the DLQ reason when there is no exception). A Retry the handler chose
with a message only is its decision, not an error: the status stays unset and `bgjob.fate` says
`retry_scheduled`. The exception event's `exception.message` and `exception.stacktrace` are the texts the
worker scrubbed (`bgjob.WorkerHooks.scrub`: sensitive arg values and header values masked), never the raw
ones. A send that was refused or not confirmed records the bgjob error on the send span, status ERROR.

Threads: process spans end on the worker's event-loop thread: configure the SDK with a
`BatchSpanProcessor` (a `SimpleSpanProcessor` exports synchronously there). Works beside
`bgjob.contrib.sentry` (both are hooks; each keeps its own context) and under gevent.
"""

from __future__ import annotations

import threading
import traceback
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

try:
    from opentelemetry import context as otel_context
    from opentelemetry import propagate, trace
    from opentelemetry.trace import Span, SpanKind, Status, StatusCode
except ImportError as exc:  # pragma: no cover - depends on the installation
    raise ImportError('bgjob.contrib.opentelemetry needs opentelemetry-api: pip install "bgjob[otel]"') from exc

from .._version import __version__
from ..hooks import Failure, Fate, FateKind, WorkerHooks, exception_of, register_hooks, unregister_hooks
from ..job import Job, JobSpec
from ..redaction import scrub_text, secret_texts
from ..result import Result
from ..send_hooks import SendHooks, SendScope, register_send_hooks, unregister_send_hooks

__all__ = ["BgjobInstrumentor"]

_SYSTEM = "nats"


class BgjobInstrumentor:
    """Traces bgjob's sends and handler calls with OpenTelemetry; see the module docstring.

    A process-wide singleton, like OpenTelemetry's instrumentors: `BgjobInstrumentor()` is always the same
    object, `instrument()` on an instrumented process and `uninstrument()` on one that is not do nothing.
    """

    _instance: BgjobInstrumentor | None = None
    _lock = threading.Lock()

    def __new__(cls) -> BgjobInstrumentor:
        with cls._lock:
            if cls._instance is None:
                instance = super().__new__(cls)
                instance._tracer = None
                cls._instance = instance
            return cls._instance

    _tracer: trace.Tracer | None

    @property
    def is_instrumented_by_opentelemetry(self) -> bool:
        """Whether `instrument()` is in force."""
        return self._tracer is not None

    def instrumentation_dependencies(self) -> Collection[str]:
        """The instrumented library's requirement, as OpenTelemetry's instrumentors declare it."""
        return ("bgjob",)

    def instrument(self, tracer_provider: trace.TracerProvider | None = None, **kwargs: Any) -> None:
        """Start tracing: every Client's sends and every Worker's jobs in this process, current and future.

        `tracer_provider`: where spans go (default: the global one, `opentelemetry.trace.get_tracer_provider()`,
        read now). Other keyword arguments are accepted and ignored, as instrumentors do. Raises nothing."""
        with self._lock:
            if self._tracer is not None:
                return
            self._tracer = trace.get_tracer(__name__, __version__, tracer_provider)
            _WORKER_HOOKS.tracer = self._tracer
            _SEND_HOOKS.tracer = self._tracer
            register_hooks(_WORKER_HOOKS)
            register_send_hooks(_SEND_HOOKS)

    def uninstrument(self, **kwargs: Any) -> None:
        """Stop tracing: no new spans. A job already running still ends its span: the worker hooks are removed
        once no job they saw start is left (a span and its context are closed in the thread that opened them)."""
        with self._lock:
            self._tracer = None
            _SEND_HOOKS.tracer = None
            unregister_send_hooks(_SEND_HOOKS)
            _WORKER_HOOKS.stop()


def _carrier(headers: Mapping[str, str] | None) -> dict[str, str]:
    """A job's headers as a propagator reads them (lower-case names: NATS keeps the sender's case)."""
    return {str(k).lower(): v for k, v in (headers or {}).items() if isinstance(v, str)}


class _SendSpan(SendScope):
    """One job's PRODUCER span: its context injected into the headers, ended with the send's result."""

    def __init__(self, span: Span, headers: dict[str, str]) -> None:
        super().__init__(headers)
        self.span = span

    def end(self, job_id: str | None, error: BaseException | None) -> None:
        if job_id is not None:
            self.span.set_attribute("messaging.message.id", job_id)
        if error is not None:
            self.span.record_exception(error)
            self.span.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"))
        self.span.end()


class _OtelSendHooks(SendHooks):
    tracer: trace.Tracer | None = None

    def start_send(self, spec: JobSpec, queue: str, *, publish: bool) -> SendScope | None:
        tracer = self.tracer
        if tracer is None:
            return None
        destination = spec.queue or queue
        operation = "send" if publish else "create"
        attributes: dict[str, Any] = {
            "messaging.system": _SYSTEM, "messaging.destination.name": str(destination),
            "messaging.operation.type": operation, "messaging.operation.name": operation,
            "bgjob.job.type": str(spec.type),
        }  # fmt: skip
        if spec.job_id is not None:
            attributes["messaging.message.id"] = str(spec.job_id)
        span = tracer.start_span(f"{operation} {destination}", kind=SpanKind.PRODUCER, attributes=attributes)
        headers: dict[str, str] = {}
        if not any(k.lower() == "traceparent" for k in (spec.headers or {}) if isinstance(k, str)):
            propagate.inject(headers, context=trace.set_span_in_context(span))
        return _SendSpan(span, headers)


@dataclass
class _Run:
    span: Span
    token: object | None


class _OtelWorkerHooks(WorkerHooks):
    tracer: trace.Tracer | None = None

    def __init__(self) -> None:
        self._runs: dict[int, _Run] = {}
        self._lock = threading.Lock()

    def stop(self) -> None:
        """No new spans; unregistered now when no run is open, else by the last open run's `on_settled`."""
        with self._lock:
            self.tracer = None
            if not self._runs:
                unregister_hooks(self)

    def _start(self, job: Job) -> tuple[Span, otel_context.Context] | None:
        tracer = self.tracer
        if tracer is None:
            return None
        parent = propagate.extract(_carrier(job.headers))
        attributes: dict[str, Any] = {
            "messaging.system": _SYSTEM, "messaging.destination.name": job.queue, "messaging.message.id": job.id,
            "messaging.operation.type": "process", "messaging.operation.name": "process",
            "bgjob.job.type": job.type, "bgjob.attempt": job.attempt,
        }  # fmt: skip
        if job.request_id:
            attributes["bgjob.request_id"] = job.request_id
        span = tracer.start_span(f"process {job.type}", context=parent, kind=SpanKind.CONSUMER, attributes=attributes)
        return span, trace.set_span_in_context(span, parent)

    def on_job_start(self, job: Job) -> None:
        started = self._start(job)
        if started is None:
            return
        span, ctx = started
        with self._lock:
            if self.tracer is not None:  # not uninstrumented meanwhile (then these hooks may be unregistered)
                self._runs[id(job)] = _Run(span, otel_context.attach(ctx))
                return
        span.end()

    def on_job_end(self, job: Job, outcome: Result | Failure) -> None:
        with self._lock:
            run = self._runs.get(id(job))
        if run is not None and run.token is not None:
            otel_context.detach(run.token)  # type: ignore[arg-type]  # in the thread that attached it
            run.token = None

    def on_settled(self, job: Job, outcome: Result | Failure, fate: Fate) -> None:
        with self._lock:
            run = self._runs.pop(id(job), None)
            if self.tracer is None and not self._runs:
                unregister_hooks(self)
        if run is not None:
            span = run.span
        else:  # the job never reached a handler (or tracing started while it ran)
            started = self._start(job)
            if started is None:
                return
            span = started[0]
        span.set_attribute("bgjob.outcome", type(outcome).__name__)
        span.set_attribute("bgjob.fate", fate.kind.value)
        if fate.reason:
            span.set_attribute("bgjob.fate.reason", fate.reason)
        if fate.delay is not None:
            span.set_attribute("bgjob.fate.delay_s", float(fate.delay))
        exc = exception_of(outcome)
        failed = exc is not None or isinstance(outcome, Failure)
        error = fate.error or (outcome.error if isinstance(outcome, Failure) else None)
        if exc is not None:
            span.record_exception(exc, attributes=_scrubbed_exception(job, exc, outcome, fate))
        if failed or fate.kind is FateKind.DEAD_LETTERED:
            why = error or (f"dead-lettered ({fate.reason})" if fate.kind is FateKind.DEAD_LETTERED else None)
            span.set_status(Status(StatusCode.ERROR, why))
        span.end()


def _scrubbed_exception(job: Job, exc: BaseException, outcome: Result | Failure, fate: Fate) -> dict[str, str]:
    """The `exception.message`/`exception.stacktrace` of a job's exception event: the worker's scrubbed texts
    (Fate's or the Failure's) when it has them, else the default scrub of the exception's own."""
    kind = type(exc).__name__
    text = fate.error or (outcome.error if isinstance(outcome, Failure) else None)
    stack = fate.traceback or getattr(outcome, "traceback", None)
    if text is None or stack is None:
        secrets = secret_texts(job.arg, job.sensitive, job.headers)
        if text is None:
            text = scrub_text(f"{kind}: {exc}", secrets) or kind
        if stack is None:
            stack = scrub_text("".join(traceback.format_exception(exc)), secrets) or ""
    message = text[len(kind) + 2 :] if text.startswith(f"{kind}: ") else text
    return {"exception.message": message, "exception.stacktrace": stack}


_WORKER_HOOKS = _OtelWorkerHooks()
_SEND_HOOKS = _OtelSendHooks()
