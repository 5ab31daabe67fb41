"""`manage.py bgjob_worker`: the project's handlers in a real worker, DB hygiene, request ids in logs."""

from __future__ import annotations

import signal
import socket
import urllib.request

import pytest
from django.db import connection

import bgjob
from bgjob_django import send_job

from ..conftest import wait_until
from .conftest import wait_for
from .testapp.models import Marker, Report


@pytest.mark.django_db(transaction=True)
def test_a_handler_leaving_a_transaction_open_does_not_poison_the_next_job(bgjob_client, run_worker) -> None:
    run_worker(concurrency=1, max_attempts=1)  # one thread: both jobs use the same thread's connection
    send_job("leave-transaction-open", "uncommitted")
    wait_until(lambda: bgjob_client.dlq.count() == 1, message="the failing job in the DLQ")
    send_job("mark", "committed")
    wait_until(lambda: Marker.objects.filter(name="committed").exists(), message="the next job's write")
    assert list(Marker.objects.values_list("name", flat=True)) == ["committed"]


@pytest.mark.django_db(transaction=True)
def test_handler_database_errors_leave_the_connection_usable(bgjob_client, run_worker) -> None:
    from bgjob_django.registry import Registry

    mux = Registry()

    @mux.handler("bad-sql")
    def bad_sql(job):
        with connection.cursor() as cursor:
            cursor.execute("SELECT * FROM no_such_table")
        return bgjob.Complete()

    @mux.handler("mark")
    def mark(job):
        Marker.objects.create(name=job.arg)
        return bgjob.Complete()

    run_worker(mux=mux, concurrency=1, max_attempts=1)
    send_job("bad-sql", None)
    entry = wait_until(lambda: bgjob_client.dlq.list(), message="the failing job")[0]
    assert "no_such_table" in entry.error
    send_job("mark", "after")
    wait_until(lambda: Marker.objects.filter(name="after").exists(), message="the next job's write")


@pytest.mark.django_db(transaction=True)
def test_worker_process_runs_view_jobs_with_request_ids_in_its_log_lines(client, worker_process, bgjob_client) -> None:
    worker = worker_process("--concurrency", "2", env={"BGJOB_TEST_LOG_LEVEL": "DEBUG"})
    job_id = client.get("/report/?user=21", HTTP_X_REQUEST_ID="trace-21").json()["job_id"]
    report = wait_for(lambda: Report.objects.filter(user=21).first(), message="the report")
    assert report.request_id == "trace-21" and report.job_id == job_id
    wait_for(lambda: "job finished" in worker.stderr, message="the job's log lines")
    lines = [ln for ln in worker.stderr.splitlines() if job_id in ln]
    # the handler's own line, and bgjob's "job started" / "job finished" lines
    assert len(lines) >= 3 and all("request=trace-21" in ln for ln in lines), worker.stderr
    assert any("building report for user 21" in ln for ln in lines)
    assert worker.stop() == 0
    assert "draining" in worker.stderr


@pytest.mark.django_db(transaction=True)
def test_worker_declares_settings_and_decorator_schedules_at_start(worker_process, bgjob_client) -> None:
    bgjob_client.schedule("old", "0 1 * * *", "report", headers={"X-Bgjob-Django-Schedule": "1"})
    bgjob_client.schedule("by-hand", "0 2 * * *", "report")
    worker_process()
    schedules = {p.name: p for p in bgjob_client.schedules()}
    assert set(schedules) == {"nightly-report", "cleanup", "by-hand"}  # "old" was declared by Django, now gone
    nightly = schedules["nightly-report"]
    assert (nightly.job_type, nightly.cron, nightly.tz) == ("report", "0 3 * * *", "Europe/Berlin")
    assert nightly.arg == {"user": 0}
    assert (schedules["cleanup"].job_type, schedules["cleanup"].cron) == ("cleanup", "*/30 * * * *")


@pytest.mark.django_db(transaction=True)
def test_worker_serves_the_queues_given_and_drains_on_sigint(worker_process, bgjob_client) -> None:
    worker = worker_process("--queue", "mail", "--queue", "reports")
    send_job("report", {"user": 31}, queue="reports")
    send_job("mark", "from-mail", queue="mail")
    wait_for(lambda: Report.objects.filter(user=31).exists() and Marker.objects.filter(name="from-mail").exists(),
             message="jobs on both queues")  # fmt: skip
    assert "queues mail, reports" in worker.stdout
    assert worker.stop(signal.SIGINT) == 0


def test_gevent_pool_without_monkey_patching_is_refused_clearly(worker_process) -> None:
    worker = worker_process("--pool", "gevent", ready=False)
    assert worker.proc.wait(60) == 1
    assert "--pool gevent needs" in worker.stderr


@pytest.mark.django_db(transaction=True)
def test_gevent_pool_runs_jobs_in_greenlets(worker_process, bgjob_client) -> None:
    pytest.importorskip("gevent")
    worker = worker_process("--pool", "gevent", "--concurrency", "50", python=("-m", "gevent.monkey"))
    for user in range(40, 45):
        send_job("report", {"user": user}, request_id=f"g-{user}")
    wait_for(lambda: Report.objects.filter(user__gte=40).count() == 5, message="five reports from greenlets")
    assert sorted(Report.objects.values_list("request_id", flat=True)) == [f"g-{u}" for u in range(40, 45)]
    assert worker.stop() == 0, worker.stderr


def test_a_bad_setting_stops_the_worker_before_it_starts(worker_process) -> None:
    worker = worker_process(env={"BGJOB_URL": "http://nope"}, ready=False)
    assert worker.proc.wait(60) == 1
    assert "bgjob_django.E003" in worker.stderr and "the BGJOB_URL environment variable 'http://nope'" in worker.stderr


@pytest.mark.django_db(transaction=True)
def test_metrics_port_serves_job_and_queue_metrics(worker_process) -> None:
    pytest.importorskip("prometheus_client")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    worker_process("--metrics-port", str(port), "--metrics-addr", "127.0.0.1")
    send_job("mark", "counted")
    wait_for(lambda: Marker.objects.filter(name="counted").exists(), message="the job")

    def scrape() -> str:
        return urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()

    body = wait_for(lambda: 'bgjob_jobs_succeeded_total{job_type="mark",queue="default"} 1.0' in (b := scrape())
                    and b, message="the job's success counter")  # fmt: skip
    assert 'bgjob_queue_pending{queue="default"}' in body
