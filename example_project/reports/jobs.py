"""The site's job handlers, found by bgjob_django in every app's jobs.py."""

import logging
from datetime import timedelta

from django.utils import timezone

import bgjob
from bgjob_django import handler

from .models import Report

log = logging.getLogger(__name__)


@handler("report")
def build_report(job: bgjob.Job) -> bgjob.Result:
    """Builds the report row the view created (or a new one, for the nightly schedule)."""
    report_id = job.arg.get("report_id")
    report = Report.objects.get(pk=report_id) if report_id else Report.objects.create(title=job.arg["title"])
    log.info("building report %s: %s", report.pk, report.title)
    report.status, report.finished_at = "done", timezone.now()
    report.save(update_fields=["status", "finished_at"])
    return bgjob.Complete()


@handler("hourly-cleanup")
def hourly_cleanup(job: bgjob.Job) -> bgjob.Result:
    """Runs once, then again at the top of every hour: each run schedules the next one."""
    old = Report.objects.filter(created_at__lt=timezone.now() - timedelta(days=7))
    deleted, _ = old.delete()
    log.info("hourly cleanup: deleted %d old reports", deleted)
    return bgjob.Reschedule(bgjob.ByCron("0 * * * *"))


@handler("flaky-export")
def flaky_export(job: bgjob.Job) -> bgjob.Result:
    """Always fails: retried with backoff (BGJOB["MAX_ATTEMPTS"] = 3), then moved to the dead-letter queue,
    where the admin shows its traceback and can retry it."""
    raise ConnectionRefusedError(f"export service for {job.arg['target']} is down")
