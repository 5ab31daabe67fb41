"""Sensitive job data on the worker side: keys marked by the producer and the handler, masked in every log
line, dead letter and stored result; sensitive headers left out of dead letters; the scrub hook."""

from __future__ import annotations

import io
import json
import logging
import queue
import re
from collections.abc import Callable, Iterator

import pytest

import bgjob
from bgjob.logs import TEXT_FORMAT, ContextFilter, JsonFormatter, LogJobs
from bgjob.redaction import MASK

from .conftest import drain, wait_until

CARD = "4111111111111111"
PASSWORD = "hunter2-planted-pw"
TOKEN = "planted-token-9f3a"
API_KEY = "planted-key-77c1"
SECRETS = (CARD, PASSWORD, TOKEN, API_KEY)
ARG = {"card": CARD, "password": PASSWORD, "amount": 1250, "customer": "customer-42"}
HEADERS = {"Authorization": f"Bearer {TOKEN}", "X-Api-Key": API_KEY, "X-Trace": "ok"}


@pytest.fixture
def logs() -> Iterator[Callable[[], str]]:
    """bgjob's log lines at DEBUG, through the text and the JSON formatter; returns a reader of both."""
    text, json_lines = io.StringIO(), io.StringIO()
    text_handler = logging.StreamHandler(text)
    text_handler.addFilter(ContextFilter())
    text_handler.setFormatter(logging.Formatter(TEXT_FORMAT))
    json_handler = logging.StreamHandler(json_lines)
    json_handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("bgjob")
    level = logger.level
    logger.setLevel(logging.DEBUG)
    logger.addHandler(text_handler)
    logger.addHandler(json_handler)
    yield lambda: text.getvalue() + json_lines.getvalue()
    logger.removeHandler(text_handler)
    logger.removeHandler(json_handler)
    logger.setLevel(level)


def _charge(job: bgjob.Job) -> bgjob.Result:
    arg = job.arg
    raise ValueError(f"card {arg['card']} declined for {arg['password']} (auth {job.headers['Authorization']}, "
                     f"key {job.headers['X-Api-Key']}, {arg['customer']})")  # fmt: skip


def _assert_no_secret(text: str | None, where: str) -> None:
    for secret in SECRETS:
        assert secret not in (text or ""), f"{secret!r} found in {where}: {text!r}"


# -- marking data sensitive ---------------------------------------------------------------------------------------
def test_the_handler_sees_the_producers_sensitive_keys_joined_by_the_handlers_and_the_arg_intact(
    client, start_worker
) -> None:
    seen: queue.Queue = queue.Queue()
    mux = bgjob.Mux()

    @mux.handler("charge", sensitive=["password"])
    def charge(job: bgjob.Job) -> bgjob.Result:
        seen.put((job.sensitive, job.arg))
        return bgjob.Complete()

    mux.handle("plain", lambda job: seen.put((job.sensitive, job.arg)) or bgjob.Complete())
    start_worker(client, mux)
    client.send_job("charge", ARG, sensitive=["card"])
    assert drain(seen, 1) == [(frozenset({"card", "password"}), ARG)]
    client.send_jobs([bgjob.JobSpec("charge", ARG, sensitive=["card", "amount"]), ("charge", ARG),
                      bgjob.JobSpec("plain", ARG, sensitive=["card"]), ("plain", ARG)])  # fmt: skip
    assert sorted(drain(seen, 4), key=lambda s: sorted(s[0])) == sorted([
        (frozenset({"amount", "card", "password"}), ARG), (frozenset({"password"}), ARG),
        (frozenset({"card"}), ARG), (frozenset(), ARG),
    ], key=lambda s: sorted(s[0]))  # fmt: skip


@pytest.mark.parametrize("keys", ["card", ["ca,rd"], ["two words"], [7], [""]])
def test_bad_sensitive_keys_are_refused_by_name_and_nothing_is_sent(client, keys) -> None:
    with pytest.raises(bgjob.InvalidJob, match="sensitive"):
        client.send_job("charge", ARG, sensitive=keys)
    with pytest.raises(bgjob.InvalidJob, match=r"job 0: .*sensitive.*nothing was sent"):
        client.send_jobs([bgjob.JobSpec("charge", ARG, sensitive=keys)])
    with pytest.raises(bgjob.HandlerError, match=r"'charge'.*sensitive"):
        bgjob.Mux().handle("charge", lambda job: bgjob.Complete(), sensitive=keys)
    assert client.queue_stats("default").pending == 0


