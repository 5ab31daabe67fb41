"""bgjob.contrib.sentry against a real sentry-sdk client (capturing transport), worker and nats-server."""

from __future__ import annotations

import json
import queue
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import sentry_sdk
from sentry_sdk.integrations.logging import LoggingIntegration
from sentry_sdk.transport import Transport

import bgjob
from bgjob.contrib.sentry import BgjobIntegration

from .conftest import drain, wait_until


class CapturingTransport(Transport):
    """Keeps what the client would send: error events and transactions."""

    def __init__(self, options: dict[str, Any] | None = None) -> None:
        super().__init__(options)
        self.lock = threading.Lock()
        self.items: list[tuple[str, dict[str, Any]]] = []

    def capture_envelope(self, envelope: Any) -> None:
        with self.lock:
            self.items.extend((item.type, item.payload.json) for item in envelope.items if item.payload.json)

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        with self.lock:
            return [payload for item_type, payload in self.items if item_type == kind]


@pytest.fixture
def sentry() -> Iterator[Callable[..., CapturingTransport]]:
    """`sentry(capture=...)` initialises sentry-sdk with the bgjob and logging integrations; reset afterwards."""

    def init(capture: str = "first") -> CapturingTransport:
        transport = CapturingTransport()
        sentry_sdk.init(dsn="http://key@127.0.0.1:9/1", transport=transport, traces_sample_rate=1.0,
                        default_integrations=False, auto_enabling_integrations=False,
                        integrations=[BgjobIntegration(capture=capture), LoggingIntegration()])  # fmt: skip
        return transport

    yield init
    sentry_sdk.get_client().close()
    sentry_sdk.get_global_scope().set_client(None)


def _fails_always(attempts: queue.Queue) -> Callable[[bgjob.Job], bgjob.Result]:
    def boom(job: bgjob.Job) -> bgjob.Result:
        attempts.put(job.attempt)
        raise RuntimeError(f"boom {job.attempt}")

    return boom


@pytest.mark.parametrize(("capture", "reported"), [("first", [1]), ("last", [3]), ("every", [1, 2, 3])])
def test_a_job_failing_three_times_is_reported_per_capture_policy_with_its_tags(
    capture, reported, sentry, client, start_worker, caplog
) -> None:
    transport = sentry(capture)
    attempts: queue.Queue = queue.Queue()
    mux = bgjob.Mux()
    mux.handle("boom", _fails_always(attempts))
    start_worker(client, mux, middleware=[bgjob.Recovery(), bgjob.RequestId()])  # max_attempts=3
    job_id = client.send_job("boom", {"n": 1}, request_id="req-7")
    assert drain(attempts, 3) == [1, 2, 3]
    wait_until(lambda: any("moved to the DLQ" in r.getMessage() for r in caplog.records), message="DLQ log line")
    # A job the worker dead-letters itself (no handler) still reaches Sentry through the logging integration;
    # it is logged after the failing job's DLQ line, so once it is here, that line had its chance too.
    client.send_job("no-such-type", None)
    wait_until(lambda: any(e.get("logger") == "bgjob.worker" for e in transport.of_type("event")),
               message="the worker's error line about the unknown type")  # fmt: skip

    events = [e for e in transport.of_type("event") if e.get("logger") != "bgjob.worker"]
    assert [e["tags"]["bgjob.attempt"] for e in events] == [str(a) for a in reported]
    for event in events:
        attempt = event["tags"]["bgjob.attempt"]
        assert event["tags"] == {"bgjob.job_id": job_id, "bgjob.job_type": "boom", "bgjob.queue": "default",
                                 "bgjob.attempt": attempt, "bgjob.request_id": "req-7",
                                 "bgjob.outcome": "dlq" if attempt == "3" else "retry"}  # fmt: skip
        [exception] = event["exception"]["values"]
        assert (exception["type"], exception["value"]) == ("RuntimeError", f"boom {attempt}")
        assert exception["mechanism"] == {"type": "bgjob", "handled": False}
        assert exception["stacktrace"]["frames"][-1]["function"] == "boom"
        assert event["contexts"]["bgjob"]["max_attempts"] == 3
        assert event["contexts"]["trace"]["op"] == "queue.process"
    [worker_line] = [e for e in transport.of_type("event") if e.get("logger") == "bgjob.worker"]
    assert "unknown_handler" in worker_line["logentry"]["formatted"]
    assert client.dlq.get(job_id).error == "RuntimeError: boom 3"


