"""Immediate mode (bgjob.testing.immediate): send_job runs the handler inline, with no server at all."""

from __future__ import annotations

import threading

import pytest

import bgjob
from bgjob.redaction import MASK
from bgjob.testing import immediate_log, set_immediate_mux


def immediate_client(mux: bgjob.Mux, **settings: object) -> bgjob.Client:
    client = bgjob.Client(bgjob.Settings(immediate=True, **settings))  # type: ignore[arg-type]
    client.immediate_mux = mux
    return client


def test_complete_runs_inline_and_stores_its_value() -> None:
    mux, seen = bgjob.Mux(), []

    @mux.handler("double")
    def double(job: bgjob.Job) -> bgjob.Result:
        seen.append((job.arg, job.attempt, threading.current_thread()))
        return bgjob.Complete(job.arg["n"] * 2)

    client = immediate_client(mux, result_queues=["results"])
    first = client.send_job("double", {"n": 2})
    stored = client.send_job("double", {"n": 3}, queue="results", request_id="r-1")
    assert seen == [({"n": 2}, 1, threading.current_thread()), ({"n": 3}, 1, threading.current_thread())]
    log = immediate_log(client)
    assert [(o.id, o.acked) for o in log.outcomes] == [(first, True), (stored, True)]
    assert log.results == {stored: 6}  # only the job that stores its result
    assert log.outcomes[1].job.request_id == "r-1"
    with pytest.raises(bgjob.ConfigurationError, match="immediate mode"):
        client.result(stored)  # anything that needs a server says so; nothing connects


def test_retry_runs_again_at_once_until_max_attempts_then_dead_letter() -> None:
    mux, attempts = bgjob.Mux(), []

    @mux.handler("flaky", retry_policy=bgjob.RetryPolicy(max_attempts=3))
    def flaky(job: bgjob.Job) -> bgjob.Result:
        attempts.append(job.attempt)
        return bgjob.Complete() if job.attempt == 2 else bgjob.Retry(3600)

    @mux.handler("hopeless", retry_policy=bgjob.RetryPolicy(max_attempts=3))
    def hopeless(job: bgjob.Job) -> bgjob.Result:
        raise ValueError("never works")

    @mux.handler("refused")
    def refused(job: bgjob.Job) -> bgjob.Result:
        return bgjob.MoveToDlq("bad input", reason="invalid")

    client = immediate_client(mux)
    client.send_job("flaky", None, delay=3600)  # the delay is not waited for either
    assert attempts == [1, 2]
    log = immediate_log(client)
    assert [(o.attempt, o.fate.kind.value, o.fate.delay) for o in log.outcomes] == [
        (1, "retry_scheduled", 3600.0), (2, "acked", None)]  # fmt: skip
    log.clear()
    hopeless_id = client.send_job("hopeless", None)
    refused_id = client.send_job("refused", None)
    assert [o.attempt for o in log.outcomes if o.id == hopeless_id] == [1, 2, 3]
    assert [(d.id, d.fate.reason) for d in log.dead_letters] == [(hopeless_id, "max_attempts"), (refused_id, "invalid")]
    assert "ValueError: never works" in (log.dead_letters[0].fate.error or "")
    client.send_job("no-such-type", None)
    assert log.dead_letters[-1].fate.reason == "unknown_handler"


def test_env_flag_and_process_wide_mux(monkeypatch: pytest.MonkeyPatch) -> None:
    """BGJOB_IMMEDIATE=1 makes the module-level send_job's client immediate; set_immediate_mux gives it handlers."""
    mux, ran = bgjob.Mux(), []
    mux.handle("ping", lambda job: ran.append(job.arg) or bgjob.Complete())
    monkeypatch.setenv("BGJOB_IMMEDIATE", "1")
    monkeypatch.delenv("BGJOB_URL", raising=False)
    client = bgjob.Client()
    with pytest.raises(bgjob.ConfigurationError, match="needs the handlers"):
        client.send_job("ping", 1)
    set_immediate_mux(mux)
    try:
        client.send_jobs([("ping", 2), ("ping", 3)])
    finally:
        set_immediate_mux(None)
    assert ran == [2, 3]


@pytest.mark.parametrize("url", ["nats://nats.prod.example:4222", "nats://10.0.0.5:4222",
                                 "nats://127.0.0.1:4222,nats://db1:4222"])  # fmt: skip
