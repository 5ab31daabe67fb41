"""Handlers the tests run, in a worker thread or a `manage.py bgjob_worker` subprocess."""

import logging

from django.db import transaction

import bgjob
from bgjob_django import handler, periodic, send_job

from .models import Marker, Report

log = logging.getLogger("testapp.jobs")


@handler("report")
def report(job: bgjob.Job) -> bgjob.Result:
    log.warning("building report for user %s", job.arg["user"])
    Report.objects.create(user=job.arg["user"], request_id=job.request_id or "", job_id=job.id)
    return bgjob.Complete()


@handler("mark")
def mark(job: bgjob.Job) -> bgjob.Result:
    Marker.objects.create(name=job.arg)
    return bgjob.Complete()


@handler("leave-transaction-open")
def leave_transaction_open(job: bgjob.Job) -> bgjob.Result:
    """A badly behaved handler: switches autocommit off, writes, and fails."""
    transaction.set_autocommit(False)
    Marker.objects.create(name=job.arg)
    raise RuntimeError("failed with a transaction open")


@handler("fail")
def fail(job: bgjob.Job) -> bgjob.Result:
    return bgjob.MoveToDlq(f"cannot handle {job.arg!r}")


@handler("forward")
def forward(job: bgjob.Job) -> bgjob.Result:
    """Sends a report job from inside a job: it carries this job's request id."""
    send_job("report", {"user": job.arg["user"]})
    return bgjob.Complete()


@periodic("*/30 * * * *", name="cleanup", tz="Europe/Berlin")
def cleanup(job: bgjob.Job) -> bgjob.Result:
    return bgjob.Complete()