# -- every channel: logs, dead letters, stored results ------------------------------------------------------------
@pytest.mark.parametrize("middleware", [[], [bgjob.Recovery()]], ids=["raised", "recovered"])
def test_an_exception_quoting_sensitive_values_leaves_no_trace_in_logs_dead_letter_or_result(
    middleware, client, start_worker, logs
) -> None:
    mux = bgjob.Mux()
    mux.handle("charge", _charge, sensitive=["password"])
    start_worker(client, mux, middleware=middleware, hooks=[LogJobs()],
                 retry_policy=bgjob.RetryPolicy(max_attempts=2, base_delay=0.05, jitter=0))  # fmt: skip
    job_id = client.send_job("charge", ARG, sensitive=["card"], headers=HEADERS, store_result=True)
    entry = wait_until(lambda: client.dlq.get(job_id) if client.dlq.count() else None, message="the dead letter")
    result = client.result(job_id, wait=10)

    for where, text in [("dlq error", entry.error), ("dlq traceback", entry.traceback),
                        *[(f"result error {e.attempt}", e.error) for e in result.errors],
                        *[(f"result traceback {e.attempt}", e.traceback) for e in result.errors],
                        ("logs", logs())]:  # fmt: skip
        _assert_no_secret(text, where)
    assert entry.error == f"ValueError: card {MASK} declined for {MASK} (auth {MASK}, key {MASK}, customer-42)"
    assert entry.traceback and entry.traceback.rstrip().endswith(entry.error)
    assert [e.error for e in result.errors] == [entry.error, entry.error]
    assert entry.arg == ARG  # the body is stored as it is: a retry from the DLQ runs the very job
    assert entry.headers["Bgjob-Sensitive"] == "card,password"  # the producer's and the handler's
    text = logs()
    assert text.count("customer-42") >= 4 and MASK in text  # the lines are there, masked
    if not middleware:  # the worker's own line about the raise (Recovery turns it into a Retry first)
        assert re.search(r"raised ValueError: card \*+ declined", text)
    assert "moved to the DLQ" in text and "job finished" in text and "Traceback" in text


def test_a_not_a_result_return_and_a_move_to_dlq_message_are_scrubbed_too(client, start_worker, logs) -> None:
    mux = bgjob.Mux()
    mux.handle("returns-arg", lambda job: job.arg, sensitive=["card", "password"])
    mux.handle("dlq-message", lambda job: bgjob.MoveToDlq(f"bad card {job.arg['card']}"), sensitive=["card"])
    mux.handle("dlq-exception", lambda job: bgjob.MoveToDlq(KeyError(job.arg["password"])), sensitive=["password"])
    start_worker(client, mux, hooks=[LogJobs()], retry_policy=bgjob.RetryPolicy(max_attempts=1))
    ids = [client.send_job(t, ARG, store_result=True) for t in ("returns-arg", "dlq-message", "dlq-exception")]
    wait_until(lambda: client.dlq.count() == 3, message="three dead letters")
    for job_id in ids:
        entry = client.dlq.get(job_id)
        _assert_no_secret(entry.error, f"{entry.type} dlq error")
        _assert_no_secret(entry.traceback, f"{entry.type} dlq traceback")
        assert MASK in entry.error
        for error in client.result(job_id, wait=10).errors:
            _assert_no_secret(error.error, f"{entry.type} result")
    _assert_no_secret(logs(), "logs")


# -- dead letters: sensitive headers ------------------------------------------------------------------------------
ESCAPED = {"backslash": "abc\\def-secret", "newline": "line1\nline2-secret", "quote": 'sec"ret-value',
           "non-ascii": "pässwörd-secret", "both quotes": "back\\slash'quo\"te-secret"}  # fmt: skip


@pytest.mark.parametrize("value", ESCAPED.values(), ids=ESCAPED.keys())
def test_a_sensitive_value_quoted_with_escapes_leaves_no_trace_in_logs_dead_letter_or_result(
    value, client, start_worker, logs
) -> None:
    mux = bgjob.Mux()

    def quotes(job: bgjob.Job) -> bgjob.Result:
        raise ValueError(f"bad {job.arg['pw']!r} in {json.dumps(job.arg)} / {job.arg!r}")

    mux.handle("quote", quotes)
    start_worker(client, mux, hooks=[LogJobs()], retry_policy=bgjob.RetryPolicy(max_attempts=1))
    job_id = client.send_job("quote", {"pw": value, "user": "customer-42"}, sensitive=["pw"], store_result=True)
    entry = wait_until(lambda: client.dlq.get(job_id) if client.dlq.count() else None, message="the dead letter")
    result = client.result(job_id, wait=10)
    texts = {"dlq error": entry.error, "dlq traceback": entry.traceback, "logs": logs(),
             "result": repr([(e.error, e.traceback) for e in result.errors])}  # fmt: skip
    assert [where for where, text in texts.items() if "secret" in (text or "") or "ret-value" in (text or "")] == []
    assert "customer-42" in entry.error and MASK in entry.error


