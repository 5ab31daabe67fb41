"""bgjob_django.testing.captured_jobs() (jobs a view sent, recorded instead of sent) and BGJOB["IMMEDIATE"]."""

from __future__ import annotations

import threading

import pytest
from django.test import TestCase
from django.test import utils as test_utils
from django.urls import reverse

import bgjob
from bgjob.testing import immediate_log
from bgjob_django import get_client, producer, send_job, send_jobs
from bgjob_django.models import OutboxMessage
from bgjob_django.testing import CapturedJobs, CaptureStackError, captured_jobs

from .testapp.models import Marker


class CapturedInTestCase(TestCase):
    """A TestCase never commits: on_commit jobs are recorded when captureOnCommitCallbacks runs the callbacks."""

    def test_on_commit_jobs_recorded_when_the_callbacks_run(self) -> None:
        with captured_jobs() as jobs, self.captureOnCommitCallbacks(execute=True):
            response = self.client.get(reverse("send-report-in-transaction"), {"user": 5})
        [job] = jobs
        assert (job.id, job.type, job.arg, job.queue, job.on_commit) == (response.json()["job_id"], "report",
                                                                         {"user": 5}, "default", True)  # fmt: skip
        assert jobs.pending == []

    def test_callbacks_that_never_run_leave_the_jobs_pending(self) -> None:
        with captured_jobs() as jobs, self.captureOnCommitCallbacks(execute=False) as callbacks:
            self.client.get(reverse("send-report-in-transaction"), {"user": 6})
        assert list(jobs) == [] and [j.arg for j in jobs.pending] == [{"user": 6}]
        for callback in callbacks:  # run later: recorded then
            callback()
        assert jobs.types() == ["report"] and jobs.pending == []

    def test_a_rolled_back_transaction_records_nothing(self) -> None:
        with captured_jobs() as jobs, self.captureOnCommitCallbacks(execute=True):
            response = self.client.get(reverse("send-report-in-transaction"), {"user": 7, "fail": 1})
        assert response.status_code == 500 and list(jobs) == []


@pytest.mark.django_db
def test_direct_and_outbox_jobs_recorded_at_the_call_and_never_sent(bgjob_client: bgjob.Client) -> None:
    with captured_jobs() as jobs:
        direct = send_job("report", {"user": 1}, queue="mail", delay=30, request_id="req-1")
        boxed = send_job("mark", "m", outbox=True)
        many = send_jobs([("mark", "a"), bgjob.JobSpec("mark", "b", queue="other")])
        with captured_jobs() as inner:  # the innermost block records
            send_job("mark", "inner")
    expected = [(direct, "report", "direct"), (boxed, "mark", "outbox"), (many[0], "mark", "direct"),
                (many[1], "mark", "direct")]  # fmt: skip
    assert [(j.id, j.type, j.mode) for j in jobs] == expected
    assert (jobs[0].queue, jobs[0].delay, jobs[0].request_id, jobs[0].due is not None) == ("mail", 30, "req-1", True)
    assert jobs[1].outbox and jobs[3].queue == "other" and jobs.of_type("report") == [jobs[0]]
    assert inner.types() == ["mark"]
    assert OutboxMessage.objects.count() == 0
    assert bgjob_client.queue_stats("default").pending == 0
    with captured_jobs(), pytest.raises(bgjob.InvalidJob):  # validated at the call, as when sending
        send_job("report", {"bad": {1, 2}})


@pytest.mark.django_db
def test_nested_blocks_end_cleanly_and_sending_is_normal_afterwards(bgjob_client: bgjob.Client) -> None:
    """Two empty recorders compare equal: exits remove their own recorder by identity, so an inner exit never takes
    the outer's, and nothing stays registered to swallow later sends."""
    with captured_jobs() as outer:
        with captured_jobs() as inner:
            pass
        send_job("mark", "outer")
    assert outer.types() == ["mark"] and inner == [] and producer._captures == []
    with pytest.raises(ZeroDivisionError), captured_jobs(), captured_jobs():
        raise ZeroDivisionError  # an exception inside nested blocks
    assert producer._captures == []
    send_job("mark", "sent")  # really sent
    assert bgjob_client.queue_stats("default").pending == 1


def test_blocks_ending_out_of_order_in_threads() -> None:
    """Process-wide scope (like mail.outbox): a block opened in another thread records this thread's sends while it
    is the innermost; blocks ending in any order each remove their own recorder."""
    opened, close = threading.Event(), threading.Event()
    held: list[CapturedJobs] = []

    def other() -> None:
        with captured_jobs() as theirs:
            held.append(theirs)
            opened.set()
            close.wait(timeout=30)

    with captured_jobs() as mine:
        thread = threading.Thread(target=other)
        thread.start()
        assert opened.wait(timeout=30)
        send_job("mark", "while-both-open")  # the innermost open block (the other thread's) records it
    # this thread's outer block ended first: the other thread's stays, alone
    assert [id(each) for each in producer._captures] == [id(held[0])]
    close.set()
    thread.join(timeout=30)
    assert producer._captures == [] and mine == [] and held[0].types() == ["mark"]


def test_a_corrupted_stack_is_a_named_error_and_leaves_nothing_registered() -> None:
    with pytest.raises(CaptureStackError), captured_jobs():
        producer._captures.clear()  # from outside the block
    assert producer._captures == []


@pytest.mark.django_db
def test_immediate_setting_runs_the_registry_handlers_inline(settings, bgjob_settings: dict) -> None:
    settings.BGJOB = {**bgjob_settings, "IMMEDIATE": True}
    job_id = send_job("mark", "now")
    assert Marker.objects.filter(name="now").exists()  # ran inside the call, in this test's transaction
    assert [(o.id, o.acked) for o in immediate_log(get_client()).outcomes] == [(job_id, True)]
    send_job("fail", 1)
    assert immediate_log(get_client()).dead_letters[-1].fate.reason == "handler"


def test_immediate_setting_refused_with_debug_off_outside_tests(settings, bgjob_settings: dict,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    settings.BGJOB = {**bgjob_settings, "IMMEDIATE": True}
    settings.DEBUG = False
    monkeypatch.delattr(test_utils._TestState, "saved_data")  # as in a deployed site
    with pytest.raises(bgjob.ConfigurationError, match="test-only"):
        get_client()


@pytest.mark.django_db
def test_run_jobs_fixture_runs_the_registry_in_the_test_transaction(run_jobs) -> None:
    """The plugin's run_jobs with this conftest's bgjob_client (the project's client) and the registry: handlers run
    in the test's thread, so they see (and write in) the test's transaction."""
    marked, failed = send_job("mark", "from-a-worker"), send_job("fail", 1)
    outcomes = {o.id: o for o in run_jobs()}
    assert outcomes[marked].acked and Marker.objects.filter(name="from-a-worker").exists()
    assert outcomes[failed].dead_lettered and outcomes[failed].fate.reason == "handler"


def test_example_project_tests_pass(tmp_path) -> None:
    """example_project/reports/tests.py (captured_jobs, BGJOB["IMMEDIATE"]) passes under Django's test runner,
    with no nats-server."""
    import os
    import subprocess
    import sys

    from ..conftest import ROOT

    env = {k: v for k, v in os.environ.items() if not k.startswith(("BGJOB_", "DJANGO_"))}
    env.update(PYTHONPATH=str(ROOT), EXAMPLE_DB_PATH=str(tmp_path / "db.sqlite3"))
    done = subprocess.run([sys.executable, "manage.py", "test", "reports"], cwd=ROOT / "example_project", env=env,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "Ran 4 tests" in done.stderr
