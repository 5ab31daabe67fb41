"""jobs.py handlers, @periodic, and send_job from Django code (request ids, on_commit)."""

from __future__ import annotations

import queue

import pytest
from django.db import transaction

import bgjob
from bgjob_django import handler, periodic, registry, send_job, send_jobs
from bgjob_django.conf import ScheduleSpec
from bgjob_django.registry import Registry
from bgjob_django.request_id import request_id_context

from ..conftest import drain, wait_until
from .testapp.models import Report


def test_jobs_modules_of_installed_apps_are_autodiscovered() -> None:
    assert {"report", "mark", "fail", "forward", "cleanup"} <= set(registry.types())
    cleanup = ScheduleSpec("cleanup", "*/30 * * * *", "cleanup", None, "default", "Europe/Berlin")
    assert cleanup in registry.periodic_jobs()


def test_handler_decorator_registers_once_per_type() -> None:
    mux = Registry()

    @handler("a", mux=mux)
    def a(job):
        return bgjob.Complete()

    assert mux.get("a") is a
    with pytest.raises(bgjob.HandlerError, match="already registered"):
        handler("a", mux=mux)(lambda job: bgjob.Complete())
    with pytest.raises(bgjob.InvalidJob):
        handler("not a type")


def test_handler_decorator_marks_arg_keys_sensitive_and_refuses_bad_ones() -> None:
    mux = Registry()

    @handler("charge", mux=mux, sensitive=["card", "password"])
    def charge(job):
        return bgjob.Complete()

    assert mux.sensitive_keys("charge") == frozenset({"card", "password"})
    for number, bad in enumerate(("card", ["a,b"], [""], [1])):
        with pytest.raises(bgjob.HandlerError, match="sensitive"):
            handler(f"bad-{number}", mux=mux, sensitive=bad)(lambda job: bgjob.Complete())
    assert mux.types() == ["charge"]


def test_periodic_registers_the_handler_and_its_schedule() -> None:
    mux = Registry()

    @periodic("0 * * * *", mux=mux)
    def hourly(job):
        return bgjob.Complete()

    @periodic("0 3 * * *", name="nightly-report", arg={"kind": "daily"}, tz="Europe/Berlin", mux=mux)
    @handler("report", mux=mux)
    def report(job):
        return bgjob.Complete()

    assert mux.types() == ["hourly", "report"]
    assert mux.periodic_jobs() == [
        ScheduleSpec("hourly", "0 * * * *", "hourly"),
        ScheduleSpec("nightly-report", "0 3 * * *", "report", {"kind": "daily"}, "default", "Europe/Berlin"),
    ]
    with pytest.raises(bgjob.InvalidSchedule, match="invalid cron"):
        periodic("0 3 * *", mux=mux)


def capture_jobs(run_worker, *types: str) -> queue.Queue:
    """A worker whose handlers for `types` put each Job into the returned queue."""
    seen: queue.Queue = queue.Queue()
    mux = Registry()
    for job_type in types:
        mux.handle(job_type, lambda job: seen.put(job) or bgjob.Complete())
    run_worker(mux=mux)
    return seen


def test_send_job_uses_the_project_client_and_the_current_request_id(bgjob_client, run_worker) -> None:
    seen = capture_jobs(run_worker, "report")
    with request_id_context("req-42"):
        job_id = send_job("report", {"user": 7}, headers={"X-Tenant": "t1"})
    plain_id = send_job("report", {"user": 8})
    explicit_id = send_job("report", {"user": 9}, request_id="given")
    jobs = {j.id: j for j in drain(seen, 3)}
    assert (jobs[job_id].arg, jobs[job_id].request_id) == ({"user": 7}, "req-42")
    assert jobs[job_id].headers == {"X-Tenant": "t1"} and jobs[explicit_id].request_id == "given"
    assert len(jobs[plain_id].request_id) == 32  # none sent: the worker's RequestId middleware made one


@pytest.mark.django_db(transaction=True)
def test_on_commit_publishes_after_the_transaction_commits(bgjob_client) -> None:
    with transaction.atomic():
        job_id = send_job("report", {"user": 1}, on_commit=True)
        assert bgjob_client.queues() == []  # nothing published (not even the queue created) yet
    assert bgjob_client.queue_stats().pending == 1
    assert len(job_id) == 32


@pytest.mark.django_db(transaction=True)
def test_on_commit_publishes_nothing_when_the_transaction_rolls_back(bgjob_client) -> None:
    with pytest.raises(RuntimeError), transaction.atomic():
        send_job("report", {"user": 1}, on_commit=True)
        raise RuntimeError("roll back")
    bgjob_client.ensure_queue("default")
    assert bgjob_client.queue_stats().pending == 0