@pytest.mark.parametrize(("keep", "kept"), [(False, {"X-Trace"}),
                                            (True, {"X-Trace", "Authorization", "X-Api-Key", "X-Customer-Ref"})])
def test_dead_letters_drop_sensitive_headers_unless_configured_to_keep_them(keep, kept, make_client,
                                                                            start_worker) -> None:  # fmt: skip
    client = make_client(dlq_keep_sensitive_headers=keep, sensitive_headers=("x-customer-*",))
    seen: queue.Queue = queue.Queue()
    runs: list[str] = []
    mux = bgjob.Mux()

    @mux.handler("fail")
    def fail_once(job: bgjob.Job) -> bgjob.Result:
        runs.append(job.id)
        if len(runs) == 1:
            return bgjob.MoveToDlq("no")
        seen.put((job.arg, job.sensitive, set(job.headers)))
        return bgjob.Complete()

    start_worker(client, mux)
    job_id = client.send_job("fail", ARG, headers={**HEADERS, "X-Customer-Ref": "c-42"}, sensitive=["card"])
    entry = wait_until(lambda: client.dlq.get(job_id) if client.dlq.count() else None, message="the dead letter")
    custom = {k for k in entry.headers if not k.lower().startswith(("bgjob-", "content-type"))}
    assert custom == kept
    assert entry.headers["Bgjob-Sensitive"] == "card"
    assert entry.headers["Bgjob-Id"] == job_id
    client.dlq.retry(job_id)  # the same job runs again: its arg and sensitive keys intact
    assert drain(seen, 1) == [(ARG, frozenset({"card"}), kept)]


# -- the scrub hook -----------------------------------------------------------------------------------------------
class MaskCustomers(bgjob.WorkerHooks):
    def scrub(self, text: str, job: bgjob.Job) -> str:
        return re.sub(r"customer-\d+", "customer-?", text)


class BrokenScrub(bgjob.WorkerHooks):
    def scrub(self, text: str, job: bgjob.Job) -> str:
        raise RuntimeError("scrub bug")


def test_a_scrub_hook_masks_what_bgjob_cannot_know_in_dead_letters_results_and_logs(client, start_worker,
                                                                                     logs) -> None:  # fmt: skip
    mux = bgjob.Mux()
    mux.handle("charge", _charge, sensitive=["card", "password"])
    start_worker(client, mux, hooks=[LogJobs(), MaskCustomers()], retry_policy=bgjob.RetryPolicy(max_attempts=1))
    job_id = client.send_job("charge", ARG, headers=HEADERS, store_result=True)
    entry = wait_until(lambda: client.dlq.get(job_id) if client.dlq.count() else None, message="the dead letter")
    [error] = client.result(job_id, wait=10).errors
    for text in (entry.error, entry.traceback, error.error, error.traceback, logs()):
        assert "customer-42" not in (text or "")
        _assert_no_secret(text, "a channel")
    assert entry.error.endswith("customer-?)")


def test_a_scrub_hook_that_raises_loses_no_job_keeps_the_default_scrub_and_is_logged(client, start_worker,
                                                                                    logs) -> None:  # fmt: skip
    mux = bgjob.Mux()
    mux.handle("charge", _charge, sensitive=["card", "password"])
    start_worker(client, mux, hooks=[BrokenScrub(), MaskCustomers()], retry_policy=bgjob.RetryPolicy(max_attempts=1))
    job_id = client.send_job("charge", ARG, headers=HEADERS)
    entry = wait_until(lambda: client.dlq.get(job_id) if client.dlq.count() else None, message="the dead letter")
    _assert_no_secret(entry.error, "dlq error")
    _assert_no_secret(entry.traceback, "dlq traceback")
    assert entry.error.endswith("customer-?)")  # the hooks after the broken one still ran
    assert "BrokenScrub.scrub failed" in logs() and "RuntimeError: scrub bug" in logs()


# -- reprs ---------------------------------------------------------------------------------------------------------
def test_a_delivery_repr_names_the_job_never_its_message() -> None:
    from bgjob.worker.dispatch import Delivery

    item = Delivery(msg=object())  # type: ignore[arg-type]
    item.job = bgjob.Job(id="j1", type="charge", arg=ARG, headers=HEADERS)
    shown = repr(item)
    _assert_no_secret(shown, "repr")
    assert "j1" in shown and "charge" in shown
