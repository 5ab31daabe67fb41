"""bgjob.contrib.opentelemetry against the OpenTelemetry SDK (in-memory exporter), a real worker and nats-server."""

from __future__ import annotations

import queue
from collections.abc import Iterator

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

import bgjob
from bgjob.contrib import opentelemetry as otel
from bgjob.contrib.opentelemetry import BgjobInstrumentor

from .conftest import drain, wait_until


@pytest.fixture
def provider() -> TracerProvider:
    return TracerProvider()


@pytest.fixture
def spans(provider: TracerProvider) -> Iterator[InMemorySpanExporter]:
    """The spans bgjob made while instrumented with `provider` (the instrumentation is removed afterwards)."""
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    BgjobInstrumentor().instrument(tracer_provider=provider)
    yield exporter
    BgjobInstrumentor().uninstrument()


def named(exporter: InMemorySpanExporter, name: str) -> list[ReadableSpan]:
    return [s for s in exporter.get_finished_spans() if s.name == name]


def one(exporter: InMemorySpanExporter, name: str) -> ReadableSpan:
    found = wait_until(lambda: named(exporter, name), message=f"span {name!r}")
    assert len(found) == 1, found  # type: ignore[arg-type]
    return found[0]  # type: ignore[index]


def test_a_request_its_job_and_the_jobs_child_job_are_one_trace(spans, provider, client, start_worker) -> None:
    mux = bgjob.Mux()
    mux.handle("parent", lambda job: (client.send_job("child", {"n": 1}, queue="other"), bgjob.Complete())[1])
    mux.handle("child", lambda job: bgjob.Complete())
    start_worker(client, mux)
    start_worker(client, mux, queue="other")
    with provider.get_tracer("test").start_as_current_span("GET /report") as request:
        job_id = client.send_job("parent", {"n": 0})

    send_parent, process_parent = one(spans, "send default"), one(spans, "process parent")
    send_child, process_child = one(spans, "send other"), one(spans, "process child")
    trace_id = request.get_span_context().trace_id
    assert {s.context.trace_id for s in (send_parent, process_parent, send_child, process_child)} == {trace_id}
    assert send_parent.parent.span_id == request.get_span_context().span_id
    assert process_parent.parent.span_id == send_parent.context.span_id
    assert send_child.parent.span_id == process_parent.context.span_id
    assert process_child.parent.span_id == send_child.context.span_id
    assert (send_parent.kind, process_parent.kind) == (SpanKind.PRODUCER, SpanKind.CONSUMER)
    assert dict(send_parent.attributes) == {
        "messaging.system": "nats", "messaging.destination.name": "default", "messaging.message.id": job_id,
        "messaging.operation.type": "send", "messaging.operation.name": "send", "bgjob.job.type": "parent",
    }  # fmt: skip
    assert dict(process_parent.attributes) == {
        "messaging.system": "nats", "messaging.destination.name": "default", "messaging.message.id": job_id,
        "messaging.operation.type": "process", "messaging.operation.name": "process", "bgjob.job.type": "parent",
        "bgjob.attempt": 1, "bgjob.outcome": "Complete", "bgjob.fate": "acked",
    }  # fmt: skip
    assert process_parent.status.status_code is StatusCode.UNSET


