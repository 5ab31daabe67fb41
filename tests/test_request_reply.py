"""Request-reply handlers (`mux.request_reply`, bgjob.request_reply) against a real Node.js service (tests/node,
the npm `nats` client) and a real nats-server: every reply mapping of docs/delegated.md's "Request-reply handlers"."""

from __future__ import annotations

import json
import os
import queue
import shutil
import subprocess
import threading
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone

import pytest

import bgjob
from bgjob.server import EmbeddedServer

from .conftest import ROOT, drain, wait_until

NODE_DIR = ROOT / "tests" / "node"
POLICY = bgjob.RetryPolicy(max_attempts=3, base_delay=0.05, jitter=0)
ONCE = bgjob.RetryPolicy(max_attempts=1)


class Responder:
    """`node tests/node/responder.js <url> <subject>`, its stdout lines in `lines`."""

    def __init__(self, url: str, subject: str) -> None:
        self.subject = subject
        self.lines: queue.Queue[str] = queue.Queue()
        self.process = subprocess.Popen(["node", str(NODE_DIR / "responder.js"), url, subject],
                                        stdout=subprocess.PIPE, text=True)  # fmt: skip
        threading.Thread(target=self._read, daemon=True).start()
        assert drain(self.lines, 1, timeout=30) == ["ready"], "the Node responder did not start"

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line.strip())

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)


@pytest.fixture(scope="module")
def responder(nats_server: EmbeddedServer) -> Iterator[Responder]:
    if shutil.which("node") is None:
        pytest.skip("node is not installed: the request-reply tests need a Node.js responder (Node 20)")
    if not (NODE_DIR / "node_modules" / "nats").is_dir():
        pytest.skip("tests/node/node_modules is missing: run `npm ci --prefix tests/node` (what .ci/run does)")
    running = Responder(nats_server.url, f"test.rr.{uuid.uuid4().hex[:8]}")
    yield running
    running.stop()


def dead_letter(client: bgjob.Client, job_id: str) -> bgjob.DeadLetter:
    return wait_until(lambda: next((e for e in client.dlq.list() if e.id == job_id), None),
                      message=f"dead letter of {job_id}")  # type: ignore[return-value]  # fmt: skip


def test_a_reply_completes_the_job_with_its_value_and_the_request_carries_the_job(client, start_worker,
                                                                                 responder) -> None:  # fmt: skip
    seen: list[str] = []

    def record(job: bgjob.Job, call_next):  # a handler's own middleware runs around a request-reply handler too
        seen.append(job.type)
        return call_next(job)

    mux = bgjob.Mux()
    mux.request_reply("thumb", subject=responder.subject, timeout=30, middleware=[record])
    mux.request_reply("text", subject=responder.subject, timeout=30)
    storage = bgjob.InMemoryMetricStorage()
    start_worker(client, mux, retry_policy=POLICY, middleware=[bgjob.Metrics(storage)])
    sent = datetime.now(timezone.utc)
    job_id = client.send_job("thumb", {"do": "ok", "size": [64, 64]}, store_result=True, request_id="req-1")
    text_id = client.send_job("text", {"do": "text"}, store_result=True)

    result = client.result(job_id, wait=15)
    assert result.status is bgjob.ResultStatus.SUCCESSFUL
    value = result.value
    assert value["by"] == "node" and value["arg"] == {"do": "ok", "size": [64, 64]}
    assert (value["id"], value["type"], value["queue"], value["attempt"]) == (job_id, "thumb", "default", 1)
    assert value["request_id"] == "req-1" and value["content_type"] == "application/json"
    deadline = datetime.fromisoformat(value["deadline"].replace("Z", "+00:00"))
    assert sent < deadline <= datetime.now(timezone.utc) + timedelta(seconds=30)
    # A body that is not JSON is the value as text.
    assert client.result(text_id, wait=15).value == f"plain text for {text_id}"
    assert seen == ["thumb"]
    wait_until(lambda: storage.success.get(("default", "thumb")) == 1, message="the success counted by Metrics")


@pytest.mark.parametrize("request_id_middleware", [True, False])
def test_the_request_id_header_is_the_job_id_under_request_id_middleware(client, start_worker, responder,
                                                                         request_id_middleware) -> None:  # fmt: skip
    mux = bgjob.Mux()
    mux.request_reply("thumb", subject=responder.subject, timeout=30)
    start_worker(client, mux, middleware=[bgjob.RequestId()] if request_id_middleware else [])
    job_id = client.send_job("thumb", {"do": "ok"}, store_result=True)  # sent with no request id
    value = client.result(job_id, wait=15).value
    assert value["request_id"] == (job_id if request_id_middleware else "")  # "": the header is absent