def test_a_successful_job_is_a_transaction_named_after_its_type(sentry, client, start_worker) -> None:
    transport = sentry()
    mux = bgjob.Mux()
    mux.handle("report", lambda job: bgjob.Complete())
    start_worker(client, mux, middleware=[bgjob.Recovery(), bgjob.RequestId()])
    job_id = client.send_job("report", {"user": 7})
    [transaction] = wait_until(lambda: transport.of_type("transaction"), message="a transaction")
    assert transaction["transaction"] == "report"
    assert transaction["transaction_info"] == {"source": "task"}
    trace = transaction["contexts"]["trace"]
    assert (trace["op"], trace["status"], trace["origin"]) == ("queue.process", "ok", "auto.queue.bgjob")
    assert trace["data"]["messaging.message.id"] == job_id
    assert trace["data"]["messaging.destination.name"] == "default"
    assert trace["data"]["messaging.message.retry.count"] == 0
    tags = transaction["tags"]
    assert (tags["bgjob.job_id"], tags["bgjob.job_type"], tags["bgjob.outcome"]) == (job_id, "report", "success")
    assert len(tags["bgjob.request_id"]) == 32  # made up by RequestId: none was sent
    assert transport.of_type("event") == []


def test_jobs_handled_by_one_thread_do_not_share_breadcrumbs_or_tags(sentry, client, start_worker) -> None:
    transport = sentry()
    mux = bgjob.Mux()

    @mux.handler("step")
    def step(job: bgjob.Job) -> bgjob.Result:
        sentry_sdk.add_breadcrumb(message=f"working on {job.arg}")
        sentry_sdk.set_tag("step.name", job.arg)
        if job.arg in ("a", "c"):
            sentry_sdk.set_tag("only.in", job.arg)
        raise ValueError(job.arg)

    start_worker(client, mux, concurrency=1, middleware=[bgjob.Recovery()],
                 retry_policy=bgjob.RetryPolicy(max_attempts=1))  # fmt: skip
    for name in ("a", "b", "c"):
        client.send_job("step", name)
    events = wait_until(lambda: len(e := transport.of_type("event")) == 3 and e, message="three events")
    for event in events:
        name = event["exception"]["values"][0]["value"]
        crumbs = [c["message"] for c in event["breadcrumbs"]["values"] if c.get("message", "").startswith("working")]
        assert crumbs == [f"working on {name}"]
        assert event["tags"]["step.name"] == name
        assert event["tags"].get("only.in") == (name if name in ("a", "c") else None)


def test_results_and_dead_letters_are_the_same_with_and_without_sentry(sentry, make_client, start_worker) -> None:
    def run(prefix: str) -> list[tuple]:
        client = make_client(prefix=prefix)
        done: queue.Queue = queue.Queue()
        mux = bgjob.Mux()

        @mux.handler("raises")
        def raises(job: bgjob.Job) -> bgjob.Result:
            raise KeyError("missing")

        mux.handle("junk", lambda job: "not a result")
        mux.handle("dlq-message", lambda job: bgjob.MoveToDlq("no user"))
        mux.handle("dlq-exception", lambda job: bgjob.MoveToDlq(ValueError("bad input")))
        mux.handle("retry-message", lambda job: bgjob.Retry(0.05, error="not yet") if job.attempt == 1
                   else done.put(job.type) or bgjob.Complete())  # fmt: skip
        mux.handle("retry-exception", lambda job: bgjob.Retry(0.05, error=OSError("503")) if job.attempt == 1
                   else done.put(job.type) or bgjob.Complete())  # fmt: skip
        policy = bgjob.RetryPolicy(max_attempts=2, base_delay=0.05, jitter=0)
        worker_a = start_worker(client, mux, retry_policy=policy)  # raises -> the worker's own Failure
        start_worker(client, mux, queue="recovered", middleware=[bgjob.Recovery()], retry_policy=policy)
        for queue_name in (worker_a.queue, "recovered"):
            for job_type in mux.types():
                client.send_job(job_type, None, job_id=f"{queue_name}-{job_type}", queue=queue_name)
        assert sorted(drain(done, 4)) == ["retry-exception"] * 2 + ["retry-message"] * 2
        wait_until(lambda: client.dlq.count() == 8, message="eight dead letters")
        entries = sorted(client.dlq.list(), key=lambda e: e.id)
        assert all("KeyError" in e.traceback for e in entries if e.type == "raises")
        return [(e.id, e.reason, e.attempts, e.error) for e in entries]

    without = run("tnosentry" + bgjob.job.new_job_id()[:8])
    transport = sentry("every")
    assert run("tsentry" + bgjob.job.new_job_id()[:8]) == without

    reported = sorted((e["tags"]["bgjob.queue"], e["tags"]["bgjob.job_type"], e["tags"]["bgjob.attempt"],
                       (e.get("exception") or {}).get("values", [{}])[0].get("mechanism", {}).get("handled"))
                      for e in transport.of_type("event"))  # fmt: skip
    assert reported == sorted([
        (queue_name, job_type, attempt, handled)
        for queue_name in ("default", "recovered")
        for job_type, attempt, handled in [
            ("raises", "1", False), ("raises", "2", False), ("junk", "1", False), ("junk", "2", False),
            ("dlq-exception", "1", True), ("retry-exception", "1", True),
        ]
    ])  # fmt: skip
    junk = [e["exception"]["values"][0] for e in transport.of_type("event") if e["tags"]["bgjob.job_type"] == "junk"]
    assert {(e["type"], e["value"].split(":")[0]) for e in junk} == {
        ("HandlerError", "handler for 'junk' returned 'not a result', not a bgjob.Result")}