def test_refused_under_a_production_looking_url(url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(bgjob.ConfigurationError, match="not loopback"):
        bgjob.Settings(immediate=True, url=url)
    monkeypatch.setenv("BGJOB_IMMEDIATE", "1")
    monkeypatch.setenv("BGJOB_URL", url)
    with pytest.raises(bgjob.ConfigurationError, match="not loopback"):
        bgjob.Settings.from_env()


def test_loopback_urls_are_accepted() -> None:
    for url in ("nats://127.0.0.1:4222", "nats://localhost:4222", "nats://[::1]:4222", "tls://user:pw@127.0.0.2"):
        assert bgjob.Settings(immediate=True, url=url).immediate


def test_a_chain_of_any_length_runs_without_recursion_in_fifo_order() -> None:
    """A handler sending the next job: queued, run after the sender's run ends (was: recursion, a RecursionError
    at ~165 deep dead-lettered while send_job returned normally)."""
    mux, order = bgjob.Mux(), []
    client = immediate_client(mux)

    @mux.handler("step")
    def step(job: bgjob.Job) -> bgjob.Result:
        order.append(job.arg)
        if job.arg < 3000:
            client.send_job("step", job.arg + 1)
        return bgjob.Complete()

    @mux.handler("fan")
    def fan(job: bgjob.Job) -> bgjob.Result:
        order.append(job.arg)
        for child in {"a": ["b", "c"], "b": ["d"]}.get(job.arg, []):
            client.send_job("fan", child)
        order.append(f"{job.arg} returned")
        return bgjob.Complete()

    client.send_job("step", 1)
    log = immediate_log(client)
    assert order == list(range(1, 3001)) and all(o.acked for o in log.outcomes) and not log.dead_letters
    order.clear()
    client.send_job("fan", "a")  # returns once everything it led to ran
    assert order == ["a", "a returned", "b", "b returned", "c", "c returned", "d", "d returned"]


def test_error_texts_are_scrubbed_as_the_settle_path_does(caplog: pytest.LogCaptureFixture) -> None:
    mux, secret = bgjob.Mux(), "hunter2-secret"

    @mux.handler("refuse", sensitive=["password"])
    def refuse(job: bgjob.Job) -> bgjob.Result:
        return bgjob.MoveToDlq(f"bad password {job.arg['password']}", reason="invalid")

    @mux.handler("retry", sensitive=["password"], retry_policy=bgjob.RetryPolicy(max_attempts=2))
    def retry(job: bgjob.Job) -> bgjob.Result:
        return bgjob.Retry(1, error=ValueError(f"login failed with {job.arg['password']}"))

    class Scrub(bgjob.WorkerHooks):
        def scrub(self, text: str, job: bgjob.Job) -> str:
            return text.replace("login", "L***")

    client, hooks = immediate_client(mux), Scrub()
    bgjob.register_hooks(hooks)
    try:
        with caplog.at_level("ERROR", logger="bgjob.testing"):
            client.send_job("refuse", {"password": secret})
            client.send_job("retry", {"password": secret})
    finally:
        bgjob.unregister_hooks(hooks)
    fates = [o.fate for o in immediate_log(client).outcomes]
    assert [f.kind.value for f in fates] == ["dead_lettered", "retry_scheduled", "dead_lettered"]
    assert all(secret not in (f.error or "") + (f.traceback or "") for f in fates)
    assert fates[0].error == f"bad password {MASK}"
    assert fates[2].error == f"ValueError: L*** failed with {MASK}"  # the hooks' scrub too
    assert caplog.records and secret not in caplog.text


def test_one_warning_per_immediate_client(caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BGJOB_URL", raising=False)
    mux = bgjob.Mux()
    mux.handle("ping", lambda job: bgjob.Complete())
    with caplog.at_level("WARNING", logger="bgjob.testing"):
        client = immediate_client(mux)
        client.send_job("ping", 1)
        client.send_job("ping", 2)
        immediate_client(mux)
    warnings = [r for r in caplog.records if r.levelname == "WARNING" and "immediate mode" in r.getMessage()]
    assert len(warnings) == 2


@pytest.mark.parametrize("settings", [{}, {"url": "nats://127.0.0.1:4222"}])
def test_refused_with_a_production_bgjob_url_in_the_environment(settings: dict,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    """Settings(immediate=True) built in code (its url None or loopback) in a process whose environment names a
    production server."""
    monkeypatch.setenv("BGJOB_URL", "nats://nats.prod.example:4222")
    with pytest.raises(bgjob.ConfigurationError, match="not loopback"):
        bgjob.Client(bgjob.Settings(immediate=True, **settings))
    monkeypatch.setenv("BGJOB_URL", "nats://127.0.0.1:4222")
    assert bgjob.Client(bgjob.Settings(immediate=True, **settings)).settings.immediate