def test_retry_after_header_retries_the_job_after_that_delay(client, start_worker, responder) -> None:
    mux = bgjob.Mux()
    mux.request_reply("busy", subject=responder.subject, timeout=30)
    start_worker(client, mux, retry_policy=POLICY)
    job_id = client.send_job("busy", {"do": "retry", "after": 0.2}, store_result=True)
    result = wait_until(lambda: (r := client.result(job_id)).status is bgjob.ResultStatus.SUCCESSFUL and r,
                        message="the retried job's success")  # fmt: skip
    assert result.value["attempt"] == 2
    assert len(result.errors) == 1 and result.errors[0].attempt == 1
    assert "replied error 503: busy, come back later" in result.errors[0].error


def test_dead_letter_code_moves_the_job_to_the_dlq(client, start_worker, responder) -> None:
    mux = bgjob.Mux()
    mux.request_reply("parked", subject=responder.subject, timeout=30)
    start_worker(client, mux, retry_policy=POLICY)
    job_id = client.send_job("parked", {"do": "dlq"})
    entry = dead_letter(client, job_id)
    assert entry.reason == "service" and entry.attempts == 1
    assert f"replied error 422: cannot process {job_id}" in entry.error


def test_non_retryable_code_dead_letters_at_once(client, start_worker, responder) -> None:
    mux = bgjob.Mux()
    mux.request_reply("charge", subject=responder.subject, timeout=30)
    start_worker(client, mux, retry_policy=POLICY)
    job_id = client.send_job("charge", {"do": "bad"})
    entry = dead_letter(client, job_id)
    assert entry.reason == "non_retryable" and entry.attempts == 1
    assert "replied error 400: no such customer" in entry.error


def test_other_error_codes_follow_the_retry_policy(client, start_worker, responder) -> None:
    mux = bgjob.Mux()
    mux.request_reply("sync", subject=responder.subject, timeout=30,
                      retry_policy=bgjob.RetryPolicy(max_attempts=2, base_delay=0.05, jitter=0))  # fmt: skip
    start_worker(client, mux)
    job_id = client.send_job("sync", {"do": "fail"})
    entry = dead_letter(client, job_id)
    assert entry.attempts == 2
    assert "RequestFailed" in entry.error and "replied error 500: database unavailable" in entry.error


def test_no_reply_in_time_is_a_retryable_failure_naming_the_subject(client, start_worker, responder) -> None:
    mux = bgjob.Mux()
    mux.request_reply("slow", subject=responder.subject, timeout=0.5, retry_policy=ONCE)
    start_worker(client, mux)
    job_id = client.send_job("slow", {"do": "silent"}, store_result=True)
    entry = dead_letter(client, job_id)
    assert entry.reason == "max_attempts"
    assert f"no reply from the service on {responder.subject!r} within 0.5s (the handler's timeout)" in entry.error


def test_the_wait_is_cut_to_the_jobs_deadline_and_time_limit(client, start_worker, responder) -> None:
    mux = bgjob.Mux()
    mux.request_reply("due", subject=responder.subject, timeout=60, retry_policy=ONCE)
    mux.request_reply("limited", subject=responder.subject, timeout=60, time_limit=2, retry_policy=ONCE)
    start_worker(client, mux)
    due = client.send_job("due", {"do": "silent"}, deadline=timedelta(seconds=2))
    limited = client.send_job("limited", {"do": "silent"})
    assert "(the job's deadline)" in dead_letter(client, due).error
    entry = dead_letter(client, limited)  # stopped waiting 0.2 s before the limit: its own timeout, not the limit's
    assert entry.reason == "max_attempts" and "within 1.8s (the job's time limit)" in entry.error


def test_no_responders_is_a_retryable_failure_naming_the_subject(client, start_worker, responder) -> None:
    nobody = f"{responder.subject}.nobody"
    mux = bgjob.Mux()
    mux.request_reply("orphan", subject=nobody, timeout=30,
                      retry_policy=bgjob.RetryPolicy(max_attempts=2, base_delay=0.05, jitter=0))  # fmt: skip
    start_worker(client, mux)
    job_id = client.send_job("orphan", None, store_result=True)
    entry = dead_letter(client, job_id)
    assert entry.attempts == 2
    assert f"no responders: no service listens on {nobody!r}" in entry.error


