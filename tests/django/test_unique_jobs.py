"""bgjob_django's send_job/send_jobs with unique_for: passed to bgjob, validated at the call, reserved at commit."""

from __future__ import annotations

import pytest
from django.db import transaction

import bgjob
from bgjob_django import send_job, send_jobs


@pytest.mark.django_db(transaction=True)
def test_unique_for_sends_a_job_id_once_now_and_at_commit(bgjob_client) -> None:
    assert send_job("report", {"n": 1}, job_id="dj-1", unique_for=60, on_commit=False) == "dj-1"
    with transaction.atomic():
        assert send_job("report", {"n": 2}, job_id="dj-1", unique_for=60, on_commit=True) == "dj-1"
        assert send_jobs([bgjob.JobSpec("report", {"n": 3}, job_id="dj-2", unique_for=60),
                          bgjob.JobSpec("report", {"n": 4}, job_id="dj-2", unique_for=60)],
                         on_commit=True) == ["dj-2", "dj-2"]  # fmt: skip
    assert bgjob_client.queue_stats().pending == 2  # dj-1 once, dj-2 once


@pytest.mark.django_db(transaction=True)
def test_bad_unique_for_is_refused_at_the_call_even_on_commit(bgjob_client) -> None:
    with transaction.atomic():
        with pytest.raises(bgjob.InvalidJob, match="unique_for needs a job_id"):
            send_job("report", {}, unique_for=60, on_commit=True)
        with pytest.raises(bgjob.InvalidJob, match="between 1 s"):
            send_job("report", {}, job_id="dj-3", unique_for=0, on_commit=False)
        with pytest.raises(bgjob.InvalidJob, match=r"job 1: unique_for needs a job_id"):
            send_jobs([("report", {}), bgjob.JobSpec("report", {}, unique_for=60)], on_commit=True)
    bgjob_client.ensure_queue("default")
    assert bgjob_client.queue_stats().pending == 0