@pytest.mark.django_db(transaction=True)
def test_on_commit_setting_makes_it_the_default(settings, bgjob_settings, bgjob_client) -> None:
    settings.BGJOB = {**bgjob_settings, "ON_COMMIT": True}
    from bgjob_django import get_client

    client = get_client()
    with pytest.raises(RuntimeError), transaction.atomic():
        send_job("report", {"user": 1})
        raise RuntimeError("roll back")
    with transaction.atomic():
        send_job("report", {"user": 2})
        send_job("report", {"user": 3}, on_commit=False)
        assert client.queue_stats().pending == 1
    assert client.queue_stats().pending == 2


@pytest.mark.django_db(transaction=True)
def test_send_jobs_on_commit_publishes_all_after_commit_and_none_on_rollback(bgjob_client) -> None:
    with pytest.raises(RuntimeError), transaction.atomic():
        send_jobs([("report", {"user": i}) for i in range(5)], on_commit=True)
        raise RuntimeError("roll back")
    with transaction.atomic():
        ids = send_jobs([("report", {"user": 1}), bgjob.JobSpec("report", {"user": 2}, job_id="r-2")], on_commit=True)
        assert bgjob_client.queues() == []
        with pytest.raises(bgjob.InvalidJob, match=r"job 1: .*JSON-serialisable"):
            send_jobs([("report", 1), ("report", {"x": object()})], on_commit=True)
    assert len(ids) == 2 and ids[1] == "r-2"
    assert bgjob_client.queue_stats().pending == 2
    assert len(send_jobs([("report", 3)], on_commit=False)) == 1
    assert bgjob_client.queue_stats().pending == 3


@pytest.mark.django_db(transaction=True)
def test_on_commit_refuses_an_invalid_job_at_once(bgjob_client) -> None:
    with transaction.atomic():
        with pytest.raises(bgjob.InvalidJob, match="JSON-serialisable"):
            send_job("report", {"when": object()}, on_commit=True)
        with pytest.raises(bgjob.InvalidJob, match="invalid job type"):
            send_job("bad type", None, on_commit=True)


@pytest.mark.django_db(transaction=True)
def test_view_sends_on_commit_and_nothing_on_rollback(client, bgjob_client) -> None:
    ok = client.get("/report-in-transaction/?user=5").json()
    failed = client.get("/report-in-transaction/?user=6&fail=1")
    assert failed.status_code == 500
    assert bgjob_client.queue_stats().pending == 1
    assert list(Report.objects.values_list("user", flat=True)) == [5]
    assert len(ok["job_id"]) == 32


@pytest.mark.django_db(transaction=True)
def test_request_id_middleware_tags_the_response_and_the_jobs_sent(client, run_worker) -> None:
    seen = capture_jobs(run_worker, "report")
    given = client.get("/report/?user=3", HTTP_X_REQUEST_ID="abc-123")
    assert given["X-Request-ID"] == "abc-123"
    made = client.get("/report/?user=4")
    assert len(made["X-Request-ID"]) == 32
    hostile = client.get("/report/?user=5", HTTP_X_REQUEST_ID="evil\nInjected: yes")
    assert hostile["X-Request-ID"] != "evil\nInjected: yes" and len(hostile["X-Request-ID"]) == 32
    jobs = {j.arg["user"]: j.request_id for j in drain(seen, 3)}
    assert jobs == {3: "abc-123", 4: made["X-Request-ID"], 5: hostile["X-Request-ID"]}


@pytest.mark.django_db(transaction=True)
def test_jobs_sent_by_a_handler_carry_its_request_id(bgjob_client, run_worker) -> None:
    run_worker()
    send_job("forward", {"user": 11}, request_id="chain-1")
    report = wait_until(lambda: Report.objects.filter(user=11).first(), message="the forwarded report")
    assert report.request_id == "chain-1"


def test_handler_takes_every_option_of_mux_handle() -> None:
    """@handler and Registry.handle pass singleton/partitioned through (Registry.handle refused singleton=)."""
    from bgjob_django.registry import Registry, handler

    mux = Registry()
    handler("one-at-a-time", mux=mux, singleton=True)(lambda job: bgjob.Complete())
    handler("in-order", mux=mux, partitioned=True, time_limit=5)(lambda job: bgjob.Complete())
    assert mux.options("one-at-a-time").singleton and mux.options("in-order").partitioned
    assert mux.options("in-order").time_limit == 5.0