def test_the_worker_serves_other_jobs_while_a_request_waits(client, start_worker, responder) -> None:
    done: queue.Queue[int] = queue.Queue()
    mux = bgjob.Mux()
    mux.request_reply("remote", subject=responder.subject, timeout=60)
    mux.handle("local", lambda job: (done.put(job.arg), bgjob.Complete())[1])
    start_worker(client, mux, concurrency=2, retry_policy=POLICY)
    remote = client.send_job("remote", {"do": "hold"}, store_result=True)
    assert drain(responder.lines, 1) == [f"held {remote}"]
    for n in range(5):
        client.send_job("local", n)
    assert sorted(drain(done, 5)) == [0, 1, 2, 3, 4]
    assert client.result(remote).status is bgjob.ResultStatus.RUNNING  # still waiting for its reply
    client.run(lambda core: core.nc.publish(f"{responder.subject}.release", b""))
    result = client.result(remote, wait=15)
    assert result.status is bgjob.ResultStatus.SUCCESSFUL and result.value["id"] == remote


@pytest.mark.parametrize(
    ("options", "problem"),
    [
        ({"subject": "svc.*"}, "wildcard"),
        ({"subject": "svc.>"}, "wildcard"),
        ({"subject": "svc..thumb"}, "empty token"),
        ({"subject": ".svc"}, "empty token"),
        ({"subject": "svc thumb"}, "space"),
        ({"subject": ""}, "1-255 characters"),
        ({"subject": 7}, "must be a str"),
        ({"subject": "svc", "timeout": 0}, "timeout must be a finite number of seconds > 0"),
        ({"subject": "svc", "timeout": float("inf")}, "timeout must be a finite number of seconds > 0"),
        ({"subject": "svc", "timeout": "30"}, "timeout must be seconds"),
        ({"subject": "svc", "time_limit": -1}, "time_limit must be a finite number of seconds > 0"),
        ({"subject": "$JS.API.STREAM.NAMES"}, "starts with '$'"),
        ({"subject": "$KV.jobs.key"}, "starts with '$'"),
        ({"subject": "$SYS.REQ.SERVER.PING"}, "starts with '$'"),
        ({"subject": "_INBOX.abc"}, "starts with '_INBOX.'"),
    ],
)
def test_a_bad_subject_or_timeout_is_refused_at_registration(options, problem) -> None:
    mux = bgjob.Mux()
    with pytest.raises(bgjob.HandlerError, match="handler for 'x'") as caught:
        mux.request_reply("x", **options)
    assert problem in str(caught.value)
    assert "x" not in mux


def test_reply_mapping_without_a_server() -> None:
    from bgjob.request_reply import reply_result

    assert reply_result("s", b'{"a": 1}', None) == bgjob.Complete({"a": 1})
    assert reply_result("s", b"", {}) == bgjob.Complete(None)
    assert reply_result("s", b"\xff\xfe", {}) == bgjob.Complete(b"\xff\xfe")
    assert reply_result("s", b"", {"bgjob-retry-after": "2.5"}).delay == 2.5  # type: ignore[attr-defined]
    with pytest.raises(bgjob.RequestFailed, match="not a plain decimal number of seconds"):
        reply_result("s", b"", {"Bgjob-Retry-After": "soon"})
    with pytest.raises(bgjob.NonRetryable):
        reply_result("s", b"", {"Nats-Service-Error-Code": "400", "Nats-Service-Error": "no"})
    dlq = reply_result("s", b"", {"Nats-Service-Error-Code": "422", "Nats-Service-Error": "no"})
    assert isinstance(dlq, bgjob.MoveToDlq) and dlq.reason == "service"
    with pytest.raises(bgjob.RequestFailed) as caught:
        reply_result("s", json.dumps({"x": 1}).encode(), {"Nats-Service-Error-Code": "503"})
    assert caught.value.kind == "error" and caught.value.code == "503" and caught.value.subject == "s"


def run_until_it_stops(worker: bgjob.Worker) -> BaseException | None:
    """Run `worker` in a thread and return what its run() raised; fail the test when it keeps running."""
    raised: list[BaseException | None] = []

    def run() -> None:
        try:
            worker.run()
        except BaseException as exc:  # noqa: BLE001 - what the test checks
            raised.append(exc)
        else:
            raised.append(None)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        wait_until(lambda: raised, message="the worker refusing to start")
    finally:
        worker.stop()
        thread.join(timeout=30)
    return raised[0]