def test_a_retried_job_has_one_process_span_per_attempt_each_a_child_of_its_send(spans, client, start_worker) -> None:
    attempts: queue.Queue = queue.Queue()

    def flaky(job: bgjob.Job) -> bgjob.Result:
        attempts.put(job.attempt)
        if job.attempt < 3:
            raise RuntimeError(f"try {job.attempt} failed, card 4111-1111")
        return bgjob.Complete()

    mux = bgjob.Mux()
    mux.handle("flaky", flaky)
    start_worker(client, mux, middleware=[bgjob.Recovery()])  # max_attempts=3
    client.send_job("flaky", {"card": "4111-1111"}, sensitive=["card"])
    assert drain(attempts, 3) == [1, 2, 3]
    send = one(spans, "send default")
    process = wait_until(lambda: len(named(spans, "process flaky")) == 3 and named(spans, "process flaky"))
    process = sorted(process, key=lambda s: s.attributes["bgjob.attempt"])  # type: ignore[arg-type, index]
    assert [s.attributes["bgjob.attempt"] for s in process] == [1, 2, 3]
    assert [s.attributes["bgjob.fate"] for s in process] == ["retry_scheduled", "retry_scheduled", "acked"]
    assert {s.parent.span_id for s in process} == {send.context.span_id}
    assert [s.status.status_code for s in process] == [StatusCode.ERROR, StatusCode.ERROR, StatusCode.UNSET]
    event = process[0].events[0]
    assert event.name == "exception" and event.attributes["exception.type"] == "RuntimeError"
    assert event.attributes["exception.message"] == f"try 1 failed, card {bgjob.redaction.MASK}"
    assert "4111-1111" not in event.attributes["exception.stacktrace"]


def test_a_dead_lettered_job_has_an_error_span_with_its_reason(spans, client, start_worker) -> None:
    mux = bgjob.Mux()
    mux.handle("hopeless", lambda job: bgjob.MoveToDlq("bad input"))
    start_worker(client, mux)
    client.send_job("hopeless", None)
    client.send_job("no-such-type", None)
    hopeless, unknown = one(spans, "process hopeless"), one(spans, "process no-such-type")
    for span in (hopeless, unknown):
        assert span.status.status_code is StatusCode.ERROR
        assert span.attributes["bgjob.fate"] == "dead_lettered"
    assert hopeless.attributes["bgjob.fate.reason"] == "handler"
    assert hopeless.attributes["bgjob.outcome"] == "MoveToDlq"
    assert unknown.attributes["bgjob.outcome"] == "Failure"  # it never reached a handler
    sends = {s.context.span_id for s in named(spans, "send default")}
    assert len(sends) == 2 and {hopeless.parent.span_id, unknown.parent.span_id} == sends


def test_a_prepared_job_carries_the_context_of_the_call_not_of_its_publish(spans, provider, client,
                                                                            start_worker) -> None:  # fmt: skip
    """What bgjob_django's on_commit and outbox sends do: prepare at the call, publish later (at commit)."""
    mux = bgjob.Mux()
    mux.handle("later", lambda job: bgjob.Complete())
    start_worker(client, mux)
    with provider.get_tracer("test").start_as_current_span("view") as view:
        prepared = client.prepare_job(bgjob.JobSpec("later", 1))
    with provider.get_tracer("test").start_as_current_span("commit"):
        client.publish_prepared([prepared])
    create, process = one(spans, "create default"), one(spans, "process later")
    assert create.parent.span_id == view.get_span_context().span_id
    assert process.parent.span_id == create.context.span_id


def test_a_caller_traceparent_wins_and_uninstrument_stops_spans(spans, client, start_worker) -> None:
    done: queue.Queue = queue.Queue()
    mux = bgjob.Mux()
    mux.handle("t", lambda job: (done.put(job.headers.get("traceparent")), bgjob.Complete())[1])
    start_worker(client, mux)
    theirs = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    client.send_job("t", None, headers={"traceparent": theirs})
    assert drain(done, 1) == [theirs]
    assert one(spans, "process t").parent.span_id == 0xB7AD6B7169203331
    BgjobInstrumentor().uninstrument()
    assert not BgjobInstrumentor().is_instrumented_by_opentelemetry
    # No job was running: its worker hooks are gone at once (others, such as Sentry's, may stay).
    assert not any(type(h).__module__ == otel.__name__ for h in bgjob.hooks._global_hooks)
    spans.clear()
    client.send_jobs([("t", 1), ("t", 2)])
    assert drain(done, 2) == [None, None]
    assert spans.get_finished_spans() == ()