def test_without_an_active_client_the_instrumented_worker_runs_jobs_as_before(sentry, client, start_worker) -> None:
    sentry()
    sentry_sdk.get_global_scope().set_client(None)  # integration installed (its hooks registered), client gone
    seen: queue.Queue = queue.Queue()
    mux = bgjob.Mux()
    mux.handle("report", lambda job: seen.put(job.id) or bgjob.Complete())
    start_worker(client, mux)
    job_id = client.send_job("report", None)
    assert drain(seen, 1) == [job_id]


CARD, PASSWORD, TOKEN, API_KEY = "4111111111111111", "hunter2-planted-pw", "planted-token-9f3a", "planted-key-77c1"


@pytest.mark.parametrize("password", [PASSWORD, "back\\slash'quo\"te-\u00fc-planted"], ids=["plain", "escaped"])
@pytest.mark.parametrize("pii", [False, True], ids=["no-pii", "pii"])
def test_no_event_holds_a_sensitive_arg_value_or_header_even_in_frame_variables(pii, password, client,
                                                                                start_worker) -> None:  # fmt: skip
    transport = CapturingTransport()
    sentry_sdk.init(dsn="http://key@127.0.0.1:9/1", transport=transport, traces_sample_rate=1.0,
                    send_default_pii=pii, include_local_variables=True, default_integrations=False,
                    auto_enabling_integrations=False,
                    integrations=[BgjobIntegration(capture="every"), LoggingIntegration()])  # fmt: skip
    try:
        mux = bgjob.Mux()

        @mux.handler("charge", sensitive=["password"])
        def charge(job: bgjob.Job) -> bgjob.Result:
            arg, headers = job.arg, job.headers  # frame variables of the user's handler
            sentry_sdk.add_breadcrumb(message=f"charging {arg['card']}")
            try:  # a failure inside bgjob's own code: its frames hold the arg and the headers
                client.send_job("charge", arg, headers=headers, queue="not a queue")
            except bgjob.InvalidJob as exc:
                raise ValueError(f"card {arg['card']} declined for {arg['password']} "
                                 f"({headers['Authorization']}, {headers['X-Api-Key']})") from exc  # fmt: skip
            return bgjob.Complete()

        start_worker(client, mux, middleware=[bgjob.Recovery()], retry_policy=bgjob.RetryPolicy(max_attempts=1))
        arg = {"card": CARD, "password": password, "customer": "customer-42"}
        client.send_job("charge", arg, sensitive=["card"],
                        headers={"Authorization": f"Bearer {TOKEN}", "X-Api-Key": API_KEY, "X-Trace": "ok"})
        [event] = wait_until(lambda: [e for e in transport.of_type("event") if e.get("exception")],
                             message="the error event")  # fmt: skip
        wait_until(lambda: transport.of_type("transaction"), message="the transaction")
    finally:
        sentry_sdk.get_client().close()
        sentry_sdk.get_global_scope().set_client(None)

    serialized = json.dumps([payload for _, payload in transport.items])
    for secret in (CARD, password, TOKEN, API_KEY, f"Bearer {TOKEN}"):
        assert serialized.count(secret) == 0, secret
    assert "planted" not in serialized  # nor any escaped form of the password, the token or the key
    values = event["exception"]["values"]
    assert values[-1]["value"] == "card ******** declined for ******** (********, ********)"
    frames = [f for v in values for f in v["stacktrace"]["frames"]]
    assert any(f["module"].startswith("bgjob.") for f in frames)
    assert all("vars" not in f for f in frames if f["module"].startswith("bgjob."))
    handler_frames = [f for f in frames if f["function"] == "charge"]
    assert handler_frames and all("arg" in f["vars"] for f in handler_frames)  # the user's frame keeps them, masked
    assert event["contexts"]["bgjob"].get("arg") == (
        {"card": "********", "password": "********", "customer": "customer-42"} if pii else None)