@pytest.mark.parametrize("captured_by", ["its own queue's stream", "another stream"])
def test_a_worker_refuses_to_start_when_a_stream_captures_a_request_subject(client, prefix, captured_by) -> None:
    if captured_by == "its own queue's stream":  # the stream every send_job("loop") is stored in
        subject, stream = f"{prefix}.default.job.loop", f"{prefix.upper()}_DEFAULT"
    else:
        subject, stream = f"{prefix}.orders.new", f"{prefix.upper()}_ORDERS"
        client.run(lambda core: core.js.add_stream(name=stream, subjects=[f"{prefix}.orders.>"]))
    mux = bgjob.Mux()
    mux.handle("local", lambda job: bgjob.Complete())
    mux.request_reply("loop", subject=subject, timeout=5)
    job_id = client.send_job("loop", None, store_result=True)
    error = run_until_it_stops(bgjob.Worker(client, mux, fetch_timeout=0.5))
    assert isinstance(error, bgjob.ConfigurationError), error
    assert f"request-reply handler for 'loop': subject {subject!r} is captured by JetStream stream {stream!r}" in str(
        error)  # fmt: skip
    assert client.result(job_id).status is bgjob.ResultStatus.READY  # never run, never copied


def test_a_publish_acknowledgement_reply_dead_letters_the_job_at_once(client, start_worker, prefix) -> None:
    # A stream made after the worker started (its start-up check saw none): each request is stored, the reply
    # is the stream's PubAck. Retried, every attempt would store one more copy.
    subject, stream = f"{prefix}.late.thumb", f"{prefix.upper()}_LATE"
    mux = bgjob.Mux()
    mux.request_reply("thumb", subject=subject, timeout=5)
    start_worker(client, mux, retry_policy=POLICY)
    client.run(lambda core: core.js.add_stream(name=stream, subjects=[f"{prefix}.late.>"]))
    job_id = client.send_job("thumb", {"w": 64}, store_result=True)
    entry = dead_letter(client, job_id)
    assert entry.reason == "non_retryable" and entry.attempts == 1
    assert "RequestFailed" in entry.error and "JetStream publish acknowledgement" in entry.error
    assert f"stream {stream!r}" in entry.error and "not a service's" in entry.error
    info = client.run(lambda core: core.js.stream_info(stream))
    assert info.state.messages == 1  # the one request of its one attempt, no more


RETRY_LIMIT = "3155760000"  # Retry's bound, MAX_DELAY_SECONDS (100 years), as a plain decimal


@pytest.mark.parametrize(
    ("value", "seconds"),
    [("0", 0.0), ("5", 5.0), ("2.5", 2.5), (" 10 ", 10.0), ("007", 7.0), ("0.000", 0.0), (RETRY_LIMIT, 3155760000.0)],
)
def test_retry_after_accepts_a_plain_decimal_within_retrys_bounds(value, seconds) -> None:
    from bgjob.request_reply import reply_result

    result = reply_result("s", b"", {"Bgjob-Retry-After": value})
    assert isinstance(result, bgjob.Retry) and result.delay == seconds


@pytest.mark.parametrize(
    "value",
    ["", "soon", "1e20", "3e9", "1E2", "1_0", "-0", "-1", "+5", "inf", "nan", "Infinity", "0x10", ".5", "5.", "1.2.3",
     "1 0", "\u0661", "3155760000.5", "3155760001", "9" * 400],
)  # fmt: skip
def test_retry_after_anything_but_a_plain_decimal_within_bounds_is_a_bad_reply(value) -> None:
    from bgjob.request_reply import reply_result

    with pytest.raises(bgjob.RequestFailed) as caught:
        reply_result("s", b"", {"Bgjob-Retry-After": value})
    assert caught.value.kind == "bad_reply" and caught.value.subject == "s"
    message = str(caught.value)
    assert "Bgjob-Retry-After" in message and "not a plain decimal number of seconds" in message
    assert len(message) < 300  # the value is cut to a short repr


@pytest.mark.parametrize(
    "headers",
    [{"Nats-Service-Error-Code": ""}, {"Nats-Service-Error": ""}, {"nats-service-error-code": "  "},
     {"Nats-Service-Error-Code": "", "Nats-Service-Error": ""}, {"Nats-Service-Error": "broken"}],
)  # fmt: skip
def test_an_error_header_present_even_empty_is_an_error(headers) -> None:
    from bgjob.request_reply import reply_result

    with pytest.raises(bgjob.RequestFailed) as caught:
        reply_result("s", b'{"ok": true}', headers)
    assert caught.value.kind == "error" and "service 's' replied error" in str(caught.value)