def test_tracing_works_beside_sentry_and_a_failure_reaches_both(spans, client, start_worker) -> None:
    import sentry_sdk

    from bgjob.contrib.sentry import BgjobIntegration

    from .test_sentry import CapturingTransport

    transport = CapturingTransport()
    sentry_sdk.init(dsn="http://key@127.0.0.1:9/1", transport=transport, traces_sample_rate=1.0,
                    default_integrations=False, auto_enabling_integrations=False,
                    integrations=[BgjobIntegration(capture="every")])  # fmt: skip
    try:
        seen: queue.Queue = queue.Queue()

        def boom(job: bgjob.Job) -> bgjob.Result:
            from opentelemetry import trace

            seen.put(trace.get_current_span().get_span_context().is_valid)
            raise ValueError("nope")

        mux = bgjob.Mux()
        mux.handle("boom", boom)
        start_worker(client, mux, retry_policy=bgjob.RetryPolicy(max_attempts=1))
        client.send_job("boom", None)
        assert drain(seen, 1) == [True]  # the process span is current in the handler, inside Sentry's scope
        span = one(spans, "process boom")
        assert span.status.status_code is StatusCode.ERROR and span.attributes["bgjob.fate"] == "dead_lettered"
        assert span.events[0].attributes["exception.type"] == "ValueError"
        sentry_sdk.flush()
        wait_until(lambda: transport.of_type("event"), message="Sentry's error event")
        (event,) = transport.of_type("event")
        assert event["exception"]["values"][-1]["type"] == "ValueError"
        (transaction,) = wait_until(lambda: transport.of_type("transaction"), message="Sentry's transaction")
        assert transaction["tags"]["bgjob.outcome"] == "dlq"
    finally:
        sentry_sdk.get_client().close()
        sentry_sdk.get_global_scope().set_client(None)


def test_a_signed_job_with_trace_headers_verifies_and_the_headers_are_not_signed(spans, make_client,
                                                                                  start_worker) -> None:  # fmt: skip
    signing_key, verify_key = bgjob.signing.generate_keypair()
    client = make_client(signing_key=signing_key, verify_keys=[verify_key])
    ran: queue.Queue = queue.Queue()
    mux = bgjob.Mux()
    mux.handle("signed", lambda job: (ran.put(job.attempt), bgjob.Complete())[1])
    start_worker(client, mux)
    prepared = client.prepare_job(bgjob.JobSpec("signed", 1))
    assert "traceparent" in prepared.headers
    # Not covered by the signature (like every user header): a changed traceparent still verifies.
    changed = {**prepared.headers, "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}
    assert bgjob.signing.Verifier([verify_key]).check("default", changed, prepared.body) is None
    client.publish_prepared([prepared])
    assert drain(ran, 1) == [1]
    assert one(spans, "process signed").attributes["bgjob.fate"] == "acked"


def test_a_failing_send_hook_or_a_bad_header_never_stops_a_send(spans, client, start_worker, caplog) -> None:
    from bgjob.send_hooks import SendHooks, SendScope, register_send_hooks, unregister_send_hooks

    class Broken(SendHooks):
        def start_send(self, spec, queue, *, publish):
            raise RuntimeError("hook bug")

    class BadHeader(SendHooks):
        def start_send(self, spec, queue, *, publish):
            return SendScope({"Bgjob-Id": "forged", "X-Other": "kept"})

    hooks = [Broken(), BadHeader()]
    for h in hooks:
        register_send_hooks(h)
    try:
        prepared = client.prepare_job(bgjob.JobSpec("t", 1, headers={"X-Mine": "1"}))
    finally:
        for h in hooks:
            unregister_send_hooks(h)
    assert prepared.headers["Bgjob-Id"] == prepared.job_id and "X-Other" not in prepared.headers
    assert prepared.headers["X-Mine"] == "1" and "traceparent" in prepared.headers
    assert "hook bug" in caplog.text and "Bgjob-Id" in caplog.text