@pytest.mark.parametrize(
    "body",
    [{"stream": "X", "seq": 4}, {"stream": "X", "seq": 5, "duplicate": True}, {"stream": "X", "seq": 1, "domain": "h"},
     {"error": {"code": 503, "err_code": 10077, "description": "maximum messages exceeded"}}],
)  # fmt: skip
def test_a_publish_acknowledgement_is_a_non_retryable_stream_failure(body) -> None:
    from bgjob.request_reply import reply_result

    with pytest.raises(bgjob.NonRetryable) as caught:
        reply_result("s", json.dumps(body).encode(), {})
    assert isinstance(caught.value.error, bgjob.RequestFailed) and caught.value.error.kind == "stream"
    assert "JetStream publish acknowledgement" in str(caught.value)


@pytest.mark.parametrize(
    "body",
    [{"stream": "X", "seq": 4, "frames": 9}, {"stream": "X"}, {"stream": 1, "seq": 1}, {"stream": "X", "seq": "1"},
     {"stream": "X", "seq": True}, {"error": "no"}, {}, [1, 2]],
)  # fmt: skip
def test_a_value_that_only_looks_like_an_acknowledgement_completes(body) -> None:
    from bgjob.request_reply import reply_result

    assert reply_result("s", json.dumps(body).encode(), {}) == bgjob.Complete(body)


DELEGATED_DOC = ROOT / "docs" / "delegated.md"


def readme_node_example() -> str:
    """The Node.js service of the docs' "Request-reply handlers" section (docs/delegated.md), as printed."""
    text = DELEGATED_DOC.read_text()
    start = text.index("```js\n// thumbnail-service.js") + len("```js\n")
    return text[start : text.index("```", start)]


@pytest.fixture
def dev_server(tmp_path) -> Iterator[str]:
    """bgjob's development server, started as a bgjob command starts it (a token, the 0600 server.json); its data
    dir."""
    from bgjob.server import ensure_embedded_server, stop_embedded_server

    data_dir = tmp_path / "data"
    ensure_embedded_server(data_dir)
    yield data_dir
    stop_embedded_server(data_dir)


def test_the_readme_node_example_serves_the_dev_server_from_the_url_in_server_json(tmp_path, dev_server,
                                                                                   prefix) -> None:  # fmt: skip
    if shutil.which("node") is None or not (NODE_DIR / "node_modules" / "nats").is_dir():
        pytest.skip("needs node and tests/node/node_modules (`npm ci --prefix tests/node`)")
    url = json.loads((dev_server / "server.json").read_text())["url"]  # where docs/delegated.md says the URL is
    assert "@" in url, "the development server requires a token"
    script = tmp_path / "thumbnail-service.js"
    script.write_text(readme_node_example())
    env = {"PATH": os.environ["PATH"], "NODE_PATH": str(NODE_DIR / "node_modules")}
    service = subprocess.Popen(["node", str(script), url], env=env, stderr=subprocess.PIPE, text=True)
    client = bgjob.Client(bgjob.Settings(url=url, prefix=prefix, ack_wait=5.0, retry_for=5.0)).connect()
    mux = bgjob.Mux()
    mux.request_reply("thumbnail", subject="svc.thumbnail", timeout=5,
                      retry_policy=bgjob.RetryPolicy(max_attempts=50, base_delay=0.1, jitter=0))  # fmt: skip
    worker = bgjob.Worker(client, mux, fetch_timeout=0.5)
    thread = worker.start()
    try:

        def value(job_id: str) -> object:  # retried (no responders) until the service has subscribed
            result = client.result(job_id)
            assert result.status is not bgjob.ResultStatus.FAILED, result.errors
            return result.status is bgjob.ResultStatus.SUCCESSFUL and result.value

        good = client.send_job("thumbnail", {"path": "a.png", "size": 64}, store_result=True)
        assert wait_until(lambda: value(good), timeout=60, message="the example's reply") == {
            "thumbnail": "a.png.64.png"}  # fmt: skip
        not_json = client.send_job("thumbnail", b"\xff\x00 not JSON")
        entry = dead_letter(client, not_json)
        assert entry.reason == "non_retryable" and "replied error 400: the arg is not JSON" in entry.error
        no_path = client.send_job("thumbnail", None)
        assert "replied error 400: no path" in dead_letter(client, no_path).error
        assert service.poll() is None, "the service died on a bad job"
    finally:
        worker.stop()
        thread.join(timeout=30)
        client.close()
        service.terminate()
        _, stderr = service.communicate(timeout=10)
    assert "Error" not in stderr, stderr
